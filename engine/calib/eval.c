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
 * k_scale / v_scale.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"
#include "engine/eval.h"

#define N_WORST 10

enum afmt {
	AQ_NONE,
	AQ_NVFP4,  /* per 16-block, global scale = input_scale */
	AQ_FP8,    /* per tensor, scale = input_scale */
};

struct eq_site {
	enum afmt fmt;
	float scale;
};

struct worst {
	double kl;
	uint64_t tok;
	uint32_t id, next, top_o, top_q;
};

struct cal_eval {
	const struct cal_checkpoint *q;
	const struct cal_calib_tokens *tk;
	FILE *logits_out, *logits_orig_out;
	float kv_default;                /* kv_cache_quant_algo FP8 without scales: 1.0, else 0 */
	struct eq_site site[EQ_COUNT];
	struct eq_site *exp_gu, *exp_dn; /* [E] */
	struct eq_site lm_site;
	/* back end */
	uint16_t *xq, *xtf, *logits_o, *logits_q;
	uint8_t *qbuf, *sbuf;
	uint64_t fq_elems;
	/* host */
	uint16_t *hin, *ha, *hb, *yref, *ycmp;
	uint32_t *offref;
	uint64_t *tok_save;
	uint32_t *next;                  /* [n_tok]: next token id, UINT32_MAX at a sequence end */
	uint32_t *seq;                   /* [n_tok]: sequence of the token */
	/* results */
	json_t *layers;
	double *kl;
	uint64_t n_pred, top1;
	double nll_o, nll_q;
	struct worst worst[N_WORST];
	size_t n_worst;
	uint64_t n_qweights, n_qacts;
	double t0;
};

/* ---- the exported tensors ---------------------------------------------------- */

static const struct cal_st_tensor *qget(const struct cal_eval *ev, const char *mod,
					const char *suf)
{
	char name[CAL_ST_MAX_NAME + 64];
	if ((size_t)snprintf(name, sizeof(name), "%s.%s", mod, suf) >= sizeof(name))
		return NULL;
	return cal_checkpoint_find(ev->q, name);
}

static float scalar(const struct cal_st_tensor *t)
{
	float f = 0;
	if (t && t->dtype == CAL_DTYPE_F32 && t->numel == 1)
		memcpy(&f, t->data, 4);
	return f;
}

static int is2d(const struct cal_st_tensor *t, enum cal_dtype dt, int64_t a, int64_t b)
{
	return t && t->dtype == dt && t->ndim == 2 && t->shape[0] == a && t->shape[1] == b;
}

/* Module mod of the export as bf16 [rows, cols] into dst (back end), and
 * the site its input gets.  `src` (may be NULL): the source's bf16 weight,
 * which an unquantized exported weight must equal byte for byte. */
