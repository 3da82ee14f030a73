/*
 * layer.c — one decoder layer of the calibration forward pass: which steps it
 * is made of (table-driven from the model description), its weights in the
 * canonical layout (routed experts W13 [E, 2I, H] gate rows then up rows and
 * W2 [E, H, I] for every on-disk layout; dense gate|up stacked the same way),
 * and the steps themselves as op-table calls with the observers in between.
 * Rounding follows HF (docs/architectures.md "Common structure").  Gated
 * DeltaNet layers are in gdn.c; the gated attention of Qwen3-Next / Qwen3.5
 * (docs/architectures.md "Qwen3-Next and Qwen3.5-MoE": q_proj rows interleave
 * query and output gate per head, de-interleaved at load; o_proj input after
 * the sigmoid gate) is here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"

/* ---- the steps of a layer ------------------------------------------------- */

enum cal_status cal_layer_steps(const struct cal_calib *c, int32_t L, enum cal_step *steps,
				int *n_steps, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	const struct cal_layer_desc *ld = &d->layers[L];
	int n = 0;
	if (ld->mixer == CAL_MIXER_LINEAR) {
		if (d->gdn == CAL_GDN_NONE)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "layer %d: linear attention without a Gated DeltaNet "
					     "layout", L);
		steps[n++] = STEP_GDN;
	} else if (d->attn == CAL_ATTN_GQA || d->attn == CAL_ATTN_GATED_GQA) {
		steps[n++] = STEP_ATTN_GQA;
	} else if (d->attn == CAL_ATTN_MLA) {
		steps[n++] = STEP_ATTN_MLA;
	} else {
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "layer %d: %s attention is not run by the calibration engine yet",
				     L, cal_attn_kind_name(d->attn));
	}
	steps[n++] = ld->ffn == CAL_FFN_MOE ? STEP_MOE : STEP_MLP_DENSE;
	*n_steps = n;
	return CAL_OK;
}

/* ---- RoPE frequencies ------------------------------------------------------- */

/* YaRN (docs/deepseek.md "YaRN frequencies"): the correction range in
 * double as transformers computes it in Python, the blend in fp32. */
static void yarn_inv_freq(const struct cal_rope *r, float *inv, int64_t rd)
{
	double dim = (double)rd, L0 = (double)r->original_max_pos, lb = log(r->theta);
	double bf = r->beta_fast != 0 ? r->beta_fast : 32, bs = r->beta_slow != 0 ? r->beta_slow : 1;
	double low = dim * log(L0 / (bf * 2 * M_PI)) / (2 * lb);
	double high = dim * log(L0 / (bs * 2 * M_PI)) / (2 * lb);
	if (r->truncate) {
		low = floor(low);
		high = ceil(high);
	}
	low = low > 0 ? low : 0;
	high = high < dim - 1 ? high : dim - 1;
	if (low == high)
		high += 0.001;
	float base = (float)r->theta, factor = (float)r->factor;
	float flo = (float)low, span = (float)(high - low);
	for (int64_t i = 0; i < rd / 2; i++) {
		float pf = powf(base, (float)(2 * i) / (float)rd);
		float extra = 1.0f / pf, inter = 1.0f / (factor * pf);
		float ramp = ((float)i - flo) / span;
		ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
		float ef = 1.0f - ramp; /* extrapolation factor */
		inv[i] = inter * (1.0f - ef) + extra * ef;
	}
}

enum cal_status cal_rope_inv_freq(const struct cal_model_desc *d, float *inv, int64_t rd,
				  struct cal_error *err)
{
	const struct cal_rope *r = &d->rope;
	float base = (float)r->theta;
	for (int64_t i = 0; i < rd / 2; i++) {
		float e = (float)(2 * i) / (float)rd;
		inv[i] = 1.0f / powf(base, e);
	}
	switch (r->type) {
	case CAL_ROPE_DEFAULT:
		return CAL_OK;
	case CAL_ROPE_LLAMA3: {
		/* HF _compute_llama3_parameters, fp32 tensors with Python-float scalars */
		float factor = (float)r->factor, lo = (float)r->low_freq_factor;
		float hi = (float)r->high_freq_factor, old = (float)r->original_max_pos;
		float lo_wl = old / lo, hi_wl = old / hi;
		for (int64_t i = 0; i < rd / 2; i++) {
			float f = inv[i];
			float wl = (float)(2.0 * M_PI) / f;
			float fl = wl > lo_wl ? f / factor : f;
			float smooth = (old / wl - lo) / (hi - lo);
			float sm = (1.0f - smooth) * fl / factor + smooth * fl;
			int medium = !(wl < hi_wl) && !(wl > lo_wl);
			inv[i] = medium ? sm : fl;
		}
		return CAL_OK;
	}
	case CAL_ROPE_LINEAR:
		for (int64_t i = 0; i < rd / 2; i++)
			inv[i] = inv[i] / (float)r->factor;
		return CAL_OK;
	case CAL_ROPE_YARN:
		yarn_inv_freq(r, inv, rd);
		return CAL_OK;
	default:
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "RoPE type '%s' is not run by the calibration engine yet",
				     cal_rope_type_name(r->type));
	}
}

/* ---- weights: host staging in the canonical layout ------------------------ */

static void *own(struct cal_layer_host *lh, size_t bytes)
{
	void *p;
	if (lh->n_owned >= (int)CAL_ARRAY_LEN(lh->owned))
		return NULL;
	p = malloc(bytes ? bytes : 1);
	if (p)
		lh->owned[lh->n_owned++] = p;
	return p;
}

void cal_layer_host_free(struct cal_layer_host *lh)
{
	for (int i = 0; i < lh->n_owned; i++)
		free(lh->owned[i]);
	memset(lh, 0, sizeof(*lh));
}

/* Element i of t as fp32. */
static float elem(const struct cal_st_tensor *t, uint64_t i)
{
	switch (t->dtype) {
	case CAL_DTYPE_BF16:
		return cal_bf16_to_f32(((const uint16_t *)t->data)[i]);
	case CAL_DTYPE_F16:
		return cal_f16_to_f32(((const uint16_t *)t->data)[i]);
	case CAL_DTYPE_F32:
		return ((const float *)t->data)[i];
	default:
		return NAN;
	}
}

static int float_dtype(enum cal_dtype dt)
{
	return dt == CAL_DTYPE_BF16 || dt == CAL_DTYPE_F16 || dt == CAL_DTYPE_F32;
}

/* Block-scaled FP8 source weight t ([out, in] F8_E4M3) with its
 * weight_scale_inv, decoded to bf16 into dst (out * in elements) on the
 * host back end's threads, for this layer only (docs/deepseek.md). */
