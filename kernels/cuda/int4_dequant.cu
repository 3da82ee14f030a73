/*
 * int4_dequant.cu — INT4 per-block dequantize: out[r, k] = fl32(q * scale[r, k/128]).
 * One lane per (row pair, 8 columns): 8 packed bytes in, 2 x 8 outputs.
 */
#include "common.cuh"

template <bool V>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
int4_dq_kernel(const uint8_t *packed, const float *scales, uint64_t cols, uint64_t nlanes,
	       enum cal_dtype dt, void *out)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x, cl = cols / 8, nb = cols / 128;
	for (uint64_t v = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nlanes; v += stride) {
		uint64_t p = v / cl, c = (v % cl) * 8, b = c / 128;
		uint64_t r = cal_ld_bytes<V>(packed + p * cols + c, 8);
		float s0 = __ldg(scales + 2 * p * nb + b), s1 = __ldg(scales + (2 * p + 1) * nb + b);
		float o0[8], o1[8];
#pragma unroll
		for (int k = 0; k < 8; k++) {
			unsigned byte = (unsigned)(r >> (8 * k)) & 0xffu;
			o0[k] = cal_fmul(cal_int4_decode(byte & 0xfu), s0);
			o1[k] = cal_fmul(cal_int4_decode(byte >> 4), s1);
		}
		cal_st8_out<V>(dt, out, 2 * p * cols + c, o0);
		cal_st8_out<V>(dt, out, (2 * p + 1) * cols + c, o1);
	}
}

CAL_CUDA_OP(int4_dequant)
{
	uint64_t nlanes = a->rows / 2 * (a->cols / 8);
	CAL_CUDA_OP_ENTER(nlanes == 0);
	unsigned grid = cal_cuda_grid(be, nlanes);
	if (cal_aligned(a->packed, 8) && cal_aligned(a->out, 16))
		int4_dq_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->packed, a->scales, a->cols,
								     nlanes, a->out_dtype, a->out);
	else
		int4_dq_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->packed, a->scales, a->cols,
								      nlanes, a->out_dtype, a->out);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
