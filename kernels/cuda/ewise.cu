/*
 * ewise.cu — element-wise decoder steps (add, SwiGLU, gated add, clamp);
 * one thread per element in a grid-stride loop.
 */
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
ew_kernel(int mode, const uint16_t *a, const uint16_t *b, const uint16_t *g, uint16_t *out,
	  uint64_t rows, uint64_t cols, uint64_t lda, uint64_t ldb, uint64_t ldg, uint64_t ldo,
	  float clamp)
{
	uint64_t total = rows * cols;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t r = i / cols, j = i % cols;
		float u = cal_bf2f(a[r * lda + j]), v;
		if (mode == CAL_EWISE_ADD) {
			v = __fadd_rn(u, cal_bf2f(b[r * ldb + j]));
		} else if (mode == CAL_EWISE_SWIGLU) {
			v = __fmul_rn(cal_rbf(u / (1.0f + expf(-u))), cal_bf2f(b[r * ldb + j]));
		} else if (mode == CAL_EWISE_GATE_ADD) {
			float gv = cal_bf2f(g[r * ldg]);
			float gate = cal_rbf(1.0f / (1.0f + expf(-gv)));
			v = __fadd_rn(u, cal_rbf(__fmul_rn(gate, cal_bf2f(b[r * ldb + j]))));
		} else {
			v = u > clamp ? clamp : (u < -clamp ? -clamp : u);
		}
		out[r * ldo + j] = cal_f2bf(v);
	}
}

extern "C" enum cal_status cal_cuda_ewise(struct cal_backend *be, const struct cal_ewise_args *a,
					  struct cal_error *err)
{
	cudaStream_t s;
	enum cal_status st;
	if (a->rows == 0 || a->cols == 0)
		return CAL_OK;
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	ew_kernel<<<cal_fwd_grid(be, a->rows * a->cols), CAL_CUDA_THREADS, 0, s>>>(
		(int)a->mode, a->a, a->b, a->g, a->out, a->rows, a->cols, a->lda ? a->lda : a->cols,
		a->ldb ? a->ldb : a->cols, a->ldg ? a->ldg : 1, a->ldo ? a->ldo : a->cols, a->clamp);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