static enum cal_status fp8_decode(struct cal_calib *c, const struct cal_st_tensor *t,
				  const struct cal_st_tensor *si, uint16_t *dst, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	enum cal_status st = cal_fp8_block_check(d, t, si, err);
	if (st < 0)
		return st;
	struct cal_fp8_block_dequant_args a = {t->data, si->data, (uint64_t)t->shape[0],
					       (uint64_t)t->shape[1], (uint32_t)d->quant_block[0],
					       (uint32_t)d->quant_block[1], dst};
	st = cal_op_fp8_block_dequant(c->host, &a, err);
	return st < 0 ? cal_error_wrap(err, st, "tensor %s", t->name) : CAL_OK;
}

/* fp8_decode into a copy owned by lh. */
static enum cal_status fp8_source(struct cal_calib *c, struct cal_layer_host *lh,
				  const struct cal_st_tensor *t, const struct cal_st_tensor *si,
				  const uint16_t **ret, struct cal_error *err)
{
	uint16_t *p = own(lh, t->numel * 2);
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "tensor %s: out of memory", t->name);
	*ret = p;
	return fp8_decode(c, t, si, p, err);
}

/* Streamed weights (c->fp8_dev): FP8 weight t is uploaded as codes and
 * decoded by the back end into the slot of field (a member of lh->w) from
 * element `at` on; the field stays NULL here. */
static enum cal_status fp8_defer(struct cal_calib *c, struct cal_layer_host *lh,
				 const struct cal_st_tensor *t, const struct cal_st_tensor *si,
				 const uint16_t **field, uint64_t at, struct cal_error *err)
{
	enum cal_status st = cal_fp8_block_check(c->d, t, si, err);
	if (st < 0)
		return st;
	if (lh->n_dfr >= CAL_FP8_JOBS)
		return cal_error_set(err, CAL_ERR_INTERNAL, "tensor %s: more than %d FP8 linears in "
				     "one layer", t->name, CAL_FP8_JOBS);
	lh->dfr[lh->n_dfr].field = (size_t)((const char *)field - (const char *)&lh->w);
	lh->dfr[lh->n_dfr].at = at;
	lh->dfr[lh->n_dfr].t = t;
	lh->dfr[lh->n_dfr].si = si;
	lh->n_dfr++;
	*field = NULL;
	return CAL_OK;
}

/* ret points into lh->w (a weight field, not a local). */
static int is_field(const struct cal_layer_host *lh, const uint16_t **ret)
{
	const char *p = (const char *)ret, *w = (const char *)&lh->w;
	return p >= w && p < w + sizeof(lh->w);
}

/* A model tensor as bf16: the mapping itself when it is bf16, else a
 * converted copy.  NULL *ret when absent and optional. */
static enum cal_status tensor_bf16(struct cal_calib *c, struct cal_layer_host *lh, enum cal_role role,
				   enum cal_part part, int32_t L, int optional, uint64_t numel,
				   const uint16_t **ret, struct cal_error *err)
{
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, role, part, L, -1);
	*ret = NULL;
	if (!t) {
		if (optional)
			return CAL_OK;
		return cal_error_set(err, CAL_ERR_FORMAT, "layer %d: tensor %s.%s is missing", L,
				     cal_role_name(role), cal_part_name(part));
	}
	if (t->numel != numel)
		return cal_error_set(err, CAL_ERR_FORMAT, "tensor %s: %llu elements, expected %llu",
				     t->name, (unsigned long long)t->numel, (unsigned long long)numel);
	if (t->dtype == CAL_DTYPE_F8_E4M3) {
		const struct cal_st_tensor *si = cal_catalog_find(c->cat, role, CAL_PART_SCALE_INV, L,
								  -1);
		if (c->fp8_dev && is_field(lh, ret))
			return fp8_defer(c, lh, t, si, ret, 0, err);
		return fp8_source(c, lh, t, si, ret, err);
	}
	if (!float_dtype(t->dtype))
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "tensor %s: dtype %s is not supported",
				     t->name, cal_dtype_name(t->dtype));
	if (t->dtype == CAL_DTYPE_BF16) {
		*ret = t->data;
		return CAL_OK;
	}
	uint16_t *p = own(lh, numel * 2);
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "tensor %s: out of memory", t->name);
	for (uint64_t i = 0; i < numel; i++)
		p[i] = cal_f32_to_bf16(elem(t, i));
	*ret = p;
	return CAL_OK;
}

/* A copy of t as fp32 owned by lh. */
static enum cal_status widen_f32(struct cal_layer_host *lh, const struct cal_st_tensor *t,
				 uint64_t numel, const float **ret, struct cal_error *err)
{
	float *p = own(lh, numel * 4);
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "tensor %s: out of memory", t->name);
	for (uint64_t i = 0; i < numel; i++)
		p[i] = elem(t, i);
	*ret = p;
	return CAL_OK;
}

/* A norm weight: bf16 or f32 kept as stored, f16 widened to f32. */
static enum cal_status tensor_norm(struct cal_calib *c, struct cal_layer_host *lh, enum cal_role role,
				   int32_t L, int optional, uint64_t numel, const void **ret,
				   enum cal_dtype *ret_dt, struct cal_error *err)
{
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, role, CAL_PART_WEIGHT, L, -1);
	*ret = NULL;
	*ret_dt = CAL_DTYPE_BF16;
	if (!t)
		return optional ? CAL_OK
				: cal_error_set(err, CAL_ERR_FORMAT, "layer %d: %s weight is missing", L,
						cal_role_name(role));
	if (t->numel != numel || !float_dtype(t->dtype))
		return cal_error_set(err, CAL_ERR_FORMAT, "tensor %s: %llu elements of %s, expected %llu",
				     t->name, (unsigned long long)t->numel, cal_dtype_name(t->dtype),
				     (unsigned long long)numel);
	if (t->dtype == CAL_DTYPE_F32 && c->d->norm == CAL_NORM_RMS_F32W) {
		/* gpt_oss: transformers loads the fp32 weights in the model's bf16 */
		float *p = own(lh, numel * 4);
		if (!p)
			return cal_error_set(err, CAL_ERR_NOMEM, "tensor %s: out of memory", t->name);
		cal_oai_norm_weight(t->data, numel, p);
		*ret = p;
		*ret_dt = CAL_DTYPE_F32;
		return CAL_OK;
	}
	if (t->dtype != CAL_DTYPE_F16) {
		*ret = t->data;
		*ret_dt = t->dtype;
		return CAL_OK;
	}
	*ret_dt = CAL_DTYPE_F32;
	return widen_f32(lh, t, numel, (const float **)ret, err);
}

enum cal_status cal_layer_tensor(struct cal_calib *c, struct cal_layer_host *lh,
				 enum cal_role role, enum cal_part part, int32_t L, uint64_t numel,
				 const uint16_t **ret, struct cal_error *err)
{
	return tensor_bf16(c, lh, role, part, L, 0, numel, ret, err);
}

void *cal_layer_own(struct cal_layer_host *lh, size_t bytes)
{
	return own(lh, bytes);
}

enum cal_status cal_layer_norm_tensor(struct cal_calib *c, struct cal_layer_host *lh,
				      enum cal_role role, int32_t L, uint64_t numel,
				      const void **ret, enum cal_dtype *ret_dt, struct cal_error *err)
{
	return tensor_norm(c, lh, role, L, 0, numel, ret, ret_dt, err);
}

