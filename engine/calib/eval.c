/*
 * eval.c — `calibd eval`: the original and the quantized model side by side
 * through the calibration engine's forward (engine/eval.h, docs/eval.md).
 *
 * The run loop of calib.c calls in here when c->ev is set: per layer, for
 * every micro-batch and every step of the layer (attention, dense MLP or
 * MoE), the original step runs on the original hidden states, the
 * quantized step on a copy of the same input (teacher forcing: the error
 * that step's quantization adds, routed experts broken out by expert since
 * both see the same routing), and then the quantized layer runs on the
 * quantized model's own hidden states (the chain).  After the last layer
 * both final norms and lm_heads give logits, compared on the host.
 *
 * The quantized weights come from the exported checkpoint, dequantized with
 * the back end's dequantizers; activations are fake-quantized in place by
 * layer.c's sites (cal_eval_actq): NVFP4 per block of 16 with input_scale
 * as the global scale, FP8 per tensor with input_scale, the KV cache with
 * k_scale / v_scale in kv_cache_quant_algo's format (FP8, or NVFP4 with
 * k_scale / 6 as the global scale), Q / K rotated as the export's
 * calibd_report.json records (docs/eval.md "KV cache").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"
#include "engine/calib/eval_internal.h"
#include "engine/eval.h"

/* ---- the run ------------------------------------------------------------------------ */

static uint64_t maxu(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

/* The widest fake-quantized input per token: any module input, MLA's K
 * and V, the routed experts' kk rows. */
static uint64_t fq_per_token(const struct cal_calib *c)
{
	const struct cal_model_desc *d = c->d;
	uint64_t H = (uint64_t)c->H, kk = maxu((uint64_t)c->kk, 1), w = H;
	uint64_t mla_k = (uint64_t)d->num_heads * (uint64_t)(d->qk_nope_head_dim +
							     d->qk_rope_head_dim);
	w = maxu(w, (uint64_t)(c->nh * c->hd));
	w = maxu(w, maxu(maxu((uint64_t)c->Id, (uint64_t)c->I), (uint64_t)c->Is));
	if (d->attn == CAL_ATTN_MLA)
		w = maxu(w, maxu(maxu(mla_k, (uint64_t)(d->num_heads * d->v_head_dim)),
				 maxu((uint64_t)d->q_lora_rank, (uint64_t)d->kv_lora_rank)));
	if (d->gdn != CAL_GDN_NONE) {
		struct cal_gdn_dims g;
		cal_gdn_dims(d, &g);
		w = maxu(w, g.vd);
	}
	return kk * w;
}

uint64_t cal_eval_token_bytes(const struct cal_calib *c)
{
	uint64_t fq = fq_per_token(c);
	uint64_t kk = maxu((uint64_t)c->kk, 1);
	/* xtf, xin, yref, b_sums, the logits and logit_kl's results, next */
	return 4 * (uint64_t)c->H + 2 * kk * (uint64_t)c->H + 16 * kk + fq + fq / 16 +
	       4 * (uint64_t)c->d->vocab_size + 36;
}

/* The final norm and the source's lm_head (tied: the embedding) on the
 * back end. */
static enum cal_status load_source_head(struct cal_calib *c, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, V = (uint64_t)c->d->vocab_size;
	const struct cal_st_tensor *nt = cal_catalog_find(c->cat, CAL_ROLE_FINAL_NORM,
							  CAL_PART_WEIGHT, -1, -1);
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, CAL_ROLE_LM_HEAD, CAL_PART_WEIGHT,
							 -1, -1);
	enum cal_status st = CAL_OK;
	if (!nt || nt->numel != H || (nt->dtype != CAL_DTYPE_BF16 && nt->dtype != CAL_DTYPE_F32))
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "eval: the final norm weight must be "
				     "a bf16 or f32 [%llu] tensor", (unsigned long long)H);
	if (!t)
		t = cal_catalog_find(c->cat, CAL_ROLE_EMBED, CAL_PART_WEIGHT, -1, -1);
	if (!t || t->numel != V * H || t->dtype != CAL_DTYPE_BF16)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "eval: no bf16 lm_head or "
				     "embedding of [%llu, %llu]", (unsigned long long)V,
				     (unsigned long long)H);
	ev->norm_dt = nt->dtype;
	CAL_TRY(cal_backend_alloc_upload(c->be, nt->data, nt->nbytes, &ev->norm_w, err));
	CAL_TRY(cal_backend_alloc_upload(c->be, t->data, t->nbytes, &ev->lm_src, err));
