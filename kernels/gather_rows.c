/*
 * gather_rows.c — out[i, :] = src[index[i] / div, :] (bf16): embedding
 * lookup and the gather of tokens sorted by expert.  Reference and CPU back
 * end; items are output rows.
 */
#include <string.h>

#include "kernels/internal.h"

struct gather_ctx {
	const struct cal_gather_rows_args *a;
};

static void gather_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_gather_rows_args *a = ((struct gather_ctx *)p)->a;
	uint32_t div = a->div > 1 ? a->div : 1;
	(void)slot;
	for (uint64_t i = begin; i < end; i++)
		memcpy(a->out + i * a->cols, a->src + (uint64_t)(a->index[i] / div) * a->cols,
		       a->cols * sizeof(uint16_t));
}

CAL_CHECK_OP(gather_rows)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->src_rows, a->cols, 1, err)) < 0 ||
	    (st = cal_check_shape(a->n, a->cols, 1, err)) < 0)
		return st;
	if (a->n == 0 || a->cols == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, src, index, out);
}

CAL_CPU_OP(gather_rows)
{
	struct gather_ctx c = {a};
	uint32_t div = a->div > 1 ? a->div : 1;
	if (a->n == 0 || a->cols == 0)
		return CAL_OK;
	for (uint64_t i = 0; i < a->n; i++)
		if (a->index[i] / div >= a->src_rows)
			return cal_error_set(err, CAL_ERR_RANGE,
					     "index[%llu] = %u selects row %u of %llu",
					     (unsigned long long)i, a->index[i], a->index[i] / div,
					     (unsigned long long)a->src_rows);
	return cal_cpu_parallel(be, a->n, (1u << 16) / a->cols + 1, gather_range, &c, err);
}
