/*
 * calib.c — the calibration engine's run loop (see engine/calib.h):
 * opening the checkpoint, laying the tokens out (packed, or left-padded like
 * modelopt), micro-batches, the memory plan, the embedding and the layer
 * loop (observers and statistics: stats.c; weight amax and upload:
 * weights.c; the ranks of expert parallelism: ranks.c).
 *
 * Layer streaming: two weight arenas in back-end memory.  While layer L
 * computes on one, a staging thread brings layer L+1 into the canonical
 * layout (from the mmap, copying only where the layout needs it), takes
 * the weight amax, and copies it into the other through a ring of pinned
 * host buffers with asynchronous uploads on the back end's copy stream;
 * the compute stream waits for those uploads only when layer L+1 starts.
 * Peak memory is therefore two layers' weights, the hidden states and one
 * micro-batch's activations.  On the CPU back end without a memory cap the
 * weights are used straight from the mapping (no arenas).
 *
 * Memory plan: the budget is the free device memory (less a reserve for
 * cuBLAS and the allocator) capped by opts.max_mem, which is also enforced
 * on every back-end allocation.  The hidden states of all calibration tokens
 * stay in back-end memory when they fit next to the arenas and a useful
 * micro-batch, else in pinned host memory, moved per micro-batch.
 * Micro-batches of whole sequences take what is left.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"

#define DEFAULT_MB_TOKENS 4096u
#define RING_SLOT_BYTES ((uint64_t)32 << 20)
#define COPY_CHUNK ((uint64_t)64 << 10)

/* EOS id: generation_config.json, then config.json (text_config too);
 * a list gives its first entry. */
static enum cal_status find_eos(const char *dir, int64_t *ret, struct cal_error *err)
{
	static const char *const files[] = {"generation_config.json", "config.json"};
	for (size_t f = 0; f < CAL_ARRAY_LEN(files); f++) {
		char *path = cal_path_join(dir, files[f]);
		json_t *j;
		if (!path)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		j = json_load_file(path, 0, NULL);
		free(path);
		if (!j)
			continue;
		const json_t *v = json_object_get(j, "eos_token_id");
		if (!v && json_is_object(json_object_get(j, "text_config")))
			v = json_object_get(json_object_get(j, "text_config"), "eos_token_id");
		if (json_is_array(v))
			v = json_array_get(v, 0);
		if (json_is_integer(v) && json_integer_value(v) >= 0) {
			*ret = json_integer_value(v);
			json_decref(j);
			return CAL_OK;
		}
		json_decref(j);
	}
	return cal_error_set(err, CAL_ERR_NOTFOUND,
			     "%s: no eos_token_id in generation_config.json or config.json "
			     "(needed to pad like modelopt; give a pad id)", dir);
}

/* ---- open ----------------------------------------------------------------- */

enum cal_status cal_calib_check_model(const struct cal_model_desc *d, struct cal_error *err)
{
	int oai = d->arch->id == CAL_ARCH_GPT_OSS;
	if (oai) {
		enum cal_status st = cal_oai_check(d, err); /* GPT-OSS: gpt_oss.c */
		if (st < 0)
			return st;
	} else if (d->src_quant != CAL_SRC_QUANT_NONE && d->src_quant != CAL_SRC_QUANT_FP8_BLOCK) {
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: quantized source checkpoints (%s) are not run by the "
				     "calibration engine yet", d->model_type, cal_src_quant_name(d->src_quant));
	}
	if (d->attn == CAL_ATTN_MLA) {
		enum cal_status st = cal_mla_check(d, err); /* DeepSeek MLA: mla.c */
		if (st < 0)
			return st;
	} else if ((d->attn != CAL_ATTN_GQA && d->attn != CAL_ATTN_GATED_GQA) || (d->has_sinks && !oai))
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: %s attention%s is not run by the calibration engine yet",
				     d->model_type, cal_attn_kind_name(d->attn),
				     d->has_sinks ? " with sinks" : "");
	if (d->n_linear_layers) {
		enum cal_status st = cal_gdn_check(d, err); /* Gated DeltaNet: gdn.c */
		if (st < 0)
			return st;
	}
	if (d->num_experts > 0 && d->n_moe_layers > 0) {
		if (d->router != CAL_ROUTER_SOFTMAX_TOPK && d->router != CAL_ROUTER_SIGMOID_GROUP && !oai)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "%s: router '%s' is not run by the calibration engine yet",
					     d->model_type, cal_router_kind_name(d->router));
		if (d->act != CAL_ACT_SWIGLU && !oai)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "%s: this expert activation is not run by the calibration "
					     "engine yet", d->model_type);
		if (d->top_k < 1 || d->top_k > 64 || d->top_k > d->num_experts)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "%s: top_k %lld not in [1, min(64, experts)]", d->model_type,
					     (long long)d->top_k);
	}
	if (d->router == CAL_ROUTER_SIGMOID_GROUP && d->n_moe_layers > 0) {
		struct cal_router_group_args g = {.t = 0, .h = (uint64_t)d->hidden_size,
						  .e = (uint32_t)d->num_experts, .k = (uint32_t)d->top_k,
						  .k_total = (uint32_t)d->top_k,
						  .n_group = (uint32_t)d->n_group,
						  .topk_group = (uint32_t)d->topk_group,
						  .scaling = (float)d->routed_scaling_factor};
		enum cal_status st = cal_check_router_group(&g, err);
		if (st < 0)
			return cal_error_wrap(err, st, "%s: n_group / topk_group / num_experts_per_tok",
					      d->model_type);
	}
	return CAL_OK;
}

/* The checkpoint, catalog and back end of src are borrowed when given,
 * else opened here (and freed by cal_calib_free). */
enum cal_status cal_calib_open_src(const struct cal_calib_src *src, const struct cal_plan *plan,
				   const struct cal_calib_opts *opts, struct cal_calib **ret,
				   struct cal_error *err)
{
	struct cal_calib *c = calloc(1, sizeof(*c));
	enum cal_status st = CAL_OK;
	const struct cal_model_desc *d = plan->model;
	const char *model_dir = src->model_dir;

