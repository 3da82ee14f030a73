/*
 * amax_blocks.cu — running max|x| per block of 16/32/64/128 along the last
 * dim.  Aligned input: one lane per 16-byte vector, G = block/vector lanes
 * per block reduced with __shfl_xor_sync (loops advance whole warps), the
 * first lane of a group updates its block.  Unaligned input: one thread per
 * block, scalar loads (obs_items.cuh).  Non-finite counts reduce per thread
 * block.
 */
#include "obs_items.cuh"

template <bool BF16, int G>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
blocks_vec_kernel(const void *x, uint64_t nvec, uint64_t base, float *amax,
		  struct cal_nonfinite *nf)
{
	const unsigned vec = BF16 ? 8 : 4;
	cal_obs s;
	cal_obs_init(s);
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	unsigned lane = threadIdx.x & 31;
	for (uint64_t v0 = (uint64_t)blockIdx.x * blockDim.x + (threadIdx.x & ~31u); v0 < nvec;
	     v0 += stride) {
		uint64_t v = v0 + lane;
		bool ok = v < nvec;
		s.max_bits = 0;
		if (ok) {
			uint4 q = __ldg((const uint4 *)x + v);
			cal_obs_vec<BF16>(s, q, base + v * vec);
		}
		uint32_t m = s.max_bits;
#pragma unroll
		for (int o = G / 2; o > 0; o >>= 1) {
			uint32_t t = __shfl_xor_sync(CAL_FULL_MASK, m, o);
			m = t > m ? t : m;
		}
		if (ok && (lane % G) == 0) {
			float *p = amax + v / G;
			if ((int)m > (int)__float_as_uint(*p))
				*p = __uint_as_float(m);
		}
	}
	cal_obs_flush_nonfinite(s, nf);
}

template <bool BF16>
static void launch_vec(unsigned grid, cudaStream_t s, const struct cal_amax_blocks_args *a,
		       uint64_t nvec)
{
	const unsigned vec = BF16 ? 8 : 4;
	switch (a->block / vec) {
#define CASE(g)                                                                \
	case g:                                                                \
		blocks_vec_kernel<BF16, g><<<grid, CAL_CUDA_THREADS, 0, s>>>(  \
			a->x, nvec, a->index_base, a->amax, a->nonfinite);     \
		break;
		CASE(2)
		CASE(4)
		CASE(8)
		CASE(16)
		CASE(32)
#undef CASE
	default:
		break;
	}
}

CAL_CUDA_OP(amax_blocks)
{
	bool bf16 = a->dtype == CAL_DTYPE_BF16;
	uint64_t n = a->rows * a->cols;
	CAL_CUDA_OP_ENTER(n == 0);
	if (cal_aligned(a->x, 16)) {
		uint64_t nvec = n / (bf16 ? 8 : 4);
		unsigned grid = cal_cuda_grid(be, nvec);
		if (bf16)
			launch_vec<true>(grid, s, a, nvec);
		else
			launch_vec<false>(grid, s, a, nvec);
	} else {
		cal_obs_items_dev o = {a->x, n / a->block, a->block, 1, a->block, a->index_base,
				       a->amax, a->nonfinite};
		cal_obs_items_launch(be, s, bf16, o);
	}
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
