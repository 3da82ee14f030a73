/*
 * nvfp4_quant.cu — NVFP4 dynamic weight quantizer (docs/numerics.md "NVFP4
 * weights"); kernel in nvfp4_common.cuh, numerics in kernels/numfmt.h.
 */
#include "nvfp4_common.cuh"

CAL_CUDA_OP(nvfp4_quant)
{
	return nvfp4_launch<false>(be, a->w, a->rows * a->cols, a->scale2, NULL, 0.0f, 0.0f,
				   CAL_DIV_RECIP, a->packed, a->scales, err, a->block ? a->block : 16);
}
