/*
 * rmsnorm_gated.cu — the Gated DeltaNet output norm (see rmsnorm_gated.c):
 * one warp per row (8 rows per 256-thread block, grid-stride over rows),
 * warp reduction of the fp32 sum of squares, lanes over the columns.
 */
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
rmsg_kernel(const uint16_t *x, const uint16_t *z, uint16_t *y, uint64_t rows, uint64_t cols,
	    const uint16_t *w, float eps)
{
	const unsigned lane = threadIdx.x & 31, warps = CAL_CUDA_THREADS / 32;
	for (uint64_t r = (uint64_t)blockIdx.x * warps + (threadIdx.x >> 5); r < rows;
	     r += (uint64_t)gridDim.x * warps) {
		const uint16_t *xr = x + r * cols, *zr = z + r * cols;
		float ss = 0.0f;
		for (uint64_t j = lane; j < cols; j += 32) {
			float v = cal_bf2f(xr[j]);
			ss += v * v;
		}
		for (int o = 16; o > 0; o >>= 1)
			ss += __shfl_xor_sync(CAL_FULL_MASK, ss, o);
		float inv = 1.0f / sqrtf(ss / (float)cols + eps);
		uint16_t *yr = y + r * cols;
		for (uint64_t j = lane; j < cols; j += 32) {
			float n = __fmul_rn(cal_bf2f(xr[j]), inv), zf = cal_bf2f(zr[j]);
			float o = cal_rbf(__fmul_rn(cal_bf2f(w[j]), cal_rbf(n)));
			yr[j] = cal_f2bf(__fmul_rn(o, zf / (1.0f + expf(-zf))));
		}
	}
}

CAL_CUDA_OP(rmsnorm_gated)
{
	CAL_CUDA_OP_ENTER(a->rows == 0);
	unsigned grid = cal_fwd_grid(be, a->rows * 32);
	rmsg_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(a->x, a->z, a->y, a->rows, a->cols, a->w,
						      a->eps);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
