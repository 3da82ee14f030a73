/*
 * sqnr_rows.cu — per-row SQNR sums (ops.h): one warp per row, lane l adds
 * the columns l, l+32, ... in f64 (no fused multiply-add), then the lanes
 * fold with shuffles in the order of the C reference, so both back ends
 * give the same bytes.
 */
#include "lanes32.cuh"

/* x and x - y, widened to f64. */
struct sqnr_terms {
	const uint16_t *x;
	const float *y;
	__device__ void operator()(uint64_t i, double &u, double &v) const
	{
		u = (double)__uint_as_float((uint32_t)x[i] << 16);
		v = __dsub_rn(u, (double)y[i]);
	}
};

CAL_CUDA_OP(sqnr_rows)
{
	CAL_CUDA_OP_ENTER(a->rows == 0);
	unsigned grid = cal_cuda_grid(be, a->rows * 32);
	cal_row_sums_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(sqnr_terms{a->x, a->y}, a->rows, a->cols,
							      a->sums);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
