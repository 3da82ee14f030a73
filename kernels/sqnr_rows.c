/*
 * sqnr_rows.c — per-row sums of a weight's SQNR (ops.h): sum x^2 and
 * sum (x - y)^2 in f64, in the fixed 32-lane order the CUDA kernel uses.
 * Reference and CPU back end; items are rows.
 */
#include "kernels/internal.h"
#include "kernels/lanes32.h"


/* Products and sums are separate statements: C11 (ISO mode) does not fuse
 * them into multiply-adds across statements (the CUDA kernel uses
 * __dmul_rn / __dadd_rn for the same reason). */
static void row_sums(const uint16_t *x, const float *y, uint64_t cols, double *out)
{
	double s[32], e[32];
	for (unsigned l = 0; l < 32; l++) {
		double a = 0.0, b = 0.0;
		for (uint64_t c = l; c < cols; c += 32) {
			double xv = (double)cal_nf_bf16_to_f32(x[c]);
			double d = xv - (double)y[c];
			double p = xv * xv;
			double q = d * d;
			a = a + p;
			b = b + q;
		}
		s[l] = a;
		e[l] = b;
	}
	cal_lanes32_fold(s, e, out);
}

static void sqnr_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_sqnr_rows_args *a = p;
	(void)slot;
	for (uint64_t r = begin; r < end; r++)
		row_sums(a->x + r * a->cols, a->y + r * a->cols, a->cols, a->sums + 2 * r);
}

CAL_CHECK_OP(sqnr_rows)
{
	return cal_check_row_sums(a->rows, a->cols, a->x, "x", a->y, "y", a->sums, err);
}

CAL_CPU_OP(sqnr_rows)
{
	uint64_t min_rows = a->cols ? (1u << 16) / a->cols + 1 : 1;
	return cal_cpu_parallel(be, a->rows, min_rows, sqnr_range, (void *)a, err);
}
