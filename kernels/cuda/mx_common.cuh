/*
 * mx_common.cuh — the MXFP8/MXFP4 block-quantize kernel: four lanes per
 * 32-block, 8 bf16 each (16-byte load), block max by two shuffles, E8M0
 * scale byte stored by the first lane of the group; MXFP8 lanes store 8
 * E4M3 bytes, MXFP4 lanes 4 packed bytes.
 */
#ifndef CAL_KERNELS_CUDA_MX_COMMON_CUH
#define CAL_KERNELS_CUDA_MX_COMMON_CUH

#include "common.cuh"

template <bool V, bool FP4>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
mx_kernel(const uint16_t *w, uint64_t nlanes, enum cal_div_mode div, uint8_t *q, uint8_t *scales)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	unsigned lane = threadIdx.x & 31;
	for (uint64_t v0 = (uint64_t)blockIdx.x * blockDim.x + (threadIdx.x & ~31u); v0 < nlanes;
	     v0 += stride) {
		uint64_t v = v0 + lane;
		float x[8];
		bool ok = cal_ld8_lane<V>(w, v, nlanes, x);
		float a = cal_group_max<4>(cal_block_absmax(x, 8));
		if (!ok)
			continue;
		uint8_t e = cal_mx_block_scale(a, FP4, div);
		float mul = e == 0xff ? __uint_as_float(0x7fc00000u) : cal_pow2f(127 - (int)e);
		if (FP4) {
			uint32_t p = 0;
#pragma unroll
			for (int k = 0; k < 8; k++)
				p |= cal_e2m1_encode_mxfp4(cal_fmul(x[k], mul)) << (4 * k);
			cal_st_bytes<V>(q + v * 4, p, 4);
		} else {
			uint64_t p = 0;
#pragma unroll
			for (int k = 0; k < 8; k++)
				p |= (uint64_t)cal_e4m3_encode(
					     cal_clamp_nan(cal_fmul(x[k], mul), -448.0f, 448.0f))
				     << (8 * k);
			cal_st_bytes<V>(q + v * 8, p, 8);
		}
		if ((lane & 3) == 0)
			scales[v / 4] = e;
	}
}

template <bool FP4>
static enum cal_status mx_launch(struct cal_backend *be, const uint16_t *w, uint64_t n,
				 enum cal_div_mode div, uint8_t *q, uint8_t *scales,
				 struct cal_error *err)
{
	CAL_CUDA_OP_ENTER(n == 0);
	uint64_t nlanes = n / 8;
	unsigned grid = cal_cuda_grid(be, nlanes);
	if (cal_aligned(w, 16) && cal_aligned(q, FP4 ? 4 : 8))
		mx_kernel<true, FP4><<<grid, CAL_CUDA_THREADS, 0, s>>>(w, nlanes, div, q, scales);
	else
		mx_kernel<false, FP4><<<grid, CAL_CUDA_THREADS, 0, s>>>(w, nlanes, div, q, scales);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}

#endif
