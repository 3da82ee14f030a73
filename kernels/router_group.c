/*
 * router_group.c — the DeepSeek-V3 router (ops.h: struct
 * cal_router_group_args; docs/deepseek.md): fp32 logits (input and
 * weight upcast, dot in k order), sigmoid, then the group-limited selection
 * of kernels/router_group.h.  Reference and CPU back end; items are tokens.
 */
#include <math.h>

#include "kernels/internal.h"
#include "kernels/router_group.h"

static void router_group_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_router_group_args *a = p;
	(void)slot;
	for (uint64_t t = begin; t < end; t++) {
		const uint16_t *x = a->x + t * a->h;
		float *s = a->logits + t * a->e;
		for (uint32_t i = 0; i < a->e; i++) {
			const float *w = a->w + (uint64_t)i * a->h;
			float d = 0.0f;
			for (uint64_t j = 0; j < a->h; j++)
				d += cal_nf_float((uint32_t)x[j] << 16) * w[j];
			s[i] = cal_rg_sigmoid(d);
		}
		cal_rg_select(s, a->bias, a->e, a->k, a->k_total, a->n_group, a->topk_group, a->renorm,
			      a->scaling, a->idx + t * a->k_total, a->weight + t * a->k);
	}
}

CAL_CHECK_OP(router_group)
{
	enum cal_status st;
	if ((st = cal_check_topk(a->e, a->k, a->k_total, err)) < 0)
		return st;
	if (a->n_group == 0 || a->n_group > CAL_ROUTER_GROUP_MAX_GROUPS || a->e % a->n_group ||
	    a->topk_group == 0 || a->topk_group > a->n_group ||
	    (a->n_group > 1 && a->e / a->n_group < 2) ||
	    a->k > (uint64_t)a->topk_group * (a->e / a->n_group))
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments e = %u, n_group = %u, topk_group = %u, k = %u: need "
				     "e %% n_group == 0, 1 <= topk_group <= n_group <= %u, groups of "
				     ">= 2 experts, k <= topk_group * e / n_group", a->e, a->n_group,
				     a->topk_group, a->k, CAL_ROUTER_GROUP_MAX_GROUPS);
	if (!(a->scaling == a->scaling))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'scaling' is NaN");
	if ((st = cal_check_shape(a->t, a->h, 1, err)) < 0 ||
	    (st = cal_check_shape(a->e, a->h, 1, err)) < 0 ||
	    (st = cal_check_shape(a->t, a->e, 1, err)) < 0)
		return st;
	if (a->t == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, x, w, logits, idx, weight);
}

CAL_CPU_OP(router_group)
{
	if (a->t == 0)
		return CAL_OK;
	return cal_cpu_parallel(be, a->t, (1u << 16) / ((uint64_t)a->e * (a->h + 1)) + 1,
				router_group_range, (void *)a, err);
}
