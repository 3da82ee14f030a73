/*
 * qfmt.h — the quantization format table (kernels/qfmt.def): what each
 * format calibd implements is, how a recipe selects it, how its tensors are
 * laid out and named in the exported checkpoint, and which ops quantize and
 * dequantize it.  The plan (engine/recipe), the exporter and `calibd verify`
 * (engine/export) read these rows instead of switching on the format, so a
 * new format is a row here plus its kernels (docs/numerics.md "Adding a
 * format").
 *
 * Weights are bf16 [rows = out, cols = in]; blocks run along cols.
 */
#ifndef CAL_KERNELS_QFMT_H
#define CAL_KERNELS_QFMT_H

#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/ops.h"

enum cal_qfmt {
	CAL_QFMT_NONE, /* not quantized (source dtype) */
#define CAL_QFMT(NAME, fields) CAL_QFMT_##NAME,
#include "kernels/qfmt.def"
#undef CAL_QFMT
	CAL_QFMT_COUNT
};

enum cal_qblock {
	CAL_QBLOCK_NONE,    /* per tensor (no block_sizes) */
	CAL_QBLOCK_DYNAMIC, /* block_sizes type: dynamic (scales from each block at run time) */
	CAL_QBLOCK_STATIC,  /* block_sizes type: static (calibrated per-block amax) */
};

/* Roles a format may take (plan refuses the others). */
#define CAL_QFMT_ROLE_WEIGHT 1
#define CAL_QFMT_ROLE_INPUT 2
#define CAL_QFMT_ROLE_KV 4 /* k/v bmm quantizers */

/* One quantization job on a back end: inputs and outputs in its memory. */
struct cal_qfmt_io {
	const uint16_t *w;        /* bf16 [rows, cols] */
	uint64_t rows, cols;
	uint32_t block;           /* the quantizer's block (the row's block) */
	float amax;               /* weight global amax (rows with calibrate) */
	float scale;              /* tensor scale from tensor_scale_of (0 if none) */
	enum cal_div_mode div;
	int mse;                  /* per-block amax by the MSE sweep (rows with mse) */
	int one_rounding;         /* FP8: gpt_oss BMM weights (docs/gpt_oss.md) */
	float *block_amax;        /* scratch [rows * cols / block] (rows with block_amax) */
	struct cal_nonfinite *nonfinite; /* scratch (rows with block_amax, unless mse) */
	void *packed;             /* weight bytes: rows * cols * elem_bits / 8 */
	void *scales;             /* block scales: rows * cols / block * scale_bytes */
	const uint16_t *qw;       /* the values quantized on w's block scales when
				   * they differ from w (GPTQ's updated weight,
				   * docs/gptq.md; static NVFP4 only), else NULL */
	int block_amax_set;       /* block_amax holds the block amax to quantize with
				   * (awq_full's clip, docs/awq.md; INT4 only) */
};

