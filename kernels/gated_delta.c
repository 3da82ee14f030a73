/*
 * gated_delta.c — the Gated DeltaNet core (docs/architectures.md "Gated
 * DeltaNet"): gates, head expansion, L2-normalised q/k and the gated delta
 * rule over packed sequences, the state reset at every sequence start.  For
 * value head h (key head h / (nv / nk)) and token t of a sequence, in fp32:
 *   beta = bf16(sigmoid(b))  (HF: sigmoid of the bf16 tensor)
 *   g    = -exp(a_log) * softplus(a + dt_bias)   (softplus(x) = x for x > 20)
 *   q    = q * rsqrt(sum q^2 + 1e-6) * dk^-0.5,  k = k * rsqrt(sum k^2 + 1e-6)
 *   S    = exp(g) S;  d = beta (v - S^T k);  S += k d^T;  o = S^T q
 * and out = bf16(o).  S is dk x dv, zero at each sequence start.
 *
 * Two algorithms compute it (results agree to fp32 rounding):
 *   - token by token (the reference: the recurrence as written above,
 *     sums over the key dimension in index order);
 *   - chunked (CAL_GDN_CHUNK tokens per chunk, HF's
 *     torch_chunk_gated_delta_rule and the CUDA kernel's algorithm): per
 *     chunk, gamma = cumsum(g), A = strict_lower(diag(beta) K K^T * exp(gamma_i
 *     - gamma_j)), U = (I + A)^-1 diag(beta) V and Kc = (I + A)^-1
 *     diag(beta exp(gamma)) K by forward substitution, then with the state
 *     S of the previous chunks: Vn = U - Kc S,
 *     O = diag(exp(gamma)) Q S + lower(Q K^T * exp(gamma_i - gamma_j)) Vn,
 *     S = exp(gamma_last) S + (K * exp(gamma_last - gamma))^T Vn.
 * Reference and CPU back end; items are (sequence, value head) pairs.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/gdn_common.h"
#include "kernels/internal.h"

#define C CAL_GDN_CHUNK

struct gd_ctx {
	const struct cal_gated_delta_args *a;
	float *scratch;
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

/* beta and g of token t, value head h. */
static void gates(const struct cal_gated_delta_args *a, uint64_t t, uint32_t h, float *beta,
		  float *g)
{
	float b = ld(a->b, t * a->nv + h), x = ld(a->a, t * a->nv + h) + a->dt_bias[h];
	float sp = x > 20.0f ? x : log1pf(expf(x));
	*beta = bf(1.0f / (1.0f + expf(-b)));
	*g = -expf(a->a_log[h]) * sp;
}

/* dst = src * rsqrt(sum src^2 + 1e-6) * scale over n bf16 values. */
static void l2n(const uint16_t *src, uint32_t n, float scale, float *dst)
{
	float ss = 0.0f;
	for (uint32_t i = 0; i < n; i++) {
		float v = ld(src, i);
		dst[i] = v;
		ss += v * v;
	}
	float inv = 1.0f / sqrtf(ss + 1e-6f);
	for (uint32_t i = 0; i < n; i++)
		dst[i] = dst[i] * inv * scale;
}

/* out[j] = sum over i ascending of vec[i] * S[i][j] (S is dk x dv). */
static void state_t_vec(const float *S, const float *vec, uint32_t dk, uint32_t dv, float *out)
{
	for (uint32_t j = 0; j < dv; j++)
		out[j] = 0.0f;
	for (uint32_t i = 0; i < dk; i++)
		for (uint32_t j = 0; j < dv; j++)
			out[j] += vec[i] * S[(uint64_t)i * dv + j];
}

static inline float qscale(uint32_t dk)
{
	return (float)(1.0 / sqrt((double)dk));
}