	*ret = NULL;
	if (!c)
		return cal_error_set(err, CAL_ERR_NOMEM, "calibration engine: out of memory");
	if (opts)
		c->o = *opts;
	c->plan = plan;
	c->d = d;
	CAL_TRY(cal_calib_check_model(d, err));
	if (c->o.moe_calib_experts_ratio < 0 || c->o.moe_calib_experts_ratio > 1 ||
	    c->o.moe_calib_experts_ratio != c->o.moe_calib_experts_ratio) {
		st = cal_error_set(err, CAL_ERR_INVALID, "moe_calib_experts_ratio %g not in (0, 1]",
				   c->o.moe_calib_experts_ratio);
		goto fail;
	}
	if (!(c->ck = src->ck)) {
		CAL_TRY(cal_checkpoint_open(model_dir, &c->own_ck, err));
		c->ck = c->own_ck;
	}
	if (!(c->cat = src->cat)) {
		CAL_TRY(cal_catalog_build(d, c->ck, &c->own_cat, err));
		c->cat = c->own_cat;
	}
	struct cal_backend_opts bo = {.cpu_threads = c->o.cpu_threads,
				      .cuda_device = c->o.cuda_device};
	if (!(c->be = src->be)) {
		CAL_TRY(cal_backend_init(c->o.backend, &bo, &c->own_be, err));
		c->be = c->own_be;
	}
	c->o.backend = c->be->kind;
	c->o.cuda_device = c->be->cuda_device;
	CAL_TRY(cal_backend_init(CAL_BACKEND_CPU, &bo, &c->host, err));
	c->on_device = c->o.backend != CAL_BACKEND_CPU;

	c->H = d->hidden_size;
	c->nh = d->num_heads;
	c->nkv = d->num_kv_heads;
	c->hd = d->head_dim;
	c->Id = d->intermediate_size;
	c->E = d->n_moe_layers ? d->num_experts : 0;
	c->k = d->n_moe_layers ? d->top_k : 0;
	c->I = d->moe_intermediate_size;
	c->Is = d->shared != CAL_SHARED_NONE ? d->shared_intermediate_size : 0;
	c->kk = c->k;
	if (c->E && c->o.moe_calib_experts_ratio > 0) {
		int64_t r = (int64_t)llround(c->o.moe_calib_experts_ratio * (double)c->E);
		c->kk = r > c->k ? r : c->k;
		if (c->kk > c->E)
			c->kk = c->E;
	}
	c->rd = d->rope.rotary_dim;
	if (c->rd < 0 || c->rd > c->hd || c->rd % 2) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "rotary dim %lld does not fit head_dim %lld",
				   (long long)c->rd, (long long)c->hd);
		goto fail;
	}
	c->inv_freq = calloc((size_t)c->rd / 2 + 1, sizeof(float));
	if (!c->inv_freq) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	CAL_TRY(cal_rope_inv_freq(d, c->inv_freq, c->rd, err));
	if (c->o.pad_like_modelopt && c->o.pad_id < 0)
		CAL_TRY(find_eos(model_dir, &c->o.pad_id, err));
	if (c->o.pad_like_modelopt && (uint64_t)c->o.pad_id >= (uint64_t)d->vocab_size) {
		st = cal_error_set(err, CAL_ERR_RANGE, "pad id %lld is outside the vocabulary (%lld)",
				   (long long)c->o.pad_id, (long long)d->vocab_size);
		goto fail;
	}
	c->n_slots = S_FIXED + 2 * (uint64_t)c->E;
	c->l_amax = malloc((size_t)d->num_layers * S_FIXED * sizeof(float));
	c->moe = calloc((size_t)d->num_layers, sizeof(*c->moe));
	c->q_amax = calloc(plan->n_q + 1, sizeof(float));
	c->q_has = calloc(plan->n_q + 1, 1);
	if (!c->l_amax || !c->moe || !c->q_amax || !c->q_has) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	for (int64_t i = 0; i < d->num_layers * S_FIXED; i++)
		c->l_amax[i] = -1.0f;
	c->lmhead_amax = -1.0f;
	for (int64_t L = 0; L < d->num_layers; L++) {
		if (d->layers[L].ffn != CAL_FFN_MOE)
			continue;
		struct cal_moe_host *m = &c->moe[L];
		m->tokens = calloc((size_t)c->E, sizeof(uint64_t));
		m->gu = malloc((size_t)c->E * sizeof(float));
		m->down = malloc((size_t)c->E * sizeof(float));
		if (!m->tokens || !m->gu || !m->down) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
			goto fail;
		}
		for (int64_t e = 0; e < c->E; e++)
			m->gu[e] = m->down[e] = -1.0f;
		m->pub = (struct cal_calib_moe_stats){c->E, m->tokens, m->gu, m->down};
	}
	CAL_TRY(cal_ranks_open(c, src, err));
	CAL_TRY(cal_lin_run_open(c, err)); /* GPTQ, AWQ-lite, SmoothQuant */
	*ret = c;
	return CAL_OK;
fail:
	cal_calib_free(c);
	return st;
}

enum cal_status cal_calib_open(const char *model_dir, const struct cal_plan *plan,
			       const struct cal_calib_opts *opts, struct cal_calib **ret,
			       struct cal_error *err)
{
	struct cal_calib_src src = {.model_dir = model_dir};
	return cal_calib_open_src(&src, plan, opts, ret, err);
}

static void free_run(struct cal_calib *c)
{
	void *bufs[] = {c->hidden, c->pos, c->meta, c->d_inv_freq, c->h, c->q, c->kb, c->vb,
			c->att, c->tmp, c->gu, c->act, c->logits, c->xg, c->sgu, c->sact,
			c->sy, c->sgl, c->idx, c->offsets, c->sorted, c->ppos, c->rw, c->obs_amax,
			c->obs_nf, c->arena[0], c->arena[1], c->xmb, c->w_amax, c->w_nf, c->w_off,
			c->fp8_wamax, c->fp8_wnf, c->obs_hist};
	if (!c->be)
		return;
	cal_lin_run_release(c);
	cal_kv_free(c);
	for (size_t i = 0; i < CAL_ARRAY_LEN(bufs); i++)
		cal_be_free(c, bufs[i]);
	cal_gdn_free(c);
	cal_mla_free(c);
	cal_ep_free(c);
	c->hidden = NULL;
	c->pos = c->meta = NULL;
	c->d_inv_freq = NULL;
	c->h = c->q = c->kb = c->vb = c->att = c->tmp = c->gu = c->act = c->logits = NULL;
	c->xg = c->yo = c->sgu = c->sact = c->sy = c->sgl = NULL;
	c->idx = c->offsets = c->sorted = c->ppos = NULL;
	c->rw = c->obs_amax = NULL;
	c->obs_nf = NULL;
	c->obs_hist = NULL;
	c->arena[0] = c->arena[1] = NULL;
	c->xmb = NULL;
	c->w_amax = NULL;
	c->w_nf = NULL;
	c->w_off = NULL;
	c->fp8_wamax = NULL;
	c->fp8_wnf = NULL;
	free(c->fp8_wpend);
	c->fp8_wpend = NULL;
	for (int i = 0; i < CAL_RING_SLOTS; i++) {
		cal_backend_host_free(c->be, c->ring[i]);
		c->ring[i] = NULL;
		c->ring_used[i] = 0;
	}
	c->ring_next = 0;
	cal_backend_host_free(c->be, c->hidden_host);
	c->hidden_host = NULL;
	free(c->h_offsets);
	c->h_offsets = NULL;
	free(c->mbs);
	c->mbs = NULL;
}

