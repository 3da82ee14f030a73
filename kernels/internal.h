/*
 * internal.h — helpers shared by the C op files kernels/<op>.c: argument
 * checks, element loads, and the partial results CPU threads fold together.
 * Not for use outside kernels/.
 */
#ifndef CAL_KERNELS_INTERNAL_H
#define CAL_KERNELS_INTERNAL_H

#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/numfmt.h"
#include "kernels/ops.h"

#define CAL_CPU_SLOTS_MAX 256u
/* Largest element count an op accepts (2^48): keeps every index product
 * below 2^63 and every byte count inside size_t. */
#define CAL_MAX_ELEMS (UINT64_C(1) << 48)

/* Per-thread non-finite partial. */
struct cal_nf_part {
	uint64_t count, first;
};

/* Argument checks; each names the op field on failure. */
enum cal_status cal_check_ptr(const void *p, const char *field, struct cal_error *err);
enum cal_status cal_check_obs_dtype(enum cal_dtype dt, struct cal_error *err);
enum cal_status cal_check_out_dtype(enum cal_dtype dt, struct cal_error *err);
/* rows*cols <= CAL_MAX_ELEMS and cols % multiple == 0 (multiple may be 1). */
enum cal_status cal_check_shape(uint64_t rows, uint64_t cols, uint64_t multiple,
				struct cal_error *err);
/* A max|x| observer's arguments: input dtype, shape, rows <= 2^32-1, and the
 * amax / nonfinite outputs. */
enum cal_status cal_check_obs(enum cal_dtype dtype, uint64_t rows, uint64_t cols,
			      const float *amax, const struct cal_nonfinite *nonfinite,
			      struct cal_error *err);
/* A sequence op's token count and packing: t <= 2^32-1 and, with t > 0,
 * n_seq > 0. */
enum cal_status cal_check_tokens(uint64_t t, uint32_t n_seq, struct cal_error *err);
/* A block-scaled quantizer's arguments: shape (cols % block == 0) and the
 * w, data (named data_field) and scales pointers. */
enum cal_status cal_check_block_quant(uint64_t rows, uint64_t cols, uint64_t block,
				      const void *w, const void *data, const char *data_field,
				      const void *scales, struct cal_error *err);
/* A block-scaled dequantizer's arguments: shape (cols % block == 0), output
 * dtype, and the data (named data_field), scales and out pointers. */
enum cal_status cal_check_block_dequant(uint64_t rows, uint64_t cols, uint64_t block,
					enum cal_dtype out_dtype, const void *data,
					const char *data_field, const void *scales, const void *out,
					struct cal_error *err);
/* A row-normalizing op's shape and eps: rows*cols in range; with rows > 0,
 * cols > 0 and eps finite and >= 0. */
enum cal_status cal_check_norm_shape(uint64_t rows, uint64_t cols, float eps,
				     struct cal_error *err);
/* The arguments static NVFP4 ops share: shape (cols % 16 == 0), a finite
 * global_amax > 0, norm_max 448 or 256, and the w / block_amax pointers. */
enum cal_status cal_check_nvfp4_static(uint64_t rows, uint64_t cols, float global_amax,
				       float norm_max, const void *w, const void *block_amax,
				       struct cal_error *err);

/* Widens n BF16 values to fp32. */
static inline void cal_load_bf16(float *x, const uint16_t *w, int n)
{
	for (int k = 0; k < n; k++)
		x[k] = cal_nf_bf16_to_f32(w[k]);
}

/* fp32 bits of element i (bf16 widened), sign cleared. */
static inline uint32_t cal_abs_bits(enum cal_dtype dt, const void *x, uint64_t i)
{
	if (dt == CAL_DTYPE_BF16)
		return ((uint32_t)((const uint16_t *)x)[i] << 16) & 0x7fffffffu;
	return cal_nf_bits(((const float *)x)[i]) & 0x7fffffffu;
}

/* Folds one element's |x| bits into a running max / non-finite partial. */
static inline void cal_obs_elem(uint32_t abits, uint64_t index, uint32_t *max_bits,
				struct cal_nf_part *nf)
{
	if (abits >= 0x7f800000u) {
		nf->count++;
		if (index < nf->first)
			nf->first = index;
	} else if (abits > *max_bits) {
		*max_bits = abits;
	}
}

/* amax = max(amax, value of bits), compared as signed int bits as the CUDA
 * atomicMax does (identical for amax >= 0). */
static inline void cal_amax_fold(float *amax, uint32_t bits)
{
	if ((int32_t)bits > (int32_t)cal_nf_bits(*amax))
		*amax = cal_nf_float(bits);
}

static inline void cal_nf_fold(struct cal_nonfinite *nf, const struct cal_nf_part *p)
{
	nf->count += p->count;
	if (p->first < nf->first)
		nf->first = p->first;
}

/* An observer whose amaxes are per item (blocks, columns): its range
 * function gets this context and leaves its non-finite report in
 * nf[slot]. */
struct cal_obs_items {
	const void *a; /* the op's arguments */
	struct cal_nf_part nf[CAL_CPU_SLOTS_MAX];
};

/* cal_cpu_parallel of fn over n_items with c's non-finite partials cleared
 * first and folded into nf after. */
static inline enum cal_status cal_cpu_observe_items(struct cal_backend *be, uint64_t n_items,
						    uint64_t min_items, cal_cpu_range_fn fn,
						    struct cal_obs_items *c,
						    struct cal_nonfinite *nf, struct cal_error *err)
{
	unsigned k = cal_cpu_slots(be, n_items, min_items);
	for (unsigned i = 0; i < k; i++)
		c->nf[i] = (struct cal_nf_part){0, CAL_NONFINITE_NONE};
	enum cal_status st = cal_cpu_parallel(be, n_items, min_items, fn, c, err);
	if (st < 0)
		return st;
	for (unsigned i = 0; i < k; i++)
		cal_nf_fold(nf, &c->nf[i]);
	return CAL_OK;
}

/* Per-thread partials of a max|x| observer: one max and one non-finite
 * report per CPU slot, cleared before the threads run and folded after. */
struct cal_obs_slots {
	uint32_t max_bits[CAL_CPU_SLOTS_MAX];
	struct cal_nf_part nf[CAL_CPU_SLOTS_MAX];
};

static inline void cal_obs_slots_clear(struct cal_obs_slots *s, unsigned k)
{
	for (unsigned i = 0; i < k; i++) {
		s->max_bits[i] = 0;
		s->nf[i] = (struct cal_nf_part){0, CAL_NONFINITE_NONE};
	}
}

static inline void cal_obs_slots_fold(const struct cal_obs_slots *s, unsigned k, float *amax,
				      struct cal_nonfinite *nf)
{
	for (unsigned i = 0; i < k; i++) {
		cal_amax_fold(amax, s->max_bits[i]);
		cal_nf_fold(nf, &s->nf[i]);
	}
}

/* Stores v as F32 or BF16 at out[i]. */
static inline void cal_store_out(enum cal_dtype dt, void *out, uint64_t i, float v)
{
	if (dt == CAL_DTYPE_BF16)
		((uint16_t *)out)[i] = cal_nf_f32_to_bf16(v);
	else
		((float *)out)[i] = v;
}

#endif
