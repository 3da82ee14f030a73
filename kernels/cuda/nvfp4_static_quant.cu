/*
 * nvfp4_static_quant.cu — static NVFP4 weight quantizer (docs/numerics.md
 * "NVFP4 static and MSE"); kernel in nvfp4_common.cuh, numerics in
 * kernels/numfmt.h.
 */
#include "nvfp4_common.cuh"

CAL_CUDA_OP(nvfp4_static_quant)
{
	float s2 = cal_nvfp4_static_scale2(a->global_amax, a->norm_max, a->div);
	return nvfp4_launch<true>(be, a->w, a->rows * a->cols, s2, a->block_amax, a->global_amax,
				  a->norm_max, a->div, a->packed, a->scales, err);
}
