/*
 * fp8_dequant.c — FP8 E4M3 per-tensor dequantize: out = fl32(e4m3 * scale).
 * Reference and CPU back end; items are elements.
 */
#include "kernels/internal.h"

static void fp8_dq_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_fp8_dequant_args *a = p;
	(void)slot;
	for (uint64_t i = begin; i < end; i++)
		cal_store_out(a->out_dtype, a->out, i, cal_fmul(cal_e4m3_decode(a->q[i]), a->scale));
}

CAL_CHECK_OP(fp8_dequant)
{
	enum cal_status st;
	if ((st = cal_check_shape(1, a->n, 1, err)) < 0 ||
	    (st = cal_check_out_dtype(a->out_dtype, err)) < 0)
		return st;
	if (a->n && (st = CAL_CHECK_PTRS(a, err, q, out)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(fp8_dequant)
{
	return cal_cpu_parallel(be, a->n, 1u << 18, fp8_dq_range, (void *)a, err);
}
