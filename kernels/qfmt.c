/*
 * qfmt.c — the format table (kernels/qfmt.def, qfmt.h) and each format's
 * quantize / dequantize through the op table.  The op sequences are the ones
 * the exporter has always run, so outputs are unchanged byte for byte.
 */
#include "kernels/qfmt.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

#define CAL_QFMT_UNPACK(...) __VA_ARGS__
static const struct cal_qfmt_info table[CAL_QFMT_COUNT] = {
#define CAL_QFMT(NAME, fields) [CAL_QFMT_##NAME] = {.id = CAL_QFMT_##NAME, CAL_QFMT_UNPACK fields},
#include "kernels/qfmt.def"
#undef CAL_QFMT
};

const struct cal_qfmt_info *cal_qfmt(enum cal_qfmt f)
{
	return (int)f > CAL_QFMT_NONE && f < CAL_QFMT_COUNT ? &table[f] : NULL;
}

const char *cal_qfmt_name(enum cal_qfmt f)
{
	const struct cal_qfmt_info *r = cal_qfmt(f);
	return r ? r->name : "none";
}

const struct cal_qfmt_info *cal_qfmt_by_algo(const char *algo, int group, int *with_input)
{
	*with_input = 0;
	/* "<hf_wa>_AWQ" (NVFP4_AWQ, docs/awq.md): the format with quantized
	 * inputs and an AWQ pre_quant_scale */
	size_t al = algo ? strlen(algo) : 0;
	int awq = al > 4 && !strcasecmp(algo + al - 4, "_AWQ");
	for (int i = CAL_QFMT_NONE + 1; algo && i < CAL_QFMT_COUNT; i++) {
		const struct cal_qfmt_info *r = &table[i];
		int w = r->hf_w && !strcasecmp(algo, r->hf_w);
		int wa = r->hf_wa && (!strcasecmp(algo, r->hf_wa) ||
				      (awq && strlen(r->hf_wa) == al - 4 &&
				       !strncasecmp(algo, r->hf_wa, al - 4)));
		if (!w && !wa)
			continue;
		int ok = !r->block || !group || (uint32_t)group == r->block;
		for (size_t k = 0; !ok && k < sizeof(r->blocks) / sizeof(r->blocks[0]); k++)
			ok = r->blocks[k] && r->blocks[k] == (uint32_t)group;
		if (!ok)
			continue;
		*with_input = wa;
		return r;
	}
	return NULL;
}

uint64_t cal_qfmt_packed_bytes(const struct cal_qfmt_info *f, uint64_t rows, uint64_t cols)
{
	return rows * cols / 8 * (uint64_t)f->elem_bits + rows * cols % 8 * (uint64_t)f->elem_bits / 8;
}

uint64_t cal_qfmt_scale_bytes(const struct cal_qfmt_info *f, uint64_t rows, uint64_t cols,
			      uint32_t block)
{
	if (f->per_channel)
		return rows * f->scale_bytes;
	if (f->block2d)
		return cal_fp8_tiles(rows, cols, block) * f->scale_bytes;
	return block ? rows * cols / block * f->scale_bytes : 0;
}

float cal_qfmt_nvfp4_scale2(float amax, enum cal_div_mode div)
{
	return cal_nvfp4_scale2(amax, div);
}

float cal_qfmt_nvfp4_static_scale2(float amax, enum cal_div_mode div)
{
	return cal_nvfp4_static_scale2(amax, 448.0f, div);
}

enum cal_status cal_qfmt_fp8_input_scale(float amax, enum cal_div_mode div, float *ret,
					 struct cal_error *err)
{
	(void)err;
	*ret = cal_fp8_input_scale(amax, div);
	return CAL_OK;
}

/* INT8 inputs: input_scale = amax/127 (modelopt's get_scaling_factor: the
 * sanitised export amax over maxbound). */