static enum cal_status load_weight(struct cal_calib *c, const char *mod, int64_t rows,
				   int64_t cols, const uint16_t *src, uint16_t *dst,
				   struct eq_site *ret_site, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	const struct cal_st_tensor *w = qget(ev, mod, "weight"), *s = qget(ev, mod, "weight_scale"),
				   *s2 = qget(ev, mod, "weight_scale_2"),
				   *is = qget(ev, mod, "input_scale");
	void *dw = NULL, *ds = NULL;
	enum cal_status st = CAL_OK;
	uint64_t n = (uint64_t)(rows * cols);
	ret_site->fmt = AQ_NONE;
	ret_site->scale = 0;
	if (!w)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "%s.weight is missing from the quantized checkpoint: it was not "
				     "made from this source", mod);
	if (w->dtype == CAL_DTYPE_BF16) {
		if (w->numel != n)
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s.weight: %llu elements, the source has %llu: the "
					     "quantized checkpoint was not made from this source", mod,
					     (unsigned long long)w->numel, (unsigned long long)n);
		if (src && memcmp(src, w->data, n * 2))
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s.weight is unquantized but differs from the source's: "
					     "the quantized checkpoint was not made from this source", mod);
		return cal_backend_upload(c->be, dst, w->data, n * 2, err);
	}
	if (w->dtype == CAL_DTYPE_U8 && s2) {
		if (!is2d(w, CAL_DTYPE_U8, rows, cols / 2) || cols % 16 ||
		    !is2d(s, CAL_DTYPE_F8_E4M3, rows, cols / 16) || !(scalar(s2) > 0))
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s: NVFP4 tensors do not fit the source's [%lld, %lld] "
					     "weight: the quantized checkpoint was not made from this "
					     "source", mod, (long long)rows, (long long)cols);
		CAL_TRY(cal_backend_alloc_upload(c->be, w->data, w->nbytes, &dw, err));
		CAL_TRY(cal_backend_alloc_upload(c->be, s->data, s->nbytes, &ds, err));
		struct cal_nvfp4_dequant_args a = {dw, ds, (uint64_t)rows, (uint64_t)cols, scalar(s2),
						   CAL_DTYPE_BF16, dst, 0};
		CAL_TRY(cal_op_nvfp4_dequant(c->be, &a, err));
		if (is) {
			ret_site->fmt = AQ_NVFP4;
			ret_site->scale = scalar(is);
		}
	} else if (w->dtype == CAL_DTYPE_F8_E4M3 && s && s->numel == 1) {
		if (!is2d(w, CAL_DTYPE_F8_E4M3, rows, cols) || !(scalar(s) > 0))
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s: FP8 tensors do not fit the source's [%lld, %lld] "
					     "weight: the quantized checkpoint was not made from this "
					     "source", mod, (long long)rows, (long long)cols);
		CAL_TRY(cal_backend_alloc_upload(c->be, w->data, w->nbytes, &dw, err));
		struct cal_fp8_dequant_args a = {dw, n, scalar(s), CAL_DTYPE_BF16, dst};
		CAL_TRY(cal_op_fp8_dequant(c->be, &a, err));
		if (is) {
			ret_site->fmt = AQ_FP8;
			ret_site->scale = scalar(is);
		}
	} else {
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: weight %s with these scales is not evaluated yet (NVFP4, "
				     "W4A16 NVFP4 and FP8 per tensor are)", mod,
				     cal_dtype_name(w->dtype));
	}
	if (ret_site->fmt != AQ_NONE && !(ret_site->scale > 0 && isfinite(ret_site->scale)))
		st = cal_error_set(err, CAL_ERR_INVALID, "%s.input_scale: %g is not finite and "
				   "positive", mod, (double)ret_site->scale);
	ev->n_qweights++;
fail:
	cal_backend_dealloc(c->be, dw);
	cal_backend_dealloc(c->be, ds);
	return st;
}

/* The module name of a source tensor of (role, L): its name less ".weight". */
static int module_of(const struct cal_calib *c, enum cal_role role, int32_t L, char *buf,
		     size_t n, const struct cal_st_tensor **ret_t)
{
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, role, CAL_PART_WEIGHT, L, -1);
	size_t len;
	*ret_t = t;
	if (!t || (len = strlen(t->name)) < 7 || strcmp(t->name + len - 7, ".weight") ||
	    len - 7 >= n)
		return -1;
	memcpy(buf, t->name, len - 7);
	buf[len - 7] = 0;
	return 0;
}

/* Merges the input site b into a (q/k/v and gate/up share one input: the
 * serving engine's fused GEMM uses the larger input_scale). */
static void merge_site(struct eq_site *a, const struct eq_site *b)
{
	if (a->fmt == AQ_NONE) {
		*a = *b;
		return;
	}
	if (b->scale > a->scale)
		a->scale = b->scale;
}

/* A weight that is either kept (the source's, NULL *ret) or loaded into a
 * new back-end buffer, from one or two modules stacked by rows. */
struct wpart {
	enum cal_role role;
	int64_t rows, cols;
};

static int quantized_in_export(const struct cal_eval *ev, const char *mod)
{
	const struct cal_st_tensor *w = qget(ev, mod, "weight");
	return !w || w->dtype != CAL_DTYPE_BF16;
}

