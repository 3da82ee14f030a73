/*
 * int8_quant.cu — INT8 per-output-channel weight quantizer (docs/numerics.md
 * "INT8"; the C reference is kernels/int8_quant.c).  One thread block per
 * row (grid-stride over rows): the row's max|w| by a block reduction (a NaN
 * anywhere makes it NaN, as torch's amax), then the codes.  With a static
 * scale (an input's input_scale): one thread per element (grid-stride).
 */
#include "common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
int8_kernel(const uint16_t *w, uint64_t rows, uint64_t cols, enum cal_div_mode div, uint8_t *q,
	    float *scales)
{
	__shared__ float red[CAL_CUDA_THREADS / 32];
	__shared__ int nan_seen;
	for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
		const uint16_t *row = w + r * cols;
		if (threadIdx.x == 0)
			nan_seen = 0;
		__syncthreads();
		float m = 0.0f;
		int nan = 0;
		for (uint64_t k = threadIdx.x; k < cols; k += blockDim.x) {
			float a = fabsf(cal_nf_bf16_to_f32(__ldg(row + k)));
			nan |= a != a;
			m = a > m ? a : m;
		}
		if (nan)
			nan_seen = 1;
		m = cal_group_max<32>(m);
		if ((threadIdx.x & 31) == 0)
			red[threadIdx.x >> 5] = m;
		__syncthreads();
		float amax = 0.0f;
		for (unsigned i = 0; i < blockDim.x / 32; i++)
			amax = red[i] > amax ? red[i] : amax;
		if (nan_seen)
			amax = __int_as_float(0x7fc00000);
		float s = cal_int8_row_scale(amax, div), rc = __frcp_rn(s);
		for (uint64_t k = threadIdx.x; k < cols; k += blockDim.x)
			q[r * cols + k] = cal_int8_from_quotient(
				cal_div_by(cal_nf_bf16_to_f32(__ldg(row + k)), s, rc));
		if (threadIdx.x == 0)
			scales[r] = s;
		__syncthreads(); /* red / nan_seen are reused by the next row */
	}
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
int8_static_kernel(const uint16_t *w, uint64_t n, float scale, uint8_t *q)
{
	float rc = __frcp_rn(scale);
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		q[i] = cal_int8_from_quotient(cal_div_by(cal_nf_bf16_to_f32(__ldg(w + i)), scale,
							 rc));
}

CAL_CUDA_OP(int8_quant)
{
	CAL_CUDA_OP_ENTER(a->rows == 0 || a->cols == 0);
	if (a->scale > 0.0f) {
		uint64_t n = a->rows * a->cols;
		int8_static_kernel<<<cal_cuda_grid(be, n), CAL_CUDA_THREADS, 0, s>>>(a->w, n,
										       a->scale, a->q);
		CAL_CUDA_LAUNCHED();
		return CAL_OK;
	}
	unsigned grid = a->rows < 65535 ? (unsigned)a->rows : 65535u;
	int8_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, a->rows, a->cols, a->div, a->q,
						      a->scales);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
