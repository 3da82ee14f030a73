/*
 * ewise.c — element-wise decoder steps on bf16 (residual add, SwiGLU,
 * sigmoid-gated add of the shared expert, clamp, sigmoid gate of the gated
 * attention output, gpt_oss's clamped SwiGLU, a row added to every row,
 * a difference, a row multiplied into every row),
 * each computed in fp32 and
 * rounded to bf16 where HF's bf16 ops round.  silu(u) = u / (1 + exp(-u)),
 * sigmoid(u) = 1 / (1 + exp(-u)).  Reference and CPU back end; items are
 * rows.
 */
#include <math.h>

#include "kernels/internal.h"

struct ew_ctx {
	const struct cal_ewise_args *a;
	uint64_t lda, ldb, ldo;
};

static inline float ld(const uint16_t *p, uint64_t i)
{
	return cal_nf_float((uint32_t)p[i] << 16);
}

static inline float bf(float v)
{
	return cal_nf_float((uint32_t)cal_nf_f32_to_bf16(v) << 16);
}

/* gpt_oss clamped SwiGLU of one element (bf16 steps as HF's _apply_gate). */
static inline float swiglu_oai(float g, float u, float lim, float alpha)
{
	g = g > lim ? lim : g;
	u = u > lim ? lim : (u < -lim ? -lim : u);
	float sg = bf(1.0f / (1.0f + expf(-bf(g * alpha))));
	return bf(u + 1.0f) * bf(g * sg);
}

static void ew_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct ew_ctx *c = p;
	const struct cal_ewise_args *a = c->a;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		const uint16_t *x = a->a + r * c->lda;
		const uint16_t *y = a->b ? a->b + r * c->ldb : NULL; /* *_ROW: ldb 0 */
		uint16_t *o = a->out + r * c->ldo;
		float gate = 0.0f;
		if (a->mode == CAL_EWISE_GATE_ADD)
			gate = bf(1.0f / (1.0f + expf(-ld(a->g, r * a->ldg))));
		for (uint64_t j = 0; j < a->cols; j++) {
			float u = ld(x, j), v;
			switch (a->mode) {
			case CAL_EWISE_ADD:
			case CAL_EWISE_ADD_ROW:
				v = u + ld(y, j);
				break;
			case CAL_EWISE_SUB:
				v = u - ld(y, j);
				break;
			case CAL_EWISE_MUL_ROW:
				v = u * ld(y, j);
				break;
			case CAL_EWISE_SWIGLU:
				v = bf(u / (1.0f + expf(-u))) * ld(y, j);
				break;
			case CAL_EWISE_GATE_ADD:
				v = u + bf(gate * ld(y, j));
				break;
			case CAL_EWISE_SIGMOID_MUL:
				v = u * bf(1.0f / (1.0f + expf(-ld(y, j))));
				break;
			case CAL_EWISE_SWIGLU_OAI:
				v = swiglu_oai(u, ld(y, j), a->clamp, a->alpha);
				break;
			default: /* CAL_EWISE_CLAMP */
				v = u > a->clamp ? a->clamp : (u < -a->clamp ? -a->clamp : u);
				break;
			}
			o[j] = cal_nf_f32_to_bf16(v);
		}
	}
}

CAL_CHECK_OP(ewise)
{
	enum cal_status st;
	if ((st = cal_check_enum((int)a->mode, CAL_EWISE_SUB, "mode", err)) < 0)
		return st;
	if ((st = cal_check_shape(a->rows, a->cols, 1, err)) < 0)
		return st;
	if ((a->lda && a->lda < a->cols) || (a->ldb && a->ldb < a->cols) ||
	    (a->ldo && a->ldo < a->cols))
		return cal_error_set(err, CAL_ERR_INVALID, "a row stride is smaller than cols");
	if ((st = cal_check_shape(a->rows, a->lda ? a->lda : a->cols, 1, err)) < 0 ||
	    (st = cal_check_shape(a->rows, a->ldb ? a->ldb : a->cols, 1, err)) < 0 ||
	    (st = cal_check_shape(a->rows, a->ldo ? a->ldo : a->cols, 1, err)) < 0 ||
	    (st = cal_check_shape(a->rows, a->ldg ? a->ldg : 1, 1, err)) < 0)
		return st;
	if (a->rows == 0 || a->cols == 0)
		return CAL_OK;
	if ((st = CAL_CHECK_PTRS(a, err, a, out)) < 0)
		return st;
	if (a->mode != CAL_EWISE_CLAMP && (st = cal_check_ptr(a->b, "b", err)) < 0)
		return st;
	if (a->mode == CAL_EWISE_GATE_ADD && (st = cal_check_ptr(a->g, "g", err)) < 0)
		return st;
	if ((a->mode == CAL_EWISE_CLAMP || a->mode == CAL_EWISE_SWIGLU_OAI) && !(a->clamp >= 0.0f))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'clamp' must be >= 0");
	if (a->mode == CAL_EWISE_SWIGLU_OAI && !isfinite(a->alpha))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'alpha' must be finite");
	return CAL_OK;
}

CAL_CPU_OP(ewise)
{
	struct ew_ctx c = {a, a->lda ? a->lda : a->cols,
			   a->mode == CAL_EWISE_ADD_ROW || a->mode == CAL_EWISE_MUL_ROW ? 0
			   : a->ldb ? a->ldb : a->cols,
			   a->ldo ? a->ldo : a->cols};
	if (a->rows == 0 || a->cols == 0)
		return CAL_OK;
	return cal_cpu_parallel(be, a->rows, (1u << 15) / a->cols + 1, ew_range, &c, err);
}
