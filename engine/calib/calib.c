/*
 * calib.c — the calibration engine's run loop (see engine/calib.h):
 * opening the checkpoint, laying the tokens out (packed, or left-padded like
 * modelopt), micro-batches, layer streaming, the observers' per-layer
 * read-back with non-finite checks, weight amax, the mapping from observed
 * tensors to the plan's quantizers, and the statistics JSON.
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

static uint64_t al256(uint64_t b)
{
	return (b + 255) & ~(uint64_t)255;
}

/* ---- small helpers -------------------------------------------------------- */

static enum cal_status be_alloc(struct cal_calib *c, size_t bytes, void *ret,
				struct cal_error *err)
{
	void **r = ret;
	return cal_backend_alloc(c->be, bytes ? bytes : 1, r, err);
}

static void be_free(struct cal_calib *c, void *p)
{
	cal_backend_dealloc(c->be, p);
}

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
	CAL_TRY(cal_gptq_init(c, err));
	CAL_TRY(cal_awq_init(c, err));
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
			c->fp8_wamax, c->fp8_wnf};
	if (!c->be)
		return;
	cal_gptq_free_run(c);
	for (size_t i = 0; i < CAL_ARRAY_LEN(bufs); i++)
		be_free(c, bufs[i]);
	cal_gdn_free(c);
	cal_mla_free(c);
	c->hidden = NULL;
	c->pos = c->meta = NULL;
	c->d_inv_freq = NULL;
	c->h = c->q = c->kb = c->vb = c->att = c->tmp = c->gu = c->act = c->logits = NULL;
	c->xg = c->yo = c->sgu = c->sact = c->sy = c->sgl = NULL;
	c->idx = c->offsets = c->sorted = c->ppos = NULL;
	c->rw = c->obs_amax = NULL;
	c->obs_nf = NULL;
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
	cal_gptq_free(c);
	cal_awq_free(c);
	if (c->moe && c->d)
		for (int64_t L = 0; L < c->d->num_layers; L++) {
			free(c->moe[L].tokens);
			free(c->moe[L].gu);
			free(c->moe[L].down);
		}
	free(c->moe);
	free(c->l_amax);
	free(c->q_amax);
	free(c->q_has);
	free(c->inv_freq);
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
	free(ids);
	free(pos);
	free(meta);
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
	CAL_TRY(be_alloc(c, T * H * 2, &c->h, err));
	CAL_TRY(be_alloc(c, T * qd * 2, &c->q, err));
	CAL_TRY(be_alloc(c, T * kd * 2, &c->kb, err));
	CAL_TRY(be_alloc(c, T * kd * 2, &c->vb, err));
	CAL_TRY(be_alloc(c, T * qd * 2, &c->att, err));
	CAL_TRY(be_alloc(c, T * H * 2, &c->tmp, err));
	CAL_TRY(be_alloc(c, gu_n * 2, &c->gu, err));
	CAL_TRY(be_alloc(c, act_n * 2, &c->act, err));
	if (E) {
		CAL_TRY(be_alloc(c, T * E * 2, &c->logits, err));
		CAL_TRY(be_alloc(c, P * H * 2, &c->xg, err));
		c->yo = c->xg;
		CAL_TRY(be_alloc(c, P * 4, &c->idx, err));
		CAL_TRY(be_alloc(c, (E + 1) * 4, &c->offsets, err));
		CAL_TRY(be_alloc(c, P * 4, &c->sorted, err));
		CAL_TRY(be_alloc(c, P * 4, &c->ppos, err));
		CAL_TRY(be_alloc(c, T * (uint64_t)c->k * 4, &c->rw, err));
		c->h_offsets = malloc((E + 1) * 4);
		if (!c->h_offsets)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		if (Is) {
			CAL_TRY(be_alloc(c, T * 2 * Is * 2, &c->sgu, err));
			CAL_TRY(be_alloc(c, T * Is * 2, &c->sact, err));
			CAL_TRY(be_alloc(c, T * H * 2, &c->sy, err));
			CAL_TRY(be_alloc(c, T * 2, &c->sgl, err));
		}
	}
	CAL_TRY(be_alloc(c, c->n_slots * sizeof(float), &c->obs_amax, err));
	CAL_TRY(be_alloc(c, c->n_slots * sizeof(struct cal_nonfinite), &c->obs_nf, err));
	CAL_TRY(cal_gdn_alloc(c, err)); /* gated attention / Gated DeltaNet scratch */
	CAL_TRY(cal_mla_alloc(c, err)); /* DeepSeek MLA and router scratch */
	if (c->hidden_on_host)
		CAL_TRY(be_alloc(c, T * H * 2, &c->xmb, err));
	if (E && (c->on_device || c->fp8_dev)) {
		/* expert weight amax on the device: rows of expert e of W13 / W2 */
		uint32_t *off = malloc(2 * (E + 1) * 4);
		if (!off)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		for (uint64_t e = 0; e <= E; e++) {
			off[e] = (uint32_t)(e * 2 * I);
			off[E + 1 + e] = (uint32_t)(e * H);
		}
		st = be_alloc(c, 2 * E * 4, &c->w_amax, err);
		if (st >= 0)
			st = be_alloc(c, 2 * sizeof(struct cal_nonfinite), &c->w_nf, err);
		if (st >= 0)
			st = be_alloc(c, 2 * (E + 1) * 4, &c->w_off, err);
		if (st >= 0)
			st = cal_backend_upload(c->be, c->w_off, off, 2 * (E + 1) * 4, err);
		free(off);
		if (st < 0)
			return st;
	}
	if (c->fp8_dev) {
		/* amax of FP8 weights decoded by the back end (fp8_wamax_enqueue) */
		c->fp8_wpend = calloc(c->plan->n_q + 1, 1);
		if (!c->fp8_wpend)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		CAL_TRY(be_alloc(c, (c->plan->n_q + 1) * sizeof(float), &c->fp8_wamax, err));
		CAL_TRY(be_alloc(c, sizeof(struct cal_nonfinite), &c->fp8_wnf, err));
		CAL_TRY(cal_backend_memset(c->be, c->fp8_wamax, 0, (c->plan->n_q + 1) * sizeof(float),
					   err));
		CAL_TRY(cal_nonfinite_reset(c->be, c->fp8_wnf, err));
	}
	for (int i = 0; i < 2 && c->stream_weights; i++) {
		if (!c->arena_bytes[i])
			continue; /* a one-layer model */
		st = be_alloc(c, c->arena_bytes[i], &c->arena[i], err);
		if (st < 0)
			return cal_error_wrap(err, st, "layer weights arena %d (%llu bytes)", i,
					      (unsigned long long)c->arena_bytes[i]);
	}
fail:
	return st;
}

static enum cal_status reset_obs(struct cal_calib *c, struct cal_error *err)
{
	enum cal_status st = cal_backend_memset(c->be, c->obs_amax, 0, c->n_slots * sizeof(float), err);
	if (st < 0)
		return st;
	/* {count 0, first all-ones} */
	struct cal_nonfinite *nf = malloc(c->n_slots * sizeof(*nf));
	if (!nf)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	for (uint64_t i = 0; i < c->n_slots; i++)
		nf[i] = (struct cal_nonfinite){0, CAL_NONFINITE_NONE};
	st = cal_backend_upload(c->be, c->obs_nf, nf, c->n_slots * sizeof(*nf), err);
	if (st >= 0 && c->w_nf)
		st = cal_backend_upload(c->be, c->w_nf, nf, 2 * sizeof(*nf), err);
	if (st >= 0 && c->w_amax)
		st = cal_backend_memset(c->be, c->w_amax, 0, 2 * (size_t)c->E * sizeof(float), err);
	free(nf);
	return st;
}

