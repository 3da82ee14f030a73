/*
 * moe_combine.cu — weighted un-permute and reduce of expert outputs; one
 * thread per (token, channel), grid-stride; the slot order (ascending
 * expert for EAGER) is recomputed per thread (k <= 64).
 */
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
combine_kernel(const uint16_t *y, const uint32_t *pair_pos, const uint32_t *idx, const float *w,
	       uint64_t t, uint64_t h, uint32_t k, uint32_t kt, int eager, uint16_t *out)
{
	uint64_t total = t * h;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t tok = i / h, c = i % h;
		const uint32_t *pp = pair_pos + tok * kt, *ex = idx + tok * kt;
		const float *wt = w + tok * k;
		float acc = 0.0f;
		uint32_t prev_e = 0, prev_s = 0;
		for (uint32_t n = 0; n < k; n++) {
			uint32_t s = 0;
			if (eager) {
				/* n-th slot in (expert, slot) order */
				uint32_t best = UINT32_MAX;
				for (uint32_t q = 0; q < k; q++) {
					bool after = n == 0 || ex[q] > prev_e || (ex[q] == prev_e && q > prev_s);
					if (after && (best == UINT32_MAX || ex[q] < ex[best]))
						best = q;
				}
				s = best;
				prev_e = ex[s];
				prev_s = s;
			} else {
				s = n;
			}
			float yv = cal_bf2f(y[(uint64_t)pp[s] * h + c]);
			if (eager)
				acc = cal_rbf(__fadd_rn(acc, cal_rbf(__fmul_rn(yv, wt[s]))));
			else
				acc = __fadd_rn(acc, __fmul_rn(yv, wt[s]));
		}
		out[i] = cal_f2bf(acc);
	}
}

extern "C" enum cal_status cal_cuda_moe_combine(struct cal_backend *be,
						const struct cal_moe_combine_args *a,
						struct cal_error *err)
{
	cudaStream_t s;
	enum cal_status st;
	if (a->t == 0 || a->h == 0)
		return CAL_OK;
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	combine_kernel<<<cal_fwd_grid(be, a->t * a->h), CAL_CUDA_THREADS, 0, s>>>(
		a->y, a->pair_pos, a->idx, a->weight, a->t, a->h, a->k, a->k_total,
		a->mode == CAL_COMBINE_EAGER, a->out);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
