/*
 * gpt_oss.c — the GPT-OSS parts of the calibration engine (docs/gpt_oss.md):
 * what of a gpt_oss description the engine runs, the layer tensors that
 * only GPT-OSS has (attention sinks, router bias, expert biases) staged in
 * the canonical layout, the experts (MXFP4 decoded, or the bf16 [E, in,
 * out] parameters transposed) per layer as the pipeline stages it, the
 * norm weights as transformers runs them, and the YaRN inverse frequencies.
 *
 * Canonical layout: the checkpoint interleaves gate and up along the 2I
 * output rows (gate at even rows, up at odd rows, in both the bf16
 * [E, H, 2I] and the MXFP4 [E, 2I, H/32, 16] forms); the engine keeps, per
 * expert, the I gate rows then the I up rows (W13 [E, 2I, H]), and the
 * gate_up biases in the same order.  A row permutation of W and b permutes
 * the GEMM's outputs and nothing else.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"

enum cal_status cal_oai_check(const struct cal_model_desc *d, struct cal_error *err)
{
	if (d->src_quant != CAL_SRC_QUANT_NONE && d->src_quant != CAL_SRC_QUANT_MXFP4)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: %s source weights are not run "
				     "for this model", d->model_type, cal_src_quant_name(d->src_quant));
	if (d->router != CAL_ROUTER_TOPK_SOFTMAX || d->act != CAL_ACT_SWIGLU_OAI)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: GPT-OSS needs its own router "
				     "and activation", d->model_type);
	if (!(d->swiglu_limit >= 0) || !isfinite(d->swiglu_alpha))
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: swiglu_limit %g / swiglu_alpha %g "
				     "are not usable", d->model_type, d->swiglu_limit,
				     d->swiglu_alpha);
	return CAL_OK;
}

/* A bf16 copy of a float tensor of `numel` elements (the mapping itself when bf16). */
static enum cal_status bf16_of(struct cal_calib *c, struct cal_layer_host *lh, enum cal_role role,
			       enum cal_part part, int32_t L, uint64_t numel, const uint16_t **ret,
			       struct cal_error *err)
{
	return cal_layer_tensor(c, lh, role, part, L, numel, ret, err);
}

/* Gate rows (even) then up rows (odd) of each expert's 2I rows of `cols`
 * elements: src [E, 2I, cols] interleaved -> dst [E, 2I, cols] canonical. */
static void deinterleave(uint16_t *dst, const uint16_t *src, uint64_t E, uint64_t I, uint64_t cols)
{
	for (uint64_t e = 0; e < E; e++) {
		const uint16_t *s = src + e * 2 * I * cols;
		uint16_t *d = dst + e * 2 * I * cols;
		for (uint64_t j = 0; j < I; j++) {
			memcpy(d + j * cols, s + 2 * j * cols, cols * 2);
			memcpy(d + (I + j) * cols, s + (2 * j + 1) * cols, cols * 2);
		}
	}
}

/* MXFP4 experts of one projection: blocks U8 [E, R, C/32, 16] and scales U8
 * [E, R, C/32] decoded to bf16 [E, R, C] (HF's decode: the low nibble is the
 * even column, value = E2M1 * 2^(scale - 127), rounded to bf16) on the host
 * back end's threads, expert by expert; gate_up rows de-interleaved. */
static enum cal_status decode_mxfp4(struct cal_calib *c, struct cal_layer_host *lh, int32_t L,
				    enum cal_role role, uint64_t R, uint64_t C, int gate_up,
				    const uint16_t **ret, struct cal_error *err)
{
	const struct cal_st_tensor *b = cal_catalog_find(c->cat, role, CAL_PART_BLOCKS, L, -1);
	const struct cal_st_tensor *s = cal_catalog_find(c->cat, role, CAL_PART_SCALES, L, -1);
	uint64_t E = (uint64_t)c->E;
	enum cal_status st = CAL_OK;
	if (!b || !s)
		return cal_error_set(err, CAL_ERR_FORMAT, "layer %d: MXFP4 %s blocks or scales are "
				     "missing", L, cal_role_name(role));
	if (b->dtype != CAL_DTYPE_U8 || s->dtype != CAL_DTYPE_U8 || C % 32 ||
	    b->nbytes != E * R * C / 2 || s->nbytes != E * R * C / 32)
		return cal_error_set(err, CAL_ERR_FORMAT, "layer %d: %s / %s: expected U8 [%llu, %llu, "
				     "%llu, 16] and [%llu, %llu, %llu]", L, b->name, s->name,
				     (unsigned long long)E, (unsigned long long)R,
				     (unsigned long long)(C / 32), (unsigned long long)E,
				     (unsigned long long)R, (unsigned long long)(C / 32));
	uint16_t *out = cal_layer_own(lh, E * R * C * 2);
	uint16_t *tmp = gate_up ? malloc(R * C * 2) : NULL;
	if (!out || (gate_up && !tmp)) {
		free(tmp);
		return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory decoding %s", L,
				     b->name);
	}
	for (uint64_t e = 0; e < E && st >= 0; e++) {
		uint16_t *dst = gate_up ? tmp : out + e * R * C;
		struct cal_mxfp4_dequant_args a = {(const uint8_t *)b->data + e * R * C / 2,
						   (const uint8_t *)s->data + e * R * C / 32, R, C,
						   CAL_DTYPE_BF16, dst};
		st = cal_op_mxfp4_dequant(c->host, &a, err);
		if (st >= 0 && gate_up)
			deinterleave(out + e * R * C, tmp, 1, R / 2, C);
	}
	free(tmp);
	if (st < 0)
		return cal_error_wrap(err, st, "layer %d: decoding %s", L, b->name);
	*ret = out;
	return CAL_OK;
}

