/*
 * test_numerics.c — unit tests of kernels/ on the CPU: every golden vector
 * of docs/numerics.md byte for byte, edge cases, observers, argument errors,
 * and the reference (1 thread) against the multi-threaded CPU back end for
 * every op of ops.def on random shapes (seeds printed on failure).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "goldens.h"
#include "kernels/numfmt.h"
#include "kernels/ops.h"
#include "opcases.h"

static struct cal_backend *cpu(unsigned threads, uint64_t min_items)
{
	struct cal_backend *be = NULL;
	struct cal_backend_opts o = {threads, min_items, 0};
	struct cal_error err = {0};
	cr_assert_eq(cal_backend_init(CAL_BACKEND_CPU, &o, &be, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	return be;
}

/* ---- E4M3 and E2M1 conversions (docs/numerics.md "NVFP4 weights") ------ */

Test(numfmt, e4m3_examples)
{
	static const struct { float x; uint8_t code; } t[] = {
		{1.0625f, 0x38}, {1.1875f, 0x3A}, {17.0f, 0x58}, {19.0f, 0x5A}, {240.0f, 0x77},
		{432.0f, 0x7E}, {448.0f, 0x7E}, {449.0f, 0x7E}, {464.0f, 0x7E}, {464.5f, 0x7F},
		{470.0f, 0x7F}, {0x1p-10f, 0x00}, {0x1.8p-9f, 0x02}, {0x1.4p-8f, 0x02},
		{-0.0f, 0x80}, {0.0f, 0x00}, {-1.0f, 0xB8}, {INFINITY, 0x7F}, {-INFINITY, 0xFF},
		{0x1p-6f, 0x08}, {0x1p-9f, 0x01}, {-448.0f, 0xFE},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		cr_expect_eq(cal_e4m3_encode(t[i].x), t[i].code, "e4m3(%a) = %02x, want %02x",
			     (double)t[i].x, cal_e4m3_encode(t[i].x), t[i].code);
	cr_expect_eq(cal_e4m3_encode(NAN) & 0x7f, 0x7f);
	/* every finite code round-trips */
	for (unsigned c = 0; c < 256; c++) {
		if ((c & 0x7f) == 0x7f)
			continue;
		cr_expect_eq(cal_e4m3_encode(cal_e4m3_decode((uint8_t)c)), c, "code %02x", c);
	}
	cr_expect_eq(cal_e4m3_decode(0x7E), 448.0f);
	cr_expect_eq(cal_e4m3_decode(0x01), 0x1p-9f);
	cr_expect(isnan(cal_e4m3_decode(0xFF)));
}

Test(numfmt, e2m1_nvfp4_table)
{
	static const struct { float x; unsigned code; } t[] = {
		{0, 0}, {-0.0f, 0}, {0.1f, 0}, {0.25f, 0}, {0.26f, 1}, {0.5f, 1}, {0.75f, 2},
		{1.0f, 2}, {1.25f, 2}, {1.5f, 3}, {1.75f, 4}, {2.0f, 4}, {2.5f, 4}, {3.0f, 5},
		{3.5f, 6}, {4.0f, 6}, {5.0f, 6}, {5.5f, 7}, {6.0f, 7}, {7.0f, 7}, {100.0f, 7},
		{-0.1f, 8}, {-0.25f, 8}, {-0.75f, 10}, {-5.0f, 14}, {-7.0f, 15},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		cr_expect_eq(cal_e2m1_encode_nvfp4(t[i].x), t[i].code, "e2m1(%g) = %u, want %u",
			     (double)t[i].x, cal_e2m1_encode_nvfp4(t[i].x), t[i].code);
	for (unsigned c = 0; c < 16; c++)
		if (c != 8)
			cr_expect_eq(cal_e2m1_encode_nvfp4(cal_e2m1_decode(c)), c);
}

Test(numfmt, e2m1_mxfp4_rounding)
{
	cr_expect_eq(cal_e2m1_encode_mxfp4(0.0f), 8u);   /* exact zero carries the sign bit */
	cr_expect_eq(cal_e2m1_encode_mxfp4(-0.0f), 8u);
	cr_expect_eq(cal_e2m1_encode_mxfp4(0.25f), 0u);  /* positive: no sign bit */
	cr_expect_eq(cal_e2m1_encode_mxfp4(-0.25f), 8u);
	cr_expect_eq(cal_e2m1_encode_mxfp4(0.26f), 1u);
	cr_expect_eq(cal_e2m1_encode_mxfp4(0.75f), 1u);  /* tie goes down */
	cr_expect_eq(cal_e2m1_encode_mxfp4(1.75f), 3u);
	cr_expect_eq(cal_e2m1_encode_mxfp4(3.5f), 5u);
	cr_expect_eq(cal_e2m1_encode_mxfp4(-3.6f), 14u);
	cr_expect_eq(cal_e2m1_encode_mxfp4(9.0f), 7u);
}

Test(numfmt, e8m0_and_ceil_log2)
{
	cr_expect_eq(cal_ceil_log2(1.0f), 0);
	cr_expect_eq(cal_ceil_log2(1.0000001f), 1);
	cr_expect_eq(cal_ceil_log2(0.75f), 0);
	cr_expect_eq(cal_ceil_log2(0.5f), -1);
	cr_expect_eq(cal_ceil_log2(0x1p-149f), -149);
	cr_expect_eq(cal_ceil_log2(0x3p-149f), -147);
	cr_expect_eq(cal_e8m0_decode(127), 1.0f);
	cr_expect_eq(cal_e8m0_decode(0), 0x1p-127f);
	cr_expect_eq(cal_mx_block_scale(448.0f, 0, CAL_DIV_EXACT), 127);
	cr_expect_eq(cal_mx_block_scale(449.0f, 0, CAL_DIV_EXACT), 128);
	cr_expect_eq(cal_mx_block_scale(0.0f, 0, CAL_DIV_RECIP), 0);
	cr_expect_eq(cal_mx_block_scale(6.0f, 1, CAL_DIV_EXACT), 127);
	cr_expect_eq(cal_mx_block_scale(0.0f, 1, CAL_DIV_EXACT), 0);
}

/* ---- the CUDA quantizers' division-free forms (kernels/numfmt.h) ---------- */

/* NVFP4 by thresholds == fl32(x / T) + E2M1, for all 65536 bf16 x, every
 * scale byte, and S2 from normal to subnormal, huge, +0 and NaN. */
Test(numfmt, nvfp4_thresholds_exhaustive, .timeout = 60)
{
	static const float s2s[] = {0.0014415922f, 1.0f, 1e-40f, 3e35f, 0.0f, 0x1.6p-20f};
	for (size_t i = 0; i <= sizeof(s2s) / sizeof(s2s[0]); i++) {
		float s2 = i < sizeof(s2s) / sizeof(s2s[0]) ? s2s[i] : cal_bits_f32(0x7fc00000u);
		cr_assert(cal_nvfp4_thr_ok(s2));
		for (unsigned e = 0; e < 128; e++) {
			float t = cal_fmul(cal_e4m3_decode((uint8_t)e), s2), thr[8];
			for (int k = 0; k < 8; k++)
				thr[k] = cal_nvfp4_threshold(t, k == 7 ? 0 : k + 1);
			for (uint32_t h = 0; h < 65536; h++) {
				float x = cal_nf_bf16_to_f32((uint16_t)h);
				unsigned r = cal_e2m1_encode_nvfp4(cal_fdiv(x, t));
				unsigned f = cal_nvfp4_encode_thr(x, thr);
				if (r != f)
					cr_assert_fail("s2 %a e %u x 0x%04x: reference %u, thresholds %u",
						       (double)s2, e, h, r, f);
			}
		}
	}
	cr_expect(!cal_nvfp4_thr_ok(-1.0f));
	cr_expect(!cal_nvfp4_thr_ok(-0.0f));
}

/* FP8 by table == the reference for all finite bf16 x and a set of divisors. */
Test(numfmt, fp8_table_exhaustive)
{
	static const float ds[] = {0.0086495f, 1.0f, 1e-40f, 0x1p-133f, 3.0e38f, 0x1p-126f, 17.0f};
	static uint8_t lut[65536];
	for (size_t i = 0; i < sizeof(ds) / sizeof(ds[0]); i++) {
		float d = cal_nf_bf16_to_f32(cal_nf_f32_to_bf16(ds[i]));
		uint32_t lo, hi;
		cr_assert(cal_fp8_lut_range(d, &lo, &hi), "%a", (double)d);
		cr_assert(lo <= hi && hi - lo < 4096, "%a: [%u, %u]", (double)d, lo, hi);
		for (uint32_t h = lo; h <= hi; h++)
			lut[h - lo] = (uint8_t)cal_fp8_mag(h, d);
		for (uint32_t raw = 0; raw < 65536; raw++) {
			uint32_t h = raw & 0x7fffu;
			if (h >= 0x7f80u)
				continue; /* inf/NaN take the reference in the kernel */
			uint32_t c = h < lo ? lo : (h > hi ? hi : h);
			unsigned f = lut[c - lo] | ((raw >> 8) & 0x80u);
			unsigned r = cal_fp8_weight_encode(cal_nf_bf16_to_f32((uint16_t)raw), d);
			if (r != f)
				cr_assert_fail("d %a x 0x%04x: reference 0x%02x, table 0x%02x",
					       (double)d, raw, r, f);
		}
	}
	uint32_t lo, hi;
	cr_expect(!cal_fp8_lut_range(0.0f, &lo, &hi));
	cr_expect(!cal_fp8_lut_range(-1.0f, &lo, &hi));
	cr_expect(!cal_fp8_lut_range(cal_bits_f32(0x7f800000u), &lo, &hi));
}

/* ---- division semantics (docs/numerics.md) ------------------------------ */

Test(numfmt, division_table)
{
	static const struct { float amax; uint32_t r2688, e2688, r448, e448; } t[] = {
		{3.875f, 0x3abcf3cf, 0x3abcf3cf, 0x3c0db6dc, 0x3c0db6db},
		{0.25390625f, 0x38c61862, 0x38c61862, 0x3a14924a, 0x3a149249},
		{8.25f, 0x3b492493, 0x3b492492, 0x3c96db6e, 0x3c96db6e},
		{21.0f, 0x3c000000, 0x3c000000, 0x3d400001, 0x3d400000},
		{123.0f, 0x3d3b6db7, 0x3d3b6db7, 0x3e8c924a, 0x3e8c9249},
		{2688.0f, 0x3f800000, 0x3f800000, 0x40c00001, 0x40c00000},
		{448.0f, 0x3e2aaaab, 0x3e2aaaab, 0x3f800000, 0x3f800000},
		{1.0f, 0x39c30c31, 0x39c30c31, 0x3b124925, 0x3b124925},
	};
	cr_expect_eq(cal_f32_bits(cal_fdiv(1.0f, 2688.0f)), 0x39C30C31u);
	cr_expect_eq(cal_f32_bits(cal_fdiv(1.0f, 448.0f)), 0x3B124925u);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		float a = t[i].amax;
		cr_expect_eq(cal_f32_bits(cal_nvfp4_scale2(a, CAL_DIV_RECIP)), t[i].r2688, "%g", (double)a);
		cr_expect_eq(cal_f32_bits(cal_nvfp4_scale2(a, CAL_DIV_EXACT)), t[i].e2688, "%g", (double)a);
		cr_expect_eq(cal_f32_bits(cal_fp8_scale(a, CAL_DIV_RECIP)), t[i].r448, "%g", (double)a);
		cr_expect_eq(cal_f32_bits(cal_fp8_scale(a, CAL_DIV_EXACT)), t[i].e448, "%g", (double)a);
		cr_expect_eq(cal_f32_bits(cal_fp8_input_scale(a, CAL_DIV_RECIP)), t[i].r448);
	}
}

Test(numfmt, input_scales)
{
	float s = 0;
	struct cal_error err = {0};
	cr_expect_eq(cal_fp8_input_scale(0.0f, CAL_DIV_RECIP), 1.0f);
	cr_expect_eq(cal_fp8_input_scale(NAN, CAL_DIV_RECIP), 1.0f);
	cr_expect_eq(cal_fp8_input_scale(0.0f, CAL_DIV_EXACT), 1.0f);
	cr_expect_eq(cal_nvfp4_input_scale(2688.0f, CAL_DIV_RECIP, &s, &err), CAL_OK);
	cr_expect_eq(s, 1.0f); /* constant_amax 2688 pins input_scale to 1 */
	cr_expect_eq(cal_nvfp4_input_scale(0.0f, CAL_DIV_RECIP, &s, &err), CAL_ERR_NUMERIC);
	cr_expect(strstr(cal_error_msg(&err), "amax") != NULL);
	cal_error_clear(&err);
	cr_expect_eq(cal_nvfp4_input_scale(NAN, CAL_DIV_RECIP, &s, NULL), CAL_ERR_NUMERIC);
	/* kv: no clamp to >= 1 */
	cr_expect_eq(cal_f32_bits(cal_fp8_scale(21.0f, CAL_DIV_RECIP)), 0x3d400001u);
}

/* ---- the golden vectors through the op table (docs/numerics.md) -------- */

static void run_golden(unsigned threads)
{
	struct cal_backend *be = cpu(threads, 1);
	struct golden_result r;
	struct cal_error err = {0};
	cr_assert_eq(golden_run(be, &r, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_expect_eq(golden_check(&r, be->name), 0, "golden mismatches (stderr)");
	cal_backend_free(be);
}

Test(golden, nvfp4_fp8_reference) { run_golden(1); }
Test(golden, nvfp4_fp8_threaded) { run_golden(4); }

Test(golden, input_bytes_match_formula)
{
	uint16_t w[4 * 32];
	golden_input(w);
	for (int r = 0; r < 4; r++) {
		char hex[129];
		for (int c = 0; c < 32; c++)
			snprintf(hex + 4 * c, 5, "%02x%02x", w[r * 32 + c] & 0xff, w[r * 32 + c] >> 8);
		cr_expect_str_eq(hex, golden_input_hex[r], "row %d", r);
	}
}

/* ---- edge cases ---------------------------------------------------------- */

static void nvfp4_one_block(const float *x, float s2, uint8_t *ret_scale, uint8_t ret_packed[8])
{
	struct cal_backend *be = cpu(1, 0);
	uint16_t w[16];
	struct cal_error err = {0};
	for (int k = 0; k < 16; k++)
		w[k] = cal_f32_to_bf16(x[k]);
	struct cal_nvfp4_quant_args a = {w, 1, 16, s2, ret_packed, ret_scale, 0};
	cr_assert_eq(cal_op_nvfp4_quant(be, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_backend_free(be);
}

Test(edge, nvfp4_blocks)
{
	float zero[16] = {0}, tiny[16] = {0}, big[16] = {0};
	uint8_t sc, p[8];
	nvfp4_one_block(zero, 0.001f, &sc, p);
	cr_expect_eq(sc, 0x38);              /* all-zero block: scale 1.0 */
	for (int j = 0; j < 8; j++)
		cr_expect_eq(p[j], 0);
	tiny[3] = 1e-30f;
	tiny[4] = -1e-30f;
	nvfp4_one_block(tiny, 0.001f, &sc, p);
	cr_expect_eq(sc, 0x01);              /* clamped to 2^-9, never 0 */
	cr_expect_eq(p[2], 0x08);            /* element 4 = -tiny: negative zero, low nibble */
	cr_expect_eq(p[1], 0x00);            /* element 3 = +tiny: zero */
	big[0] = 100.0f;
	nvfp4_one_block(big, 0.001f, &sc, p);
	cr_expect_eq(sc, 0x7E);              /* > 448 clamps to 448, never NaN */
	nvfp4_one_block(zero, 0.0f, &sc, p); /* all-zero tensor: S2 = 0 -> NaN scale */
	cr_expect_eq(sc, 0x7F);
}

Test(edge, fp8_and_mx_and_int4)
{
	struct cal_backend *be = cpu(1, 0);
	struct cal_error err = {0};
	uint16_t w[256];
	uint8_t q[256], sc[8], pk[128];
	float amax[2] = {0, 0}, ssc[2];
	for (int i = 0; i < 256; i++)
		w[i] = cal_f32_to_bf16(i < 32 ? (float)(i - 16) * 28.0f : (float)((i % 17) - 8));
	/* MXFP8: amax 448 -> e = 0, values unchanged */
	struct cal_mxfp8_quant_args m8 = {w, 1, 32, CAL_DIV_RECIP, q, sc};
	cr_assert_eq(cal_op_mxfp8_quant(be, &m8, &err), CAL_OK);
	cr_expect_eq(sc[0], 127);
	cr_expect_eq(q[0], cal_e4m3_encode(-448.0f));
	cr_expect_eq(q[17], cal_e4m3_encode(28.0f));
	/* MXFP4: amax 448 -> e = ceil(log2(74.67)) = 7; -448/128 = -3.5 -> tie down to 3 */
	struct cal_mxfp4_quant_args m4 = {w, 1, 32, CAL_DIV_EXACT, pk, sc};
	cr_assert_eq(cal_op_mxfp4_quant(be, &m4, &err), CAL_OK);
	cr_expect_eq(sc[0], 127 + 7);
	cr_expect_eq(pk[0] & 0xf, 0x8 | 5);  /* -3.5 -> -3 (code 5) */
	cr_expect_eq(pk[8] & 0xf, 0x8);      /* exact zero (element 16) -> 0x8 */
	/* INT4: block amax 8 -> scale 8/7; row 0 = -8..8 pattern */
	for (int i = 0; i < 256; i++)
		w[i] = cal_f32_to_bf16((float)((i % 17) - 8));
	amax[0] = 8.0f;
	amax[1] = 0.0f;                      /* zero amax -> scale 1 */
	struct cal_int4_quant_args i4 = {w, 2, 128, amax, CAL_DIV_EXACT, pk, ssc};
	cr_assert_eq(cal_op_int4_quant(be, &i4, &err), CAL_OK);
	cr_expect_eq(ssc[0], 8.0f / 7.0f);
	cr_expect_eq(ssc[1], 1.0f);
	/* element (0,0) = -8 -> rint(-7) = -7 = 0x9; (1,0) = w[128] = (128%17)-8 = 1 */
	cr_expect_eq(pk[0], 0x9 | (1 << 4));
	cal_backend_free(be);
}

/* ---- observers ------------------------------------------------------------ */

Test(observer, amax_stream_and_nonfinite)
{
	struct cal_backend *be = cpu(3, 1);
	struct cal_error err = {0};
	float x[100], amax = 0.0f;
	struct cal_nonfinite nf = {0, CAL_NONFINITE_NONE};
	for (int i = 0; i < 100; i++)
		x[i] = (float)(i % 10) - 4.5f;
	x[37] = NAN;
	x[80] = -INFINITY;
	struct cal_amax_args a = {CAL_DTYPE_F32, x, 50, 1000, &amax, &nf};
	cr_assert_eq(cal_op_amax(be, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_expect_eq(amax, 4.5f);
	cr_expect_eq(nf.count, 1);
	cr_expect_eq(nf.first, 1037);
	x[90] = -9.0f;
	a.x = x + 50;
	a.index_base = 1050;
	cr_assert_eq(cal_op_amax(be, &a, &err), CAL_OK);
	cr_expect_eq(amax, 9.0f);
	cr_expect_eq(nf.count, 2);
	cr_expect_eq(nf.first, 1037);
	cal_backend_free(be);
}

Test(observer, rows_segments_blocks)
{
	struct cal_backend *be = cpu(2, 1);
	struct cal_error err = {0};
	uint16_t x[6 * 32];
	for (int i = 0; i < 6 * 32; i++)
		x[i] = cal_f32_to_bf16((float)(i / 32 + 1) * (i % 2 ? -1.0f : 1.0f));
	x[5 * 32 + 3] = 0x7fc0; /* NaN in row 5 */
	float am = 0.0f, seg[3] = {0, 0, 0}, blk[12] = {0};
	struct cal_nonfinite nf = {0, CAL_NONFINITE_NONE};
	uint32_t idx[3] = {0, 2, 9}; /* 9 is out of range: skipped */
	struct cal_amax_rows_args r = {CAL_DTYPE_BF16, x, 6, 32, idx, 3, 0, &am, &nf};
	cr_assert_eq(cal_op_amax_rows(be, &r, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_expect_eq(am, 3.0f);
	cr_expect_eq(nf.count, 0);
	uint32_t off[4] = {0, 2, 2, 6}; /* segment 1 empty */
	struct cal_amax_segments_args sg = {CAL_DTYPE_BF16, x, 6, 32, off, 3, 0, seg, &nf};
	cr_assert_eq(cal_op_amax_segments(be, &sg, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_expect_eq(seg[0], 2.0f);
	cr_expect_eq(seg[1], 0.0f);
	cr_expect_eq(seg[2], 6.0f);
	cr_expect_eq(nf.count, 1);
	cr_expect_eq(nf.first, 5 * 32 + 3);
	struct cal_amax_blocks_args bl = {CAL_DTYPE_BF16, x, 6, 32, 16, 0, blk, &nf};
	cr_assert_eq(cal_op_amax_blocks(be, &bl, &err), CAL_OK, "%s", cal_error_msg(&err));
	for (int b = 0; b < 12; b++)
		cr_expect_eq(blk[b], (float)(b / 2 + 1), "block %d", b);
	cr_expect_eq(nf.count, 2);
	cal_backend_free(be);
}

/* The hessian op (tiles of elements summed together, an FMA clone) against
 * one element at a time: s = fmaf(x[t,i], x[t,j], s) over the rows in
 * order, then h + s for j >= i, written to (i, j) and (j, i)
 * (docs/numerics.md), byte for byte, with non-finite inputs, gathered rows
 * and shapes that are not whole tiles. */
Test(observer, hessian_one_element_at_a_time)
{
	static const uint64_t shape[][2] = {{1, 1}, {5, 3}, {33, 17}, {40, 64}, {70, 131}};
	struct cal_backend *be = cpu(3, 1);
	struct cal_error err = {0};
	uint64_t s = 7;
	for (size_t k = 0; k < sizeof(shape) / sizeof(shape[0]); k++) {
		uint64_t rows = shape[k][0], cols = shape[k][1], nidx = rows / 2 + 1;
		float *x = malloc(rows * cols * 4), *h = malloc(cols * cols * 4);
		float *want = malloc(cols * cols * 4);
		uint32_t *idx = malloc(nidx * 4);
		for (uint64_t i = 0; i < rows * cols; i++) {
			s = s * 6364136223846793005u + 1442695040888963407u;
			uint32_t r = (uint32_t)(s >> 33);
			x[i] = r % 53 == 0 ? INFINITY : r % 59 == 0 ? NAN
							 : (float)((int)(r % 2001) - 1000) / 37.0f;
		}
		for (uint64_t i = 0; i < nidx; i++)
			idx[i] = (uint32_t)((i * 7 + 3) % (rows + 1)); /* rows: out of range, skipped */
		for (int gather = 0; gather < 2; gather++) {
			for (uint64_t e = 0; e < cols * cols; e++)
				h[e] = want[e] = (float)(e % 5) * 0.25f;
			for (uint64_t i = 0; i < cols; i++)
				for (uint64_t j = i; j < cols; j++) {
					float acc = 0.0f;
					for (uint64_t t = 0; t < (gather ? nidx : rows); t++) {
						uint64_t r = gather ? idx[t] : t;
						if (r < rows)
							acc = fmaf(x[r * cols + i], x[r * cols + j], acc);
					}
					/* the upper triangle's element, written to both */
					want[i * cols + j] = cal_nan_canon(want[i * cols + j] + acc);
					want[j * cols + i] = want[i * cols + j];
				}
			struct cal_hessian_args a = {CAL_DTYPE_F32, x, rows, cols, gather ? idx : NULL,
						     gather ? nidx : 0, h};
			cr_assert_eq(cal_op_hessian(be, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
			cr_expect_eq(memcmp(h, want, cols * cols * 4), 0, "%llu x %llu, gather %d",
				     (unsigned long long)rows, (unsigned long long)cols, gather);
		}
		free(x), free(h), free(want), free(idx);
	}
	cal_backend_free(be);
}

/* nvfp4_dequant of a large op (its outputs looked up in a table) against
 * the formula for every scale byte and code, bf16 and f32, block 16 and 32. */
Test(ops, nvfp4_dequant_table_is_the_formula)
{
	static const float s2[] = {1.0f, 0.37f, 1e-41f, 3e38f, INFINITY, NAN, -2.5f};
	const uint64_t rows = 256, cols = 512; /* a scale byte per block: every byte */
	struct cal_backend *be = cpu(2, 1);
	struct cal_error err = {0};
	uint8_t *pk = malloc(rows * cols / 2), *sc = malloc(rows * cols / 16);
	float *out = malloc(rows * cols * 4);
	for (uint64_t i = 0; i < rows * cols / 2; i++)
		pk[i] = (uint8_t)(i * 37 + i / 256);
	for (uint64_t b = 0; b < rows * cols / 16; b++)
		sc[b] = (uint8_t)b;
	for (size_t q = 0; q < sizeof(s2) / sizeof(s2[0]); q++)
		for (int f32 = 0; f32 < 2; f32++)
			for (uint32_t bs = 16; bs <= 32; bs += 16) {
				struct cal_nvfp4_dequant_args a = {pk, sc, rows, cols, s2[q],
								   f32 ? CAL_DTYPE_F32 : CAL_DTYPE_BF16,
								   out, bs};
				cr_assert_eq(cal_op_nvfp4_dequant(be, &a, &err), CAL_OK, "%s",
					     cal_error_msg(&err));
				uint64_t bad = 0;
				for (uint64_t i = 0; i < rows * cols; i++) {
					unsigned code = (pk[i / 2] >> (4 * (i & 1))) & 0xfu;
					float v = cal_fmul(cal_fmul(cal_e2m1_decode(code),
								    cal_e4m3_decode(sc[i / bs])), s2[q]);
					if (f32)
						bad += memcmp(&out[i], &v, 4) != 0;
					else
						bad += ((uint16_t *)out)[i] != cal_nf_f32_to_bf16(v);
				}
				cr_expect_eq(bad, 0, "scale2 %g, f32 %d, block %u: %llu differ",
					     (double)s2[q], f32, bs, (unsigned long long)bad);
			}
	free(pk), free(sc), free(out);
	cal_backend_free(be);
}

/* ---- argument errors ------------------------------------------------------ */

/* Expects an op's status st to be want and, for a needle that is not NULL,
 * its message in err to contain needle; clears err for the next call. */
static void expect_refused(enum cal_status st, struct cal_error *err, enum cal_status want,
			   const char *needle)
{
	cr_expect_eq(st, want, "%s, want %s (%s)", cal_status_str(st), cal_status_str(want),
		     cal_error_msg(err));
	if (needle)
		cr_expect(strstr(cal_error_msg(err), needle) != NULL, "'%s' lacks '%s'",
			  cal_error_msg(err), needle);
	cal_error_clear(err);
}

Test(args, errors_name_the_field)
{
	struct cal_backend *be = cpu(1, 0);
	struct cal_error err = {0};
	uint16_t w[32] = {0};
	uint8_t p[16], s[2];
	struct cal_nvfp4_quant_args a = {w, 1, 24, 1.0f, p, s, 0};
	enum cal_status st = cal_op_nvfp4_quant(be, &a, &err);
	cr_expect(strstr(cal_error_msg(&err), "nvfp4_quant") != NULL, "%s", cal_error_msg(&err));
	expect_refused(st, &err, CAL_ERR_INVALID, "'cols'");
	a.cols = 32;
	a.packed = NULL;
	expect_refused(cal_op_nvfp4_quant(be, &a, &err), &err, CAL_ERR_INVALID, "'packed'");
	float amax = 0;
	struct cal_amax_args o = {CAL_DTYPE_F16, w, 4, 0, &amax, NULL};
	expect_refused(cal_op_amax(be, &o, &err), &err, CAL_ERR_UNSUPPORTED, NULL);
	o.dtype = CAL_DTYPE_BF16;
	/* nonfinite is required */
	expect_refused(cal_op_amax(be, &o, &err), &err, CAL_ERR_INVALID, NULL);
	struct cal_amax_blocks_args b = {CAL_DTYPE_BF16, w, 1, 32, 8, 0, &amax, NULL};
	expect_refused(cal_op_amax_blocks(be, &b, &err), &err, CAL_ERR_INVALID, "'block'");
	struct cal_amax_args huge = {CAL_DTYPE_BF16, w, UINT64_C(1) << 50, 0, &amax,
				     (struct cal_nonfinite *)s};
	expect_refused(cal_op_amax(be, &huge, &err), &err, CAL_ERR_RANGE, NULL);
	/* FP8 per-tile scales: cols must divide n (fp8_quant and fp8_dequant) */
	float rs[4];
	struct cal_fp8_quant_args fq = {w, 30, 1.0f, CAL_DIV_RECIP, p, 0, rs, 8, 0};
	expect_refused(cal_op_fp8_quant(be, &fq, &err), &err, CAL_ERR_INVALID,
		       "'cols' = 8 does not divide n = 30");
	struct cal_fp8_dequant_args fd = {p, 30, 1.0f, CAL_DTYPE_F32, rs, rs, 0, 0};
	expect_refused(cal_op_fp8_dequant(be, &fd, &err), &err, CAL_ERR_INVALID,
		       "'cols' = 0 does not divide n = 30");
	cal_backend_free(be);
}

/* Pointer lists (CAL_CHECK_PTRS) name the first NULL field in order; the
 * shared enum and top-k checks name the argument and its value. */
Test(args, shared_checks_name_the_argument)
{
	struct cal_backend *be = cpu(1, 0);
	struct cal_error err = {0};
	uint16_t src[8] = {0}, out[8];
	uint32_t index[2] = {0, 1}, idx[4];
	float weight[4];
	struct cal_gather_rows_args g = {src, 2, 4, index, 2, 1, out};
	cr_expect_eq(cal_op_gather_rows(be, &g, &err), CAL_OK, "%s", cal_error_msg(&err));
	g.index = NULL;
	g.out = NULL;
	expect_refused(cal_op_gather_rows(be, &g, &err), &err, CAL_ERR_INVALID,
		       "argument 'index' is NULL");
	struct cal_router_args r = {src, 1, 4, 2, 2, 1, idx, weight, (enum cal_router_mode)9, 0};
	expect_refused(cal_op_router(be, &r, &err), &err, CAL_ERR_INVALID,
		       "argument 'mode' = 9 is unknown");
	r.mode = (enum cal_router_mode)0;
	r.k = 3;
	expect_refused(cal_op_router(be, &r, &err), &err, CAL_ERR_INVALID,
		       "e = 4, k = 3, k_total = 2");
	cal_backend_free(be);
}

Test(backend, cuda_selection)
{
	struct cal_backend *be = NULL;
	enum cal_backend_kind k;
	cr_expect_eq(cal_backend_kind_from_name("cuda", &k), 0);
	cr_expect_eq(k, CAL_BACKEND_CUDA);
	cr_expect_eq(cal_backend_kind_from_name("tpu", &k), -1);
	if (!cal_backend_cuda_built()) {
		struct cal_error err = {0};
		cr_expect_eq(cal_backend_init(CAL_BACKEND_CUDA, NULL, &be, &err), CAL_ERR_UNSUPPORTED);
		cr_expect_null(be);
		cr_expect_eq(cal_backend_cuda_available(), 0);
		cal_error_clear(&err);
	}
	cal_backend_free(NULL);
}

/* The CPU back end through the back-end interface: what it says it
 * supports, the buffer functions, the accounting and the cap. */
Test(backend, cpu_interface)
{
	struct cal_backend *be = cpu(2, 0);
	struct cal_error err = {0};
	struct cal_backend_mem ms;
	uint8_t src[300], back[300];
	void *a = NULL, *b = NULL, *h = NULL;
	for (int i = 0; i < CAL_OP_COUNT; i++)
		cr_expect(cal_backend_supports_op(be, (enum cal_op_id)i), "cpu runs %s",
			  cal_op_name((enum cal_op_id)i));
	cr_expect_not(cal_backend_supports_op(be, CAL_OP_COUNT));
	cr_expect(cal_backend_supports(be, CAL_BACKEND_FEATURE_HOST_MEMORY));
	cr_expect_not(cal_backend_supports(be, CAL_BACKEND_FEATURE_PINNED_HOST));
	cr_expect_not(cal_backend_supports(be, CAL_BACKEND_FEATURE_ASYNC_UPLOAD));
	cr_expect_not(cal_backend_supports(be, CAL_BACKEND_FEATURE_COUNT));
	cr_expect_str_eq(cal_backend_describe(be), "cpu, multi-threaded");

	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(i * 7 + 1);
	cr_assert_eq(cal_backend_alloc_upload(be, src, sizeof(src), &a, &err), CAL_OK);
	cr_assert_eq(cal_backend_alloc(be, sizeof(src), &b, &err), CAL_OK);
	cr_expect_eq((uintptr_t)a % 256, 0);
	cr_expect_eq(cal_backend_copy(be, b, a, sizeof(src), &err), CAL_OK);
	cr_expect_eq(cal_backend_memset(be, a, 0, 100, &err), CAL_OK);
	cr_expect_eq(cal_backend_download(be, back, b, sizeof(src), &err), CAL_OK);
	cr_expect_eq(memcmp(back, src, sizeof(src)), 0);
	cr_expect_eq(cal_backend_download(be, back, a, sizeof(src), &err), CAL_OK);
	cr_expect_eq(back[99], 0);
	cr_expect_eq(back[100], src[100]);
	cr_expect_eq(cal_backend_sync(be, &err), CAL_OK);

	cal_backend_mem_stats(be, &ms);
	cr_expect_eq(ms.current, 2 * sizeof(src));
	cal_backend_set_mem_limit(be, 2 * sizeof(src) + 10);
	void *c = NULL;
	cr_expect_eq(cal_backend_alloc(be, 11, &c, &err), CAL_ERR_NOMEM);
	cr_expect_null(c);
	cr_expect(strstr(cal_error_msg(&err), "memory cap") != NULL, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_eq(cal_backend_alloc(be, 0, &c, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);
	cal_backend_dealloc(be, a);
	cal_backend_dealloc(be, b);
	cal_backend_dealloc(be, NULL);
	cal_backend_mem_stats(be, &ms);
	cr_expect_eq(ms.current, 0);
	cr_expect_eq(ms.peak, 2 * sizeof(src));

	cr_assert_eq(cal_backend_host_alloc(be, 64, &h, &err), CAL_OK);
	cr_expect_eq(cal_backend_upload_async(be, h, src, 64, &err), CAL_OK);
	cr_expect_eq(memcmp(h, src, 64), 0);
	cr_expect_eq(cal_backend_upload_mark(be, 0, &err), CAL_OK);
	cr_expect_eq(cal_backend_upload_mark_sync(be, 0, &err), CAL_OK);
	cr_expect_eq(cal_backend_upload_wait(be, &err), CAL_OK);
	cr_expect_eq(cal_backend_upload_sync(be, &err), CAL_OK);
	cr_expect_eq(cal_backend_upload_mark(be, CAL_BACKEND_UPLOAD_MARKS, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);
	cal_backend_host_free(be, h);
	cal_backend_host_free(be, NULL);
	uint64_t fr = 0, tot = 0;
	cr_expect_eq(cal_backend_mem_info(be, &fr, &tot, &err), CAL_OK);
	cr_expect(tot > 0 && fr <= tot);
	cal_backend_free(be);
}

/* ---- reference vs multi-threaded CPU, every op ----------------------------- */

Test(ops, every_op_has_a_case)
{
	for (int i = 0; i < CAL_OP_COUNT; i++)
		cr_expect_not_null(opcase_table[i], "op %s has no back-end comparison case",
				   cal_op_name((enum cal_op_id)i));
	cr_expect_eq(CAL_OP_COUNT, CAL_OP_COUNT_EXPECTED);
}

Test(ops, reference_vs_threaded_cpu, .timeout = 120)
{
	static const uint64_t shapes[][2] = {{1, 1}, {1, 7}, {3, 2}, {2, 3}, {7, 5}, {13, 17},
					     {64, 4}, {31, 8}, {5, 64}};
	struct opcase_env env = {cpu(1, 0), cpu(5, 1), 1, 0};
	uint64_t seed = 20260801;
	int bad = 0;
	for (int op = 0; op < CAL_OP_COUNT; op++)
		for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++, seed++) {
			env.misalign = i % 3 == 2 ? 4 : 0;
			bad |= opcase_run(&env, (enum cal_op_id)op, shapes[i][0], shapes[i][1], seed);
		}
	cr_expect_eq(bad, 0, "mismatches (see stderr; seeds printed)");
	cal_backend_free(env.a);
	cal_backend_free(env.b);
}
