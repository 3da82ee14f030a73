/*
 * test_qfmt.c — the format table (kernels/qfmt.def) is complete: every row
 * fills the fields the plan, the exporter and `calibd verify` read, names a
 * quantize and a dequantize op that the back-end comparison covers
 * (opcases.c, run on CUDA by tests/gpu), and has a golden below.  The
 * goldens are FNV-1a 64 hashes of the packed weight and block scales of
 * one fixed [4, 256] weight quantized through the row on the CPU back end
 * (1 and 4 threads); the NVFP4 and FP8 bytes behind them are the
 * device-verified vectors of goldens.c, the other formats are checked
 * against modelopt by tests/modelopt.  A new row fails here until its
 * golden is added (the failure prints the hash to paste).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "kernels/qfmt.h"
#include "opcases.h"

static const struct {
	const char *name;
	uint64_t fnv;
} goldens[] = {
	{"nvfp4", 0xe15d84f68b5d31f8ull},
	{"nvfp4_static", 0xe15d84f68b5d31f8ull},
	{"fp8", 0x93dd0a7527e71aabull},
	{"mxfp8", 0x0613b30f5b385553ull},
	{"mxfp4", 0x3834a1085b3ef634ull},
	{"int4_block", 0x36d8f0a3912794e8ull},
	/* equal to modelopt 0.47's NVFP4QTensor.quantize(w, 32) with the same
	 * weight_scale_2 (reciprocal semantics), computed on the CPU */
	{"nvfp4_bs32", 0x2654eeb94ad17b90ull},
	/* equal to modelopt 0.47's INT8 export, (w / (amax_row / 127)[:, None])
	 * .round().clamp(-128, 127), computed with torch on the CPU */
	{"int8", 0x76c8648585cd37fcull},
	/* equal to modelopt 0.47's FP8_PC_PT export, (w / (amax_row / 448)
	 * [:, None]).to(float8_e4m3fn) with its F32 [rows] weight_scale,
	 * computed with torch on the CPU */
	{"fp8_pc_pt", 0xf7c91389f44be721ull},
	/* equal to modelopt 0.47's NVFP4QTensor.quantize(w, 32) with
	 * weight_scale_2 = amax / 448 (W4A8_NVFP4_FP8), computed on the CPU */
	{"w4a8_nvfp4_fp8", 0x1099c98c79b84201ull},
	{"w4a8_mxfp4_fp8", 0x3834a1085b3ef634ull}, /* the MXFP4 weights */
	/* int4_block's codes and block scales, plus weight_scale_2 = amax / 448 */
	{"w4a8_awq", 0x696f08c161a0ac4cull},
	/* equal to modelopt 0.47's FP8_PB_WO export, FP8QTensor.quantize(w,
	 * amax_block / 448, {-1: 128, -2: 128}) with F32 scales, on the CPU */
	{"fp8_pb_wo", 0x1c98eb5b26e16a7full},
};

#define ROWS 4
#define COLS 256

