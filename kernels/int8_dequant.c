/*
 * int8_dequant.c — INT8 per-output-channel dequantize: out[r, k] =
 * fl32(q[r, k] * scale[r]).  Reference and CPU back end; items are rows.
 */
#include "kernels/internal.h"

static void int8_dq_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_int8_dequant_args *a = p;
	(void)slot;
	for (uint64_t r = begin; r < end; r++)
		for (uint64_t k = 0; k < a->cols; k++)
			cal_store_out(a->out_dtype, a->out, r * a->cols + k,
				      cal_fmul(cal_int8_decode(a->q[r * a->cols + k]), a->scales[r]));
}

CAL_CHECK_OP(int8_dequant)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->rows, a->cols, 1, err)) < 0 ||
	    (st = cal_check_out_dtype(a->out_dtype, err)) < 0)
		return st;
	if (a->rows && a->cols && (st = CAL_CHECK_PTRS(a, err, q, scales, out)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(int8_dequant)
{
	if (!a->cols)
		return CAL_OK;
	return cal_cpu_parallel(be, a->rows, 1 + 65536 / a->cols, int8_dq_range, (void *)a, err);
}
