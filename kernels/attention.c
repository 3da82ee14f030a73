/*
 * attention.c — causal (optionally sliding-window, left-pad-masked) GQA
 * attention over packed sequences.  Per query row and head: scores
 * s_j = fl32(q.k_j) * scale for the visible keys (dot in channel order),
 * m = max, e_j = exp(s_j - m), l = sum e_j (key order), and, as PyTorch's
 * SDPA (its CPU flash kernel, flash attention on a GPU, the tensor-core path
 * of kernels/cuda/attention.cu) computes it, the unnormalised p_j =
 * bf16(e_j) times V, out = bf16((sum_j p_j v_j) / l) (key order).  With
 * sinks (gpt_oss) the head's sink logit s joins the max and the
 * denominator: m = max(m, s), and l += exp(s - m) after the keys; it has no
 * value row (docs/gpt_oss.md).  eager_bf16 (transformers' eager bf16
 * attention): s_j = bf16(bf16(q.k_j) * scale), e_j = exp(bf16(s_j - m)),
 * the sink's term exp(bf16(s - m)), and the probabilities normalised before
 * the product, p_j = bf16(e_j / l), out = bf16(sum_j p_j v_j).
 * Only one row of scores exists at a time.  v and out may have their own
 * head dim vd (DeepSeek MLA).  Reference and CPU back end; items are (row,
 * head) pairs.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gdn_common.h"
#include "kernels/internal.h"

struct attn_ctx {
	const struct cal_attention_args *a;
	float *scratch;   /* per slot: max_len + hd + vd floats */
	uint64_t per_slot;
};

static inline float ld(const uint16_t *p, uint64_t i)
{
	return cal_nf_float((uint32_t)p[i] << 16);
}

static inline float bf(float v)
{
	return cal_nf_float((uint32_t)cal_nf_f32_to_bf16(v) << 16);
}

static void attn_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct attn_ctx *c = p;
	const struct cal_attention_args *a = c->a;
	const uint32_t hd = a->hd, vd = a->vd ? a->vd : a->hd, group = a->nh / a->nkv;
	float *sc = c->scratch + (uint64_t)slot * c->per_slot;
	float *qf = sc + (c->per_slot - (uint64_t)hd - vd), *acc = qf + hd;

	for (uint64_t it = begin; it < end; it++) {
		uint64_t i = it / a->nh;
		uint32_t h = (uint32_t)(it % a->nh), kvh = h / group;
		uint32_t s = cal_segment_of(a->cu_seqlens, a->n_seq, i);
		uint64_t lo = a->cu_seqlens[s] + (a->key_start ? a->key_start[s] : 0);
		uint16_t *o = a->out + (i * a->nh + h) * vd;
		if (a->window && i + 1 > (uint64_t)a->window && i + 1 - a->window > lo)
			lo = i + 1 - a->window;
		if (lo > i) {
			memset(o, 0, vd * sizeof(uint16_t));
			continue;
		}
		const uint16_t *q = a->q + (i * a->nh + h) * hd;
		for (uint32_t d = 0; d < hd; d++)
			qf[d] = ld(q, d);
		float m = -INFINITY;
		for (uint64_t j = lo; j <= i; j++) {
			const uint16_t *k = a->k + (j * a->nkv + kvh) * hd;
			float dot = 0.0f;
			for (uint32_t d = 0; d < hd; d++)
				dot += qf[d] * ld(k, d);
			float sv = a->eager_bf16 ? bf(bf(dot) * a->scale) : dot * a->scale;
			sc[j - lo] = sv;
			m = sv > m ? sv : m;
		}
		float l = 0.0f;
		if (a->sinks && a->sinks[h] > m)
			m = a->sinks[h];
		for (uint64_t j = lo; j <= i; j++) {
			float d = sc[j - lo] - m;
			sc[j - lo] = expf(a->eager_bf16 ? bf(d) : d);
			l += sc[j - lo];
		}
		if (a->sinks) {
			float d = a->sinks[h] - m;
			l += expf(a->eager_bf16 ? bf(d) : d);
		}
		for (uint32_t d = 0; d < vd; d++)
			acc[d] = 0.0f;
		for (uint64_t j = lo; j <= i; j++) {
			float pj = bf(a->eager_bf16 ? sc[j - lo] / l : sc[j - lo]);
			const uint16_t *v = a->v + (j * a->nkv + kvh) * vd;
			for (uint32_t d = 0; d < vd; d++)
				acc[d] += pj * ld(v, d);
		}
		for (uint32_t d = 0; d < vd; d++)
			o[d] = cal_nf_f32_to_bf16(a->eager_bf16 ? acc[d] : acc[d] / l);
	}
}

CAL_CHECK_OP(attention)
{
	enum cal_status st;
	if (a->nh == 0 || a->nkv == 0 || a->hd == 0 || a->nh % a->nkv)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments nh = %u, nkv = %u, hd = %u: need nh %% nkv == 0, all > 0",
				     a->nh, a->nkv, a->hd);
	if ((st = cal_check_shape(a->t, (uint64_t)a->nh * a->hd, 1, err)) < 0 ||
	    (st = cal_check_shape(a->t, (uint64_t)a->nh * (a->vd ? a->vd : a->hd), 1, err)) < 0)
		return st;
	if ((st = cal_check_tokens(a->t, a->n_seq, err)) < 0 || a->t == 0)
		return st;
	if (!(a->scale > 0.0f) || !isfinite(a->scale))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'scale' must be finite and > 0");
	return CAL_CHECK_PTRS(a, err, q, k, v, out, cu_seqlens);
}

CAL_CPU_OP(attention)
{
	struct attn_ctx c = {a, NULL, 0};
	uint64_t max_len = 0, items = a->t * a->nh;
	enum cal_status st;
	if (a->t == 0)
		return CAL_OK;
	if ((st = gdn_check_cu(a->cu_seqlens, a->n_seq, a->t, err)) < 0)
		return st;
	for (uint32_t s = 0; s < a->n_seq; s++) {
		uint64_t len = a->cu_seqlens[s + 1] - a->cu_seqlens[s];
		max_len = len > max_len ? len : max_len;
	}
	c.per_slot = max_len + (uint64_t)a->hd + (a->vd ? a->vd : a->hd);
	return cal_cpu_parallel_scratch(be, items, c.per_slot, &c.scratch, attn_range, &c, "attention",
					err);
}