fail:
	return st;
}

/* ---- logits and KL ------------------------------------------------------------------ */

/* logits [n, V] of the hidden states x [n, H] (back end) through the final
 * norm and lm_head lw, the norm's output fake-quantized as site (NULL:
 * none). */
static enum cal_status head_logits(struct cal_calib *c, const uint16_t *x, uint64_t n,
				   const void *lw, const struct eq_site *site, uint16_t *lg,
				   struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, V = (uint64_t)c->d->vocab_size;
	enum cal_status st = CAL_OK;
	enum cal_rms_kind kind = c->d->norm == CAL_NORM_RMS_F32W ? CAL_RMS_F32W
			       : c->d->norm == CAL_NORM_RMS_1P ? CAL_RMS_1P : CAL_RMS_PLAIN;
	struct cal_rmsnorm_args a = {kind, x, c->h, n, H, ev->norm_w, ev->norm_dt,
				     (float)c->d->rms_norm_eps};
	CAL_TRY(cal_op_rmsnorm(c->be, &a, err));
	if (site)
		CAL_TRY(cal_eval_fake_quant(c, site, c->h, n, H, err));
	struct cal_gemm_args g = {.x = c->h, .w = lw, .y = lg, .m = n, .n = V, .k = H};
	CAL_TRY(cal_op_gemm(c->be, &g, err));
fail:
	return st;
}

/* The logit_kl op over n rows of logits_o / logits_q (next: back end, or
 * NULL); its per-row results downloaded into r_out / r_am. */
static enum cal_status kl_rows(struct cal_calib *c, uint64_t n, const uint32_t *next,
			       struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	enum cal_status st = CAL_OK;
	struct cal_logit_kl_args a = {ev->logits_o, ev->logits_q, n, (uint64_t)c->d->vocab_size,
				      next, ev->b_out, ev->b_am};
	CAL_TRY(cal_op_logit_kl(c->be, &a, err));
	CAL_TRY(cal_backend_download(c->be, ev->r_out, ev->b_out, n * 24, err));
	CAL_TRY(cal_backend_download(c->be, ev->r_am, ev->b_am, n * 8, err));
	CAL_TRY(cal_backend_sync(c->be, err));
fail:
	return st;
}

/* The logit lens after layer L: mean KL between the original and the
 * quantized model's hidden states read through the final norm and the
 * source lm_head, over the sampled positions. */
static enum cal_status lens_kl(struct cal_calib *c, double *ret, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, T = c->mb_tokens;
	enum cal_status st = CAL_OK;
	double sum = 0;
	for (uint64_t i0 = 0; i0 < ev->n_lens; i0 += T) {
		uint64_t n = ev->n_lens - i0 < T ? ev->n_lens - i0 : T;
		for (int q = 0; q < 2; q++) {
			struct cal_gather_rows_args g = {q ? ev->xq : c->hidden, c->n_tok, H,
							 ev->lens_idx + i0, n, 1, ev->xtf};
			CAL_TRY(cal_op_gather_rows(c->be, &g, err));
			CAL_TRY(head_logits(c, ev->xtf, n, ev->lm_src, NULL,
					    q ? ev->logits_q : ev->logits_o, err));
		}
		CAL_TRY(kl_rows(c, n, NULL, err));
		for (uint64_t r = 0; r < n; r++)
			sum += ev->r_out[3 * r];
	}
	*ret = ev->n_lens ? sum / (double)ev->n_lens : 0;
fail:
	return st;
}

/* Every stride-th predicted position, at most lens_max of them. */
static enum cal_status lens_sample(struct cal_calib *c, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t n_pred = 0, k = 0;
	for (uint64_t g = 0; g < c->n_tok; g++)
		n_pred += ev->next[g] != UINT32_MAX;
	uint64_t stride = ev->lens_max && n_pred > ev->lens_max
				  ? (n_pred + ev->lens_max - 1) / ev->lens_max : 1;
	ev->lens_at = calloc(c->n_tok + 1, 1);
	ev->lens_idx_h = malloc((n_pred / stride + 1) * 4);
	if (!ev->lens_at || !ev->lens_idx_h)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	for (uint64_t g = 0; g < c->n_tok; g++) {
		if (ev->next[g] == UINT32_MAX)
			continue;
		if (k++ % stride == 0) {
			ev->lens_at[g] = 1;
			ev->lens_idx_h[ev->n_lens++] = (uint32_t)g;
		}
	}
	if (!ev->n_lens)
		return CAL_OK;
	return cal_backend_alloc_upload(c->be, ev->lens_idx_h, ev->n_lens * 4,
					(void **)&ev->lens_idx, err);
}

