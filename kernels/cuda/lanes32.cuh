/*
 * lanes32.cuh — the warp side of kernels/lanes32.h: folds two per-lane f64
 * sums in the C reference's order and lane 0 writes them to out[0..1].
 */
#ifndef CAL_KERNELS_CUDA_LANES32_CUH
#define CAL_KERNELS_CUDA_LANES32_CUH

__device__ static inline void cal_warp_fold2(double s, double e, unsigned lane, double *out)
{
	for (int k = 16; k >= 1; k /= 2) {
		double so = __shfl_down_sync(0xffffffffu, s, k);
		double eo = __shfl_down_sync(0xffffffffu, e, k);
		s = __dadd_rn(s, so);
		e = __dadd_rn(e, eo);
	}
	if (lane == 0) {
		out[0] = s;
		out[1] = e;
	}
}

#endif
