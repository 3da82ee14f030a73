/*
 * nvfp4_mse_sweep.c — per-block amax of static NVFP4 by the MSE FP8-scale
 * sweep (docs/numerics.md "NVFP4 static and MSE"; the per-block search is
 * cal_nvfp4_mse_block in numfmt.h, shared with CUDA).  Reference and CPU back
 * end (cal_cpu_nvfp4_static, nvfp4_static_quant.c).
 */
#include "kernels/internal.h"

CAL_CHECK_OP(nvfp4_mse_sweep)
{
	return cal_check_nvfp4_static(a->rows, a->cols, a->global_amax, a->norm_max, a->w,
				      a->block_amax, err);
}

CAL_CPU_OP(nvfp4_mse_sweep)
{
	struct cal_nvfp4_static_run run = {a->w, a->global_amax, a->norm_max, a->div,
					   .sweep_amax = a->block_amax};
	return cal_cpu_nvfp4_static(be, a->rows, a->cols, &run, err);
}
