/*
 * smoothquant.c — SmoothQuant for one linear (engine/smoothquant.h,
 * docs/smoothquant.md).  The arithmetic follows modelopt's dtypes step by
 * step: the weight's column max is a bf16 value and its power is rounded
 * to bf16, the activation power and the quotient are fp32, the scale
 * reciprocal and the folded product are fp32 rounded once to bf16.
 */
#include <math.h>
#include <stdlib.h>

#include "engine/smoothquant.h"
#include "engine/calib/torch_pow.h"
#include "kernels/numfmt.h"

enum cal_status cal_smoothquant(const uint16_t *w, uint64_t rows, uint64_t cols,
				const float *act_amax, float alpha, struct cal_sq_out *out,
				struct cal_error *err)
{
	if (!w || !act_amax || !out || !out->pre_quant_scale || !out->w || !out->w_amax)
		return cal_error_set(err, CAL_ERR_INVALID, "smoothquant: a NULL argument");
	if (!rows || cols < 2)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "smoothquant: weight [%llu, %llu] has no channels to smooth",
				     (unsigned long long)rows, (unsigned long long)cols);
	if (!(alpha >= 0.0f && alpha <= 1.0f))
		return cal_error_set(err, CAL_ERR_INVALID, "smoothquant: alpha = %g is not in [0, 1]",
				     (double)alpha);
	for (uint64_t c = 0; c < cols; c++)
		if (!(act_amax[c] >= 0.0f) || !isfinite(act_amax[c]))
			return cal_error_set(err, CAL_ERR_NUMERIC,
					     "smoothquant: activation amax of channel %llu is %g",
					     (unsigned long long)c, (double)act_amax[c]);
	float *s = malloc(cols * sizeof(float));
	if (!s)
		return cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: %llu scales",
				     (unsigned long long)cols);
	/* s = bf16(max|W[:, c]|^(1-alpha)) / act^alpha */
	float smin = INFINITY;
	for (uint64_t c = 0; c < cols; c++) {
		float ws = 0.0f;
		for (uint64_t r = 0; r < rows; r++) {
			float v = fabsf(cal_nf_bf16_to_f32(w[r * cols + c]));
			ws = v > ws ? v : ws;
		}
		float p = cal_nf_bf16_to_f32(cal_nf_f32_to_bf16(cal_torch_pow(ws, 1.0f - alpha)));
		s[c] = p / cal_torch_pow(act_amax[c], alpha);
		smin = s[c] < smin ? s[c] : smin;
	}
	/* channels that never saw a non-zero input get 1 (only when some scale
	 * is that small, as modelopt checks), then the clamp */
	const float eps = 1.0f / 2147483648.0f;
	for (uint64_t c = 0; c < cols; c++) {
		if (smin <= eps && act_amax[c] <= eps)
			s[c] = 1.0f;
		s[c] = s[c] < 1e-4f ? 1e-4f : s[c] > 1e4f ? 1e4f : s[c];
		out->pre_quant_scale[c] = cal_nf_f32_to_bf16(s[c]);
	}
	/* fold 1/s into the weight; per-row amax after */
	for (uint64_t r = 0; r < rows; r++) {
		float m = 0.0f;
		for (uint64_t c = 0; c < cols; c++) {
			float inv = 1.0f / s[c];
			uint16_t v = cal_nf_f32_to_bf16(cal_fmul(cal_nf_bf16_to_f32(w[r * cols + c]), inv));
			out->w[r * cols + c] = v;
			float a = fabsf(cal_nf_bf16_to_f32(v));
			m = a > m ? a : m;
		}
		out->w_amax[r] = m;
	}
	/* input amax: max over channels of bf16(act) * s, rounded to bf16 */
	float im = 0.0f;
	for (uint64_t c = 0; c < cols; c++) {
		float v = cal_fmul(cal_nf_bf16_to_f32(cal_nf_f32_to_bf16(act_amax[c])), s[c]);
		im = v > im ? v : im;
	}
	out->in_amax = cal_nf_bf16_to_f32(cal_nf_f32_to_bf16(im));
	free(s);
	return CAL_OK;
}
