/*
 * int8_quant.c — INT8 per-output-channel weight quantizer (docs/numerics.md
 * "INT8"): per row r, amax_r = max|w[r, :]| (NaN if the row holds one),
 * scale[r] = amax_r/127 (0/NaN amax -> scale 1), q = clamp(rint(w / scale[r]),
 * -128, 127) as int8 bytes; or, with a static scale (an input's
 * input_scale), q = clamp(rint(fl32(w / scale)), -128, 127) on every row.
 * Reference and CPU back end; items are rows.
 */
#include <math.h>

#include "kernels/internal.h"

/* max|x| of a bf16 row; NaN when the row holds a NaN (torch's amax). */
static float row_amax(const uint16_t *w, uint64_t n)
{
	float m = 0.0f;
	for (uint64_t k = 0; k < n; k++) {
		float a = fabsf(cal_nf_bf16_to_f32(w[k]));
		if (a != a)
			return a;
		m = a > m ? a : m;
	}
	return m;
}

static void int8_row(const void *p, uint64_t r)
{
	const struct cal_int8_quant_args *a = p;
	const uint16_t *w = a->w + r * a->cols;
	float s = a->scale > 0.0f ? a->scale : cal_int8_row_scale(row_amax(w, a->cols), a->div);
	for (uint64_t k = 0; k < a->cols; k++)
		a->q[r * a->cols + k] = cal_int8_from_quotient(cal_fdiv(cal_nf_bf16_to_f32(w[k]), s));
	if (!(a->scale > 0.0f))
		a->scales[r] = s;
}

CAL_CHECK_OP(int8_quant)
{
	if (a->scale != 0.0f) {
		if (!(a->scale > 0.0f) || !isfinite(a->scale))
			return cal_error_set(err, CAL_ERR_INVALID, "argument 'scale' = %g is not "
					     "finite and positive", (double)a->scale);
		return cal_check_block_quant(a->rows, a->cols, 1, a->w, a->q, "q", a->q, err);
	}
	return cal_check_block_quant(a->rows, a->cols, 1, a->w, a->q, "q", a->scales, err);
}

CAL_CPU_OP(int8_quant)
{
	return cal_cpu_rows(be, a, a->rows, a->cols, int8_row, err);
}
