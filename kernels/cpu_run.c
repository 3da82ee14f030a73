/*
 * cpu_run.c — drivers the CPU back ends of several ops share (internal.h):
 * an observer's per-thread partials (whole-tensor or per item), per-row
 * f64 sums, INT8 rows, INT4 blocks, and per-thread scratch.
 */
#include <stdlib.h>

#include "kernels/internal.h"

struct obs_run {
	cal_obs_range_fn fn;
	const void *args;
	uint32_t max_bits[CAL_CPU_SLOTS_MAX];
	struct cal_nf_part nf[CAL_CPU_SLOTS_MAX];
};

static void obs_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct obs_run *r = p;
	r->fn(r->args, begin, end, &r->max_bits[slot], &r->nf[slot]);
}

enum cal_status cal_cpu_observe(struct cal_backend *be, uint64_t n_items, uint64_t min_items,
				cal_obs_range_fn fn, const void *args, float *amax,
				struct cal_nonfinite *nf, struct cal_error *err)
{
	struct obs_run r;
	unsigned k = cal_cpu_slots(be, n_items, min_items);
	enum cal_status st;

	r.fn = fn;
	r.args = args;
	for (unsigned i = 0; i < k; i++) {
		r.max_bits[i] = 0;
		r.nf[i] = (struct cal_nf_part){0, CAL_NONFINITE_NONE};
	}
	st = cal_cpu_parallel(be, n_items, min_items, obs_range, &r, err);
	if (st < 0)
		return st;
	for (unsigned i = 0; i < k; i++) {
		cal_amax_fold(amax, r.max_bits[i]);
		cal_nf_fold(nf, &r.nf[i]);
	}
	return CAL_OK;
}

/* A cal_obs_range_fn over items of a cal_obs_items: each item's max goes
 * to its own amax, so *max_bits stays 0. */
static void obs_items_range(const void *p, uint64_t begin, uint64_t end, uint32_t *max_bits,
			    struct cal_nf_part *nf)
{
	const struct cal_obs_items *o = p;
	(void)max_bits;
	for (uint64_t t = begin; t < end; t++) {
		uint32_t m = 0;
		uint64_t i = t * o->item_step;
		for (uint64_t k = 0; k < o->count; k++, i += o->elem_step)
			cal_obs_elem(cal_abs_bits(o->dtype, o->x, i), o->index_base + i, &m, nf);
		cal_amax_fold(&o->amax[t], m);
	}
}

enum cal_status cal_cpu_observe_items(struct cal_backend *be, const struct cal_obs_items *o,
				      uint64_t n_items, uint64_t min_items,
				      struct cal_nonfinite *nf, struct cal_error *err)
{
	float none = 0.0f; /* the per-thread max_bits stay 0 */
	return cal_cpu_observe(be, n_items, min_items, obs_items_range, o, &none, nf, err);
}

struct row_sums_run {
	const void *args;
	uint64_t cols;
	cal_lanes32_terms_fn terms;
	double *sums;
};

static void row_sums_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct row_sums_run *r = p;
	(void)slot;
	for (uint64_t row = begin; row < end; row++)
		cal_lanes32_sums(r->args, row * r->cols, r->cols, r->terms, r->sums + 2 * row);
}

enum cal_status cal_cpu_row_sums(struct cal_backend *be, const void *args, uint64_t rows,
				 uint64_t cols, cal_lanes32_terms_fn terms, double *sums,
				 struct cal_error *err)
{
	struct row_sums_run r = {args, cols, terms, sums};
	uint64_t min_rows = cols ? (1u << 16) / cols + 1 : 1;
	return cal_cpu_parallel(be, rows, min_rows, row_sums_range, &r, err);
}

struct int4_run {
	const void *args;
	uint64_t nb;
	cal_int4_block_fn block;
};

static void int4_run_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct int4_run *r = p;
	(void)slot;
	for (uint64_t it = begin; it < end; it++)
		r->block(r->args, it / r->nb, it % r->nb, r->nb);
}

enum cal_status cal_cpu_int4_blocks(struct cal_backend *be, const void *args, uint64_t rows,
				    uint64_t cols, cal_int4_block_fn block, struct cal_error *err)
{
	struct int4_run r = {args, cols / 128, block};
	return cal_cpu_parallel(be, rows / 2 * r.nb, 1024, int4_run_range, &r, err);
}

struct rows_run {
	const void *args;
	cal_row_fn row;
};

static void rows_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct rows_run *r = p;
	(void)slot;
	for (uint64_t row = begin; row < end; row++)
		r->row(r->args, row);
}

enum cal_status cal_cpu_rows(struct cal_backend *be, const void *args, uint64_t rows,
			     uint64_t cols, cal_row_fn row, struct cal_error *err)
{
	struct rows_run r = {args, row};
	if (!cols)
		return CAL_OK;
	return cal_cpu_parallel(be, rows, 1 + 65536 / cols, rows_range, &r, err);
}

enum cal_status cal_cpu_parallel_scratch(struct cal_backend *be, uint64_t n_items,
					 uint64_t per_slot, float **scratch, cal_cpu_range_fn fn, void *ctx,
					 const char *what, struct cal_error *err)
{
	unsigned slots = cal_cpu_slots(be, n_items, 1);
	enum cal_status st;
	*scratch = malloc((size_t)slots * per_slot * sizeof(float));
	if (!*scratch)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", what);
	st = cal_cpu_parallel(be, n_items, 1, fn, ctx, err);
	free(*scratch);
	*scratch = NULL;
	return st;
}
