/*
 * sqnr_rows.c — per-row sums of a weight's SQNR (ops.h): sum x^2 and
 * sum (x - y)^2 in f64, in the fixed 32-lane order the CUDA kernel uses.
 * Reference and CPU back end; items are rows.
 */
#include "kernels/internal.h"

/* x and x - y, widened to f64. */
static void sqnr_terms(const void *p, uint64_t i, double *u, double *v)
{
	const struct cal_sqnr_rows_args *a = p;
	double xv = (double)cal_nf_bf16_to_f32(a->x[i]);
	*u = xv;
	*v = xv - (double)a->y[i];
}

CAL_CHECK_OP(sqnr_rows)
{
	return cal_check_row_sums(a->rows, a->cols, a->x, "x", a->y, "y", a->sums, err);
}

CAL_CPU_OP(sqnr_rows)
{
	return cal_cpu_row_sums(be, a, a->rows, a->cols, sqnr_terms, a->sums, err);
}
