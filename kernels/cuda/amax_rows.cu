/*
 * amax_rows.cu — running max|x| over gathered rows x[index[k], :].
 * One warp per index entry (grid-stride over entries), lanes share the row
 * with 16-byte loads; per-block reduction and one atomicMax per block.
 */
#include "common.cuh"

template <bool BF16>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
rows_kernel(const void *x, uint64_t rows, uint64_t cols, const uint32_t *index, uint64_t n_index,
	    uint64_t base, float *amax, struct cal_nonfinite *nf)
{
	cal_obs s;
	cal_obs_init(s);
	uint64_t warp = cal_warp_id();
	uint64_t warps = cal_warp_count();
	unsigned lane = threadIdx.x & 31;
	for (uint64_t k = warp; k < n_index; k += warps) {
		uint64_t r = __ldg(index + k);
		if (r < rows)
			cal_obs_scan<BF16>(x, r * cols, cols, base, lane, 32, s);
	}
	cal_obs_flush_amax(s.max_bits, amax);
	cal_obs_flush_nonfinite(s, nf);
}

CAL_CUDA_OP(amax_rows)
{
	CAL_CUDA_OP_ENTER(a->n_index == 0 || a->cols == 0 || a->rows == 0);
	unsigned grid = cal_cuda_grid(be, a->n_index * 32);
	if (a->dtype == CAL_DTYPE_BF16)
		rows_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->x, a->rows, a->cols, a->index,
								 a->n_index, a->index_base,
								 a->amax, a->nonfinite);
	else
		rows_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->x, a->rows, a->cols, a->index,
								  a->n_index, a->index_base,
								  a->amax, a->nonfinite);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