/* Token by token over rows [r0, r1) of value head h. */
static void run_recurrent(const struct cal_gated_delta_args *a, uint64_t r0, uint64_t r1,
			  uint32_t h, float *sc)
{
	const uint32_t dk = a->dk, dv = a->dv, kh = h / (a->nv / a->nk);
	const uint64_t cd = 2 * (uint64_t)a->nk * dk + (uint64_t)a->nv * dv;
	float *S = sc, *q = S + (uint64_t)dk * dv, *k = q + dk, *d = k + dk;
	const float qs = qscale(dk);
	memset(S, 0, (size_t)dk * dv * sizeof(float));
	for (uint64_t t = r0; t < r1; t++) {
		const uint16_t *row = a->qkv + t * cd;
		const uint16_t *v = row + 2 * (uint64_t)a->nk * dk + (uint64_t)h * dv;
		float beta, g;
		gates(a, t, h, &beta, &g);
		l2n(row + (uint64_t)kh * dk, dk, qs, q);
		l2n(row + (uint64_t)a->nk * dk + (uint64_t)kh * dk, dk, 1.0f, k);
		float alpha = expf(g);
		for (uint64_t i = 0; i < (uint64_t)dk * dv; i++)
			S[i] *= alpha;
		/* d = beta (v - S^T k), sums over i ascending */
		state_t_vec(S, k, dk, dv, d);
		for (uint32_t j = 0; j < dv; j++)
			d[j] = (ld(v, j) - d[j]) * beta;
		for (uint32_t i = 0; i < dk; i++)
			for (uint32_t j = 0; j < dv; j++)
				S[(uint64_t)i * dv + j] += k[i] * d[j];
		uint16_t *o = a->out + t * (uint64_t)a->nv * dv + (uint64_t)h * dv;
		float *acc = d; /* d is consumed */
		state_t_vec(S, q, dk, dv, acc);
		for (uint32_t j = 0; j < dv; j++)
			o[j] = cal_nf_f32_to_bf16(acc[j]);
	}
}

/* Chunked over rows [r0, r1) of value head h. */
static void run_chunked(const struct cal_gated_delta_args *a, uint64_t r0, uint64_t r1,
			uint32_t h, float *sc)
{
	const uint32_t dk = a->dk, dv = a->dv, kh = h / (a->nv / a->nk);
	const uint64_t cd = 2 * (uint64_t)a->nk * dk + (uint64_t)a->nv * dv;
	float *S = sc, *Q = S + (uint64_t)dk * dv, *K = Q + (uint64_t)C * dk;
	float *Kc = K + (uint64_t)C * dk, *U = Kc + (uint64_t)C * dk, *A = U + (uint64_t)C * dv;
	float *gam = A + (uint64_t)C * C, *beta = gam + C, *tmp = beta + C;
	const float qs = qscale(dk);
	memset(S, 0, (size_t)dk * dv * sizeof(float));
	for (uint64_t c0 = r0; c0 < r1; c0 += C) {
		uint32_t n = (uint32_t)(r1 - c0 < C ? r1 - c0 : C);
		float cum = 0.0f;
		for (uint32_t i = 0; i < n; i++) {
			const uint16_t *row = a->qkv + (c0 + i) * cd;
			const uint16_t *v = row + 2 * (uint64_t)a->nk * dk + (uint64_t)h * dv;
			float g;
			gates(a, c0 + i, h, &beta[i], &g);
			cum += g;
			gam[i] = cum;
			l2n(row + (uint64_t)kh * dk, dk, qs, Q + (uint64_t)i * dk);
			l2n(row + (uint64_t)a->nk * dk + (uint64_t)kh * dk, dk, 1.0f, K + (uint64_t)i * dk);
			for (uint32_t j = 0; j < dv; j++)
				U[(uint64_t)i * dv + j] = ld(v, j) * beta[i];
			float e = expf(gam[i]);
			for (uint32_t j = 0; j < dk; j++)
				Kc[(uint64_t)i * dk + j] = K[(uint64_t)i * dk + j] * beta[i] * e;
		}
		/* A (strictly lower) */
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t j = 0; j < i; j++) {
				float dot = 0.0f;
				for (uint32_t x = 0; x < dk; x++)
					dot += K[(uint64_t)i * dk + x] * K[(uint64_t)j * dk + x];
				A[(uint64_t)i * C + j] = beta[i] * dot * expf(gam[i] - gam[j]);
			}
		/* (I + A) X = RHS, forward substitution (row i uses the solved rows j < i) */
		for (uint32_t i = 1; i < n; i++)
			for (uint32_t j = 0; j < i; j++) {
				float aij = A[(uint64_t)i * C + j];
				for (uint32_t x = 0; x < dv; x++)
					U[(uint64_t)i * dv + x] -= aij * U[(uint64_t)j * dv + x];
				for (uint32_t x = 0; x < dk; x++)
					Kc[(uint64_t)i * dk + x] -= aij * Kc[(uint64_t)j * dk + x];
			}
		/* Vn = U - Kc S (in U) */
		for (uint32_t i = 0; i < n; i++) {
			for (uint32_t j = 0; j < dv; j++) {
				float acc = 0.0f;
				for (uint32_t x = 0; x < dk; x++)
					acc += Kc[(uint64_t)i * dk + x] * S[(uint64_t)x * dv + j];
				tmp[j] = acc;
			}
			for (uint32_t j = 0; j < dv; j++)
				U[(uint64_t)i * dv + j] -= tmp[j];
		}
		/* O = diag(e^gamma) Q S + lower(Q K^T * decay) Vn */
		for (uint32_t i = 0; i < n; i++) {
			float e = expf(gam[i]);
			uint16_t *o = a->out + (c0 + i) * (uint64_t)a->nv * dv + (uint64_t)h * dv;
			for (uint32_t j = 0; j < dv; j++) {
				float acc = 0.0f;
				for (uint32_t x = 0; x < dk; x++)
					acc += Q[(uint64_t)i * dk + x] * e * S[(uint64_t)x * dv + j];
				tmp[j] = acc;
			}
			for (uint32_t m = 0; m <= i; m++) {
				float dot = 0.0f;
				for (uint32_t x = 0; x < dk; x++)
					dot += Q[(uint64_t)i * dk + x] * K[(uint64_t)m * dk + x];
				float p = dot * expf(gam[i] - gam[m]);
				for (uint32_t j = 0; j < dv; j++)
					tmp[j] += p * U[(uint64_t)m * dv + j];
			}
			for (uint32_t j = 0; j < dv; j++)
				o[j] = cal_nf_f32_to_bf16(tmp[j]);
		}
		/* S = e^{gamma_last} S + (K * e^{gamma_last - gamma})^T Vn */
		float gl = gam[n - 1], el = expf(gl);
		for (uint64_t i = 0; i < (uint64_t)dk * dv; i++)
			S[i] *= el;
		for (uint32_t m = 0; m < n; m++) {
			float w = expf(gl - gam[m]);
			for (uint32_t x = 0; x < dk; x++) {
				float kx = K[(uint64_t)m * dk + x] * w;
				for (uint32_t j = 0; j < dv; j++)
					S[(uint64_t)x * dv + j] += kx * U[(uint64_t)m * dv + j];
			}
		}
	}
}

