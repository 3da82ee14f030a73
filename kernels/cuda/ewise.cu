/*
 * ewise.cu — element-wise decoder steps (add, SwiGLU, gated add, clamp,
 * sigmoid gate, gpt_oss clamped SwiGLU, a row added to every row, a
 * difference, a row multiplied into every row);
 * one thread per 8 elements (16-byte loads and stores) when the shapes and
 * pointers allow, else one per element, in a grid-stride loop.
 */
#include "fwd_common.cuh"

/* gpt_oss clamped SwiGLU (kernels/ewise.c: swiglu_oai) */
__device__ __forceinline__ float ew_oai(float g, float u, float lim, float alpha)
{
	g = g > lim ? lim : g;
	u = u > lim ? lim : (u < -lim ? -lim : u);
	float sg = cal_rbf(1.0f / (1.0f + expf(-cal_rbf(__fmul_rn(g, alpha)))));
	return __fmul_rn(cal_rbf(__fadd_rn(u, 1.0f)), cal_rbf(__fmul_rn(g, sg)));
}

__device__ __forceinline__ float ew_one(int mode, float u, const uint16_t *b, const uint16_t *g,
				       uint64_t r, uint64_t j, uint64_t ldb, uint64_t ldg, float clamp,
				       float alpha)
{
	if (mode == CAL_EWISE_SWIGLU_OAI)
		return ew_oai(u, cal_bf2f(b[r * ldb + j]), clamp, alpha);
	if (mode == CAL_EWISE_ADD)
		return __fadd_rn(u, cal_bf2f(b[r * ldb + j]));
	if (mode == CAL_EWISE_SUB)
		return __fsub_rn(u, cal_bf2f(b[r * ldb + j]));
	if (mode == CAL_EWISE_MUL_ROW)
		return __fmul_rn(u, cal_bf2f(b[r * ldb + j]));
	if (mode == CAL_EWISE_SWIGLU)
		return __fmul_rn(cal_rbf(u / (1.0f + expf(-u))), cal_bf2f(b[r * ldb + j]));
	if (mode == CAL_EWISE_GATE_ADD) {
		float gv = cal_bf2f(g[r * ldg]);
		float gate = cal_rbf(1.0f / (1.0f + expf(-gv)));
		return __fadd_rn(u, cal_rbf(__fmul_rn(gate, cal_bf2f(b[r * ldb + j]))));
	}
	if (mode == CAL_EWISE_SIGMOID_MUL)
		return __fmul_rn(u, cal_rbf(1.0f / (1.0f + expf(-cal_bf2f(b[r * ldb + j])))));
	return u > clamp ? clamp : (u < -clamp ? -clamp : u);
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
ew_kernel(int mode, const uint16_t *a, const uint16_t *b, const uint16_t *g, uint16_t *out,
	  uint64_t rows, uint64_t cols, uint64_t lda, uint64_t ldb, uint64_t ldg, uint64_t ldo,
	  float clamp, float alpha)
{
	uint64_t total = rows * cols;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t r = i / cols, j = i % cols;
		float u = cal_bf2f(a[r * lda + j]);
		out[r * ldo + j] = cal_f2bf(ew_one(mode, u, b, g, r, j, ldb, ldg, clamp, alpha));
	}
}

