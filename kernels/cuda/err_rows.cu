/*
 * err_rows.cu — per-row error sums of the evaluation (ops.h): one warp per
 * row, lane l adds the columns l, l+32, ... in f64 (no fused multiply-add),
 * then the lanes fold with shuffles in the order of the C reference, so
 * both back ends give the same bytes (as sqnr_rows.cu).
 */
#include "lanes32.cuh"

/* d = b - a and r = a - in (a without in), widened to f64. */
struct err_terms {
	const uint16_t *in, *a, *b;
	__device__ void operator()(uint64_t i, double &u, double &v) const
	{
		double av = (double)__uint_as_float((uint32_t)a[i] << 16);
		u = __dsub_rn((double)__uint_as_float((uint32_t)b[i] << 16), av);
		v = in ? __dsub_rn(av, (double)__uint_as_float((uint32_t)in[i] << 16)) : av;
	}
};

CAL_CUDA_OP(err_rows)
{
	CAL_CUDA_OP_ENTER(a->rows == 0);
	unsigned grid = cal_cuda_grid(be, a->rows * 32);
	cal_row_sums_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(err_terms{a->in, a->a, a->b}, a->rows,
							      a->cols, a->sums);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
