/*
 * mxfp4_dequant.cu — MXFP4 dequantize: out = fl32(e2m1 * 2^(e8m0 - 127)).
 * One lane per 8 outputs (4 packed bytes, scale byte per four lanes).
 */
#include "dequant_common.cuh"

struct mxfp4_dq {
	const uint8_t *packed, *scales;
	template <bool V>
	__device__ void decode(uint64_t v, float *o) const
	{
		uint32_t p = (uint32_t)cal_ld_bytes<V>(packed + v * 4, 4);
		float s = cal_e8m0_decode(__ldg(scales + v / 4));
#pragma unroll
		for (int k = 0; k < 8; k++)
			o[k] = cal_fmul(cal_e2m1_decode((p >> (4 * k)) & 0xfu), s);
	}
	__device__ uint64_t out_index(uint64_t v) const { return v * 8; }
};

CAL_CUDA_OP(mxfp4_dequant)
{
	mxfp4_dq f = {a->packed, a->scales};
	return dequant_launch(be, f, cal_aligned(a->packed, 4), a->rows * a->cols / 8,
			      a->out_dtype, a->out, err);
}