/* A model tensor as fp32 (a copy owned by lh unless stored f32). */
static enum cal_status tensor_f32(struct cal_calib *c, struct cal_layer_host *lh, enum cal_role role,
				  enum cal_part part, int32_t L, int optional, uint64_t numel,
				  const float **ret, struct cal_error *err)
{
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, role, part, L, -1);
	*ret = NULL;
	if (!t)
		return optional ? CAL_OK
				: cal_error_set(err, CAL_ERR_FORMAT, "layer %d: tensor %s.%s is missing",
						L, cal_role_name(role), cal_part_name(part));
	if (t->numel != numel || !float_dtype(t->dtype))
		return cal_error_set(err, CAL_ERR_FORMAT, "tensor %s: %llu elements of %s, expected %llu "
				     "floats", t->name, (unsigned long long)t->numel,
				     cal_dtype_name(t->dtype), (unsigned long long)numel);
	if (t->dtype == CAL_DTYPE_F32) {
		*ret = t->data;
		return CAL_OK;
	}
	return widen_f32(lh, t, numel, ret, err);
}

/* Gated attention: q_proj's rows (and bias) [nh][2 hd] = per head hd query
 * rows then hd gate rows, into [query rows of all heads | gate rows of all
 * heads] (a copy owned by lh); `cols` is H for the weight, 1 for the bias. */
static enum cal_status deinterleave_q(struct cal_layer_host *lh, const uint16_t *src,
				      uint64_t nh, uint64_t hd, uint64_t cols,
				      const uint16_t **ret, struct cal_error *err)
{
	uint16_t *p = own(lh, 2 * nh * hd * cols * 2);
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory for the gated q_proj");
	for (uint64_t n = 0; n < nh; n++) {
		memcpy(p + n * hd * cols, src + 2 * n * hd * cols, hd * cols * 2);
		memcpy(p + (nh + n) * hd * cols, src + (2 * n + 1) * hd * cols, hd * cols * 2);
	}
	*ret = p;
	return CAL_OK;
}

void cal_gated_q_map(const struct cal_calib *c, uint32_t *map)
{
	uint64_t nh = (uint64_t)c->nh, hd = (uint64_t)c->hd;
	for (uint64_t h = 0; h < nh; h++)
		for (uint64_t j = 0; j < hd; j++) {
			map[h * hd + j] = (uint32_t)(2 * h * hd + j);
			map[(nh + h) * hd + j] = (uint32_t)((2 * h + 1) * hd + j);
		}
}

/* Copies expert projection (L, e, proj) as bf16 [out, in] into dst. */
static enum cal_status expert_copy(struct cal_calib *c, int32_t L, int32_t e, enum cal_proj proj,
				   uint16_t *dst, int64_t out, int64_t in, struct cal_error *err)
{
	struct cal_expert_slice s;
	enum cal_status st = cal_catalog_expert(c->cat, L, e, proj, &s, err);
	if (st < 0)
		return st;
	if (s.t->dtype == CAL_DTYPE_F8_E4M3 && s.expert_index < 0 && s.out == out && s.in == in) {
		/* per-expert FP8 source: decoded into a layer-lifetime copy */
		static const enum cal_role roles[] = {CAL_ROLE_EXPERT_GATE, CAL_ROLE_EXPERT_UP,
						      CAL_ROLE_EXPERT_DOWN};
		return fp8_decode(c, s.t, cal_catalog_find(c->cat, roles[proj], CAL_PART_SCALE_INV, L, e),
				  dst, err);
	}
	if (s.out != out || s.in != in || s.scales || !float_dtype(s.t->dtype))
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "layer %d expert %d: tensor %s ([%lld, %lld] %s) cannot be used "
				     "(expected bf16/f16/f32 [%lld, %lld])", L, e, s.t->name,
				     (long long)s.out, (long long)s.in, cal_dtype_name(s.t->dtype),
				     (long long)out, (long long)in);
	if (s.t->dtype == CAL_DTYPE_BF16 && s.istride == 1 && s.out_stride == 1 &&
	    s.ostride == in) {
		memcpy(dst, (const uint16_t *)s.t->data + cal_expert_slice_index(&s, 0, 0),
		       (size_t)(out * in) * 2);
		return CAL_OK;
	}
	for (int64_t o = 0; o < out; o++)
		for (int64_t i = 0; i < in; i++) {
			uint64_t k = cal_expert_slice_index(&s, o, i);
			dst[o * in + i] = s.t->dtype == CAL_DTYPE_BF16 ? ((const uint16_t *)s.t->data)[k]
								       : cal_f32_to_bf16(elem(s.t, k));
		}
	return CAL_OK;
}

/* The mapping's bf16 [out, in] of expert projection (L, e, proj) when it is
 * contiguous there, else NULL. */
static const uint16_t *expert_direct(struct cal_calib *c, int32_t L, int32_t e, enum cal_proj proj,
				     int64_t out, int64_t in)
{
	struct cal_expert_slice s;
	if (cal_catalog_expert(c->cat, L, e, proj, &s, NULL) < 0)
		return NULL;
	if (s.out != out || s.in != in || s.scales || s.t->dtype != CAL_DTYPE_BF16 ||
	    s.istride != 1 || s.out_stride != 1 || s.ostride != in)
		return NULL;
	return (const uint16_t *)s.t->data + cal_expert_slice_index(&s, 0, 0);
}

/* On a device, per-expert layouts stay in the mapping (lh->e13_seg,
 * lh->e2_seg) when every expert is contiguous bf16; returns 1 then. */
static int experts_direct(struct cal_calib *c, int32_t L, struct cal_layer_host *lh)
{
	uint64_t E = (uint64_t)c->El, e0 = (uint64_t)c->e0; /* this rank's experts */
	int64_t I = c->I, H = c->H;
	const uint16_t **g = NULL, **d = NULL;
	if (!c->on_device)
		return 0;
	g = own(lh, 2 * E * sizeof(*g));
	d = own(lh, E * sizeof(*d));
	if (!g || !d)
		return 0;
	for (uint64_t e = 0; e < E; e++) {
		g[2 * e] = expert_direct(c, L, (int32_t)(e0 + e), CAL_PROJ_GATE, I, H);
		g[2 * e + 1] = expert_direct(c, L, (int32_t)(e0 + e), CAL_PROJ_UP, I, H);
		d[e] = expert_direct(c, L, (int32_t)(e0 + e), CAL_PROJ_DOWN, H, I);
		if (!g[2 * e] || !g[2 * e + 1] || !d[e])
			return 0;
	}
	lh->e13_seg = g;
	lh->e2_seg = d;
	return 1;
}

uint64_t cal_fp8_grid(const struct cal_model_desc *d, uint64_t out, uint64_t in)
{
	uint64_t br = (uint64_t)d->quant_block[0], bc = (uint64_t)d->quant_block[1];
	return br && bc ? ((out + br - 1) / br) * ((in + bc - 1) / bc) : 0;
}

