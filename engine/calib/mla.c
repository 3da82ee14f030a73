/*
 * mla.c — DeepSeek-V3 multi-head latent attention in the calibration
 * forward pass (docs/deepseek.md).  Per token:
 *   q    = q_b_proj(q_a_layernorm(q_a_proj(h)))   (q_proj(h) when q_lora_rank is null)
 *   ckv  = kv_a_proj_with_mqa(h) = [c (kv_lora) | k_pe (rope dim)]
 *   kv   = kv_b_proj(kv_a_layernorm(c))           per head [k_nope | v]
 *   RoPE (interleaved pairs, YaRN frequencies) on the rope channels of q
 *   and on the one shared k_pe; K_n = [k_nope_n | k_pe], V_n = v_n;
 *   causal attention with scale qk_head_dim^-0.5 * mscale^2, q/k head dim
 *   (nope + rope) and v head dim differing; o_proj over [nh * v_head_dim].
 * kv_a_proj_with_mqa is run as two GEMMs over its row blocks (latent rows,
 * rope rows): each output element is the same dot product.  q_a_layernorm
 * and kv_a_layernorm use transformers' class default eps 1e-6.
 * Observers: the shared input of q_a_proj / kv_a_proj_with_mqa (S_QKV),
 * q_b_proj's (S_QB), kv_b_proj's (S_KVB), o_proj's (S_O), and the per-head
 * K (192) and V (128) that the attention sees (S_K / S_V), which is where
 * modelopt's k/v_bmm_quantizers sit.
 */
#include <string.h>

#include "common/util.h"
#include "engine/calib/calib_internal.h"

#define MLA_NORM_EPS 1e-6f

struct mla_dims {
	uint64_t H, nh, qr, kvr, dn, dr, dv, qk;
};

static void dims(const struct cal_model_desc *d, struct mla_dims *m)
{
	m->H = (uint64_t)d->hidden_size;
	m->nh = (uint64_t)d->num_heads;
	m->qr = (uint64_t)d->q_lora_rank;
	m->kvr = (uint64_t)d->kv_lora_rank;
	m->dn = (uint64_t)d->qk_nope_head_dim;
	m->dr = (uint64_t)d->qk_rope_head_dim;
	m->dv = (uint64_t)d->v_head_dim;
	m->qk = m->dn + m->dr;
}

enum cal_status cal_mla_check(const struct cal_model_desc *d, struct cal_error *err)
{
	if (d->qkv_bias || d->o_bias)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: MLA with attention_bias is not run by the calibration "
				     "engine yet", d->model_type);
	if (d->qk_rope_head_dim > CAL_ROPE_MAX_INTERLEAVED)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: qk_rope_head_dim %lld exceeds %u", d->model_type,
				     (long long)d->qk_rope_head_dim, CAL_ROPE_MAX_INTERLEAVED);
	if (d->num_heads > UINT32_MAX / 2 || d->qk_nope_head_dim + d->qk_rope_head_dim > 65536)
		return cal_error_set(err, CAL_ERR_RANGE, "%s: MLA head dims out of range",
				     d->model_type);
	return CAL_OK;
}

/* ---- scratch ------------------------------------------------------------------ */

/* Elements per token of each MLA scratch buffer, in struct order. */
static void scratch_elems(const struct cal_calib *c, uint64_t n[8])
{
	struct mla_dims m;
	memset(n, 0, 8 * sizeof(*n));
	if (c->d->attn != CAL_ATTN_MLA)
		return;
	dims(c->d, &m);
	n[0] = m.qr;               /* mqa */
	n[1] = m.nh * m.qk;        /* mq */
	n[2] = m.kvr;              /* mckv */
	n[3] = m.dr;               /* mkpe */
	n[4] = m.nh * (m.dn + m.dv); /* mkvb */
	n[5] = m.nh * m.qk;        /* mk */
	n[6] = m.nh * m.dv;        /* mv */
	n[7] = m.nh * m.dv;        /* matt */
}

uint64_t cal_mla_token_bytes(const struct cal_calib *c)
{
	uint64_t n[8], b = 0;
	scratch_elems(c, n);
	for (int i = 0; i < 8; i++)
		b += 2 * n[i];
	if (c->d->router == CAL_ROUTER_SIGMOID_GROUP && c->E)
		b += 4 * (uint64_t)c->E;
	return b;
}

enum cal_status cal_mla_alloc(struct cal_calib *c, struct cal_error *err)
{
	uint16_t **p[8] = {&c->mqa, &c->mq, &c->mckv, &c->mkpe, &c->mkvb, &c->mk, &c->mv, &c->matt};
	uint64_t n[8], T = c->mb_tokens;
	enum cal_status st;
	scratch_elems(c, n);
	for (int i = 0; i < 8; i++) {
		void *q = NULL;
		if (!n[i])
			continue;
		if ((st = cal_backend_alloc(c->be, T * n[i] * 2, &q, err)) < 0)
			return st;
		*p[i] = q;
	}
	if (c->d->router == CAL_ROUTER_SIGMOID_GROUP && c->E) {
		void *q = NULL;
		if ((st = cal_backend_alloc(c->be, T * (uint64_t)c->E * 4, &q, err)) < 0)
			return st;
		c->rlogits = q;
	}
	return CAL_OK;
}

