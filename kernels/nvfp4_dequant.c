/*
 * nvfp4_dequant.c — NVFP4 dequantize (fake-quant):
 * out = fl32(fl32(e2m1 * e4m3(scale)) * scale2).  Reference and CPU back end;
 * items are blocks of 16 (or 32).
 */
#include "kernels/internal.h"

static void nvfp4_dq_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_nvfp4_dequant_args *a = p;
	(void)slot;
	uint64_t bs = a->block ? a->block : 16;
	for (uint64_t b = begin; b < end; b++) {
		float s = cal_e4m3_decode(a->scales[b]);
		for (uint64_t k = 0; k < bs; k++) {
			uint64_t i = b * bs + k;
			unsigned code = (a->packed[i / 2] >> (4 * (i & 1))) & 0xfu;
			float v = cal_fmul(cal_fmul(cal_e2m1_decode(code), s), a->scale2);
			cal_store_out(a->out_dtype, a->out, i, v);
		}
	}
}

CAL_CHECK_OP(nvfp4_dequant)
{
	if (a->block && a->block != 16 && a->block != 32)
		return cal_error_set(err, CAL_ERR_INVALID, "block: %u (NVFP4 blocks are 16 or 32)",
				     a->block);
	return cal_check_block_dequant(a->rows, a->cols, a->block ? a->block : 16, a->out_dtype,
				       a->packed, "packed", a->scales, a->out, err);
}

CAL_CPU_OP(nvfp4_dequant)
{
	return cal_cpu_parallel(be, a->rows * a->cols / (a->block ? a->block : 16), 1u << 14,
				nvfp4_dq_range, (void *)a, err);
}
