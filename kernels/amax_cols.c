/*
 * amax_cols.c — observer: running max|x| per column of bf16 rows
 * (SmoothQuant's per-input-channel activation amax, docs/smoothquant.md),
 * with a non-finite report.  Reference and CPU back end; items are columns
 * (each slot scans every row over its range of columns).
 */
#include "kernels/internal.h"

static void cols_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct cal_obs_items *c = p;
	const struct cal_amax_cols_args *a = c->a;
	struct cal_nf_part nf = {0, CAL_NONFINITE_NONE};
	for (uint64_t col = begin; col < end; col++) {
		uint32_t m = 0;
		for (uint64_t r = 0; r < a->rows; r++) {
			uint64_t i = r * a->cols + col;
			cal_obs_elem(cal_abs_bits(CAL_DTYPE_BF16, a->x, i), a->index_base + i, &m,
				     &nf);
		}
		cal_amax_fold(&a->amax[col], m);
	}
	c->nf[slot] = nf;
}

CAL_CHECK_OP(amax_cols)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->rows, a->cols, 1, err)) < 0 ||
	    (st = cal_check_ptr(a->nonfinite, "nonfinite", err)) < 0)
		return st;
	if (a->rows && a->cols && (st = CAL_CHECK_PTRS(a, err, x, amax)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(amax_cols)
{
	struct cal_obs_items c = {.a = a};
	if (!a->rows)
		return CAL_OK;
	return cal_cpu_observe_items(be, a->cols, 1 + (1u << 16) / a->rows, cols_range, &c,
				     a->nonfinite, err);
}
