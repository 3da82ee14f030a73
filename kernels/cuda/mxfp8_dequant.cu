/*
 * mxfp8_dequant.cu — MXFP8 dequantize: out = fl32(e4m3 * 2^(e8m0 - 127)).
 * One lane per 8 outputs (8-byte load, scale byte per four lanes).
 */
#include "dequant_common.cuh"

struct mxfp8_dq {
	const uint8_t *q, *scales;
	template <bool V>
	__device__ void decode(uint64_t v, float *o) const
	{
		uint64_t p = cal_ld_bytes<V>(q + v * 8, 8);
		float s = cal_e8m0_decode(__ldg(scales + v / 4));
#pragma unroll
		for (int k = 0; k < 8; k++)
			o[k] = cal_fmul(cal_e4m3_decode((uint8_t)(p >> (8 * k))), s);
	}
	__device__ uint64_t out_index(uint64_t v) const { return v * 8; }
};

CAL_CUDA_OP(mxfp8_dequant)
{
	mxfp8_dq f = {a->q, a->scales};
	return dequant_launch(be, f, cal_aligned(a->q, 8), a->rows * a->cols / 8, a->out_dtype,
			      a->out, err);
}