void cal_calib_free(struct cal_calib *c)
{
	if (!c)
		return;
	free_run(c);
	cal_lin_run_free(c);
	if (c->moe && c->d)
		for (int64_t L = 0; L < c->d->num_layers; L++)
			CAL_FREE_ALL(c->moe[L].tokens, c->moe[L].gu, c->moe[L].down);
	CAL_FREE_ALL(c->moe, c->l_amax, c->hr_amax, c->q_amax, c->q_has, c->inv_freq, c->kv_bias_host);
	cal_ranks_free(c);
	cal_backend_free(c->own_be);
	cal_backend_free(c->host);
	cal_catalog_free(c->own_cat);
	cal_checkpoint_free(c->own_ck);
	free(c);
}

/* ---- token layout and buffers --------------------------------------------- */

/* Bytes of scratch per micro-batch token (all buffers scale with tokens). */
static uint64_t per_token_bytes(const struct cal_calib *c)
{
	int mla = c->d->attn == CAL_ATTN_MLA; /* own scratch: mla.c */
	uint64_t H = c->H, qd = mla ? 0 : c->nh * c->hd, kd = mla ? 0 : c->nkv * c->hd, kk = c->kk;
	uint64_t b = 2 * (H + qd + 2 * kd + qd + H) + cal_mla_token_bytes(c);
	uint64_t dense = 2 * (3 * (uint64_t)c->Id);
	/* expert outputs reuse the gathered inputs (c->yo = c->xg) */
	uint64_t moe = c->E ? 2 * ((uint64_t)c->E + kk * (H + 3 * (uint64_t)c->I) +
				   3 * (uint64_t)c->Is + H + 1) +
				      4 * (3 * kk + (uint64_t)c->k)
			    : 0;
	return b + (dense > moe ? dense : moe) + (c->hidden_on_host ? 2 * H : 0) +
	       cal_gdn_token_bytes(c) + (c->ev ? cal_eval_token_bytes(c) : 0);
}

static enum cal_status layout_tokens(struct cal_calib *c, const struct cal_calib_tokens *tk,
				     uint32_t **ret_ids, uint32_t **ret_pos, uint32_t **ret_meta,
				     uint64_t *ret_meta_n, struct cal_error *err)
{
	size_t n = tk->n, smax = 0;
	uint64_t total = 0;
	uint32_t *ids = NULL, *pos = NULL, *meta = NULL;
	enum cal_status st = CAL_OK;
	for (size_t i = 0; i < n; i++) {
		size_t len = tk->off[i + 1] - tk->off[i];
		smax = len > smax ? len : smax;
	}
	if (c->o.pad_like_modelopt) {
		if (cal_mul_u64(n, smax, &total) < 0 || total > CAL_CALIB_MAX_TOKENS)
			return cal_error_set(err, CAL_ERR_RANGE, "padded calibration set too large");
	} else {
		total = tk->n_tokens;
	}
	ids = malloc(total * sizeof(uint32_t));
	pos = malloc(total * sizeof(uint32_t));
	/* micro-batches: whole sequences up to mb_tokens */
	c->mbs = calloc(n, sizeof(*c->mbs));
	meta = malloc((2 * n + n) * sizeof(uint32_t) + 4);
	if (!ids || !pos || !c->mbs || !meta) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory laying out %llu tokens",
				   (unsigned long long)total);
		goto fail;
	}
	uint64_t t = 0, mo = 0;
	struct cal_mb *mb = NULL;
	uint32_t *ks_tmp = malloc(n * sizeof(uint32_t) + 4);
	if (!ks_tmp) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	c->n_mb = 0;
	for (size_t i = 0; i < n; i++) {
		size_t len = tk->off[i + 1] - tk->off[i];
		size_t rows = c->o.pad_like_modelopt ? smax : len, pad = rows - len;
		if (!mb || mb->n_tok + rows > c->mb_tokens) {
			/* close the previous one: append key_start after cu */
			if (mb) {
				memcpy(meta + mo, ks_tmp, mb->n_seq * sizeof(uint32_t));
				mo += mb->n_seq;
			}
			mb = &c->mbs[c->n_mb++];
			mb->tok0 = t;
			mb->n_tok = 0;
			mb->n_seq = 0;
			mb->meta_off = mo;
			meta[mo++] = 0;
		}
		for (size_t j = 0; j < rows; j++) {
			ids[t + j] = j < pad ? (uint32_t)c->o.pad_id : tk->ids[tk->off[i] + j - pad];
			pos[t + j] = (uint32_t)j;
		}
		ks_tmp[mb->n_seq] = (uint32_t)pad;
		mb->n_seq++;
		mb->n_tok += rows;
		meta[mo++] = (uint32_t)mb->n_tok;
		t += rows;
	}
	memcpy(meta + mo, ks_tmp, mb->n_seq * sizeof(uint32_t));
	mo += mb->n_seq;
	free(ks_tmp);
	c->n_tok = total;
	*ret_ids = ids;
	*ret_pos = pos;
	*ret_meta = meta;
	*ret_meta_n = mo;
	return CAL_OK;
fail:
	CAL_FREE_ALL(ids, pos, meta);
	return st;
}