enum cal_status cal_eval_begin(struct cal_calib *c, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, T = c->mb_tokens, kk = maxu((uint64_t)c->kk, 1);
	uint64_t V = (uint64_t)c->d->vocab_size;
	enum cal_status st = CAL_OK;
	if (c->hidden_on_host)
		return cal_error_set(err, CAL_ERR_NOMEM,
				     "evaluation keeps both models' hidden states in device memory; "
				     "%llu tokens do not fit: evaluate fewer samples",
				     (unsigned long long)c->n_tok);
	ev->fq_elems = T * fq_per_token(c);
	CAL_TRY(cal_backend_alloc(c->be, c->n_tok * H * 2, (void **)&ev->xq, err));
	CAL_TRY(cal_backend_copy(c->be, ev->xq, c->hidden, c->n_tok * H * 2, err));
	CAL_TRY(cal_backend_alloc(c->be, T * H * 2, (void **)&ev->xtf, err));
	CAL_TRY(cal_backend_alloc(c->be, ev->fq_elems, (void **)&ev->qbuf, err));
	CAL_TRY(cal_backend_alloc(c->be, ev->fq_elems / 16 + 16, (void **)&ev->sbuf, err));
	CAL_TRY(cal_backend_alloc(c->be, T * V * 2, (void **)&ev->logits_o, err));
	CAL_TRY(cal_backend_alloc(c->be, T * V * 2, (void **)&ev->logits_q, err));
	CAL_TRY(cal_backend_alloc(c->be, T * 24, (void **)&ev->b_out, err));
	CAL_TRY(cal_backend_alloc(c->be, T * 8, (void **)&ev->b_am, err));
	CAL_TRY(cal_backend_alloc(c->be, T * H * 2, (void **)&ev->xin, err));
	CAL_TRY(cal_backend_alloc(c->be, T * kk * H * 2, (void **)&ev->yref, err));
	CAL_TRY(cal_backend_alloc(c->be, T * kk * 16, (void **)&ev->b_sums, err));
	if (ev->logits_out || ev->logits_orig_out) {
		ev->ha = malloc(T * V * 2);
		ev->hb = malloc(T * V * 2);
		if (!ev->ha || !ev->hb)
			return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	}
	ev->r_sums = malloc(T * kk * 16);
	ev->offref = malloc(((size_t)c->E + 1) * 4);
	ev->tok_save = malloc(((size_t)c->E + 1) * 8);
	ev->exp_gu = calloc((size_t)c->E + 1, sizeof(*ev->exp_gu));
	ev->exp_dn = calloc((size_t)c->E + 1, sizeof(*ev->exp_dn));
	ev->kl = malloc((c->n_tok + 1) * sizeof(double));
	ev->r_out = malloc((T + 1) * 24);
	ev->r_am = malloc((T + 1) * 8);
	ev->next = malloc((c->n_tok + 1) * 4);
	ev->seq = malloc((c->n_tok + 1) * 4);
	ev->layers = json_array();
	if (!ev->r_sums || !ev->offref ||
	    !ev->tok_save || !ev->exp_gu || !ev->exp_dn || !ev->kl || !ev->next || !ev->seq ||
	    !ev->layers || !ev->r_out || !ev->r_am)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	for (size_t s = 0; s < ev->tk->n; s++)
		for (size_t i = ev->tk->off[s]; i < ev->tk->off[s + 1]; i++) {
			ev->seq[i] = (uint32_t)s;
			ev->next[i] = i + 1 < ev->tk->off[s + 1] ? ev->tk->ids[i + 1] : UINT32_MAX;
		}
	CAL_TRY(load_source_head(c, err));
	CAL_TRY(cal_backend_alloc_upload(c->be, ev->next, c->n_tok * 4, (void **)&ev->b_next, err));
	CAL_TRY(lens_sample(c, err));
fail:
	return st;
}

static const char *step_name(enum cal_step s)
{
	switch (s) {
	case STEP_ATTN_GQA: return "attention";
	case STEP_MLP_DENSE: return "mlp";
	case STEP_MOE: return "moe";
	case STEP_GDN: return "linear_attention";
	case STEP_ATTN_MLA: return "attention";
	}
	return "?";
}

