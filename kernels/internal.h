/*
 * internal.h — helpers shared by the C op files kernels/<op>.c: argument
 * checks, element loads, and the partial results CPU threads fold together.
 * Not for use outside kernels/.
 */
#ifndef CAL_KERNELS_INTERNAL_H
#define CAL_KERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/lanes32.h"
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

/* The signatures of an op's argument check and CPU back end, as ops.h
 * declares them from ops.def; kernels/<op>.c defines them with these (the
 * CUDA side has CAL_CUDA_OP, kernels/cuda/common.cuh). */
#define CAL_CHECK_OP(name)                                                     \
	enum cal_status cal_check_##name(const struct cal_##name##_args *a,    \
					 struct cal_error *err)
#define CAL_CPU_OP(name)                                                       \
	enum cal_status cal_cpu_##name(struct cal_backend *be,                 \
				       const struct cal_##name##_args *a,      \
				       struct cal_error *err)

/* Argument checks; each names the op field on failure. */
enum cal_status cal_check_ptr(const void *p, const char *field, struct cal_error *err);

/* The batched f64 factor ops' (chol_inv, gptq_factor) sizes: batch in
 * [0, 65535] matrices of n in [1, 65536]. */
enum cal_status cal_check_batch_n(uint32_t batch, uint64_t n, struct cal_error *err);

/* A pointer argument and its field name, for cal_check_ptrs. */
struct cal_arg_ptr {
	const void *p;
	const char *field;
};
/* The first of the n pointers of v that is NULL, as cal_check_ptr reports
 * it; CAL_OK when none is. */
enum cal_status cal_check_ptrs(const struct cal_arg_ptr *v, size_t n, struct cal_error *err);

/* CAL_CHECK_PTRS(a, err, x, w, out): cal_check_ptrs over the fields
 * a->x, a->w, a->out (1 to 8, checked in that order), each named as
 * written. */
#define CAL_CHECK_PTRS(a, err, ...)                                            \
	cal_check_ptrs((const struct cal_arg_ptr[]){CAL_ARG_NTH_(__VA_ARGS__,  \
		CAL_ARG_PTRS8_, CAL_ARG_PTRS7_, CAL_ARG_PTRS6_, CAL_ARG_PTRS5_,  \
		CAL_ARG_PTRS4_, CAL_ARG_PTRS3_, CAL_ARG_PTRS2_, CAL_ARG_PTRS1_, \
		0)(a, __VA_ARGS__)},                                             \
		       CAL_ARG_NTH_(__VA_ARGS__, 8, 7, 6, 5, 4, 3, 2, 1, 0), err)
#define CAL_ARG_NTH_(x1, x2, x3, x4, x5, x6, x7, x8, n, ...) n
#define CAL_ARG_PTR_(a, f) {(a)->f, #f}
#define CAL_ARG_PTRS1_(a, f) CAL_ARG_PTR_(a, f)
#define CAL_ARG_PTRS2_(a, f, ...) CAL_ARG_PTR_(a, f), CAL_ARG_PTRS1_(a, __VA_ARGS__)
#define CAL_ARG_PTRS3_(a, f, ...) CAL_ARG_PTR_(a, f), CAL_ARG_PTRS2_(a, __VA_ARGS__)
#define CAL_ARG_PTRS4_(a, f, ...) CAL_ARG_PTR_(a, f), CAL_ARG_PTRS3_(a, __VA_ARGS__)
#define CAL_ARG_PTRS5_(a, f, ...) CAL_ARG_PTR_(a, f), CAL_ARG_PTRS4_(a, __VA_ARGS__)
#define CAL_ARG_PTRS6_(a, f, ...) CAL_ARG_PTR_(a, f), CAL_ARG_PTRS5_(a, __VA_ARGS__)
#define CAL_ARG_PTRS7_(a, f, ...) CAL_ARG_PTR_(a, f), CAL_ARG_PTRS6_(a, __VA_ARGS__)
#define CAL_ARG_PTRS8_(a, f, ...) CAL_ARG_PTR_(a, f), CAL_ARG_PTRS7_(a, __VA_ARGS__)
enum cal_status cal_check_obs_dtype(enum cal_dtype dt, struct cal_error *err);
enum cal_status cal_check_out_dtype(enum cal_dtype dt, struct cal_error *err);
/* An enum argument `field` (passed as int) is one of 0..last. */
enum cal_status cal_check_enum(int v, int last, const char *field, struct cal_error *err);
/* A router's expert counts: 1 <= k <= k_total <= e. */
enum cal_status cal_check_topk(uint32_t e, uint32_t k, uint32_t k_total, struct cal_error *err);
/* A per-row sums op's arguments (err_rows, sqnr_rows): shape; with rows and
 * cols, the inputs x and y (named x_field, y_field); with rows, sums. */
