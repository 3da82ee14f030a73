/*
 * mxfp8_dequant.c — MXFP8 dequantize: out = fl32(e4m3 * 2^(e8m0 - 127)).
 * Reference and CPU back end; items are 32-blocks.
 */
#include "kernels/internal.h"

static void mxfp8_dq_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_mxfp8_dequant_args *a = p;
	(void)slot;
	for (uint64_t b = begin; b < end; b++) {
		float s = cal_e8m0_decode(a->scales[b]);
		for (uint64_t i = b * 32; i < (b + 1) * 32; i++)
			cal_store_out(a->out_dtype, a->out, i, cal_fmul(cal_e4m3_decode(a->q[i]), s));
	}
}

CAL_CHECK_OP(mxfp8_dequant)
{
	return cal_check_block_dequant(a->rows, a->cols, 32, a->out_dtype, a->q, "q", a->scales,
				       a->out, err);
}

CAL_CPU_OP(mxfp8_dequant)
{
	return cal_cpu_parallel(be, a->rows * a->cols / 32, 1u << 13, mxfp8_dq_range, (void *)a, err);
}
