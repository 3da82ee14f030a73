/*
 * rmsnorm_gated.c — the Gated DeltaNet output norm (docs/architectures.md
 * "RMSNorm variants", "Gated output norm"; HF's RMSNormGated): per row, n = x
 * * (1 / sqrt(mean(x^2) + eps)) with the sum of squares in fp32 in element
 * order, then y = bf16(bf16(w * bf16(n)) * silu(z)) with silu(u) = u / (1 +
 * exp(-u)) in fp32 (HF multiplies the bf16 weight by the bf16-cast norm, then
 * by the fp32 silu of the gate, and casts once more).  Reference and CPU back
 * end; items are rows.
 */
#include <math.h>

#include "kernels/internal.h"

struct rg_ctx {
	const struct cal_rmsnorm_gated_args *a;
};

static inline float ld(const uint16_t *p, uint64_t i)
{
	return cal_nf_float((uint32_t)p[i] << 16);
}

static inline float bf(float v)
{
	return cal_nf_float((uint32_t)cal_nf_f32_to_bf16(v) << 16);
}

static void rg_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_rmsnorm_gated_args *a = ((struct rg_ctx *)p)->a;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		const uint16_t *x = a->x + r * a->cols, *z = a->z + r * a->cols;
		uint16_t *y = a->y + r * a->cols;
		float ss = 0.0f;
		for (uint64_t j = 0; j < a->cols; j++) {
			float v = ld(x, j);
			ss += v * v;
		}
		float inv = 1.0f / sqrtf(ss / (float)a->cols + a->eps);
		for (uint64_t j = 0; j < a->cols; j++) {
			float n = ld(x, j) * inv, zf = ld(z, j);
			float o = bf(ld(a->w, j) * bf(n));
			y[j] = cal_nf_f32_to_bf16(o * (zf / (1.0f + expf(-zf))));
		}
	}
}

CAL_CHECK_OP(rmsnorm_gated)
{
	enum cal_status st;
	if ((st = cal_check_norm_shape(a->rows, a->cols, a->eps, err)) < 0 || a->rows == 0)
		return st;
	return CAL_CHECK_PTRS(a, err, x, z, y, w);
}

CAL_CPU_OP(rmsnorm_gated)
{
	struct rg_ctx c = {a};
	if (a->rows == 0)
		return CAL_OK;
	return cal_cpu_parallel(be, a->rows, (1u << 15) / a->cols + 1, rg_range, &c, err);
}
