/*
 * int4_quant.cu — INT4 per-block (128) weight quantizer, packed along the
 * output dim (docs/numerics.md "INT4 blocks").  One lane per (row pair, 8
 * columns): two 16-byte loads (rows 2p and 2p+1), one 8-byte store of packed
 * bytes; the lane at a block's first column also stores the two block scales.
 */
#include "common.cuh"

template <bool V>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
int4_kernel(const uint16_t *w, uint64_t cols, uint64_t nlanes, const float *block_amax,
	    enum cal_div_mode div, uint8_t *packed, float *scales)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x, cl = cols / 8, nb = cols / 128;
	for (uint64_t v = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nlanes; v += stride) {
		uint64_t p = v / cl, c = (v % cl) * 8, b = c / 128;
		float x0[8], x1[8];
		cal_ld8_bf16<V>(w + 2 * p * cols + c, x0);
		cal_ld8_bf16<V>(w + (2 * p + 1) * cols + c, x1);
		float s0 = cal_int4_block_scale(__ldg(block_amax + 2 * p * nb + b), div);
		float s1 = cal_int4_block_scale(__ldg(block_amax + (2 * p + 1) * nb + b), div);
		float r0 = __frcp_rn(s0), r1 = __frcp_rn(s1);
		uint64_t r = 0;
#pragma unroll
		for (int k = 0; k < 8; k++)
			r |= (uint64_t)(cal_int4_from_quotient(cal_div_by(x0[k], s0, r0)) |
					cal_int4_from_quotient(cal_div_by(x1[k], s1, r1)) << 4)
			     << (8 * k);
		cal_st_bytes<V>(packed + p * cols + c, r, 8);
		if (c % 128 == 0) {
			scales[2 * p * nb + b] = s0;
			scales[(2 * p + 1) * nb + b] = s1;
		}
	}
}

CAL_CUDA_OP(int4_quant)
{
	uint64_t nlanes = a->rows / 2 * (a->cols / 8);
	CAL_CUDA_OP_ENTER(nlanes == 0);
	unsigned grid = cal_cuda_grid(be, nlanes);
	if (cal_aligned(a->w, 16) && cal_aligned(a->packed, 8))
		int4_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, a->cols, nlanes,
								  a->block_amax, a->div,
								  a->packed, a->scales);
	else
		int4_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, a->cols, nlanes,
								   a->block_amax, a->div,
								   a->packed, a->scales);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