enum cal_status cal_check_row_sums(uint64_t rows, uint64_t cols, const void *x, const char *x_field,
				   const void *y, const char *y_field, const double *sums,
				   struct cal_error *err);
/* rows*cols <= CAL_MAX_ELEMS and cols % multiple == 0 (multiple may be 1). */
enum cal_status cal_check_shape(uint64_t rows, uint64_t cols, uint64_t multiple,
				struct cal_error *err);
/* cal_check_shape(rows, cols, 1) of each of the n {rows, cols} of v in
 * turn: the first failure, else CAL_OK.  CAL_CHECK_SHAPES(err, {m, k},
 * {n, k}) writes the array. */
enum cal_status cal_check_shapes(const uint64_t (*v)[2], size_t n, struct cal_error *err);
#define CAL_CHECK_SHAPES(err, ...)                                                  \
	cal_check_shapes((const uint64_t[][2]){__VA_ARGS__},                        \
			 sizeof((const uint64_t[][2]){__VA_ARGS__}) / sizeof(uint64_t[2]), err)
/* An FP8 op's tiling: with a per-tile scale (tiled) and n > 0, cols > 0
 * divides n. */
enum cal_status cal_check_fp8_tiling(uint64_t n, int tiled, uint64_t cols,
				     struct cal_error *err);
/* An INT4 op's shape: cols % 128 == 0 and rows even (row pairs pack). */
enum cal_status cal_check_int4_shape(uint64_t rows, uint64_t cols, struct cal_error *err);
/* A max|x| observer's arguments: input dtype, shape, rows <= 2^32-1, and the
 * amax / nonfinite outputs. */
enum cal_status cal_check_obs(enum cal_dtype dtype, uint64_t rows, uint64_t cols,
			      const float *amax, const struct cal_nonfinite *nonfinite,
			      struct cal_error *err);
/* A per-item observer's arguments (amax_blocks, amax_cols): shape (cols %
 * multiple == 0), nonfinite, and with rows and cols, x and amax. */
enum cal_status cal_check_obs_items(uint64_t rows, uint64_t cols, uint64_t multiple,
				    const void *x, const float *amax,
				    const struct cal_nonfinite *nonfinite, struct cal_error *err);
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

/* CPU back end of both static NVFP4 ops (docs/numerics.md "NVFP4 static and
 * MSE"), items 16-blocks of the bf16 weights w: with sweep_amax set, each
 * block's amax by the MSE FP8-scale sweep into it (nvfp4_mse_sweep); else
 * the blocks quantized from block_amax into packed and scales
 * (nvfp4_static_quant).  Defined in nvfp4_static_quant.c. */
struct cal_nvfp4_static_run {
	const uint16_t *w;
	float global_amax, norm_max;
	enum cal_div_mode div;
	const float *block_amax;
	uint8_t *packed, *scales;
	float *sweep_amax;
};
enum cal_status cal_cpu_nvfp4_static(struct cal_backend *be, uint64_t rows, uint64_t cols,
				     const struct cal_nvfp4_static_run *run, struct cal_error *err);

/* CPU back end of both MX weight quantizers (docs/numerics.md "MX
 * formats"), items 32-blocks of the bf16 weights w: scales[b] is the E8M0
 * byte from max|x| (MXFP4's when fp4, else MXFP8's); out gets the block
 * scaled by the byte's power of two (NaN for 0xff), as kernels/cuda/
 * mx_common.cuh does per lane group: MXFP4 16 packed bytes a block, MXFP8
 * 32 E4M3 bytes.  Defined in mxfp8_quant.c. */
enum cal_status cal_cpu_mx_quant(struct cal_backend *be, uint64_t rows, uint64_t cols,
				 const uint16_t *w, int fp4, enum cal_div_mode div, uint8_t *out,
				 uint8_t *scales, struct cal_error *err);

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

/* ---- CPU drivers shared by the op files (kernels/cpu_run.c) ---- */

/* The partial of a max|x| observer over its items [begin, end) of args:
 * folds every element into *max_bits and *nf (cal_obs_elem), which start
 * cleared. */
