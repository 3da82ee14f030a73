/*
 * amax_cols.c — observer: running max|x| per column of bf16 rows
 * (SmoothQuant's per-input-channel activation amax, docs/smoothquant.md),
 * with a non-finite report.  Reference and CPU back end; items are columns
 * (each slot scans every row over its range of columns).
 */
#include "kernels/internal.h"

CAL_CHECK_OP(amax_cols)
{
	return cal_check_obs_items(a->rows, a->cols, 1, a->x, a->amax, a->nonfinite, err);
}

CAL_CPU_OP(amax_cols)
{
	struct cal_obs_items o = {CAL_DTYPE_BF16, a->x, a->index_base, a->amax, 1, a->cols, a->rows};
	if (!a->rows)
		return CAL_OK;
	return cal_cpu_observe_items(be, &o, a->cols, 1 + (1u << 16) / a->rows, a->nonfinite, err);
}
