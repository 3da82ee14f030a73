/*
 * mxfp4_quant.cu — MXFP4 weight quantizer (docs/numerics.md "MX formats");
 * kernel in mx_common.cuh, numerics in kernels/numfmt.h.
 */
#include "mx_common.cuh"

CAL_CUDA_OP(mxfp4_quant)
{
	return mx_launch<true>(be, a->w, a->rows * a->cols, a->div, a->packed, a->scales, err);
}
