/*
 * int4_quant.c — INT4 per-block weight quantizer (docs/numerics.md "INT4
 * blocks"), block 128 along cols: scale = export_amax/7 (0/NaN amax -> 7, i.e.
 * scale 1), q = clamp(rint(x / scale), -8, 7), packed along the OUTPUT dim:
 * packed[i, k] = q[2i, k] & 0xF | (q[2i+1, k] & 0xF) << 4. Reference and CPU
 * back end; items are (row pair, 128-block).
 */
#include "kernels/internal.h"

static void int4_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_int4_quant_args *a = p;
	uint64_t nb = a->cols / 128;
	(void)slot;
	for (uint64_t it = begin; it < end; it++) {
		uint64_t pr = it / nb, b = it % nb;
		uint64_t r0 = 2 * pr, r1 = 2 * pr + 1;
		float s0 = cal_int4_block_scale(a->block_amax[r0 * nb + b], a->div);
		float s1 = cal_int4_block_scale(a->block_amax[r1 * nb + b], a->div);
		for (uint64_t k = b * 128; k < (b + 1) * 128; k++) {
			unsigned lo = cal_int4_encode(cal_nf_bf16_to_f32(a->w[r0 * a->cols + k]), s0);
			unsigned hi = cal_int4_encode(cal_nf_bf16_to_f32(a->w[r1 * a->cols + k]), s1);
			a->packed[pr * a->cols + k] = (uint8_t)(lo | hi << 4);
		}
		a->scales[r0 * nb + b] = s0;
		a->scales[r1 * nb + b] = s1;
	}
}

CAL_CHECK_OP(int4_quant)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->rows, a->cols, 128, err)) < 0)
		return st;
	if (a->rows % 2)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'rows' = %llu is odd (INT4 packs row pairs)",
				     (unsigned long long)a->rows);
	if (a->rows && a->cols && (st = CAL_CHECK_PTRS(a, err, w, block_amax, packed, scales)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(int4_quant)
{
	return cal_cpu_parallel(be, a->rows / 2 * (a->cols / 128), 1024, int4_range, (void *)a, err);
}
