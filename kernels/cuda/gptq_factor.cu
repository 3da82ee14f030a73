/*
 * gptq_factor.cu — GPTQ's inverse factor U from Hessian sums (kernels/ops.h,
 * docs/gptq.md "Building blocks") on the back end's stream, per matrix:
 *   1. one thread sums H's diagonal in ascending order (the C reference's
 *      order, so damp has its bytes) and stores damp;
 *   2. the damped H, reversed (row i, column j from H[n-1-i][n-1-j]), with
 *      the reference's operations (__dmul_rn, __dadd_rn), so the matrix the
 *      factorisation sees is the CPU's byte for byte;
 *   3. cuSOLVER's f64 potrf and trtri in place.  cuSOLVER is column-major:
 *      the row-major symmetric matrix is its own transpose, and its upper
 *      factor R (A = R^T R) read row-major is the lower L (A = L L^T); the
 *      inverse of R read row-major is L^-1.  Their blocked order of terms
 *      is cuSOLVER's, not the column algorithms' of the chol_inv op: U
 *      agrees with the CPU's to a few f32 ulps, not byte for byte (the
 *      chol_inv op keeps the byte-equal kernels);
 *   4. U[i][j] = f32(L^-1[n-1-i][n-1-j]) (j >= i, else 0); bad when either
 *      call reported a failure (info != 0: not positive definite), an
 *      element is not finite or a diagonal one is not > 0.
 * Workspace from cudaMallocAsync on the stream, freed behind the work; the
 * op synchronises the stream before it returns only when cuSOLVER asked for
 * a host workspace (which must outlive the queued calls).
 */
#include <cusolverDn.h>

#include "common.cuh"

static enum cal_status solver_fail(struct cal_error *err, cusolverStatus_t s, const char *what)
{
	return cal_error_set(err, s == CUSOLVER_STATUS_ALLOC_FAILED ? CAL_ERR_NOMEM : CAL_ERR_DEVICE,
			     "cuSOLVER %s failed: status %d", what, (int)s);
}

#define SOLVER_TRY(call, what)                                                 \
	do {                                                                   \
		cusolverStatus_t ss_ = (call);                                 \
		if (ss_ != CUSOLVER_STATUS_SUCCESS) {                          \
			st = solver_fail(err, ss_, what);                      \
			goto out;                                              \
		}                                                              \
	} while (0)

extern "C" void cal_cuda_solver_fini(struct cal_backend *be)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	if (im && im->solver) {
		cusolverDnDestroy((cusolverDnHandle_t)im->solver);
		im->solver = NULL;
	}
}

