/*
 * attention.cu — causal GQA attention over packed sequences without an
 * [S, S] matrix: one warp per (query row, head), 4 warps per block.
 * Pass 1 walks the visible keys in chunks of 32 (one key per lane, full
 * dot product against q held in shared memory) keeping the running max m
 * and normaliser l (online rescaling); pass 2 recomputes the scores,
 * forms p = bf16(exp(s - m) / l) and accumulates p v with lanes over the
 * channels (hd <= 512, so at most 16 channels per lane).  Rows without a
 * visible key write zeros.
 */
#include <math.h>

#include "fwd_common.cuh"

#define AT_WARPS 4
#define AT_MAX_HD 512

__device__ __forceinline__ uint32_t at_seq_of(const uint32_t *cu, uint32_t n_seq, uint64_t i)
{
	uint32_t lo = 0, hi = n_seq;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (cu[mid] <= i)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

__device__ __forceinline__ float at_dot(const float *q, const uint16_t *k, uint32_t hd)
{
	float d = 0.0f;
	for (uint32_t c = 0; c < hd; c++)
		d = __fadd_rn(d, __fmul_rn(q[c], cal_bf2f(k[c])));
	return d;
}

__global__ void __launch_bounds__(AT_WARPS * 32)
attn_kernel(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out, uint64_t t,
	    uint32_t nh, uint32_t nkv, uint32_t hd, const uint32_t *cu, uint32_t n_seq,
	    const uint32_t *key_start, uint32_t window, float scale)
{
	__shared__ float qs[AT_WARPS][AT_MAX_HD];
	unsigned lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
	uint64_t items = t * nh, warps = (uint64_t)gridDim.x * AT_WARPS;
	uint32_t group = nh / nkv;
	for (uint64_t it = (uint64_t)blockIdx.x * AT_WARPS + wi; it < items; it += warps) {
		uint64_t i = it / nh;
		uint32_t h = (uint32_t)(it % nh), kvh = h / group;
		uint32_t s = at_seq_of(cu, n_seq, i);
		uint64_t lo = cu[s] + (key_start ? key_start[s] : 0);
		if (window && i + 1 > window && i + 1 - window > lo)
			lo = i + 1 - window;
		uint16_t *o = out + (i * nh + h) * hd;
		if (lo > i) {
			for (uint32_t c = lane; c < hd; c += 32)
				o[c] = 0;
			continue;
		}
		const uint16_t *qr = q + (i * nh + h) * hd;
		for (uint32_t c = lane; c < hd; c += 32)
			qs[wi][c] = cal_bf2f(qr[c]);
		__syncwarp();
		float m = -INFINITY, l = 0.0f;
		for (uint64_t j0 = lo; j0 <= i; j0 += 32) {
			uint64_t j = j0 + lane;
			float sv = -INFINITY;
			if (j <= i)
				sv = __fmul_rn(at_dot(qs[wi], k + (j * nkv + kvh) * hd, hd), scale);
			float cm = sv;
			for (int off = 16; off > 0; off >>= 1)
				cm = fmaxf(cm, __shfl_xor_sync(CAL_FULL_MASK, cm, off));
			float mn = fmaxf(m, cm);
			float e = j <= i ? expf(sv - mn) : 0.0f;
			for (int off = 16; off > 0; off >>= 1)
				e += __shfl_xor_sync(CAL_FULL_MASK, e, off);
			l = (m == -INFINITY ? 0.0f : l * expf(m - mn)) + e;
			m = mn;
		}
		float acc[AT_MAX_HD / 32];
#pragma unroll
		for (int c = 0; c < AT_MAX_HD / 32; c++)
			acc[c] = 0.0f;
		for (uint64_t j0 = lo; j0 <= i; j0 += 32) {
			uint64_t j = j0 + lane;
			float p = 0.0f;
			if (j <= i) {
				float sv = __fmul_rn(at_dot(qs[wi], k + (j * nkv + kvh) * hd, hd), scale);
				p = cal_rbf(expf(sv - m) / l);
			}
			uint32_t nk = (uint32_t)(i - j0 + 1 < 32 ? i - j0 + 1 : 32);
			for (uint32_t tk = 0; tk < nk; tk++) {
				float pt = __shfl_sync(CAL_FULL_MASK, p, tk);
				const uint16_t *vr = v + ((j0 + tk) * nkv + kvh) * hd;
#pragma unroll
				for (int c = 0; c < AT_MAX_HD / 32; c++) {
					uint32_t ch = lane + 32u * c;
					if (ch < hd)
						acc[c] = __fadd_rn(acc[c], __fmul_rn(pt, cal_bf2f(vr[ch])));
				}
			}
		}
#pragma unroll
		for (int c = 0; c < AT_MAX_HD / 32; c++) {
			uint32_t ch = lane + 32u * c;
			if (ch < hd)
				o[ch] = cal_f2bf(acc[c]);
		}
		__syncwarp();
	}
}

extern "C" enum cal_status cal_cuda_attention(struct cal_backend *be,
					      const struct cal_attention_args *a,
					      struct cal_error *err)
{
	cudaStream_t s;
	enum cal_status st;
	if (a->t == 0)
		return CAL_OK;
	if (a->hd > AT_MAX_HD)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "attention: head_dim %u > %d on CUDA", a->hd, AT_MAX_HD);
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	const struct cal_cuda_impl *im = (const struct cal_cuda_impl *)be->impl;
	uint64_t blocks = (a->t * a->nh + AT_WARPS - 1) / AT_WARPS;
	if (blocks > (uint64_t)im->sms * 64)
		blocks = (uint64_t)im->sms * 64;
	attn_kernel<<<(unsigned)blocks, AT_WARPS * 32, 0, s>>>(a->q, a->k, a->v, a->out, a->t, a->nh,
							       a->nkv, a->hd, a->cu_seqlens,
							       a->n_seq, a->key_start, a->window,
							       a->scale);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
