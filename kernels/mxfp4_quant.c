/*
 * mxfp4_quant.c — MXFP4 weight quantizer (docs/numerics.md "MX formats"): per
 * 32-block e = ceil(max(log2(amax/6), -127)), scale byte e + 127, values x /
 * 2^e with MXFP4's own E2M1 rounding (ties down, exact zeros carry the sign
 * bit), even element in the low nibble.  Reference and CPU back end; items are
 * 32-blocks (16 packed bytes each).
 */
#include "kernels/internal.h"

static void mxfp4_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_mxfp4_quant_args *a = p;
	(void)slot;
	for (uint64_t b = begin; b < end; b++) {
		float x[32], mul;
		uint8_t e = cal_mx_block_load(a->w, b, 1, a->div, x, &mul);
		for (int j = 0; j < 16; j++) {
			unsigned lo = cal_e2m1_encode_mxfp4(cal_fmul(x[2 * j], mul));
			unsigned hi = cal_e2m1_encode_mxfp4(cal_fmul(x[2 * j + 1], mul));
			a->packed[b * 16 + j] = (uint8_t)(lo | hi << 4);
		}
		a->scales[b] = e;
	}
}

CAL_CHECK_OP(mxfp4_quant)
{
	return cal_check_block_quant(a->rows, a->cols, 32, a->w, a->packed, "packed", a->scales,
				     err);
}

CAL_CPU_OP(mxfp4_quant)
{
	return cal_cpu_parallel(be, a->rows * a->cols / 32, 1u << 13, mxfp4_range, (void *)a, err);
}
