/*
 * chol_inv.cu — GPTQ's f64 Cholesky factor and its inverse (kernels/ops.h,
 * docs/gptq.md) on the back end's stream.  Not cuSOLVER: potrf / trtri
 * block and fuse multiply-adds in an order of their own (and of their
 * version), which the host cannot reproduce; these kernels compute every
 * element with the C reference's operations in its order
 * (kernels/chol_inv.c: __dmul_rn / __dsub_rn / __dadd_rn / __ddiv_rn /
 * __dsqrt_rn, never contracted), so both back ends give the same bytes.
 *
 * Per block of 32 columns j0 .. j1-1: the block's rows go into a panel
 * (panel[k][j] = L[j0 + j][k], k < j0); a warp per row of the block runs
 * each of its elements' sums over k < j0 (lane j: column j0 + j, the panel
 * read coalesced, L[i][k] broadcast) and leaves the running sum in place;
 * one 32-thread block continues them column by column from k = j0 (the
 * diagonal, then the rows below it in the block) — at most 31 terms each,
 * so the long sums run in parallel; then a warp per row below the block:
 * lane j runs the row's sum for column j0 + j over k < j0, then the lanes
 * take the block's columns in turn (k from j0, the lanes before it done)
 * and divide.  A running sum stored and reloaded is the same double, so
 * the terms and their order are the column algorithm's.
 *
 * Inverse: a 32 x 32 thread block per panel of 32 columns c0 .. c0+31 of
 * L^-1, row tiles of 32 from c0 down in order: thread (j, r) keeps the
 * running sum of row i0 + r, column c0 + j, first over k from the column
 * to i0 - 1 (rows of earlier tiles, final; y read coalesced, L[i][k]
 * broadcast), then over the tile's own rows as each is finished (through
 * shared memory): forward substitution from row c, the same terms in
 * ascending k as one thread per column, with a block's parallelism.
 *
 * A pivot that is not positive and finite sets *bad; the rest runs on (its
 * values are then undefined).  A batch is the grid's z: every kernel
 * offsets its matrix, scratch and flag by blockIdx.z and is otherwise the
 * single matrix's, so the batch costs one launch sequence and each matrix
 * keeps its bytes.
 */
#include "common.cuh"

#define CI_NB 32
#define CI_WORK(n) (((n) + CI_NB) * CI_NB)

/* The diagonal block's rows, their running sums over k < j0 already in
 * place: the rest of the column algorithm, k from j0. */
__global__ void chol_diag_kernel(double *a, uint64_t n, uint64_t j0, uint64_t j1, int32_t *bad)
{
	uint64_t i = j0 + threadIdx.x;
	a += blockIdx.z * n * n;
	bad += blockIdx.z;
	for (uint64_t j = j0; j < j1; j++) {
		const double *lj = a + j * n;
		if (i == j) {
			double d = lj[j];
			for (uint64_t k = j0; k < j; k++)
				d = __dsub_rn(d, __dmul_rn(lj[k], lj[k]));
			if (!(d > 0.0) || !isfinite(d))
				*bad = 1;
			a[j * n + j] = __dsqrt_rn(d);
		}
		__syncthreads();
		if (i > j && i < j1) {
			double *li = a + i * n, v = li[j];
			for (uint64_t k = j0; k < j; k++)
				v = __dsub_rn(v, __dmul_rn(li[k], lj[k]));
			li[j] = __ddiv_rn(v, lj[j]);
		}
		__syncthreads();
	}
}

__global__ void chol_panel_kernel(const double *a, uint64_t n, uint64_t j0, uint64_t j1,
				  double *panel)
{
	uint64_t k = (uint64_t)blockIdx.x * blockDim.y + threadIdx.y, j = threadIdx.x;
	a += blockIdx.z * n * n;
	panel += blockIdx.z * CI_WORK(n);
	if (k < j0)
		panel[k * CI_NB + j] = j < j1 - j0 ? a[(j0 + j) * n + k] : 0.0;
}

/* blockDim (32, rows per block): lane j of the warp of row i of the
 * diagonal block, j0 + j <= i: a[i][j0 + j] minus its terms k < j0. */
__global__ void chol_presum_kernel(double *a, uint64_t n, uint64_t j0, uint64_t j1,
				   const double *panel)
{
	uint64_t i = j0 + (uint64_t)blockIdx.x * blockDim.y + threadIdx.y, j = threadIdx.x;
	a += blockIdx.z * n * n;
	panel += blockIdx.z * CI_WORK(n);
	if (i >= j1 || j0 + j > i)
		return;
	double *li = a + i * n, v = li[j0 + j];
	for (uint64_t k = 0; k < j0; k++)
		v = __dsub_rn(v, __dmul_rn(li[k], panel[k * CI_NB + j]));
	li[j0 + j] = v;
}