__global__ void gf_damp_kernel(const float *hsum, const uint8_t *dead, const double *scale,
			       uint64_t n, double perc_damp, double *damp)
{
	double tr = 0.0, f = *scale;
	for (uint64_t k = 0; k < n; k++)
		tr = __dadd_rn(tr, dead[k] ? 1.0 : __dmul_rn(f, (double)hsum[k * n + k]));
	*damp = __ddiv_rn(__dmul_rn(perc_damp, tr), (double)n);
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
gf_build_kernel(const float *hsum, const uint8_t *dead, const double *scale, const double *damp,
		uint64_t n, double *a)
{
	const double f = *scale, d = *damp;
	for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n * n;
	     e += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t r = n - 1 - e / n, c = n - 1 - e % n; /* H's row and column */
		double v;
		if (dead[r] || dead[c])
			v = r == c ? 1.0 : 0.0;
		else
			v = __dmul_rn(f, (double)hsum[r * n + c]);
		a[e] = r == c ? __dadd_rn(v, d) : v;
	}
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
gf_out_kernel(const double *y, uint64_t n, const int *info, float *u, int32_t *bad)
{
	if (blockIdx.x == 0 && threadIdx.x == 0 && (info[0] != 0 || info[1] != 0))
		*bad = 1;
	for (uint64_t e = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n * n;
	     e += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t i = e / n, j = e % n;
		float v = j >= i ? __double2float_rn(y[(n - 1 - i) * n + (n - 1 - j)]) : 0.0f;
		u[e] = v;
		if (!isfinite(v) || (i == j && !(v > 0.0f)))
			*bad = 1;
	}
}

CAL_CUDA_OP(gptq_factor)
{
	CAL_CUDA_OP_ENTER(0);
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	const uint64_t n = a->n, nn = n * n;
	const uint32_t nb = a->batch ? a->batch : 1;
	enum cal_status st = CAL_OK;
	cusolverDnParams_t par = NULL;
	size_t dws = 0, hws = 0, dws2 = 0, hws2 = 0;
	void *dwork = NULL, *hwork = NULL;
	int *info = NULL;
	cusolverDnHandle_t h;
	if (!im->solver) {
		cusolverStatus_t cs = cusolverDnCreate(&h);
		if (cs != CUSOLVER_STATUS_SUCCESS)
			return solver_fail(err, cs, "cusolverDnCreate");
		im->solver = h;
	}
	h = (cusolverDnHandle_t)im->solver;
	SOLVER_TRY(cusolverDnSetStream(h, s), "cusolverDnSetStream");
	SOLVER_TRY(cusolverDnCreateParams(&par), "cusolverDnCreateParams");
	/* one workspace for every matrix */
	SOLVER_TRY(cusolverDnXpotrf_bufferSize(h, par, CUBLAS_FILL_MODE_UPPER, (int64_t)n,
					       CUDA_R_64F, a->work, (int64_t)n, CUDA_R_64F, &dws,
					       &hws),
		   "potrf_bufferSize");
	SOLVER_TRY(cusolverDnXtrtri_bufferSize(h, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT,
					       (int64_t)n, CUDA_R_64F, a->work, (int64_t)n, &dws2,
					       &hws2),
		   "trtri_bufferSize");
	dws = dws2 > dws ? dws2 : dws;
	hws = hws2 > hws ? hws2 : hws;
	if (hws && !(hwork = malloc(hws))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq_factor: %zu bytes of host workspace",
				   hws);
		goto out;
	}
	if (cudaMallocAsync(&dwork, dws + 2 * sizeof(int) * nb + 16, s) != cudaSuccess) {
		(void)cudaGetLastError();
		dwork = NULL;
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq_factor: %zu bytes of device workspace",
				   dws);
		goto out;
	}
	info = (int *)((char *)dwork + ((dws + 15) / 16) * 16);
	if (cudaMemsetAsync(a->bad, 0, nb * sizeof(int32_t), s) != cudaSuccess ||
	    cudaMemsetAsync(info, 0, 2 * sizeof(int) * nb, s) != cudaSuccess) {
		st = cal_cuda_fail(err, cudaGetLastError(), "cudaMemsetAsync", __FILE__, __LINE__);
		goto out;
	}
	for (uint32_t b = 0; b < nb; b++) {
		double *y = a->work; /* the matrices run one after the other on s */
		const float *hs = a->hsum + b * nn;
		const uint8_t *dd = a->dead + b * n;
		unsigned grid = cal_cuda_grid(be, nn);
		gf_damp_kernel<<<1, 1, 0, s>>>(hs, dd, a->scale + b, n, a->perc_damp, a->damp + b);
		gf_build_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(hs, dd, a->scale + b, a->damp + b,
								  n, y);
		if (cudaGetLastError() != cudaSuccess) {
			st = cal_error_set(err, CAL_ERR_DEVICE, "gptq_factor: a kernel launch failed");
			goto out;
		}
		SOLVER_TRY(cusolverDnXpotrf(h, par, CUBLAS_FILL_MODE_UPPER, (int64_t)n, CUDA_R_64F,
					    y, (int64_t)n, CUDA_R_64F, dwork, dws, hwork, hws,
					    info + 2 * b),
			   "potrf");
		SOLVER_TRY(cusolverDnXtrtri(h, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT,
					    (int64_t)n, CUDA_R_64F, y, (int64_t)n, dwork, dws,
					    hwork, hws, info + 2 * b + 1),
			   "trtri");
		gf_out_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(y, n, info + 2 * b, a->u + b * nn,
								a->bad + b);
		if (cudaGetLastError() != cudaSuccess) {
			st = cal_error_set(err, CAL_ERR_DEVICE, "gptq_factor: a kernel launch failed");
			goto out;
		}
	}
out:
	if (dwork)
		(void)cudaFreeAsync(dwork, s);
	/* cuSOLVER's host workspace must outlive the calls queued on s */
	if (hwork && cudaStreamSynchronize(s) != cudaSuccess && st >= 0)
		st = cal_cuda_fail(err, cudaGetLastError(), "cudaStreamSynchronize", __FILE__,
				   __LINE__);
	free(hwork);
	if (par)
		cusolverDnDestroyParams(par);
	return st;
}