/* The err_rows op over rows of H (in may be NULL), its per-row sums
 * downloaded into r_sums; with err2 / ref2, the sums of all rows added to
 * them. */
static enum cal_status err_sums(struct cal_calib *c, const uint16_t *in, const uint16_t *a,
				const uint16_t *b, uint64_t rows, double *err2, double *ref2,
				struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	enum cal_status st = CAL_OK;
	struct cal_err_rows_args x = {in, a, b, rows, (uint64_t)c->H, ev->b_sums};
	CAL_TRY(cal_op_err_rows(c->be, &x, err));
	CAL_TRY(cal_backend_download(c->be, ev->r_sums, ev->b_sums, rows * 16, err));
	CAL_TRY(cal_backend_sync(c->be, err));
	for (uint64_t r = 0; err2 && r < rows; r++) {
		*err2 += ev->r_sums[2 * r];
		*ref2 += ev->r_sums[2 * r + 1];
	}
fail:
	return st;
}

static json_t *rel(double err2, double ref2)
{
	return ref2 > 0 ? json_real(sqrt(err2 / ref2)) : json_null();
}

enum cal_status cal_eval_layer(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			       struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	enum cal_step steps[CAL_MAX_STEPS];
	int n_steps = 0, n_owned = 0;
	void *owned[MAX_OWNED];
	struct cal_layer_w qw = *w;
	uint64_t H = (uint64_t)c->H, E = (uint64_t)c->E, kk = maxu((uint64_t)c->kk, 1);
	double serr[CAL_MAX_STEPS] = {0}, sref[CAL_MAX_STEPS] = {0}, cerr = 0, cref = 0;
	double *xerr = NULL, *xref = NULL;
	uint64_t routing_differs = 0;
	enum cal_status st = cal_layer_steps(c, L, steps, &n_steps, err);
	if (st < 0)
		return st;
	if (c->d->layers[L].ffn == CAL_FFN_MOE) {
		xerr = calloc(E + 1, sizeof(double));
		xref = calloc(E + 1, sizeof(double));
		if (!xerr || !xref) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
			goto fail;
		}
	}
	CAL_TRY(cal_eval_load_layer(c, L, steps[0], &qw, owned, &n_owned, err));
	for (size_t m = 0; m < c->n_mb; m++) {
		const struct cal_mb *mb = &c->mbs[m];
		uint64_t T = mb->n_tok, n = T * H, P = T * kk;
		uint16_t *xo = c->hidden + mb->tok0 * H, *xq = ev->xq + mb->tok0 * H;
		for (int s = 0; s < n_steps; s++) {
			int moe = steps[s] == STEP_MOE;
			CAL_TRY(cal_backend_copy(c->be, ev->xtf, xo, n * 2, err));
			CAL_TRY(cal_backend_copy(c->be, ev->xin, xo, n * 2, err));
			CAL_TRY(cal_layer_step_run(c, L, steps[s], w, mb, xo, err));
			if (moe) {
				CAL_TRY(cal_backend_copy(c->be, ev->yref, c->yo, P * H * 2, err));
				memcpy(ev->offref, c->h_offsets, (E + 1) * 4);
				memcpy(ev->tok_save, c->moe[L].tokens, E * 8);
			}
			c->ev_quant = 1;
			st = cal_layer_step_run(c, L, steps[s], &qw, mb, ev->xtf, err);
			c->ev_quant = 0;
			if (st < 0)
				goto fail;
			if (moe) {
				memcpy(c->moe[L].tokens, ev->tok_save, E * 8);
				if (memcmp(ev->offref, c->h_offsets, (E + 1) * 4)) {
					routing_differs++;
				} else {
					/* per routed expert: its output rows */
					CAL_TRY(err_sums(c, NULL, ev->yref, c->yo, P, NULL, NULL,
							 err));
					for (uint64_t k = 0; k < E; k++)
						for (uint64_t r = ev->offref[k];
						     r < ev->offref[k + 1]; r++) {
							xerr[k] += ev->r_sums[2 * r];
							xref[k] += ev->r_sums[2 * r + 1];
						}
				}
			}
			CAL_TRY(err_sums(c, ev->xin, xo, ev->xtf, T, &serr[s], &sref[s], err));
		}
		/* the quantized model on its own hidden states */
		if (c->moe[L].tokens)
			memcpy(ev->tok_save, c->moe[L].tokens, E * 8);
		c->ev_quant = 1;
		for (int s = 0; s < n_steps && st >= 0; s++)
			st = cal_layer_step_run(c, L, steps[s], &qw, mb, xq, err);
		c->ev_quant = 0;
		if (st < 0)
			goto fail;
		if (c->moe[L].tokens)
			memcpy(c->moe[L].tokens, ev->tok_save, E * 8);
		CAL_TRY(err_sums(c, NULL, xo, xq, T, &cerr, &cref, err));
	}
	CAL_TRY(cal_backend_sync(c->be, err));
	double lk = 0;
	CAL_TRY(lens_kl(c, &lk, err));
	json_t *lj = json_pack("{s:i}", "layer", (int)L), *sa = json_array();
	json_object_set_new(lj, "kl_contribution", json_real(lk - ev->lens_prev));
	json_object_set_new(lj, "lens_kl", json_real(lk));
	ev->lens_prev = lk;
	double terr = 0, tref = 0;
	for (int s = 0; s < n_steps; s++) {
		json_t *sj = json_pack("{s:s, s:o}", "step", step_name(steps[s]), "rel_error",
				       rel(serr[s], sref[s]));
		terr += serr[s];
		tref += sref[s];
		if (steps[s] == STEP_MOE) {
			json_t *xa = json_array();
			for (uint64_t e = 0; e < E; e++)
				json_array_append_new(xa, rel(xerr[e], xref[e]));
			json_object_set_new(sj, "experts_rel_error", xa);
			if (routing_differs)
				json_object_set_new(sj, "micro_batches_routing_differs",
						    json_integer((json_int_t)routing_differs));
		}
		json_array_append_new(sa, sj);
	}
	json_object_set_new(lj, "rel_error", rel(terr, tref));
	json_object_set_new(lj, "hidden_rel_error", rel(cerr, cref));
	json_object_set_new(lj, "steps", sa);
	json_array_append_new(ev->layers, lj);
