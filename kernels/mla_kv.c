/*
 * mla_kv.c — DeepSeek MLA keys and values per head (docs/deepseek.md):
 * K_n = [k_nope_n | k_pe] (the one roped rope key shared by every head),
 * V_n = the v rows of kv_b_proj's output.  Pure copies, so every back end
 * is exact.  Reference and CPU back end; items are tokens.
 */
#include <string.h>

#include "kernels/internal.h"

static void mla_kv_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_mla_kv_args *a = p;
	uint64_t kvw = (uint64_t)a->dn + a->dv, kw = (uint64_t)a->dn + a->dr;
	(void)slot;
	for (uint64_t t = begin; t < end; t++)
		for (uint32_t n = 0; n < a->nh; n++) {
			const uint16_t *src = a->kv + (t * a->nh + n) * kvw;
			uint16_t *k = a->k + (t * a->nh + n) * kw;
			memcpy(k, src, (size_t)a->dn * 2);
			memcpy(k + a->dn, a->kpe + t * a->dr, (size_t)a->dr * 2);
			memcpy(a->v + (t * a->nh + n) * a->dv, src + a->dn, (size_t)a->dv * 2);
		}
}

CAL_CHECK_OP(mla_kv)
{
	enum cal_status st;
	if (a->nh == 0 || a->dn == 0 || a->dr == 0 || a->dv == 0)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments nh = %u, dn = %u, dr = %u, dv = %u: all must be > 0",
				     a->nh, a->dn, a->dr, a->dv);
	if ((st = cal_check_shape(a->t, (uint64_t)a->nh * ((uint64_t)a->dn + a->dv), 1, err)) < 0 ||
	    (st = cal_check_shape(a->t, (uint64_t)a->nh * ((uint64_t)a->dn + a->dr), 1, err)) < 0)
		return st;
	if (a->t == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, kv, kpe, k, v);
}

CAL_CPU_OP(mla_kv)
{
	if (a->t == 0)
		return CAL_OK;
	return cal_cpu_parallel(be, a->t, (1u << 14) / ((uint64_t)a->nh * (a->dn + a->dv)) + 1,
				mla_kv_range, (void *)a, err);
}
