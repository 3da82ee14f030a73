/*
 * mxfp4_dequant.c — MXFP4 dequantize: out = fl32(e2m1 * 2^(e8m0 - 127)),
 * low nibble = even element.  Reference and CPU back end; items are 32-blocks.
 */
#include "kernels/internal.h"

static void mxfp4_dq_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_mxfp4_dequant_args *a = p;
	(void)slot;
	for (uint64_t b = begin; b < end; b++) {
		float s = cal_e8m0_decode(a->scales[b]);
		for (int k = 0; k < 32; k++) {
			unsigned code = (a->packed[b * 16 + k / 2] >> (4 * (k & 1))) & 0xfu;
			cal_store_out(a->out_dtype, a->out, b * 32 + k,
				      cal_fmul(cal_e2m1_decode(code), s));
		}
	}
}

CAL_CHECK_OP(mxfp4_dequant)
{
	return cal_check_block_dequant(a->rows, a->cols, 32, a->out_dtype, a->packed, "packed",
				       a->scales, a->out, err);
}

CAL_CPU_OP(mxfp4_dequant)
{
	return cal_cpu_parallel(be, a->rows * a->cols / 32, 1u << 13, mxfp4_dq_range, (void *)a, err);
}
