/*
 * numfmt.h — scalar number formats of the quantizers, shared by the C
 * reference (kernels/<op>.c) and the CUDA kernels (kernels/cuda/<op>.cu):
 * bf16, float8 E4M3 (e4m3fn), FP4 E2M1 (NVFP4 and MXFP4 rounding), E8M0,
 * the per-tensor scale formulas of docs/numerics.md and docs/numerics.md.
 *
 * Every function is `static inline` (plus __host__ __device__ under nvcc), so
 * one definition serves both back ends.  All fp32 arithmetic goes through
 * cal_fmul/cal_fdiv/cal_fsub/cal_fadd, which are one IEEE operation with
 * round-to-nearest-even on both the host and the device: nvcc would
 * otherwise contract a*b+c into an FMA and the back ends would disagree.
 * The host side relies on -std=c11 (no FP contraction) and SSE arithmetic,
 * and canonicalises NaN results as the GPU does (cal_nan_canon).
 */
#ifndef CAL_NUMFMT_H
#define CAL_NUMFMT_H

#include <stdint.h>
#ifndef __CUDACC__
#include <string.h>
#endif

#ifdef __CUDACC__
#define CAL_HD static inline __host__ __device__
#else
#define CAL_HD static inline
#endif

/* How "amax / constant" is evaluated (docs/numerics.md "Division semantics").
 */
enum cal_div_mode {
	/* fl32(amax * fl32(1/c)): what PyTorch does for a CUDA tensor divided
	 * by a Python float — the standard GPU calibration run. Default. */
	CAL_DIV_RECIP = 0,
	/* fl32(amax / c): true IEEE division, as on a CPU-resident tensor. */
	CAL_DIV_EXACT = 1,
};

/* ---- bit casts and single-rounding fp32 arithmetic ------------------- */

/* Defines To NAME(From v): v's 4 bytes read as a To (CUDA's INTRINSIC on
 * the device, memcpy on the host). */
#ifdef __CUDA_ARCH__
#define CAL_NF_BITCAST(name, To, From, intrinsic) \
	CAL_HD To name(From v) { return intrinsic(v); }
#else
#define CAL_NF_BITCAST(name, To, From, intrinsic) \
	CAL_HD To name(From v)                    \
	{                                         \
		To r;                             \
		memcpy(&r, &v, 4);                \
		return r;                         \
	}
#endif

CAL_NF_BITCAST(cal_nf_bits, uint32_t, float, __float_as_uint)
CAL_NF_BITCAST(cal_nf_float, float, uint32_t, __uint_as_float)

/* NaN produced by arithmetic is the canonical positive NaN 0x7FFFFFFF on
 * NVIDIA GPUs, but the negative "indefinite" 0xFFC00000 on x86: the host
 * versions below return the GPU's, so NaN-derived bytes agree. */
CAL_HD float cal_nan_canon(float r)
{
	return r != r ? cal_nf_float(0x7fffffffu) : r;
}

CAL_HD float cal_fmul(float a, float b)
{
#ifdef __CUDA_ARCH__
	return __fmul_rn(a, b);
#else
	return cal_nan_canon(a * b);
#endif
}

CAL_HD float cal_fdiv(float a, float b)
{
#ifdef __CUDA_ARCH__
	return __fdiv_rn(a, b);
#else
	return cal_nan_canon(a / b);
#endif
}

CAL_HD float cal_fadd(float a, float b)
{
#ifdef __CUDA_ARCH__
	return __fadd_rn(a, b);
#else
	return cal_nan_canon(a + b);
#endif
}

CAL_HD float cal_fsub(float a, float b)
{
#ifdef __CUDA_ARCH__
	return __fsub_rn(a, b);
#else
	return cal_nan_canon(a - b);
#endif
}

/* Round to nearest integer, ties to even (|v| < 2^22 expected). */
CAL_HD float cal_rint(float v)
{
#ifdef __CUDA_ARCH__
	return rintf(v);
#else
	return __builtin_rintf(v);
#endif
}