static enum cal_status alloc_run(struct cal_calib *c, struct cal_error *err)
{
	int mla = c->d->attn == CAL_ATTN_MLA; /* own scratch: mla.c */
	uint64_t T = c->mb_tokens, H = c->H, qd = mla ? 0 : c->nh * c->hd;
	uint64_t kd = mla ? 0 : c->nkv * c->hd;
	uint64_t kk = c->kk, P = T * kk, I = c->I, Is = c->Is, Id = c->Id, E = c->E;
	enum cal_status st = CAL_OK;
	uint64_t gu_n = 2 * Id * T, act_n = Id * T;
	if (E) {
		gu_n = gu_n > 2 * I * P ? gu_n : 2 * I * P;
		act_n = act_n > I * P ? act_n : I * P;
	}
	CAL_TRY(cal_be_alloc(c, T * H * 2, &c->h, err));
	CAL_TRY(cal_be_alloc(c, T * qd * 2, &c->q, err));
	CAL_TRY(cal_be_alloc(c, T * kd * 2, &c->kb, err));
	CAL_TRY(cal_be_alloc(c, T * kd * 2, &c->vb, err));
	CAL_TRY(cal_be_alloc(c, T * qd * 2, &c->att, err));
	CAL_TRY(cal_be_alloc(c, T * H * 2, &c->tmp, err));
	CAL_TRY(cal_be_alloc(c, gu_n * 2, &c->gu, err));
	CAL_TRY(cal_be_alloc(c, act_n * 2, &c->act, err));
	if (E) {
		CAL_TRY(cal_be_alloc(c, T * E * 2, &c->logits, err));
		CAL_TRY(cal_be_alloc(c, P * H * 2, &c->xg, err));
		c->yo = c->xg;
		CAL_TRY(cal_be_alloc(c, P * 4, &c->idx, err));
		CAL_TRY(cal_be_alloc(c, (E + 1) * 4, &c->offsets, err));
		CAL_TRY(cal_be_alloc(c, P * 4, &c->sorted, err));
		CAL_TRY(cal_be_alloc(c, P * 4, &c->ppos, err));
		CAL_TRY(cal_be_alloc(c, T * (uint64_t)c->k * 4, &c->rw, err));
		c->h_offsets = malloc((E + 1) * 4);
		if (!c->h_offsets)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		if (Is) {
			CAL_TRY(cal_be_alloc(c, T * 2 * Is * 2, &c->sgu, err));
			CAL_TRY(cal_be_alloc(c, T * Is * 2, &c->sact, err));
			CAL_TRY(cal_be_alloc(c, T * H * 2, &c->sy, err));
			CAL_TRY(cal_be_alloc(c, T * 2, &c->sgl, err));
		}
	}
	CAL_TRY(cal_be_alloc(c, c->n_slots * sizeof(float), &c->obs_amax, err));
	CAL_TRY(cal_be_alloc(c, c->n_slots * sizeof(struct cal_nonfinite), &c->obs_nf, err));
	CAL_TRY(cal_hr_alloc(c, err));
	CAL_TRY(cal_gdn_alloc(c, err)); /* gated attention / Gated DeltaNet scratch */
	CAL_TRY(cal_mla_alloc(c, err)); /* DeepSeek MLA and router scratch */
	if (c->hidden_on_host)
		CAL_TRY(cal_be_alloc(c, T * H * 2, &c->xmb, err));
	if (E && (c->on_device || c->fp8_dev)) {
		/* expert weight amax on the device: rows of expert e of W13 / W2
		 * (this rank's El experts) */
		uint64_t El = (uint64_t)c->El;
		uint32_t *off = malloc(2 * (El + 1) * 4);
		if (!off)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		for (uint64_t e = 0; e <= El; e++) {
			off[e] = (uint32_t)(e * 2 * I);
			off[El + 1 + e] = (uint32_t)(e * H);
		}
		st = cal_be_alloc(c, 2 * El * 4, &c->w_amax, err);
		if (st >= 0)
			st = cal_be_alloc(c, 2 * sizeof(struct cal_nonfinite), &c->w_nf, err);
		if (st >= 0)
			st = cal_be_alloc(c, 2 * (El + 1) * 4, &c->w_off, err);
		if (st >= 0)
			st = cal_backend_upload(c->be, c->w_off, off, 2 * (El + 1) * 4, err);
		free(off);
		if (st < 0)
			return st;
	}
	if (c->fp8_dev) {
		/* amax of FP8 weights decoded by the back end (cal_w_fp8_amax_enqueue) */
		c->fp8_wpend = calloc(c->plan->n_q + 1, 1);
		if (!c->fp8_wpend)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		CAL_TRY(cal_be_alloc(c, (c->plan->n_q + 1) * sizeof(float), &c->fp8_wamax, err));
		CAL_TRY(cal_be_alloc(c, sizeof(struct cal_nonfinite), &c->fp8_wnf, err));
		CAL_TRY(cal_backend_memset(c->be, c->fp8_wamax, 0, (c->plan->n_q + 1) * sizeof(float),
					   err));
		CAL_TRY(cal_nonfinite_reset(c->be, c->fp8_wnf, err));
	}
	for (int i = 0; i < 2 && c->stream_weights; i++) {
		if (!c->arena_bytes[i])
			continue; /* a one-layer model */
		st = cal_be_alloc(c, c->arena_bytes[i], &c->arena[i], err);
		if (st < 0)
			return cal_error_wrap(err, st, "layer weights arena %d (%llu bytes)", i,
					      (unsigned long long)c->arena_bytes[i]);
	}
fail:
	return st;
}

/* ---- hidden states, profiling ------------------------------------------------ */

uint16_t *cal_mb_x(const struct cal_calib *c, const struct cal_mb *mb)
{
	if (c->x_override)
		return c->x_override;
	return c->hidden_on_host ? c->xmb : c->hidden + mb->tok0 * (uint64_t)c->H;
}

/* Moves micro-batch mb's hidden states between the host copy and the
 * device (hidden on host): to the device (load), or back (store). */
static enum cal_status mb_move(struct cal_calib *c, const struct cal_mb *mb, int store,
			       struct cal_error *err)
{
	enum cal_status st;
	int ph = c->prof_phase;
	if (!c->hidden_on_host)
		return CAL_OK;
	cal_prof(c, PH_HIDDEN_IO);
	uint16_t *host = c->hidden_host + mb->tok0 * (uint64_t)c->H;
	uint64_t n = mb->n_tok * (uint64_t)c->H * 2;
	st = store ? cal_backend_download(c->be, host, c->xmb, n, err)
		   : cal_backend_upload(c->be, c->xmb, host, n, err);
	cal_prof(c, ph);
	return st;
}

