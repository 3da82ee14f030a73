/*
 * hessian.cu — GPTQ Hessian observer: h += X^T X over all or gathered rows.
 * Register-tiled as an SGEMM without tensor cores: a 256-thread block per
 * 128 x 128 output tile of the upper triangle (tiles below the diagonal
 * exit), rows staged through shared memory HK at a time, each thread
 * keeping 8 x 8 running sums (rows ty + 16 a, columns tx + 16 b) in
 * registers.  Every element is still summed with one __fmaf_rn per row in
 * row order from +0, then added to h once, the order of the C reference
 * (kernels/hessian.c), so the bytes agree; only the number of elements a
 * thread carries changed (it was one, which left the kernel bound by
 * shared-memory loads).  Out-of-range indices are skipped as there.
 */
#include "common.cuh"

#define HT 128 /* output tile */
#define HR 8   /* sums per thread along each side */
#define HK 16  /* rows staged per step */

template <bool BF16>
__device__ static inline float hess_load(const void *x, uint64_t i)
{
	return BF16 ? cal_nf_bf16_to_f32(((const uint16_t *)x)[i]) : ((const float *)x)[i];
}

template <bool BF16>
__global__ void __launch_bounds__(256)
hessian_kernel(const void *x, uint64_t rows, uint64_t cols, const uint32_t *index, uint64_t n,
	       float *h)
{
	__shared__ float xi[HK][HT], xj[HK][HT];
	__shared__ int ok[HK];
	unsigned bi = blockIdx.y, bj = blockIdx.x;
	if (bi > bj)
		return;
	unsigned tx = threadIdx.x % 16, ty = threadIdx.x / 16, tid = threadIdx.x;
	uint64_t i0 = (uint64_t)bi * HT, j0 = (uint64_t)bj * HT;
	float s[HR][HR];
#pragma unroll
	for (int a = 0; a < HR; a++)
#pragma unroll
		for (int b = 0; b < HR; b++)
			s[a][b] = 0.0f;
	for (uint64_t t0 = 0; t0 < n; t0 += HK) {
		for (unsigned e = tid; e < HK * HT; e += 256) {
			unsigned t = e / HT, c = e % HT;
			uint64_t r = index ? (t0 + t < n ? index[t0 + t] : rows) : t0 + t;
			bool valid = t0 + t < n && r < rows;
			xi[t][c] = valid && i0 + c < cols ? hess_load<BF16>(x, r * cols + i0 + c) : 0.0f;
			xj[t][c] = valid && j0 + c < cols ? hess_load<BF16>(x, r * cols + j0 + c) : 0.0f;
			if (c == 0)
				ok[t] = valid;
		}
		__syncthreads();
		for (unsigned t = 0; t < HK; t++) {
			if (!ok[t])
				continue;
			float u[HR], v[HR];
#pragma unroll
			for (int a = 0; a < HR; a++) {
				u[a] = xi[t][ty + 16 * a];
				v[a] = xj[t][tx + 16 * a];
			}
#pragma unroll
			for (int a = 0; a < HR; a++)
#pragma unroll
				for (int b = 0; b < HR; b++)
					s[a][b] = __fmaf_rn(u[a], v[b], s[a][b]);
		}
		__syncthreads();
	}
#pragma unroll
	for (int a = 0; a < HR; a++)
#pragma unroll
		for (int b = 0; b < HR; b++) {
			uint64_t i = i0 + ty + 16 * a, j = j0 + tx + 16 * b;
			if (i <= j && j < cols) {
				float v = cal_nan_canon(__fadd_rn(h[i * cols + j], s[a][b]));
				h[i * cols + j] = v;
				h[j * cols + i] = v;
			}
		}
}

CAL_CUDA_OP(hessian)
{
	uint64_t n = a->index ? a->n_index : a->rows;
	CAL_CUDA_OP_ENTER(!a->cols || !a->rows || !n);
	unsigned nt = (unsigned)((a->cols + HT - 1) / HT);
	dim3 grid(nt, nt), block(256);
	if (a->dtype == CAL_DTYPE_BF16)
		hessian_kernel<true><<<grid, block, 0, s>>>(a->x, a->rows, a->cols, a->index, n, a->h);
	else
		hessian_kernel<false><<<grid, block, 0, s>>>(a->x, a->rows, a->cols, a->index, n, a->h);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
