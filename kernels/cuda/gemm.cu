/*
 * gemm.cu — y = bf16(x W^T (+ bias)) through cuBLAS (cublasGemmEx, bf16
 * inputs and output, CUBLAS_COMPUTE_32F, reduced-precision reductions
 * disallowed).  A bias is broadcast into y first and added by the GEMM with
 * beta = 1, so acc + bias is rounded once, as torch's addmm does (with
 * bias_after_round the GEMM writes bf16(acc) and a second kernel adds the
 * bias, y = bf16(y + b), as `x @ W + b` does in two bf16 ops).  Grouped
 * GEMMs run one GEMM per non-empty group, with the caller's host copy of
 * the offsets when given (no sync), else after downloading them (one
 * stream sync).  The cuBLAS handle is created on first use and kept in
 * the back end (struct cal_cuda_impl::blas), destroyed by
 * cal_cuda_gemm_fini() when the back end is freed.
 */
#include <cublas_v2.h>
#include <stdlib.h>

#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
bias_fill_kernel(uint16_t *y, const uint16_t *bias, uint64_t rows, uint64_t n)
{
	uint64_t total = rows * n;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x)
		y[i] = bias[i % n];
}

static enum cal_status blas_fail(struct cal_error *err, cublasStatus_t s, const char *what)
{
	return cal_error_set(err, s == CUBLAS_STATUS_ALLOC_FAILED ? CAL_ERR_NOMEM : CAL_ERR_DEVICE,
			     "cuBLAS %s failed: status %d", what, (int)s);
}

static enum cal_status blas_handle(struct cal_backend *be, cudaStream_t s, cublasHandle_t *ret,
				   struct cal_error *err)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	cublasStatus_t bs;
	if (!im->blas) {
		cublasHandle_t h;
		if ((bs = cublasCreate(&h)) != CUBLAS_STATUS_SUCCESS)
			return blas_fail(err, bs, "cublasCreate");
		bs = cublasSetMathMode(h, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
				       CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
		if (bs != CUBLAS_STATUS_SUCCESS) {
			cublasDestroy(h);
			return blas_fail(err, bs, "cublasSetMathMode");
		}
		im->blas = h;
	}
	*ret = (cublasHandle_t)im->blas;
	if ((bs = cublasSetStream(*ret, s)) != CUBLAS_STATUS_SUCCESS)
		return blas_fail(err, bs, "cublasSetStream");
	return CAL_OK;
}

extern "C" void cal_cuda_gemm_fini(struct cal_backend *be)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	if (im && im->blas) {
		cublasDestroy((cublasHandle_t)im->blas);
		im->blas = NULL;
	}
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
bias_add_kernel(uint16_t *y, const uint16_t *bias, uint64_t rows, uint64_t n)
{
	uint64_t total = rows * n;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x)
		y[i] = cal_f2bf(__fadd_rn(cal_bf2f(y[i]), cal_bf2f(bias[i % n])));
}

/* One GEMM over rows [r0, r1) with weight w and bias b. */
static enum cal_status gemm_one(struct cal_backend *be, cublasHandle_t h, cudaStream_t s,
				const struct cal_gemm_args *a, uint64_t r0, uint64_t r1,
				const uint16_t *w, const uint16_t *b, struct cal_error *err)
{
	uint64_t m = r1 - r0;
	float alpha = 1.0f, beta = 0.0f;
	uint16_t *y = a->y + r0 * a->n;
	if (m == 0)
		return CAL_OK;
	if (a->n > INT32_MAX || a->k > INT32_MAX || m > INT32_MAX)
		return cal_error_set(err, CAL_ERR_RANGE, "gemm: dimension exceeds 2^31-1 for cuBLAS");
	if (b && !a->bias_after_round) {
		bias_fill_kernel<<<cal_fwd_grid(be, m * a->n), CAL_CUDA_THREADS, 0, s>>>(y, b, m, a->n);
		CAL_CUDA_LAUNCHED();
		beta = 1.0f;
	}
	/* column-major view: y^T [n, m] = W [n, k] (stored k x n, op T) * x^T [k, m] */
	cublasStatus_t bs = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)a->n, (int)m, (int)a->k,
					 &alpha, w, CUDA_R_16BF, (int)a->k, a->x + r0 * a->k,
					 CUDA_R_16BF, (int)a->k, &beta, y, CUDA_R_16BF, (int)a->n,
					 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	if (bs != CUBLAS_STATUS_SUCCESS)
		return blas_fail(err, bs, "cublasGemmEx");
	if (b && a->bias_after_round) {
		bias_add_kernel<<<cal_fwd_grid(be, m * a->n), CAL_CUDA_THREADS, 0, s>>>(y, b, m, a->n);
		CAL_CUDA_LAUNCHED();
	}
	return CAL_OK;
}

CAL_CUDA_OP(gemm)
{
	cudaStream_t s;
	cublasHandle_t h = NULL;
	enum cal_status st;
	if (a->m == 0 || a->n == 0)
		return CAL_OK;
	if ((st = cal_cuda_enter(be, &s, err)) < 0 || (st = blas_handle(be, s, &h, err)) < 0)
		return st;
	if (a->n_groups <= 1)
		return gemm_one(be, h, s, a, 0, a->m, a->w, a->bias, err);
	uint32_t *off = NULL;
	const uint32_t *ho = a->host_offsets;
	if (!ho) {
		off = (uint32_t *)malloc(((size_t)a->n_groups + 1) * sizeof(uint32_t));
		if (!off)
			return cal_error_set(err, CAL_ERR_NOMEM, "gemm: out of memory");
		cudaError_t e = cudaMemcpyAsync(off, a->offsets,
						((size_t)a->n_groups + 1) * sizeof(uint32_t),
						cudaMemcpyDeviceToHost, s);
		if (e == cudaSuccess)
			e = cudaStreamSynchronize(s);
		if (e != cudaSuccess) {
			free(off);
			return cal_cuda_fail(err, e, "gemm offsets download", __FILE__, __LINE__);
		}
		ho = off;
	}
	st = CAL_OK;
	for (uint32_t g = 0; g < a->n_groups && st >= 0; g++) {
		if (ho[g] > ho[g + 1] || ho[g + 1] > a->m) {
			st = cal_error_set(err, CAL_ERR_INVALID,
					   "offsets[%u..%u] = %u, %u: decreasing or beyond m", g, g + 1,
					   ho[g], ho[g + 1]);
			break;
		}
		st = gemm_one(be, h, s, a, ho[g], ho[g + 1], a->w + (uint64_t)g * a->w_stride,
			      a->bias ? a->bias + (uint64_t)g * a->bias_stride : NULL, err);
	}
	free(off);
	return st;
}
