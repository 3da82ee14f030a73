/*
 * int8_dequant.c — INT8 per-output-channel dequantize: out[r, k] =
 * fl32(q[r, k] * scale[r]).  Reference and CPU back end; items are rows.
 */
#include "kernels/internal.h"

static void int8_dq_row(const void *p, uint64_t r)
{
	const struct cal_int8_dequant_args *a = p;
	for (uint64_t k = 0; k < a->cols; k++)
		cal_store_out(a->out_dtype, a->out, r * a->cols + k,
			      cal_fmul(cal_int8_decode(a->q[r * a->cols + k]), a->scales[r]));
}

CAL_CHECK_OP(int8_dequant)
{
	return cal_check_block_dequant(a->rows, a->cols, 1, a->out_dtype, a->q, "q", a->scales,
				       a->out, err);
}

CAL_CPU_OP(int8_dequant)
{
	return cal_cpu_rows(be, a, a->rows, a->cols, int8_dq_row, err);
}