static enum cal_status load_linear(struct cal_calib *c, int32_t L, const struct wpart *p, int np,
				   const uint16_t *keep, const uint16_t **ret, void **owned,
				   int *n_owned, struct eq_site *site, struct cal_error *err)
{
	char mod[2][CAL_ST_MAX_NAME];
	const struct cal_st_tensor *t[2];
	int any = 0;
	uint64_t total = 0;
	enum cal_status st;
	void *buf = NULL;
	site->fmt = AQ_NONE;
	site->scale = 0;
	*ret = keep;
	for (int i = 0; i < np; i++) {
		if (module_of(c, p[i].role, L, mod[i], sizeof(mod[i]), &t[i]) < 0)
			return cal_error_set(err, CAL_ERR_INVALID, "layer %d: %s weight not found", L,
					     cal_role_name(p[i].role));
		any |= quantized_in_export(c->ev, mod[i]);
		total += (uint64_t)(p[i].rows * p[i].cols);
	}
	CAL_TRY(cal_backend_alloc(c->be, total * 2, &buf, err));
	owned[(*n_owned)++] = buf;
	uint64_t off = 0;
	for (int i = 0; i < np; i++) {
		struct eq_site s;
		const uint16_t *src = t[i]->dtype == CAL_DTYPE_BF16 ? t[i]->data : NULL;
		CAL_TRY(load_weight(c, mod[i], p[i].rows, p[i].cols, src, (uint16_t *)buf + off, &s,
				    err));
		merge_site(site, &s);
		off += (uint64_t)(p[i].rows * p[i].cols);
	}
	if (any)
		*ret = buf;
	st = CAL_OK;
fail:
	return st;
}

/* Routed expert e's module name in the export: per expert under the hub
 * names (docs/export.md), `mlp.experts` or Mixtral's `block_sparse_moe`. */
static int expert_module(const struct cal_calib *c, int32_t L, int64_t e, int proj, char *buf,
			 size_t n)
{
	const char *pre = cal_catalog_prefix(c->cat);
	static const char *const blk[] = {"mlp", "block_sparse_moe"};
	for (int b = 0; b < 2; b++) {
		snprintf(buf, n, "%slayers.%d.%s.experts.%lld.%s", pre, L, blk[b], (long long)e,
			 c->d->arch->expert_proj[proj]);
		if (qget(c->ev, buf, "weight"))
			return 0;
	}
	return -1;
}

static enum cal_status load_experts(struct cal_calib *c, int32_t L, struct cal_layer_w *qw,
				    void **owned, int *n_owned, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	int64_t E = c->E, I = c->I, H = c->H;
	char mod[CAL_ST_MAX_NAME];
	enum cal_status st = CAL_OK;
	void *b13 = NULL, *b2 = NULL;
	CAL_TRY(cal_backend_alloc(c->be, (size_t)(E * 2 * I * H) * 2, &b13, err));
	owned[(*n_owned)++] = b13;
	CAL_TRY(cal_backend_alloc(c->be, (size_t)(E * H * I) * 2, &b2, err));
	owned[(*n_owned)++] = b2;
	for (int64_t e = 0; e < E; e++) {
		struct eq_site s;
		ev->exp_gu[e] = (struct eq_site){AQ_NONE, 0};
		for (int p = 0; p < 3; p++) {
			if (expert_module(c, L, e, p, mod, sizeof(mod)) < 0)
				return cal_error_set(err, CAL_ERR_INVALID,
						     "layer %d expert %lld: %s is missing from the "
						     "quantized checkpoint: it was not made from this "
						     "source", L, (long long)e,
						     c->d->arch->expert_proj[p]);
			uint16_t *dst = p == 2 ? (uint16_t *)b2 + e * H * I
					       : (uint16_t *)b13 + e * 2 * I * H + p * I * H;
			CAL_TRY(load_weight(c, mod, p == 2 ? H : I, p == 2 ? I : H, NULL, dst, &s, err));
			if (p == 2)
				ev->exp_dn[e] = s;
			else
				merge_site(&ev->exp_gu[e], &s);
		}
	}
	qw->e13 = b13;
	qw->e2 = b2;
fail:
	return st;
}

/* The quantized weights of layer L (qw starts as the source's) and the
 * sites of its inputs. */
