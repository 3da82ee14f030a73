/*
 * gdn_conv.cu — the Gated DeltaNet causal depthwise conv1d + SiLU over
 * packed sequences (see gdn_conv.c): one thread per output element in a
 * grid-stride loop; the sequence start of the row comes from a binary
 * search over cu_seqlens.
 */
#include "fwd_common.cuh"

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
gconv_kernel(const uint16_t *x, const uint16_t *w, uint16_t *y, uint64_t t, uint32_t ch,
	     uint32_t kernel, const uint32_t *cu, uint32_t n_seq)
{
	uint64_t total = t * ch;
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t r = i / ch, c = i % ch;
		uint64_t s0 = cu[cal_segment_of(cu, n_seq, r)], K = kernel;
		uint64_t j0 = r - s0 + 1 >= K ? 0 : K - (r - s0 + 1);
		float acc = 0.0f;
		for (uint64_t j = j0; j < K; j++)
			acc = __fadd_rn(acc, __fmul_rn(cal_bf2f(w[c * K + j]),
						       cal_bf2f(x[(r + 1 + j - K) * ch + c])));
		float u = cal_rbf(acc);
		y[i] = cal_f2bf(u / (1.0f + expf(-u)));
	}
}

CAL_CUDA_OP(gdn_conv)
{
	CAL_CUDA_OP_ENTER(a->t == 0);
	gconv_kernel<<<cal_fwd_grid(be, a->t * a->channels), CAL_CUDA_THREADS, 0, s>>>(
		a->x, a->w, a->y, a->t, a->channels, a->kernel, a->cu_seqlens, a->n_seq);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
