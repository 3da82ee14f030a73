/*
 * gdn.c — Gated DeltaNet layers (Qwen3-Next / Qwen3.5 `linear_attn`,
 * docs/architectures.md "Qwen3-Next and Qwen3.5-MoE", "Gated DeltaNet") in the
 * calibration forward pass, and the scratch of the gated full attention.
 *
 * Weights are brought into one layout, Qwen3.5's split projections:
 * in_proj_qkv [conv_dim, H] with rows Q (nk dk) | K (nk dk) | V (nv dv),
 * in_proj_z [nv dv, H], in_proj_b / in_proj_a [nv, H].  Qwen3-Next's
 * in_proj_qkvz / in_proj_ba are grouped by key head (group g: q_g, k_g,
 * v_g (r dv), z_g (r dv); b_g (r), a_g (r), r = nv / nk); their rows are
 * permuted once at load into that layout, in one buffer qkv | z | b | a,
 * so the fused modules' weights stay contiguous (qkvz = qkv | z, ba = b | a
 * as sets of rows) for their weight amax.  The input statistic is the same
 * for every projection: the input norm's output.
 *
 * The step follows HF's rounding points: bf16 GEMM outputs, the conv and
 * SiLU in bf16 (gdn_conv), gates and the delta rule in fp32 with a bf16
 * output (gated_delta), the gated RMSNorm (rmsnorm_gated), out_proj and the
 * bf16 residual add.  A_log and dt_bias are rounded to bf16 as HF loads
 * them (the checkpoints are loaded in bf16) and kept as fp32.  Sequences are
 * packed: the conv window and the state restart at every sequence.  With
 * pad_like_modelopt the pad rows of the norm output are zeroed first, as
 * HF's apply_mask_to_padding_states (so they count in no GDN statistic).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"

void cal_gdn_dims(const struct cal_model_desc *d, struct cal_gdn_dims *g)
{
	g->nk = (uint64_t)d->linear_num_key_heads;
	g->nv = (uint64_t)d->linear_num_value_heads;
	g->dk = (uint64_t)d->linear_key_head_dim;
	g->dv = (uint64_t)d->linear_value_head_dim;
	g->kern = (uint64_t)d->linear_conv_kernel_dim;
	g->cd = 2 * g->nk * g->dk + g->nv * g->dv;
	g->vd = g->nv * g->dv;
}

enum cal_status cal_gdn_check(const struct cal_model_desc *d, struct cal_error *err)
{
	struct cal_gdn_dims g;
	if (!d->n_linear_layers)
		return CAL_OK;
	cal_gdn_dims(d, &g);
	if (d->gdn != CAL_GDN_FUSED && d->gdn != CAL_GDN_SPLIT)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: linear_attention layers without a known projection layout",
				     d->model_type);
	if (!g.nk || !g.nv || g.nv % g.nk)
		return cal_error_set(err, CAL_ERR_FORMAT,
				     "%s: linear_num_value_heads %llu is not a multiple of "
				     "linear_num_key_heads %llu", d->model_type,
				     (unsigned long long)g.nv, (unsigned long long)g.nk);
	if (!g.dk || g.dk > CAL_GDN_MAX_HEAD_DIM || !g.dv || g.dv > CAL_GDN_MAX_HEAD_DIM)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: linear_key_head_dim %llu / linear_value_head_dim %llu: the "
				     "engine runs head dims 1 .. %u", d->model_type,
				     (unsigned long long)g.dk, (unsigned long long)g.dv,
				     CAL_GDN_MAX_HEAD_DIM);
	if (!g.kern || g.kern > CAL_GDN_CONV_MAX_KERNEL)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: linear_conv_kernel_dim %llu not in [1, %u]", d->model_type,
				     (unsigned long long)g.kern, CAL_GDN_CONV_MAX_KERNEL);
	return CAL_OK;
}

/* ---- scratch ------------------------------------------------------------------ */

uint64_t cal_gdn_token_bytes(const struct cal_calib *c)
{
	const struct cal_model_desc *d = c->d;
	uint64_t b = 0;
	if (d->attn == CAL_ATTN_GATED_GQA)
		b += 2 * (uint64_t)(c->nh * c->hd);
	if (d->n_linear_layers) {
		struct cal_gdn_dims g;
		cal_gdn_dims(d, &g);
		b += 2 * (2 * g.cd + 2 * g.vd + 2 * g.nv);
	}
	return b;
}

