/*
 * nvfp4_mse_sweep.cu — static NVFP4 per-block amax by the MSE FP8-scale sweep
 * (docs/numerics.md "NVFP4 static and MSE").  Compute-bound (up to 126
 * candidates x 16 divisions per block): one thread per 16-block, the search
 * itself is cal_nvfp4_mse_block of kernels/numfmt.h, identical to the C
 * reference.
 */
#include "common.cuh"

template <bool V>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
mse_kernel(const uint16_t *w, uint64_t nb, float g, float m, float s2, enum cal_div_mode div,
	   float *out)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += stride) {
		float x[16];
		cal_ld8_bf16<V>(w + b * 16, x);
		cal_ld8_bf16<V>(w + b * 16 + 8, x + 8);
		out[b] = cal_nvfp4_mse_block(x, g, m, s2, div);
	}
}

CAL_CUDA_OP(nvfp4_mse_sweep)
{
	uint64_t nb = a->rows * a->cols / 16;
	CAL_CUDA_OP_ENTER(nb == 0);
	float s2 = cal_nvfp4_static_scale2(a->global_amax, a->norm_max, a->div);
	unsigned grid = cal_cuda_grid(be, nb);
	if (cal_aligned(a->w, 16))
		mse_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, nb, a->global_amax,
								 a->norm_max, s2, a->div,
								 a->block_amax);
	else
		mse_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, nb, a->global_amax,
								  a->norm_max, s2, a->div,
								  a->block_amax);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
