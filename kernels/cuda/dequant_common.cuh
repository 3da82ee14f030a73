/*
 * dequant_common.cuh — launch helper of the dequantize (fake-quant) ops:
 * one lane per 8 outputs, codes read with 4/8-byte loads, outputs written
 * with 16-byte stores (F32: two, BF16: one) when every pointer is aligned.
 * The op supplies a functor decoding the 8 values of lane v.
 */
#ifndef CAL_KERNELS_CUDA_DEQUANT_COMMON_CUH
#define CAL_KERNELS_CUDA_DEQUANT_COMMON_CUH

#include "common.cuh"

/* F(v, vals): the 8 values of lane v (elements 8v..8v+7 of the output in
 * F::out_index(v) order). */
template <bool V, class F>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
dequant_kernel(F f, uint64_t nlanes, enum cal_dtype dt, void *out)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	for (uint64_t v = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nlanes; v += stride) {
		float vals[8];
		f.template decode<V>(v, vals);
		cal_st8_out<V>(dt, out, f.out_index(v), vals);
	}
}

template <class F>
static enum cal_status dequant_launch(struct cal_backend *be, const F &f, bool inputs_aligned,
				      uint64_t nlanes, enum cal_dtype dt, void *out,
				      struct cal_error *err)
{
	CAL_CUDA_OP_ENTER(nlanes == 0);
	unsigned grid = cal_cuda_grid(be, nlanes);
	if (inputs_aligned && cal_aligned(out, 16))
		dequant_kernel<true, F><<<grid, CAL_CUDA_THREADS, 0, s>>>(f, nlanes, dt, out);
	else
		dequant_kernel<false, F><<<grid, CAL_CUDA_THREADS, 0, s>>>(f, nlanes, dt, out);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}

#endif
