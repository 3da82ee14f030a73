/*
 * logit_kl.cu — per-row comparison of two models' logits (ops.h): one
 * block per row; each thread strides over the vocabulary, the block folds
 * in f64 through shared memory.  Three passes over the row (maxima, sums
 * of exponentials, KL); only 5 numbers per row are written.
 */
#include "common.cuh"

__device__ static inline double bf(uint16_t v)
{
	return (double)__uint_as_float((uint32_t)v << 16);
}

/* Block-wide sum of v (every thread gets it). */
__device__ static double block_sum(double v, double *sh)
{
	__syncthreads();
	sh[threadIdx.x] = v;
	__syncthreads();
	for (unsigned k = blockDim.x / 2; k >= 1; k /= 2) {
		if (threadIdx.x < k)
			sh[threadIdx.x] += sh[threadIdx.x + k];
		__syncthreads();
	}
	return sh[0];
}

/* Block-wide maximum and its first index (NaN never wins, as in the C
 * reference's `v > max`). */
__device__ static void block_argmax(double *v, uint32_t *i, double *sh, uint32_t *shi)
{
	__syncthreads();
	sh[threadIdx.x] = *v;
	shi[threadIdx.x] = *i;
	__syncthreads();
	for (unsigned k = blockDim.x / 2; k >= 1; k /= 2) {
		if (threadIdx.x < k) {
			double a = sh[threadIdx.x], b = sh[threadIdx.x + k];
			uint32_t ia = shi[threadIdx.x], ib = shi[threadIdx.x + k];
			if (b > a || (b == a && ib < ia)) {
				sh[threadIdx.x] = b;
				shi[threadIdx.x] = ib;
			}
		}
		__syncthreads();
	}
	*v = sh[0];
	*i = shi[0];
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
logit_kl_kernel(const uint16_t *lo_all, const uint16_t *lq_all, uint64_t rows, uint64_t V,
		const uint32_t *next, double *out, uint32_t *argmax)
{
	__shared__ double sh[CAL_CUDA_THREADS];
	__shared__ uint32_t shi[CAL_CUDA_THREADS];
	for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
		const uint16_t *lo = lo_all + r * V, *lq = lq_all + r * V;
		double mo = -(double)INFINITY, mq = -(double)INFINITY;
		uint32_t io = UINT32_MAX, iq = UINT32_MAX;
		for (uint64_t i = threadIdx.x; i < V; i += blockDim.x) {
			double a = bf(lo[i]), b = bf(lq[i]);
			if (a > mo) {
				mo = a;
				io = (uint32_t)i;
			}
			if (b > mq) {
				mq = b;
				iq = (uint32_t)i;
			}
		}
		block_argmax(&mo, &io, sh, shi);
		block_argmax(&mq, &iq, sh, shi);
		double so = 0, sq = 0;
		for (uint64_t i = threadIdx.x; i < V; i += blockDim.x) {
			so += exp(bf(lo[i]) - mo);
			sq += exp(bf(lq[i]) - mq);
		}
		so = block_sum(so, sh);
		sq = block_sum(sq, sh);
		double zo = mo + log(so), zq = mq + log(sq);
		double kl = 0;
		for (uint64_t i = threadIdx.x; i < V; i += blockDim.x) {
			double o = bf(lo[i]) - zo, q = bf(lq[i]) - zq;
			kl += exp(o) * (o - q);
		}
		kl = block_sum(kl, sh);
		if (threadIdx.x == 0) {
			uint32_t nx = next ? next[r] : UINT32_MAX;
			out[3 * r] = kl > 0 ? kl : 0;
			out[3 * r + 1] = nx < V ? zo - bf(lo[nx]) : 0;
			out[3 * r + 2] = nx < V ? zq - bf(lq[nx]) : 0;
			/* a row of NaNs: index 0, as the reference */
			argmax[2 * r] = io == UINT32_MAX ? 0 : io;
			argmax[2 * r + 1] = iq == UINT32_MAX ? 0 : iq;
		}
	}
}

CAL_CUDA_OP(logit_kl)
{
	CAL_CUDA_OP_ENTER(a->rows == 0);
	unsigned grid = a->rows < 65535 ? (unsigned)a->rows : 65535u;
	logit_kl_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(a->lo, a->lq, a->rows, a->vocab, a->next,
							  a->out, a->argmax);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
