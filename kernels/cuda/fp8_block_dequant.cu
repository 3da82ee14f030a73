/*
 * fp8_block_dequant.cu — block-scaled FP8 source weights -> bf16
 * (kernels/fp8_block_dequant.c): one thread per element in a grid-stride
 * loop, the same fl32 product and bf16 rounding: exact.
 */
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
fp8b_kernel(const uint8_t *q, const float *scale_inv, uint64_t rows, uint64_t cols, uint32_t br,
	    uint32_t bc, uint16_t *out)
{
	uint64_t total = rows * cols, sc = (cols + bc - 1) / bc;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t r = i / cols, c = i % cols;
		out[i] = cal_fp8_block_value(q[i], scale_inv[(r / br) * sc + c / bc]);
	}
}

CAL_CUDA_OP(fp8_block_dequant)
{
	CAL_CUDA_OP_ENTER(a->rows == 0 || a->cols == 0);
	fp8b_kernel<<<cal_fwd_grid(be, a->rows * a->cols), CAL_CUDA_THREADS, 0, s>>>(
		a->q, a->scale_inv, a->rows, a->cols, a->block_rows, a->block_cols, a->out);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