static enum cal_status load_layer(struct cal_calib *c, int32_t L, struct cal_layer_w *qw,
				  void **owned, int *n_owned, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	const struct cal_layer_desc *ld = &c->d->layers[L];
	int64_t H = c->H, qd = c->nh * c->hd, kd = c->nkv * c->hd;
	enum cal_status st = CAL_OK;
	struct eq_site s;
	char mod[CAL_ST_MAX_NAME];
	const struct cal_st_tensor *t;
	memset(ev->site, 0, sizeof(ev->site));
	{
		struct wpart q = {CAL_ROLE_Q_PROJ, qd, H}, k = {CAL_ROLE_K_PROJ, kd, H},
			     v = {CAL_ROLE_V_PROJ, kd, H}, o = {CAL_ROLE_O_PROJ, H, qd};
		CAL_TRY(load_linear(c, L, &q, 1, qw->wq, &qw->wq, owned, n_owned, &s, err));
		merge_site(&ev->site[EQ_QKV], &s);
		CAL_TRY(load_linear(c, L, &k, 1, qw->wk, &qw->wk, owned, n_owned, &s, err));
		merge_site(&ev->site[EQ_QKV], &s);
		CAL_TRY(load_linear(c, L, &v, 1, qw->wv, &qw->wv, owned, n_owned, &s, err));
		merge_site(&ev->site[EQ_QKV], &s);
		CAL_TRY(load_linear(c, L, &o, 1, qw->wo, &qw->wo, owned, n_owned, &ev->site[EQ_O],
				    err));
		/* the KV cache: k_scale / v_scale beside k_proj / v_proj */
		if (module_of(c, CAL_ROLE_K_PROJ, L, mod, sizeof(mod), &t) == 0) {
			float ks = scalar(qget(ev, mod, "k_scale"));
			ev->site[EQ_K] = (struct eq_site){ks > 0 || ev->kv_default > 0 ? AQ_FP8 : AQ_NONE,
							  ks > 0 ? ks : ev->kv_default};
		}
		if (module_of(c, CAL_ROLE_V_PROJ, L, mod, sizeof(mod), &t) == 0) {
			float vs = scalar(qget(ev, mod, "v_scale"));
			ev->site[EQ_V] = (struct eq_site){vs > 0 || ev->kv_default > 0 ? AQ_FP8 : AQ_NONE,
							  vs > 0 ? vs : ev->kv_default};
		}
	}
	if (ld->ffn == CAL_FFN_DENSE) {
		struct wpart gu[2] = {{CAL_ROLE_MLP_GATE, c->Id, H}, {CAL_ROLE_MLP_UP, c->Id, H}},
			     dn = {CAL_ROLE_MLP_DOWN, H, c->Id};
		CAL_TRY(load_linear(c, L, gu, 2, qw->w13, &qw->w13, owned, n_owned,
				    &ev->site[EQ_MLP_GU], err));
		CAL_TRY(load_linear(c, L, &dn, 1, qw->w2, &qw->w2, owned, n_owned,
				    &ev->site[EQ_MLP_DOWN], err));
		return CAL_OK;
	}
	CAL_TRY(load_experts(c, L, qw, owned, n_owned, err));
	if (qw->s13) {
		struct wpart gu[2] = {{CAL_ROLE_SHARED_GATE, c->Is, H}, {CAL_ROLE_SHARED_UP, c->Is, H}},
			     dn = {CAL_ROLE_SHARED_DOWN, H, c->Is};
		CAL_TRY(load_linear(c, L, gu, 2, qw->s13, &qw->s13, owned, n_owned,
				    &ev->site[EQ_SH_GU], err));
		CAL_TRY(load_linear(c, L, &dn, 1, qw->s2, &qw->s2, owned, n_owned,
				    &ev->site[EQ_SH_DOWN], err));
	}
fail:
	return st;
}

/* ---- activations ------------------------------------------------------------------ */

