/*
 * amax_segments.c — observer: running max|x| per segment of rows, for
 * tokens sorted by expert (segment s = rows offsets[s] .. offsets[s+1]-1),
 * with a non-finite report.  Reference and CPU back end; items are rows.
 */
#include <stdlib.h>

#include "kernels/internal.h"

struct seg_ctx {
	const struct cal_amax_segments_args *a;
	uint64_t row0;
	uint32_t *max_bits; /* [slots][n_seg] */
	struct cal_nf_part nf[CAL_CPU_SLOTS_MAX];
};

static void seg_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct seg_ctx *c = p;
	const struct cal_amax_segments_args *a = c->a;
	uint32_t *m = c->max_bits + (uint64_t)slot * a->n_seg;
	struct cal_nf_part nf = {0, CAL_NONFINITE_NONE};

	for (uint64_t k = begin; k < end; k++) {
		uint32_t r = (uint32_t)(c->row0 + k);
		uint32_t s = cal_segment_of(a->offsets, a->n_seg, r);
		for (uint64_t j = 0; j < a->cols; j++) {
			uint64_t i = (uint64_t)r * a->cols + j;
			cal_obs_elem(cal_abs_bits(a->dtype, a->x, i), a->index_base + i, &m[s], &nf);
		}
	}
	c->nf[slot] = nf;
}

CAL_CHECK_OP(amax_segments)
{
	enum cal_status st;
	if ((st = cal_check_obs(a->dtype, a->rows, a->cols, a->amax, a->nonfinite, err)) < 0 ||
	    (st = cal_check_ptr(a->offsets, "offsets", err)) < 0)
		return st;
	if (a->n_seg == 0 || a->n_seg > (1u << 20))
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'n_seg' = %u not in [1, 2^20]",
				     a->n_seg);
	if (a->rows && a->cols && (st = cal_check_ptr(a->x, "x", err)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(amax_segments)
{
	struct seg_ctx c;
	uint64_t r0 = a->offsets[0], r1 = a->offsets[a->n_seg];
	uint64_t min = a->cols ? (1u << 18) / a->cols + 1 : 1u << 18;
	unsigned k;
	enum cal_status st;

	if (r1 > a->rows)
		r1 = a->rows;
	if (r0 >= r1 || a->cols == 0)
		return CAL_OK;
	k = cal_cpu_slots(be, r1 - r0, min);
	c.a = a;
	c.row0 = r0;
	c.max_bits = calloc((size_t)k * a->n_seg, sizeof(uint32_t));
	if (!c.max_bits)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	for (unsigned i = 0; i < k; i++)
		c.nf[i] = (struct cal_nf_part){0, CAL_NONFINITE_NONE};
	st = cal_cpu_parallel(be, r1 - r0, min, seg_range, &c, err);
	if (st < 0)
		goto fail;
	for (unsigned i = 0; i < k; i++) {
		for (uint32_t s = 0; s < a->n_seg; s++)
			cal_amax_fold(&a->amax[s], c.max_bits[(uint64_t)i * a->n_seg + s]);
		cal_nf_fold(a->nonfinite, &c.nf[i]);
	}
fail:
	free(c.max_bits);
	return st;
}
