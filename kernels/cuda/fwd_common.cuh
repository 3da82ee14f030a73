/*
 * fwd_common.cuh — small helpers shared by the CUDA forward-pass ops
 * (gemm, gather_rows, rmsnorm, rope, attention, router, moe_sort,
 * moe_combine, ewise): bf16 <-> fp32 and a stream-ordered scratch
 * allocation.  Accurate libm functions (expf, cosf, sinf) are used, never
 * the fast intrinsics, to stay close to the C reference.
 */
#ifndef CAL_KERNELS_CUDA_FWD_COMMON_CUH
#define CAL_KERNELS_CUDA_FWD_COMMON_CUH

#include "common.cuh"

__device__ __forceinline__ float cal_bf2f(uint16_t h)
{
	return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ uint16_t cal_f2bf(float f)
{
	return cal_nf_f32_to_bf16(f);
}

/* fp32 -> bf16 -> fp32 (one rounding). */
__device__ __forceinline__ float cal_rbf(float f)
{
	return cal_bf2f(cal_f2bf(f));
}

/* Grid for a 1-D grid-stride loop over n items with CAL_CUDA_THREADS threads. */
static inline unsigned cal_fwd_grid(const struct cal_backend *be, uint64_t n)
{
	return cal_cuda_grid(be, n);
}

#endif