static enum cal_status fake_quant(struct cal_calib *c, const struct eq_site *s, uint16_t *x,
				  uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	enum cal_status st = CAL_OK;
	uint64_t n = rows * cols;
	if (s->fmt == AQ_NONE || n == 0)
		return CAL_OK;
	if (n > ev->fq_elems)
		return cal_error_set(err, CAL_ERR_INTERNAL, "eval: activation of %llu elements "
				     "exceeds the scratch", (unsigned long long)n);
	if (s->fmt == AQ_FP8) {
		/* the serving engine's FP8 quantizer saturates at +-448 scale */
		struct cal_ewise_args cl = {CAL_EWISE_CLAMP, x, NULL, NULL, x, rows, cols, 0, 0, 0, 0,
					    448.0f * s->scale, 0};
		/* one rounding of the fp32 quotient, as the serving engines' quantizer */
		struct cal_fp8_quant_args q = {x, n, s->scale, CAL_DIV_EXACT, ev->qbuf, 1};
		struct cal_fp8_dequant_args d = {ev->qbuf, n, s->scale, CAL_DTYPE_BF16, x};
		CAL_TRY(cal_op_ewise(c->be, &cl, err));
		CAL_TRY(cal_op_fp8_quant(c->be, &q, err));
		CAL_TRY(cal_op_fp8_dequant(c->be, &d, err));
		return CAL_OK;
	}
	if (cols % 16)
		return cal_error_set(err, CAL_ERR_INVALID, "eval: NVFP4 input of %llu columns",
				     (unsigned long long)cols);
	struct cal_nvfp4_quant_args q = {x, rows, cols, s->scale, ev->qbuf, ev->sbuf, 0};
	struct cal_nvfp4_dequant_args d = {ev->qbuf, ev->sbuf, rows, cols, s->scale, CAL_DTYPE_BF16,
					   x, 0};
	CAL_TRY(cal_op_nvfp4_quant(c->be, &q, err));
	CAL_TRY(cal_op_nvfp4_dequant(c->be, &d, err));
fail:
	return st;
}

enum cal_status cal_eval_actq(struct cal_calib *c, int32_t L, int site, int64_t expert,
			      uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	const struct eq_site *s = &ev->site[site];
	(void)L;
	if (site == EQ_EXP_GU)
		s = &ev->exp_gu[expert];
	else if (site == EQ_EXP_DOWN)
		s = &ev->exp_dn[expert];
	return fake_quant(c, s, x, rows, cols, err);
}

/* ---- the run ------------------------------------------------------------------------ */

