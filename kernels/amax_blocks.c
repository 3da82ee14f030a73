/*
 * amax_blocks.c — observer: running max|x| per block of 16/32/64/128
 * consecutive elements along the last dim (static NVFP4 per-block amax,
 * INT4 block amax), with a non-finite report.  Reference and CPU back end;
 * items are blocks (a block never crosses a row since cols % block == 0).
 */
#include "kernels/internal.h"

CAL_CHECK_OP(amax_blocks)
{
	enum cal_status st;
	if ((st = cal_check_obs_dtype(a->dtype, err)) < 0)
		return st;
	if (a->block != 16 && a->block != 32 && a->block != 64 && a->block != 128)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'block' = %u is not 16, 32, 64 or 128", a->block);
	return cal_check_obs_items(a->rows, a->cols, a->block, a->x, a->amax, a->nonfinite, err);
}

CAL_CPU_OP(amax_blocks)
{
	struct cal_obs_items o = {a->dtype, a->x, a->index_base, a->amax, a->block, 1, a->block};
	uint64_t nb = a->rows * a->cols / a->block, min = (1u << 18) / a->block;
	return cal_cpu_observe_items(be, &o, nb, min, a->nonfinite, err);
}
