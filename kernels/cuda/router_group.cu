/*
 * router_group.cu — the DeepSeek-V3 router (kernels/router_group.c).
 * Logits: tiles of 32 experts x 8 tokens per block, 32-column slices of x
 * and w staged in shared memory, each thread summing its dot product in
 * column order with separately rounded products and sums (no FMA), as the
 * C reference does, so both back ends see the same fp32 logits; then the
 * sigmoid.  Selection: one thread per token running the shared code of
 * kernels/router_group.h on the token's scores in global memory.
 */
#include <math.h>

#include "fwd_common.cuh"
#include "kernels/router_group.h"

#define RG_TE 32
#define RG_TT 8
#define RG_TK 32

__global__ void __launch_bounds__(RG_TE * RG_TT)
rg_logits(const uint16_t *x, const float *w, uint64_t t, uint64_t h, uint32_t e, float *s)
{
	__shared__ float xs[RG_TT][RG_TK];
	__shared__ float ws[RG_TE][RG_TK + 1];
	uint32_t tx = threadIdx.x, ty = threadIdx.y;
	uint64_t i = (uint64_t)blockIdx.x * RG_TE + tx, tok = (uint64_t)blockIdx.y * RG_TT + ty;
	float d = 0.0f;
	for (uint64_t j0 = 0; j0 < h; j0 += RG_TK) {
		uint64_t tk = (uint64_t)blockIdx.y * RG_TT + ty;
		xs[ty][tx] = tk < t && j0 + tx < h ? cal_bf2f(x[tk * h + j0 + tx]) : 0.0f;
		for (uint32_t r = ty; r < RG_TE; r += RG_TT) {
			uint64_t ie = (uint64_t)blockIdx.x * RG_TE + r;
			ws[r][tx] = ie < e && j0 + tx < h ? w[ie * h + j0 + tx] : 0.0f;
		}
		__syncthreads();
		uint64_t n = h - j0 < RG_TK ? h - j0 : RG_TK;
		for (uint32_t jj = 0; jj < n; jj++)
			d = __fadd_rn(d, __fmul_rn(xs[ty][jj], ws[tx][jj]));
		__syncthreads();
	}
	if (i < e && tok < t)
		s[tok * e + i] = cal_rg_sigmoid(d);
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
rg_select(float *s, const float *bias, uint64_t t, uint32_t e, uint32_t k, uint32_t kt,
	  uint32_t n_group, uint32_t topk_group, int renorm, float scaling, uint32_t *idx,
	  float *weight)
{
	for (uint64_t tok = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; tok < t;
	     tok += (uint64_t)gridDim.x * blockDim.x)
		cal_rg_select(s + tok * e, bias, e, k, kt, n_group, topk_group, renorm, scaling,
			      idx + tok * kt, weight + tok * k);
}

CAL_CUDA_OP(router_group)
{
	cudaStream_t s;
	enum cal_status st;
	if (a->t == 0)
		return CAL_OK;
	uint64_t by = (a->t + RG_TT - 1) / RG_TT;
	if (by > 65535u * 1024u)
		return cal_error_set(err, CAL_ERR_RANGE, "router_group: %llu tokens is too many",
				     (unsigned long long)a->t);
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	for (uint64_t y0 = 0; y0 < by; y0 += 65535) {
		/* grid.y is limited to 65535: token tiles in slices */
		uint64_t ny = by - y0 < 65535 ? by - y0 : 65535;
		uint64_t t0 = y0 * RG_TT, tn = a->t - t0;
		dim3 grid((a->e + RG_TE - 1) / RG_TE, (unsigned)ny), block(RG_TE, RG_TT);
		rg_logits<<<grid, block, 0, s>>>(a->x + t0 * a->h, a->w, tn, a->h, a->e,
						 a->logits + t0 * a->e);
		CAL_CUDA_LAUNCHED();
	}
	rg_select<<<cal_fwd_grid(be, a->t), CAL_CUDA_THREADS, 0, s>>>(
		a->logits, a->bias, a->t, a->e, a->k, a->k_total, a->n_group, a->topk_group, a->renorm,
		a->scaling, a->idx, a->weight);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
