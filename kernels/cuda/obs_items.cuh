/*
 * obs_items.cuh — the per-item max|x| observer kernel of amax_blocks
 * (unaligned input) and amax_cols; the CPU side is cal_cpu_observe_items
 * (kernels/internal.h).  One thread per item, grid-stride over items: item
 * t's elements are x[t * item_step + k * elem_step] for k < count, scalar
 * loads; its max folds into amax[t], non-finite counts reduce per thread
 * block.
 */
#ifndef CAL_KERNELS_CUDA_OBS_ITEMS_CUH
#define CAL_KERNELS_CUDA_OBS_ITEMS_CUH

#include "common.cuh"

/* The items of an observer over x (BF16 or F32), as struct cal_obs_items. */
struct cal_obs_items_dev {
	const void *x;
	uint64_t n_items, item_step, elem_step, count, base;
	float *amax;
	struct cal_nonfinite *nf;
};

template <bool BF16>
__global__ void __launch_bounds__(CAL_CUDA_THREADS) obs_items_kernel(cal_obs_items_dev o)
{
	cal_obs s;
	cal_obs_init(s);
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	for (uint64_t t = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; t < o.n_items;
	     t += stride) {
		s.max_bits = 0;
		uint64_t i = t * o.item_step;
		for (uint64_t k = 0; k < o.count; k++, i += o.elem_step) {
			uint32_t a = BF16 ? ((uint32_t)__ldg((const uint16_t *)o.x + i) << 16)
					  : __float_as_uint(__ldg((const float *)o.x + i));
			cal_obs_add(s, a & 0x7fffffffu, o.base + i);
		}
		if ((int)s.max_bits > (int)__float_as_uint(o.amax[t]))
			o.amax[t] = __uint_as_float(s.max_bits);
	}
	cal_obs_flush_nonfinite(s, o.nf);
}

/* Launches obs_items_kernel on stream s, one lane per item. */
static inline void cal_obs_items_launch(struct cal_backend *be, cudaStream_t s, bool bf16,
					const cal_obs_items_dev &o)
{
	unsigned grid = cal_cuda_grid(be, o.n_items);
	if (bf16)
		obs_items_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(o);
	else
		obs_items_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(o);
}

#endif
