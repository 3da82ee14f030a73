/*
 * router.c — MoE router of the softmax-then-top-k family (qwen*, mixtral,
 * olmoe): fp32 softmax over the bf16 logits (max, exp(x - max), sum in
 * expert order, divide), top-k by repeated selection with ties going to the
 * lower expert index, optional renormalisation of the first k by their
 * fp32 sum, and optionally (bf16_weights) each of the k weights rounded to
 * bf16.  gpt_oss mode (CAL_ROUTER_MODE_TOPK_SOFTMAX): the top k_total
 * of the bf16 logits by the same selection, then weights = softmax over the
 * first k of them (fp32: max, exp, sum in slot order, divide), each rounded
 * to bf16 as HF's bf16 softmax returns them.  Reference and CPU back end;
 * items are tokens.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/internal.h"

struct router_ctx {
	const struct cal_router_args *a;
	float *scratch; /* per slot: e floats */
};

/* Top k_total of v[0..e) by repeated selection (ties: lower index; NaN
 * never wins over a number): idx[s], and w[s] = v[idx[s]] for s < k.
 * Destroys v. */
static void topk_select(float *v, uint32_t e, uint32_t *idx, float *w, uint32_t k,
			uint32_t k_total)
{
	for (uint32_t s = 0; s < k_total; s++) {
		uint32_t best = UINT32_MAX;
		for (uint32_t i = 0; i < e; i++) {
			if (v[i] != v[i] && best != UINT32_MAX)
				continue;
			if (best == UINT32_MAX || v[i] > v[best])
				best = i;
		}
		idx[s] = best;
		if (s < k)
			w[s] = v[best];
		v[best] = -INFINITY; /* taken */
	}
}

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
		if (a->mode == CAL_ROUTER_MODE_TOPK_SOFTMAX) {
			for (uint32_t i = 0; i < a->e; i++)
				prob[i] = cal_nf_float((uint32_t)l[i] << 16);
			topk_select(prob, a->e, idx, w, a->k, a->k_total);
			mx = w[0];
			for (uint32_t s = 1; s < a->k; s++)
				mx = w[s] > mx ? w[s] : mx;
			for (uint32_t s = 0; s < a->k; s++) {
				w[s] = expf(w[s] - mx);
				sum += w[s];
			}
			for (uint32_t s = 0; s < a->k; s++)
				w[s] = cal_nf_float((uint32_t)cal_nf_f32_to_bf16(w[s] / sum) << 16);
			continue;
		}
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
		topk_select(prob, a->e, idx, w, a->k, a->k_total);
		if (a->renorm) {
			float ws = 0.0f;
			for (uint32_t s = 0; s < a->k; s++)
				ws += w[s];
			for (uint32_t s = 0; s < a->k; s++)
				w[s] = w[s] / ws;
		}
		if (a->bf16_weights)
			for (uint32_t s = 0; s < a->k; s++)
				w[s] = cal_nf_float((uint32_t)cal_nf_f32_to_bf16(w[s]) << 16);
	}
}

CAL_CHECK_OP(router)
{
	enum cal_status st;
	if ((st = cal_check_topk(a->e, a->k, a->k_total, err)) < 0)
		return st;
	if ((st = cal_check_enum((int)a->mode, CAL_ROUTER_MODE_TOPK_SOFTMAX, "mode", err)) < 0)
		return st;
	if ((st = cal_check_shape(a->t, a->e, 1, err)) < 0)
		return st;
	if (a->t == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, logits, idx, weight);
}

CAL_CPU_OP(router)
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