/* Streamed weights from an FP8 block source: per-expert codes and scale
 * grids stay in the mapping (lh->q13_seg ...), uploaded as they are and
 * decoded on the back end when the layer starts (docs/deepseek.md); returns
 * 1 then, 0 when some expert is not a per-expert FP8 pair (the host path
 * then decodes or reports it). */
static int experts_fp8_deferred(struct cal_calib *c, int32_t L, struct cal_layer_host *lh)
{
	static const enum cal_role roles[] = {CAL_ROLE_EXPERT_GATE, CAL_ROLE_EXPERT_UP,
					      CAL_ROLE_EXPERT_DOWN};
	uint64_t E = (uint64_t)c->El, e0 = (uint64_t)c->e0; /* this rank's experts */
	const uint8_t **q13 = own(lh, 2 * E * sizeof(*q13)), **q2 = own(lh, E * sizeof(*q2));
	const float **s13 = own(lh, 2 * E * sizeof(*s13)), **s2 = own(lh, E * sizeof(*s2));
	if (!c->fp8_dev || !q13 || !q2 || !s13 || !s2)
		return 0;
	for (uint64_t e = 0; e < E; e++)
		for (int k = 0; k < 3; k++) {
			struct cal_expert_slice sl;
			int64_t out = k == 2 ? c->H : c->I, in = k == 2 ? c->I : c->H;
			if (cal_catalog_expert(c->cat, L, (int32_t)(e0 + e), (enum cal_proj)k, &sl,
					       NULL) < 0 ||
			    sl.t->dtype != CAL_DTYPE_F8_E4M3 || sl.expert_index >= 0 || sl.out != out ||
			    sl.in != in)
				return 0;
			const struct cal_st_tensor *si = cal_catalog_find(c->cat, roles[k],
									  CAL_PART_SCALE_INV, L,
									  (int32_t)(e0 + e));
			if (cal_fp8_block_check(c->d, sl.t, si, NULL) < 0)
				return 0;
			if (k == 2) {
				q2[e] = sl.t->data;
				s2[e] = si->data;
			} else {
				q13[2 * e + (uint64_t)k] = sl.t->data;
				s13[2 * e + (uint64_t)k] = si->data;
			}
		}
	lh->q13_seg = q13;
	lh->q2_seg = q2;
	lh->s13_seg = s13;
	lh->s2_seg = s2;
	return 1;
}

/* Stacks two [rows, cols] matrices (gate then up) into one [2 rows, cols]. */
static enum cal_status stack2(struct cal_layer_host *lh, const uint16_t *a, const uint16_t *b,
			      uint64_t n, const uint16_t **ret, struct cal_error *err)
{
	uint16_t *p = own(lh, n * 4);
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory stacking gate and up");
	memcpy(p, a, n * 2);
	memcpy(p + n, b, n * 2);
	*ret = p;
	return CAL_OK;
}

/* Gate and up weights ([n] elements each) stacked into *field ([2n]): both
 * FP8 on streamed weights are left to the back end, else stacked here. */
static enum cal_status gate_up(struct cal_calib *c, struct cal_layer_host *lh, int32_t L,
			       enum cal_role rg, enum cal_role ru, uint64_t n, const uint16_t **field,
			       struct cal_error *err)
{
	const struct cal_st_tensor *tg = cal_catalog_find(c->cat, rg, CAL_PART_WEIGHT, L, -1);
	const struct cal_st_tensor *tu = cal_catalog_find(c->cat, ru, CAL_PART_WEIGHT, L, -1);
	const uint16_t *g = NULL, *u = NULL;
	enum cal_status st = CAL_OK;
	if (c->fp8_dev && tg && tu && tg->dtype == CAL_DTYPE_F8_E4M3 &&
	    tu->dtype == CAL_DTYPE_F8_E4M3 && tg->numel == n && tu->numel == n) {
		CAL_TRY(fp8_defer(c, lh, tg, cal_catalog_find(c->cat, rg, CAL_PART_SCALE_INV, L, -1),
				  field, 0, err));
		return fp8_defer(c, lh, tu, cal_catalog_find(c->cat, ru, CAL_PART_SCALE_INV, L, -1),
				 field, n, err);
	}
	CAL_TRY(tensor_bf16(c, lh, rg, CAL_PART_WEIGHT, L, 0, n, &g, err));
	CAL_TRY(tensor_bf16(c, lh, ru, CAL_PART_WEIGHT, L, 0, n, &u, err));
	return stack2(lh, g, u, n, field, err);
fail:
	return st;
}

enum cal_status cal_layer_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
				struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	const struct cal_layer_desc *ld = &d->layers[L];
	struct cal_layer_w *w = &lh->w;
	enum cal_status st = CAL_OK;
	uint64_t H = (uint64_t)c->H, qd = (uint64_t)(c->nh * c->hd), kd = (uint64_t)(c->nkv * c->hd);

	memset(lh, 0, sizeof(*lh));
	CAL_TRY(tensor_norm(c, lh, CAL_ROLE_INPUT_NORM, L, 0, H, &w->in_norm, &w->in_norm_dt, err));
	CAL_TRY(tensor_norm(c, lh, CAL_ROLE_POST_ATTN_NORM, L, 0, H, &w->post_norm, &w->post_norm_dt,
			    err));
	if (ld->mixer == CAL_MIXER_LINEAR) {
		CAL_TRY(cal_gdn_stage(c, L, lh, err));
		goto ffn;
	}
	if (d->attn == CAL_ATTN_MLA) {
		CAL_TRY(cal_mla_stage(c, L, lh, err));
		goto ffn;
	}
	int gated = d->attn == CAL_ATTN_GATED_GQA;
	CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_Q_PROJ, CAL_PART_WEIGHT, L, 0, (gated ? 2 : 1) * qd * H,
			    &w->wq, err));
	if (gated)
		CAL_TRY(deinterleave_q(lh, w->wq, (uint64_t)c->nh, (uint64_t)c->hd, H, &w->wq, err));
	CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_K_PROJ, CAL_PART_WEIGHT, L, 0, kd * H, &w->wk, err));
	CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_V_PROJ, CAL_PART_WEIGHT, L, 0, kd * H, &w->wv, err));
	CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_O_PROJ, CAL_PART_WEIGHT, L, 0, H * qd, &w->wo, err));
	CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_Q_PROJ, CAL_PART_BIAS, L, !d->qkv_bias,
			    (gated ? 2 : 1) * qd, &w->bq, err));
	if (gated && w->bq)
		CAL_TRY(deinterleave_q(lh, w->bq, (uint64_t)c->nh, (uint64_t)c->hd, 1, &w->bq, err));
	CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_K_PROJ, CAL_PART_BIAS, L, !d->qkv_bias, kd, &w->bk, err));
	CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_V_PROJ, CAL_PART_BIAS, L, !d->qkv_bias, kd, &w->bv, err));
	CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_O_PROJ, CAL_PART_BIAS, L, !d->o_bias, H, &w->bo, err));
	if (d->qk_norm != CAL_QK_NORM_NONE) {
		uint64_t nq = d->qk_norm == CAL_QK_NORM_HEAD ? (uint64_t)c->hd : qd;
		uint64_t nk = d->qk_norm == CAL_QK_NORM_HEAD ? (uint64_t)c->hd : kd;
		CAL_TRY(tensor_norm(c, lh, CAL_ROLE_Q_NORM, L, 0, nq, &w->q_norm, &w->q_norm_dt, err));
		CAL_TRY(tensor_norm(c, lh, CAL_ROLE_K_NORM, L, 0, nk, &w->k_norm, &w->k_norm_dt, err));
	}
