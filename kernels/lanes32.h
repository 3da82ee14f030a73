/*
 * lanes32.h — the fixed summation order of the per-row f64 sums
 * (sqnr_rows, err_rows; docs/numerics.md): 32 lanes, lane l adds the
 * columns l, l+32, ... in turn, then the lanes fold as v[l] += v[l+k] for
 * k = 16, 8, 4, 2, 1 — what a CUDA warp's shuffles do (cuda/lanes32.cuh).
 */
#ifndef CAL_KERNELS_LANES32_H
#define CAL_KERNELS_LANES32_H

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

#endif
