/*
 * hadamard.c — normalized Walsh-Hadamard transform in place along the last
 * dimension, in blocks (docs/numerics.md "KV-cache rotation"): each block of
 * `block` consecutive bf16 values of a row is widened to fp32, run through
 * the butterfly (strides 1, 2, 4, ...: a + b, a - b in fp32), multiplied by
 * fl32(block^-0.5) and rounded back to bf16.  Reference and CPU back end;
 * items are rows.
 */
#include <math.h>

#include "kernels/internal.h"

static void hadamard_block(uint16_t *x, uint32_t block, float scale)
{
	float v[CAL_HADAMARD_MAX_BLOCK];
	for (uint32_t i = 0; i < block; i++)
		v[i] = cal_nf_bf16_to_f32(x[i]);
	cal_hadamard_f32(v, block);
	for (uint32_t i = 0; i < block; i++)
		x[i] = cal_nf_f32_to_bf16(v[i] * scale);
}

static void hadamard_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_hadamard_args *a = p;
	float scale = (float)(1.0 / sqrt((double)a->block));
	(void)slot;
	for (uint64_t r = begin; r < end; r++)
		for (uint64_t c = 0; c < a->cols; c += a->block)
			hadamard_block(a->x + r * a->cols + c, a->block, scale);
}

CAL_CHECK_OP(hadamard)
{
	enum cal_status st;
	if (a->block < 1 || a->block > CAL_HADAMARD_MAX_BLOCK || (a->block & (a->block - 1)))
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'block' = %u: must be a power of two <= %u", a->block,
				     CAL_HADAMARD_MAX_BLOCK);
	if ((st = cal_check_shape(a->rows, a->cols, a->block, err)) < 0)
		return st;
	if (a->rows == 0 || a->cols == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, x);
}

CAL_CPU_OP(hadamard)
{
	if (a->rows == 0 || a->cols == 0)
		return CAL_OK;
	return cal_cpu_parallel(be, a->rows, (1u << 14) / a->cols + 1, hadamard_range, (void *)a,
				err);
}
