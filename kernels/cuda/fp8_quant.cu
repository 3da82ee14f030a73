/*
 * fp8_quant.cu — FP8 E4M3 per-tensor weight quantizer (MODELOPT.md §1.6).
 * One lane per 8 elements: 16-byte bf16 load, 8-byte store; the last lane
 * takes the n % 8 tail with scalar accesses.
 */
#include "common.cuh"

template <bool V>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
fp8_kernel(const uint16_t *w, uint64_t n, float divisor, float recip, uint8_t *q)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x, nlanes = (n + 7) / 8;
	for (uint64_t v = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nlanes; v += stride) {
		if (8 * v + 8 <= n) {
			float x[8];
			cal_ld8_bf16<V>(w + 8 * v, x);
			uint64_t r = 0;
#pragma unroll
			for (int k = 0; k < 8; k++)
				r |= (uint64_t)cal_fp8_from_quotient(cal_div_by(x[k], divisor, recip))
				     << (8 * k);
			cal_st_bytes<V>(q + 8 * v, r, 8);
		} else {
			for (uint64_t i = 8 * v; i < n; i++)
				q[i] = cal_fp8_weight_encode(cal_nf_bf16_to_f32(w[i]), divisor);
		}
	}
}

extern "C" enum cal_status cal_cuda_fp8_quant(struct cal_backend *be,
					      const struct cal_fp8_quant_args *a,
					      struct cal_error *err)
{
	cudaStream_t s;
	enum cal_status st;
	if (a->n == 0)
		return CAL_OK;
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	float divisor = cal_fp8_weight_divisor(a->scale, a->div);
	float recip = 1.0f / divisor; /* host IEEE division: correctly rounded */
	unsigned grid = cal_cuda_grid(be, (a->n + 7) / 8);
	if (cal_aligned(a->w, 16) && cal_aligned(a->q, 8))
		fp8_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, a->n, divisor, recip, a->q);
	else
		fp8_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, a->n, divisor, recip, a->q);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
