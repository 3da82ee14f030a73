/*
 * rope.cu — rotary embedding in place; one thread per (row, head, pair j)
 * in a grid-stride loop.  cos/sin use the accurate cosf/sinf.  DeepSeek's
 * interleaved pairs: one thread per (row, head), the head's rotary channels
 * read into registers before the de-interleaved result is written.
 */
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
rope_kernel(uint16_t *x, uint64_t rows, uint32_t heads, uint32_t hd, uint32_t half,
	    uint32_t off, const uint32_t *pos, const float *inv_freq, float factor)
{
	uint64_t total = rows * heads * half;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		uint32_t j = (uint32_t)(i % half);
		uint64_t rh = i / half, r = rh / heads;
		float ang = __fmul_rn((float)pos[r], inv_freq[j]);
		float c = cal_rbf(__fmul_rn(cosf(ang), factor)), sn = cal_rbf(__fmul_rn(sinf(ang), factor));
		uint16_t *p = x + rh * hd + off;
		float x1 = cal_bf2f(p[j]), x2 = cal_bf2f(p[j + half]);
		p[j] = cal_f2bf(cal_rbf(__fmul_rn(x1, c)) - cal_rbf(__fmul_rn(x2, sn)));
		p[j + half] = cal_f2bf(cal_rbf(__fmul_rn(x2, c)) + cal_rbf(__fmul_rn(x1, sn)));
	}
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
rope_il_kernel(uint16_t *x, uint64_t rows, uint32_t heads, uint32_t hd, uint32_t half,
	       uint32_t off, const uint32_t *pos, const float *inv_freq, float factor)
{
	uint64_t total = rows * heads;
	for (uint64_t rh = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; rh < total;
	     rh += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t r = rh / heads;
		uint16_t *p = x + rh * hd + off;
		uint16_t xs[CAL_ROPE_MAX_INTERLEAVED];
		for (uint32_t i = 0; i < 2 * half; i++)
			xs[i] = p[i];
		for (uint32_t j = 0; j < half; j++) {
			float ang = __fmul_rn((float)pos[r], inv_freq[j]);
			float c = cal_rbf(__fmul_rn(cosf(ang), factor));
			float sn = cal_rbf(__fmul_rn(sinf(ang), factor));
			float x1 = cal_bf2f(xs[2 * j]), x2 = cal_bf2f(xs[2 * j + 1]);
			p[j] = cal_f2bf(cal_rbf(__fmul_rn(x1, c)) - cal_rbf(__fmul_rn(x2, sn)));
			p[j + half] = cal_f2bf(cal_rbf(__fmul_rn(x2, c)) + cal_rbf(__fmul_rn(x1, sn)));
		}
	}
}

CAL_CUDA_OP(rope)
{
	uint32_t half = a->rotary_dim / 2;
	CAL_CUDA_OP_ENTER(a->rows == 0 || half == 0 || a->heads == 0);
	if (a->interleave)
		rope_il_kernel<<<cal_fwd_grid(be, a->rows * a->heads), CAL_CUDA_THREADS, 0, s>>>(
			a->x, a->rows, a->heads, a->head_dim, half, a->offset, a->pos, a->inv_freq,
			a->factor);
	else
		rope_kernel<<<cal_fwd_grid(be, a->rows * a->heads * half), CAL_CUDA_THREADS, 0, s>>>(
			a->x, a->rows, a->heads, a->head_dim, half, a->offset, a->pos, a->inv_freq,
			a->factor);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