enum cal_status cal_gdn_alloc(struct cal_calib *c, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	uint64_t T = c->mb_tokens;
	struct {
		uint16_t **p;
		uint64_t elems;
	} b[6] = {{&c->agate, 0}, {&c->lqkv, 0}, {&c->lconv, 0}, {&c->lz, 0}, {&c->lba, 0},
		  {&c->lo, 0}};
	if (d->attn == CAL_ATTN_GATED_GQA)
		b[0].elems = T * (uint64_t)(c->nh * c->hd);
	if (d->n_linear_layers) {
		struct cal_gdn_dims g;
		cal_gdn_dims(d, &g);
		b[1].elems = T * g.cd;
		b[2].elems = T * g.cd;
		b[3].elems = T * g.vd;
		b[4].elems = T * 2 * g.nv;
		b[5].elems = T * g.vd;
	}
	for (size_t i = 0; i < CAL_ARRAY_LEN(b); i++) {
		void *p = NULL;
		enum cal_status st;
		if (!b[i].elems)
			continue;
		st = cal_backend_alloc(c->be, b[i].elems * 2, &p, err);
		if (st < 0)
			return st;
		*b[i].p = p;
	}
	return CAL_OK;
}

void cal_gdn_free(struct cal_calib *c)
{
	uint16_t **b[] = {&c->agate, &c->lqkv, &c->lconv, &c->lz, &c->lba, &c->lo};
	for (size_t i = 0; i < CAL_ARRAY_LEN(b); i++) {
		if (c->be)
			cal_backend_dealloc(c->be, *b[i]);
		*b[i] = NULL;
	}
}

/* ---- weights ------------------------------------------------------------------ */

/* The tensor as fp32 rounded to bf16 (HF loads the checkpoint in bf16). */
static enum cal_status param_f32(struct cal_calib *c, struct cal_layer_host *lh,
				 enum cal_role role, int32_t L, uint64_t n, const float **ret,
				 struct cal_error *err)
{
	const uint16_t *p = NULL;
	enum cal_status st = cal_layer_tensor(c, lh, role, CAL_PART_PARAM, L, n, &p, err);
	if (st < 0)
		return st;
	float *f = cal_layer_own(lh, n * sizeof(float));
	if (!f)
		return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory", L);
	for (uint64_t i = 0; i < n; i++)
		f[i] = cal_bf16_to_f32(p[i]);
	*ret = f;
	return CAL_OK;
}

void cal_gdn_fused_maps(const struct cal_gdn_dims *g, uint32_t *m1, uint32_t *m2)
{
	uint64_t r = g->nv / g->nk, kd = g->nk * g->dk, gw = 2 * g->dk + 2 * r * g->dv;
	for (uint64_t k = 0; k < g->nk; k++) {
		uint64_t s0 = k * gw;
		uint64_t dst[4] = {k * g->dk, kd + k * g->dk, 2 * kd + k * r * g->dv,
				   g->cd + k * r * g->dv};
		uint64_t len[4] = {g->dk, g->dk, r * g->dv, r * g->dv};
		for (int p = 0; p < 4; p++)
			for (uint64_t i = 0; i < len[p]; i++)
				m1[dst[p] + i] = (uint32_t)(s0++);
		for (uint64_t i = 0; i < r; i++) {
			m2[k * r + i] = (uint32_t)(2 * k * r + i);
			m2[g->nv + k * r + i] = (uint32_t)(2 * k * r + r + i);
		}
	}
}

/* Qwen3-Next: in_proj_qkvz / in_proj_ba rows grouped by key head, into the
 * split layout qkv | z | b | a (one buffer). */
static enum cal_status permute_fused(struct cal_calib *c, struct cal_layer_host *lh, int32_t L,
				     const struct cal_gdn_dims *g, struct cal_error *err)
{
	const uint64_t H = (uint64_t)c->H, r = g->nv / g->nk, kd = g->nk * g->dk;
	const uint64_t gw = 2 * g->dk + 2 * r * g->dv; /* rows per group of qkvz */
	const uint16_t *qkvz = NULL, *ba = NULL;
	enum cal_status st = CAL_OK;
	CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_IN_QKVZ, CAL_PART_WEIGHT, L,
				 (g->cd + g->vd) * H, &qkvz, err));
	CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_IN_BA, CAL_PART_WEIGHT, L, 2 * g->nv * H, &ba,
				 err));
	uint16_t *buf = cal_layer_own(lh, (g->cd + g->vd + 2 * g->nv) * H * 2);
	if (!buf)
		return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory for in_proj", L);
	for (uint64_t k = 0; k < g->nk; k++) {
		const uint16_t *src = qkvz + k * gw * H;
		struct {
			uint64_t dst_row, rows;
		} part[4] = {{k * g->dk, g->dk},                      /* q_k */
			     {kd + k * g->dk, g->dk},                 /* k_k */
			     {2 * kd + k * r * g->dv, r * g->dv},     /* v of heads k r .. */
			     {g->cd + k * r * g->dv, r * g->dv}};     /* z likewise */
		for (int p = 0; p < 4; p++) {
			memcpy(buf + part[p].dst_row * H, src, part[p].rows * H * 2);
			src += part[p].rows * H;
		}
		/* ba group k: b of heads k r .. k r + r - 1, then a of them */
		memcpy(buf + (g->cd + g->vd + k * r) * H, ba + (2 * k * r) * H, r * H * 2);
		memcpy(buf + (g->cd + g->vd + g->nv + k * r) * H, ba + (2 * k * r + r) * H, r * H * 2);
	}
	lh->w.lqkv = buf;
	lh->w.lz = buf + g->cd * H;
	lh->w.lb = buf + (g->cd + g->vd) * H;
	lh->w.la = lh->w.lb + g->nv * H;