/* bf16 [E, C, R] (transformers' parameter, input x output) -> [E, R, C]
 * rows (gate_up: gate rows, then up rows), per expert on the host back
 * end's threads, in 64-column blocks. */
struct oai_tr {
	const uint16_t *src;
	uint16_t *dst;
	uint64_t R, C;
	int gate_up;
};

static void oai_tr_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct oai_tr *t = p;
	uint64_t R = t->R, C = t->C, half = R / 2;
	(void)slot;
	for (uint64_t e = begin; e < end; e++) {
		const uint16_t *s = t->src + e * C * R;
		uint16_t *d = t->dst + e * R * C;
		for (uint64_t c0 = 0; c0 < C; c0 += 64) {
			uint64_t c1 = c0 + 64 < C ? c0 + 64 : C;
			for (uint64_t r = 0; r < R; r++) {
				uint64_t row = t->gate_up ? (r % 2 ? half + r / 2 : r / 2) : r;
				for (uint64_t c = c0; c < c1; c++)
					d[row * C + c] = s[c * R + r];
			}
		}
	}
}

static enum cal_status transpose_bf16(struct cal_calib *c, struct cal_layer_host *lh, int32_t L,
				      enum cal_role role, uint64_t R, uint64_t C, int gate_up,
				      const uint16_t **ret, struct cal_error *err)
{
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, role, CAL_PART_WEIGHT, L, -1);
	uint64_t E = (uint64_t)c->E;
	if (!t || t->dtype != CAL_DTYPE_BF16 || t->numel != E * R * C)
		return CAL_OK; /* another dtype: the generic copy (layer.c) converts it */
	uint16_t *out = cal_layer_own(lh, E * R * C * 2);
	if (!out)
		return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory for %s", L, t->name);
	struct oai_tr tr = {t->data, out, R, C, gate_up};
	enum cal_status st = cal_cpu_parallel(c->host, E, 1, oai_tr_range, &tr, err);
	if (st >= 0)
		*ret = out;
	return st;
}

enum cal_status cal_oai_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
			      struct cal_error *err)
{
	struct cal_layer_w *w = &lh->w;
	uint64_t E = (uint64_t)c->E, I = (uint64_t)c->I, H = (uint64_t)c->H;
	uint64_t nh = (uint64_t)c->nh;
	const uint16_t *p = NULL;
	enum cal_status st = CAL_OK;

	if (c->d->has_sinks) {
		float *sk = cal_layer_own(lh, nh * sizeof(float));
		if (!sk)
			return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory", L);
		CAL_TRY(bf16_of(c, lh, CAL_ROLE_SINKS, CAL_PART_PARAM, L, nh, &p, err));
		for (uint64_t h = 0; h < nh; h++)
			sk[h] = cal_bf16_to_f32(p[h]);
		w->sinks = sk;
	}
	if (c->d->arch->router_bias)
		CAL_TRY(bf16_of(c, lh, CAL_ROLE_ROUTER, CAL_PART_BIAS, L, E, &w->router_b, err));
	/* expert biases: gate_up [E, 2I] interleaved -> canonical, down [E, H] */
	CAL_TRY(bf16_of(c, lh, CAL_ROLE_EXPERTS_GATE_UP, CAL_PART_BIAS, L, E * 2 * I, &p, err));
	uint16_t *b13 = cal_layer_own(lh, E * 2 * I * 2);
	if (!b13)
		return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory", L);
	deinterleave(b13, p, E, I, 1);
	w->eb13 = b13;
	CAL_TRY(bf16_of(c, lh, CAL_ROLE_EXPERTS_DOWN, CAL_PART_BIAS, L, E * H, &w->eb2, err));
	if (cal_catalog_layout(c->cat, L) == CAL_LAYOUT_MXFP4) {
		CAL_TRY(decode_mxfp4(c, lh, L, CAL_ROLE_EXPERTS_GATE_UP, 2 * I, H, 1, &w->e13, err));
		CAL_TRY(decode_mxfp4(c, lh, L, CAL_ROLE_EXPERTS_DOWN, H, I, 0, &w->e2, err));
	} else if (cal_catalog_layout(c->cat, L) == CAL_LAYOUT_FUSED_OAI) {
		CAL_TRY(transpose_bf16(c, lh, L, CAL_ROLE_EXPERTS_GATE_UP, 2 * I, H, 1, &w->e13, err));
		CAL_TRY(transpose_bf16(c, lh, L, CAL_ROLE_EXPERTS_DOWN, H, I, 0, &w->e2, err));
	}
fail:
	return st;
}

void cal_oai_norm_weight(const float *w, uint64_t n, float *ret)
{
	for (uint64_t i = 0; i < n; i++)
		ret[i] = cal_bf16_to_f32(cal_f32_to_bf16(w[i]));
}

