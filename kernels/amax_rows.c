/*
 * amax_rows.c — observer: running max|x| over a gathered subset of rows
 * (the tokens routed to an expert), with a non-finite report.
 * Reference and CPU back end; items are index entries.
 */
#include "kernels/internal.h"

static void rows_range(const void *p, uint64_t begin, uint64_t end, uint32_t *m,
		       struct cal_nf_part *nf)
{
	const struct cal_amax_rows_args *a = p;
	for (uint64_t k = begin; k < end; k++) {
		uint64_t r = a->index[k];
		if (r >= a->rows)
			continue;
		for (uint64_t j = 0; j < a->cols; j++) {
			uint64_t i = r * a->cols + j;
			cal_obs_elem(cal_abs_bits(a->dtype, a->x, i), a->index_base + i, m, nf);
		}
	}
}

CAL_CHECK_OP(amax_rows)
{
	enum cal_status st;
	if ((st = cal_check_obs(a->dtype, a->rows, a->cols, a->amax, a->nonfinite, err)) < 0)
		return st;
	if (a->n_index && (st = CAL_CHECK_PTRS(a, err, index, x)) < 0)
		return st;
	if (a->n_index > CAL_MAX_ELEMS)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'n_index' is too large");
	return CAL_OK;
}

CAL_CPU_OP(amax_rows)
{
	uint64_t min = a->cols ? (1u << 18) / a->cols + 1 : 1u << 18;
	return cal_cpu_observe(be, a->n_index, min, rows_range, a, a->amax, a->nonfinite, err);
}