fail:
	(void)cal_backend_sync(c->be, NULL);
	for (int i = 0; i < n_owned; i++)
		cal_backend_dealloc(c->be, owned[i]);
	free(xerr);
	free(xref);
	return st;
}

static void keep_worst(struct cal_eval *ev, const struct worst *w)
{
	size_t i = ev->n_worst < N_WORST ? ev->n_worst++ : N_WORST - 1;
	if (i == N_WORST - 1 && ev->n_worst == N_WORST && ev->worst[i].kl >= w->kl)
		return;
	ev->worst[i] = *w;
	while (i > 0 && ev->worst[i - 1].kl < ev->worst[i].kl) {
		struct worst t = ev->worst[i - 1];
		ev->worst[i - 1] = ev->worst[i];
		ev->worst[i] = t;
		i--;
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

enum cal_status cal_eval_end(struct cal_calib *c, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, V = (uint64_t)c->d->vocab_size;
	enum cal_status st = CAL_OK;
	void *lq = NULL;
	double lens_sum = 0;
	CAL_TRY(cal_eval_load_lm_head(c, &lq, err));
	for (size_t m = 0; m < c->n_mb; m++) {
		const struct cal_mb *mb = &c->mbs[m];
		uint64_t T = mb->n_tok;
		CAL_TRY(head_logits(c, c->hidden + mb->tok0 * H, T, ev->lm_src, NULL, ev->logits_o,
				    err));
		CAL_TRY(head_logits(c, ev->xq + mb->tok0 * H, T, lq ? lq : ev->lm_src, &ev->lm_site,
				    ev->logits_q, err));
		if (ev->logits_out || ev->logits_orig_out) {
			CAL_TRY(cal_backend_download(c->be, ev->ha, ev->logits_o, T * V * 2, err));
			CAL_TRY(cal_backend_download(c->be, ev->hb, ev->logits_q, T * V * 2, err));
			CAL_TRY(cal_backend_sync(c->be, err));
		}
		if ((ev->logits_out && fwrite(ev->hb, 2, T * V, ev->logits_out) != T * V) ||
		    (ev->logits_orig_out &&
		     fwrite(ev->ha, 2, T * V, ev->logits_orig_out) != T * V)) {
			st = cal_error_set(err, CAL_ERR_IO, "eval: writing the logits failed");
			goto fail;
		}
		CAL_TRY(kl_rows(c, T, ev->b_next + mb->tok0, err));
		for (uint64_t t = 0; t < T; t++) {
			uint64_t g = mb->tok0 + t;
			uint32_t nx = ev->next[g];
			if (nx == UINT32_MAX)
				continue;
			double kl = ev->r_out[3 * t];
			ev->kl[ev->n_pred++] = kl;
			ev->top1 += ev->r_am[2 * t] == ev->r_am[2 * t + 1];
			ev->nll_o += ev->r_out[3 * t + 1];
			ev->nll_q += ev->r_out[3 * t + 2];
			if (ev->lens_at[g])
				lens_sum += kl;
			struct worst w = {kl, g, ev->tk->ids[g], nx, ev->r_am[2 * t], ev->r_am[2 * t + 1]};
			keep_worst(ev, &w);
		}
	}
	ev->lens_final = ev->n_lens ? lens_sum / (double)ev->n_lens : 0;
fail:
	(void)cal_backend_sync(c->be, NULL);
	cal_backend_dealloc(c->be, lq);
	return st;
}

static json_t *report(struct cal_eval *ev, const struct cal_calib *c)
{
	json_t *r = json_object();
	uint64_t n = ev->n_pred;
	double sum = 0;
	for (uint64_t i = 0; i < n; i++)
		sum += ev->kl[i];
	qsort(ev->kl, n, sizeof(double), cmp_double);
	json_object_set_new(r, "sequences", json_integer((json_int_t)ev->tk->n));
	json_object_set_new(r, "tokens", json_integer((json_int_t)ev->tk->n_tokens));
	json_object_set_new(r, "predicted_tokens", json_integer((json_int_t)n));
	json_t *kl = json_object();
	json_object_set_new(kl, "mean", n ? json_real(sum / (double)n) : json_null());
	json_object_set_new(kl, "median", n ? json_real(ev->kl[n / 2]) : json_null());
	json_object_set_new(kl, "p99", n ? json_real(ev->kl[(uint64_t)((double)(n - 1) * 0.99)])
				      : json_null());
	json_object_set_new(kl, "max", n ? json_real(ev->kl[n - 1]) : json_null());
	json_object_set_new(r, "kl", kl);
	json_object_set_new(r, "top1_agreement", n ? json_real((double)ev->top1 / (double)n)
					       : json_null());
	json_object_set_new(r, "perplexity", json_pack("{s:o, s:o}",
		"original", n ? json_real(exp(ev->nll_o / (double)n)) : json_null(),
		"quantized", n ? json_real(exp(ev->nll_q / (double)n)) : json_null()));
	json_object_set_new(r, "quantized_weights", json_integer((json_int_t)ev->n_qweights));
	json_object_set(r, "layers", ev->layers);
	json_object_set_new(r, "layer_kl", json_pack("{s:s, s:I, s:f, s:f}", "method", "logit_lens",
		"positions", (json_int_t)ev->n_lens, "final_kl_on_positions", ev->lens_final,
		"lm_head_contribution", ev->lens_final - ev->lens_prev));
	json_t *wa = json_array();
	for (size_t i = 0; i < ev->n_worst; i++) {
		const struct worst *w = &ev->worst[i];
		uint32_t s = ev->seq[w->tok];
		json_array_append_new(wa, json_pack("{s:I, s:I, s:I, s:I, s:f, s:I, s:I}",
			"sequence", (json_int_t)s, "position", (json_int_t)(w->tok - ev->tk->off[s]),
			"token", (json_int_t)w->id, "next", (json_int_t)w->next, "kl", w->kl,
			"top1_original", (json_int_t)w->top_o, "top1_quantized", (json_int_t)w->top_q));
	}
	json_object_set_new(r, "worst_tokens", wa);
	json_object_set_new(r, "device", json_string(cal_calib_backend_describe(c)));
	json_object_set_new(r, "seconds", json_real(cal_now() - ev->t0));
	return r;
}

static void eval_free(struct cal_calib *c, struct cal_eval *ev)
{
	void *dev[] = {ev->xq, ev->xtf, ev->qbuf, ev->sbuf, ev->logits_o, ev->logits_q,
		       ev->b_out, ev->b_am, ev->b_next, ev->xin, ev->yref, ev->b_sums,
		       ev->norm_w, ev->lm_src, ev->lens_idx};
	void *host[] = {ev->r_sums, ev->ha, ev->hb, ev->offref, ev->tok_save, ev->exp_gu,
			ev->exp_dn, ev->kl, ev->next, ev->seq, ev->lens_idx_h, ev->lens_at,
			ev->r_out, ev->r_am, ev->maps[0], ev->maps[1], ev->maps[2]};
	for (size_t i = 0; i < CAL_ARRAY_LEN(dev); i++)
		cal_backend_dealloc(c->be, dev[i]);
	for (size_t i = 0; i < CAL_ARRAY_LEN(host); i++)
		free(host[i]);
	json_decref(ev->layers);
}

/* The JSON file `name` beside the export's tensors, or NULL. */
static json_t *export_json(const char *dir, const char *name)
{
	char *path = dir ? cal_path_join(dir, name) : NULL, *text = NULL;
	size_t len = 0;
	json_t *j = NULL;
	if (path && cal_read_file(path, 16u << 20, &text, &len, NULL) >= 0)
		j = json_loadb(text, len, 0, NULL);
	CAL_FREE_ALL(text, path);
	return j;
}

/* The KV cache's format from the export's hf_quant_config.json
 * (kv_cache_quant_algo: FP8, or NVFP4 / NVFP4_AFFINE; without k_scale /
 * v_scale the scale is 1, as the serving engines and modelopt's constant
 * amax 448) and its rotation from calibd_report.json (resolved.kv_rotation). */
static void kv_config(const struct cal_checkpoint *q, struct cal_eval *ev)
{
	const struct cal_st_tensor *t = cal_checkpoint_count(q) ? cal_checkpoint_tensor(q, 0) : NULL;
	ev->kv_fmt = AQ_FP8;
	if (!t || !t->file)
		return;
	const char *slash = strrchr(t->file, '/');
	char *dir = slash ? strndup(t->file, (size_t)(slash - t->file)) : strdup(".");
	json_t *j = export_json(dir, "hf_quant_config.json");
	const char *kv = json_string_value(
		json_object_get(json_object_get(j, "quantization"), "kv_cache_quant_algo"));
	if (kv && (!strcmp(kv, "FP8") || !strncmp(kv, "NVFP4", 5)))
		ev->kv_default = 1.0f;
	if (kv && !strncmp(kv, "NVFP4", 5))
		ev->kv_fmt = AQ_NVFP4;
	json_decref(j);
	j = export_json(dir, "calibd_report.json");
	json_t *rot = json_object_get(json_object_get(j, "resolved"), "kv_rotation");
	for (int i = 0; i < 3; i++) {
		json_int_t b = json_integer_value(json_object_get(rot, i == 0 ? "q" : i == 1 ? "k" : "v"));
		ev->kv_rot[i] = b > 0 && b <= 1 << 20 ? (uint32_t)b : 0;
	}
	json_decref(j);
	free(dir);
}

const uint32_t *cal_eval_kv_rot(const struct cal_calib *c)
{
	static const uint32_t none[3];
	if (!c->ev) /* a calibration: the plan's */
		return c->plan->sum.rot_block;
	return c->ev_quant ? c->ev->kv_rot : none;
}

enum cal_status cal_eval_run(struct cal_calib *c, const struct cal_checkpoint *quant,
			     const struct cal_calib_tokens *tokens, const struct cal_eval_opts *opts,
			     json_t **ret, struct cal_error *err)
{
	struct cal_eval ev;
	enum cal_status st;
	*ret = NULL;
	if (c->o.pad_like_modelopt)
		return cal_error_set(err, CAL_ERR_INVALID, "eval runs packed sequences "
				     "(no --pad-like-modelopt)");
	memset(&ev, 0, sizeof(ev));
	ev.q = quant;
	ev.tk = tokens;
	ev.t0 = cal_now();
	kv_config(quant, &ev);
	ev.lens_max = opts && opts->layer_kl_positions ? opts->layer_kl_positions
						       : CAL_EVAL_LAYER_KL_POSITIONS;
	if (opts && opts->logits_out && !(ev.logits_out = fopen(opts->logits_out, "wb")))
		return cal_error_set(err, CAL_ERR_IO, "%s: cannot create", opts->logits_out);
	if (opts && opts->logits_orig_out &&
	    !(ev.logits_orig_out = fopen(opts->logits_orig_out, "wb"))) {
		if (ev.logits_out)
			fclose(ev.logits_out);
		return cal_error_set(err, CAL_ERR_IO, "%s: cannot create", opts->logits_orig_out);
	}
	c->ev = &ev;
	st = cal_calib_run(c, tokens, err);
	if (ev.logits_out && fclose(ev.logits_out) && st >= 0)
		st = cal_error_set(err, CAL_ERR_IO, "%s: write failed", opts->logits_out);
	if (ev.logits_orig_out && fclose(ev.logits_orig_out) && st >= 0)
		st = cal_error_set(err, CAL_ERR_IO, "%s: write failed", opts->logits_orig_out);
	c->ev = NULL;
	c->ev_quant = 0;
	if (st >= 0) {
		*ret = report(&ev, c);
		if (!*ret)
			st = cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	}
	eval_free(c, &ev);
	return st;
}

/* ---- the source check ------------------------------------------------------------ */

static enum cal_status load_json_file(const char *dir, const char *name, json_t **ret,
				      struct cal_error *err)
{
	char *path = cal_path_join(dir, name), *text = NULL;
	size_t len = 0;
	enum cal_status st;
	json_error_t je;
	*ret = NULL;
	if (!path)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	st = cal_read_file(path, 64u << 20, &text, &len, err);
	if (st >= 0) {
		*ret = json_loadb(text, len, 0, &je);
		if (!json_is_object(*ret)) {
			json_decref(*ret);
			*ret = NULL;
			st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%d: %s", path, je.line, je.text);
		}
	}
	free(text);
	free(path);
	return st;
}

enum cal_status cal_eval_check_source(const char *model_dir, const struct cal_checkpoint *src,
				      const char *quant_dir, struct cal_error *err)
{
	json_t *a = NULL, *b = NULL, *rep = NULL;
	enum cal_status st;
	char fp[17];
	CAL_TRY(load_json_file(model_dir, "config.json", &a, err));
	CAL_TRY(load_json_file(quant_dir, "config.json", &b, err));
	json_object_del(a, "quantization_config");
	json_object_del(b, "quantization_config");
	if (!json_equal(a, b)) {
		const char *k;
		json_t *v;
		const char *diff = "?";
		json_object_foreach(a, k, v)
			if (!json_equal(v, json_object_get(b, k))) {
				diff = k;
				break;
			}
		if (!strcmp(diff, "?"))
			json_object_foreach(b, k, v)
				if (!json_object_get(a, k)) {
					diff = k;
					break;
				}
		st = cal_error_set(err, CAL_ERR_INVALID,
				   "%s was not made from %s: config.json differs (key '%s')",
				   quant_dir, model_dir, diff);
		goto fail;
	}
	if (load_json_file(quant_dir, "calibd_report.json", &rep, NULL) >= 0) {
		const char *want = json_string_value(json_object_get(rep, "source_fingerprint"));
		if (want) {
			CAL_TRY(cal_checkpoint_fingerprint(model_dir, src, fp, err));
			if (strcmp(want, fp)) {
				st = cal_error_set(err, CAL_ERR_INVALID,
						   "%s was not made from %s: source fingerprint %s, "
						   "recorded at export %s", quant_dir, model_dir, fp,
						   want);
				goto fail;
			}
		}
	}
	st = CAL_OK;
fail:
	CAL_EACH(json_decref, json_t, a, b, rep);
	return st;
}

/* ---- overlap with the calibration set ------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

void cal_eval_overlap(const char *quant_dir, const struct cal_calib_tokens *tk, json_t *rep)
{
	json_t *r = NULL;
	const char *hx = NULL;
	uint64_t *h = NULL;
	size_t n = 0, hit = 0;
	if (load_json_file(quant_dir, "calibd_report.json", &r, NULL) >= 0)
		hx = json_string_value(json_object_get(json_object_get(r, "calibration"),
						       "sequence_hashes"));
	if (hx && strlen(hx) % 16 == 0)
		n = strlen(hx) / 16;
	if (!hx || !(h = malloc((n + 1) * sizeof(*h)))) {
		json_object_set_new(rep, "calibration_overlap", json_pack("{s:s}", "unknown",
			"the export's calibd_report.json records no calibration sequence_hashes"));
		json_decref(r);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char d[17];
		memcpy(d, hx + 16 * i, 16);
		d[16] = 0;
		h[i] = strtoull(d, NULL, 16);
	}
	qsort(h, n, sizeof(*h), cmp_u64);
	json_t *seqs = json_array();
	for (size_t s = 0; s < tk->n; s++) {
		uint64_t k = cal_calib_tokens_hash(tk, s);
		if (bsearch(&k, h, n, sizeof(*h), cmp_u64)) {
			if (hit++ < 10)
				json_array_append_new(seqs, json_integer((json_int_t)s));
		}
	}
	json_object_set_new(rep, "calibration_overlap", json_pack("{s:I, s:I, s:I, s:o}",
		"sequences", (json_int_t)hit, "of", (json_int_t)tk->n,
		"calibration_sequences", (json_int_t)n, "first", seqs));
	free(h);
	json_decref(r);
}