void cal_mla_free(struct cal_calib *c)
{
	uint16_t **p[8] = {&c->mqa, &c->mq, &c->mckv, &c->mkpe, &c->mkvb, &c->mk, &c->mv, &c->matt};
	for (int i = 0; i < 8; i++) {
		if (c->be)
			cal_backend_dealloc(c->be, *p[i]);
		*p[i] = NULL;
	}
	if (c->be)
		cal_backend_dealloc(c->be, c->rlogits);
	c->rlogits = NULL;
}

/* Upper bound of one layer's MLA weights in an arena. */
uint64_t cal_mla_layer_bytes(const struct cal_calib *c)
{
	struct mla_dims m;
	if (c->d->attn != CAL_ATTN_MLA)
		return 0;
	dims(c->d, &m);
	uint64_t b = 4 * (m.qr + m.kvr) + 512;
	b += 2 * (m.qr * m.H + m.nh * m.qk * (m.qr ? m.qr : m.H) + (m.kvr + m.dr) * m.H +
		  m.nh * (m.dn + m.dv) * m.kvr + m.H * m.nh * m.dv) + 5 * 256;
	return b;
}

/* ---- weights ------------------------------------------------------------------ */

enum cal_status cal_mla_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
			      struct cal_error *err)
{
	struct mla_dims m;
	struct cal_layer_w *w = &lh->w;
	enum cal_status st = CAL_OK;
	dims(c->d, &m);
	if (m.qr) {
		CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_Q_A_PROJ, CAL_PART_WEIGHT, L, m.qr * m.H,
					 &w->wqa, err));
		CAL_TRY(cal_layer_norm_tensor(c, lh, CAL_ROLE_Q_A_NORM, L, m.qr, &w->qa_norm,
					      &w->qa_norm_dt, err));
		CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_Q_B_PROJ, CAL_PART_WEIGHT, L,
					 m.nh * m.qk * m.qr, &w->wq, err));
		lh->n_wq = m.nh * m.qk * m.qr;
	} else {
		CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_Q_PROJ, CAL_PART_WEIGHT, L, m.nh * m.qk * m.H,
					 &w->wq, err));
		lh->n_wq = m.nh * m.qk * m.H;
	}
	CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_KV_A_PROJ, CAL_PART_WEIGHT, L, (m.kvr + m.dr) * m.H,
				 &w->wkva, err));
	CAL_TRY(cal_layer_norm_tensor(c, lh, CAL_ROLE_KV_A_NORM, L, m.kvr, &w->kva_norm,
				      &w->kva_norm_dt, err));
	CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_KV_B_PROJ, CAL_PART_WEIGHT, L,
				 m.nh * (m.dn + m.dv) * m.kvr, &w->wkvb, err));
	CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_O_PROJ, CAL_PART_WEIGHT, L, m.H * m.nh * m.dv,
				 &w->wo, err));
	lh->n_wo = m.H * m.nh * m.dv;
fail:
	return st;
}

void cal_mla_weight(const struct cal_calib *c, const struct cal_layer_host *lh, const char *proj,
		    const uint16_t **ret, uint64_t *ret_n)
{
	struct mla_dims m;
	const struct cal_layer_w *w = &lh->w;
	dims(c->d, &m);
	*ret = NULL;
	*ret_n = 0;
	if (!strcmp(proj, "q_a_proj"))
		*ret = w->wqa, *ret_n = m.qr * m.H;
	else if (!strcmp(proj, "q_b_proj") || !strcmp(proj, "q_proj"))
		*ret = w->wq, *ret_n = lh->n_wq;
	else if (!strcmp(proj, "kv_a_proj_with_mqa"))
		*ret = w->wkva, *ret_n = (m.kvr + m.dr) * m.H;
	else if (!strcmp(proj, "kv_b_proj"))
		*ret = w->wkvb, *ret_n = m.nh * (m.dn + m.dv) * m.kvr;
	else if (!strcmp(proj, "o_proj"))
		*ret = w->wo, *ret_n = lh->n_wo;
}

int cal_mla_input_slot(const char *proj)
{
	if (!strcmp(proj, "q_b_proj"))
		return S_QB;
	if (!strcmp(proj, "kv_b_proj"))
		return S_KVB;
	if (!strcmp(proj, "o_proj"))
		return S_O;
	return S_QKV; /* q_a_proj, q_proj, kv_a_proj_with_mqa */
}

/* ---- the step ---------------------------------------------------------------- */

