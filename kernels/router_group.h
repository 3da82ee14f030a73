/*
 * router_group.h — the per-token expert selection of the DeepSeek router
 * (ops.h: struct cal_router_group_args), shared by the C reference and the
 * CUDA kernel so both pick the same experts by the same fp32 operations.
 * Not for use outside kernels/.
 */
#ifndef CAL_KERNELS_ROUTER_GROUP_H
#define CAL_KERNELS_ROUTER_GROUP_H

#include <math.h>

#include "kernels/numfmt.h"

/* sigmoid(x) = 1 / (1 + exp(-x)) evaluated in double and rounded once to
 * fp32: within an ulp of torch's fp32 sigmoid, and the same bits on the
 * host and the device (their fp32 expf may differ in the last bit, which
 * would flip near-tied expert choices between back ends). */
CAL_HD float cal_rg_sigmoid(float x)
{
	return (float)(1.0 / (1.0 + exp(-(double)x)));
}

/* The selection score of expert i: s + bias (fp32); NaN scores never win. */
CAL_HD float cal_rg_choice(const float *s, const float *bias, uint32_t i)
{
	float c = s[i] + (bias ? bias[i] : 0.0f);
	return c != c ? -INFINITY : c;
}

/*
 * s: the token's sigmoid scores [e] (scratch: taken experts are set to -1,
 * which no sigmoid reaches).  Writes idx[k_total] and weight[k].
 */
CAL_HD void cal_rg_select(float *s, const float *bias, uint32_t e, uint32_t k, uint32_t k_total,
			  uint32_t n_group, uint32_t topk_group, int renorm, float scaling,
			  uint32_t *idx, float *weight)
{
	uint32_t gs = e / n_group;
	uint64_t kept = 0;
	if (topk_group >= n_group) {
		kept = n_group >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << n_group) - 1);
	} else {
		float gsc[CAL_ROUTER_GROUP_MAX_GROUPS];
		for (uint32_t g = 0; g < n_group; g++) {
			float t1 = -INFINITY, t2 = -INFINITY;
			for (uint32_t i = g * gs; i < (g + 1) * gs; i++) {
				float c = cal_rg_choice(s, bias, i);
				if (c > t1) {
					t2 = t1;
					t1 = c;
				} else if (c > t2) {
					t2 = c;
				}
			}
			gsc[g] = t1 + t2;
		}
		for (uint32_t n = 0; n < topk_group; n++) {
			uint32_t best = UINT32_MAX;
			for (uint32_t g = 0; g < n_group; g++) {
				if (kept >> g & 1)
					continue;
				if (best == UINT32_MAX || gsc[g] > gsc[best] ||
				    (gsc[best] != gsc[best] && gsc[g] == gsc[g]))
					best = g;
			}
			kept |= (uint64_t)1 << best;
		}
	}
	for (uint32_t slot = 0; slot < k_total; slot++) {
		uint32_t best = UINT32_MAX;
		float bv = -INFINITY;
		for (uint32_t i = 0; i < e; i++) {
			if (s[i] < 0.0f)
				continue; /* taken */
			float v = (kept >> (i / gs) & 1) ? cal_rg_choice(s, bias, i) : -INFINITY;
			if (best == UINT32_MAX || v > bv) {
				best = i;
				bv = v;
			}
		}
		idx[slot] = best;
		if (slot < k)
			weight[slot] = s[best];
		s[best] = -1.0f;
	}
	if (renorm) {
		float sum = 0.0f;
		for (uint32_t j = 0; j < k; j++)
			sum += weight[j];
		sum += 1e-20f;
		for (uint32_t j = 0; j < k; j++)
			weight[j] = weight[j] / sum;
	}
	for (uint32_t j = 0; j < k; j++)
		weight[j] = weight[j] * scaling;
}

#endif