/* blockDim (32, rows per block): lane j of the warp of row i. */
__global__ void chol_rows_kernel(double *a, uint64_t n, uint64_t j0, uint64_t j1,
				 const double *panel)
{
	uint64_t i = j1 + (uint64_t)blockIdx.x * blockDim.y + threadIdx.y, j = threadIdx.x;
	uint64_t w = j1 - j0;
	a += blockIdx.z * n * n;
	panel += blockIdx.z * CI_WORK(n);
	if (i >= n) /* whole warps leave together: the shuffle-free sync below is per warp */
		return;
	double *li = a + i * n;
	double v = j < w ? li[j0 + j] : 0.0;
	for (uint64_t k = 0; k < j0; k++)
		v = __dsub_rn(v, __dmul_rn(li[k], panel[k * CI_NB + j]));
	for (uint64_t jj = 0; jj < w; jj++) {
		if (j == jj) {
			const double *lj = a + (j0 + jj) * n;
			for (uint64_t k = j0; k < j0 + jj; k++)
				v = __dsub_rn(v, __dmul_rn(li[k], lj[k]));
			li[j0 + jj] = __ddiv_rn(v, lj[j0 + jj]);
		}
		__syncwarp();
	}
}

/* blockDim (32, 32): thread (j, r), column c = c0 + j of y = L^-1. */
__global__ void __launch_bounds__(CI_NB * CI_NB)
	chol_inv_kernel(const double *l, uint64_t n, double *y)
{
	__shared__ double yt[CI_NB][CI_NB]; /* the tile's finished rows */
	const uint64_t c0 = (uint64_t)blockIdx.x * CI_NB, j = threadIdx.x, r = threadIdx.y;
	const uint64_t c = c0 + j;
	const bool col = c < n;
	l += blockIdx.z * n * n;
	y += blockIdx.z * n * n;
	for (uint64_t i = r; i < c0 && col; i += CI_NB)
		y[i * n + c] = 0.0;
	for (uint64_t i0 = c0; i0 < n; i0 += CI_NB) {
		const uint64_t i = i0 + r;
		const bool live = col && i < n;
		const double *li = l + (live ? i : 0) * n;
		double s = 0.0;
		for (uint64_t k = c; k < i0 && live; k++)
			s = __dadd_rn(s, __dmul_rn(li[k], y[k * n + c]));
		for (uint64_t kk = 0; kk < CI_NB && i0 + kk < n; kk++) {
			const uint64_t k = i0 + kk;
			if (r == kk && live) {
				double v = i < c ? 0.0 : i == c ? __ddiv_rn(1.0, li[i]) : __ddiv_rn(-s, li[i]);
				yt[kk][j] = v;
				y[i * n + c] = v;
			}
			__syncthreads();
			if (r > kk && live && k >= c)
				s = __dadd_rn(s, __dmul_rn(li[k], yt[kk][j]));
		}
		__syncthreads(); /* the tile's rows of y, for the next tile's sums */
	}
}

CAL_CUDA_OP(chol_inv)
{
	CAL_CUDA_OP_ENTER(0);
	const uint64_t n = a->n;
	const unsigned nb = a->batch ? a->batch : 1;
	CAL_CUDA_TRY(cudaMemsetAsync(a->bad, 0, nb * sizeof(int32_t), s));
	for (uint64_t j0 = 0; j0 < n; j0 += CI_NB) {
		uint64_t j1 = j0 + CI_NB < n ? j0 + CI_NB : n;
		if (j0) {
			chol_panel_kernel<<<dim3((unsigned)((j0 + 7) / 8), 1, nb), dim3(CI_NB, 8), 0, s>>>(
				a->a, n, j0, j1, a->work);
			CAL_CUDA_LAUNCHED();
			chol_presum_kernel<<<dim3(CI_NB / 8, 1, nb), dim3(CI_NB, 8), 0, s>>>(a->a, n, j0,
											 j1, a->work);
			CAL_CUDA_LAUNCHED();
		}
		chol_diag_kernel<<<dim3(1, 1, nb), CI_NB, 0, s>>>(a->a, n, j0, j1, a->bad);
		CAL_CUDA_LAUNCHED();
		if (j1 == n)
			break;
		chol_rows_kernel<<<dim3((unsigned)((n - j1 + 7) / 8), 1, nb), dim3(CI_NB, 8), 0, s>>>(
			a->a, n, j0, j1, a->work);
		CAL_CUDA_LAUNCHED();
	}
	chol_inv_kernel<<<dim3((unsigned)((n + CI_NB - 1) / CI_NB), 1, nb), dim3(CI_NB, CI_NB), 0,
			  s>>>(a->a, n, a->y);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
