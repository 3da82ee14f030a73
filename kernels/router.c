/*
 * router.c — MoE router of the softmax-then-top-k family (qwen*, mixtral,
 * olmoe): fp32 softmax over the bf16 logits (max, exp(x - max), sum in
 * expert order, divide), top-k by repeated selection with ties going to the
 * lower expert index, optional renormalisation of the first k by their
 * fp32 sum.  Reference and CPU back end; items are tokens.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/internal.h"

struct router_ctx {
	const struct cal_router_args *a;
	float *scratch; /* per slot: e floats */
};

static void router_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct router_ctx *c = p;
	const struct cal_router_args *a = c->a;
	float *prob = c->scratch + (uint64_t)slot * a->e;
	for (uint64_t t = begin; t < end; t++) {
		const uint16_t *l = a->logits + t * a->e;
		uint32_t *idx = a->idx + t * a->k_total;
		float *w = a->weight + t * a->k;
		float mx = -INFINITY, sum = 0.0f;
		for (uint32_t i = 0; i < a->e; i++) {
			float v = cal_nf_float((uint32_t)l[i] << 16);
			prob[i] = v;
			mx = v > mx ? v : mx;
		}
		for (uint32_t i = 0; i < a->e; i++) {
			prob[i] = expf(prob[i] - mx);
			sum += prob[i];
		}
		for (uint32_t i = 0; i < a->e; i++)
			prob[i] = prob[i] / sum;
		for (uint32_t s = 0; s < a->k_total; s++) {
			uint32_t best = UINT32_MAX;
			for (uint32_t i = 0; i < a->e; i++) {
				if (prob[i] != prob[i] && best != UINT32_MAX)
					continue; /* NaN never wins over a number */
				if (best == UINT32_MAX || prob[i] > prob[best])
					best = i;
			}
			idx[s] = best;
			if (s < a->k)
				w[s] = prob[best];
			prob[best] = -INFINITY; /* taken */
		}
		if (a->renorm) {
			float ws = 0.0f;
			for (uint32_t s = 0; s < a->k; s++)
				ws += w[s];
			for (uint32_t s = 0; s < a->k; s++)
				w[s] = w[s] / ws;
		}
	}
}

enum cal_status cal_check_router(const struct cal_router_args *a, struct cal_error *err)
{
	enum cal_status st;
	if (a->e == 0 || a->k == 0 || a->k > a->k_total || a->k_total > a->e)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments e = %u, k = %u, k_total = %u: need 1 <= k <= k_total <= e",
				     a->e, a->k, a->k_total);
	if ((st = cal_check_shape(a->t, a->e, 1, err)) < 0)
		return st;
	if (a->t == 0)
		return CAL_OK;
	if ((st = cal_check_ptr(a->logits, "logits", err)) < 0 ||
	    (st = cal_check_ptr(a->idx, "idx", err)) < 0 ||
	    (st = cal_check_ptr(a->weight, "weight", err)) < 0)
		return st;
	return CAL_OK;
}

enum cal_status cal_cpu_router(struct cal_backend *be, const struct cal_router_args *a,
			       struct cal_error *err)
{
	struct router_ctx c = {a, NULL};
	enum cal_status st;
	uint64_t min = (1u << 14) / a->e + 1;
	if (a->t == 0)
		return CAL_OK;
	c.scratch = malloc((size_t)cal_cpu_slots(be, a->t, min) * a->e * sizeof(float));
	if (!c.scratch)
		return cal_error_set(err, CAL_ERR_NOMEM, "router: out of memory");
	st = cal_cpu_parallel(be, a->t, min, router_range, &c, err);
	free(c.scratch);
	return st;
}