ffn:
	if (ld->ffn == CAL_FFN_DENSE) {
		uint64_t I = (uint64_t)c->Id;
		CAL_TRY(gate_up(c, lh, L, CAL_ROLE_MLP_GATE, CAL_ROLE_MLP_UP, I * H, &w->w13, err));
		CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_MLP_DOWN, CAL_PART_WEIGHT, L, 0, H * I, &w->w2, err));
		lh->n_w13 = 2 * I * H;
		lh->n_w2 = H * I;
		return CAL_OK;
	}
	uint64_t E = (uint64_t)c->E, I = (uint64_t)c->I;
	if (d->router == CAL_ROUTER_SIGMOID_GROUP) {
		/* DeepSeek: HF keeps the router weight and the correction bias fp32 */
		CAL_TRY(tensor_f32(c, lh, CAL_ROLE_ROUTER, CAL_PART_WEIGHT, L, 0, E * H, &w->router_f32,
				   err));
		CAL_TRY(tensor_f32(c, lh, CAL_ROLE_ROUTER_CORR_BIAS, CAL_PART_PARAM, L,
				   !d->arch->router_corr_bias, E, &w->corr_bias, err));
	} else {
		CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_ROUTER, CAL_PART_WEIGHT, L, 0, E * H, &w->router,
				    err));
	}
	if (d->act == CAL_ACT_SWIGLU_OAI) /* sinks, biases, MXFP4 experts: gpt_oss.c */
		CAL_TRY(cal_oai_stage(c, L, lh, err));
	enum cal_expert_layout lay = cal_catalog_layout(c->cat, L);
	const struct cal_st_tensor *fgu = cal_catalog_find(c->cat, CAL_ROLE_EXPERTS_GATE_UP,
							   CAL_PART_WEIGHT, L, -1);
	const struct cal_st_tensor *fdn = cal_catalog_find(c->cat, CAL_ROLE_EXPERTS_DOWN,
							   CAL_PART_WEIGHT, L, -1);
	/* expert parallelism: only this rank's experts e0 .. e0 + El - 1 (ranks.c) */
	uint64_t e0 = (uint64_t)c->e0, El = (uint64_t)c->El;
	lh->n_e13 = El * 2 * I * H;
	lh->n_e2 = El * H * I;
	if (w->e13) {
		/* decoded from MXFP4 by cal_oai_stage (every expert) */
		w->e13 += e0 * 2 * I * H;
	} else if (lay == CAL_LAYOUT_FUSED && fgu && fgu->dtype == CAL_DTYPE_BF16 &&
		   fgu->numel == E * 2 * I * H) {
		w->e13 = (const uint16_t *)fgu->data + e0 * 2 * I * H; /* already [E, 2I, H] gate|up */
	} else if (lay != CAL_LAYOUT_FUSED && experts_direct(c, L, lh)) {
		w->e13 = w->e2 = NULL; /* copied expert by expert by the upload */
	} else if (lay == CAL_LAYOUT_PER_EXPERT && experts_fp8_deferred(c, L, lh)) {
		w->e13 = w->e2 = NULL; /* FP8: uploaded as codes, decoded by the back end */
	} else {
		uint16_t *p = own(lh, lh->n_e13 * 2);
		if (!p)
			return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory for W13", L);
		for (uint64_t e = 0; e < El; e++) {
			CAL_TRY(expert_copy(c, L, (int32_t)(e0 + e), CAL_PROJ_GATE, p + e * 2 * I * H,
					    (int64_t)I, (int64_t)H, err));
			CAL_TRY(expert_copy(c, L, (int32_t)(e0 + e), CAL_PROJ_UP,
					    p + e * 2 * I * H + I * H, (int64_t)I, (int64_t)H, err));
		}
		w->e13 = p;
	}
	if (w->e2) {
		/* decoded from MXFP4 by cal_oai_stage (every expert) */
		w->e2 += e0 * H * I;
	} else if (lay == CAL_LAYOUT_FUSED && fdn && fdn->dtype == CAL_DTYPE_BF16 &&
		   fdn->numel == E * H * I) {
		w->e2 = (const uint16_t *)fdn->data + e0 * H * I;
	} else if (lh->e2_seg || lh->q2_seg) {
		w->e2 = NULL;
	} else {
		uint16_t *p = own(lh, lh->n_e2 * 2);
		if (!p)
			return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory for W2", L);
		for (uint64_t e = 0; e < El; e++)
			CAL_TRY(expert_copy(c, L, (int32_t)(e0 + e), CAL_PROJ_DOWN, p + e * H * I,
					    (int64_t)H, (int64_t)I, err));
		w->e2 = p;
	}
	if (w->eb13) /* gpt_oss expert biases: this rank's */
		w->eb13 += e0 * 2 * I;
	if (w->eb2)
		w->eb2 += e0 * H;
	if (d->shared != CAL_SHARED_NONE) {
		uint64_t S = (uint64_t)c->Is;
		CAL_TRY(gate_up(c, lh, L, CAL_ROLE_SHARED_GATE, CAL_ROLE_SHARED_UP, S * H, &w->s13,
				err));
		CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_SHARED_DOWN, CAL_PART_WEIGHT, L, 0, H * S, &w->s2,
				    err));
		lh->n_s13 = 2 * S * H;
		lh->n_s2 = H * S;
		if (d->shared == CAL_SHARED_GATED)
			CAL_TRY(tensor_bf16(c, lh, CAL_ROLE_SHARED_EXPERT_GATE, CAL_PART_WEIGHT, L, 0, H,
					    &w->sgate, err));
	}
fail:
	return st;
}

/* ---- the forward steps ------------------------------------------------------ */

enum cal_status cal_layer_observe(struct cal_calib *c, const uint16_t *x, uint64_t rows,
				  uint64_t cols, uint64_t row0, int slot, struct cal_error *err)
{
	struct cal_amax_args a = {CAL_DTYPE_BF16, x, rows * cols, row0 * cols, c->obs_amax + slot,
				  c->obs_nf + slot};
	int ph = c->prof_phase;
	if (c->fwd_no_obs) /* a pass whose observer state is put back (lin_run.c) */
		return CAL_OK;
	cal_prof(c, PH_OBS);
	enum cal_status st = cal_op_amax(c->be, &a, err);
	if (st >= 0)
		st = cal_hr_observe(c, x, rows, cols, slot, err);
	cal_prof(c, ph);
	return st;
}

