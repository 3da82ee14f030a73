/*
 * mxfp8_quant.cu — MXFP8 weight quantizer (docs/numerics.md "MX formats");
 * kernel in mx_common.cuh, numerics in kernels/numfmt.h.
 */
#include "mx_common.cuh"

extern "C" enum cal_status cal_cuda_mxfp8_quant(struct cal_backend *be,
						const struct cal_mxfp8_quant_args *a,
						struct cal_error *err)
{
	return mx_launch<false>(be, a->w, a->rows * a->cols, a->div, a->q, a->scales, err);
}
