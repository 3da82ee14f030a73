/*
 * err_rows.c — per-row error sums of the evaluation (ops.h): sum (b - a)^2
 * and sum (a - in)^2 in f64, in the fixed 32-lane order the CUDA kernel
 * uses (as sqnr_rows).  Reference and CPU back end; items are rows.
 */
#include "kernels/internal.h"
#include "kernels/lanes32.h"

/* Products and sums are separate statements (no fused multiply-add, as
 * the CUDA kernel's __dmul_rn / __dadd_rn). */
static void row_sums(const uint16_t *in, const uint16_t *a, const uint16_t *b, uint64_t cols,
		     double *out)
{
	double s[32], e[32];
	for (unsigned l = 0; l < 32; l++) {
		double x = 0.0, y = 0.0;
		for (uint64_t c = l; c < cols; c += 32) {
			double av = (double)cal_nf_bf16_to_f32(a[c]);
			double d = (double)cal_nf_bf16_to_f32(b[c]) - av;
			double r = in ? av - (double)cal_nf_bf16_to_f32(in[c]) : av;
			double p = d * d;
			double q = r * r;
			x = x + p;
			y = y + q;
		}
		s[l] = x;
		e[l] = y;
	}
	cal_lanes32_fold(s, e, out);
}

static void err_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_err_rows_args *a = p;
	uint64_t n = a->cols;
	(void)slot;
	for (uint64_t r = begin; r < end; r++)
		row_sums(a->in ? a->in + r * n : NULL, a->a + r * n, a->b + r * n, n,
			 a->sums + 2 * r);
}

CAL_CHECK_OP(err_rows)
{
	return cal_check_row_sums(a->rows, a->cols, a->a, "a", a->b, "b", a->sums, err);
}

CAL_CPU_OP(err_rows)
{
	uint64_t min_rows = a->cols ? (1u << 16) / a->cols + 1 : 1;
	return cal_cpu_parallel(be, a->rows, min_rows, err_range, (void *)a, err);
}
