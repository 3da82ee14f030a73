/*
 * nvfp4_quant.cu — NVFP4 dynamic weight quantizer (MODELOPT.md §1.4.2);
 * kernel in nvfp4_common.cuh, numerics in kernels/numfmt.h.
 */
#include "nvfp4_common.cuh"

CAL_CUDA_OP(nvfp4_quant)
{
	return nvfp4_launch<false>(be, a->w, a->rows * a->cols, a->scale2, NULL, 0.0f, 0.0f,
				   CAL_DIV_RECIP, a->packed, a->scales, err);
}
