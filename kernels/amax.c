/*
 * amax.c — observer: running per-tensor max|x| over a stream of batches
 * (bf16 or f32), with a non-finite report.  Reference and CPU back end.
 */
#include "kernels/internal.h"

static void amax_range(const void *p, uint64_t begin, uint64_t end, uint32_t *m,
		       struct cal_nf_part *nf)
{
	const struct cal_amax_args *a = p;
	for (uint64_t i = begin; i < end; i++)
		cal_obs_elem(cal_abs_bits(a->dtype, a->x, i), a->index_base + i, m, nf);
}

CAL_CHECK_OP(amax)
{
	enum cal_status st;
	if ((st = cal_check_obs(a->dtype, 1, a->n, a->amax, a->nonfinite, err)) < 0)
		return st;
	if (a->n && (st = cal_check_ptr(a->x, "x", err)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(amax)
{
	return cal_cpu_observe(be, a->n, 1u << 18, amax_range, a, a->amax, a->nonfinite, err);
}
