/*
 * rope.c — rotary position embedding in place (NeoX rotate-half, partial
 * rotary), as HF applies it: cos/sin of the fp32 angle pos * inv_freq,
 * times the attention factor, rounded to bf16; products and sums rounded to
 * bf16.  DeepSeek's interleaved pairs (2j, 2j+1) are read first and
 * written de-interleaved (docs/deepseek.md); the rotary channels may
 * start at an offset within each head.  Reference and CPU back end; items
 * are rows (tokens).
 */
#include <math.h>

#include "kernels/internal.h"

struct rope_ctx {
	const struct cal_rope_args *a;
};

static inline float bf(float v)
{
	return cal_nf_float((uint32_t)cal_nf_f32_to_bf16(v) << 16);
}

/* Interleaved pairs: each head's rotary channels are read into xs first
 * (the output is stored de-interleaved in place). */
static void rope_interleaved(const struct cal_rope_args *a, uint64_t begin, uint64_t end)
{
	uint32_t half = a->rotary_dim / 2;
	float xs[CAL_ROPE_MAX_INTERLEAVED];
	for (uint64_t r = begin; r < end; r++) {
		float pos = (float)a->pos[r];
		for (uint32_t h = 0; h < a->heads; h++) {
			uint16_t *x = a->x + (r * a->heads + h) * a->head_dim + a->offset;
			for (uint32_t i = 0; i < a->rotary_dim; i++)
				xs[i] = cal_nf_float((uint32_t)x[i] << 16);
			for (uint32_t j = 0; j < half; j++) {
				float ang = pos * a->inv_freq[j];
				float c = bf(cosf(ang) * a->factor), s = bf(sinf(ang) * a->factor);
				float x1 = xs[2 * j], x2 = xs[2 * j + 1];
				x[j] = cal_nf_f32_to_bf16(bf(x1 * c) - bf(x2 * s));
				x[j + half] = cal_nf_f32_to_bf16(bf(x2 * c) + bf(x1 * s));
			}
		}
	}
}

static void rope_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_rope_args *a = ((struct rope_ctx *)p)->a;
	uint32_t half = a->rotary_dim / 2;
	(void)slot;
	if (a->interleave) {
		rope_interleaved(a, begin, end);
		return;
	}
	for (uint64_t r = begin; r < end; r++) {
		float pos = (float)a->pos[r];
		for (uint32_t j = 0; j < half; j++) {
			float ang = pos * a->inv_freq[j];
			float c = bf(cosf(ang) * a->factor), s = bf(sinf(ang) * a->factor);
			for (uint32_t h = 0; h < a->heads; h++) {
				uint16_t *x = a->x + (r * a->heads + h) * a->head_dim + a->offset;
				float x1 = cal_nf_float((uint32_t)x[j] << 16);
				float x2 = cal_nf_float((uint32_t)x[j + half] << 16);
				x[j] = cal_nf_f32_to_bf16(bf(x1 * c) - bf(x2 * s));
				x[j + half] = cal_nf_f32_to_bf16(bf(x2 * c) + bf(x1 * s));
			}
		}
	}
}

CAL_CHECK_OP(rope)
{
	enum cal_status st;
	uint64_t cols;
	if (__builtin_mul_overflow((uint64_t)a->heads, (uint64_t)a->head_dim, &cols) ||
	    (st = cal_check_shape(a->rows, cols, 1, err)) < 0)
		return cal_error_set(err, CAL_ERR_RANGE, "rope: shape too large");
	if (a->rotary_dim % 2 || a->rotary_dim > a->head_dim ||
	    a->offset > a->head_dim - a->rotary_dim)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments 'rotary_dim' = %u, 'offset' = %u: rotary_dim must be even "
				     "and offset + rotary_dim <= head_dim %u", a->rotary_dim, a->offset,
				     a->head_dim);
	if (a->interleave && a->rotary_dim > CAL_ROPE_MAX_INTERLEAVED)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "argument 'rotary_dim' = %u: interleaved RoPE takes at most %u",
				     a->rotary_dim, CAL_ROPE_MAX_INTERLEAVED);
	if (a->rows == 0 || a->rotary_dim == 0 || a->heads == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, x, pos, inv_freq);
}

CAL_CPU_OP(rope)
{
	struct rope_ctx c = {a};
	if (a->rows == 0 || a->rotary_dim == 0 || a->heads == 0)
		return CAL_OK;
	return cal_cpu_parallel(be, a->rows, (1u << 14) / ((uint64_t)a->heads * a->head_dim) + 1,
				rope_range, &c, err);
}