/* ---- bf16 ------------------------------------------------------------ */

CAL_HD float cal_nf_bf16_to_f32(uint16_t h)
{
	return cal_nf_float((uint32_t)h << 16);
}

/* RNE, NaN kept quiet (as PyTorch's .to(torch.bfloat16)). */
CAL_HD uint16_t cal_nf_f32_to_bf16(float f)
{
	uint32_t u = cal_nf_bits(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40u);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* fp32 -> bf16 as cal_nf_f32_to_bf16, but every NaN becomes the quiet NaN
 * 0x7FC0: for values computed from a NaN, whose payload differs between
 * back ends (x86 propagates the operand's, CUDA's arithmetic gives
 * 0x7FFFFFFF). */
CAL_HD uint16_t cal_nf_f32_to_bf16_canon(float f)
{
	return f != f ? (uint16_t)0x7fc0u : cal_nf_f32_to_bf16(f);
}

/* ---- float8 E4M3 (e4m3fn: bias 7, no inf, 0x7F/0xFF = NaN, max 448) ----- */

/*
 * fp32 -> e4m3fn byte, round-to-nearest-even, NON-saturating (docs/numerics.md
 * "NVFP4 weights"): |x| in (448, 464] -> 448, |x| > 464, ±inf, NaN -> NaN
 * (0x7F | sign).
 */
CAL_HD uint8_t cal_e4m3_encode(float x)
{
	uint32_t u = cal_nf_bits(x);
	uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
	uint32_t a = u & 0x7fffffffu;
	if (a >= 0x7f800000u) /* inf or NaN */
		return (uint8_t)(sign | 0x7f);
	if (a < 0x3c800000u) { /* |x| < 2^-6: subnormal grid, step 2^-9 */
		float q = cal_rint(cal_fmul(cal_nf_float(a), 512.0f)); /* exact scale */
		return (uint8_t)(sign | (uint8_t)q); /* q == 8 is the smallest normal */
	}
	/* keep 3 mantissa bits, round the 20 dropped bits to nearest even */
	a += 0x7ffffu + ((a >> 20) & 1u);
	int e = (int)(a >> 23) - 127 + 7;
	uint32_t m = (a >> 20) & 7u;
	if (e > 15 || (e == 15 && m == 7))
		return (uint8_t)(sign | 0x7f);
	return (uint8_t)(sign | (uint32_t)e << 3 | m);
}

/* e4m3fn byte -> fp32 (exact). */
CAL_HD float cal_e4m3_decode(uint8_t c)
{
	uint32_t sign = (uint32_t)(c & 0x80) << 24;
	uint32_t e = (c >> 3) & 15u, m = c & 7u;
	if ((c & 0x7f) == 0x7f)
		return cal_nf_float(sign | 0x7fc00000u);
	if (e == 0) /* m * 2^-9 */
		return cal_nf_float(sign | cal_nf_bits(cal_fmul((float)m, 0.001953125f)));
	return cal_nf_float(sign | (e - 7u + 127u) << 23 | m << 20);
}

/* Block-scaled FP8 source element (DeepSeek checkpoints, kernels
 * fp8_block_dequant): bf16 bits of fl32(e4m3(q) * scale_inv). */
CAL_HD uint16_t cal_fp8_block_value(uint8_t q, float scale_inv)
{
	return cal_nf_f32_to_bf16(cal_fmul(cal_e4m3_decode(q), scale_inv));
}

/* ---- FP4 E2M1 ---------------------------------------------------------- */

/* Magnitude of the 3 low bits of an E2M1 code. */
CAL_HD float cal_e2m1_magnitude(unsigned code)
{
	/* 0, 0.5, 1, 1.5, 2, 3, 4, 6 */
	unsigned c = code & 7u;
	if (c < 4)
		return (float)c * 0.5f;
	return (float)(1u << (((c - 4u) >> 1) + 1u)) * ((c & 1u) ? 1.5f : 1.0f);
}

/* Signed value of an E2M1 code (bit 3 = sign). */
CAL_HD float cal_e2m1_decode(unsigned code)
{
	float v = cal_e2m1_magnitude(code);
	return (code & 8u) ? -v : v;
}

/*
 * NVFP4 rounding (docs/numerics.md "NVFP4 weights"): idx = number of bounds
 * {0.25,0.75,1.25,1.75,2.5,3.5,5} below |q| (written as !(b >= |q|), so NaN
 * counts as above every bound: 7, as torch.searchsorted's lower-bound loop
 * gives), +1 when |q| is exactly 0.75, 1.75 or 3.5 (ties to even), saturating
 * at 6; sign bit iff q < 0, so a negative value rounding to zero is 0x8.
 */
CAL_HD unsigned cal_e2m1_encode_nvfp4(float q)
{
	float a = cal_nf_float(cal_nf_bits(q) & 0x7fffffffu);
	unsigned idx = (unsigned)!(0.25f >= a) + (unsigned)!(0.75f >= a) +
		       (unsigned)!(1.25f >= a) + (unsigned)!(1.75f >= a) +
		       (unsigned)!(2.5f >= a) + (unsigned)!(3.5f >= a) + (unsigned)!(5.0f >= a);
	if (a == 0.75f || a == 1.75f || a == 3.5f)
		idx++;
	return idx | (q < 0.0f ? 8u : 0u);
}

/*
 * MXFP4 rounding (docs/numerics.md "MX formats"): idx = number of bounds
 * strictly below |q| (ties go down), sign bit set unless q > 0 (torch.sign:
 * exact zeros get 0x8).
 */
CAL_HD unsigned cal_e2m1_encode_mxfp4(float q)
{
	float a = cal_nf_float(cal_nf_bits(q) & 0x7fffffffu);
	unsigned idx = (unsigned)(0.25f < a) + (unsigned)(0.75f < a) + (unsigned)(1.25f < a) +
		       (unsigned)(1.75f < a) + (unsigned)(2.5f < a) + (unsigned)(3.5f < a) +
		       (unsigned)(5.0f < a);
	return idx | (q > 0.0f ? 0u : 8u);
}

/* ---- E8M0 and powers of two -------------------------------------------- */

/* 2^e as fp32 for e in [-149, 127] (exact, subnormals included). */
CAL_HD float cal_pow2f(int e)
{
	if (e >= -126)
		return cal_nf_float((uint32_t)(e + 127) << 23);
	return cal_nf_float(1u << (e + 149));
}

/* E8M0 byte -> fp32: 2^(b-127); 0xFF is NaN. */
CAL_HD float cal_e8m0_decode(uint8_t b)
{
	if (b == 0xff)
		return cal_nf_float(0x7fc00000u);
	return cal_pow2f((int)b - 127);
}

/*
 * ceil(log2(y)) computed exactly from the bits of y > 0 finite (an exact power
 * of two gives its exponent, anything above it the next integer).  y == 0
 * gives -1000 (stands for -inf), +inf 1000.  Not defined for y < 0 or NaN.
 */
CAL_HD int cal_ceil_log2(float y)
{
	uint32_t u = cal_nf_bits(y) & 0x7fffffffu;
	if (u == 0)
		return -1000;
	if (u >= 0x7f800000u)
		return 1000;
	int e;
	uint32_t m;
	if (u < 0x00800000u) { /* subnormal: value = u * 2^-149 */
		e = -149;
		m = u;
		while (m >= 2u) {
			if (m & 1u) { /* not a power of two */
				while (m >= 2u) {
					m >>= 1;
					e++;
				}
				return e + 1;
			}
			m >>= 1;
			e++;
		}
		return e;
	}
	e = (int)(u >> 23) - 127;
	m = u & 0x7fffffu;
	return m ? e + 1 : e;
}

/* ---- per-tensor scales (host and device) ------------------------------- */

/* amax / c under the chosen semantics (docs/numerics.md "Division semantics").
 */
CAL_HD float cal_scale_div(float amax, float c, enum cal_div_mode mode)
{
	if (mode == CAL_DIV_EXACT)
		return cal_fdiv(amax, c);
	return cal_fmul(amax, cal_fdiv(1.0f, c));
}

/* NVFP4 weight_scale_2 = amax_w / (6*448) (docs/numerics.md "NVFP4 weights").
 */
CAL_HD float cal_nvfp4_scale2(float amax_w, enum cal_div_mode mode)
{
	return cal_scale_div(amax_w, 2688.0f, mode);
}

/* Static NVFP4 (docs/numerics.md "NVFP4 static and MSE"): weight_scale_2 = g /
 * (6*m), m = 448 (or 256 for 4/6). */
CAL_HD float cal_nvfp4_static_scale2(float global_amax, float norm_max, enum cal_div_mode mode)
{
	return cal_scale_div(global_amax, cal_fmul(6.0f, norm_max), mode);
}

/* FP8 weight_scale = amax_w / 448 (docs/numerics.md "FP8 per tensor"), and KV
 * k_scale/v_scale (docs/numerics.md "KV cache"). */
CAL_HD float cal_fp8_scale(float amax, enum cal_div_mode mode)
{
	return cal_scale_div(amax, 448.0f, mode);
}

/* FP8 input_scale (docs/numerics.md "FP8 per tensor"): export_amax() maps 0
 * and NaN to 448 first. */
CAL_HD float cal_fp8_input_scale(float amax, enum cal_div_mode mode)
{
	if (amax == 0.0f || amax != amax)
		amax = 448.0f;
	return cal_scale_div(amax, 448.0f, mode);
}

/* modelopt's export_amax() of one row's amax a (per-channel weights):
 * 0 and NaN -> maxbound (scale 1), else clamped to [FLT_MIN, FLT_MAX]
 * (inf -> FLT_MAX). */
CAL_HD float cal_export_row_amax(float a, float maxbound)
{
	if (a == 0.0f || a != a)
		return maxbound;
	return a < 0x1p-126f ? 0x1p-126f : (a > 0x1.fffffep127f ? 0x1.fffffep127f : a);
}

/* FP8 per-channel weight_scale of one row (docs/numerics.md "FP8 per
 * channel, per token") from m, the row's largest bf16 magnitude as bits
 * (x & 0x7FFF, integer max: above 0x7F80 the row holds a NaN):
 * cal_export_row_amax(.., 448) / 448. */
CAL_HD float cal_fp8_row_scale(uint32_t m, enum cal_div_mode mode)
{
	return cal_fp8_scale(cal_export_row_amax(cal_nf_bf16_to_f32((uint16_t)m), 448.0f), mode);
}

/* Tiles of FP8 per-channel (tile 0: one per row) and 2-D block (tile x
 * tile, ragged at the ends) weights of [rows, cols]: their count, and the
 * tile of element (r, c), row-major over the tile grid. */
CAL_HD uint64_t cal_fp8_tiles(uint64_t rows, uint64_t cols, uint32_t tile)
{
	return tile ? (rows + tile - 1) / tile * ((cols + tile - 1) / tile) : rows;
}

CAL_HD uint64_t cal_fp8_tile_of(uint64_t r, uint64_t c, uint64_t cols, uint32_t tile)
{
	return tile ? r / tile * ((cols + tile - 1) / tile) + c / tile : r;
}

/* ---- per-block scale formulas ----------------------------------------- */

/* Clamp that lets NaN through (torch.clamp semantics). */
CAL_HD float cal_clamp_nan(float s, float lo, float hi)
{
	s = s < lo ? lo : s;
	return s > hi ? hi : s;
}

/* NVFP4 dynamic block scale byte from the block amax a and D = fl32(6*S2). */
CAL_HD uint8_t cal_nvfp4_block_scale(float a, float d)
{
	float s = cal_fdiv(a, d);
	if (s == 0.0f)
		s = 1.0f;
	return cal_e4m3_encode(cal_clamp_nan(s, 0.001953125f, 448.0f));
}

/* NVFP4 static block scale byte (docs/numerics.md "NVFP4 static and MSE") from
 * the block amax, the global amax g and the normalisation max m (448, or 256
 * for four-over-six). */
CAL_HD uint8_t cal_nvfp4_static_block_scale(float amax_b, float g, float m,
					    enum cal_div_mode mode)
{
	float t1 = cal_scale_div(amax_b, 6.0f, mode);
	if (t1 == 0.0f)
		t1 = 1.0f;
	float t2 = cal_fmul(t1, m);
	float t3 = cal_scale_div(g, 6.0f, mode);
	float s = cal_fdiv(t2, t3);
	return cal_e4m3_encode(cal_clamp_nan(s, 0.001953125f, 448.0f));
}

/* MX E8M0 scale byte (docs/numerics.md "MX formats"): e =
 * clamp(ceil(log2(amax/M)), -127, 127) with M = 6 for MXFP4 (fp4 != 0),
 * 448 for MXFP8; NaN amax -> 0xff. */
CAL_HD uint8_t cal_mx_block_scale(float amax_b, int fp4, enum cal_div_mode mode)
{
	if (amax_b != amax_b)
		return 0xff;
	int e = cal_ceil_log2(cal_scale_div(amax_b, fp4 ? 6.0f : 448.0f, mode));
	e = e < -127 ? -127 : (e > 127 ? 127 : e);
	return (uint8_t)(e + 127);
}

/* INT4 per-block scale (docs/numerics.md "INT4 blocks"): export_amax()/7, with
 * 0/NaN amax -> 7. */
CAL_HD float cal_int4_block_scale(float amax_b, enum cal_div_mode mode)
{
	if (amax_b == 0.0f || amax_b != amax_b)
		amax_b = 7.0f;
	return cal_scale_div(amax_b, 7.0f, mode);
}

/* INT4 nibble of the quotient q = fl32(x / scale): clamp(rint(q), -8, 7). */
CAL_HD unsigned cal_int4_from_quotient(float q)
{
	q = cal_rint(q);
	q = q < -8.0f ? -8.0f : (q > 7.0f ? 7.0f : q); /* NaN -> stays NaN */
	int v = q == q ? (int)q : 0;
	return (unsigned)v & 0xfu;
}

/* INT4 value: clamp(round_half_even(x / scale), -8, 7) as a 4-bit nibble. */
CAL_HD unsigned cal_int4_encode(float x, float scale)
{
	return cal_int4_from_quotient(cal_fdiv(x, scale));
}

/* Signed value of an INT4 nibble. */
CAL_HD float cal_int4_decode(unsigned nib)
{
	int v = (int)(nib & 0xfu);
	return (float)(v >= 8 ? v - 16 : v);
}

/* INT8 per-output-channel scale (docs/numerics.md "INT8"):
 * cal_export_row_amax(amax_r, 127) / 127. */
CAL_HD float cal_int8_row_scale(float amax_r, enum cal_div_mode mode)
{
	return cal_scale_div(cal_export_row_amax(amax_r, 127.0f), 127.0f, mode);
}

/* INT8 code of the quotient q = fl32(x / scale): clamp(rint(q), -128, 127),
 * NaN -> 0, as a two's-complement byte. */
CAL_HD uint8_t cal_int8_from_quotient(float q)
{
	q = cal_rint(q);
	q = q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q);
	int v = q == q ? (int)q : 0;
	return (uint8_t)(v & 0xff);
}

