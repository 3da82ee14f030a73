/*
 * mxfp8_quant.c — MXFP8 weight quantizer (docs/numerics.md "MX formats"): per
 * 32-block e = clamp(ceil(log2(amax/448)), -127, 127) (log2 exact from the
 * bits), scale byte e + 127, values e4m3(clamp(x * 2^-e, -448, 448)).
 * Reference and CPU back end; items are 32-blocks.
 */
#include "kernels/internal.h"

static void mxfp8_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_mxfp8_quant_args *a = p;
	(void)slot;
	for (uint64_t b = begin; b < end; b++) {
		float x[32], mul;
		uint8_t e = cal_mx_block_load(a->w, b, 0, a->div, x, &mul);
		for (int k = 0; k < 32; k++)
			a->q[b * 32 + k] = cal_e4m3_encode(cal_clamp_nan(cal_fmul(x[k], mul),
									 -448.0f, 448.0f));
		a->scales[b] = e;
	}
}

CAL_CHECK_OP(mxfp8_quant)
{
	return cal_check_block_quant(a->rows, a->cols, 32, a->w, a->q, "q", a->scales, err);
}

CAL_CPU_OP(mxfp8_quant)
{
	return cal_cpu_parallel(be, a->rows * a->cols / 32, 1u << 13, mxfp8_range, (void *)a, err);
}