fail:
	return st;
}

enum cal_status cal_gdn_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
			      struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	struct cal_layer_w *w = &lh->w;
	struct cal_gdn_dims g;
	const uint64_t H = (uint64_t)c->H;
	enum cal_status st = CAL_OK;
	cal_gdn_dims(d, &g);
	if (d->gdn == CAL_GDN_FUSED) {
		CAL_TRY(permute_fused(c, lh, L, &g, err));
	} else {
		CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_IN_QKV, CAL_PART_WEIGHT, L, g.cd * H,
					 &w->lqkv, err));
		CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_IN_Z, CAL_PART_WEIGHT, L, g.vd * H,
					 &w->lz, err));
		CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_IN_B, CAL_PART_WEIGHT, L, g.nv * H,
					 &w->lb, err));
		CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_IN_A, CAL_PART_WEIGHT, L, g.nv * H,
					 &w->la, err));
	}
	CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_CONV, CAL_PART_WEIGHT, L, g.cd * g.kern,
				 &w->lconv, err));
	CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_NORM, CAL_PART_WEIGHT, L, g.dv, &w->lnorm,
				 err));
	CAL_TRY(cal_layer_tensor(c, lh, CAL_ROLE_GDN_OUT, CAL_PART_WEIGHT, L, H * g.vd, &w->lout,
				 err));
	CAL_TRY(param_f32(c, lh, CAL_ROLE_GDN_A_LOG, L, g.nv, &w->a_log, err));
	CAL_TRY(param_f32(c, lh, CAL_ROLE_GDN_DT_BIAS, L, g.nv, &w->dt_bias, err));
fail:
	return st;
}

void cal_gdn_weight(const struct cal_calib *c, const struct cal_layer_w *w, const char *proj,
		    const uint16_t **ret, uint64_t *ret_n)
{
	struct cal_gdn_dims g;
	const uint64_t H = (uint64_t)c->H;
	cal_gdn_dims(c->d, &g);
	*ret = NULL;
	*ret_n = 0;
	if (!strcmp(proj, "in_proj_qkvz")) /* qkv | z, contiguous after the permutation */
		*ret = w->lqkv, *ret_n = (g.cd + g.vd) * H;
	else if (!strcmp(proj, "in_proj_ba"))
		*ret = w->lb, *ret_n = 2 * g.nv * H;
	else if (!strcmp(proj, "in_proj_qkv"))
		*ret = w->lqkv, *ret_n = g.cd * H;
	else if (!strcmp(proj, "in_proj_z"))
		*ret = w->lz, *ret_n = g.vd * H;
	else if (!strcmp(proj, "in_proj_b"))
		*ret = w->lb, *ret_n = g.nv * H;
	else if (!strcmp(proj, "in_proj_a"))
		*ret = w->la, *ret_n = g.nv * H;
	else if (!strcmp(proj, "out_proj"))
		*ret = w->lout, *ret_n = H * g.vd;
}

/* ---- the step ------------------------------------------------------------------ */

static enum cal_status gemm(struct cal_calib *c, const uint16_t *x, const uint16_t *w,
			    uint16_t *y, uint64_t m, uint64_t n, uint64_t k, struct cal_error *err)
{
	struct cal_gemm_args a = {.x = x, .w = w, .y = y, .m = m, .n = n, .k = k};
	return cal_op_gemm(c->be, &a, err);
}

static enum cal_status observe(struct cal_calib *c, const uint16_t *x, uint64_t rows,
			       uint64_t cols, uint64_t row0, int slot, struct cal_error *err)
{
	return cal_layer_observe(c, x, rows, cols, row0, slot, err);
}