/* Signed value of an INT8 code byte. */
CAL_HD float cal_int8_decode(uint8_t b)
{
	return (float)(b >= 128 ? (int)b - 256 : (int)b);
}

/* ---- block helpers shared by quantizers -------------------------------- */

#ifdef __CUDA_ARCH__
#define CAL_UNROLL _Pragma("unroll")
#else
#define CAL_UNROLL
#endif

/* max|x[k]| of n values (inputs are finite or NaN-free weights; NaN is
 * ignored by the comparison). */
CAL_HD float cal_block_absmax(const float *x, int n)
{
	float m = 0.0f;
	for (int k = 0; k < n; k++) {
		float a = cal_nf_float(cal_nf_bits(x[k]) & 0x7fffffffu);
		m = a > m ? a : m;
	}
	return m;
}

/* NVFP4 values of one 16-block: divisor t = fl32(e4m3(scale) * S2); nibble k
 * of the result is element k (stored little-endian: even element in the low
 * nibble of each byte). */
CAL_HD uint64_t cal_nvfp4_pack16(const float *x, float t)
{
	uint64_t r = 0;
	CAL_UNROLL
	for (int k = 0; k < 16; k++)
		r |= (uint64_t)cal_e2m1_encode_nvfp4(cal_fdiv(x[k], t)) << (4 * k);
	return r;
}