typedef void (*cal_obs_range_fn)(const void *args, uint64_t begin, uint64_t end,
				 uint32_t *max_bits, struct cal_nf_part *nf);

/* Runs a max|x| observer on the CPU threads (cal_cpu_parallel over n_items,
 * min_items), one partial per thread, then folds them into *amax and *nf in
 * thread order. */
enum cal_status cal_cpu_observe(struct cal_backend *be, uint64_t n_items, uint64_t min_items,
				cal_obs_range_fn fn, const void *args, float *amax,
				struct cal_nonfinite *nf, struct cal_error *err);

/* A max|x| observer whose amaxes are per item (amax_blocks: blocks,
 * amax_cols: columns): item t's elements are x[t * item_step + k *
 * elem_step] for k < count, in that order; their max folds into amax[t]
 * and non-finite ones into the report at index_base + flat index. */
struct cal_obs_items {
	enum cal_dtype dtype;
	const void *x;
	uint64_t index_base;
	float *amax;
	uint64_t item_step, elem_step, count;
};

/* Runs a per-item observer on the CPU threads (cal_cpu_parallel over
 * n_items, min_items), the per-thread non-finite partials folded into *nf
 * after. */
enum cal_status cal_cpu_observe_items(struct cal_backend *be, const struct cal_obs_items *o,
				      uint64_t n_items, uint64_t min_items,
				      struct cal_nonfinite *nf, struct cal_error *err);

/* Runs a per-row sums op on the CPU threads, one row per item: sums[2r],
 * sums[2r+1] are row r's sums of terms(args, r * cols + c) over its cols
 * columns (cal_lanes32_sums). */
enum cal_status cal_cpu_row_sums(struct cal_backend *be, const void *args, uint64_t rows,
				 uint64_t cols, cal_lanes32_terms_fn terms, double *sums,
				 struct cal_error *err);
/* The check and CPU entry points of a per-row f64 sums op whose args have
 * rows, cols, sums and the inputs X and Y (named so in errors); TERMS gives
 * each element's two terms. */
#define CAL_ROW_SUMS_OP(name, x, y, terms)                                                    \
	CAL_CHECK_OP(name)                                                                    \
	{                                                                                     \
		return cal_check_row_sums(a->rows, a->cols, a->x, #x, a->y, #y, a->sums, err); \
	}                                                                                     \
	CAL_CPU_OP(name)                                                                      \
	{                                                                                     \
		return cal_cpu_row_sums(be, a, a->rows, a->cols, terms, a->sums, err);         \
	}

/* Runs an INT4 op (docs/numerics.md "INT4 blocks") on the CPU threads, one
 * item per row pair pr (rows 2pr, 2pr+1) and 128-block b of cols:
 * block(args, pr, b, nb) with nb = cols / 128 blocks a row. */
typedef void (*cal_int4_block_fn)(const void *args, uint64_t pr, uint64_t b, uint64_t nb);
enum cal_status cal_cpu_int4_blocks(struct cal_backend *be, const void *args, uint64_t rows,
				    uint64_t cols, cal_int4_block_fn block, struct cal_error *err);

/* Runs a per-row op (INT8, docs/numerics.md "INT8") on the CPU threads,
 * row(args, r) for each row r of [rows, cols] (nothing when cols is 0). */
typedef void (*cal_row_fn)(const void *args, uint64_t r);
enum cal_status cal_cpu_rows(struct cal_backend *be, const void *args, uint64_t rows,
			     uint64_t cols, cal_row_fn row, struct cal_error *err);

/* cal_cpu_parallel(be, n_items, 1, fn, ctx) with per-thread scratch:
 * *scratch holds per_slot floats for each slot while fn runs (slot i's at
 * *scratch + i * per_slot), and is freed and NULL after.  `what` names the
 * op when the scratch cannot be allocated (CAL_ERR_NOMEM). */
enum cal_status cal_cpu_parallel_scratch(struct cal_backend *be, uint64_t n_items,
					 uint64_t per_slot, float **scratch, cal_cpu_range_fn fn, void *ctx,
					 const char *what, struct cal_error *err);

/* Stores v as F32 or BF16 at out[i]. */
static inline void cal_store_out(enum cal_dtype dt, void *out, uint64_t i, float v)
{
	if (dt == CAL_DTYPE_BF16)
		((uint16_t *)out)[i] = cal_nf_f32_to_bf16(v);
	else
		((float *)out)[i] = v;
}

#endif
