/*
 * int8_dequant.c — INT8 per-output-channel dequantize: out[r, k] =
 * fl32(q[r, k] * scale[r]), or fl32(q[r, k] * scale) with one scale for
 * every row (an input's).  Reference and CPU back end; items are rows.
 */
#include <math.h>

#include "kernels/internal.h"

static void int8_dq_row(const void *p, uint64_t r)
{
	const struct cal_int8_dequant_args *a = p;
	float s = a->scales ? a->scales[r] : a->scale;
	for (uint64_t k = 0; k < a->cols; k++)
		cal_store_out(a->out_dtype, a->out, r * a->cols + k,
			      cal_fmul(cal_int8_decode(a->q[r * a->cols + k]), s));
}

CAL_CHECK_OP(int8_dequant)
{
	if (!a->scales && (!(a->scale > 0.0f) || !isfinite(a->scale)))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'scales' is NULL and 'scale' = "
				     "%g is not finite and positive", (double)a->scale);
	return cal_check_block_dequant(a->rows, a->cols, 1, a->out_dtype, a->q, "q",
				       a->scales ? (const void *)a->scales : (const void *)a->q,
				       a->out, err);
}

CAL_CPU_OP(int8_dequant)
{
	return cal_cpu_rows(be, a, a->rows, a->cols, int8_dq_row, err);
}
