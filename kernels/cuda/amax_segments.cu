/*
 * amax_segments.cu — running max|x| per segment of rows (tokens sorted by
 * expert).  Each warp takes a contiguous chunk of rows, keeps one running
 * max for the segment it is in and flushes it with one atomicMax when the
 * segment changes, so consecutive rows of one expert cost no atomics.
 */
#include "common.cuh"

CAL_OBS_ROWS_KERNEL(seg_kernel, const uint32_t *offsets, uint32_t n_seg)
{
	CAL_OBS_WARP_START();
	uint64_t r0 = __ldg(offsets), r1 = __ldg(offsets + n_seg);
	if (r1 > rows)
		r1 = rows;
	if (r0 < r1) {
		uint64_t total = r1 - r0, chunk = (total + warps - 1) / warps;
		uint64_t begin = r0 + warp * chunk, end = begin + chunk;
		if (end > r1)
			end = r1;
		uint32_t cur = 0;
		bool have = false;
		for (uint64_t r = begin; r < end; r++) {
			uint32_t seg = cal_segment_of(offsets, n_seg, (uint32_t)r);
			if (have && seg != cur) {
				uint32_t m = __reduce_max_sync(CAL_FULL_MASK, s.max_bits);
				if (lane == 0)
					atomicMax((int *)&amax[cur], (int)m);
				s.max_bits = 0;
			}
			cur = seg;
			have = true;
			cal_obs_scan<BF16>(x, r * cols, cols, base, lane, 32, s);
		}
		if (have) {
			uint32_t m = __reduce_max_sync(CAL_FULL_MASK, s.max_bits);
			if (lane == 0)
				atomicMax((int *)&amax[cur], (int)m);
		}
	}
	cal_obs_flush_nonfinite(s, nf);
}

CAL_CUDA_OP(amax_segments)
{
	CAL_CUDA_OP_ENTER(a->rows == 0 || a->cols == 0);
	/* about one warp per 4 rows, more rows per warp when rows are short */
	uint64_t warps = a->rows / 4 + 1;
	if (a->cols < 1024)
		warps = a->rows * a->cols / 4096 + 1;
	unsigned grid = cal_cuda_grid(be, warps * 32);
	CAL_OBS_ROWS_LAUNCH(seg_kernel, grid, a, a->offsets, a->n_seg);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