/* ---- per-layer read-back ---------------------------------------------------- */

static const char *slot_module(int s)
{
	switch (s) {
	case S_QKV: return "self_attn.q_proj/k_proj/v_proj (input)";
	case S_O: return "self_attn.o_proj (input)";
	case S_K: return "self_attn (K after k_proj/k_norm/RoPE)";
	case S_V: return "self_attn (V after v_proj)";
	case S_MLP_GU: return "mlp.gate_proj/up_proj (input)";
	case S_MLP_DOWN: return "mlp.down_proj (input)";
	case S_MOE_IN: return "mlp (router and shared expert input)";
	case S_SH_DOWN: return "mlp.shared_expert.down_proj (input)";
	case S_OUT: return "residual stream (layer output)";
	case S_LMHEAD: return "lm_head (input)";
	case S_QB: return "self_attn.q_b_proj (input)";
	case S_KVB: return "self_attn.kv_b_proj (input)";
	default: return "?";
	}
}

static enum cal_status read_back(struct cal_calib *c, int32_t L, struct cal_error *err)
{
	uint64_t n = c->n_slots, E = (uint64_t)c->E;
	float *am = malloc(n * sizeof(float));
	struct cal_nonfinite *nf = malloc(n * sizeof(*nf));
	enum cal_status st = CAL_OK;
	const char *P = c->d->prefix;
	if (!am || !nf) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	CAL_TRY(cal_backend_download(c->be, am, c->obs_amax, n * sizeof(float), err));
	CAL_TRY(cal_backend_download(c->be, nf, c->obs_nf, n * sizeof(*nf), err));
	for (uint64_t s = 0; s < n; s++) {
		if (!nf[s].count)
			continue;
		if (s == S_LMHEAD) {
			st = cal_error_set(err, CAL_ERR_NUMERIC,
					   "final norm (lm_head input): %llu non-finite values (first at "
					   "token %llu)", (unsigned long long)nf[s].count,
					   (unsigned long long)(nf[s].first / (uint64_t)c->H));
		} else if (s < S_FIXED) {
			int lin = c->d->layers[L].mixer == CAL_MIXER_LINEAR;
			struct cal_gdn_dims g;
			cal_gdn_dims(c->d, &g);
			uint64_t cols = (s == S_O) ? (lin ? g.vd : (uint64_t)(c->nh * c->hd))
				      : (s == S_K || s == S_V) ? (uint64_t)(c->nkv * c->hd)
				      : s == S_MLP_DOWN ? (uint64_t)c->Id
				      : s == S_SH_DOWN ? (uint64_t)c->Is : (uint64_t)c->H;
			const char *mod = !lin ? slot_module((int)s)
					: s == S_QKV ? "linear_attn.in_proj_* (input)"
					: s == S_O ? "linear_attn.out_proj (input)" : slot_module((int)s);
			st = cal_error_set(err, CAL_ERR_NUMERIC,
					   "layer %d, module %slayers.%d.%s: %llu non-finite values "
					   "(NaN/Inf), first at token %llu", L, P, L, mod,
					   (unsigned long long)nf[s].count,
					   (unsigned long long)(nf[s].first / (cols ? cols : 1)));
		} else {
			int down = s >= S_FIXED + E;
			st = cal_error_set(err, CAL_ERR_NUMERIC,
					   "layer %d, module %slayers.%d.mlp.experts (%s input of the "
					   "routed experts): %llu non-finite values (NaN/Inf)", L, P, L,
					   down ? "down_proj" : "gate_up_proj",
					   (unsigned long long)nf[s].count);
		}
		goto fail;
	}
	if (L < 0) {
		c->lmhead_amax = am[S_LMHEAD];
		goto fail;
	}
	for (int s = 0; s < S_FIXED; s++)
		c->l_amax[(uint64_t)L * S_FIXED + s] = am[s];
	if (c->d->layers[L].ffn == CAL_FFN_MOE) {
		struct cal_moe_host *m = &c->moe[L];
		for (uint64_t e = 0; e < E; e++) {
			m->gu[e] = m->tokens[e] ? am[S_FIXED + e] : -1.0f;
			m->down[e] = m->tokens[e] ? am[S_FIXED + E + e] : -1.0f;
		}
	}
fail:
	free(am);
	free(nf);
	return st;
}

/* ---- weights: amax and upload ---------------------------------------------- */

static float host_amax(struct cal_calib *c, const uint16_t *w, uint64_t n)
{
	float a = 0.0f;
	struct cal_nonfinite nf = {0, CAL_NONFINITE_NONE};
	struct cal_amax_args args = {CAL_DTYPE_BF16, w, n, 0, &a, &nf};
	if (cal_op_amax(c->host, &args, NULL) < 0)
		return NAN;
	return nf.count ? NAN : a;
}

/* Weight quantizers of layer L (and lm_head when L < 0): amax from weights. */
/* The weight of quantizer e of plan module m in a staged layer (host or,
 * with lh holding back-end pointers, device): *ret / *ret_n, NULL when the
 * layer has none (or it is still to be decoded). */
static void weight_src(const struct cal_calib *c, const struct cal_plan_module *m, int64_t e,
		       const struct cal_layer_host *lh, const uint16_t **ret, uint64_t *ret_n)
{
	const struct cal_layer_w *w = &lh->w;
	uint64_t H = c->H, qd = c->nh * c->hd, kd = c->nkv * c->hd, I = (uint64_t)c->I;
	const uint16_t *base = NULL;
	uint64_t at = 0, n = 0;
	const char *pr = m->proj;
	switch (m->kind) {
	case CAL_MOD_ATTN_PROJ:
		if (c->d->attn == CAL_ATTN_MLA)
			cal_mla_weight(c, lh, pr, &base, &n);
		else if (!strcmp(pr, "q_proj")) /* gated: query and gate rows */
			base = w->wq, n = qd * H * (c->d->attn == CAL_ATTN_GATED_GQA ? 2 : 1);
		else if (!strcmp(pr, "k_proj"))
			base = w->wk, n = kd * H;
		else if (!strcmp(pr, "v_proj"))
			base = w->wv, n = kd * H;
		else if (!strcmp(pr, "o_proj"))
			base = w->wo, n = H * qd;
		break;
	case CAL_MOD_MLP_PROJ:
	case CAL_MOD_SHARED_PROJ: {
		int sh = m->kind == CAL_MOD_SHARED_PROJ;
		uint64_t n13 = sh ? lh->n_s13 : lh->n_w13;
		if (!strcmp(pr, "gate_proj") || !strcmp(pr, "up_proj"))
			base = sh ? w->s13 : w->w13, n = n13 / 2, at = strcmp(pr, "up_proj") ? 0 : n;
		else if (!strcmp(pr, "down_proj"))
			base = sh ? w->s2 : w->w2, n = sh ? lh->n_s2 : lh->n_w2;
		break;
	}
	case CAL_MOD_SHARED_GATE:
		base = w->sgate, n = H;
		break;
	case CAL_MOD_LINATTN_PROJ:
		cal_gdn_weight(c, w, pr, &base, &n);
		break;
	case CAL_MOD_EXPERTS_GATE_UP:
		base = w->e13, at = (uint64_t)e * 2 * I * H, n = 2 * I * H;
		break;
	case CAL_MOD_EXPERTS_DOWN:
		base = w->e2, at = (uint64_t)e * H * I, n = H * I;
		break;
	default:
		break;
	}
	*ret = base ? base + at : NULL;
	*ret_n = n;
}