/*
 * MSE FP8-scale sweep of one static-NVFP4 16-block (docs/numerics.md "NVFP4
 * static and MSE"): tries amax_c = fl32(g * fl32(v/448)) for the 126 finite
 * positive E4M3 values v in ascending order; loss = sum_k fl32((x_k -
 * fq(x_k))^2) accumulated in fp32 in element order, fq = E2M1 value * T;
 * returns the first amax_c of minimal loss.  Candidates whose scale byte equals
 * the previous one's give the same loss and are skipped (the byte is monotone
 * in amax_c).
 */
CAL_HD float cal_nvfp4_mse_block(const float *x, float g, float m, float s2,
				 enum cal_div_mode mode)
{
	float best = 0.0f, best_loss = 0.0f;
	int have = 0, last = -1;
	for (unsigned v = 1; v <= 126; v++) {
		float cand = cal_fmul(g, cal_fdiv(cal_e4m3_decode((uint8_t)v), 448.0f));
		uint8_t e = cal_nvfp4_static_block_scale(cand, g, m, mode);
		if ((int)e == last)
			continue;
		last = e;
		float t = cal_fmul(cal_e4m3_decode(e), s2);
		float loss = 0.0f;
		CAL_UNROLL
		for (int k = 0; k < 16; k++) {
			unsigned code = cal_e2m1_encode_nvfp4(cal_fdiv(x[k], t));
			float d = cal_fsub(x[k], cal_fmul(cal_e2m1_decode(code), t));
			loss = cal_fadd(loss, cal_fmul(d, d));
		}
		if (!have || loss < best_loss) {
			best = cand;
			best_loss = loss;
			have = 1;
		}
	}
	return best;
}

