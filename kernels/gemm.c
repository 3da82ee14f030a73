/*
 * gemm.c — y = bf16(x W^T (+ bias)) with fp32 accumulation, plain or grouped
 * over experts (rows offsets[g] .. offsets[g+1]-1 use weight g).  Reference
 * and CPU back end.
 *
 * Summation order (fixed, so every thread split gives the same bytes): for
 * each output element, four fp32 lanes accumulate x[k]*w[k] for k = l mod 4
 * over the first k - k%4 terms in increasing k, the lanes are added as
 * (l0 + l2) + (l1 + l3), the tail terms follow in order, then the bias
 * (after a bf16 rounding of the sum with bias_after_round).
 * The CPU work is tiled: an item is a (group, 32-row tile, 64-column tile);
 * each item widens its x and W panels to fp32 once and runs a 2x4
 * register-blocked kernel on SSE-width vectors.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/internal.h"

#define MT 32 /* rows per tile */
#define NT 64 /* columns per tile */

typedef float v4f __attribute__((vector_size(16)));

struct gemm_item {
	uint32_t g;
	uint64_t r0, r1; /* rows */
	uint64_t c0, c1; /* columns */
};

struct gemm_ctx {
	const struct cal_gemm_args *a;
	struct gemm_item *items;
	float *scratch;  /* per slot: (MT + NT) * kp floats */
	uint64_t kp;     /* k rounded up to 4 */
};

static inline float lanes_sum(v4f v)
{
	return (v[0] + v[2]) + (v[1] + v[3]);
}

static void widen(float *dst, const uint16_t *src, uint64_t k, uint64_t kp)
{
	for (uint64_t i = 0; i < k; i++)
		dst[i] = cal_nf_float((uint32_t)src[i] << 16);
	for (uint64_t i = k; i < kp; i++)
		dst[i] = 0.0f;
}

/* Finishes one element: lanes, tail, bias, rounding. */
static inline uint16_t finish(v4f acc, const float *x, const float *w, uint64_t k4, uint64_t k,
			      const uint16_t *bias, uint64_t col, int bias_round)
{
	float s = lanes_sum(acc);
	for (uint64_t i = k4; i < k; i++)
		s += x[i] * w[i];
	if (bias && bias_round)
		s = cal_nf_float((uint32_t)cal_nf_f32_to_bf16(s) << 16);
	if (bias)
		s += cal_nf_float((uint32_t)bias[col] << 16);
	return cal_nf_f32_to_bf16(s);
}

static void gemm_item_run(const struct cal_gemm_args *a, const struct gemm_item *it, float *xs,
			  float *ws, uint64_t kp)
{
	const uint64_t k = a->k, k4 = k & ~(uint64_t)3;
	const uint16_t *w = a->w + (uint64_t)it->g * a->w_stride;
	const uint16_t *bias = a->bias ? a->bias + (uint64_t)it->g * a->bias_stride : NULL;
	const int br = a->bias_after_round;
	uint64_t nr = it->r1 - it->r0, nc = it->c1 - it->c0;

	for (uint64_t r = 0; r < nr; r++)
		widen(xs + r * kp, a->x + (it->r0 + r) * k, k, kp);
	for (uint64_t c = 0; c < nc; c++)
		widen(ws + c * kp, w + (it->c0 + c) * k, k, kp);

	uint64_t r = 0;
	for (; r + 2 <= nr; r += 2) {
		const float *x0 = xs + r * kp, *x1 = x0 + kp;
		uint64_t c = 0;
		for (; c + 4 <= nc; c += 4) {
			const float *w0 = ws + c * kp, *w1 = w0 + kp, *w2 = w1 + kp, *w3 = w2 + kp;
			v4f a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0};
			v4f a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
			for (uint64_t i = 0; i < k4; i += 4) {
				v4f p0, p1, q;
				memcpy(&p0, x0 + i, 16);
				memcpy(&p1, x1 + i, 16);
				memcpy(&q, w0 + i, 16);
				a00 += p0 * q;
				a10 += p1 * q;
				memcpy(&q, w1 + i, 16);
				a01 += p0 * q;
				a11 += p1 * q;
				memcpy(&q, w2 + i, 16);
				a02 += p0 * q;
				a12 += p1 * q;
				memcpy(&q, w3 + i, 16);
				a03 += p0 * q;
				a13 += p1 * q;
			}
			uint16_t *y0 = a->y + (it->r0 + r) * a->n + it->c0 + c, *y1 = y0 + a->n;
			uint64_t col = it->c0 + c;
			y0[0] = finish(a00, x0, w0, k4, k, bias, col, br);
			y0[1] = finish(a01, x0, w1, k4, k, bias, col + 1, br);
			y0[2] = finish(a02, x0, w2, k4, k, bias, col + 2, br);
			y0[3] = finish(a03, x0, w3, k4, k, bias, col + 3, br);
			y1[0] = finish(a10, x1, w0, k4, k, bias, col, br);
			y1[1] = finish(a11, x1, w1, k4, k, bias, col + 1, br);
			y1[2] = finish(a12, x1, w2, k4, k, bias, col + 2, br);
			y1[3] = finish(a13, x1, w3, k4, k, bias, col + 3, br);
		}
		for (; c < nc; c++) {
			const float *w0 = ws + c * kp;
			v4f a00 = {0}, a10 = {0};
			for (uint64_t i = 0; i < k4; i += 4) {
				v4f p0, p1, q;
				memcpy(&p0, x0 + i, 16);
				memcpy(&p1, x1 + i, 16);
				memcpy(&q, w0 + i, 16);
				a00 += p0 * q;
				a10 += p1 * q;
			}
			uint16_t *y0 = a->y + (it->r0 + r) * a->n + it->c0 + c;
			y0[0] = finish(a00, x0, w0, k4, k, bias, it->c0 + c, br);
			y0[a->n] = finish(a10, x1, w0, k4, k, bias, it->c0 + c, br);
		}
	}
	for (; r < nr; r++) {
		const float *x0 = xs + r * kp;
		for (uint64_t c = 0; c < nc; c++) {
			const float *w0 = ws + c * kp;
			v4f acc = {0};
			for (uint64_t i = 0; i < k4; i += 4) {
				v4f p0, q;
				memcpy(&p0, x0 + i, 16);
				memcpy(&q, w0 + i, 16);
				acc += p0 * q;
			}
			a->y[(it->r0 + r) * a->n + it->c0 + c] =
				finish(acc, x0, w0, k4, k, bias, it->c0 + c, br);
		}
	}
}