enum cal_status cal_layer_gemm(struct cal_calib *c, const uint16_t *x, const uint16_t *w,
			       const uint16_t *b, uint16_t *y, uint64_t m, uint64_t n, uint64_t k,
			       struct cal_error *err)
{
	struct cal_gemm_args a = {.x = x, .w = w, .bias = b, .y = y, .m = m, .n = n, .k = k};
	return cal_op_gemm(c->be, &a, err);
}

enum cal_status cal_layer_rmsnorm(struct cal_calib *c, const uint16_t *x, uint16_t *y,
				  uint64_t rows, uint64_t cols, const void *w, enum cal_dtype wdt,
				  float eps, struct cal_error *err)
{
	enum cal_rms_kind kind = CAL_RMS_PLAIN;
	if (c->d->norm == CAL_NORM_RMS_F32W)
		kind = CAL_RMS_F32W;
	else if (c->d->norm == CAL_NORM_RMS_1P)
		kind = CAL_RMS_1P;
	struct cal_rmsnorm_args a = {kind, x, y, rows, cols, w, wdt, eps};
	return cal_op_rmsnorm(c->be, &a, err);
}

static enum cal_status rmsnorm(struct cal_calib *c, const uint16_t *x, uint16_t *y, uint64_t rows,
			       uint64_t cols, const void *w, enum cal_dtype wdt,
			       struct cal_error *err)
{
	return cal_layer_rmsnorm(c, x, y, rows, cols, w, wdt, (float)c->d->rms_norm_eps, err);
}

static enum cal_status ewise(struct cal_calib *c, enum cal_ewise_mode mode, const uint16_t *a,
			     const uint16_t *b, const uint16_t *g, uint16_t *out, uint64_t rows,
			     uint64_t cols, uint64_t lda, uint64_t ldb, float clamp,
			     struct cal_error *err)
{
	struct cal_ewise_args e = {mode, a, b, g, out, rows, cols, lda, ldb, 1, 0, clamp,
				   (float)c->d->swiglu_alpha};
	return cal_op_ewise(c->be, &e, err);
}

enum cal_status cal_layer_actq(struct cal_calib *c, int32_t L, int site, int64_t expert,
			       uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err)
{
	c->fwd_left &= ~(1u << site); /* reached (cal_fwd_done) */
	if (c->lr_pass) /* GPTQ's passes 1 and 2, AWQ-lite's input cache, SmoothQuant's
			 * per-channel amax (lin_run.c) */
		return cal_lin_run_site(c, L, site, expert, x, rows, cols, err);
	if (!c->ev_quant)
		return CAL_OK;
	return cal_eval_actq(c, L, site, expert, x, rows, cols, err);
}

static enum cal_status step_attn(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				 const struct cal_mb *mb, uint16_t *x, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	uint64_t T = mb->n_tok, H = (uint64_t)c->H;
	uint64_t qd = (uint64_t)(c->nh * c->hd), kd = (uint64_t)(c->nkv * c->hd);
	enum cal_status st = CAL_OK;

	cal_prof(c, PH_ATTN);
	CAL_TRY(rmsnorm(c, x, c->h, T, H, w->in_norm, w->in_norm_dt, err));
	CAL_TRY(cal_layer_observe(c, c->h, T, H, mb->tok0, S_QKV, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_QKV, -1, c->h, T, H, err));
	CAL_TRY(cal_layer_gemm(c, c->h, w->wq, w->bq, c->q, T, qd, H, err));
	if (d->attn == CAL_ATTN_GATED_GQA) /* the gate rows follow the query rows */
		CAL_TRY(cal_layer_gemm(c, c->h, w->wq + qd * H, w->bq ? w->bq + qd : NULL, c->agate, T, qd, H,
			     err));
	CAL_TRY(cal_layer_gemm(c, c->h, w->wk, w->bk, c->kb, T, kd, H, err));
	CAL_TRY(cal_layer_gemm(c, c->h, w->wv, w->bv, c->vb, T, kd, H, err));
	if (d->clip_qkv > 0) {
		float cl = (float)d->clip_qkv;
		CAL_TRY(ewise(c, CAL_EWISE_CLAMP, c->q, NULL, NULL, c->q, T, qd, 0, 0, cl, err));
		CAL_TRY(ewise(c, CAL_EWISE_CLAMP, c->kb, NULL, NULL, c->kb, T, kd, 0, 0, cl, err));
		CAL_TRY(ewise(c, CAL_EWISE_CLAMP, c->vb, NULL, NULL, c->vb, T, kd, 0, 0, cl, err));
	}
	if (d->qk_norm == CAL_QK_NORM_HEAD) {
		CAL_TRY(rmsnorm(c, c->q, c->q, T * (uint64_t)c->nh, (uint64_t)c->hd, w->q_norm,
				w->q_norm_dt, err));
		CAL_TRY(rmsnorm(c, c->kb, c->kb, T * (uint64_t)c->nkv, (uint64_t)c->hd, w->k_norm,
				w->k_norm_dt, err));
	} else if (d->qk_norm == CAL_QK_NORM_FULL) {
		CAL_TRY(rmsnorm(c, c->q, c->q, T, qd, w->q_norm, w->q_norm_dt, err));
		CAL_TRY(rmsnorm(c, c->kb, c->kb, T, kd, w->k_norm, w->k_norm_dt, err));
	}
	if (c->rd > 0) {
		struct cal_rope_args rq = {c->q, T, (uint32_t)c->nh, (uint32_t)c->hd, (uint32_t)c->rd,
					   c->pos + mb->tok0, c->d_inv_freq,
					   (float)d->rope.attention_factor, 0, d->rope.interleave};
		struct cal_rope_args rk = rq;
		rk.x = c->kb;
		rk.heads = (uint32_t)c->nkv;
		CAL_TRY(cal_op_rope(c->be, &rq, err));
		CAL_TRY(cal_op_rope(c->be, &rk, err));
	}
	CAL_TRY(cal_kv_observe(c, mb, err)); /* rotation, K / V observers (kvcache.c) */
	CAL_TRY(cal_layer_actq(c, L, EQ_K, -1, c->kb, T, kd, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_V, -1, c->vb, T, kd, err));
	uint32_t window = d->layers[L].mixer == CAL_MIXER_SLIDING ? (uint32_t)d->sliding_window : 0;
	struct cal_attention_args at = {
		c->q, c->kb, c->vb, c->att, T, (uint32_t)c->nh, (uint32_t)c->nkv, (uint32_t)c->hd,
		c->meta + mb->meta_off, mb->n_seq,
		c->o.pad_like_modelopt ? c->meta + mb->meta_off + mb->n_seq + 1 : NULL, window,
		(float)d->attn_scaling, w->sinks,
		/* gpt_oss runs transformers' eager attention only (docs/gpt_oss.md) */
		d->has_sinks, 0};
	CAL_TRY(cal_op_attention(c->be, &at, err));
	if (d->attn == CAL_ATTN_GATED_GQA) /* o_proj sees attention * sigmoid(gate) */
		CAL_TRY(ewise(c, CAL_EWISE_SIGMOID_MUL, c->att, c->agate, NULL, c->att, T, qd, 0, 0, 0,
			      err));
	CAL_TRY(cal_layer_observe(c, c->att, T, qd, mb->tok0, S_O, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_O, -1, c->att, T, qd, err));
	if (cal_fwd_done(c))
		goto fail;
	CAL_TRY(cal_layer_gemm(c, c->att, w->wo, w->bo, c->tmp, T, H, qd, err));
	CAL_TRY(ewise(c, CAL_EWISE_ADD, x, c->tmp, NULL, x, T, H, 0, 0, 0, err));
fail:
	return st;
}