static enum cal_status mb_load(struct cal_calib *c, const struct cal_mb *mb, struct cal_error *err)
{
	return mb_move(c, mb, 0, err);
}

static enum cal_status mb_store(struct cal_calib *c, const struct cal_mb *mb, struct cal_error *err)
{
	return mb_move(c, mb, 1, err);
}

void cal_prof(struct cal_calib *c, int phase)
{
	if (c->o.profile) {
		double now;
		(void)cal_backend_sync(c->be, NULL); /* errors surface at the next checked sync */
		now = cal_now();
		c->ph[c->prof_phase] += now - c->prof_t;
		c->prof_t = now;
	}
	c->prof_phase = phase;
}

static enum cal_status final_norm(struct cal_calib *c, struct cal_error *err)
{
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, CAL_ROLE_FINAL_NORM,
							 CAL_PART_WEIGHT, -1, -1);
	enum cal_status st = CAL_OK;
	void *w = NULL;
	if (!t || t->numel != (uint64_t)c->H ||
	    (t->dtype != CAL_DTYPE_BF16 && t->dtype != CAL_DTYPE_F32))
		return CAL_OK; /* nothing to observe */
	CAL_TRY(cal_obs_reset(c, err));
	CAL_TRY(cal_be_alloc(c, t->nbytes, &w, err));
	if (t->dtype == CAL_DTYPE_F32 && c->d->norm == CAL_NORM_RMS_F32W) {
		float *r = malloc(t->nbytes); /* gpt_oss: bf16 values, as transformers loads them */
		if (!r) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
			goto fail;
		}
		cal_oai_norm_weight(t->data, t->numel, r);
		st = cal_backend_upload(c->be, w, r, t->nbytes, err);
		free(r);
		if (st < 0)
			goto fail;
	} else {
		CAL_TRY(cal_backend_upload(c->be, w, t->data, t->nbytes, err));
	}
	for (size_t i = 0; i < c->n_mb; i++) {
		const struct cal_mb *mb = &c->mbs[i];
		if (!cal_ranks_mine(c, i))
			continue;
		enum cal_rms_kind kind = c->d->norm == CAL_NORM_RMS_F32W ? CAL_RMS_F32W
				       : c->d->norm == CAL_NORM_RMS_1P ? CAL_RMS_1P : CAL_RMS_PLAIN;
		CAL_TRY(mb_load(c, mb, err));
		struct cal_rmsnorm_args a = {kind, cal_mb_x(c, mb), c->h, mb->n_tok, (uint64_t)c->H, w,
					     t->dtype, (float)c->d->rms_norm_eps};
		struct cal_amax_args o = {CAL_DTYPE_BF16, c->h, mb->n_tok * (uint64_t)c->H,
					  mb->tok0 * (uint64_t)c->H, c->obs_amax + S_LMHEAD,
					  c->obs_nf + S_LMHEAD};
		CAL_TRY(cal_op_rmsnorm(c->be, &a, err));
		CAL_TRY(cal_op_amax(c->be, &o, err));
	}
	CAL_TRY(cal_obs_read_back(c, -1, err));
	cal_ep_count_layer(c, -1);
	cal_obs_map_layer(c, -1);
fail:
	cal_be_free(c, w);
	return st;
}

/* ---- memory plan ---------------------------------------------------------------- */

/*
 * Decides where things live and how large micro-batches are: budget = free
 * device memory less a reserve (cuBLAS workspace, allocator slack), capped
 * by opts.max_mem (0: no cap; on the CPU without a cap nothing is planned:
 * weights stay in the mapping, micro-batches of opts.micro_batch_tokens or
 * 4096).  Fixed: two layer arenas, token positions / ids, metadata,
 * observers.  The hidden states stay in back-end memory when they leave
 * room for a micro-batch of min(n_tok, max(16384, longest sequence))
 * tokens, else in pinned host memory.
 */
