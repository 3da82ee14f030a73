/*
 * nvfp4_mse_sweep.c — per-block amax of static NVFP4 by the MSE FP8-scale
 * sweep (docs/numerics.md "NVFP4 static and MSE"; the per-block search is
 * cal_nvfp4_mse_block in numfmt.h, shared with CUDA).  Reference and CPU back
 * end; items are blocks.
 */
#include "kernels/internal.h"

static void mse_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_nvfp4_mse_sweep_args *a = p;
	float s2 = cal_nvfp4_static_scale2(a->global_amax, a->norm_max, a->div);
	(void)slot;

	for (uint64_t b = begin; b < end; b++) {
		float x[16];
		cal_load_bf16(x, a->w + b * 16, 16);
		a->block_amax[b] = cal_nvfp4_mse_block(x, a->global_amax, a->norm_max, s2, a->div);
	}
}

CAL_CHECK_OP(nvfp4_mse_sweep)
{
	return cal_check_nvfp4_static(a->rows, a->cols, a->global_amax, a->norm_max, a->w,
				      a->block_amax, err);
}

CAL_CPU_OP(nvfp4_mse_sweep)
{
	return cal_cpu_parallel(be, a->rows * a->cols / 16, 256, mse_range, (void *)a, err);
}
