/*
 * fp8_dequant.c — FP8 E4M3 dequantize: out = fl32(e4m3 * scale), per tensor
 * or with one scale per tile (row_scale: a row, or tile x tile).
 * Reference and CPU back end; items are elements.
 */
#include "kernels/internal.h"

static void fp8_dq_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_fp8_dequant_args *a = p;
	(void)slot;
	for (uint64_t i = begin; i < end; i++)
		cal_store_out(a->out_dtype, a->out, i,
			      cal_fmul(cal_e4m3_decode(a->q[i]),
				       a->row_scale ? a->row_scale[cal_fp8_tile_of(i / a->cols,
										   i % a->cols,
										   a->cols, a->tile)]
						    : a->scale));
}

CAL_CHECK_OP(fp8_dequant)
{
	enum cal_status st;
	if ((st = cal_check_shape(1, a->n, 1, err)) < 0 ||
	    (st = cal_check_out_dtype(a->out_dtype, err)) < 0)
		return st;
	if (a->n && (st = CAL_CHECK_PTRS(a, err, q, out)) < 0)
		return st;
	if (a->n && a->row_scale && (!a->cols || a->n % a->cols))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'cols' = %llu does not divide "
				     "n = %llu", (unsigned long long)a->cols,
				     (unsigned long long)a->n);
	return CAL_OK;
}

CAL_CPU_OP(fp8_dequant)
{
	return cal_cpu_parallel(be, a->n, 1u << 18, fp8_dq_range, (void *)a, err);
}