enum cal_status cal_qfmt_int8_input_scale(float amax, enum cal_div_mode div, float *ret,
					  struct cal_error *err)
{
	(void)err;
	*ret = cal_int8_row_scale(amax, div);
	return CAL_OK;
}

/* ---- quantize / dequantize ------------------------------------------------ */

enum cal_status cal_qfmt_nvfp4_quantize(struct cal_backend *be, const struct cal_qfmt_io *io,
					struct cal_error *err)
{
	struct cal_nvfp4_quant_args a = {io->w, io->rows, io->cols, io->scale, io->packed,
					 io->scales, io->block};
	return cal_op_nvfp4_quant(be, &a, err);
}

enum cal_status cal_qfmt_nvfp4_dequantize(struct cal_backend *be, const void *packed,
					  const void *scales, uint64_t rows, uint64_t cols,
					  uint32_t block, float scale, enum cal_dtype out,
					  void *y, struct cal_error *err)
{
	struct cal_nvfp4_dequant_args a = {packed, scales, rows, cols, scale, out, y, block};
	return cal_op_nvfp4_dequant(be, &a, err);
}

/* Per-block amax of the weight into io->block_amax (amax_blocks). */
static enum cal_status block_amax(struct cal_backend *be, const struct cal_qfmt_io *io,
				  struct cal_error *err)
{
	uint64_t nb = io->rows * io->cols / io->block;
	enum cal_status st = cal_backend_memset(be, io->block_amax, 0, nb * 4, err);
	if (st >= 0)
		st = cal_nonfinite_reset(be, io->nonfinite, err);
	if (st < 0)
		return st;
	struct cal_amax_blocks_args b = {CAL_DTYPE_BF16, io->w, io->rows, io->cols, io->block, 0,
					 io->block_amax, io->nonfinite};
	return cal_op_amax_blocks(be, &b, err);
}

enum cal_status cal_qfmt_nvfp4_static_quantize(struct cal_backend *be,
					       const struct cal_qfmt_io *io,
					       struct cal_error *err)
{
	enum cal_status st;
	if (io->mse) {
		struct cal_nvfp4_mse_sweep_args a = {io->w, io->rows, io->cols, io->amax, 448.0f,
						     io->div, io->block_amax};
		st = cal_op_nvfp4_mse_sweep(be, &a, err);
	} else {
		st = block_amax(be, io, err);
	}
	if (st < 0)
		return st;
	struct cal_nvfp4_static_quant_args a = {io->qw ? io->qw : io->w, io->rows, io->cols,
						io->block_amax,
						io->amax, 448.0f, io->div, io->packed, io->scales};
	return cal_op_nvfp4_static_quant(be, &a, err);
}

enum cal_status cal_qfmt_fp8_quantize(struct cal_backend *be, const struct cal_qfmt_io *io,
				      struct cal_error *err)
{
	struct cal_fp8_quant_args a = {io->w, io->rows * io->cols, io->scale, io->div,
				       io->packed, io->one_rounding, NULL, 0, 0};
	return cal_op_fp8_quant(be, &a, err);
}

/* FP8 per channel (tile 0: a row) and 2-D blocks (tile x tile): the op
 * finds each tile's scale (into io->scales, F32) from the tile's amax. */
static enum cal_status fp8_tiles_quantize(struct cal_backend *be, const struct cal_qfmt_io *io,
					  uint32_t tile, struct cal_error *err)
{
	struct cal_fp8_quant_args a = {io->w, io->rows * io->cols, 0.0f, io->div, io->packed, 1,
				       io->scales, io->cols, tile};
	return cal_op_fp8_quant(be, &a, err);
}

enum cal_status cal_qfmt_fp8_pc_quantize(struct cal_backend *be, const struct cal_qfmt_io *io,
					 struct cal_error *err)
{
	return fp8_tiles_quantize(be, io, 0, err);
}

/* A weight of one tile takes io->amax instead, which sibling linears share
 * (modelopt unifies a one-element weight amax). */
