/*
 * rmsnorm.c — RMSNorm over the rows of a bf16 matrix, three variants
 * (docs/architectures.md "RMSNorm variants"): plain w with a bf16 cast before
 * the weight multiply, fp32 weights, and (1 + w).  mean(x^2) is summed in fp32
 * in element order; n = x * (1 / sqrt(mean + eps)).  Reference and CPU back
 * end; items are rows.
 */
#include <math.h>

#include "kernels/internal.h"

struct rms_ctx {
	const struct cal_rmsnorm_args *a;
};

static inline float w_at(const struct cal_rmsnorm_args *a, uint64_t j)
{
	if (a->w_dtype == CAL_DTYPE_F32)
		return ((const float *)a->w)[j];
	return cal_nf_float((uint32_t)((const uint16_t *)a->w)[j] << 16);
}

static void rms_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_rmsnorm_args *a = ((struct rms_ctx *)p)->a;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		const uint16_t *x = a->x + r * a->cols;
		uint16_t *y = a->y + r * a->cols;
		float ss = 0.0f;
		for (uint64_t j = 0; j < a->cols; j++) {
			float v = cal_nf_float((uint32_t)x[j] << 16);
			ss += v * v;
		}
		float mean = ss / (float)a->cols;
		float inv = 1.0f / sqrtf(mean + a->eps);
		for (uint64_t j = 0; j < a->cols; j++) {
			float n = cal_nf_float((uint32_t)x[j] << 16) * inv;
			float o;
			switch (a->kind) {
			case CAL_RMS_PLAIN:
				o = w_at(a, j) * cal_nf_float((uint32_t)cal_nf_f32_to_bf16(n) << 16);
				break;
			case CAL_RMS_F32W:
				o = w_at(a, j) * n;
				break;
			default:
				o = n * (1.0f + w_at(a, j));
				break;
			}
			y[j] = cal_nf_f32_to_bf16(o);
		}
	}
}

CAL_CHECK_OP(rmsnorm)
{
	enum cal_status st;
	if ((st = cal_check_enum((int)a->kind, CAL_RMS_1P, "kind", err)) < 0)
		return st;
	if (a->w_dtype != CAL_DTYPE_BF16 && a->w_dtype != CAL_DTYPE_F32)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "argument 'w_dtype': BF16 or F32 expected");
	if (a->kind == CAL_RMS_F32W && a->w_dtype != CAL_DTYPE_F32)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'w_dtype': F32W needs F32");
	if ((st = cal_check_norm_shape(a->rows, a->cols, a->eps, err)) < 0 || a->rows == 0)
		return st;
	return CAL_CHECK_PTRS(a, err, x, y, w);
}

CAL_CPU_OP(rmsnorm)
{
	struct rms_ctx c = {a};
	if (a->rows == 0)
		return CAL_OK;
	return cal_cpu_parallel(be, a->rows, (1u << 15) / a->cols + 1, rms_range, &c, err);
}
