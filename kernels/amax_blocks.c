/*
 * amax_blocks.c — observer: running max|x| per block of 16/32/64/128
 * consecutive elements along the last dim (static NVFP4 per-block amax,
 * INT4 block amax), with a non-finite report.  Reference and CPU back end;
 * items are blocks (a block never crosses a row since cols % block == 0).
 */
#include "kernels/internal.h"

static void blocks_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct cal_obs_items *c = p;
	const struct cal_amax_blocks_args *a = c->a;
	struct cal_nf_part nf = {0, CAL_NONFINITE_NONE};

	for (uint64_t b = begin; b < end; b++) {
		uint32_t m = 0;
		for (uint64_t i = b * a->block; i < (b + 1) * a->block; i++)
			cal_obs_elem(cal_abs_bits(a->dtype, a->x, i), a->index_base + i, &m, &nf);
		cal_amax_fold(&a->amax[b], m);
	}
	c->nf[slot] = nf;
}

CAL_CHECK_OP(amax_blocks)
{
	enum cal_status st;
	if ((st = cal_check_obs_dtype(a->dtype, err)) < 0)
		return st;
	if (a->block != 16 && a->block != 32 && a->block != 64 && a->block != 128)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'block' = %u is not 16, 32, 64 or 128", a->block);
	if ((st = cal_check_shape(a->rows, a->cols, a->block, err)) < 0 ||
	    (st = cal_check_ptr(a->nonfinite, "nonfinite", err)) < 0)
		return st;
	if (a->rows && a->cols && (st = CAL_CHECK_PTRS(a, err, x, amax)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(amax_blocks)
{
	struct cal_obs_items c = {.a = a};
	uint64_t nb = a->rows * a->cols / a->block, min = (1u << 18) / a->block;
	return cal_cpu_observe_items(be, nb, min, blocks_range, &c, a->nonfinite, err);
}
