/*
 * mxfp4_quant.cu — MXFP4 weight quantizer (docs/numerics.md "MX formats");
 * kernel in mx_common.cuh, numerics in kernels/numfmt.h.
 */
#include "mx_common.cuh"

extern "C" enum cal_status cal_cuda_mxfp4_quant(struct cal_backend *be,
						const struct cal_mxfp4_quant_args *a,
						struct cal_error *err)
{
	return mx_launch<true>(be, a->w, a->rows * a->cols, a->div, a->packed, a->scales, err);
}
