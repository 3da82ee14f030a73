/*
 * gather_rows.cu — out[i, :] = src[index[i] / div, :].  One warp per output
 * row (grid-stride over rows), lanes copy 16 bytes (cols % 8 == 0, aligned)
 * or 2-byte elements; rows whose index
 * is out of range are zero-filled (the CPU back end refuses them; callers
 * validate ids before upload).
 */
#include "fwd_common.cuh"

template <bool V>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
gather_kernel(const uint16_t *src, uint64_t src_rows, uint64_t cols, const uint32_t *index,
	      uint64_t n, uint32_t div, uint16_t *out)
{
	uint64_t warp = cal_warp_id();
	uint64_t warps = cal_warp_count();
	unsigned lane = threadIdx.x & 31;
	for (uint64_t i = warp; i < n; i += warps) {
		uint64_t r = index[i] / div;
		uint16_t *o = out + i * cols;
		if (V) {
			uint64_t c8 = cols / 8;
			uint4 *o4 = reinterpret_cast<uint4 *>(o);
			if (r >= src_rows) {
				for (uint64_t j = lane; j < c8; j += 32)
					o4[j] = make_uint4(0, 0, 0, 0);
				continue;
			}
			const uint4 *p4 = reinterpret_cast<const uint4 *>(src + r * cols);
			for (uint64_t j = lane; j < c8; j += 32)
				o4[j] = __ldg(p4 + j);
			continue;
		}
		if (r >= src_rows) {
			for (uint64_t j = lane; j < cols; j += 32)
				o[j] = 0;
			continue;
		}
		const uint16_t *p = src + r * cols;
		for (uint64_t j = lane; j < cols; j += 32)
			o[j] = p[j];
	}
}

CAL_CUDA_OP(gather_rows)
{
	CAL_CUDA_OP_ENTER(a->n == 0 || a->cols == 0);
	if (a->cols % 8 == 0 && cal_aligned(a->src, 16) && cal_aligned(a->out, 16))
		gather_kernel<true><<<cal_fwd_grid(be, a->n * 32), CAL_CUDA_THREADS, 0, s>>>(
			a->src, a->src_rows, a->cols, a->index, a->n, a->div > 1 ? a->div : 1, a->out);
	else
		gather_kernel<false><<<cal_fwd_grid(be, a->n * 32), CAL_CUDA_THREADS, 0, s>>>(
			a->src, a->src_rows, a->cols, a->index, a->n, a->div > 1 ? a->div : 1, a->out);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
