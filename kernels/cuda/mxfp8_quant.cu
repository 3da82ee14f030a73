/*
 * mxfp8_quant.cu — MXFP8 weight quantizer (docs/numerics.md "MX formats");
 * kernel in mx_common.cuh, numerics in kernels/numfmt.h.
 */
#include "mx_common.cuh"

CAL_CUDA_OP(mxfp8_quant)
{
	return mx_launch<false>(be, a->w, a->rows * a->cols, a->div, a->q, a->scales, err);
}