static enum cal_status plan_memory(struct cal_calib *c, const struct cal_calib_tokens *tk,
				   uint64_t *ret_budget, struct cal_error *err)
{
	uint64_t H = c->H, smax = 0, n_tok, budget = UINT64_MAX;
	enum cal_status st = CAL_OK;
	for (size_t i = 0; i < tk->n; i++) {
		uint64_t len = tk->off[i + 1] - tk->off[i];
		smax = len > smax ? len : smax;
	}
	n_tok = c->o.pad_like_modelopt ? (uint64_t)tk->n * smax : tk->n_tokens;
	c->stream_weights = c->on_device || c->o.max_mem;
	/* FP8 block source experts travel as codes and are decoded where they run */
	c->fp8_dev = c->stream_weights && c->d->src_quant == CAL_SRC_QUANT_FP8_BLOCK && c->E;
	c->hidden_on_host = 0;
	c->max_layer_bytes = c->model_weight_bytes = 0;
	c->arena_bytes[0] = c->arena_bytes[1] = 0;
	for (int32_t L = 0; L < c->d->num_layers; L++) {
		uint64_t b = cal_w_layer_bytes(c, L);
		c->max_layer_bytes = b > c->max_layer_bytes ? b : c->max_layer_bytes;
		c->model_weight_bytes += b;
		/* layer L lives in arena L % 2 */
		if (b > c->arena_bytes[L & 1])
			c->arena_bytes[L & 1] = b;
	}
	if (c->on_device) {
		uint64_t fr = 0, tot = 0;
		CAL_TRY(cal_backend_mem_info(c->be, &fr, &tot, err));
		uint64_t reserve = ((uint64_t)512 << 20) + fr / 50;
		budget = fr > reserve ? fr - reserve : 0;
	}
	if (c->o.max_mem && c->o.max_mem < budget)
		budget = c->o.max_mem;
	cal_backend_set_mem_limit(c->be, c->o.max_mem);
	*ret_budget = budget;
	uint64_t hard = (uint64_t)INT32_MAX / (uint64_t)(c->kk > 0 ? c->kk : 1);
	if (!c->on_device && !c->o.max_mem) {
		c->mb_tokens = c->o.micro_batch_tokens ? c->o.micro_batch_tokens : DEFAULT_MB_TOKENS;
	} else {
		uint64_t fixed = 8 * n_tok + 12 * (uint64_t)tk->n + 4096 + 4 * (uint64_t)c->rd +
				 c->n_slots * (4 + sizeof(struct cal_nonfinite)) +
				 16 * ((uint64_t)c->E + 1) + 64 * 256 + (uint64_t)(64 << 10);
		if (c->stream_weights)
			fixed += c->arena_bytes[0] + c->arena_bytes[1];
		if (c->ev) /* the quantized model: its hidden states, one layer's weights, lm_head */
			fixed += n_tok * H * 2 + c->max_layer_bytes +
				 (uint64_t)c->d->vocab_size * H * 2 + 4 * H;
		if (fixed >= budget)
			return cal_error_set(err, CAL_ERR_NOMEM,
					     "memory budget of %llu bytes (%s) cannot hold two layers' "
					     "weights (%llu + %llu bytes) and the token metadata",
					     (unsigned long long)budget,
					     c->o.max_mem == budget ? "--max-gpu-mem" : "free device memory",
					     (unsigned long long)c->arena_bytes[0],
					     (unsigned long long)c->arena_bytes[1]);
		uint64_t avail = budget - fixed, hid = n_tok * H * 2, per = per_token_bytes(c);
		uint64_t want = n_tok < 16384 ? n_tok : 16384;
		want = want > smax ? want : smax;
		if (avail < hid || (avail - hid) / per < want) {
			c->hidden_on_host = 1;
			per = per_token_bytes(c);
		} else {
			avail -= hid;
		}
		c->mb_tokens = avail / per;
		if (c->o.micro_batch_tokens && c->o.micro_batch_tokens < c->mb_tokens)
			c->mb_tokens = c->o.micro_batch_tokens;
		if (c->mb_tokens < smax && (!c->o.micro_batch_tokens || avail / per < smax))
			return cal_error_set(err, CAL_ERR_NOMEM,
					     "memory budget of %llu bytes (%s) leaves room for %llu "
					     "tokens per micro-batch; the longest calibration sequence "
					     "has %llu (micro-batches hold whole sequences)",
					     (unsigned long long)budget,
					     c->o.max_mem == budget ? "--max-gpu-mem" : "free device memory",
					     (unsigned long long)(avail / per), (unsigned long long)smax);
	}
	/* a sequence is never split: a micro-batch holds at least the longest */
	if (c->mb_tokens < smax)
		c->mb_tokens = smax;
	if (c->mb_tokens > n_tok)
		c->mb_tokens = n_tok;
	if (c->mb_tokens > hard)
		c->mb_tokens = hard;
	if (c->mb_tokens < smax)
		return cal_error_set(err, CAL_ERR_RANGE,
				     "calibration sequence of %llu tokens exceeds the largest micro-batch "
				     "(%llu tokens)", (unsigned long long)smax,
				     (unsigned long long)c->mb_tokens);
fail:
	return st;
}

/* ---- embedding ---------------------------------------------------------------- */

/* hidden = embed_tokens[ids]: on the device when the table fits next to the
 * hidden states, else gathered on the host (into the pinned hidden states,
 * or chunk by chunk through the staging ring). */
static enum cal_status embed(struct cal_calib *c, const uint32_t *ids, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	uint64_t H = c->H, n = (uint64_t)d->vocab_size * H;
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, CAL_ROLE_EMBED, CAL_PART_WEIGHT,
							 -1, -1);
	enum cal_status st = CAL_OK;
	void *dtab = NULL;
	uint32_t *d_ids = NULL;
	if (!t || t->numel != n || t->dtype != CAL_DTYPE_BF16)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "embed_tokens: a bf16 [%lld, %lld] tensor is expected",
				     (long long)d->vocab_size, (long long)H);
	if (!c->on_device && !c->hidden_on_host) {
		struct cal_gather_rows_args g = {t->data, (uint64_t)d->vocab_size, H, ids, c->n_tok,
						 1, c->hidden};
		return cal_op_gather_rows(c->be, &g, err);
	}
	if (c->on_device && !c->hidden_on_host) {
		struct cal_error e2 = {0};
		if (cal_be_alloc(c, t->nbytes, &dtab, &e2) >= 0 && cal_be_alloc(c, c->n_tok * 4, &d_ids, &e2) >= 0) {
			/* through the pinned ring: several times faster than from the mapping */
			CAL_TRY(cal_w_copy_in(c, dtab, t->data, t->nbytes, err));
			CAL_TRY(cal_backend_upload_wait(c->be, err));
			CAL_TRY(cal_backend_upload(c->be, d_ids, ids, c->n_tok * 4, err));
			struct cal_gather_rows_args g = {dtab, (uint64_t)d->vocab_size, H, d_ids,
							 c->n_tok, 1, c->hidden};
			CAL_TRY(cal_op_gather_rows(c->be, &g, err));
			CAL_TRY(cal_backend_sync(c->be, err));
			goto fail;
		}
		cal_error_clear(&e2); /* no room for the table: gather on the host */
	}
	if (c->on_device)
		CAL_TRY(cal_backend_upload_sync(c->be, err)); /* the ring is free */
	uint64_t rows = c->hidden_on_host ? c->n_tok : c->ring_bytes / (H * 2);
	if (rows == 0)
		rows = 1;
	for (uint64_t r0 = 0; r0 < c->n_tok; r0 += rows) {
		uint64_t nr = c->n_tok - r0 < rows ? c->n_tok - r0 : rows;
		uint16_t *dst = c->hidden_on_host ? c->hidden_host + r0 * H : c->ring[0];
		struct cal_gather_rows_args g = {t->data, (uint64_t)d->vocab_size, H, ids + r0, nr, 1,
						 dst};
		CAL_TRY(cal_op_gather_rows(c->host, &g, err));
		if (!c->hidden_on_host)
			CAL_TRY(cal_backend_upload(c->be, c->hidden + r0 * H, dst, nr * H * 2, err));
	}
fail:
	cal_be_free(c, dtab);
	cal_be_free(c, d_ids);
	return st;
}

/* ---- the run loop ---------------------------------------------------------------- */

enum cal_status cal_calib_run(struct cal_calib *c, const struct cal_calib_tokens *tokens,
			      struct cal_error *err)
{
	return cal_ranks_run(c, tokens, err);
}