static uint64_t maxu(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

static uint64_t fq_per_token(const struct cal_calib *c)
{
	uint64_t H = (uint64_t)c->H, kk = maxu((uint64_t)c->kk, 1);
	return kk * maxu(maxu(H, (uint64_t)(c->nh * c->hd)),
			 maxu(maxu((uint64_t)c->Id, (uint64_t)c->I), (uint64_t)c->Is));
}

uint64_t cal_eval_token_bytes(const struct cal_calib *c)
{
	uint64_t fq = fq_per_token(c);
	return 2 * (uint64_t)c->H + fq + fq / 16 + 4 * (uint64_t)c->d->vocab_size;
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
	ev->hin = malloc(T * maxu(H, V) * 2);
	ev->ha = malloc(T * maxu(H, V) * 2);
	ev->hb = malloc(T * maxu(H, V) * 2);
	ev->yref = malloc(T * kk * H * 2);
	ev->ycmp = malloc(T * kk * H * 2);
	ev->offref = malloc(((size_t)c->E + 1) * 4);
	ev->tok_save = malloc(((size_t)c->E + 1) * 8);
	ev->exp_gu = calloc((size_t)c->E + 1, sizeof(*ev->exp_gu));
	ev->exp_dn = calloc((size_t)c->E + 1, sizeof(*ev->exp_dn));
	ev->kl = malloc((c->n_tok + 1) * sizeof(double));
	ev->next = malloc((c->n_tok + 1) * 4);
	ev->seq = malloc((c->n_tok + 1) * 4);
	ev->layers = json_array();
	if (!ev->hin || !ev->ha || !ev->hb || !ev->yref || !ev->ycmp || !ev->offref ||
	    !ev->tok_save || !ev->exp_gu || !ev->exp_dn || !ev->kl || !ev->next || !ev->seq ||
	    !ev->layers)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	for (size_t s = 0; s < ev->tk->n; s++)
		for (size_t i = ev->tk->off[s]; i < ev->tk->off[s + 1]; i++) {
			ev->seq[i] = (uint32_t)s;
			ev->next[i] = i + 1 < ev->tk->off[s + 1] ? ev->tk->ids[i + 1] : UINT32_MAX;
		}
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

/* sum (b - a)^2 and sum (a - in)^2 over n bf16 values. */
static void accum(const uint16_t *in, const uint16_t *a, const uint16_t *b, uint64_t n,
		  double *err2, double *ref2)
{
	double e = 0, r = 0;
	for (uint64_t i = 0; i < n; i++) {
		double fa = cal_bf16_to_f32(a[i]), fb = cal_bf16_to_f32(b[i]);
		double fi = in ? cal_bf16_to_f32(in[i]) : 0;
		e += (fb - fa) * (fb - fa);
		r += (fa - fi) * (fa - fi);
	}
	*err2 += e;
	*ref2 += r;
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
	void *owned[16];
	struct cal_layer_w qw = *w;
	uint64_t H = (uint64_t)c->H, E = (uint64_t)c->E, kk = maxu((uint64_t)c->kk, 1);
	double serr[CAL_MAX_STEPS] = {0}, sref[CAL_MAX_STEPS] = {0}, cerr = 0, cref = 0;
	double *xerr = NULL, *xref = NULL;
	uint64_t routing_differs = 0;
	enum cal_status st = cal_layer_steps(c, L, steps, &n_steps, err);
	if (st < 0)
		return st;
	for (int i = 0; i < n_steps; i++)
		if (steps[i] == STEP_GDN || steps[i] == STEP_ATTN_MLA ||
		    c->d->attn == CAL_ATTN_GATED_GQA)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "layer %d: %s layers are not evaluated yet", L,
					     steps[i] == STEP_GDN ? "Gated DeltaNet"
					     : steps[i] == STEP_ATTN_MLA ? "MLA attention"
					     : "gated attention");
	if (c->d->arch->id == CAL_ARCH_GPT_OSS || c->d->src_quant != CAL_SRC_QUANT_NONE)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: %s are not evaluated yet",
				     c->d->model_type, c->d->src_quant != CAL_SRC_QUANT_NONE
				     ? "quantized source checkpoints" : "GPT-OSS experts (biases, clamped "
				     "SwiGLU)");
	if (c->d->layers[L].ffn == CAL_FFN_MOE) {
		xerr = calloc(E + 1, sizeof(double));
		xref = calloc(E + 1, sizeof(double));
		if (!xerr || !xref) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
			goto fail;
		}
	}
	CAL_TRY(load_layer(c, L, &qw, owned, &n_owned, err));
	for (size_t m = 0; m < c->n_mb; m++) {
		const struct cal_mb *mb = &c->mbs[m];
		uint64_t T = mb->n_tok, n = T * H, P = T * kk;
		uint16_t *xo = c->hidden + mb->tok0 * H, *xq = ev->xq + mb->tok0 * H;
		for (int s = 0; s < n_steps; s++) {
			int moe = steps[s] == STEP_MOE;
			CAL_TRY(cal_backend_copy(c->be, ev->xtf, xo, n * 2, err));
			CAL_TRY(cal_backend_download(c->be, ev->hin, xo, n * 2, err));
			CAL_TRY(cal_layer_step_run(c, L, steps[s], w, mb, xo, err));
			if (moe) {
				CAL_TRY(cal_backend_download(c->be, ev->yref, c->yo, P * H * 2, err));
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
					CAL_TRY(cal_backend_download(c->be, ev->ycmp, c->yo, P * H * 2,
								     err));
					for (uint64_t e = 0; e < E; e++) {
						uint64_t r0 = ev->offref[e], r1 = ev->offref[e + 1];
						accum(NULL, ev->yref + r0 * H, ev->ycmp + r0 * H,
						      (r1 - r0) * H, &xerr[e], &xref[e]);
					}
				}
			}
			CAL_TRY(cal_backend_download(c->be, ev->ha, xo, n * 2, err));
			CAL_TRY(cal_backend_download(c->be, ev->hb, ev->xtf, n * 2, err));
			accum(ev->hin, ev->ha, ev->hb, n, &serr[s], &sref[s]);
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
		CAL_TRY(cal_backend_download(c->be, ev->ha, xo, n * 2, err));
		CAL_TRY(cal_backend_download(c->be, ev->hb, xq, n * 2, err));
		accum(NULL, ev->ha, ev->hb, n, &cerr, &cref);
	}
	CAL_TRY(cal_backend_sync(c->be, err));
	json_t *lj = json_pack("{s:i}", "layer", (int)L), *sa = json_array();
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

