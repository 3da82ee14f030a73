/*
 * rmsnorm.cu — RMSNorm variants, one thread block (256 threads) per row
 * (grid-stride over rows): block reduction of the fp32 sum of squares,
 * then each thread writes its strided columns.
 */
#include "fwd_common.cuh"

__device__ __forceinline__ float w_at(const void *w, int f32, uint64_t j)
{
	return f32 ? ((const float *)w)[j] : cal_bf2f(((const uint16_t *)w)[j]);
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
rms_kernel(int kind, const uint16_t *x, uint16_t *y, uint64_t rows, uint64_t cols, const void *w,
	   int wf32, float eps)
{
	__shared__ float part[CAL_CUDA_THREADS / 32];
	__shared__ float inv_s;
	for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
		const uint16_t *xr = x + r * cols;
		float ss = 0.0f;
		for (uint64_t j = threadIdx.x; j < cols; j += blockDim.x) {
			float v = cal_bf2f(xr[j]);
			ss += v * v;
		}
		for (int o = 16; o > 0; o >>= 1)
			ss += __shfl_xor_sync(CAL_FULL_MASK, ss, o);
		if ((threadIdx.x & 31) == 0)
			part[threadIdx.x >> 5] = ss;
		__syncthreads();
		if (threadIdx.x == 0) {
			float t = 0.0f;
			for (int i = 0; i < CAL_CUDA_THREADS / 32; i++)
				t += part[i];
			inv_s = 1.0f / sqrtf(t / (float)cols + eps);
		}
		__syncthreads();
		float inv = inv_s;
		uint16_t *yr = y + r * cols;
		for (uint64_t j = threadIdx.x; j < cols; j += blockDim.x) {
			float n = cal_bf2f(xr[j]) * inv, o;
			if (kind == CAL_RMS_PLAIN)
				o = w_at(w, wf32, j) * cal_rbf(n);
			else if (kind == CAL_RMS_F32W)
				o = w_at(w, wf32, j) * n;
			else
				o = n * (1.0f + w_at(w, wf32, j));
			yr[j] = cal_f2bf(o);
		}
		__syncthreads();
	}
}

CAL_CUDA_OP(rmsnorm)
{
	CAL_CUDA_OP_ENTER(a->rows == 0);
	unsigned grid = cal_fwd_grid(be, a->rows * CAL_CUDA_THREADS);
	rms_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>((int)a->kind, a->x, a->y, a->rows, a->cols, a->w,
						     a->w_dtype == CAL_DTYPE_F32, a->eps);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