/* Segment of row r (a segmented observer's expert, a packed batch's
 * sequence): the largest s < n_seg with offsets[s] <= r (binary search; the
 * caller checked offsets[0] <= r < offsets[n_seg]).  Deterministic, and
 * memory-safe, for any offsets. */
CAL_HD uint32_t cal_segment_of(const uint32_t *offsets, uint32_t n_seg, uint64_t r)
{
	uint32_t lo = 0, hi = n_seg;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (offsets[mid] <= r)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* ---- one-element helpers shared by quantizers -------------------------- */

/* FP8 weight element (docs/numerics.md "FP8 per tensor"). CAL_DIV_RECIP
 * (CUDA): x / bf16(S) with the quotient rounded to bf16, then e4m3;
 * CAL_DIV_EXACT (CPU): x / S, bf16, e4m3. */
CAL_HD uint8_t cal_fp8_from_quotient(float q)
{
	return cal_e4m3_encode(cal_nf_bf16_to_f32(cal_nf_f32_to_bf16(q)));
}

CAL_HD uint8_t cal_fp8_weight_encode(float x, float divisor)
{
	return cal_fp8_from_quotient(cal_fdiv(x, divisor));
}

/* FP8 element of a stacked 3-D expert weight: e4m3(fl32(x / S)), one rounding. */
CAL_HD uint8_t cal_fp8_weight_encode_single(float x, float s)
{
	return cal_e4m3_encode(cal_fdiv(x, s));
}

/* The divisor cal_fp8_weight_encode needs for a given weight_scale S. */
CAL_HD float cal_fp8_weight_divisor(float s, enum cal_div_mode mode)
{
	if (mode == CAL_DIV_EXACT)
		return s;
	return cal_nf_bf16_to_f32(cal_nf_f32_to_bf16(s));
}

/* ---- exact fast forms of the NVFP4 and FP8 weight encoders -------------- */

/*
 * NVFP4 by thresholds.  For a block divisor T the E2M1 code of x is
 * code(x) = cal_e2m1_encode_nvfp4(fl32(x / T)).  Whenever T is +0, positive,
 * +inf or NaN, fl32(y / T) is monotone non-decreasing in y over [0, +inf]
 * (correctly rounded division), so for each level k = 1..7 the predicate
 * (code(y) & 7) >= k is false up to some largest y and true above it, and
 * the sign bit of code(-y) likewise.  cal_nvfp4_threshold(T, k) returns that
 * largest y (found with the reference itself, so no rounding argument is
 * needed), -inf when the predicate holds everywhere; k = 0 returns minus the
 * largest y whose code(-y) has no sign bit.  Then, for every x, NaN included,
 *   code(x) = sum_k !(|x| <= thr[k-1]) + (x < thr[7] ? 8 : 0)
 * with thr[k-1] = threshold(T, k), thr[7] = threshold(T, 0)
 * (cal_nvfp4_encode_thr, which finds the sum by binary search: the
 * predicates are nested, so thr[0..6] ascend).  Not for T with the sign bit set (-0, negative):
 * callers test cal_nvfp4_thr_ok(S2) first.  tests/numerics checks the
 * identity on all 65536 bf16 inputs for every scale byte and a set of S2.
 */
CAL_HD unsigned cal_nvfp4_level(uint32_t ybits, float t, int k)
{
	if (k == 0) /* sign bit of code(-y) */
		return cal_e2m1_encode_nvfp4(cal_fdiv(cal_nf_float(ybits | 0x80000000u), t)) >> 3;
	return (cal_e2m1_encode_nvfp4(cal_fdiv(cal_nf_float(ybits), t)) & 7u) >= (unsigned)k;
}

CAL_HD float cal_nvfp4_threshold(float t, int k)
{
	/* first guess: y = fl32(b_k * T) (b_0 stands for T * 2^-150) */
	float b = k == 0 ? 0.0f : (k == 1 ? 0.25f : k == 2 ? 0.75f : k == 3 ? 1.25f :
				   k == 4 ? 1.75f : k == 5 ? 2.5f : k == 6 ? 3.5f : 5.0f);
	float g = k == 0 ? cal_fmul(cal_fmul(t, 0x1p-75f), 0x1p-75f) : cal_fmul(b, t);
	uint32_t u = cal_nf_bits(g);
	const uint32_t inf = 0x7f800000u;
	if (u > inf) /* NaN guess (T NaN): start at 0 */
		u = 0;
	/* walk a few ulps to the last y with the level false ... */
	int steps = 0;
	if (cal_nvfp4_level(u, t, k)) {
		while (steps++ < 8 && u > 0 && cal_nvfp4_level(u - 1, t, k))
			u--;
		if (steps <= 8) {
			if (u == 0)
				return cal_nf_float(0xff800000u); /* true everywhere */
			u--;
			goto done;
		}
	} else {
		while (steps++ < 8 && u < inf && !cal_nvfp4_level(u + 1, t, k))
			u++;
		if (steps <= 8)
			goto done;
	}
	/* ... or bisect: lo is false (or -1), hi is true (or inf + 1) */
	{
		int64_t lo = -1, hi = (int64_t)inf + 1;
		while (hi - lo > 1) {
			int64_t mid = lo + (hi - lo) / 2;
			if (cal_nvfp4_level((uint32_t)mid, t, k))
				hi = mid;
			else
				lo = mid;
		}
		if (lo < 0)
			return cal_nf_float(0xff800000u);
		u = (uint32_t)lo;
	}
done:
	return k == 0 ? cal_nf_float(u | 0x80000000u) : cal_nf_float(u);
}

/* Whether every T = fl32(e4m3 * S2) of a call with this S2 suits the
 * thresholds: S2 is NaN or has its sign bit clear. */
CAL_HD int cal_nvfp4_thr_ok(float s2)
{
	return s2 != s2 || (cal_nf_bits(s2) >> 31) == 0;
}

/* The NVFP4 code of x from the eight thresholds of its block divisor. */
CAL_HD unsigned cal_nvfp4_encode_thr(float x, const float *thr)
{
	float a = cal_nf_float(cal_nf_bits(x) & 0x7fffffffu);
	/* thr[0..6] ascend (nested predicates), so count by binary search */
	unsigned b2 = !(a <= thr[3]);
	unsigned b1 = !(a <= (b2 ? thr[5] : thr[1]));
	unsigned b0 = !(a <= (b2 ? (b1 ? thr[6] : thr[4]) : (b1 ? thr[2] : thr[0])));
	return b2 << 2 | b1 << 1 | b0 | (x < thr[7] ? 8u : 0u);
}

/*
 * FP8 by table.  For a divisor 0 < D < inf, the e4m3 byte of a finite bf16
 * x is (sign of x) | mag(|x|), mag(h) = cal_fp8_weight_encode(h, D) & 0x7f,
 * because division, bf16 and e4m3 rounding are all sign-symmetric and the
 * sign of x / D is that of x (-0 included).  mag is monotone in the bf16
 * magnitude bits h (0..0x7f7f), the NaN code 0x7f coming last, so it is 0 up
 * to some lo and 0x7f from some hi on: a table of mag over [lo, hi] (about
 * 20 binades x 128 entries) gives every finite x; inf and NaN inputs take
 * the reference.  cal_fp8_lut_range finds lo and hi by bisection; it
 * returns 0 when D is not positive finite.
 */
CAL_HD unsigned cal_fp8_mag(uint32_t h, float divisor)
{
	return cal_fp8_weight_encode(cal_nf_bf16_to_f32((uint16_t)h), divisor) & 0x7fu;
}

CAL_HD int cal_fp8_lut_range(float divisor, uint32_t *ret_lo, uint32_t *ret_hi)
{
	if (!(divisor > 0.0f && divisor < cal_nf_float(0x7f800000u)))
		return 0;
	/* lo: the last h with mag 0 (mag(0) = 0) */
	uint32_t a = 0, b = 0x7f80; /* mag(a) == 0, b: past the end or mag(b) != 0 */
	while (b - a > 1) {
		uint32_t mid = a + (b - a) / 2;
		if (cal_fp8_mag(mid, divisor) == 0)
			a = mid;
		else
			b = mid;
	}
	*ret_lo = a;
	/* hi: the first h with mag 0x7f, or 0x7f7f if none */
	uint32_t c = a, d = 0x7f7f;
	if (cal_fp8_mag(d, divisor) == 0x7fu) {
		while (d - c > 1) {
			uint32_t mid = c + (d - c) / 2;
			if (cal_fp8_mag(mid, divisor) == 0x7fu)
				d = mid;
			else
				c = mid;
		}
	}
	*ret_hi = d;
	return 1;
}

/* The normalized Hadamard transform's butterfly on n = 2^k fp32 values in
 * place, Sylvester order: for h = 1, 2, 4, ... the pairs (j, j + h) of each
 * group of 2h become (sum, difference) (kernels/hadamard.c). */
CAL_HD void cal_hadamard_f32(float *v, uint32_t n)
{
	for (uint32_t h = 1; h < n; h *= 2)
		for (uint32_t i = 0; i < n; i += 2 * h)
			for (uint32_t j = i; j < i + h; j++) {
				float p = v[j], q = v[j + h];
				v[j] = p + q;
				v[j + h] = p - q;
			}
}

#endif
