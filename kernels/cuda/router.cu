/*
 * router.cu — softmax(fp32) + top-k (+ renorm); one warp per token, the
 * probabilities of the token in shared memory (4 warps per block,
 * dynamic shared memory 4 * e floats, e <= 8192).  Each top-k round is a
 * warp arg-max with ties to the lower expert index.  gpt_oss mode
 * (CAL_ROUTER_MODE_TOPK_SOFTMAX): the arg-max rounds run on the logits and
 * lane 0 takes the softmax over the k picked, each weight rounded to bf16
 * (as kernels/router.c).  bf16_weights: lane 0 rounds the k weights of the
 * softmax-then-top-k mode to bf16 after the renormalisation.
 */
#include <math.h>

#include "fwd_common.cuh"

#define RT_WARPS 4

__global__ void __launch_bounds__(RT_WARPS * 32)
router_kernel(const uint16_t *logits, uint64_t t, uint32_t e, uint32_t k, uint32_t kt, int renorm,
	      uint32_t *idx, float *weight, int topk_first, int bf16_weights)
{
	extern __shared__ float sh[];
	unsigned lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
	float *prob = sh + (uint64_t)wi * e;
	uint64_t warps = (uint64_t)gridDim.x * RT_WARPS;
	for (uint64_t tok = (uint64_t)blockIdx.x * RT_WARPS + wi; tok < t; tok += warps) {
		const uint16_t *l = logits + tok * e;
		float mx = -INFINITY;
		for (uint32_t i = lane; i < e; i += 32) {
			float v = cal_bf2f(l[i]);
			prob[i] = v;
			mx = fmaxf(mx, v);
		}
		for (int o = 16; o > 0; o >>= 1)
			mx = fmaxf(mx, __shfl_xor_sync(CAL_FULL_MASK, mx, o));
		if (!topk_first) {
			float sum = 0.0f;
			for (uint32_t i = lane; i < e; i += 32) {
				float v = expf(prob[i] - mx);
				prob[i] = v;
				sum += v;
			}
			for (int o = 16; o > 0; o >>= 1)
				sum += __shfl_xor_sync(CAL_FULL_MASK, sum, o);
			for (uint32_t i = lane; i < e; i += 32)
				prob[i] = prob[i] / sum;
		}
		__syncwarp();
		float wsum = 0.0f;
		for (uint32_t s = 0; s < kt; s++) {
			float bv = -INFINITY;
			uint32_t bi = UINT32_MAX;
			for (uint32_t i = lane; i < e; i += 32) {
				float v = prob[i];
				if (bi == UINT32_MAX || v > bv) {
					bv = v;
					bi = i;
				}
			}
			for (int o = 16; o > 0; o >>= 1) {
				float ov = __shfl_xor_sync(CAL_FULL_MASK, bv, o);
				uint32_t oi = __shfl_xor_sync(CAL_FULL_MASK, bi, o);
				if (oi != UINT32_MAX && (bi == UINT32_MAX || ov > bv || (ov == bv && oi < bi))) {
					bv = ov;
					bi = oi;
				}
			}
			if (lane == 0) {
				idx[tok * kt + s] = bi;
				if (s < k)
					weight[tok * k + s] = bv;
				prob[bi] = -INFINITY;
			}
			if (s < k)
				wsum += bv;
			__syncwarp();
		}
		if (topk_first && lane == 0) {
			/* softmax over the k picked logits (slot order), bf16 weights */
			float m = weight[tok * k], ws = 0.0f;
			for (uint32_t s = 1; s < k; s++)
				m = fmaxf(m, weight[tok * k + s]);
			for (uint32_t s = 0; s < k; s++) {
				float v = expf(weight[tok * k + s] - m);
				weight[tok * k + s] = v;
				ws += v;
			}
			for (uint32_t s = 0; s < k; s++)
				weight[tok * k + s] = cal_rbf(weight[tok * k + s] / ws);
		} else if (renorm && lane == 0) {
			/* sum in slot order, as the reference */
			float ws = 0.0f;
			for (uint32_t s = 0; s < k; s++)
				ws += weight[tok * k + s];
			for (uint32_t s = 0; s < k; s++)
				weight[tok * k + s] = weight[tok * k + s] / ws;
		}
		if (!topk_first && bf16_weights && lane == 0)
			for (uint32_t s = 0; s < k; s++)
				weight[tok * k + s] = cal_rbf(weight[tok * k + s]);
		(void)wsum;
		__syncwarp();
	}
}

CAL_CUDA_OP(router)
{
	cudaStream_t s;
	enum cal_status st;
	if (a->t == 0)
		return CAL_OK;
	if (a->e > 8192)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "router: more than 8192 experts on CUDA");
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	size_t shm = (size_t)RT_WARPS * a->e * sizeof(float);
	if (shm > 48 * 1024)
		CAL_CUDA_TRY(cudaFuncSetAttribute(router_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
						  (int)shm));
	uint64_t blocks = (a->t + RT_WARPS - 1) / RT_WARPS;
	const struct cal_cuda_impl *im = (const struct cal_cuda_impl *)be->impl;
	if (blocks > (uint64_t)im->sms * 32)
		blocks = (uint64_t)im->sms * 32;
	router_kernel<<<(unsigned)blocks, RT_WARPS * 32, shm, s>>>(a->logits, a->t, a->e, a->k,
								    a->k_total, a->renorm, a->idx,
								    a->weight,
								    a->mode == CAL_ROUTER_MODE_TOPK_SOFTMAX,
								    a->bf16_weights);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
