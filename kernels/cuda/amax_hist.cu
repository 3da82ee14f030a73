/*
 * amax_hist.cu — log2 histogram of the per-block max|x| (nvfp4_act_headroom,
 * kernels/amax_hist.c).  One thread per block of a row, the bin found by
 * bisection over the edges of kernels/hist_edges.h (passed by value, the
 * same table as the C reference's); each thread block counts in
 * shared memory, then adds its counts to the running u64 histogram.
 */
#include <math.h>
#include <pthread.h>

#include "common.cuh"

extern "C" {
#include "kernels/hist_edges.h"
}

struct hist_edges {
	float e[CAL_HIST_BINS - 1];
};

template <bool BF16>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
hist_kernel(const void *x, uint64_t cols, uint64_t bpr, uint64_t nb, unsigned bs,
	    const hist_edges ed, unsigned long long *hist)
{
	__shared__ unsigned sh[CAL_HIST_BINS];
	for (unsigned j = threadIdx.x; j < CAL_HIST_BINS; j += blockDim.x)
		sh[j] = 0;
	__syncthreads();
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += stride) {
		uint64_t r = b / bpr, c0 = (b % bpr) * bs;
		uint64_t c1 = c0 + bs < cols ? c0 + bs : cols;
		uint32_t m = 0;
		for (uint64_t i = r * cols + c0; i < r * cols + c1; i++) {
			uint32_t v = BF16 ? ((uint32_t)((const uint16_t *)x)[i] << 16)
					  : __float_as_uint(((const float *)x)[i]);
			v &= 0x7fffffffu;
			if (v < 0x7f800000u && v > m)
				m = v;
		}
		if (!m)
			continue;
		float f = __uint_as_float(m);
		unsigned lo = 0, hi = CAL_HIST_BINS - 1;
		while (lo < hi) {
			unsigned mid = (lo + hi) / 2;
			if (ed.e[mid] <= f)
				lo = mid + 1;
			else
				hi = mid;
		}
		atomicAdd(&sh[lo], 1u);
	}
	__syncthreads();
	for (unsigned j = threadIdx.x; j < CAL_HIST_BINS; j += blockDim.x)
		if (sh[j])
			atomicAdd(hist + j, (unsigned long long)sh[j]);
}

CAL_CUDA_OP(amax_hist)
{
	uint64_t bpr = (a->cols + a->block - 1) / a->block, nb = a->rows * bpr;
	CAL_CUDA_OP_ENTER(nb == 0);
	hist_edges ed;
	const float *e = cal_hist_edges_here();
	for (int i = 0; i < CAL_HIST_BINS - 1; i++)
		ed.e[i] = e[i];
	unsigned grid = cal_cuda_grid(be, nb);
	unsigned long long *h = (unsigned long long *)a->hist;
	if (a->dtype == CAL_DTYPE_BF16)
		hist_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->x, a->cols, bpr, nb,
								    a->block, ed, h);
	else
		hist_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->x, a->cols, bpr, nb,
								     a->block, ed, h);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
