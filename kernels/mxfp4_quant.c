/*
 * mxfp4_quant.c — MXFP4 weight quantizer (docs/numerics.md "MX formats"): per
 * 32-block e = ceil(max(log2(amax/6), -127)), scale byte e + 127, values x /
 * 2^e with MXFP4's own E2M1 rounding (ties down, exact zeros carry the sign
 * bit), even element in the low nibble.  Reference and CPU back end
 * (cal_cpu_mx_quant, mxfp8_quant.c).
 */
#include "kernels/internal.h"

CAL_CHECK_OP(mxfp4_quant)
{
	return cal_check_block_quant(a->rows, a->cols, 32, a->w, a->packed, "packed", a->scales,
				     err);
}

CAL_CPU_OP(mxfp4_quant)
{
	return cal_cpu_mx_quant(be, a->rows, a->cols, a->w, 1, a->div, a->packed, a->scales, err);
}
