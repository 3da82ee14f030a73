/*
 * lanes32.cuh — the warp side of kernels/lanes32.h: folds two per-lane f64
 * sums in the C reference's order and lane 0 writes them to out[0..1]; and
 * the per-row sums kernel of sqnr_rows / err_rows built on it.
 */
#ifndef CAL_KERNELS_CUDA_LANES32_CUH
#define CAL_KERNELS_CUDA_LANES32_CUH

#include "common.cuh"

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

/* One warp per row: lane l adds the columns l, l+32, ... of the row's terms
 * (t(i, u, v) for element i = r * cols + c) as u*u and v*v in f64 without
 * fused multiply-add, then the lanes fold into sums[2r], sums[2r+1] in the
 * C reference's order (kernels/lanes32.h cal_lanes32_sums). */
template <class Terms>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
cal_row_sums_kernel(Terms t, uint64_t rows, uint64_t cols, double *sums)
{
	unsigned lane = threadIdx.x & 31;
	uint64_t warps = (uint64_t)gridDim.x * (blockDim.x / 32);
	for (uint64_t r = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < rows;
	     r += warps) {
		double s = 0.0, e = 0.0;
		for (uint64_t c = lane; c < cols; c += 32) {
			double u, v;
			t(r * cols + c, u, v);
			s = __dadd_rn(s, __dmul_rn(u, u));
			e = __dadd_rn(e, __dmul_rn(v, v));
		}
		cal_warp_fold2(s, e, lane, sums + 2 * r);
	}
}

#endif
