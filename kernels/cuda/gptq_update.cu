/*
 * gptq_update.cu — GPTQ column-block update (kernels/ops.h, docs/gptq.md).
 * The working rows live transposed in `work` (element k of row r at
 * k * rows + r, then the block's errors e_i at (cols + i) * rows + r), so
 * a warp's 32 rows touch consecutive floats.  Per block of columns: one
 * thread per row walks the block column by column (rounding, error,
 * update of the block's later columns); then one thread per (row, later
 * column) subtracts sum_i e_i U[i, k] in ascending i.  The same fp32
 * operations in the same order as the C reference (kernels/gptq_update.c)
 * with the same fake quantizer (kernels/gptq_qdq.h): the bytes agree.
 */
#include "common.cuh"
#include "kernels/gptq_qdq.h"

__global__ void gptq_load_kernel(const uint16_t *w, uint64_t rows, uint64_t cols, float *work)
{
	uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, k = blockIdx.y;
	if (r < rows)
		work[k * rows + r] = cal_nf_bf16_to_f32(w[r * cols + k]);
}

__global__ void gptq_block_kernel(uint64_t rows, uint64_t cols, const float *u,
				  const float *block_amax, float sc, float sinv, enum cal_div_mode div,
				  uint64_t b0, uint64_t b1, float *work, uint16_t *w_out)
{
	uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (r >= rows)
		return;
	float *e = work + cols * rows;
	for (uint64_t i = b0; i < b1; i++) {
		const float *ui = u + i * cols;
		float wi = work[i * rows + r];
		float q = cal_gptq_qdq(wi, block_amax[r * (cols / 16) + i / 16], sc, sinv, div);
		float ei = cal_fdiv(cal_fsub(wi, q), ui[i]);
		w_out[r * cols + i] = cal_nf_f32_to_bf16(q);
		e[(i - b0) * rows + r] = ei;
		for (uint64_t k = i + 1; k < b1; k++)
			work[k * rows + r] = cal_fsub(work[k * rows + r], cal_fmul(ei, ui[k]));
	}
}

__global__ void gptq_rest_kernel(uint64_t rows, uint64_t cols, const float *u, uint64_t b0,
				 uint64_t b1, float *work)
{
	uint64_t r = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, k = b1 + blockIdx.y;
	if (r >= rows || k >= cols)
		return;
	const float *e = work + cols * rows;
	float s = 0.0f;
	for (uint64_t i = b0; i < b1; i++)
		s = cal_fadd(s, cal_fmul(e[(i - b0) * rows + r], u[i * cols + k]));
	work[k * rows + r] = cal_fsub(work[k * rows + r], s);
}

CAL_CUDA_OP(gptq_update)
{
	CAL_CUDA_OP_ENTER(!a->rows || !a->cols);
	float sc, sinv;
	cal_gptq_scales(a->global_amax, a->norm_max, a->div, &sc, &sinv);
	uint64_t n = a->cols, bs = a->block_size < n ? a->block_size : n;
	unsigned T = 128, gx = (unsigned)((a->rows + T - 1) / T);
	gptq_load_kernel<<<dim3(gx, (unsigned)n), T, 0, s>>>(a->w, a->rows, n, a->work);
	CAL_CUDA_LAUNCHED();
	for (uint64_t b0 = 0; b0 < n; b0 += bs) {
		uint64_t b1 = b0 + bs < n ? b0 + bs : n;
		gptq_block_kernel<<<gx, T, 0, s>>>(a->rows, n, a->u, a->block_amax, sc, sinv, a->div,
						   b0, b1, a->work, a->w_out);
		CAL_CUDA_LAUNCHED();
		if (b1 < n) {
			gptq_rest_kernel<<<dim3(gx, (unsigned)(n - b1)), T, 0, s>>>(a->rows, n, a->u, b0,
										   b1, a->work);
			CAL_CUDA_LAUNCHED();
		}
	}
	return CAL_OK;
}