/* 8 columns per thread: cols, the leading dimensions and the pointers are
 * multiples of 8 elements / 16 bytes.  The row and column come from a 2-D
 * walk (no 64-bit division per element). */
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
ew_kernel8(int mode, const uint16_t *a, const uint16_t *b, const uint16_t *g, uint16_t *out,
	   uint64_t rows, uint64_t cols, uint64_t lda, uint64_t ldb, uint64_t ldg, uint64_t ldo,
	   float clamp, float alpha)
{
	uint32_t c8 = (uint32_t)(cols / 8);
	uint64_t total = rows * c8;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t r = i / c8, j = (i - r * c8) * 8;
		float u[8], bv[8], v[8];
		cal_ld8_bf16<true>(a + r * lda + j, u);
		if (mode == CAL_EWISE_CLAMP) {
#pragma unroll
			for (int e = 0; e < 8; e++)
				v[e] = u[e] > clamp ? clamp : (u[e] < -clamp ? -clamp : u[e]);
		} else {
			cal_ld8_bf16<true>(b + r * ldb + j, bv);
			if (mode == CAL_EWISE_ADD) {
#pragma unroll
				for (int e = 0; e < 8; e++)
					v[e] = __fadd_rn(u[e], bv[e]);
			} else if (mode == CAL_EWISE_SUB) {
#pragma unroll
				for (int e = 0; e < 8; e++)
					v[e] = __fsub_rn(u[e], bv[e]);
			} else if (mode == CAL_EWISE_MUL_ROW) {
#pragma unroll
				for (int e = 0; e < 8; e++)
					v[e] = __fmul_rn(u[e], bv[e]);
			} else if (mode == CAL_EWISE_SWIGLU) {
#pragma unroll
				for (int e = 0; e < 8; e++)
					v[e] = __fmul_rn(cal_rbf(u[e] / (1.0f + expf(-u[e]))), bv[e]);
			} else if (mode == CAL_EWISE_SWIGLU_OAI) {
#pragma unroll
				for (int e = 0; e < 8; e++)
					v[e] = ew_oai(u[e], bv[e], clamp, alpha);
			} else if (mode == CAL_EWISE_SIGMOID_MUL) {
#pragma unroll
				for (int e = 0; e < 8; e++)
					v[e] = __fmul_rn(u[e], cal_rbf(1.0f / (1.0f + expf(-bv[e]))));
			} else {
				float gv = cal_bf2f(g[r * ldg]);
				float gate = cal_rbf(1.0f / (1.0f + expf(-gv)));
#pragma unroll
				for (int e = 0; e < 8; e++)
					v[e] = __fadd_rn(u[e], cal_rbf(__fmul_rn(gate, bv[e])));
			}
		}
		cal_st8_out<true>(CAL_DTYPE_BF16, out, r * ldo + j, v);
	}
}

CAL_CUDA_OP(ewise)
{
	CAL_CUDA_OP_ENTER(a->rows == 0 || a->cols == 0);
	/* ADD_ROW is ADD with b's row stride 0; MUL_ROW has it 0 too */
	int mode = a->mode == CAL_EWISE_ADD_ROW ? (int)CAL_EWISE_ADD : (int)a->mode;
	bool row = a->mode == CAL_EWISE_ADD_ROW || a->mode == CAL_EWISE_MUL_ROW;
	uint64_t lda = a->lda ? a->lda : a->cols;
	uint64_t ldb = row ? 0 : a->ldb ? a->ldb : a->cols;
	uint64_t ldo = a->ldo ? a->ldo : a->cols, ldg = a->ldg ? a->ldg : 1;
	bool vec = a->cols % 8 == 0 && lda % 8 == 0 && ldo % 8 == 0 && cal_aligned(a->a, 16) &&
		   cal_aligned(a->out, 16) && a->cols / 8 <= UINT32_MAX;
	if (a->mode != CAL_EWISE_CLAMP)
		vec = vec && ldb % 8 == 0 && cal_aligned(a->b, 16);
	if (vec)
		ew_kernel8<<<cal_fwd_grid(be, a->rows * a->cols / 8), CAL_CUDA_THREADS, 0, s>>>(
			mode, a->a, a->b, a->g, a->out, a->rows, a->cols, lda, ldb, ldg, ldo,
			a->clamp, a->alpha);
	else
		ew_kernel<<<cal_fwd_grid(be, a->rows * a->cols), CAL_CUDA_THREADS, 0, s>>>(
			mode, a->a, a->b, a->g, a->out, a->rows, a->cols, lda, ldb, ldg, ldo,
			a->clamp, a->alpha);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