static enum cal_status weight_amax(struct cal_calib *c, int32_t L, const struct cal_layer_host *lh,
				   int skip_experts, struct cal_error *err)
{
	const struct cal_plan *p = c->plan;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L || m->wq < 0)
			continue;
		if (skip_experts &&
		    (m->kind == CAL_MOD_EXPERTS_GATE_UP || m->kind == CAL_MOD_EXPERTS_DOWN))
			continue; /* on the device: expert_wamax_enqueue */
		for (int64_t e = 0; e < m->count; e++) {
			size_t qi = (size_t)m->wq + (size_t)e;
			const struct cal_qspec *sp = &p->q[qi].spec;
			const uint16_t *src = NULL;
			uint64_t n = 0;
			if (!sp->enabled || !sp->calibrate)
				continue;
			if (sp->has_constant_amax) {
				c->q_amax[qi] = (float)sp->constant_amax;
				c->q_has[qi] = 1;
				continue;
			}
			weight_src(c, m, e, lh, &src, &n);
			if (!src)
				continue; /* FP8 source decoded by the back end: fp8_wamax_enqueue */
			float a = host_amax(c, src, n);
			if (!(a == a))
				return cal_error_set(err, CAL_ERR_NUMERIC,
						     "weight of %s%s%lld has non-finite values", m->name,
						     m->count > 1 ? " expert " : "",
						     (long long)(m->count > 1 ? e : 0));
			c->q_amax[qi] = a;
			c->q_has[qi] = 1;
		}
	}
	return CAL_OK;
}

static void lm_head_weight_amax(struct cal_calib *c)
{
	const struct cal_plan *p = c->plan;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->kind != CAL_MOD_LM_HEAD || m->wq < 0)
			continue;
		const struct cal_qspec *sp = &p->q[m->wq].spec;
		if (!sp->enabled || !sp->calibrate)
			continue;
		const struct cal_st_tensor *t = cal_catalog_find(c->cat, CAL_ROLE_LM_HEAD,
								 CAL_PART_WEIGHT, -1, -1);
		if (!t)
			t = cal_catalog_find(c->cat, CAL_ROLE_EMBED, CAL_PART_WEIGHT, -1, -1);
		if (sp->has_constant_amax) {
			c->q_amax[m->wq] = (float)sp->constant_amax;
			c->q_has[m->wq] = 1;
		} else if (t && t->dtype == CAL_DTYPE_BF16) {
			c->q_amax[m->wq] = host_amax(c, t->data, t->numel);
			c->q_has[m->wq] = c->q_amax[m->wq] == c->q_amax[m->wq];
		}
	}
}

/* Upper bound of one layer's weights in an arena (norm weights counted as
 * f32, biases as present). */
static uint64_t layer_bytes_bound(const struct cal_calib *c, int32_t L)
{
	uint64_t H = c->H, qd = c->nh * c->hd, kd = c->nkv * c->hd;
	uint64_t b = 2 * al256(4 * H) + al256(4 * qd) + al256(4 * kd) + al256(2 * qd * H) +
		     2 * al256(2 * kd * H) + al256(2 * H * qd) + al256(2 * qd) + 2 * al256(2 * kd) +
		     al256(2 * H);
	if (c->d->attn == CAL_ATTN_GATED_GQA)
		b += al256(2 * qd * H) + al256(2 * qd);
	b += cal_mla_layer_bytes(c);
	if (c->d->router == CAL_ROUTER_SIGMOID_GROUP && c->d->layers[L].ffn == CAL_FFN_MOE)
		b += al256(4 * (uint64_t)c->E * H) + al256(4 * (uint64_t)c->E);
	if (c->d->layers[L].mixer == CAL_MIXER_LINEAR) {
		struct cal_gdn_dims g;
		cal_gdn_dims(c->d, &g);
		b += al256(2 * (g.cd + g.vd + 2 * g.nv) * H) + al256(2 * g.cd * g.kern) +
		     al256(2 * g.dv) + al256(2 * H * g.vd) + 2 * al256(4 * g.nv);
	}
	if (c->d->layers[L].ffn == CAL_FFN_MOE) {
		uint64_t E = c->E, I = c->I, S = c->Is;
		b += al256(2 * E * H) + al256(4 * E * I * H) + al256(2 * E * H * I);
		if (c->d->act == CAL_ACT_SWIGLU_OAI) /* router and expert biases, sinks */
			b += al256(2 * E) + al256(4 * E * I) + al256(2 * E * H) +
			     al256(4 * (uint64_t)c->nh);
		if (c->fp8_dev) /* FP8 codes and scale grids next to the decoded experts */
			b += al256(3 * E * I * H) +
			     al256(4 * E * (2 * cal_fp8_grid(c->d, I, H) + cal_fp8_grid(c->d, H, I)));
		if (S)
			b += al256(4 * S * H) + al256(2 * H * S) + al256(2 * H);
	} else {
		b += al256(4 * (uint64_t)c->Id * H) + al256(2 * H * (uint64_t)c->Id);
	}
	if (c->fp8_dev) /* codes (half of bf16) and grids of the other FP8 linears */
		b += b / 2 + (uint64_t)CAL_FP8_JOBS * 512;
	return b;
}

/* A parallel gather-copy: dst[0 .. n) = bytes base .. base + n of the
 * concatenation of nseg pieces of `piece` bytes at src[0..nseg). */
struct par_copy {
	char *dst;
	const char *const *src;
	uint64_t piece, base, n;
};

static void par_copy_range(void *p, uint64_t b, uint64_t e, unsigned slot)
{
	const struct par_copy *pc = p;
	uint64_t lo = b * COPY_CHUNK, hi = e * COPY_CHUNK < pc->n ? e * COPY_CHUNK : pc->n;
	(void)slot;
	while (lo < hi) {
		uint64_t at = pc->base + lo, sg = at / pc->piece, o = at % pc->piece;
		uint64_t take = pc->piece - o < hi - lo ? pc->piece - o : hi - lo;
		memcpy(pc->dst + lo, pc->src[sg] + o, take);
		lo += take;
	}
}

/* On the host back end's threads (reading the mapping is the slow part:
 * page faults and cache misses parallelise). */
static enum cal_status par_copy(struct cal_calib *c, void *dst, const char *const *src,
				uint64_t piece, uint64_t base, uint64_t n, struct cal_error *err)
{
	struct par_copy pc = {dst, src, piece, base, n};
	return cal_cpu_parallel(c->host, (n + COPY_CHUNK - 1) / COPY_CHUNK, 16, par_copy_range, &pc,
				err);
}

/* host -> back end: nseg pieces of `piece` bytes, concatenated at dst.  On
 * a device through the pinned ring with asynchronous uploads (a slot is
 * refilled once its previous upload is done), a parallel copy on the CPU. */
static enum cal_status copy_in_segs(struct cal_calib *c, char *dst, const char *const *src,
				    uint64_t nseg, uint64_t piece, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	uint64_t n = nseg * piece;
	if (!c->on_device)
		return par_copy(c, dst, src, piece, 0, n, err);
	for (uint64_t done = 0; done < n;) {
		uint64_t win = n - done < c->ring_bytes ? n - done : c->ring_bytes;
		unsigned s = c->ring_next;
		c->ring_next = (s + 1) % CAL_RING_SLOTS;
		if (c->ring_used[s])
			CAL_TRY(cal_backend_upload_mark_sync(c->be, s, err));
		CAL_TRY(par_copy(c, c->ring[s], src, piece, done, win, err));
		CAL_TRY(cal_backend_upload_async(c->be, dst + done, c->ring[s], win, err));
		CAL_TRY(cal_backend_upload_mark(c->be, s, err));
		c->ring_used[s] = 1;
		done += win;
	}
fail:
	return st;
}

