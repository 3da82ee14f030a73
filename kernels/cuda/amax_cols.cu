/*
 * amax_cols.cu — running max|x| per column of bf16 rows (SmoothQuant's
 * per-input-channel activation amax; the C reference is kernels/amax_cols.c).
 * One thread per column, grid-stride over columns; each thread scans the
 * rows, so a warp reads 32 consecutive columns of a row at once.
 */
#include "common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
cols_kernel(const uint16_t *x, uint64_t rows, uint64_t cols, uint64_t base, float *amax,
	    struct cal_nonfinite *nf)
{
	cal_obs s;
	cal_obs_init(s);
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	uint64_t n = (cols + CAL_CUDA_THREADS - 1) / CAL_CUDA_THREADS * CAL_CUDA_THREADS;
	for (uint64_t c = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n; c += stride) {
		s.max_bits = 0;
		if (c < cols) {
			for (uint64_t r = 0; r < rows; r++) {
				uint64_t i = r * cols + c;
				cal_obs_add(s, ((uint32_t)__ldg(x + i) << 16) & 0x7fffffffu, base + i);
			}
			if ((int)s.max_bits > (int)__float_as_uint(amax[c]))
				amax[c] = __uint_as_float(s.max_bits);
		}
	}
	cal_obs_flush_nonfinite(s, nf);
}

CAL_CUDA_OP(amax_cols)
{
	CAL_CUDA_OP_ENTER(a->rows == 0 || a->cols == 0);
	cols_kernel<<<cal_cuda_grid(be, a->cols), CAL_CUDA_THREADS, 0, s>>>(
		a->x, a->rows, a->cols, a->index_base, a->amax, a->nonfinite);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
