/*
 * amax.cu — per-tensor running max|x| (bf16/f32) with non-finite report.
 * Grid-stride over 16-byte vectors (head/tail scalar), per-thread integer
 * max of |x| bits, warp __reduce_max_sync, one atomicMax per thread block.
 */
#include "common.cuh"

template <bool BF16>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
amax_kernel(const void *x, uint64_t n, uint64_t base, float *amax, struct cal_nonfinite *nf)
{
	cal_obs s;
	cal_obs_init(s);
	uint64_t lane = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	cal_obs_scan<BF16>(x, 0, n, base, lane, (uint64_t)gridDim.x * blockDim.x, s);
	cal_obs_flush_amax(s.max_bits, amax);
	cal_obs_flush_nonfinite(s, nf);
}

CAL_CUDA_OP(amax)
{
	CAL_CUDA_OP_ENTER(a->n == 0);
	unsigned grid = cal_cuda_grid(be, (a->n + 7) / 8);
	if (a->dtype == CAL_DTYPE_BF16)
		amax_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->x, a->n, a->index_base, a->amax,
								 a->nonfinite);
	else
		amax_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->x, a->n, a->index_base, a->amax,
								  a->nonfinite);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
