/*
 * err_rows.cu — per-row error sums of the evaluation (ops.h): one warp per
 * row, lane l adds the columns l, l+32, ... in f64 (no fused multiply-add),
 * then the lanes fold with shuffles in the order of the C reference, so
 * both back ends give the same bytes (as sqnr_rows.cu).
 */
#include "common.cuh"
#include "lanes32.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
err_rows_kernel(const uint16_t *in, const uint16_t *a, const uint16_t *b, uint64_t rows,
		uint64_t cols, double *sums)
{
	unsigned lane = threadIdx.x & 31;
	uint64_t warps = (uint64_t)gridDim.x * (blockDim.x / 32);
	for (uint64_t r = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < rows;
	     r += warps) {
		const uint16_t *ar = a + r * cols, *br = b + r * cols;
		const uint16_t *ir = in ? in + r * cols : NULL;
		double s = 0.0, e = 0.0;
		for (uint64_t c = lane; c < cols; c += 32) {
			double av = (double)__uint_as_float((uint32_t)ar[c] << 16);
			double d = __dsub_rn((double)__uint_as_float((uint32_t)br[c] << 16), av);
			double q = ir ? __dsub_rn(av, (double)__uint_as_float((uint32_t)ir[c] << 16))
				      : av;
			s = __dadd_rn(s, __dmul_rn(d, d));
			e = __dadd_rn(e, __dmul_rn(q, q));
		}
		cal_warp_fold2(s, e, lane, sums + 2 * r);
	}
}

CAL_CUDA_OP(err_rows)
{
	CAL_CUDA_OP_ENTER(a->rows == 0);
	unsigned grid = cal_cuda_grid(be, a->rows * 32);
	err_rows_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(a->in, a->a, a->b, a->rows, a->cols,
							  a->sums);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
