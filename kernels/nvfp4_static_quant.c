/*
 * nvfp4_static_quant.c — static NVFP4 weight quantizer (docs/numerics.md
 * "NVFP4 static and MSE"): block scale E = e4m3(clamp(fl32(t2/t3))) from the
 * calibrated block amax (t1 = amax_b/6, 0 -> 1; t2 = t1*m; t3 = g/6), values
 * as dynamic NVFP4 with S2 = g/(6m).  Reference and CPU back end; items are
 * 16-blocks.
 */
#include "kernels/internal.h"

static void st_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_nvfp4_static_quant_args *a = p;
	float s2 = cal_nvfp4_static_scale2(a->global_amax, a->norm_max, a->div);
	(void)slot;

	for (uint64_t b = begin; b < end; b++) {
		float x[16];
		cal_load_bf16(x, a->w + b * 16, 16);
		uint8_t e = cal_nvfp4_static_block_scale(a->block_amax[b], a->global_amax,
							 a->norm_max, a->div);
		float t = cal_fmul(cal_e4m3_decode(e), s2);
		uint64_t packed = cal_nvfp4_pack16(x, t);
		for (int j = 0; j < 8; j++)
			a->packed[b * 8 + j] = (uint8_t)(packed >> (8 * j));
		a->scales[b] = e;
	}
}

CAL_CHECK_OP(nvfp4_static_quant)
{
	enum cal_status st;
	if ((st = cal_check_nvfp4_static(a->rows, a->cols, a->global_amax, a->norm_max, a->w,
					 a->block_amax, err)) < 0)
		return st;
	if (a->rows && a->cols && (st = CAL_CHECK_PTRS(a, err, packed, scales)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(nvfp4_static_quant)
{
	return cal_cpu_parallel(be, a->rows * a->cols / 16, 1u << 14, st_range, (void *)a, err);
}
