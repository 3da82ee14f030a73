/*
 * nvfp4_common.cuh — the NVFP4 block-quantize kernel shared by nvfp4_quant.cu
 * (dynamic: block scale from max|block| and S2) and nvfp4_static_quant.cu
 * (static: block scale from the calibrated block amax).  Two lanes per
 * 16-block, 8 bf16 each (one 16-byte load), block max by one shuffle, each
 * lane stores its 4 packed bytes (coalesced 128 bytes per warp) and the
 * even lane the scale byte.
 */
#ifndef CAL_KERNELS_CUDA_NVFP4_COMMON_CUH
#define CAL_KERNELS_CUDA_NVFP4_COMMON_CUH

#include "common.cuh"

template <bool V, bool STATIC>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
nvfp4_kernel(const uint16_t *w, uint64_t nlanes, float s2, const float *block_amax, float g,
	     float m, enum cal_div_mode div, uint8_t *packed, uint8_t *scales)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	unsigned lane = threadIdx.x & 31;
	float d = cal_fmul(6.0f, s2);
	for (uint64_t v0 = (uint64_t)blockIdx.x * blockDim.x + (threadIdx.x & ~31u); v0 < nlanes;
	     v0 += stride) {
		uint64_t v = v0 + lane;
		bool ok = v < nlanes;
		float x[8];
		if (ok) {
			cal_ld8_bf16<V>(w + v * 8, x);
		} else {
#pragma unroll
			for (int k = 0; k < 8; k++)
				x[k] = 0.0f;
		}
		uint8_t e;
		if (STATIC) {
			e = ok ? cal_nvfp4_static_block_scale(__ldg(block_amax + v / 2), g, m, div) : 0;
		} else {
			float a = cal_group_max<2>(cal_block_absmax(x, 8));
			e = cal_nvfp4_block_scale(a, d);
		}
		if (!ok)
			continue;
		float t = cal_fmul(cal_e4m3_decode(e), s2);
		float r = __frcp_rn(t);
		uint32_t p = 0;
#pragma unroll
		for (int k = 0; k < 8; k++)
			p |= cal_e2m1_encode_nvfp4(cal_div_by(x[k], t, r)) << (4 * k);
		cal_st_bytes<V>(packed + v * 4, p, 4);
		if ((lane & 1) == 0)
			scales[v / 2] = e;
	}
}

template <bool STATIC>
static enum cal_status nvfp4_launch(struct cal_backend *be, const uint16_t *w, uint64_t n,
				    float s2, const float *block_amax, float g, float m,
				    enum cal_div_mode div, uint8_t *packed, uint8_t *scales,
				    struct cal_error *err)
{
	cudaStream_t s;
	enum cal_status st;
	if (n == 0)
		return CAL_OK;
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	uint64_t nlanes = n / 8;
	unsigned grid = cal_cuda_grid(be, nlanes);
	if (cal_aligned(w, 16) && cal_aligned(packed, 4))
		nvfp4_kernel<true, STATIC><<<grid, CAL_CUDA_THREADS, 0, s>>>(
			w, nlanes, s2, block_amax, g, m, div, packed, scales);
	else
		nvfp4_kernel<false, STATIC><<<grid, CAL_CUDA_THREADS, 0, s>>>(
			w, nlanes, s2, block_amax, g, m, div, packed, scales);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}

#endif