static enum cal_status step_dense(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				  const struct cal_mb *mb, uint16_t *x, struct cal_error *err)
{
	uint64_t T = mb->n_tok, H = (uint64_t)c->H, I = (uint64_t)c->Id;
	enum cal_status st = CAL_OK;
	cal_prof(c, PH_DENSE);
	CAL_TRY(rmsnorm(c, x, c->h, T, H, w->post_norm, w->post_norm_dt, err));
	CAL_TRY(cal_layer_observe(c, c->h, T, H, mb->tok0, S_MLP_GU, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_MLP_GU, -1, c->h, T, H, err));
	CAL_TRY(cal_layer_gemm(c, c->h, w->w13, NULL, c->gu, T, 2 * I, H, err));
	CAL_TRY(ewise(c, CAL_EWISE_SWIGLU, c->gu, c->gu + I, NULL, c->act, T, I, 2 * I, 2 * I, 0,
		      err));
	CAL_TRY(cal_layer_observe(c, c->act, T, I, mb->tok0, S_MLP_DOWN, err));
	CAL_TRY(cal_layer_actq(c, L, EQ_MLP_DOWN, -1, c->act, T, I, err));
	if (cal_fwd_done(c))
		goto fail;
	CAL_TRY(cal_layer_gemm(c, c->act, w->w2, NULL, c->tmp, T, H, I, err));
	CAL_TRY(ewise(c, CAL_EWISE_ADD, x, c->tmp, NULL, x, T, H, 0, 0, 0, err));
fail:
	return st;
}

enum cal_status cal_layer_experts(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				  const struct cal_experts_args *a, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	uint64_t H = (uint64_t)c->H, I = (uint64_t)c->I, E = (uint64_t)c->E, P = a->rows;
	uint64_t n = a->n_experts, f = a->first;
	const uint32_t *ho = a->h_offsets;
	enum cal_status st = CAL_OK;
	if (!P || !n)
		return CAL_OK;
	struct cal_amax_segments_args sg = {CAL_DTYPE_BF16, a->x, P, H, a->offsets, (uint32_t)n,
					    a->row_base * H, c->obs_amax + S_FIXED + f,
					    c->obs_nf + S_FIXED + f};
	cal_prof(c, PH_OBS);
	if (!c->fwd_no_obs) { /* else a pass whose observer state is put back */
		CAL_TRY(cal_op_amax_segments(c->be, &sg, err));
		CAL_TRY(cal_hr_observe_segments(c, a->x, H, ho, n, S_FIXED + f, err));
	}
	for (uint64_t e = 0; c->ev_quant && e < n; e++)
		CAL_TRY(cal_layer_actq(c, L, EQ_EXP_GU, (int64_t)(f + e), a->x + (uint64_t)ho[e] * H,
			     ho[e + 1] - ho[e], H, err));
	cal_prof(c, PH_EXPERTS);
	/* gpt_oss: `x @ W + b`, the bias added after the product's rounding */
	struct cal_gemm_args g1 = {.x = a->x, .w = w->e13, .bias = w->eb13, .y = a->gu, .m = P,
				   .n = 2 * I, .k = H, .n_groups = (uint32_t)n,
				   .offsets = a->offsets, .w_stride = 2 * I * H,
				   .bias_stride = 2 * I, .host_offsets = ho,
				   .bias_after_round = 1};
	CAL_TRY(cal_op_gemm(c->be, &g1, err));
	if (d->act == CAL_ACT_SWIGLU_OAI)
		CAL_TRY(ewise(c, CAL_EWISE_SWIGLU_OAI, a->gu, a->gu + I, NULL, a->act, P, I, 2 * I,
			      2 * I, (float)d->swiglu_limit, err));
	else
		CAL_TRY(ewise(c, CAL_EWISE_SWIGLU, a->gu, a->gu + I, NULL, a->act, P, I, 2 * I,
			      2 * I, 0, err));
	struct cal_amax_segments_args sd = {CAL_DTYPE_BF16, a->act, P, I, a->offsets, (uint32_t)n,
					    a->row_base * I, c->obs_amax + S_FIXED + E + f,
					    c->obs_nf + S_FIXED + E + f};
	cal_prof(c, PH_OBS);
	if (!c->fwd_no_obs) {
		CAL_TRY(cal_op_amax_segments(c->be, &sd, err));
		CAL_TRY(cal_hr_observe_segments(c, a->act, I, ho, n, S_FIXED + E + f, err));
	}
	for (uint64_t e = 0; c->ev_quant && e < n; e++)
		CAL_TRY(cal_layer_actq(c, L, EQ_EXP_DOWN, (int64_t)(f + e), a->act + (uint64_t)ho[e] * I,
			     ho[e + 1] - ho[e], I, err));
	cal_prof(c, PH_EXPERTS);
	/* y may be x: the gathered inputs are dead once W13 ran */
	struct cal_gemm_args g2 = {.x = a->act, .w = w->e2, .bias = w->eb2, .y = a->y, .m = P,
				   .n = H, .k = I, .n_groups = (uint32_t)n, .offsets = a->offsets,
				   .w_stride = H * I, .bias_stride = H,
				   .host_offsets = ho, .bias_after_round = 1};
	CAL_TRY(cal_op_gemm(c->be, &g2, err));
fail:
	return st;
}

/* The routed experts of step_moe on c->h: router top-k, the experts (over
 * several ranks dispatched to their owners), the combine into c->tmp. */