enum cal_status cal_calib_run_rank(struct cal_calib *c, const struct cal_calib_tokens *tokens,
				   struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	uint32_t *ids = NULL, *pos = NULL, *meta = NULL;
	uint64_t meta_n = 0, budget = 0;
	uint16_t *hbuf = NULL;
	enum cal_status st = CAL_OK;
	double t0 = cal_now();
	struct cal_layer_host lh[2];
	struct cal_layer_w dw[2];
	struct stage_job job;
	pthread_t tid;
	int job_running = 0;

	memset(lh, 0, sizeof(lh));
	memset(dw, 0, sizeof(dw));
	memset(&job, 0, sizeof(job));
	for (size_t i = 0; i < tokens->n_tokens; i++)
		if (tokens->ids[i] >= (uint64_t)d->vocab_size)
			return cal_error_set(err, CAL_ERR_RANGE,
					     "calibration token %zu: id %u is outside the vocabulary (%lld)",
					     i, tokens->ids[i], (long long)d->vocab_size);
	free_run(c);
	if (c->ev && c->nranks > 1)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "evaluation runs on one rank, not %u",
				     c->nranks);
	memset(c->comm_bytes, 0, ((size_t)d->num_layers + 1) * sizeof(uint64_t));
	cal_backend_mem_reset_peak(c->be);
	memset(c->ph, 0, sizeof(c->ph));
	c->stage_s = c->stage_wait_s = c->total_s = 0;
	c->prof_phase = PH_EMBED;
	c->prof_t = t0;
	c->done_layers = 0;
	for (int32_t L = 0; L < d->num_layers; L++)
		if (c->moe[L].tokens)
			memset(c->moe[L].tokens, 0, (size_t)c->E * sizeof(uint64_t));

	CAL_TRY(plan_memory(c, tokens, &budget, err));
	if (c->nranks > 1) { /* every rank lays out the same micro-batches: the smallest */
		CAL_TRY(cal_ranks_min(c, &c->mb_tokens, err));
	}
	c->mem_budget = budget;
	CAL_TRY(layout_tokens(c, tokens, &ids, &pos, &meta, &meta_n, err));
	if (c->hidden_on_host)
		CAL_TRY(cal_backend_host_alloc(c->be, c->n_tok * (uint64_t)c->H * 2,
					       (void **)&c->hidden_host, err));
	else
		CAL_TRY(cal_be_alloc(c, c->n_tok * (uint64_t)c->H * 2, &c->hidden, err));
	CAL_TRY(cal_be_alloc(c, c->n_tok * 4, &c->pos, err));
	CAL_TRY(cal_be_alloc(c, meta_n * 4, &c->meta, err));
	CAL_TRY(cal_be_alloc(c, ((uint64_t)c->rd / 2 + 1) * 4, &c->d_inv_freq, err));
	CAL_TRY(cal_backend_upload(c->be, c->pos, pos, c->n_tok * 4, err));
	CAL_TRY(cal_backend_upload(c->be, c->meta, meta, meta_n * 4, err));
	CAL_TRY(cal_backend_upload(c->be, c->d_inv_freq, c->inv_freq, ((uint64_t)c->rd / 2 + 1) * 4,
				   err));
	if (c->on_device) {
		c->ring_bytes = RING_SLOT_BYTES;
		for (int i = 0; i < CAL_RING_SLOTS; i++)
			CAL_TRY(cal_backend_host_alloc(c->be, c->ring_bytes, &c->ring[i], err));
	}
	CAL_TRY(embed(c, ids, err));
	CAL_TRY(alloc_run(c, err));
	CAL_TRY(cal_kv_alloc(c, err));
	if (c->nranks > 1)
		CAL_TRY(cal_ep_alloc(c, err));
	if (c->ev)
		CAL_TRY(cal_eval_begin(c, err));
	if (c->o.on_hidden && c->on_device && !c->hidden_on_host) {
		hbuf = malloc(c->n_tok * (uint64_t)c->H * 2);
		if (!hbuf) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
			goto fail;
		}
	}
	c->ph[PH_EMBED] += cal_now() - c->prof_t;
	c->prof_t = cal_now();
	c->prof_phase = PH_OTHER;

	/* layer 0 is staged here; each next one by a thread while this one
	 * computes, its source asked for a layer ahead of that */
	cal_w_prefetch(c, 0);
	cal_w_prefetch(c, 1);
	if (d->num_layers > 0)
		CAL_TRY(cal_w_stage(c, 0, &lh[0], &dw[0], 0, err));
	for (int32_t L = 0; L < d->num_layers; L++) {
		int sl = L & 1;
		if (job_running) {
			double tw = cal_now();
			pthread_join(tid, NULL);
			job_running = 0;
			c->stage_wait_s += cal_now() - tw;
			if (job.st < 0) {
				st = cal_error_set(err, job.st, "%s", cal_error_msg(&job.err));
				cal_error_clear(&job.err);
				goto fail;
			}
		}
		cal_prof(c, PH_UPLOAD);
		CAL_TRY(cal_backend_upload_wait(c->be, err));
		if (c->o.profile)
			CAL_TRY(cal_backend_upload_sync(c->be, err));
		cal_prof(c, PH_OTHER);
		if (L + 1 < d->num_layers) {
			/* arena sl ^ 1 held layer L - 1, which is done */
			cal_w_prefetch(c, L + 2);
			job = (struct stage_job){c, L + 1, &lh[sl ^ 1], &dw[sl ^ 1], sl ^ 1, CAL_OK, {0}};
			if (pthread_create(&tid, NULL, cal_w_stage_main, &job) == 0) {
				job_running = 1;
			} else {
				cal_w_stage_main(&job); /* no thread: stage it here, later */
				if (job.st < 0) {
					st = cal_error_set(err, job.st, "%s", cal_error_msg(&job.err));
					cal_error_clear(&job.err);
					goto fail;
				}
			}
		}
		CAL_TRY(cal_ranks_test_fail(c, L, err));
		CAL_TRY(cal_obs_reset(c, err));
		CAL_TRY(cal_w_fp8_decode(c, &dw[sl], err));
		CAL_TRY(cal_w_fp8_amax_enqueue(c, L, &lh[sl], &dw[sl], err));
		CAL_TRY(cal_w_expert_amax_enqueue(c, L, &dw[sl], err));
		if (c->ev)
			CAL_TRY(cal_eval_layer(c, L, &dw[sl], err));
		/* GPTQ runs the layer three times (gptq_run.c); in each pass,
		 * micro-batch j R + rank in round j (one rank: every one in order);
		 * a rank without one in a round serves its experts (ranks.c) */
		for (int pass = 0; !c->ev && pass < (c->lr ? c->lr->a->passes : 1); pass++) {
			const struct cal_layer_w *wu = &dw[sl];
			if (c->lr) /* GPTQ, AWQ-lite, SmoothQuant (lin_run.c) */
				CAL_TRY(cal_lin_run_begin(c, L, pass, &lh[sl], &dw[sl], &wu, err));
			for (size_t j = 0; j < cal_ranks_rounds(c); j++) {
				size_t i = j * c->nranks + c->rank;
				if (i >= c->n_mb) {
					CAL_TRY(cal_ep_idle(c, L, wu, err));
				} else {
					CAL_TRY(mb_load(c, &c->mbs[i], err));
					CAL_TRY(cal_layer_forward(c, L, wu, &c->mbs[i], err));
					CAL_TRY(mb_store(c, &c->mbs[i], err));
				}
				if (c->lr) /* GPTQ over ranks: the round's Hessian rows */
					CAL_TRY(cal_lin_run_round_end(c, err));
			}
			if (c->lr)
				CAL_TRY(cal_lin_run_end(c, L, pass, &dw[sl], err));
		}
		cal_prof(c, PH_READBACK);
		CAL_TRY(cal_backend_sync(c->be, err));
		CAL_TRY(cal_obs_read_back(c, L, err));
		CAL_TRY(cal_kv_read_back(c, L, err));
		CAL_TRY(cal_w_expert_amax_finish(c, L, err));
		CAL_TRY(cal_w_fp8_amax_finish(c, err));
		if (c->nranks > 1)
			CAL_TRY(cal_ep_reduce_weights(c, L, err));
		cal_ep_count_layer(c, L);
		cal_obs_map_layer(c, L);
		cal_lin_run_map(c, L);
		cal_prof(c, PH_OTHER);
		cal_layer_host_free(&lh[sl]);
		c->done_layers = L + 1;
		if (c->o.on_hidden) {
			uint16_t *hv = c->hidden_on_host ? c->hidden_host : c->hidden;
			if (c->on_device && !c->hidden_on_host) {
				CAL_TRY(cal_backend_download(c->be, hbuf, c->hidden,
							     c->n_tok * (uint64_t)c->H * 2, err));
				hv = hbuf;
			}
			CAL_TRY(c->o.on_hidden(c->o.ctx, L, hv, c->n_tok, (uint64_t)c->H, err));
			if (c->on_device && !c->hidden_on_host && c->o.hidden_feedback)
				CAL_TRY(cal_backend_upload(c->be, c->hidden, hbuf,
							   c->n_tok * (uint64_t)c->H * 2, err));
		}
		if (c->o.rank_hooks && c->o.rank_hooks->layer && c->nranks > 1)
			CAL_TRY(c->o.rank_hooks->layer(c->o.rank_hooks->ctx, c, L, err));
		if (c->o.on_layer)
			CAL_TRY(c->o.on_layer(c->o.ctx, c, L, err));
		if (c->o.progress) {
			double dt = cal_now() - t0;
			c->o.progress(c->o.ctx, L, (int32_t)d->num_layers,
				      dt > 0 ? (double)c->n_tok * (L + 1) / dt : 0);
		}
	}
	CAL_TRY(c->ev ? cal_eval_end(c, err) : final_norm(c, err));
	cal_w_lm_head_amax(c);
	cal_prof(c, PH_OTHER);
