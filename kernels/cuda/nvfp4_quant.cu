/*
 * nvfp4_quant.cu — NVFP4 dynamic weight quantizer (docs/numerics.md "NVFP4
 * weights"); kernel in nvfp4_common.cuh, numerics in kernels/numfmt.h.
 */
#include "nvfp4_common.cuh"

extern "C" enum cal_status cal_cuda_nvfp4_quant(struct cal_backend *be,
						const struct cal_nvfp4_quant_args *a,
						struct cal_error *err)
{
	return nvfp4_launch<false>(be, a->w, a->rows * a->cols, a->scale2, NULL, 0.0f, 0.0f,
				   CAL_DIV_RECIP, a->packed, a->scales, err, a->block ? a->block : 16);
}