static void gemm_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct gemm_ctx *c = p;
	float *xs = c->scratch + (uint64_t)slot * (MT + NT) * c->kp;
	float *ws = xs + (uint64_t)MT * c->kp;
	for (uint64_t i = begin; i < end; i++)
		gemm_item_run(c->a, &c->items[i], xs, ws, c->kp);
}

CAL_CHECK_OP(gemm)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->m, a->k, 1, err)) < 0 ||
	    (st = cal_check_shape(a->n, a->k, 1, err)) < 0 ||
	    (st = cal_check_shape(a->m, a->n, 1, err)) < 0)
		return st;
	if (a->m == 0 || a->n == 0)
		return CAL_OK;
	if (a->k == 0)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'k' is 0");
	if ((st = CAL_CHECK_PTRS(a, err, x, w, y)) < 0)
		return st;
	if (a->m > UINT32_MAX)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'm' = %llu exceeds 2^32-1",
				     (unsigned long long)a->m);
	if (a->n_groups > 1) {
		if (a->n_groups > (1u << 20))
			return cal_error_set(err, CAL_ERR_RANGE,
					     "argument 'n_groups' = %u exceeds 2^20", a->n_groups);
		if ((st = cal_check_ptr(a->offsets, "offsets", err)) < 0)
			return st;
		uint64_t last;
		if (a->w_stride < a->n * a->k ||
		    __builtin_mul_overflow((uint64_t)(a->n_groups - 1), a->w_stride, &last) ||
		    last > CAL_MAX_ELEMS)
			return cal_error_set(err, CAL_ERR_RANGE,
					     "argument 'w_stride' = %llu is smaller than n*k or too large",
					     (unsigned long long)a->w_stride);
		if (a->bias && a->bias_stride < a->n)
			return cal_error_set(err, CAL_ERR_RANGE,
					     "argument 'bias_stride' = %llu is smaller than n",
					     (unsigned long long)a->bias_stride);
	}
	return CAL_OK;
}

CAL_CPU_OP(gemm)
{
	struct gemm_ctx c = {.a = a};
	uint32_t G = a->n_groups > 1 ? a->n_groups : 1;
	uint64_t n_items = 0, cap, ctiles = (a->n + NT - 1) / NT;
	enum cal_status st = CAL_OK;

	if (a->m == 0 || a->n == 0)
		return CAL_OK;
	if (G > 1) {
		for (uint32_t g = 0; g < G; g++)
			if (a->offsets[g] > a->offsets[g + 1] || a->offsets[g + 1] > a->m)
				return cal_error_set(err, CAL_ERR_INVALID,
						     "offsets[%u..%u] = %u, %u: decreasing or beyond m = %llu",
						     g, g + 1, a->offsets[g], a->offsets[g + 1],
						     (unsigned long long)a->m);
	}
	/* items: per group, row tiles x column tiles */
	cap = ((a->m + MT - 1) / MT + G) * ctiles;
	c.items = malloc(cap * sizeof(*c.items));
	c.kp = (a->k + 3) & ~(uint64_t)3;
	if (!c.items)
		return cal_error_set(err, CAL_ERR_NOMEM, "gemm: out of memory");
	for (uint32_t g = 0; g < G; g++) {
		uint64_t r0 = G > 1 ? a->offsets[g] : 0, r1 = G > 1 ? a->offsets[g + 1] : a->m;
		for (uint64_t r = r0; r < r1; r += MT)
			for (uint64_t t = 0; t < ctiles; t++) {
				struct gemm_item *it = &c.items[n_items++];
				it->g = g;
				it->r0 = r;
				it->r1 = r + MT < r1 ? r + MT : r1;
				it->c0 = t * NT;
				it->c1 = (t + 1) * NT < a->n ? (t + 1) * NT : a->n;
			}
	}
	unsigned slots = cal_cpu_slots(be, n_items, 1);
	c.scratch = malloc((size_t)slots * (MT + NT) * c.kp * sizeof(float));
	if (!c.scratch) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gemm: out of memory (scratch)");
		goto fail;
	}
	st = cal_cpu_parallel(be, n_items, 1, gemm_range, &c, err);
fail:
	free(c.scratch);
	free(c.items);
	return st;
}
