/*
 * nvfp4_dequant.cu — NVFP4 dequantize: out = fl32(fl32(e2m1 * e4m3) * S2).
 * One lane per 8 outputs (4 packed bytes, one scale byte per block / 8 lanes).
 */
#include "dequant_common.cuh"

struct nvfp4_dq {
	const uint8_t *packed, *scales;
	float s2;
	unsigned lanes_per_scale; /* block / 8 */
	template <bool V>
	__device__ void decode(uint64_t v, float *o) const
	{
		uint32_t p = (uint32_t)cal_ld_bytes<V>(packed + v * 4, 4);
		float s = cal_e4m3_decode(__ldg(scales + v / lanes_per_scale));
#pragma unroll
		for (int k = 0; k < 8; k++)
			o[k] = cal_fmul(cal_fmul(cal_e2m1_decode((p >> (4 * k)) & 0xfu), s), s2);
	}
	__device__ uint64_t out_index(uint64_t v) const { return v * 8; }
};

CAL_CUDA_OP(nvfp4_dequant)
{
	nvfp4_dq f = {a->packed, a->scales, a->scale2, (a->block ? a->block : 16u) / 8u};
	return dequant_launch(be, f, cal_aligned(a->packed, 4), a->rows * a->cols / 8,
			      a->out_dtype, a->out, err);
}
