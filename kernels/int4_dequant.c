/*
 * int4_dequant.c — INT4 per-block dequantize: out[r, k] = fl32(q * scale[r, k/128]),
 * q from the nibble of packed[r/2, k] (low nibble = even row).
 * Reference and CPU back end; items are (row pair, 128-block).
 */
#include "kernels/internal.h"

static void int4_dq_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_int4_dequant_args *a = p;
	uint64_t nb = a->cols / 128;
	(void)slot;
	for (uint64_t it = begin; it < end; it++) {
		uint64_t pr = it / nb, b = it % nb;
		float s0 = a->scales[2 * pr * nb + b], s1 = a->scales[(2 * pr + 1) * nb + b];
		for (uint64_t k = b * 128; k < (b + 1) * 128; k++) {
			uint8_t byte = a->packed[pr * a->cols + k];
			cal_store_out(a->out_dtype, a->out, 2 * pr * a->cols + k,
				      cal_fmul(cal_int4_decode(byte & 0xfu), s0));
			cal_store_out(a->out_dtype, a->out, (2 * pr + 1) * a->cols + k,
				      cal_fmul(cal_int4_decode(byte >> 4), s1));
		}
	}
}

CAL_CHECK_OP(int4_dequant)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->rows, a->cols, 128, err)) < 0 ||
	    (st = cal_check_out_dtype(a->out_dtype, err)) < 0)
		return st;
	if (a->rows % 2)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'rows' = %llu is odd (INT4 packs row pairs)",
				     (unsigned long long)a->rows);
	if (a->rows && a->cols && (st = CAL_CHECK_PTRS(a, err, packed, scales, out)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(int4_dequant)
{
	return cal_cpu_parallel(be, a->rows / 2 * (a->cols / 128), 1024, int4_dq_range, (void *)a, err);
}