static enum cal_status moe_routed(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				  const struct cal_mb *mb, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	uint64_t T = mb->n_tok, H = (uint64_t)c->H, E = (uint64_t)c->E;
	uint64_t kk = (uint64_t)c->kk, P = T * kk;
	enum cal_status st = CAL_OK;
	struct cal_moe_host *mh = &c->moe[L];

	if (d->router == CAL_ROUTER_SIGMOID_GROUP) {
		/* DeepSeek: fp32 router GEMM, sigmoid, group-limited top-k */
		struct cal_router_group_args rg = {
			c->h, w->router_f32, w->corr_bias, c->rlogits, T, H, (uint32_t)E,
			(uint32_t)c->k, (uint32_t)kk, (uint32_t)d->n_group, (uint32_t)d->topk_group,
			d->norm_topk_prob, (float)d->routed_scaling_factor, c->idx, c->rw};
		CAL_TRY(cal_op_router_group(c->be, &rg, err));
	} else {
		CAL_TRY(cal_layer_gemm(c, c->h, w->router, w->router_b, c->logits, T, E, H, err));
		struct cal_router_args ra = {c->logits, T, (uint32_t)E, (uint32_t)c->k, (uint32_t)kk,
					     d->norm_topk_prob, c->idx, c->rw,
					     d->router == CAL_ROUTER_TOPK_SOFTMAX ? CAL_ROUTER_MODE_TOPK_SOFTMAX
										  : CAL_ROUTER_MODE_SOFTMAX_TOPK,
					     d->arch->router_bf16_weights};
		CAL_TRY(cal_op_router(c->be, &ra, err));
	}
	struct cal_moe_sort_args sa = {c->idx, P, (uint32_t)E, c->offsets, c->sorted, c->ppos};
	CAL_TRY(cal_op_moe_sort(c->be, &sa, err));
	/* the expert offsets on the host once per micro-batch: the grouped GEMMs
	 * are then issued without further syncs, and give the token counts */
	CAL_TRY(cal_backend_download(c->be, c->h_offsets, c->offsets, ((size_t)E + 1) * 4, err));
	for (uint64_t e = 0; e < E; e++)
		mh->tokens[e] += c->h_offsets[e + 1] - c->h_offsets[e];
	struct cal_gather_rows_args ga = {c->h, T, H, c->sorted, P, (uint32_t)kk, c->xg};
	CAL_TRY(cal_op_gather_rows(c->be, &ga, err));
	if (c->nranks > 1) { /* dispatched to the experts' ranks and combined back */
		CAL_TRY(cal_ep_experts(c, L, w, P, err));
	} else {
		struct cal_experts_args ea = {c->xg, P, c->offsets, c->h_offsets, E, 0,
					      mb->tok0 * kk, c->gu, c->act, c->yo};
		CAL_TRY(cal_layer_experts(c, L, w, &ea, err));
	}
	struct cal_moe_combine_args ca = {c->yo, P, c->ppos, c->idx, c->rw, T, H, (uint32_t)c->k,
					  (uint32_t)kk, c->o.combine, c->tmp};
	CAL_TRY(cal_op_moe_combine(c->be, &ca, err));
fail:
	return st;
}

static enum cal_status step_moe(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				const struct cal_mb *mb, uint16_t *x, struct cal_error *err)
{
	uint64_t T = mb->n_tok, H = (uint64_t)c->H;
	enum cal_status st = CAL_OK;

	cal_prof(c, PH_ROUTER);
	CAL_TRY(rmsnorm(c, x, c->h, T, H, w->post_norm, w->post_norm_dt, err));
	CAL_TRY(cal_layer_observe(c, c->h, T, H, mb->tok0, S_MOE_IN, err));
	if (cal_fwd_routed(c)) /* else c->tmp is not written: the output is discarded */
		CAL_TRY(moe_routed(c, L, w, mb, err));
	if (w->s13) {
		uint64_t S = (uint64_t)c->Is;
		const uint16_t *sx = c->h;
		/* the shared expert's own quantized input; sy is free until s2 */
		if (c->ev_quant || (c->lr_pass && c->lr->a->site_writes)) {
			CAL_TRY(cal_backend_copy(c->be, c->sy, c->h, T * H * 2, err));
			CAL_TRY(cal_layer_actq(c, L, EQ_SH_GU, -1, c->sy, T, H, err));
			sx = c->sy;
		} else if (c->lr_pass) { /* AWQ, SmoothQuant read the input */
			CAL_TRY(cal_layer_actq(c, L, EQ_SH_GU, -1, c->h, T, H, err));
		}
		CAL_TRY(cal_layer_gemm(c, sx, w->s13, NULL, c->sgu, T, 2 * S, H, err));
		CAL_TRY(ewise(c, CAL_EWISE_SWIGLU, c->sgu, c->sgu + S, NULL, c->sact, T, S, 2 * S,
			      2 * S, 0, err));
		CAL_TRY(cal_layer_observe(c, c->sact, T, S, mb->tok0, S_SH_DOWN, err));
		CAL_TRY(cal_layer_actq(c, L, EQ_SH_DOWN, -1, c->sact, T, S, err));
		if (cal_fwd_done(c))
			goto fail;
		CAL_TRY(cal_layer_gemm(c, c->sact, w->s2, NULL, c->sy, T, H, S, err));
		if (w->sgate) {
			CAL_TRY(cal_layer_gemm(c, c->h, w->sgate, NULL, c->sgl, T, 1, H, err));
			CAL_TRY(ewise(c, CAL_EWISE_GATE_ADD, c->tmp, c->sy, c->sgl, c->tmp, T, H, 0, 0, 0,
				      err));
		} else {
			CAL_TRY(ewise(c, CAL_EWISE_ADD, c->tmp, c->sy, NULL, c->tmp, T, H, 0, 0, 0, err));
		}
	}
	if (!c->fwd_sites) /* a sites-only pass discards the layer's output */
		CAL_TRY(ewise(c, CAL_EWISE_ADD, x, c->tmp, NULL, x, T, H, 0, 0, 0, err));
fail:
	return st;
}

enum cal_status cal_layer_step_run(struct cal_calib *c, int32_t L, enum cal_step step,
				   const struct cal_layer_w *w, const struct cal_mb *mb, uint16_t *x,
				   struct cal_error *err)
{
	switch (step) {
	case STEP_ATTN_GQA:
		return step_attn(c, L, w, mb, x, err);
	case STEP_MLP_DENSE:
		return step_dense(c, L, w, mb, x, err);
	case STEP_MOE:
		return step_moe(c, L, w, mb, x, err);
	case STEP_GDN:
		return cal_gdn_step(c, L, w, mb, x, err);
	case STEP_ATTN_MLA:
		return cal_mla_step(c, L, w, mb, x, err);
	}
	return cal_error_set(err, CAL_ERR_INTERNAL, "layer %d: unknown step %d", L, (int)step);
}

enum cal_status cal_layer_forward(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				  const struct cal_mb *mb, struct cal_error *err)
{
	enum cal_step steps[CAL_MAX_STEPS];
	int n = 0;
	enum cal_status st = cal_layer_steps(c, L, steps, &n, err);
	uint16_t *x = cal_mb_x(c, mb);
	c->fwd_left = c->fwd_need; /* the sites a sites-only pass still needs */
	for (int i = 0; i < n && st >= 0 && !cal_fwd_done(c); i++)
		st = cal_layer_step_run(c, L, steps[i], w, mb, x, err);
	if (st >= 0)
		st = cal_layer_observe(c, x, mb->n_tok, (uint64_t)c->H, mb->tok0, S_OUT, err);
	return st;
}
