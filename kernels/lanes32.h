/*
 * lanes32.h — the fixed summation order of the per-row f64 sums
 * (sqnr_rows, err_rows; docs/numerics.md): 32 lanes, lane l adds the
 * columns l, l+32, ... in turn, then the lanes fold as v[l] += v[l+k] for
 * k = 16, 8, 4, 2, 1 — what a CUDA warp's shuffles do (cuda/lanes32.cuh).
 */
#ifndef CAL_KERNELS_LANES32_H
#define CAL_KERNELS_LANES32_H

#include <stdint.h>

/* Folds two sets of 32 lane sums into out[0] and out[1]. */
static inline void cal_lanes32_fold(double s[32], double e[32], double out[2])
{
	for (unsigned k = 16; k >= 1; k /= 2) {
		for (unsigned l = 0; l < k; l++) {
			s[l] += s[l + k];
			e[l] += e[l + k];
		}
	}
	out[0] = s[0];
	out[1] = e[0];
}

/* The two terms of element i of an op's arguments: the sums add u*u and
 * v*v. */
typedef void (*cal_lanes32_terms_fn)(const void *args, uint64_t i, double *u, double *v);

/* One row's sums: out[0] = sum u^2 and out[1] = sum v^2 over the elements
 * base .. base+cols-1, in the 32-lane order.  Products and sums are
 * separate statements: C11 (ISO mode) does not fuse them into multiply-adds
 * across statements (the CUDA kernels use __dmul_rn / __dadd_rn for the
 * same reason). */
static inline void cal_lanes32_sums(const void *args, uint64_t base, uint64_t cols,
				    cal_lanes32_terms_fn terms, double out[2])
{
	double s[32], e[32];
	for (unsigned l = 0; l < 32; l++) {
		double x = 0.0, y = 0.0;
		for (uint64_t c = l; c < cols; c += 32) {
			double u, v;
			terms(args, base + c, &u, &v);
			double p = u * u;
			double q = v * v;
			x = x + p;
			y = y + q;
		}
		s[l] = x;
		e[l] = y;
	}
	cal_lanes32_fold(s, e, out);
}

#endif
