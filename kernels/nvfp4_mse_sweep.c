/*
 * nvfp4_mse_sweep.c — per-block amax of static NVFP4 by the MSE FP8-scale
 * sweep (docs/numerics.md "NVFP4 static and MSE"; the per-block search is
 * cal_nvfp4_mse_block in numfmt.h, shared with CUDA).  Reference and CPU back
 * end; items are blocks.
 */
#include "kernels/internal.h"

struct mse_ctx {
	const struct cal_nvfp4_mse_sweep_args *a;
	float s2;
};

static void mse_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct mse_ctx *c = p;
	const struct cal_nvfp4_mse_sweep_args *a = c->a;
	(void)slot;

	for (uint64_t b = begin; b < end; b++) {
		float x[16];
		for (int k = 0; k < 16; k++)
			x[k] = cal_nf_bf16_to_f32(a->w[b * 16 + k]);
		a->block_amax[b] = cal_nvfp4_mse_block(x, a->global_amax, a->norm_max, c->s2, a->div);
	}
}

enum cal_status cal_check_nvfp4_mse_sweep(const struct cal_nvfp4_mse_sweep_args *a,
					  struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->rows, a->cols, 16, err)) < 0)
		return st;
	if (!(a->global_amax > 0.0f) || a->global_amax > 3.4e38f)
		return cal_error_set(err, CAL_ERR_NUMERIC,
				     "argument 'global_amax' = %g is not finite and > 0",
				     (double)a->global_amax);
	if (a->norm_max != 448.0f && a->norm_max != 256.0f)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'norm_max' = %g is not 448 or 256", (double)a->norm_max);
	if (a->rows && a->cols && ((st = cal_check_ptr(a->w, "w", err)) < 0 ||
				   (st = cal_check_ptr(a->block_amax, "block_amax", err)) < 0))
		return st;
	return CAL_OK;
}

enum cal_status cal_cpu_nvfp4_mse_sweep(struct cal_backend *be,
					const struct cal_nvfp4_mse_sweep_args *a,
					struct cal_error *err)
{
	struct mse_ctx c = {a, cal_nvfp4_static_scale2(a->global_amax, a->norm_max, a->div)};
	return cal_cpu_parallel(be, a->rows * a->cols / 16, 256, mse_range, &c, err);
}
