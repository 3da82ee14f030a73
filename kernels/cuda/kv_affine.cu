/*
 * kv_affine.cu — affine KV-cache observer (kernels/kv_affine.c): one thread
 * per column runs the column's forwards in order (f64 sums in row order,
 * the fp32 running-average steps rounded as the reference's), so bias and
 * amax match the CPU's bytes; max|x - bias| and the non-finite report are
 * reduced per thread block.
 */
#include "common.cuh"
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
kv_affine_kernel(const uint16_t *x, uint64_t rows, uint64_t cols, const uint32_t *cu,
		 uint32_t n_seq, uint64_t n0, uint16_t *bias, uint64_t base, float *amax,
		 struct cal_nonfinite *nf)
{
	cal_obs s;
	cal_obs_init(s);
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	uint64_t c0 = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	/* every thread of the block runs the same number of rounds (the flushes
	 * below synchronise the block) */
	for (uint64_t c1 = c0 - threadIdx.x; c1 < cols; c1 += stride) {
		uint64_t c = c1 + threadIdx.x;
		if (c >= cols)
			continue;
		float b = cal_bf2f(bias[c]);
		uint64_t k = n0;
		for (uint32_t q = 0; q < n_seq; q++) {
			uint64_t r0 = cu[q], r1 = cu[q + 1];
			r1 = r1 < rows ? r1 : rows;
			if (r1 <= r0)
				continue;
			double sum = 0.0;
			for (uint64_t r = r0; r < r1; r++)
				sum = __dadd_rn(sum, (double)cal_bf2f(x[r * cols + c]));
			float m = cal_rbf((float)__ddiv_rn(sum, (double)(r1 - r0)));
			if (k == 0)
				b = m;
			else
				b = cal_rbf(__fdiv_rn(__fadd_rn(__fmul_rn(b, (float)k), m),
						      (float)(k + 1)));
			k++;
			for (uint64_t r = r0; r < r1; r++) {
				uint64_t i = r * cols + c;
				uint32_t xb = (uint32_t)x[i] << 16;
				if ((xb & 0x7fffffffu) >= 0x7f800000u) {
					cal_obs_add(s, 0x7f800000u, base + i);
					continue;
				}
				uint32_t d = __float_as_uint(cal_rbf(__fsub_rn(__uint_as_float(xb), b))) &
					     0x7fffffffu;
				if (d < 0x7f800000u)
					s.max_bits = d > s.max_bits ? d : s.max_bits;
			}
		}
		bias[c] = cal_nf_f32_to_bf16_canon(b); /* NaN from a non-finite input */
	}
	cal_obs_flush_amax(s.max_bits, amax);
	cal_obs_flush_nonfinite(s, nf);
}

CAL_CUDA_OP(kv_affine)
{
	CAL_CUDA_OP_ENTER(a->rows == 0 || a->cols == 0);
	kv_affine_kernel<<<cal_cuda_grid(be, a->cols), CAL_CUDA_THREADS, 0, s>>>(
		a->x, a->rows, a->cols, a->cu, a->n_seq, a->n0, a->bias, a->index_base, a->amax,
		a->nonfinite);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
