/*
 * amax_hist.c — observer for nvfp4_act_headroom: a log2 histogram of the
 * per-block max|x| (docs/numerics.md "Activation headroom").  Reference and
 * CPU back end; items are blocks, each thread counts into its own histogram
 * and the partial counts are added (integer sums: any split is exact).
 */
#include <stdlib.h>

#include "kernels/hist_edges.h"
#include "kernels/internal.h"

const float *cal_hist_edges(void)
{
	return cal_hist_edges_here();
}

struct hist_ctx {
	const struct cal_amax_hist_args *a;
	const float *edges;
	uint64_t bpr;      /* blocks per row */
	uint64_t *part;    /* [slots][CAL_HIST_BINS] */
};

static void hist_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct hist_ctx *c = p;
	const struct cal_amax_hist_args *a = c->a;
	uint64_t *h = c->part + (uint64_t)slot * CAL_HIST_BINS;

	for (uint64_t b = begin; b < end; b++) {
		uint64_t r = b / c->bpr, c0 = (b % c->bpr) * a->block;
		uint64_t c1 = c0 + a->block < a->cols ? c0 + a->block : a->cols;
		uint32_t m = 0;
		for (uint64_t i = r * a->cols + c0; i < r * a->cols + c1; i++) {
			uint32_t v = cal_abs_bits(a->dtype, a->x, i);
			if (v < 0x7f800000u && v > m)
				m = v;
		}
		if (!m)
			continue;
		float f = cal_nf_float(m);
		unsigned lo = 0, hi = CAL_HIST_BINS - 1; /* edges <= f */
		while (lo < hi) {
			unsigned mid = (lo + hi) / 2;
			if (c->edges[mid] <= f)
				lo = mid + 1;
			else
				hi = mid;
		}
		h[lo]++;
	}
}

CAL_CHECK_OP(amax_hist)
{
	enum cal_status st;
	if ((st = cal_check_obs_dtype(a->dtype, err)) < 0)
		return st;
	if (a->block != 16 && a->block != 32)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'block' = %u is not 16 or 32",
				     a->block);
	if ((st = cal_check_shape(a->rows, a->cols, 1, err)) < 0 ||
	    (st = cal_check_ptr(a->hist, "hist", err)) < 0)
		return st;
	if (a->rows && a->cols && (st = cal_check_ptr(a->x, "x", err)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(amax_hist)
{
	struct hist_ctx c = {a, cal_hist_edges(), (a->cols + a->block - 1) / a->block, NULL};
	uint64_t nb = a->rows * c.bpr, min = (1u << 18) / a->block;
	unsigned k = cal_cpu_slots(be, nb, min);
	enum cal_status st;

	if (!nb)
		return CAL_OK;
	if (!(c.part = calloc((size_t)k * CAL_HIST_BINS, sizeof(uint64_t))))
		return cal_error_set(err, CAL_ERR_NOMEM, "amax_hist: out of memory");
	st = cal_cpu_parallel(be, nb, min, hist_range, &c, err);
	for (unsigned i = 0; st >= 0 && i < k; i++)
		for (unsigned j = 0; j < CAL_HIST_BINS; j++)
			a->hist[j] += c.part[(uint64_t)i * CAL_HIST_BINS + j];
	free(c.part);
	return st;
}