static enum cal_status copy_in(struct cal_calib *c, char *dst, const char *src, uint64_t n,
			       struct cal_error *err)
{
	return copy_in_segs(c, dst, &src, 1, n, err);
}

/* Field dst of dw is an FP8 weight the back end decodes (lh->dfr). */
static int deferred(const struct cal_layer_host *lh, const struct cal_layer_w *dw, const void **dst)
{
	size_t f = (size_t)((const char *)dst - (const char *)dw);
	for (int k = 0; k < lh->n_dfr; k++)
		if (lh->dfr[k].field == f)
			return 1;
	return 0;
}

/* Copies the staged layer into arena `slot` (weights streamed); without
 * streaming (CPU, no cap) the staged host pointers are used as they are. */
static enum cal_status upload_layer(struct cal_calib *c, int32_t L, const struct cal_layer_host *lh,
				    struct cal_layer_w *dw, int slot, struct cal_error *err)
{
	const struct cal_layer_w *w = &lh->w;
	uint64_t H = c->H, qd = c->nh * c->hd, kd = c->nkv * c->hd;
	uint64_t nqn = c->d->qk_norm == CAL_QK_NORM_HEAD ? (uint64_t)c->hd : qd;
	uint64_t nkn = c->d->qk_norm == CAL_QK_NORM_HEAD ? (uint64_t)c->hd : kd;
	uint64_t qo = qd * (c->d->attn == CAL_ATTN_GATED_GQA ? 2 : 1); /* gated: + gate rows */
	struct cal_gdn_dims g;
	cal_gdn_dims(c->d, &g);
	uint64_t ml_qr = (uint64_t)c->d->q_lora_rank, ml_kvr = (uint64_t)c->d->kv_lora_rank;
	uint64_t ml_dr = (uint64_t)c->d->qk_rope_head_dim;
	uint64_t ml_kvb = (uint64_t)c->nh * (uint64_t)(c->d->qk_nope_head_dim + c->d->v_head_dim);
	struct {
		const void **dst;
		const void *src;
		uint64_t bytes;
	} it[] = {
		{(const void **)&dw->in_norm, w->in_norm, H * (w->in_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->post_norm, w->post_norm,
		 H * (w->post_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->q_norm, w->q_norm, nqn * (w->q_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->k_norm, w->k_norm, nkn * (w->k_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->wq, w->wq, (lh->n_wq ? lh->n_wq : qo * H) * 2},
		{(const void **)&dw->wk, w->wk, kd * H * 2},
		{(const void **)&dw->wv, w->wv, kd * H * 2},
		{(const void **)&dw->wo, w->wo, (lh->n_wo ? lh->n_wo : H * qd) * 2},
		{(const void **)&dw->bq, w->bq, qo * 2},
		{(const void **)&dw->bk, w->bk, kd * 2},
		{(const void **)&dw->bv, w->bv, kd * 2},
		{(const void **)&dw->bo, w->bo, H * 2},
		{(const void **)&dw->w13, w->w13, lh->n_w13 * 2},
		{(const void **)&dw->w2, w->w2, lh->n_w2 * 2},
		{(const void **)&dw->router, w->router, (uint64_t)c->E * H * 2},
		{(const void **)&dw->e13, w->e13, lh->n_e13 * 2},
		{(const void **)&dw->e2, w->e2, lh->n_e2 * 2},
		{(const void **)&dw->s13, w->s13, lh->n_s13 * 2},
		{(const void **)&dw->s2, w->s2, lh->n_s2 * 2},
		{(const void **)&dw->sgate, w->sgate, H * 2},
		/* Gated DeltaNet (gdn.c) */
		{(const void **)&dw->lqkv, w->lqkv, g.cd * H * 2},
		{(const void **)&dw->lz, w->lz, g.vd * H * 2},
		{(const void **)&dw->lb, w->lb, g.nv * H * 2},
		{(const void **)&dw->la, w->la, g.nv * H * 2},
		{(const void **)&dw->lconv, w->lconv, g.cd * g.kern * 2},
		{(const void **)&dw->lnorm, w->lnorm, g.dv * 2},
		{(const void **)&dw->lout, w->lout, H * g.vd * 2},
		{(const void **)&dw->a_log, w->a_log, g.nv * 4},
		{(const void **)&dw->dt_bias, w->dt_bias, g.nv * 4},
		/* gpt_oss (gpt_oss.c) */
		{(const void **)&dw->sinks, w->sinks, (uint64_t)c->nh * 4},
		{(const void **)&dw->router_b, w->router_b, (uint64_t)c->E * 2},
		{(const void **)&dw->eb13, w->eb13, (uint64_t)c->E * 2 * (uint64_t)c->I * 2},
		{(const void **)&dw->eb2, w->eb2, (uint64_t)c->E * H * 2},
		/* DeepSeek MLA (mla.c) and router */
		{(const void **)&dw->wqa, w->wqa, ml_qr * H * 2},
		{(const void **)&dw->wkva, w->wkva, (ml_kvr + ml_dr) * H * 2},
		{(const void **)&dw->wkvb, w->wkvb, ml_kvb * ml_kvr * 2},
		{(const void **)&dw->qa_norm, w->qa_norm, ml_qr * (w->qa_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->kva_norm, w->kva_norm,
		 ml_kvr * (w->kva_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->router_f32, w->router_f32, (uint64_t)c->E * H * 4},
		{(const void **)&dw->corr_bias, w->corr_bias, (uint64_t)c->E * 4},
	};
	uint64_t total = 0, off = 0;
	uint64_t E = (uint64_t)c->E, g13 = cal_fp8_grid(c->d, (uint64_t)c->I, H);
	uint64_t g2 = cal_fp8_grid(c->d, H, (uint64_t)c->I);
	enum cal_status st;
	*dw = *w;
	if (!c->stream_weights)
		return CAL_OK;
	for (size_t i = 0; i < CAL_ARRAY_LEN(it); i++)
		if (it[i].src || (it[i].dst == (const void **)&dw->e13 && lh->e13_seg) ||
		    (it[i].dst == (const void **)&dw->e2 && lh->e2_seg) || deferred(lh, dw, it[i].dst))
			total += al256(it[i].bytes);
	for (int k = 0; k < lh->n_dfr; k++)
		total += al256(lh->dfr[k].t->nbytes) + al256(lh->dfr[k].si->nbytes);
	if (lh->q13_seg) /* decoded experts, their codes and scale grids */
		total += al256(lh->n_e13 * 2) + al256(lh->n_e2 * 2) + al256(lh->n_e13) +
			 al256(lh->n_e2) + al256(2 * E * g13 * 4) + al256(E * g2 * 4);
	if (total > c->arena_bytes[slot]) {
		/* a layer kind the bound does not know: grow this arena */
		be_free(c, c->arena[slot]);
		c->arena[slot] = NULL;
		c->arena_bytes[slot] = 0;
		st = be_alloc(c, total, &c->arena[slot], err);
		if (st < 0)
			return cal_error_wrap(err, st, "layer %d: weights (%llu bytes)", L,
					      (unsigned long long)total);
		c->arena_bytes[slot] = total;
	}
	char *arena = c->arena[slot];
	for (size_t i = 0; i < CAL_ARRAY_LEN(it); i++) {
		const uint16_t **seg = it[i].dst == (const void **)&dw->e13 ? lh->e13_seg
				     : it[i].dst == (const void **)&dw->e2 ? lh->e2_seg : NULL;
		if (seg && lh->n_e13) {
			/* experts left in the mapping: one copy per expert matrix */
			uint64_t n = it[i].dst == (const void **)&dw->e13 ? 2 * (uint64_t)c->E
									   : (uint64_t)c->E;
			st = copy_in_segs(c, arena + off, (const char *const *)seg, n, it[i].bytes / n,
					  err);
			if (st < 0)
				return cal_error_wrap(err, st, "layer %d: expert weights upload", L);
			*it[i].dst = arena + off;
			off += al256(it[i].bytes);
			continue;
		}
		if (!it[i].src) {
			*it[i].dst = NULL;
			if (deferred(lh, dw, it[i].dst)) { /* decoded here from FP8 codes */
				*it[i].dst = arena + off;
				off += al256(it[i].bytes);
			}
			continue;
		}
		st = copy_in(c, arena + off, it[i].src, it[i].bytes, err);
		if (st < 0)
			return cal_error_wrap(err, st, "layer %d: weights upload", L);
		*it[i].dst = arena + off;
		off += al256(it[i].bytes);
	}
	dw->n_fjob = 0;
	for (int k = 0; k < lh->n_dfr; k++) {
		/* other FP8 linears: codes and grid, decoded into their field's slot */
		const struct cal_st_tensor *t = lh->dfr[k].t, *si = lh->dfr[k].si;
		struct cal_fp8_job *j = &dw->fjob[dw->n_fjob++];
		j->out = *(uint16_t *const *)((const char *)dw + lh->dfr[k].field) + lh->dfr[k].at;
		j->rows = (uint64_t)t->shape[0];
		j->cols = (uint64_t)t->shape[1];
		st = copy_in(c, arena + off, t->data, t->nbytes, err);
		if (st >= 0) {
			j->q = (const uint8_t *)(arena + off);
			off += al256(t->nbytes);
			st = copy_in(c, arena + off, si->data, si->nbytes, err);
		}
		if (st < 0)
			return cal_error_wrap(err, st, "layer %d: FP8 weights upload (%s)", L, t->name);
		j->s = (const float *)(arena + off);
		off += al256(si->nbytes);
	}
	if (lh->q13_seg) {
		/* FP8 experts: room for the decoded W13 / W2, then codes and grids */
		struct {
			const void **dst;
			const char *const *seg;
			uint64_t n, piece;
		} f[] = {
			{(const void **)&dw->e13, NULL, 0, lh->n_e13 * 2},
			{(const void **)&dw->e2, NULL, 0, lh->n_e2 * 2},
			{(const void **)&dw->fq13, (const char *const *)lh->q13_seg, 2 * E,
			 (uint64_t)c->I * H},
			{(const void **)&dw->fq2, (const char *const *)lh->q2_seg, E, H * (uint64_t)c->I},
			{(const void **)&dw->fs13, (const char *const *)lh->s13_seg, 2 * E, g13 * 4},
			{(const void **)&dw->fs2, (const char *const *)lh->s2_seg, E, g2 * 4},
		};
		for (size_t i = 0; i < CAL_ARRAY_LEN(f); i++) {
			if (f[i].seg) {
				st = copy_in_segs(c, arena + off, f[i].seg, f[i].n, f[i].piece, err);
				if (st < 0)
					return cal_error_wrap(err, st, "layer %d: FP8 expert upload", L);
			}
			*f[i].dst = arena + off;
			off += al256(f[i].seg ? f[i].n * f[i].piece : f[i].piece);
		}
	}
	return CAL_OK;
}

/* FP8 block source weights of a streamed layer: decoded into their slots
 * (experts: W13 / W2) on the back end's compute stream, once the layer's
 * uploads are done. */
static enum cal_status fp8_experts_decode(struct cal_calib *c, const struct cal_layer_w *w,
					  struct cal_error *err)
{
	uint64_t E = (uint64_t)c->E, I = (uint64_t)c->I, H = (uint64_t)c->H;
	uint64_t g13 = cal_fp8_grid(c->d, I, H), g2 = cal_fp8_grid(c->d, H, I);
	uint32_t br = (uint32_t)c->d->quant_block[0], bc = (uint32_t)c->d->quant_block[1];
	enum cal_status st = CAL_OK;
	for (int k = 0; k < w->n_fjob && st >= 0; k++) {
		const struct cal_fp8_job *j = &w->fjob[k];
		struct cal_fp8_block_dequant_args a = {j->q, j->s, j->rows, j->cols, br, bc, j->out};
		st = cal_op_fp8_block_dequant(c->be, &a, err);
	}
	if (!w->fq13)
		return st;
	for (uint64_t m = 0; m < 3 * E && st >= 0; m++) {
		int down = m >= 2 * E;
		uint64_t j = down ? m - 2 * E : m;
		struct cal_fp8_block_dequant_args a = {
			down ? w->fq2 + j * H * I : w->fq13 + j * I * H,
			down ? w->fs2 + j * g2 : w->fs13 + j * g13, down ? H : I, down ? I : H, br, bc,
			(uint16_t *)(down ? w->e2 + j * H * I : w->e13 + j * I * H)};
		st = cal_op_fp8_block_dequant(c->be, &a, err);
	}
	return st;
}

/* Stages layer L into arena `slot`: canonical layout, weight amax, copy. */
static enum cal_status stage_layer(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
				   struct cal_layer_w *dw, int slot, struct cal_error *err)
{
	double t0 = cal_now();
	enum cal_status st = cal_layer_stage(c, L, lh, err);
	if (st >= 0)
		st = weight_amax(c, L, lh, c->on_device || lh->q13_seg, err);
	if (st >= 0)
		st = upload_layer(c, L, lh, dw, slot, err);
	c->stage_s += cal_now() - t0;
	return st;
}

struct stage_job {
	struct cal_calib *c;
	int32_t L;
	struct cal_layer_host *lh;
	struct cal_layer_w *dw;
	int slot;
	enum cal_status st;
	struct cal_error err;
};

static void *stage_main(void *p)
{
	struct stage_job *j = p;
	j->st = stage_layer(j->c, j->L, j->lh, j->dw, j->slot, &j->err);
	return NULL;
}

/* Weight amax of the quantizers whose FP8 weights the back end decoded
 * (not the routed experts: expert_wamax_enqueue), into c->fp8_wamax; read
 * back by fp8_wamax_finish. */
static enum cal_status fp8_wamax_enqueue(struct cal_calib *c, int32_t L,
					 const struct cal_layer_host *lh,
					 const struct cal_layer_w *dw, struct cal_error *err)
{
	const struct cal_plan *p = c->plan;
	struct cal_layer_host dev;
	enum cal_status st = CAL_OK;
	if (!lh->n_dfr)
		return CAL_OK;
	memcpy(&dev, lh, sizeof(dev));
	dev.w = *dw;
	cal_prof(c, PH_OBS);
	for (size_t mi = 0; mi < p->n_modules && st >= 0; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L || m->wq < 0 || m->kind == CAL_MOD_EXPERTS_GATE_UP ||
		    m->kind == CAL_MOD_EXPERTS_DOWN)
			continue;
		for (int64_t e = 0; e < m->count && st >= 0; e++) {
			size_t qi = (size_t)m->wq + (size_t)e;
			const struct cal_qspec *sp = &p->q[qi].spec;
			const uint16_t *hs = NULL, *ds = NULL;
			uint64_t n = 0;
			if (!sp->enabled || !sp->calibrate || sp->has_constant_amax)
				continue;
			weight_src(c, m, e, lh, &hs, &n);
			weight_src(c, m, e, &dev, &ds, &n);
			if (hs || !ds)
				continue; /* measured on the host while staging */
			struct cal_amax_args a = {CAL_DTYPE_BF16, ds, n, 0, c->fp8_wamax + qi, c->fp8_wnf};
			st = cal_op_amax(c->be, &a, err);
			c->fp8_wpend[qi] = 1;
		}
	}
	cal_prof(c, PH_OTHER);
	return st;
}

static enum cal_status fp8_wamax_finish(struct cal_calib *c, struct cal_error *err)
{
	size_t n = c->plan->n_q;
	struct cal_nonfinite nf;
	enum cal_status st = CAL_OK;
	float *am = NULL;
	int any = 0;
	for (size_t i = 0; i < n && c->fp8_wpend; i++)
		any |= c->fp8_wpend[i];
	if (!any)
		return CAL_OK;
	am = malloc(n * sizeof(float));
	if (!am)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	CAL_TRY(cal_backend_download(c->be, am, c->fp8_wamax, n * sizeof(float), err));
	CAL_TRY(cal_backend_download(c->be, &nf, c->fp8_wnf, sizeof(nf), err));
	if (nf.count) {
		st = cal_error_set(err, CAL_ERR_NUMERIC, "decoded FP8 weights have %llu non-finite "
				   "values", (unsigned long long)nf.count);
		goto fail;
	}
	for (size_t i = 0; i < n; i++)
		if (c->fp8_wpend[i]) {
			c->q_amax[i] = am[i];
			c->q_has[i] = 1;
			c->fp8_wpend[i] = 0;
		}
	CAL_TRY(cal_backend_memset(c->be, c->fp8_wamax, 0, n * sizeof(float), err));
	CAL_TRY(cal_nonfinite_reset(c->be, c->fp8_wnf, err));
fail:
	free(am);
	return st;
}

/* Expert weight amax of layer L on the device (amax_segments over the
 * experts' rows of W13 and W2), read back by expert_wamax_finish. */
static enum cal_status expert_wamax_enqueue(struct cal_calib *c, int32_t L,
					    const struct cal_layer_w *w, struct cal_error *err)
{
	uint64_t E = c->E, H = c->H, I = c->I;
	enum cal_status st = CAL_OK;
	if (!c->w_amax || c->d->layers[L].ffn != CAL_FFN_MOE)
		return CAL_OK;
	cal_prof(c, PH_OBS);
	struct cal_amax_segments_args a = {CAL_DTYPE_BF16, w->e13, E * 2 * I, H, c->w_off,
					   (uint32_t)E, 0, c->w_amax, c->w_nf};
	struct cal_amax_segments_args b = {CAL_DTYPE_BF16, w->e2, E * H, I, c->w_off + E + 1,
					   (uint32_t)E, 0, c->w_amax + E, c->w_nf + 1};
	CAL_TRY(cal_op_amax_segments(c->be, &a, err));
	CAL_TRY(cal_op_amax_segments(c->be, &b, err));
	cal_prof(c, PH_OTHER);
fail:
	return st;
}

static enum cal_status expert_wamax_finish(struct cal_calib *c, int32_t L, struct cal_error *err)
{
	const struct cal_plan *p = c->plan;
	uint64_t E = c->E;
	struct cal_nonfinite nf[2];
	enum cal_status st = CAL_OK;
	float *am = NULL;
	if (!c->w_amax || c->d->layers[L].ffn != CAL_FFN_MOE)
		return CAL_OK;
	am = malloc(2 * E * sizeof(float));
	if (!am)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	CAL_TRY(cal_backend_download(c->be, am, c->w_amax, 2 * E * sizeof(float), err));
	CAL_TRY(cal_backend_download(c->be, nf, c->w_nf, sizeof(nf), err));
	for (int i = 0; i < 2; i++)
		if (nf[i].count) {
			st = cal_error_set(err, CAL_ERR_NUMERIC,
					   "layer %d: the %s weights of the routed experts have %llu "
					   "non-finite values", L, i ? "down_proj" : "gate_up_proj",
					   (unsigned long long)nf[i].count);
			goto fail;
		}
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L || m->wq < 0 ||
		    (m->kind != CAL_MOD_EXPERTS_GATE_UP && m->kind != CAL_MOD_EXPERTS_DOWN))
			continue;
		for (int64_t e = 0; e < m->count && (uint64_t)e < E; e++) {
			size_t qi = (size_t)m->wq + (size_t)e;
			const struct cal_qspec *sp = &p->q[qi].spec;
			if (!sp->enabled || !sp->calibrate)
				continue;
			if (sp->has_constant_amax) {
				c->q_amax[qi] = (float)sp->constant_amax;
			} else {
				c->q_amax[qi] = am[(m->kind == CAL_MOD_EXPERTS_DOWN ? E : 0) + (uint64_t)e];
			}
			c->q_has[qi] = 1;
		}
	}
fail:
	free(am);
	return st;
}

/* ---- the run ---------------------------------------------------------------- */

/* The amax of plan quantizers that come from the forward pass of layer L. */
static void map_layer_stats(struct cal_calib *c, int32_t L)
{
	const struct cal_plan *p = c->plan;
	const float *la = L >= 0 ? c->l_amax + (uint64_t)L * S_FIXED : NULL;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L)
			continue;
		long qs[3] = {m->iq, m->kb, m->vb};
		for (int r = 0; r < 3; r++) {
			if (qs[r] < 0)
				continue;
			size_t qi = (size_t)qs[r];
			const struct cal_qspec *sp = &p->q[qi].spec;
			float a = -1.0f;
			if (!sp->enabled || !sp->calibrate || sp->use_constant_amax)
				continue;
			if (sp->has_constant_amax) {
				c->q_amax[qi] = (float)sp->constant_amax;
				c->q_has[qi] = 1;
				continue;
			}
			if (r == 1)
				a = la ? la[S_K] : -1.0f;
			else if (r == 2)
				a = la ? la[S_V] : -1.0f;
			else if (m->kind == CAL_MOD_ATTN_PROJ && c->d->attn == CAL_ATTN_MLA)
				a = la ? la[cal_mla_input_slot(m->proj)] : -1.0f;
			else if (m->kind == CAL_MOD_ATTN_PROJ)
				a = la ? la[strcmp(m->proj, "o_proj") ? S_QKV : S_O] : -1.0f;
			else if (m->kind == CAL_MOD_LINATTN_PROJ) /* in_proj_*: the norm output */
				a = la ? la[strcmp(m->proj, "out_proj") ? S_QKV : S_O] : -1.0f;
			else if (m->kind == CAL_MOD_MLP_PROJ)
				a = la[strcmp(m->proj, "down_proj") ? S_MLP_GU : S_MLP_DOWN];
			else if (m->kind == CAL_MOD_SHARED_PROJ)
				a = la[strcmp(m->proj, "down_proj") ? S_MOE_IN : S_SH_DOWN];
			else if (m->kind == CAL_MOD_SHARED_GATE || m->kind == CAL_MOD_ROUTER)
				a = la[S_MOE_IN];
			else if (m->kind == CAL_MOD_EXPERTS_GATE_UP &&
				 c->d->act == CAL_ACT_SWIGLU_OAI)
				/* gpt_oss: modelopt's one gate_up input quantizer sees
				 * every token before routing (docs/gpt_oss.md) */
				a = la[S_MOE_IN];
			else if (m->kind == CAL_MOD_EXPERTS_GATE_UP || m->kind == CAL_MOD_EXPERTS_DOWN) {
				const struct cal_moe_host *mh = &c->moe[L];
				const float *v = m->kind == CAL_MOD_EXPERTS_DOWN ? mh->down : mh->gu;
				for (int64_t e = 0; mh->tokens && e < c->E; e++)
					a = v[e] > a ? v[e] : a;
			} else if (m->kind == CAL_MOD_LM_HEAD)
				a = c->lmhead_amax;
			if (a >= 0) {
				c->q_amax[qi] = a;
				c->q_has[qi] = 1;
			}
		}
	}
}

/* ---- hidden states, profiling ------------------------------------------------ */

uint16_t *cal_mb_x(const struct cal_calib *c, const struct cal_mb *mb)
{
	if (c->x_override)
		return c->x_override;
	return c->hidden_on_host ? c->xmb : c->hidden + mb->tok0 * (uint64_t)c->H;
}

/* Brings micro-batch mb's hidden states to the device (hidden on host). */
static enum cal_status mb_load(struct cal_calib *c, const struct cal_mb *mb, struct cal_error *err)
{
	enum cal_status st;
	int ph = c->prof_phase;
	if (!c->hidden_on_host)
		return CAL_OK;
	cal_prof(c, PH_HIDDEN_IO);
	st = cal_backend_upload(c->be, c->xmb, c->hidden_host + mb->tok0 * (uint64_t)c->H,
				mb->n_tok * (uint64_t)c->H * 2, err);
	cal_prof(c, ph);
	return st;
}

static enum cal_status mb_store(struct cal_calib *c, const struct cal_mb *mb, struct cal_error *err)
{
	enum cal_status st;
	int ph = c->prof_phase;
	if (!c->hidden_on_host)
		return CAL_OK;
	cal_prof(c, PH_HIDDEN_IO);
	st = cal_backend_download(c->be, c->hidden_host + mb->tok0 * (uint64_t)c->H, c->xmb,
				  mb->n_tok * (uint64_t)c->H * 2, err);
	cal_prof(c, ph);
	return st;
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
	CAL_TRY(reset_obs(c, err));
	CAL_TRY(be_alloc(c, t->nbytes, &w, err));
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
	CAL_TRY(read_back(c, -1, err));
	map_layer_stats(c, -1);
fail:
	be_free(c, w);
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
		uint64_t b = layer_bytes_bound(c, L);
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
		if (be_alloc(c, t->nbytes, &dtab, &e2) >= 0 && be_alloc(c, c->n_tok * 4, &d_ids, &e2) >= 0) {
			/* through the pinned ring: several times faster than from the mapping */
			CAL_TRY(copy_in(c, dtab, t->data, t->nbytes, err));
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
	be_free(c, dtab);
	be_free(c, d_ids);
	return st;
}

/* ---- the run loop ---------------------------------------------------------------- */

enum cal_status cal_calib_run(struct cal_calib *c, const struct cal_calib_tokens *tokens,
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
	c->mem_budget = budget;
	CAL_TRY(layout_tokens(c, tokens, &ids, &pos, &meta, &meta_n, err));
	if (c->hidden_on_host)
		CAL_TRY(cal_backend_host_alloc(c->be, c->n_tok * (uint64_t)c->H * 2,
					       (void **)&c->hidden_host, err));
	else
		CAL_TRY(be_alloc(c, c->n_tok * (uint64_t)c->H * 2, &c->hidden, err));
	CAL_TRY(be_alloc(c, c->n_tok * 4, &c->pos, err));
	CAL_TRY(be_alloc(c, meta_n * 4, &c->meta, err));
	CAL_TRY(be_alloc(c, ((uint64_t)c->rd / 2 + 1) * 4, &c->d_inv_freq, err));
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

	/* layer 0 is staged here; each next one by a thread while this one computes */
	if (d->num_layers > 0)
		CAL_TRY(stage_layer(c, 0, &lh[0], &dw[0], 0, err));
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
			job = (struct stage_job){c, L + 1, &lh[sl ^ 1], &dw[sl ^ 1], sl ^ 1, CAL_OK, {0}};
			if (pthread_create(&tid, NULL, stage_main, &job) == 0) {
				job_running = 1;
			} else {
				stage_main(&job); /* no thread: stage it here, later */
				if (job.st < 0) {
					st = cal_error_set(err, job.st, "%s", cal_error_msg(&job.err));
					cal_error_clear(&job.err);
					goto fail;
				}
			}
		}
		CAL_TRY(reset_obs(c, err));
		CAL_TRY(fp8_experts_decode(c, &dw[sl], err));
		CAL_TRY(fp8_wamax_enqueue(c, L, &lh[sl], &dw[sl], err));
		CAL_TRY(expert_wamax_enqueue(c, L, &dw[sl], err));
		if (c->ev)
			CAL_TRY(cal_eval_layer(c, L, &dw[sl], err));
		/* GPTQ runs the layer three times (gptq_run.c) */
		for (int pass = 0; !c->ev && pass < (c->gq ? 3 : 1); pass++) {
			const struct cal_layer_w *wu = &dw[sl];
			if (c->gq)
				CAL_TRY(cal_gptq_pass_begin(c, L, pass, &lh[sl], &dw[sl], &wu, err));
			else if (c->aw) /* AWQ-lite caches the linears' inputs (awq_run.c) */
				CAL_TRY(cal_awq_pass_begin(c, L, &lh[sl], err));
			for (size_t i = 0; i < c->n_mb; i++) {
				CAL_TRY(mb_load(c, &c->mbs[i], err));
				CAL_TRY(cal_layer_forward(c, L, wu, &c->mbs[i], err));
				CAL_TRY(mb_store(c, &c->mbs[i], err));
			}
			if (c->gq)
				CAL_TRY(cal_gptq_pass_end(c, L, pass, err));
			else if (c->aw)
				CAL_TRY(cal_awq_pass_end(c, L, &dw[sl], err));
		}
		cal_prof(c, PH_READBACK);
		CAL_TRY(cal_backend_sync(c->be, err));
		CAL_TRY(read_back(c, L, err));
		CAL_TRY(expert_wamax_finish(c, L, err));
		CAL_TRY(fp8_wamax_finish(c, err));
		map_layer_stats(c, L);
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
		if (c->o.on_layer)
			CAL_TRY(c->o.on_layer(c->o.ctx, c, L, err));
		if (c->o.progress) {
			double dt = cal_now() - t0;
			c->o.progress(c->o.ctx, L, (int32_t)d->num_layers,
				      dt > 0 ? (double)c->n_tok * (L + 1) / dt : 0);
		}
	}
	CAL_TRY(c->ev ? cal_eval_end(c, err) : final_norm(c, err));
	lm_head_weight_amax(c);
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
	free(hbuf);
	free(ids);
	free(pos);
	free(meta);
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

/* ---- JSON -------------------------------------------------------------------- */

static void put_amax(json_t *o, const char *key, float a)
{
	if (a >= 0)
		json_object_set_new(o, key, json_real(a));
}

json_t *cal_calib_stats(const struct cal_calib *c)
{
	const struct cal_model_desc *d = c->d;
	json_t *j = json_object(), *qs = json_object(), *in = json_object(), *seen = json_object();
	json_t *kv = json_object(), *moe = json_object();
	char name[512];
	json_t *out = NULL;
	if (!j || !qs || !in || !seen || !kv || !moe)
		goto done;
	for (int32_t L = 0; L < c->done_layers; L++) {
		const float *la = c->l_amax + (uint64_t)L * S_FIXED;
		const char *P = d->prefix;
#define K(fmt, ...) (snprintf(name, sizeof(name), "%slayers.%d." fmt, P, L, ##__VA_ARGS__), name)
		if (d->layers[L].mixer == CAL_MIXER_LINEAR) {
			/* Gated DeltaNet: every in_proj sees the norm output; no KV */
			static const char *const fused[] = {"in_proj_qkvz", "in_proj_ba", NULL};
			static const char *const split[] = {"in_proj_qkv", "in_proj_z", "in_proj_b",
							    "in_proj_a", NULL};
			for (const char *const *pp = d->gdn == CAL_GDN_FUSED ? fused : split; *pp; pp++)
				put_amax(in, K("linear_attn.%s", *pp), la[S_QKV]);
			put_amax(in, K("linear_attn.out_proj"), la[S_O]);
		} else {
			if (d->attn == CAL_ATTN_MLA) { /* mla.c */
				static const char *const mla[] = {"q_a_proj", "q_b_proj",
								  "kv_a_proj_with_mqa", "kv_b_proj", NULL};
				static const char *const mla_v2[] = {"q_proj", "kv_a_proj_with_mqa",
								     "kv_b_proj", NULL};
				for (const char *const *pp = d->q_lora_rank ? mla : mla_v2; *pp; pp++)
					put_amax(in, K("self_attn.%s", *pp), la[cal_mla_input_slot(*pp)]);
			} else {
				put_amax(in, K("self_attn.q_proj"), la[S_QKV]);
				put_amax(in, K("self_attn.k_proj"), la[S_QKV]);
				put_amax(in, K("self_attn.v_proj"), la[S_QKV]);
			}
			put_amax(in, K("self_attn.o_proj"), la[S_O]);
			json_object_set_new(kv, K("self_attn"),
					    json_pack("{s:f, s:f}", "k_amax", (double)la[S_K], "v_amax",
						      (double)la[S_V]));
		}
		if (d->layers[L].ffn == CAL_FFN_DENSE) {
			put_amax(in, K("mlp.gate_proj"), la[S_MLP_GU]);
			put_amax(in, K("mlp.up_proj"), la[S_MLP_GU]);
			put_amax(in, K("mlp.down_proj"), la[S_MLP_DOWN]);
			continue;
		}
		const struct cal_moe_host *m = &c->moe[L];
		put_amax(in, K("mlp.%s", d->arch->router_name ? d->arch->router_name : "gate"),
			 la[S_MOE_IN]);
		if (c->Is) {
			put_amax(in, K("mlp.%s.gate_proj", d->arch->shared_name), la[S_MOE_IN]);
			put_amax(in, K("mlp.%s.up_proj", d->arch->shared_name), la[S_MOE_IN]);
			put_amax(in, K("mlp.%s.down_proj", d->arch->shared_name), la[S_SH_DOWN]);
			if (d->shared == CAL_SHARED_GATED)
				put_amax(in, K("mlp.shared_expert_gate"), la[S_MOE_IN]);
		}
		json_t *tok = json_array(), *gu = json_array(), *dn = json_array();
		json_t *filled = json_array();
		float gmax = -1, dmax = -1;
		for (int64_t e = 0; e < c->E; e++) {
			gmax = m->gu[e] > gmax ? m->gu[e] : gmax;
			dmax = m->down[e] > dmax ? m->down[e] : dmax;
		}
		for (int64_t e = 0; e < c->E; e++) {
			json_array_append_new(tok, json_integer((json_int_t)m->tokens[e]));
			json_array_append_new(gu, m->tokens[e] ? json_real(m->gu[e]) : json_null());
			json_array_append_new(dn, m->tokens[e] ? json_real(m->down[e]) : json_null());
			if (!m->tokens[e])
				json_array_append_new(filled, json_integer(e));
			if (m->tokens[e]) {
				put_amax(in, K("mlp.experts.%lld.gate_up_proj", (long long)e), m->gu[e]);
				json_object_set_new(seen, name, json_integer((json_int_t)m->tokens[e]));
				put_amax(in, K("mlp.experts.%lld.down_proj", (long long)e), m->down[e]);
				json_object_set_new(seen, name, json_integer((json_int_t)m->tokens[e]));
			}
		}
		json_t *ml = json_pack("{s:o, s:o, s:o, s:f, s:f}", "tokens", tok,
				       "gate_up_input_amax", gu, "down_input_amax", dn,
				       "gate_up_input_amax_layer", (double)gmax,
				       "down_input_amax_layer", (double)dmax);
		if (c->o.per_expert_input_amax) {
			/* experts that saw no token take the layer maximum (reported) */
			json_t *gu2 = json_array(), *dn2 = json_array();
			for (int64_t e = 0; e < c->E; e++) {
				json_array_append_new(gu2, json_real(m->tokens[e] ? m->gu[e] : gmax));
				json_array_append_new(dn2, json_real(m->tokens[e] ? m->down[e] : dmax));
			}
			json_object_set_new(ml, "per_expert_gate_up_input_amax", gu2);
			json_object_set_new(ml, "per_expert_down_input_amax", dn2);
			json_object_set_new(ml, "filled_from_layer_max", filled);
		} else {
			json_object_set_new(ml, "experts_without_tokens", filled);
		}
		json_object_set_new(moe, K("mlp.experts"), ml);
#undef K
	}
	put_amax(in, "lm_head", c->lmhead_amax);
	for (size_t i = 0; i < c->plan->n_q; i++) {
		const struct cal_plan_q *q = &c->plan->q[i];
		if (!q->spec.enabled)
			continue;
		json_t *e = json_pack("{s:s, s:s}", "role", cal_qrole_name(q->role), "format",
				      cal_qfmt_name(q->spec.fmt));
		if (c->q_has[i])
			json_object_set_new(e, "amax", json_real(c->q_amax[i]));
		else
			json_object_set_new(e, "amax", json_null());
		if (q->spec.use_constant_amax)
			json_object_set_new(e, "constant", json_true());
		json_object_set_new(qs, q->name, e);
	}
	json_object_set_new(j, "model_type", json_string(d->model_type));
	json_object_set_new(j, "layers_done", json_integer(c->done_layers));
	json_object_set_new(j, "tokens", json_integer((json_int_t)c->n_tok));
	json_object_set_new(j, "pad_like_modelopt", json_boolean(c->o.pad_like_modelopt));
	json_object_set_new(j, "per_expert_input_amax", json_boolean(c->o.per_expert_input_amax));
	json_object_set_new(j, "moe_calib_experts_ratio", json_real(c->o.moe_calib_experts_ratio));
	json_object_set_new(j, "experts_per_token_observed", json_integer(c->kk));
	json_object_set_new(j, "combine", json_string(c->o.combine == CAL_COMBINE_F32 ? "f32"
										       : "eager"));
	json_object_set_new(j, "quantizers", qs);
	json_object_set_new(j, "input_amax", in);
	json_object_set_new(j, "tokens_seen", seen);
	json_object_set_new(j, "kv_amax", kv);
	json_object_set_new(j, "moe", moe);
	if (c->gq) /* docs/gptq.md: per linear, and the layers that fell back */
		json_object_set_new(j, "gptq", cal_gptq_stats(c));
	if (c->aw) /* docs/awq.md: per linear, the chosen alpha */
		json_object_set_new(j, "awq_lite", cal_awq_stats(c));
	qs = in = seen = kv = moe = NULL;
	out = j;
	j = NULL;
done:
	json_decref(qs);
	json_decref(in);
	json_decref(seen);
	json_decref(kv);
	json_decref(moe);
	json_decref(j);
	return out;
}

char *cal_calib_stats_dump(const json_t *stats)
{
	return stats ? json_dumps(stats, JSON_INDENT(1) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9))
		     : NULL;
}

char *cal_calib_stats_json(const struct cal_calib *c)
{
	json_t *j = cal_calib_stats(c);
	char *out = cal_calib_stats_dump(j);
	json_decref(j);
	return out;
}
