/*
 * moe_combine.cu — weighted un-permute and reduce of expert outputs.  One
 * warp per token (8 per block, grid-stride): the lanes first put the k
 * slots in summation order (ascending (expert, slot) for EAGER, slot order
 * for F32) with their weight and row in shared memory (k <= 64), then
 * walk the channels, 8 per lane with 16-byte loads and stores when h % 8
 * == 0 and the pointers are aligned (one channel per lane otherwise).
 */
#include "fwd_common.cuh"

#define CB_WARPS 8
#define CB_MAXK 64

template <bool V>
__global__ void __launch_bounds__(CB_WARPS * 32)
combine_kernel(const uint16_t *y, const uint32_t *pair_pos, const uint32_t *idx, const float *w,
	       uint64_t t, uint64_t h, uint32_t k, uint32_t kt, int eager, uint16_t *out)
{
	__shared__ float sw[CB_WARPS][CB_MAXK];
	__shared__ uint32_t srow[CB_WARPS][CB_MAXK];
	unsigned lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
	uint64_t warps = (uint64_t)gridDim.x * CB_WARPS;
	for (uint64_t tok = (uint64_t)blockIdx.x * CB_WARPS + wi; tok < t; tok += warps) {
		const uint32_t *pp = pair_pos + tok * kt, *ex = idx + tok * kt;
		const float *wt = w + tok * k;
		for (uint32_t s = lane; s < k; s += 32) {
			uint32_t rank = s;
			if (eager) {
				rank = 0;
				uint32_t es = ex[s];
				for (uint32_t q = 0; q < k; q++) {
					uint32_t eq = ex[q];
					rank += eq < es || (eq == es && q < s);
				}
			}
			sw[wi][rank] = wt[s];
			srow[wi][rank] = pp[s];
		}
		__syncwarp();
		uint16_t *o = out + tok * h;
		if (V) {
			for (uint64_t c = (uint64_t)lane * 8; c < h; c += 256) {
				float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, yv[8];
				for (uint32_t n = 0; n < k; n++) {
					float wn = sw[wi][n];
					cal_ld8_bf16<true>(y + (uint64_t)srow[wi][n] * h + c, yv);
#pragma unroll
					for (int e = 0; e < 8; e++)
						acc[e] = eager ? cal_rbf(__fadd_rn(acc[e], cal_rbf(__fmul_rn(yv[e], wn))))
							       : __fadd_rn(acc[e], __fmul_rn(yv[e], wn));
				}
				cal_st8_out<true>(CAL_DTYPE_BF16, o, c, acc);
			}
		} else {
			for (uint64_t c = lane; c < h; c += 32) {
				float acc = 0.0f;
				for (uint32_t n = 0; n < k; n++) {
					float yv = cal_bf2f(y[(uint64_t)srow[wi][n] * h + c]), wn = sw[wi][n];
					acc = eager ? cal_rbf(__fadd_rn(acc, cal_rbf(__fmul_rn(yv, wn))))
						    : __fadd_rn(acc, __fmul_rn(yv, wn));
				}
				o[c] = cal_f2bf(acc);
			}
		}
		__syncwarp();
	}
}

CAL_CUDA_OP(moe_combine)
{
	cudaStream_t s;
	enum cal_status st;
	if (a->t == 0 || a->h == 0)
		return CAL_OK;
	if (a->k > CB_MAXK)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "moe_combine: k %u > %d on CUDA", a->k,
				     CB_MAXK);
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	const struct cal_cuda_impl *im = (const struct cal_cuda_impl *)be->impl;
	uint64_t blocks = (a->t + CB_WARPS - 1) / CB_WARPS;
	if (blocks > (uint64_t)im->sms * 32)
		blocks = (uint64_t)im->sms * 32;
	int eager = a->mode == CAL_COMBINE_EAGER;
	if (a->h % 8 == 0 && cal_aligned(a->y, 16) && cal_aligned(a->out, 16))
		combine_kernel<true><<<(unsigned)blocks, CB_WARPS * 32, 0, s>>>(
			a->y, a->pair_pos, a->idx, a->weight, a->t, a->h, a->k, a->k_total, eager, a->out);
	else
		combine_kernel<false><<<(unsigned)blocks, CB_WARPS * 32, 0, s>>>(
			a->y, a->pair_pos, a->idx, a->weight, a->t, a->h, a->k, a->k_total, eager, a->out);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