/* pad_like_modelopt: zero the left-pad rows of h (HF masks the GDN input). */
static enum cal_status mask_pads(struct cal_calib *c, const struct cal_mb *mb, uint16_t *h,
				 struct cal_error *err)
{
	uint32_t *meta = malloc(((size_t)2 * mb->n_seq + 1) * sizeof(uint32_t));
	enum cal_status st = CAL_OK;
	const uint64_t H = (uint64_t)c->H;
	if (!meta)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	CAL_TRY(cal_backend_download(c->be, meta, c->meta + mb->meta_off,
				     ((size_t)2 * mb->n_seq + 1) * sizeof(uint32_t), err));
	for (uint32_t s = 0; s < mb->n_seq; s++) {
		uint64_t pad = meta[mb->n_seq + 1 + s];
		if (pad)
			CAL_TRY(cal_backend_memset(c->be, h + (uint64_t)meta[s] * H, 0, pad * H * 2,
						   err));
	}
fail:
	free(meta);
	return st;
}

/* in_proj_b and in_proj_a of the normed input c->h into c->lba. */
static enum cal_status gdn_ba(struct cal_calib *c, const struct cal_layer_w *w, uint64_t T,
			      const struct cal_gdn_dims *g, struct cal_error *err)
{
	uint64_t H = (uint64_t)c->H;
	CAL_TRY_RET(gemm(c, c->h, w->lb, c->lba, T, g->nv, H, err));
	return gemm(c, c->h, w->la, c->lba + T * g->nv, T, g->nv, H, err);
}

enum cal_status cal_gdn_step(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			     const struct cal_mb *mb, uint16_t *x, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	const uint64_t T = mb->n_tok, H = (uint64_t)c->H;
	struct cal_gdn_dims g;
	enum cal_status st = CAL_OK;
	const uint32_t *cu = c->meta + mb->meta_off;
	cal_gdn_dims(d, &g);
	cal_prof(c, PH_LINATTN); /* the linear-attention token mixer */

	struct cal_rmsnorm_args rn = {d->norm == CAL_NORM_RMS_1P ? CAL_RMS_1P
				      : d->norm == CAL_NORM_RMS_F32W ? CAL_RMS_F32W : CAL_RMS_PLAIN,
				      x, c->h, T, H, w->in_norm, w->in_norm_dt,
				      (float)d->rms_norm_eps};
	CAL_TRY(cal_op_rmsnorm(c->be, &rn, err));
	if (c->o.pad_like_modelopt)
		CAL_TRY(mask_pads(c, mb, c->h, err));
	CAL_TRY(observe(c, c->h, T, H, mb->tok0, S_QKV, err));
	/* unquantized b / a in an evaluation's quantized forward: the input before
	 * the quantized projections' quantizer (docs/eval.md) */
	int ba_raw = cal_eval_gdn_ba_raw(c);
	if (ba_raw)
		CAL_TRY(gdn_ba(c, w, T, &g, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_QKV, -1, c->h, T, H, err));
	CAL_TRY(gemm(c, c->h, w->lqkv, c->lqkv, T, g.cd, H, err));
	CAL_TRY(gemm(c, c->h, w->lz, c->lz, T, g.vd, H, err));
	if (!ba_raw)
		CAL_TRY(gdn_ba(c, w, T, &g, err));
	struct cal_gdn_conv_args cv = {c->lqkv, w->lconv, c->lconv, T, (uint32_t)g.cd,
				       (uint32_t)g.kern, cu, mb->n_seq};
	CAL_TRY(cal_op_gdn_conv(c->be, &cv, err));
	struct cal_gated_delta_args gd = {c->lconv, c->lba, c->lba + T * g.nv, w->a_log, w->dt_bias,
					  c->lo, T, (uint32_t)g.nk, (uint32_t)g.nv, (uint32_t)g.dk,
					  (uint32_t)g.dv, cu, mb->n_seq, 0};
	CAL_TRY(cal_op_gated_delta(c->be, &gd, err));
	struct cal_rmsnorm_gated_args ng = {c->lo, c->lz, c->lo, T * g.nv, g.dv, w->lnorm,
					    (float)d->rms_norm_eps};
	CAL_TRY(cal_op_rmsnorm_gated(c->be, &ng, err));
	CAL_TRY(observe(c, c->lo, T, g.vd, mb->tok0, S_O, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_O, -1, c->lo, T, g.vd, err));
	if (cal_fwd_done(c)) /* a sites-only pass (lin_run.c) */
		goto fail;
	CAL_TRY(gemm(c, c->lo, w->lout, c->tmp, T, H, g.vd, err));
	struct cal_ewise_args add = {CAL_EWISE_ADD, x, c->tmp, NULL, x, T, H, 0, 0, 1, 0, 0, 0};
	CAL_TRY(cal_op_ewise(c->be, &add, err));
fail:
	return st;
}