static void gd_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct gd_ctx *c = p;
	const struct cal_gated_delta_args *a = c->a;
	float *sc = c->scratch + (uint64_t)slot * c->per_slot;
	for (uint64_t it = begin; it < end; it++) {
		uint32_t s = (uint32_t)(it / a->nv), h = (uint32_t)(it % a->nv);
		uint64_t r0 = a->cu_seqlens[s], r1 = a->cu_seqlens[s + 1];
		if (a->chunked)
			run_chunked(a, r0, r1, h, sc);
		else
			run_recurrent(a, r0, r1, h, sc);
	}
}

CAL_CHECK_OP(gated_delta)
{
	enum cal_status st;
	if (a->nk == 0 || a->nv == 0 || a->nv % a->nk)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments nk = %u, nv = %u: need nv %% nk == 0, both > 0", a->nk,
				     a->nv);
	if (a->dk == 0 || a->dk > CAL_GDN_MAX_HEAD_DIM || a->dv == 0 || a->dv > CAL_GDN_MAX_HEAD_DIM)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments dk = %u, dv = %u: need 1 .. %u", a->dk, a->dv,
				     CAL_GDN_MAX_HEAD_DIM);
	if ((st = cal_check_shape(a->t, 2 * (uint64_t)a->nk * a->dk + (uint64_t)a->nv * a->dv, 1,
				  err)) < 0)
		return st;
	if ((st = cal_check_tokens(a->t, a->n_seq, err)) < 0 || a->t == 0)
		return st;
	return CAL_CHECK_PTRS(a, err, qkv, b, a, a_log, dt_bias, out, cu_seqlens);
}

CAL_CPU_OP(gated_delta)
{
	struct gd_ctx c = {a, NULL, 0};
	uint64_t items, dk = a->dk, dv = a->dv;
	enum cal_status st;
	if (a->t == 0)
		return CAL_OK;
	if ((st = gdn_check_cu(a->cu_seqlens, a->n_seq, a->t, err)) < 0)
		return st;
	items = (uint64_t)a->n_seq * a->nv;
	c.per_slot = a->chunked ? dk * dv + 3 * C * dk + C * dv + C * C + 2 * C + dv
				: dk * dv + 2 * dk + dv;
	return cal_cpu_parallel_scratch(be, items, c.per_slot, &c.scratch, gd_range, &c, "gated_delta",
					err);
}
