/*
 * fp8_block_dequant.c — block-scaled FP8 source weights (DeepSeek-V3
 * checkpoints): out = bf16(fl32(e4m3 * scale_inv[r / br, c / bc])), the
 * scale grid ceil-divided so partial edge blocks are allowed (transformers'
 * own dequantizer computes fp32(q) * fp32(scale) and casts to the model
 * dtype, for evenly divisible shapes).  Reference and CPU back end; items
 * are rows.
 */
#include "kernels/internal.h"

static void fp8b_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_fp8_block_dequant_args *a = p;
	uint64_t sc = (a->cols + a->block_cols - 1) / a->block_cols;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		const float *s = a->scale_inv + (r / a->block_rows) * sc;
		for (uint64_t c = 0; c < a->cols; c++)
			a->out[r * a->cols + c] =
				cal_fp8_block_value(a->q[r * a->cols + c], s[c / a->block_cols]);
	}
}

CAL_CHECK_OP(fp8_block_dequant)
{
	enum cal_status st;
	if (a->block_rows == 0 || a->block_cols == 0)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments block_rows = %u, block_cols = %u: must be > 0",
				     a->block_rows, a->block_cols);
	if ((st = cal_check_shape(a->rows, a->cols, 1, err)) < 0)
		return st;
	if (a->rows == 0 || a->cols == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, q, scale_inv, out);
}

CAL_CPU_OP(fp8_block_dequant)
{
	if (a->rows == 0 || a->cols == 0)
		return CAL_OK;
	return cal_cpu_parallel(be, a->rows, (1u << 16) / a->cols + 1, fp8b_range, (void *)a, err);
}
