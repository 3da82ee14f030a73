/*
 * hadamard.cu — normalized Walsh-Hadamard transform in place
 * (kernels/hadamard.c): one thread per block of a row, the reference's
 * butterfly (numfmt.h) in fp32 local memory, so the bytes match the CPU's.
 */
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
hadamard_kernel(uint16_t *x, uint64_t n_blocks, uint32_t block, float scale)
{
	float v[CAL_HADAMARD_MAX_BLOCK];
	for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < n_blocks;
	     b += (uint64_t)gridDim.x * blockDim.x) {
		uint16_t *p = x + b * block;
		for (uint32_t i = 0; i < block; i++)
			v[i] = cal_bf2f(p[i]);
		cal_hadamard_f32(v, block); /* numfmt.h: additions only, no contraction */
		for (uint32_t i = 0; i < block; i++)
			p[i] = cal_f2bf(__fmul_rn(v[i], scale));
	}
}

CAL_CUDA_OP(hadamard)
{
	CAL_CUDA_OP_ENTER(a->rows == 0 || a->cols == 0);
	uint64_t n_blocks = a->rows * (a->cols / a->block);
	float scale = (float)(1.0 / sqrt((double)a->block));
	hadamard_kernel<<<cal_fwd_grid(be, n_blocks), CAL_CUDA_THREADS, 0, s>>>(a->x, n_blocks,
									       a->block, scale);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
