/*
 * gptq_factor_ref.h — the reference for cal_gptq_factor's bytes
 * (test_gptq_factor.c, bench_gptq_factor.c): docs/gptq.md step 3 with the
 * textbook column algorithms, single-threaded: the damped H
 * (cal_gptq_damped), the lower Cholesky factor of the reversed matrix column by column
 * (dot products, k ascending), its inverse by forward substitution column by
 * column, U[i][j] = L^-1[n-1-i][n-1-j] as float; the identity when a pivot is
 * not positive.  engine/calib/gptq.c blocks and threads the same arithmetic
 * and must give the same bytes.
 */
#ifndef CAL_TESTS_GPTQ_FACTOR_REF_H
#define CAL_TESTS_GPTQ_FACTOR_REF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gptq.h"
#include "kernels/ops.h"

/* U into u ([n, n] float); returns 1 for the identity fallback, -1 when out
 * of memory. */
static int gptq_factor_ref(const uint16_t *w, uint64_t rows, uint64_t n, const float *hsum,
			   uint64_t n_samples, double perc_damp, float *u)
{
	double *a = malloc(n * n * sizeof(double)), *l = malloc(n * n * sizeof(double));
	int bad = 0;
	if (!a || !l) {
		free(a);
		free(l);
		return -1;
	}
	double damp = 0.0;
	uint8_t *dead = malloc(n);
	if (!dead) {
		free(a);
		free(l);
		return -1;
	}
	cal_gptq_dead_mask(w, rows, n, dead);
	cal_gptq_damped(hsum, dead, 2.0 / (double)n_samples, n, perc_damp, a, &damp);
	free(dead);
	for (uint64_t i = 0; i < n; i++)
		for (uint64_t j = 0; j < n; j++)
			l[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
	for (uint64_t j = 0; j < n && !bad; j++) {
		double *lj = l + j * n, d = lj[j];
		for (uint64_t k = 0; k < j; k++)
			d -= lj[k] * lj[k];
		if (!(d > 0.0) || !isfinite(d)) {
			bad = 1;
			break;
		}
		lj[j] = sqrt(d);
		for (uint64_t i = j + 1; i < n; i++) {
			double *li = l + i * n, s = li[j];
			for (uint64_t k = 0; k < j; k++)
				s -= li[k] * lj[k];
			li[j] = s / lj[j];
		}
	}
	/* a: row c = column c of L^-1 */
	for (uint64_t col = 0; col < n && !bad; col++) {
		double *y = a + col * n;
		memset(y, 0, n * sizeof(double));
		y[col] = 1.0 / l[col * n + col];
		for (uint64_t i = col + 1; i < n; i++) {
			const double *li = l + i * n;
			double s = 0.0;
			for (uint64_t k = col; k < i; k++)
				s += li[k] * y[k];
			y[i] = -s / li[i];
		}
	}
	for (uint64_t i = 0; i < n && !bad; i++)
		for (uint64_t j = 0; j < n; j++) {
			u[i * n + j] = j >= i ? (float)a[(n - 1 - j) * n + (n - 1 - i)] : 0.0f;
			if (j == i && !(u[i * n + j] > 0.0f && isfinite(u[i * n + j])))
				bad = 1;
		}
	if (bad) {
		memset(u, 0, n * n * sizeof(float));
		for (uint64_t k = 0; k < n; k++)
			u[k * n + k] = 1.0f;
	}
	free(a);
	free(l);
	return bad;
}

/* A test Hessian sum of n columns: x^T x of `tok` pseudo-random rows when
 * tok > 0 (O(tok n^2)), else a cheap symmetric diagonally dominant matrix
 * (O(n^2)); one all-zero weight column at n / 3 when w is given. */
static void gptq_factor_case(uint64_t n, uint64_t tok, uint64_t seed, float *h, uint16_t *w,
			     uint64_t rows)
{
	uint64_t s = seed;
#define GFR_RND() (s = s * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407), \
		   (double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0)
	memset(h, 0, n * n * sizeof(float));
	if (tok) {
		double *x = malloc(n * sizeof(double));
		for (uint64_t t = 0; x && t < tok; t++) {
			for (uint64_t k = 0; k < n; k++)
				x[k] = GFR_RND() * (k % 11 == 0 ? 8.0 : 1.0);
			for (uint64_t i = 0; i < n; i++)
				for (uint64_t j = 0; j < n; j++)
					h[i * n + j] += (float)(x[i] * x[j]);
		}
		free(x);
	} else {
		for (uint64_t i = 0; i < n; i++)
			for (uint64_t j = 0; j <= i; j++)
				h[i * n + j] = h[j * n + i] = i == j ? (float)n : (float)(GFR_RND() * 0.5);
	}
	for (uint64_t r = 0; w && r < rows; r++)
		for (uint64_t k = 0; k < n; k++) {
			double v = GFR_RND() * 0.05;
			float fv = k == n / 3 ? 0.0f : (float)v;
			uint32_t b;
			memcpy(&b, &fv, 4);
			w[r * n + k] = (uint16_t)(b >> 16);
		}
#undef GFR_RND
}

#endif