/* log-softmax of n bf16 logits into lp (double), and the argmax. */
static uint32_t log_softmax(const uint16_t *x, uint64_t n, double *lp)
{
	double mx = -INFINITY, sum = 0;
	uint32_t am = 0;
	for (uint64_t i = 0; i < n; i++) {
		lp[i] = cal_bf16_to_f32(x[i]);
		if (lp[i] > mx) {
			mx = lp[i];
			am = (uint32_t)i;
		}
	}
	for (uint64_t i = 0; i < n; i++)
		sum += exp(lp[i] - mx);
	double lse = mx + log(sum);
	for (uint64_t i = 0; i < n; i++)
		lp[i] -= lse;
	return am;
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
	const struct cal_st_tensor *nt = cal_catalog_find(c->cat, CAL_ROLE_FINAL_NORM,
							  CAL_PART_WEIGHT, -1, -1);
	const struct cal_st_tensor *lt = NULL;
	enum cal_status st = CAL_OK;
	void *nw = NULL, *lw = NULL;
	double *lpo = malloc(V * sizeof(double)), *lpq = malloc(V * sizeof(double));
	char mod[CAL_ST_MAX_NAME];
	if (!lpo || !lpq) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
		goto fail;
	}
	if (!nt || nt->numel != H || (nt->dtype != CAL_DTYPE_BF16 && nt->dtype != CAL_DTYPE_F32)) {
		st = cal_error_set(err, CAL_ERR_UNSUPPORTED, "eval: the final norm weight must be a "
				   "bf16 or f32 [%llu] tensor", (unsigned long long)H);
		goto fail;
	}
	CAL_TRY(cal_backend_alloc_upload(c->be, nt->data, nt->nbytes, &nw, err));
	CAL_TRY(cal_backend_alloc(c->be, V * H * 2, &lw, err));
	if (module_of(c, CAL_ROLE_LM_HEAD, -1, mod, sizeof(mod), &lt) == 0) {
		CAL_TRY(load_weight(c, mod, (int64_t)V, (int64_t)H,
				    lt->dtype == CAL_DTYPE_BF16 ? lt->data : NULL, lw, &ev->lm_site,
				    err));
	} else { /* tied: the embedding */
		const struct cal_st_tensor *et = cal_catalog_find(c->cat, CAL_ROLE_EMBED,
								  CAL_PART_WEIGHT, -1, -1);
		if (!et || et->numel != V * H || et->dtype != CAL_DTYPE_BF16) {
			st = cal_error_set(err, CAL_ERR_UNSUPPORTED, "eval: no bf16 lm_head or "
					   "embedding");
			goto fail;
		}
		CAL_TRY(cal_backend_upload(c->be, lw, et->data, V * H * 2, err));
	}
	enum cal_rms_kind kind = c->d->norm == CAL_NORM_RMS_F32W ? CAL_RMS_F32W
			       : c->d->norm == CAL_NORM_RMS_1P ? CAL_RMS_1P : CAL_RMS_PLAIN;
	for (size_t m = 0; m < c->n_mb; m++) {
		const struct cal_mb *mb = &c->mbs[m];
		uint64_t T = mb->n_tok;
		for (int q = 0; q < 2; q++) {
			uint16_t *x = (q ? ev->xq : c->hidden) + mb->tok0 * H;
			uint16_t *lg = q ? ev->logits_q : ev->logits_o;
			struct cal_rmsnorm_args a = {kind, x, c->h, T, H, nw, nt->dtype,
						     (float)c->d->rms_norm_eps};
			CAL_TRY(cal_op_rmsnorm(c->be, &a, err));
			if (q)
				CAL_TRY(fake_quant(c, &ev->lm_site, c->h, T, H, err));
			struct cal_gemm_args g = {.x = c->h, .w = lw, .y = lg, .m = T, .n = V, .k = H};
			CAL_TRY(cal_op_gemm(c->be, &g, err));
		}
		CAL_TRY(cal_backend_download(c->be, ev->ha, ev->logits_o, T * V * 2, err));
		CAL_TRY(cal_backend_download(c->be, ev->hb, ev->logits_q, T * V * 2, err));
		if ((ev->logits_out && fwrite(ev->hb, 2, T * V, ev->logits_out) != T * V) ||
		    (ev->logits_orig_out &&
		     fwrite(ev->ha, 2, T * V, ev->logits_orig_out) != T * V)) {
			st = cal_error_set(err, CAL_ERR_IO, "eval: writing the logits failed");
			goto fail;
		}
		for (uint64_t t = 0; t < T; t++) {
			uint64_t g = mb->tok0 + t;
			uint32_t nx = ev->next[g];
			if (nx == UINT32_MAX)
				continue;
			uint32_t ao = log_softmax(ev->ha + t * V, V, lpo);
			uint32_t aq = log_softmax(ev->hb + t * V, V, lpq);
			double kl = 0;
			for (uint64_t i = 0; i < V; i++)
				kl += exp(lpo[i]) * (lpo[i] - lpq[i]);
			kl = kl > 0 ? kl : 0;
			ev->kl[ev->n_pred++] = kl;
			ev->top1 += ao == aq;
			ev->nll_o -= lpo[nx];
			ev->nll_q -= lpq[nx];
			struct worst w = {kl, g, ev->tk->ids[g], nx, ao, aq};
			keep_worst(ev, &w);
		}
	}
