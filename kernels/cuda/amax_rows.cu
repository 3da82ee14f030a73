/*
 * amax_rows.cu — running max|x| over gathered rows x[index[k], :].
 * One warp per index entry (grid-stride over entries), lanes share the row
 * with 16-byte loads; per-block reduction and one atomicMax per block.
 */
#include "common.cuh"

CAL_OBS_ROWS_KERNEL(rows_kernel, const uint32_t *index, uint64_t n_index)
{
	CAL_OBS_WARP_START();
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
	CAL_OBS_ROWS_LAUNCH(rows_kernel, grid, a, a->index, a->n_index);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
