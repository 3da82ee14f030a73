/*
 * hessian.cu — GPTQ Hessian observer: h += X^T X over all or gathered rows.
 * One thread per output element of the upper triangle, 16x16 tiles (tiles
 * below the diagonal exit), rows staged through shared memory 32 at a
 * time; each thread sums its element with one __fmaf_rn per row in row
 * order, the order of the C reference (kernels/hessian.c), so the bytes
 * agree.  Out-of-range indices are skipped as there.
 */
#include "common.cuh"

#define HT 16 /* output tile */
#define HK 32 /* rows staged per step */

template <bool BF16>
__device__ static inline float hess_load(const void *x, uint64_t i)
{
	return BF16 ? cal_nf_bf16_to_f32(((const uint16_t *)x)[i]) : ((const float *)x)[i];
}

template <bool BF16>
__global__ void __launch_bounds__(HT * HT)
hessian_kernel(const void *x, uint64_t rows, uint64_t cols, const uint32_t *index, uint64_t n,
	       float *h)
{
	__shared__ float xi[HK][HT], xj[HK][HT];
	__shared__ int ok[HK];
	unsigned bi = blockIdx.y, bj = blockIdx.x;
	if (bi > bj)
		return;
	unsigned tx = threadIdx.x, ty = threadIdx.y, tid = ty * HT + tx;
	uint64_t i = (uint64_t)bi * HT + ty, j = (uint64_t)bj * HT + tx;
	float s = 0.0f;
	for (uint64_t t0 = 0; t0 < n; t0 += HK) {
		for (unsigned e = tid; e < HK * HT; e += HT * HT) {
			unsigned t = e / HT, c = e % HT;
			uint64_t r = index ? (t0 + t < n ? index[t0 + t] : rows) : t0 + t;
			bool valid = t0 + t < n && r < rows;
			uint64_t ci = (uint64_t)bi * HT + c, cj = (uint64_t)bj * HT + c;
			xi[t][c] = valid && ci < cols ? hess_load<BF16>(x, r * cols + ci) : 0.0f;
			xj[t][c] = valid && cj < cols ? hess_load<BF16>(x, r * cols + cj) : 0.0f;
			if (c == 0)
				ok[t] = valid;
		}
		__syncthreads();
		for (unsigned t = 0; t < HK; t++)
			if (ok[t])
				s = __fmaf_rn(xi[t][ty], xj[t][tx], s);
		__syncthreads();
	}
	if (i <= j && j < cols) {
		float v = cal_nan_canon(__fadd_rn(h[i * cols + j], s));
		h[i * cols + j] = v;
		h[j * cols + i] = v;
	}
}

CAL_CUDA_OP(hessian)
{
	uint64_t n = a->index ? a->n_index : a->rows;
	CAL_CUDA_OP_ENTER(!a->cols || !a->rows || !n);
	unsigned nt = (unsigned)((a->cols + HT - 1) / HT);
	dim3 grid(nt, nt), block(HT, HT);
	if (a->dtype == CAL_DTYPE_BF16)
		hessian_kernel<true><<<grid, block, 0, s>>>(a->x, a->rows, a->cols, a->index, n, a->h);
	else
		hessian_kernel<false><<<grid, block, 0, s>>>(a->x, a->rows, a->cols, a->index, n, a->h);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