fail:
	(void)cal_backend_sync(c->be, NULL);
	cal_backend_dealloc(c->be, nw);
	cal_backend_dealloc(c->be, lw);
	free(lpo);
	free(lpq);
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
	cal_backend_dealloc(c->be, ev->xq);
	cal_backend_dealloc(c->be, ev->xtf);
	cal_backend_dealloc(c->be, ev->qbuf);
	cal_backend_dealloc(c->be, ev->sbuf);
	cal_backend_dealloc(c->be, ev->logits_o);
	cal_backend_dealloc(c->be, ev->logits_q);
	free(ev->hin);
	free(ev->ha);
	free(ev->hb);
	free(ev->yref);
	free(ev->ycmp);
	free(ev->offref);
	free(ev->tok_save);
	free(ev->exp_gu);
	free(ev->exp_dn);
	free(ev->kl);
	free(ev->next);
	free(ev->seq);
	json_decref(ev->layers);
}

/* kv_cache_quant_algo of the export's hf_quant_config.json: FP8 without
 * k_scale / v_scale means scale 1 in the serving engines. */
static float kv_default(const struct cal_checkpoint *q)
{
	const struct cal_st_tensor *t = cal_checkpoint_count(q) ? cal_checkpoint_tensor(q, 0) : NULL;
	char *dir = NULL, *path = NULL, *text = NULL;
	size_t len = 0;
	float r = 0;
	if (!t || !t->file)
		return 0;
	const char *slash = strrchr(t->file, '/');
	dir = slash ? strndup(t->file, (size_t)(slash - t->file)) : strdup(".");
	path = dir ? cal_path_join(dir, "hf_quant_config.json") : NULL;
	if (path && cal_read_file(path, 16u << 20, &text, &len, NULL) >= 0) {
		json_t *j = json_loadb(text, len, 0, NULL);
		const char *kv = json_string_value(
			json_object_get(json_object_get(j, "quantization"), "kv_cache_quant_algo"));
		if (kv && !strcmp(kv, "FP8"))
			r = 1.0f;
		json_decref(j);
	}
	free(text);
	free(path);
	free(dir);
	return r;
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
	ev.kv_default = kv_default(quant);
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
	json_decref(a);
	json_decref(b);
	json_decref(rep);
	return st;
}