enum cal_status cal_qfmt_fp8_pb_quantize(struct cal_backend *be, const struct cal_qfmt_io *io,
					 struct cal_error *err)
{
	if (cal_fp8_tiles(io->rows, io->cols, io->block) != 1)
		return fp8_tiles_quantize(be, io, io->block, err);
	uint32_t bits;
	memcpy(&bits, &io->amax, 4);
	float s = cal_fp8_row_scale(io->amax != io->amax ? 0x7FC0u : bits >> 16 & 0x7FFFu, io->div);
	struct cal_fp8_quant_args a = {io->w, io->rows * io->cols, s, io->div, io->packed, 1,
				       NULL, 0, 0};
	enum cal_status st = cal_backend_upload(be, io->scales, &s, 4, err);
	return st < 0 ? st : cal_op_fp8_quant(be, &a, err);
}

/* The dequantizers: FP8 per tensor from values and one scale; MXFP8,
 * MXFP4 and INT4 from values and block scales alone; INT8 from values and
 * per-row scales; FP8 per channel and 2-D blocks from values and per-tile
 * scales (tile 0: per row).  DEQUANT(name, op, the op's arguments). */
#define DEQUANT(name, op, ...)                                                             \
	enum cal_status cal_qfmt_##name##_dequantize(                                      \
		struct cal_backend *be, const void *packed, const void *scales,            \
		uint64_t rows, uint64_t cols, uint32_t block, float scale,                 \
		enum cal_dtype out, void *y, struct cal_error *err)                        \
	{                                                                                  \
		(void)scales;                                                              \
		(void)block;                                                               \
		(void)scale;                                                               \
		struct cal_##op##_dequant_args a = {__VA_ARGS__};                          \
		return cal_op_##op##_dequant(be, &a, err);                                 \
	}
DEQUANT(fp8, fp8, packed, rows * cols, scale, out, y, NULL, 0, 0)
DEQUANT(mxfp8, mxfp8, packed, scales, rows, cols, out, y)
DEQUANT(mxfp4, mxfp4, packed, scales, rows, cols, out, y)
DEQUANT(int4, int4, packed, scales, rows, cols, out, y)
DEQUANT(int8, int8, packed, scales, rows, cols, out, y, 0.0f)
DEQUANT(fp8_pc, fp8, packed, rows * cols, 0.0f, out, y, scales, cols, 0)
DEQUANT(fp8_pb, fp8, packed, rows * cols, 0.0f, out, y, scales, cols, block)
#undef DEQUANT

/* MXFP8 and MXFP4 quantize with the same arguments. */
#define MX(name)                                                                           \
	enum cal_status cal_qfmt_##name##_quantize(struct cal_backend *be,                 \
						   const struct cal_qfmt_io *io,           \
						   struct cal_error *err)                  \
	{                                                                                  \
		struct cal_##name##_quant_args a = {io->w, io->rows, io->cols, io->div,      \
						    io->packed, io->scales};               \
		return cal_op_##name##_quant(be, &a, err);                                 \
	}
MX(mxfp8)
MX(mxfp4)
#undef MX

enum cal_status cal_qfmt_int4_quantize(struct cal_backend *be, const struct cal_qfmt_io *io,
				       struct cal_error *err)
{
	enum cal_status st = io->block_amax_set ? CAL_OK : block_amax(be, io, err);
	if (st < 0)
		return st;
	struct cal_int4_quant_args a = {io->w, io->rows, io->cols, io->block_amax, io->div,
					io->packed, io->scales};
	return cal_op_int4_quant(be, &a, err);
}

enum cal_status cal_qfmt_int8_quantize(struct cal_backend *be, const struct cal_qfmt_io *io,
				       struct cal_error *err)
{
	struct cal_int8_quant_args a = {io->w, io->rows, io->cols, io->div, io->packed,
					io->scales, 0.0f};
	return cal_op_int8_quant(be, &a, err);
}

