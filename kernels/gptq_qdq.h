/*
 * gptq_qdq.h — the static-NVFP4 fake quantizer GPTQ rounds each column with
 * (docs/gptq.md), shared by the op's C reference (kernels/gptq_update.c)
 * and its CUDA version (kernels/cuda/gptq_update.cu) so both compute the
 * same bytes.
 */
#ifndef CAL_KERNELS_GPTQ_QDQ_H
#define CAL_KERNELS_GPTQ_QDQ_H

#include <math.h>

#include "kernels/numfmt.h"

/* modelopt's FP8 fake quantizer of the block scales: *sc = fl32(448 /
 * fl32(g' / 6)) with g' = fl32(global_amax 448 / norm_max), *sinv = 1 / *sc. */
CAL_HD void cal_gptq_scales(float global_amax, float norm_max, enum cal_div_mode div, float *sc,
			    float *sinv)
{
	float g6 = cal_scale_div(cal_fmul(global_amax, cal_fdiv(448.0f, norm_max)), 6.0f, div);
	*sc = cal_fdiv(448.0f, g6);
	*sinv = cal_fdiv(1.0f, *sc);
}

/* x fake-quantized in its 16-block of amax `amax`: block scale
 * t = e4m3(fl32(amax / 6) sc) sinv (saturating at 448), value the nearest
 * E2M1 magnitude of |x| / t (ties to even) times t; t == 0 gives 0. */
CAL_HD float cal_gptq_qdq(float x, float amax, float sc, float sinv, enum cal_div_mode div)
{
	float v = cal_fmul(cal_scale_div(amax, 6.0f, div), sc);
	v = v > 448.0f ? 448.0f : v;
	float t = cal_fmul(cal_e4m3_decode(cal_e4m3_encode(v)), sinv);
	if (t == 0.0f)
		return 0.0f;
	float m = cal_e2m1_magnitude(cal_e2m1_encode_nvfp4(cal_fdiv(fabsf(x), t)) & 7u);
	float y = cal_fmul(m, t);
	return x >= 0.0f ? y : -y;
}

#endif