enum cal_status cal_mla_step(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			     const struct cal_mb *mb, uint16_t *x, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	struct mla_dims m;
	uint64_t T = mb->n_tok;
	enum cal_status st = CAL_OK;
	dims(d, &m);
	cal_prof(c, PH_ATTN);
	CAL_TRY(cal_layer_rmsnorm(c, x, c->h, T, m.H, w->in_norm, w->in_norm_dt,
				  (float)d->rms_norm_eps, err));
	CAL_TRY(cal_layer_observe(c, c->h, T, m.H, mb->tok0, S_QKV, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_QKV, -1, c->h, T, m.H, err));
	if (m.qr) {
		CAL_TRY(cal_layer_gemm(c, c->h, w->wqa, NULL, c->mqa, T, m.qr, m.H, err));
		CAL_TRY(cal_layer_rmsnorm(c, c->mqa, c->mqa, T, m.qr, w->qa_norm, w->qa_norm_dt,
					  MLA_NORM_EPS, err));
		CAL_TRY(cal_layer_observe(c, c->mqa, T, m.qr, mb->tok0, S_QB, err));
		CAL_TRY(cal_layer_actq(c, L, EQ_QB, -1, c->mqa, T, m.qr, err));
		CAL_TRY(cal_layer_gemm(c, c->mqa, w->wq, NULL, c->mq, T, m.nh * m.qk, m.qr, err));
	} else {
		CAL_TRY(cal_layer_gemm(c, c->h, w->wq, NULL, c->mq, T, m.nh * m.qk, m.H, err));
	}
	/* kv_a_proj_with_mqa: latent rows, then the rope-key rows */
	CAL_TRY(cal_layer_gemm(c, c->h, w->wkva, NULL, c->mckv, T, m.kvr, m.H, err));
	CAL_TRY(cal_layer_gemm(c, c->h, w->wkva + m.kvr * m.H, NULL, c->mkpe, T, m.dr, m.H, err));
	CAL_TRY(cal_layer_rmsnorm(c, c->mckv, c->mckv, T, m.kvr, w->kva_norm, w->kva_norm_dt,
				  MLA_NORM_EPS, err));
	CAL_TRY(cal_layer_observe(c, c->mckv, T, m.kvr, mb->tok0, S_KVB, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_KVB, -1, c->mckv, T, m.kvr, err));
	CAL_TRY(cal_layer_gemm(c, c->mckv, w->wkvb, NULL, c->mkvb, T, m.nh * (m.dn + m.dv), m.kvr, err));
	struct cal_rope_args rq = {c->mq, T, (uint32_t)m.nh, (uint32_t)m.qk, (uint32_t)m.dr,
				   c->pos + mb->tok0, c->d_inv_freq, (float)d->rope.attention_factor,
				   (uint32_t)m.dn, d->rope.interleave};
	struct cal_rope_args rk = {c->mkpe, T, 1, (uint32_t)m.dr, (uint32_t)m.dr, c->pos + mb->tok0,
				   c->d_inv_freq, (float)d->rope.attention_factor, 0,
				   d->rope.interleave};
	CAL_TRY(cal_op_rope(c->be, &rq, err));
	CAL_TRY(cal_op_rope(c->be, &rk, err));
	struct cal_mla_kv_args kv = {c->mkvb, c->mkpe, c->mk, c->mv, T, (uint32_t)m.nh,
				     (uint32_t)m.dn, (uint32_t)m.dr, (uint32_t)m.dv};
	CAL_TRY(cal_op_mla_kv(c->be, &kv, err));
	CAL_TRY(cal_kv_observe(c, mb, err)); /* rotation, K / V observers (kvcache.c) */
	CAL_TRY(cal_layer_actq(c, L, EQ_K, -1, c->mk, T, m.nh * m.qk, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_V, -1, c->mv, T, m.nh * m.dv, err));
	struct cal_attention_args at = {
		c->mq, c->mk, c->mv, c->matt, T, (uint32_t)m.nh, (uint32_t)m.nh, (uint32_t)m.qk,
		c->meta + mb->meta_off, mb->n_seq,
		c->o.pad_like_modelopt ? c->meta + mb->meta_off + mb->n_seq + 1 : NULL, 0,
		(float)d->attn_scaling, NULL, 0, (uint32_t)m.dv};
	CAL_TRY(cal_op_attention(c->be, &at, err));
	CAL_TRY(cal_layer_observe(c, c->matt, T, m.nh * m.dv, mb->tok0, S_O, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_O, -1, c->matt, T, m.nh * m.dv, err));
	if (cal_fwd_done(c)) /* a sites-only pass (lin_run.c) */
		goto fail;
	CAL_TRY(cal_layer_gemm(c, c->matt, w->wo, NULL, c->tmp, T, m.H, m.nh * m.dv, err));
	struct cal_ewise_args add = {CAL_EWISE_ADD, x, c->tmp, NULL, x, T, m.H, 0, 0, 1, 0, 0, 0};
	CAL_TRY(cal_op_ewise(c->be, &add, err));
fail:
	return st;
}
