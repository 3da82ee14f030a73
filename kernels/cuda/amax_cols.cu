/*
 * amax_cols.cu — running max|x| per column of bf16 rows (SmoothQuant's
 * per-input-channel activation amax; the C reference is kernels/amax_cols.c).
 * One thread per column, grid-stride over columns (obs_items.cuh); each
 * thread scans the rows, so a warp reads 32 consecutive columns of a row at
 * once.
 */
#include "obs_items.cuh"

CAL_CUDA_OP(amax_cols)
{
	CAL_CUDA_OP_ENTER(a->rows == 0 || a->cols == 0);
	cal_obs_items_dev o = {a->x, a->cols, 1, a->cols, a->rows, a->index_base, a->amax,
			       a->nonfinite};
	cal_obs_items_launch(be, s, true, o);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
