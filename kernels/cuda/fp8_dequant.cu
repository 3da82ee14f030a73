/*
 * fp8_dequant.cu — FP8 E4M3 per-tensor dequantize: out = fl32(e4m3 * scale).
 * One lane per 8 outputs (8-byte load); the n % 8 tail by a scalar kernel.
 * With row_scale (FP8 per channel / 2-D blocks) one thread per output,
 * scale row_scale[cal_fp8_tile_of(...)].
 */
#include "dequant_common.cuh"

struct fp8_dq {
	const uint8_t *q;
	float scale;
	template <bool V>
	__device__ void decode(uint64_t v, float *o) const
	{
		uint64_t p = cal_ld_bytes<V>(q + v * 8, 8);
#pragma unroll
		for (int k = 0; k < 8; k++)
			o[k] = cal_fmul(cal_e4m3_decode((uint8_t)(p >> (8 * k))), scale);
	}
	__device__ uint64_t out_index(uint64_t v) const { return v * 8; }
};

__global__ void fp8_dq_tail(const uint8_t *q, uint64_t from, uint64_t n, float scale,
			    enum cal_dtype dt, void *out)
{
	uint64_t i = from + threadIdx.x;
	if (i >= n)
		return;
	float v = cal_fmul(cal_e4m3_decode(q[i]), scale);
	if (dt == CAL_DTYPE_BF16)
		((uint16_t *)out)[i] = cal_nf_f32_to_bf16(v);
	else
		((float *)out)[i] = v;
}

__global__ void fp8_dq_tiles(const uint8_t *q, uint64_t n, uint64_t cols, uint32_t tile,
			     const float *row_scale, enum cal_dtype dt, void *out)
{
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		float v = cal_fmul(cal_e4m3_decode(q[i]),
				   row_scale[cal_fp8_tile_of(i / cols, i % cols, cols, tile)]);
		if (dt == CAL_DTYPE_BF16)
			((uint16_t *)out)[i] = cal_nf_f32_to_bf16(v);
		else
			((float *)out)[i] = v;
	}
}

CAL_CUDA_OP(fp8_dequant)
{
	if (a->row_scale) {
		CAL_CUDA_OP_ENTER(a->n == 0);
		fp8_dq_tiles<<<cal_cuda_grid(be, a->n), CAL_CUDA_THREADS, 0, s>>>(
			a->q, a->n, a->cols, a->tile, a->row_scale, a->out_dtype, a->out);
		CAL_CUDA_LAUNCHED();
		return CAL_OK;
	}
	fp8_dq f = {a->q, a->scale};
	uint64_t full = a->n / 8;
	enum cal_status st = dequant_launch(be, f, cal_aligned(a->q, 8), full, a->out_dtype,
					    a->out, err);
	if (st < 0 || a->n % 8 == 0)
		return st;
	cudaStream_t s;
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	fp8_dq_tail<<<1, 8, 0, s>>>(a->q, full * 8, a->n, a->scale, a->out_dtype, a->out);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