struct cal_qfmt_info {
	enum cal_qfmt id;
	const char *name;         /* "nvfp4_static": plans, reports, messages */
	const char *label;        /* "NVFP4-static": `calibd plan`'s table */
	const char *title;        /* "NVFP4 (static)": error messages */
	/* the recipe attributes that select it (QuantizerAttributeConfig) */
	int elem_e, elem_m;       /* num_bits (E, M); elem_e -1: an elem_bits-bit integer */
	int elem_bits;            /* 4 or 8 */
	enum cal_dtype elem_dtype;/* of the exported weight: U8 (packed pairs) or F8_E4M3 */
	int pack_rows;            /* 4-bit pairs packed along rows (INT4), else along cols */
	enum cal_qblock block_type;
	uint32_t block;           /* elements per block the kernels implement; 0 per tensor */
	uint32_t blocks[4];       /* block sizes a recipe may ask for (plan); block among them */
	/* per channel (block_type NONE): weights `axis: 0`, one F32 scale per
	 * output row (weight_scale [out], scale_bytes per row); inputs
	 * `type: dynamic` with `block_sizes: {-1: null}` (per token, nothing
	 * calibrated or exported), or with input_per_tensor static per
	 * tensor (a calibrated amax, input_scale []: INT8, SmoothQuant) */
	int per_channel;
	int input_per_tensor;
	/* 2-D blocks (block_type STATIC): `block_sizes: {-1: block, -2:
	 * block}`, one F32 scale per block x block tile of [out, in], ragged
	 * at the ends (weight_scale [out/block, 1, in/block, 1], or [] for a
	 * single tile, whose amax siblings share) */
	int block2d;
	/* a mixed W4A8 row: weights selected by the attributes of row
	 * `weight_of` (the plan never selects this row from attributes alone)
	 * whose linear's inputs are in format `act`; CAL_QFMT_NONE otherwise */
	enum cal_qfmt weight_of;
	int scale_e, scale_m;     /* scale_bits (E, M); scale_e -1: none given */
	enum cal_dtype scale_dtype; /* block scales: F8_E4M3, U8 (E8M0) or F32 */
	uint32_t scale_bytes;     /* per block */
	const char *tensor_scale; /* per-tensor F32 scale tensor ("weight_scale_2"), or NULL */
	float (*tensor_scale_of)(float amax, enum cal_div_mode div);
	/* input_scale of a linear with these weights whose inputs are quantized;
	 * NULL: none is written */
	enum cal_status (*input_scale_of)(float amax, enum cal_div_mode div, float *ret,
					  struct cal_error *err);
	int roles;                /* CAL_QFMT_ROLE_* */
	enum cal_qfmt act;        /* the input format that goes with these weights */
	int calibrate;            /* needs an amax (weights: global; inputs / KV: calibrated) */
	int block_amax;           /* quantize needs the per-block amax scratch */
	int mse;                  /* the MSE sweep (algorithm mse) applies */
	int shared_amax;          /* sibling linears share weight/input global amax (docs/export.md "Sibling groups") */
	int bmm;                  /* exported for GPT-OSS's fused BMM experts */
	/* the exported checkpoint's names (docs/export.md) */
	const char *hf_w, *hf_wa; /* quant_algo, weights only / with quantized inputs */
	int hf_group;             /* hf_quant_config carries group_size */
	int hf_config;            /* config.json config_groups: 0 none, 1 mixed only, 2 always */
	int hf_awq;               /* has_zero_point / pre_quant_scale keys */
	const char *hf_kv;        /* kv_cache_quant_algo on the KV cache (ROLE_KV) */
	/* k_scale / v_scale from a calibrated KV amax (ROLE_KV; modelopt divides
	 * by 448 for FP8 and NVFP4 alike) */
	float (*kv_scale_of)(float amax, enum cal_div_mode div);
	/* ops (kernels/ops.def) */
	int amax_op;              /* observer of the amax its scales come from; -1 none */
	int quant_op, dequant_op;
	enum cal_status (*quantize)(struct cal_backend *be, const struct cal_qfmt_io *io,
				    struct cal_error *err);
	/* packed/scales [rows, cols] -> f32 or bf16 y; scale: the tensor scale */
	enum cal_status (*dequantize)(struct cal_backend *be, const void *packed,
				      const void *scales, uint64_t rows, uint64_t cols,
				      uint32_t block, float scale, enum cal_dtype out,
				      void *y, struct cal_error *err);
};

/* The row of f (NULL for CAL_QFMT_NONE or out of range). */
const struct cal_qfmt_info *cal_qfmt(enum cal_qfmt f);

/* "none", "nvfp4", "nvfp4_static", "fp8", "mxfp8", "mxfp4", "int4_block", ... */
const char *cal_qfmt_name(enum cal_qfmt f);

/* The first row exporting quant_algo `algo` (case-insensitive) with
 * group_size `group` (0: the row's block), or NULL. *with_input: whether
 * algo names the format with quantized inputs (hf_wa; also "<hf_wa>_AWQ",
 * the same with an AWQ pre_quant_scale: NVFP4_AWQ). */
const struct cal_qfmt_info *cal_qfmt_by_algo(const char *algo, int group, int *with_input);

/* Output bytes of a quantized [rows, cols] weight: packed values, block scales
 * (per-row scales for per_channel rows). */
uint64_t cal_qfmt_packed_bytes(const struct cal_qfmt_info *f, uint64_t rows, uint64_t cols);
uint64_t cal_qfmt_scale_bytes(const struct cal_qfmt_info *f, uint64_t rows, uint64_t cols,
			      uint32_t block);

/* Row helpers (host scalars). */
float cal_qfmt_nvfp4_scale2(float amax, enum cal_div_mode div);
float cal_qfmt_nvfp4_static_scale2(float amax, enum cal_div_mode div);
enum cal_status cal_qfmt_fp8_input_scale(float amax, enum cal_div_mode div, float *ret,
					 struct cal_error *err);
enum cal_status cal_qfmt_int8_input_scale(float amax, enum cal_div_mode div, float *ret,
					  struct cal_error *err);

#define CAL_QFMT_FN(name)                                                              \
	enum cal_status cal_qfmt_##name##_quantize(struct cal_backend *be,             \
						   const struct cal_qfmt_io *io,       \
						   struct cal_error *err);             \
	enum cal_status cal_qfmt_##name##_dequantize(                                  \
		struct cal_backend *be, const void *packed, const void *scales,        \
		uint64_t rows, uint64_t cols, uint32_t block, float scale,             \
		enum cal_dtype out, void *y, struct cal_error *err);
CAL_QFMT_FN(nvfp4)
CAL_QFMT_FN(fp8)
CAL_QFMT_FN(mxfp8)
CAL_QFMT_FN(mxfp4)
CAL_QFMT_FN(int4)
CAL_QFMT_FN(int8)
CAL_QFMT_FN(fp8_pc)
CAL_QFMT_FN(fp8_pb)
#undef CAL_QFMT_FN
/* static NVFP4 dequantizes as NVFP4 */
enum cal_status cal_qfmt_nvfp4_static_quantize(struct cal_backend *be,
					       const struct cal_qfmt_io *io, struct cal_error *err);

#endif
