/*
 * logit_kl.c — per-row comparison of two models' logits (ops.h): KL of the
 * softmaxes, both argmaxes and both negative log-likelihoods of the next
 * token, in f64 and index order.  Reference and CPU back end; items are
 * rows.
 */
#include <math.h>

#include "kernels/internal.h"

/* log-sum-exp of n bf16 logits and their argmax (first maximum). */
static double lse_bf16(const uint16_t *x, uint64_t n, uint32_t *am)
{
	double mx = -INFINITY, sum = 0;
	*am = 0;
	for (uint64_t i = 0; i < n; i++) {
		double v = cal_nf_bf16_to_f32(x[i]);
		if (v > mx) {
			mx = v;
			*am = (uint32_t)i;
		}
	}
	for (uint64_t i = 0; i < n; i++)
		sum += exp(cal_nf_bf16_to_f32(x[i]) - mx);
	return mx + log(sum);
}

static void kl_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_logit_kl_args *a = p;
	uint64_t V = a->vocab;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		const uint16_t *lo = a->lo + r * V, *lq = a->lq + r * V;
		double zo = lse_bf16(lo, V, &a->argmax[2 * r]);
		double zq = lse_bf16(lq, V, &a->argmax[2 * r + 1]);
		double kl = 0;
		for (uint64_t i = 0; i < V; i++) {
			double o = cal_nf_bf16_to_f32(lo[i]) - zo, q = cal_nf_bf16_to_f32(lq[i]) - zq;
			kl += exp(o) * (o - q);
		}
		uint32_t nx = a->next ? a->next[r] : UINT32_MAX;
		a->out[3 * r] = kl > 0 ? kl : 0;
		a->out[3 * r + 1] = nx < V ? zo - cal_nf_bf16_to_f32(lo[nx]) : 0;
		a->out[3 * r + 2] = nx < V ? zq - cal_nf_bf16_to_f32(lq[nx]) : 0;
	}
}

CAL_CHECK_OP(logit_kl)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->rows, a->vocab, 1, err)) < 0)
		return st;
	if (a->rows && !a->vocab)
		return cal_error_set(err, CAL_ERR_INVALID, "logit_kl: vocab is 0");
	if (a->rows && (st = CAL_CHECK_PTRS(a, err, lo, lq, out, argmax)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(logit_kl)
{
	return cal_cpu_parallel(be, a->rows, 1, kl_range, (void *)a, err);
}
