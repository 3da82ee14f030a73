/*
 * err_rows.c — per-row error sums of the evaluation (ops.h): sum (b - a)^2
 * and sum (a - in)^2 in f64, in the fixed 32-lane order the CUDA kernel
 * uses (as sqnr_rows).  Reference and CPU back end; items are rows.
 */
#include "kernels/internal.h"

/* d = b - a and r = a - in (a without in), widened to f64. */
static void err_terms(const void *p, uint64_t i, double *u, double *v)
{
	const struct cal_err_rows_args *a = p;
	double av = (double)cal_nf_bf16_to_f32(a->a[i]);
	*u = (double)cal_nf_bf16_to_f32(a->b[i]) - av;
	*v = a->in ? av - (double)cal_nf_bf16_to_f32(a->in[i]) : av;
}

CAL_CHECK_OP(err_rows)
{
	return cal_check_row_sums(a->rows, a->cols, a->a, "a", a->b, "b", a->sums, err);
}

CAL_CPU_OP(err_rows)
{
	return cal_cpu_row_sums(be, a, a->rows, a->cols, err_terms, a->sums, err);
}
