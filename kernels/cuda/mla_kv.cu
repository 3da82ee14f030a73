/*
 * mla_kv.cu — DeepSeek MLA keys and values per head (kernels/mla_kv.c):
 * one thread per output element of K and of V in a grid-stride loop.
 * Copies only: exact.
 */
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
mla_kv_kernel(const uint16_t *kv, const uint16_t *kpe, uint16_t *k, uint16_t *v, uint64_t t,
	      uint32_t nh, uint32_t dn, uint32_t dr, uint32_t dv)
{
	uint64_t kw = (uint64_t)dn + dr, kvw = (uint64_t)dn + dv;
	uint64_t nk = t * nh * kw, total = nk + t * nh * dv;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		if (i < nk) {
			uint64_t row = i / kw, c = i % kw; /* row = token * nh + head */
			k[i] = c < dn ? kv[row * kvw + c] : kpe[(row / nh) * dr + (c - dn)];
		} else {
			uint64_t j = i - nk, row = j / dv, c = j % dv;
			v[j] = kv[row * kvw + dn + c];
		}
	}
}

CAL_CUDA_OP(mla_kv)
{
	CAL_CUDA_OP_ENTER(a->t == 0);
	uint64_t total = a->t * a->nh * ((uint64_t)a->dn + a->dr + a->dv);
	mla_kv_kernel<<<cal_fwd_grid(be, total), CAL_CUDA_THREADS, 0, s>>>(
		a->kv, a->kpe, a->k, a->v, a->t, a->nh, a->dn, a->dr, a->dv);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
