/*
 * int8_dequant.cu — INT8 per-output-channel dequantize: out[r, k] =
 * fl32(q[r, k] * scale[r]), or fl32(q[r, k] * scale) with one scale (scales
 * NULL).  One thread per element (grid-stride).
 */
#include "common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
int8_dq_kernel(const uint8_t *q, const float *scales, float scale, uint64_t cols, uint64_t n,
	       enum cal_dtype dt, void *out)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
		float v = cal_fmul(cal_int8_decode(__ldg(q + i)),
				   scales ? __ldg(scales + i / cols) : scale);
		if (dt == CAL_DTYPE_BF16)
			((uint16_t *)out)[i] = cal_nf_f32_to_bf16(v);
		else
			((float *)out)[i] = v;
	}
}

CAL_CUDA_OP(int8_dequant)
{
	uint64_t n = a->rows * a->cols;
	CAL_CUDA_OP_ENTER(n == 0);
	int8_dq_kernel<<<cal_cuda_grid(be, n), CAL_CUDA_THREADS, 0, s>>>(a->q, a->scales, a->scale,
									 a->cols, n, a->out_dtype,
									 a->out);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