fail:
	if (job_running) {
		pthread_join(tid, NULL);
		cal_error_clear(&job.err);
	}
	if (st < 0 && c->be)
		(void)cal_backend_upload_sync(c->be, NULL); /* no upload may outlive its buffers */
	cal_layer_host_free(&lh[0]);
	cal_layer_host_free(&lh[1]);
	CAL_FREE_ALL(hbuf, ids, pos, meta);
	c->total_s = cal_now() - t0;
	return st;
}

void cal_calib_perf(const struct cal_calib *c, struct cal_calib_perf *r)
{
	struct cal_backend_mem ms = {0, 0, 0};
	memset(r, 0, sizeof(*r));
	if (c->be)
		cal_backend_mem_stats(c->be, &ms);
	r->total_s = c->total_s;
	r->embed_s = c->ph[PH_EMBED];
	r->stage_s = c->stage_s;
	r->stage_wait_s = c->stage_wait_s;
	r->upload_s = c->ph[PH_UPLOAD];
	r->attn_s = c->ph[PH_ATTN];
	r->linattn_s = c->ph[PH_LINATTN];
	r->router_s = c->ph[PH_ROUTER];
	r->experts_s = c->ph[PH_EXPERTS];
	r->dense_s = c->ph[PH_DENSE];
	r->observers_s = c->ph[PH_OBS];
	r->readback_s = c->ph[PH_READBACK];
	r->hidden_io_s = c->ph[PH_HIDDEN_IO];
	r->other_s = c->ph[PH_OTHER];
	r->peak_mem = ms.peak;
	r->mem_budget = c->mem_budget;
	r->max_layer_bytes = c->max_layer_bytes;
	r->model_weight_bytes = c->model_weight_bytes;
	r->mb_tokens = c->mb_tokens;
	r->n_mb = c->n_mb;
	r->hidden_on_host = c->hidden_on_host;
	r->streamed = c->stream_weights;
	r->ranks = c->nranks;
	r->n_layers = (int32_t)c->d->num_layers;
	r->comm_layer_bytes = c->nranks > 1 ? c->comm_bytes : NULL;
	for (int32_t L = 0; c->nranks > 1 && L <= c->d->num_layers; L++)
		r->comm_bytes += c->comm_bytes[L];
}

/* ---- queries ------------------------------------------------------------------ */

int cal_calib_q_amax(const struct cal_calib *c, size_t q, float *ret)
{
	if (q >= c->plan->n_q || !c->q_has[q])
		return 0;
	*ret = c->q_amax[q];
	return 1;
}

const struct cal_calib_moe_stats *cal_calib_moe(const struct cal_calib *c, int32_t layer)
{
	if (layer < 0 || layer >= c->d->num_layers || !c->moe[layer].tokens)
		return NULL;
	return &c->moe[layer].pub;
}

uint64_t cal_calib_tokens_processed(const struct cal_calib *c)
{
	return c->n_tok;
}

const char *cal_calib_backend_describe(const struct cal_calib *c)
{
	return cal_backend_describe(c->be);
}

const struct cal_model_desc *cal_calib_model(const struct cal_calib *c)
{
	return c->d;
}

