/*
 * amax.c — observer: running per-tensor max|x| over a stream of batches
 * (bf16 or f32), with a non-finite report.  Reference and CPU back end.
 */
#include "kernels/internal.h"

struct amax_ctx {
	const struct cal_amax_args *a;
	struct cal_obs_slots s;
};

static void amax_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct amax_ctx *c = p;
	const struct cal_amax_args *a = c->a;
	uint32_t m = 0;
	struct cal_nf_part nf = {0, CAL_NONFINITE_NONE};

	for (uint64_t i = begin; i < end; i++)
		cal_obs_elem(cal_abs_bits(a->dtype, a->x, i), a->index_base + i, &m, &nf);
	c->s.max_bits[slot] = m;
	c->s.nf[slot] = nf;
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
	struct amax_ctx c;
	unsigned k = cal_cpu_slots(be, a->n, 1u << 18);
	enum cal_status st;

	c.a = a;
	cal_obs_slots_clear(&c.s, k);
	st = cal_cpu_parallel(be, a->n, 1u << 18, amax_range, &c, err);
	if (st < 0)
		return st;
	cal_obs_slots_fold(&c.s, k, a->amax, a->nonfinite);
	return CAL_OK;
}