static struct cal_backend *cpu(unsigned threads)
{
	struct cal_backend *be = NULL;
	struct cal_backend_opts o = {threads, 1, 0};
	struct cal_error err = {0};
	cr_assert_eq(cal_backend_init(CAL_BACKEND_CPU, &o, &be, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	return be;
}

static int is_op(int id, const char *suffix)
{
	const char *n = id >= 0 && id < CAL_OP_COUNT ? cal_op_name((enum cal_op_id)id) : NULL;
	size_t l = n ? strlen(n) : 0, sl = strlen(suffix);
	return n && l > sl && !strcmp(n + l - sl, suffix);
}

Test(qfmt, every_row_is_complete)
{
	for (int i = CAL_QFMT_NONE + 1; i < CAL_QFMT_COUNT; i++) {
		const struct cal_qfmt_info *f = cal_qfmt((enum cal_qfmt)i);
		const char *n = f && f->name ? f->name : "?";
		cr_assert_not_null(f);
		cr_expect_eq(f->id, (enum cal_qfmt)i, "%s: id", n);
		cr_expect(f->name && f->label && f->title, "%s: name, label and title", n);
		cr_expect(f->elem_bits == 4 || f->elem_bits == 8, "%s: elem_bits", n);
		cr_expect(f->elem_dtype == CAL_DTYPE_U8 || f->elem_dtype == CAL_DTYPE_I8 ||
			  f->elem_dtype == CAL_DTYPE_F8_E4M3,
			  "%s: elem_dtype", n);
		cr_expect(!f->pack_rows || f->elem_bits == 4, "%s: pack_rows needs 4 bits", n);
		if (f->block_type == CAL_QBLOCK_NONE) {
			cr_expect(!f->block && (!f->scale_bytes || f->per_channel),
				  "%s: per tensor has no block", n);
		} else {
			int listed = 0;
			for (size_t k = 0; k < sizeof(f->blocks) / sizeof(f->blocks[0]); k++)
				listed |= f->blocks[k] == f->block;
			cr_expect(f->block && listed, "%s: block %u among blocks", n, f->block);
			cr_expect(f->scale_bytes == (uint32_t)cal_dtype_size(f->scale_dtype),
				  "%s: scale_bytes", n);
		}
		cr_expect(f->block || f->tensor_scale || f->per_channel, "%s: no scale at all", n);
		cr_expect(!f->tensor_scale == !f->tensor_scale_of, "%s: tensor_scale(_of)", n);
		cr_expect(f->roles & CAL_QFMT_ROLE_WEIGHT, "%s: roles", n);
		cr_expect(!(f->roles & CAL_QFMT_ROLE_INPUT) || f->act == f->id,
			  "%s: an input format pairs with itself", n);
		cr_expect(!(f->roles & CAL_QFMT_ROLE_KV) == !f->hf_kv, "%s: hf_kv", n);
		cr_expect(!(f->roles & CAL_QFMT_ROLE_KV) == !f->kv_scale_of, "%s: kv_scale_of", n);
		cr_expect(f->act == CAL_QFMT_NONE || (cal_qfmt(f->act)->roles & CAL_QFMT_ROLE_INPUT),
			  "%s: act", n);
		cr_expect(f->hf_w, "%s: hf_w", n);
		cr_expect(!f->hf_wa == (f->act == CAL_QFMT_NONE), "%s: hf_wa", n);
		cr_expect(!f->block_amax || f->block, "%s: block_amax", n);
		cr_expect(is_op(f->quant_op, "_quant"), "%s: quant_op", n);
		cr_expect(is_op(f->dequant_op, "_dequant"), "%s: dequant_op", n);
		cr_expect(f->calibrate ? f->amax_op == (f->block_amax ? CAL_OPID_AMAX_BLOCKS
									: CAL_OPID_AMAX)
				       : f->amax_op == -1, "%s: amax_op", n);
		for (int k = 0; k < 3; k++) {
			int op = k == 0 ? f->quant_op : k == 1 ? f->dequant_op : f->amax_op;
			if (op >= 0 && op < CAL_OP_COUNT)
				cr_expect_not_null(opcase_table[op], "%s: op %s has no back-end case",
						   n, cal_op_name((enum cal_op_id)op));
		}
		cr_expect(f->quantize && f->dequantize, "%s: quantize / dequantize", n);
		int with_input;
		cr_expect_eq(cal_qfmt_by_algo(f->hf_w, (int)f->block, &with_input)->hf_w, f->hf_w,
			     "%s: found by its quant_algo", n);
	}
}

static uint64_t fnv(uint64_t h, const unsigned char *p, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

/* Quantizes the fixed weight through row f on be: FNV-1a of packed + scales
 * + the tensor scale; checks the dequantized values are close. */
static uint64_t run_row(struct cal_backend *be, const struct cal_qfmt_info *f)
{
	static uint16_t w[ROWS * COLS];
	float amax = 0.0f;
	for (int r = 0; r < ROWS; r++)
		for (int c = 0; c < COLS; c++) {
			float v = (float)(((r * 131 + c * 71) % 257) - 128) / 64.0f;
			w[r * COLS + c] = cal_f32_to_bf16(v * (float)(1 << r) * 0.25f);
			float a = fabsf(cal_bf16_to_f32(w[r * COLS + c]));
			amax = a > amax ? a : amax;
		}
	uint64_t qb = cal_qfmt_packed_bytes(f, ROWS, COLS);
	uint64_t sb = cal_qfmt_scale_bytes(f, ROWS, COLS, f->block);
	unsigned char *q = malloc(qb), *s = malloc(sb + 1);
	float *y = malloc(ROWS * COLS * 4);
	void *dw, *dq, *ds, *dy, *dba = NULL, *dnf = NULL;
	struct cal_error err = {0};
	cr_assert(q && s && y);
	cr_assert_eq(cal_backend_alloc_upload(be, w, sizeof(w), &dw, &err), CAL_OK);
	cr_assert_eq(cal_backend_alloc(be, qb, &dq, &err), CAL_OK);
	cr_assert_eq(cal_backend_alloc(be, sb + 1, &ds, &err), CAL_OK);
	cr_assert_eq(cal_backend_alloc(be, ROWS * COLS * 4, &dy, &err), CAL_OK);
	if (f->block_amax) {
		cr_assert_eq(cal_backend_alloc(be, ROWS * COLS / f->block * 4, &dba, &err), CAL_OK);
		cr_assert_eq(cal_backend_alloc(be, sizeof(struct cal_nonfinite), &dnf, &err), CAL_OK);
	}
	struct cal_qfmt_io io = {dw, ROWS, COLS, f->block, amax, 0.0f, CAL_DIV_RECIP, 0, 0,
				 dba, dnf, dq, ds, NULL, 0};
	if (f->tensor_scale_of)
		io.scale = f->tensor_scale_of(amax, CAL_DIV_RECIP);
	cr_assert_eq(f->quantize(be, &io, &err), CAL_OK, "%s: %s", f->name, cal_error_msg(&err));
	cr_assert_eq(f->dequantize(be, dq, ds, ROWS, COLS, f->block, io.scale, CAL_DTYPE_F32, dy,
				   &err), CAL_OK, "%s: %s", f->name, cal_error_msg(&err));
	cr_assert_eq(cal_backend_download(be, q, dq, qb, &err), CAL_OK);
	cr_assert_eq(cal_backend_download(be, s, ds, sb, &err), CAL_OK);
	cr_assert_eq(cal_backend_download(be, y, dy, ROWS * COLS * 4, &err), CAL_OK);
	double sig = 0, noise = 0;
	for (int k = 0; k < ROWS * COLS; k++) {
		double x = cal_bf16_to_f32(w[k]), d = x - y[k];
		sig += x * x;
		noise += d * d;
	}
	cr_expect(noise * 10.0 < sig, "%s: dequantized weight is not close (SQNR %.1f dB)",
		  f->name, 10 * log10(sig / noise));
	uint64_t h = fnv(0xcbf29ce484222325ull, q, qb);
	h = fnv(h, s, sb);
	h = fnv(h, (const unsigned char *)&io.scale, 4);
	void *bufs[] = {dw, dq, ds, dy, dba, dnf};
	for (size_t k = 0; k < 6; k++)
		cal_backend_dealloc(be, bufs[k]);
	free(q);
	free(s);
	free(y);
	return h;
}

Test(qfmt, every_row_has_a_golden)
{
	struct cal_backend *b1 = cpu(1), *b4 = cpu(4);
	for (int i = CAL_QFMT_NONE + 1; i < CAL_QFMT_COUNT; i++) {
		const struct cal_qfmt_info *f = cal_qfmt((enum cal_qfmt)i);
		uint64_t h1 = run_row(b1, f), h4 = run_row(b4, f);
		cr_expect_eq(h1, h4, "%s: 1 and 4 threads differ", f->name);
		size_t k = 0;
		while (k < sizeof(goldens) / sizeof(goldens[0]) && strcmp(goldens[k].name, f->name))
			k++;
		if (k == sizeof(goldens) / sizeof(goldens[0]))
			cr_expect_fail("%s: no golden (this build gives 0x%016llx)", f->name,
				       (unsigned long long)h1);
		else
			cr_expect_eq(h1, goldens[k].fnv, "%s: golden 0x%016llx, got 0x%016llx",
				     f->name, (unsigned long long)goldens[k].fnv,
				     (unsigned long long)h1);
	}
	cal_backend_free(b1);
	cal_backend_free(b4);
}
