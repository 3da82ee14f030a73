/*
 * test_fwd_ops.c — the forward-pass ops' C reference against naive
 * formulas written out here in double precision (small cases, printed
 * seeds): GEMM (plain, bias, grouped), RMSNorm variants, RoPE, attention
 * (causal, GQA, window, left-pad mask), router (softmax, top-k ties to the
 * lower index, renorm), stable sort, combine (eager and f32), element-wise
 * modes, row gather.  Reference vs threaded byte identity is in
 * tests/numerics (fwdcases.c).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "kernels/ops.h"
#include "testrng.h"

/* Every test runs on the reference: the CPU back end, one thread. */
static struct cal_backend *be;

static void ref_init(void)
{
	struct cal_backend_opts o = {.cpu_threads = 1};
	cr_assert_eq(cal_backend_init(CAL_BACKEND_CPU, &o, &be, NULL), CAL_OK);
}

static void ref_free(void)
{
	cal_backend_free(be);
	be = NULL;
}

TestSuite(fwd_ops, .init = ref_init, .fini = ref_free);

static void fill(uint16_t *p, size_t n, float scale, uint64_t *s)
{
	for (size_t i = 0; i < n; i++)
		p[i] = cal_f32_to_bf16(cal_test_unit(s) * scale);
}

/* Attention inputs from s, in this order: q and k in [-2, 2), v in
 * [-1, 1). */
static void fill_qkv(uint16_t *q, size_t nq, uint16_t *k, size_t nk, uint16_t *v, size_t nv,
		     uint64_t *s)
{
	fill(q, nq, 2, s);
	fill(k, nk, 2, s);
	fill(v, nv, 1, s);
}

static double f(uint16_t h)
{
	return cal_bf16_to_f32(h);
}

/* |got - want| within one bf16 ulp of want (plus a tiny absolute floor). */
static void near_bf16(uint16_t got, double want, const char *what, size_t i, uint64_t seed)
{
	double tol = fabs(want) * (1.0 / 128) + 1e-6;
	cr_expect(fabs(f(got) - want) <= tol, "%s[%zu] = %g, expected %g (seed %llu)", what, i, f(got),
		  want, (unsigned long long)seed);
}

Test(fwd_ops, gemm_plain_bias_grouped)
{
	uint64_t seed = 11, s = seed;
	enum { M = 9, N = 7, K = 37, G = 3 };
	uint16_t x[M * K], w[G * N * K], b[G * N], y[M * N];
	uint32_t off[G + 1] = {0, 2, 2, M};
	fill(x, M * K, 2, &s);
	fill(w, G * N * K, 1, &s);
	fill(b, G * N, 1, &s);
	struct cal_gemm_args a = {.x = x, .w = w, .bias = b, .y = y, .m = M, .n = N, .k = K};
	cr_assert_eq(cal_op_gemm(be, &a, NULL), CAL_OK);
	for (int m = 0; m < M; m++)
		for (int n = 0; n < N; n++) {
			double acc = f(b[n]);
			for (int k = 0; k < K; k++)
				acc += f(x[m * K + k]) * f(w[n * K + k]);
			near_bf16(y[m * N + n], acc, "y", (size_t)(m * N + n), seed);
		}
	struct cal_gemm_args g = {.x = x, .w = w, .y = y, .m = M, .n = N, .k = K, .n_groups = G,
				  .offsets = off, .w_stride = N * K};
	cr_assert_eq(cal_op_gemm(be, &g, NULL), CAL_OK);
	for (int m = 0; m < M; m++) {
		int grp = m < 2 ? 0 : 2;
		for (int n = 0; n < N; n++) {
			double acc = 0;
			for (int k = 0; k < K; k++)
				acc += f(x[m * K + k]) * f(w[(grp * N + n) * K + k]);
			near_bf16(y[m * N + n], acc, "grouped y", (size_t)(m * N + n), seed);
		}
	}
}

Test(fwd_ops, rmsnorm_variants)
{
	uint64_t seed = 12, s = seed;
	enum { R = 3, C = 40 };
	uint16_t x[R * C], y[R * C], wb[C];
	float wf[C];
	fill(x, R * C, 4, &s);
	for (int j = 0; j < C; j++) {
		wf[j] = 1.0f + 0.2f * cal_test_unit(&s);
		wb[j] = cal_f32_to_bf16(wf[j]);
	}
	for (int kind = 0; kind < 3; kind++) {
		struct cal_rmsnorm_args a = {(enum cal_rms_kind)kind, x, y, R, C,
					     kind == 0 ? (const void *)wb : (const void *)wf,
					     kind == 0 ? CAL_DTYPE_BF16 : CAL_DTYPE_F32, 1e-5f};
		cr_assert_eq(cal_op_rmsnorm(be, &a, NULL), CAL_OK);
		for (int r = 0; r < R; r++) {
			double ss = 0;
			for (int j = 0; j < C; j++)
				ss += f(x[r * C + j]) * f(x[r * C + j]);
			double inv = 1 / sqrt(ss / C + 1e-5);
			for (int j = 0; j < C; j++) {
				double n = f(x[r * C + j]) * inv;
				double want = kind == 0 ? f(wb[j]) * cal_round_bf16((float)n)
					    : kind == 1 ? wf[j] * n : n * (1 + wf[j]);
				near_bf16(y[r * C + j], want, "rms", (size_t)(r * C + j), seed);
			}
		}
	}
}

/* Runs cal_op_rope over a->x filled at random and checks each head against
 * the kernels/ops.h formulas: NeoX halves (j, j + r/2), or with a->interleave
 * the pairs (2j, 2j+1) stored de-interleaved, at a->offset; the channels
 * outside the rotary part pass through unchanged. */
static void check_rope(const struct cal_rope_args *a, uint64_t seed)
{
	uint64_t s = seed;
	const uint32_t HD = a->head_dim, RD = a->rotary_dim, OFF = a->offset;
	size_t n = (size_t)a->rows * a->heads * HD;
	uint16_t *x0 = malloc(n * sizeof(*x0));
	cr_assert_not_null(x0);
	fill(a->x, n, 2, &s);
	memcpy(x0, a->x, n * sizeof(*x0));
	cr_assert_eq(cal_op_rope(be, a, NULL), CAL_OK);
	for (uint64_t t = 0; t < a->rows; t++)
		for (uint32_t h = 0; h < a->heads; h++) {
			const uint16_t *i0 = x0 + (t * a->heads + h) * HD, *o = a->x + (t * a->heads + h) * HD;
			for (uint32_t j = 0; j < RD / 2; j++) {
				double c = cal_round_bf16(cosf((float)a->pos[t] * a->inv_freq[j]));
				double sn = cal_round_bf16(sinf((float)a->pos[t] * a->inv_freq[j]));
				if (!a->interleave) {
					near_bf16(o[OFF + j], f(i0[OFF + j]) * c - f(i0[OFF + j + RD / 2]) * sn,
						  "rope", (size_t)j, seed);
					near_bf16(o[OFF + j + RD / 2],
						  f(i0[OFF + j + RD / 2]) * c + f(i0[OFF + j]) * sn, "rope",
						  (size_t)j, seed);
					continue;
				}
				double a0 = f(i0[OFF + 2 * j]), a1 = f(i0[OFF + 2 * j + 1]);
				/* pairs (2j, 2j+1) in, de-interleaved out; products rounded to bf16 */
				double p00 = cal_round_bf16((float)(a0 * c)), p11 = cal_round_bf16((float)(a1 * sn));
				double p10 = cal_round_bf16((float)(a1 * c)), p01 = cal_round_bf16((float)(a0 * sn));
				near_bf16(o[OFF + j], p00 - p11, "rope", (size_t)j, seed);
				near_bf16(o[OFF + j + RD / 2], p10 + p01, "rope", (size_t)j, seed);
			}
			for (uint32_t j = 0; j < HD; j++)
				if (j < OFF || j >= OFF + RD)
					cr_expect_eq(o[j], i0[j], "channel %u outside the rotary part changed", j);
		}
	free(x0);
}

Test(fwd_ops, rope_partial_neox)
{
	enum { T = 4, NH = 2, HD = 8, RD = 4 };
	uint16_t x[T * NH * HD];
	uint32_t pos[T] = {0, 1, 7, 300};
	float inv[RD / 2] = {1.0f, 0.01f};
	struct cal_rope_args a = {x, T, NH, HD, RD, pos, inv, 1.0f, 0, 0};
	check_rope(&a, 13);
}

Test(fwd_ops, attention_causal_gqa_window_pad)
{
	uint64_t seed = 14, s = seed;
	enum { T = 11, NH = 4, NKV = 2, HD = 8 };
	uint16_t q[T * NH * HD], k[T * NKV * HD], v[T * NKV * HD], o[T * NH * HD];
	uint32_t cu[3] = {0, 5, T}, ks[2] = {2, 0};
	fill_qkv(q, sizeof(q) / 2, k, sizeof(k) / 2, v, sizeof(v) / 2, &s);
	for (int variant = 0; variant < 2; variant++) {
		uint32_t window = variant ? 3 : 0;
		const uint32_t *kst = variant ? NULL : ks;
		struct cal_attention_args a = {q, k, v, o, T, NH, NKV, HD, cu, 2, kst, window,
					       1.0f / sqrtf(HD), NULL, 0, 0};
		cr_assert_eq(cal_op_attention(be, &a, NULL), CAL_OK);
		for (int i = 0; i < T; i++) {
			int sq = i >= 5, lo = sq ? 5 : 0;
			if (kst)
				lo += (int)kst[sq];
			if (window && i - (int)window + 1 > lo)
				lo = i - (int)window + 1;
			for (int h = 0; h < NH; h++) {
				int g = h / (NH / NKV);
				double sc[T], m = -INFINITY, l = 0;
				for (int j = lo; j <= i; j++) {
					double d = 0;
					for (int c = 0; c < HD; c++)
						d += f(q[(i * NH + h) * HD + c]) * f(k[(j * NKV + g) * HD + c]);
					sc[j] = d / sqrt(HD);
					m = fmax(m, sc[j]);
				}
				for (int j = lo; j <= i; j++)
					l += exp(sc[j] - m);
				for (int c = 0; c < HD; c++) {
					double acc = 0;
					for (int j = lo; j <= i; j++)
						acc += cal_round_bf16((float)(exp(sc[j] - m) / l)) *
						       f(v[(j * NKV + g) * HD + c]);
					uint16_t got = o[(i * NH + h) * HD + c];
					if (lo > i)
						cr_expect_eq(got, 0, "fully masked row %d not zero", i);
					else
						cr_expect(fabs(f(got) - acc) <= fabs(acc) / 64 + 2e-3,
							  "attn[%d,%d,%d] = %g, expected %g (variant %d, seed %llu)",
							  i, h, c, f(got), acc, variant,
							  (unsigned long long)seed);
				}
			}
		}
	}
}

Test(fwd_ops, router_ties_renorm_and_extra_slots)
{
	enum { E = 6 };
	/* token 0: experts 1 and 4 tie for first, 2 and 5 tie for third */
	float lg[2][E] = {{0.5f, 2.0f, 1.0f, -1.0f, 2.0f, 1.0f}, {3.0f, -2.0f, 0.0f, 0.0f, 1.0f, 2.5f}};
	uint16_t l[2 * E];
	uint32_t idx[2 * 3];
	float w[2 * 2];
	for (int i = 0; i < 2 * E; i++)
		l[i] = cal_f32_to_bf16(lg[i / E][i % E]);
	struct cal_router_args a = {l, 2, E, 2, 3, 1, idx, w, CAL_ROUTER_MODE_SOFTMAX_TOPK, 0};
	cr_assert_eq(cal_op_router(be, &a, NULL), CAL_OK);
	cr_expect_eq(idx[0], 1u);
	cr_expect_eq(idx[1], 4u);
	cr_expect_eq(idx[2], 2u);
	cr_expect_eq(idx[3], 0u);
	cr_expect_eq(idx[4], 5u);
	cr_expect_eq(idx[5], 4u);
	cr_expect(fabsf(w[0] - 0.5f) < 1e-6f && fabsf(w[1] - 0.5f) < 1e-6f);
	double e0 = exp(3.0), e5 = exp(2.5);
	cr_expect(fabs(w[2] - e0 / (e0 + e5)) < 1e-6, "renormalised weight %g", (double)w[2]);
	a.renorm = 0;
	cr_assert_eq(cal_op_router(be, &a, NULL), CAL_OK);
	double sum = 0;
	for (int i = 0; i < E; i++)
		sum += exp(lg[1][i] - 3.0);
	cr_expect(fabs(w[2] - 1.0 / sum) < 1e-6, "softmax prob %g", (double)w[2]);
	/* transformers' Qwen/OLMoE routers: the renormalised weights in bf16 */
	float f32w[2 * 2];
	a.renorm = 1;
	cr_assert_eq(cal_op_router(be, &a, NULL), CAL_OK);
	memcpy(f32w, w, sizeof(w));
	a.bf16_weights = 1;
	cr_assert_eq(cal_op_router(be, &a, NULL), CAL_OK);
	for (int i = 0; i < 2 * 2; i++)
		cr_expect_eq(w[i], cal_bf16_to_f32(cal_f32_to_bf16(f32w[i])), "weight %d: %g", i,
			     (double)w[i]);
	cr_expect_neq(w[2], f32w[2], "the fp32 weight %g is not a bf16 value", (double)f32w[2]);
}

/* gpt_oss: each head's sink joins the softmax denominator (no value row) */
Test(fwd_ops, attention_sinks)
{
	uint64_t s = 21;
	enum { T = 6, NH = 2, NKV = 1, HD = 8 };
	uint16_t q[T * NH * HD], k[T * NKV * HD], v[T * NKV * HD], o[T * NH * HD];
	uint32_t cu[2] = {0, T};
	float sinks[NH] = {0.75f, -3.0f};
	fill_qkv(q, sizeof(q) / 2, k, sizeof(k) / 2, v, sizeof(v) / 2, &s);
	for (int eager = 0; eager < 2; eager++) {
		struct cal_attention_args a = {q, k, v, o, T, NH, NKV, HD, cu, 1, NULL, 4,
					       1.0f / sqrtf(HD), sinks, eager, 0};
		cr_assert_eq(cal_op_attention(be, &a, NULL), CAL_OK);
		for (int i = 0; i < T; i++) {
			int lo = i - 3 > 0 ? i - 3 : 0;
			for (int h = 0; h < NH; h++) {
				double sc[T], m = sinks[h], l = 0;
				for (int j = lo; j <= i; j++) {
					double d = 0;
					for (int c = 0; c < HD; c++)
						d += f(q[(i * NH + h) * HD + c]) * f(k[j * HD + c]);
					sc[j] = d / sqrt(HD);
					if (eager) /* transformers' eager bf16 scores */
						sc[j] = cal_round_bf16(cal_round_bf16((float)d) *
								       (1.0f / sqrtf(HD)));
					m = fmax(m, sc[j]);
				}
				double dsk = eager ? cal_round_bf16((float)(sinks[h] - m)) : sinks[h] - m;
				for (int j = lo; j <= i; j++)
					l += exp(eager ? cal_round_bf16((float)(sc[j] - m)) : sc[j] - m);
				l += exp(dsk);
				for (int c = 0; c < HD; c++) {
					double acc = 0;
					for (int j = lo; j <= i; j++) {
						double e = exp(eager ? cal_round_bf16((float)(sc[j] - m))
								     : sc[j] - m);
						acc += cal_round_bf16((float)(e / l)) * f(v[j * HD + c]);
					}
					double got = f(o[(i * NH + h) * HD + c]);
					cr_expect(fabs(got - acc) <= fabs(acc) / 64 + 2e-3,
						  "attn[%d,%d,%d] = %g, expected %g (eager %d)", i, h, c,
						  got, acc, eager);
				}
			}
		}
	}
}

/* gpt_oss: top-k of the logits, then softmax over the k picked, bf16 weights */
Test(fwd_ops, router_topk_then_softmax)
{
	enum { E = 5 };
	float lg[E] = {0.5f, 2.0f, -1.0f, 2.0f, 1.25f};
	uint16_t l[E];
	uint32_t idx[3];
	float w[2];
	for (int i = 0; i < E; i++)
		l[i] = cal_f32_to_bf16(lg[i]);
	struct cal_router_args a = {l, 1, E, 2, 3, 0, idx, w, CAL_ROUTER_MODE_TOPK_SOFTMAX, 0};
	cr_assert_eq(cal_op_router(be, &a, NULL), CAL_OK);
	cr_expect(idx[0] == 1 && idx[1] == 3 && idx[2] == 4, "idx %u %u %u", idx[0], idx[1], idx[2]);
	cr_expect_eq(w[0], 0.5f);
	cr_expect_eq(w[1], 0.5f);
	l[3] = cal_f32_to_bf16(1.0f);
	cr_assert_eq(cal_op_router(be, &a, NULL), CAL_OK);
	cr_expect(idx[0] == 1 && idx[1] == 4, "idx %u %u", idx[0], idx[1]);
	float e1 = expf(-0.75f), sum = 1.0f + e1;
	cr_expect_eq(w[0], cal_round_bf16(1.0f / sum));
	cr_expect_eq(w[1], cal_round_bf16(e1 / sum));
}

/* gpt_oss clamped SwiGLU and the bias added after the GEMM's rounding */
Test(fwd_ops, swiglu_oai_and_bias_after_round)
{
	float gv[4] = {9.0f, -2.0f, 0.3f, 6.5f}, uv[4] = {-8.0f, 7.5f, 0.1f, -0.4f};
	uint16_t g[4], u[4], o[4];
	for (int i = 0; i < 4; i++) {
		g[i] = cal_f32_to_bf16(gv[i]);
		u[i] = cal_f32_to_bf16(uv[i]);
	}
	struct cal_ewise_args e = {CAL_EWISE_SWIGLU_OAI, g, u, NULL, o, 1, 4, 0, 0, 0, 0, 7.0f,
				   1.702f};
	cr_assert_eq(cal_op_ewise(be, &e, NULL), CAL_OK);
	for (int i = 0; i < 4; i++) {
		float gg = fminf(f(g[i]), 7.0f), uu = fmaxf(fminf(f(u[i]), 7.0f), -7.0f);
		float sg = cal_round_bf16(1.0f / (1.0f + expf(-cal_round_bf16(gg * 1.702f))));
		float glu = cal_round_bf16(gg * sg);
		cr_expect_eq(o[i], cal_f32_to_bf16(cal_round_bf16(uu + 1.0f) * glu), "element %d", i);
	}
	/* 1 x 1 GEMM: 1.0 * 1.00390625 = 1.00390625 (a bf16 half-way: rounds to
	 * 1.0); + 0.00390625: once rounded 1.0078125, twice 1.0 + 2^-8 -> 1.0 */
	uint16_t x = cal_f32_to_bf16(1.0f), wv = 0x3f80 | 0, bias = cal_f32_to_bf16(0.00390625f), y;
	uint16_t xw[2] = {x, x}, ww[2] = {wv, cal_f32_to_bf16(0.00390625f)};
	struct cal_gemm_args ga = {.x = xw, .w = ww, .bias = &bias, .y = &y, .m = 1, .n = 1, .k = 2};
	cr_assert_eq(cal_op_gemm(be, &ga, NULL), CAL_OK);
	cr_expect_eq(f(y), 1.0078125, "one rounding: %g", f(y));
	ga.bias_after_round = 1;
	cr_assert_eq(cal_op_gemm(be, &ga, NULL), CAL_OK);
	cr_expect_eq(f(y), 1.0, "two roundings: %g", f(y));
}

Test(fwd_ops, sort_is_stable_and_combine_orders)
{
	enum { T = 3, KT = 2, P = T * KT, E = 4, H = 2 };
	uint32_t idx[P] = {2, 0, 0, 2, 3, 2}, off[E + 1], sp[P], pp[P];
	struct cal_moe_sort_args s = {idx, P, E, off, sp, pp};
	cr_assert_eq(cal_op_moe_sort(be, &s, NULL), CAL_OK);
	uint32_t want_off[E + 1] = {0, 2, 2, 5, 6}, want_sp[P] = {1, 2, 0, 3, 5, 4};
	cr_expect(memcmp(off, want_off, sizeof(off)) == 0);
	cr_expect(memcmp(sp, want_sp, sizeof(sp)) == 0);
	for (uint32_t i = 0; i < P; i++)
		cr_expect_eq(pp[sp[i]], i);
	/* combine: y rows in sorted order, values chosen so bf16 rounding shows */
	uint16_t y[P * H], out[T * H];
	float yv[P] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
	for (int i = 0; i < P * H; i++)
		y[i] = cal_f32_to_bf16(yv[i / H]);
	float w[T * KT] = {0.5f, 0.5f, 1.0039f, 0.0039f, 1.0f, 1.0f};
	struct cal_moe_combine_args c = {y, P, pp, idx, w, T, H, KT, KT, CAL_COMBINE_F32, out};
	cr_assert_eq(cal_op_moe_combine(be, &c, NULL), CAL_OK);
	/* token 1: 1.0039 (expert 0) + 0.0039 (expert 2): fp32 sum, one rounding */
	cr_expect_eq(out[2], cal_f32_to_bf16(1.0039f + 0.0039f));
	cr_expect_eq(f(out[2]), 1.0078125);
	c.mode = CAL_COMBINE_EAGER;
	cr_assert_eq(cal_op_moe_combine(be, &c, NULL), CAL_OK);
	/* eager: bf16(1.0039) = 1, then bf16(1 + bf16(0.0039)) = 1 */
	cr_expect_eq(f(out[2]), 1.0, "eager sums in bf16, got %g", f(out[2]));
}

Test(fwd_ops, ewise_modes_and_gather)
{
	uint16_t a[4], b[4], g[2], o[4];
	float av[4] = {1.0f, -2.0f, 3.5f, 0.25f}, bv[4] = {0.5f, 4.0f, -1.0f, 2.0f};
	for (int i = 0; i < 4; i++) {
		a[i] = cal_f32_to_bf16(av[i]);
		b[i] = cal_f32_to_bf16(bv[i]);
	}
	g[0] = cal_f32_to_bf16(0.0f);
	g[1] = cal_f32_to_bf16(-1.0f);
	struct cal_ewise_args e = {CAL_EWISE_ADD, a, b, NULL, o, 2, 2, 0, 0, 0, 0, 0, 0};
	cr_assert_eq(cal_op_ewise(be, &e, NULL), CAL_OK);
	for (int i = 0; i < 4; i++)
		cr_expect_eq(f(o[i]), (double)cal_round_bf16(av[i] + bv[i]));
	e.mode = CAL_EWISE_ADD_ROW; /* b's first row added to both rows */
	cr_assert_eq(cal_op_ewise(be, &e, NULL), CAL_OK);
	for (int i = 0; i < 4; i++)
		cr_expect_eq(f(o[i]), (double)cal_round_bf16(av[i] + bv[i % 2]));
	e.mode = CAL_EWISE_MUL_ROW; /* b's first row multiplied into both rows */
	cr_assert_eq(cal_op_ewise(be, &e, NULL), CAL_OK);
	for (int i = 0; i < 4; i++)
		cr_expect_eq(f(o[i]), (double)cal_round_bf16(av[i] * bv[i % 2]));
	e.mode = CAL_EWISE_SUB;
	cr_assert_eq(cal_op_ewise(be, &e, NULL), CAL_OK);
	for (int i = 0; i < 4; i++)
		cr_expect_eq(f(o[i]), (double)cal_round_bf16(av[i] - bv[i]));
	e.mode = CAL_EWISE_SWIGLU;
	cr_assert_eq(cal_op_ewise(be, &e, NULL), CAL_OK);
	for (int i = 0; i < 4; i++) {
		float si = cal_round_bf16(av[i] / (1.0f + expf(-av[i])));
		cr_expect_eq(o[i], cal_f32_to_bf16(si * bv[i]));
	}
	e.mode = CAL_EWISE_GATE_ADD;
	e.g = g;
	cr_assert_eq(cal_op_ewise(be, &e, NULL), CAL_OK);
	cr_expect_eq(f(o[0]), (double)cal_round_bf16(1.0f + 0.25f));
	e.mode = CAL_EWISE_CLAMP;
	e.clamp = 1.5f;
	cr_assert_eq(cal_op_ewise(be, &e, NULL), CAL_OK);
	cr_expect_eq(f(o[1]), -1.5);
	cr_expect_eq(f(o[2]), 1.5);
	uint32_t ix[3] = {5, 0, 7};
	uint16_t src[4 * 2] = {1, 2, 3, 4, 5, 6, 7, 8}, dst[3 * 2];
	struct cal_gather_rows_args gr = {src, 4, 2, ix, 3, 2, dst};
	cr_assert_eq(cal_op_gather_rows(be, &gr, NULL), CAL_OK);
	cr_expect(dst[0] == 5 && dst[1] == 6 && dst[2] == 1 && dst[5] == 8);
	ix[1] = 9;
	struct cal_error err = {0};
	cr_expect_eq(cal_op_gather_rows(be, &gr, &err), CAL_ERR_RANGE);
	cr_expect(strstr(cal_error_msg(&err), "index[1]"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
}

/* ---- DeepSeek-V3 (docs/deepseek.md) --------------------------------------- */

Test(fwd_ops, rope_interleaved_at_offset)
{
	enum { T = 3, NH = 2, HD = 10, OFF = 4, RD = 6 };
	uint16_t x[T * NH * HD];
	uint32_t pos[T] = {0, 5, 1000};
	float inv[RD / 2] = {1.0f, 0.1f, 0.001f};
	struct cal_rope_args a = {x, T, NH, HD, RD, pos, inv, 1.0f, OFF, 1};
	check_rope(&a, 17);
	struct cal_rope_args bad = a;
	bad.offset = HD - RD + 1;
	cr_expect_eq(cal_op_rope(be, &bad, NULL), CAL_ERR_INVALID);
}

Test(fwd_ops, attention_own_v_head_dim)
{
	/* vd < hd: the same output as attention over v padded with zeros to hd */
	uint64_t s = 23;
	enum { T = 6, NH = 2, HD = 12, VD = 8 };
	uint16_t q[T * NH * HD], k[T * NH * HD], v[T * NH * VD], vp[T * NH * HD];
	uint16_t o[T * NH * VD], op[T * NH * HD];
	uint32_t cu[3] = {0, 2, T};
	fill_qkv(q, sizeof(q) / 2, k, sizeof(k) / 2, v, sizeof(v) / 2, &s);
	memset(vp, 0, sizeof(vp));
	for (int r = 0; r < T * NH; r++)
		memcpy(vp + r * HD, v + r * VD, VD * 2);
	struct cal_attention_args a = {q, k, v, o, T, NH, NH, HD, cu, 2, NULL, 0, 0.3f, NULL, 0, VD};
	struct cal_attention_args b = {q, k, vp, op, T, NH, NH, HD, cu, 2, NULL, 0, 0.3f, NULL, 0, 0};
	cr_assert_eq(cal_op_attention(be, &a, NULL), CAL_OK);
	cr_assert_eq(cal_op_attention(be, &b, NULL), CAL_OK);
	for (int r = 0; r < T * NH; r++) {
		cr_expect_eq(memcmp(o + r * VD, op + r * HD, VD * 2), 0, "row %d", r);
		for (int c = VD; c < HD; c++)
			cr_expect_eq(op[r * HD + c], 0);
	}
}

Test(fwd_ops, mla_kv_layout)
{
	enum { T = 2, NH = 3, DN = 2, DR = 2, DV = 3 };
	uint16_t kv[T * NH * (DN + DV)], kpe[T * DR], k[T * NH * (DN + DR)], v[T * NH * DV];
	for (int i = 0; i < T * NH * (DN + DV); i++)
		kv[i] = (uint16_t)i;
	for (int i = 0; i < T * DR; i++)
		kpe[i] = (uint16_t)(1000 + i);
	struct cal_mla_kv_args a = {kv, kpe, k, v, T, NH, DN, DR, DV};
	cr_assert_eq(cal_op_mla_kv(be, &a, NULL), CAL_OK);
	for (int t = 0; t < T; t++)
		for (int n = 0; n < NH; n++) {
			const uint16_t *src = kv + (t * NH + n) * (DN + DV);
			for (int c = 0; c < DN; c++)
				cr_expect_eq(k[(t * NH + n) * (DN + DR) + c], src[c]);
			for (int c = 0; c < DR; c++) /* the one rope key of the token, every head */
				cr_expect_eq(k[(t * NH + n) * (DN + DR) + DN + c], kpe[t * DR + c]);
			for (int c = 0; c < DV; c++)
				cr_expect_eq(v[(t * NH + n) * DV + c], src[DN + c]);
		}
}

/* The normalized Hadamard transform (docs/numerics.md "KV-cache rotation"):
 * H_2 on (1, 3) is (4, -2) / sqrt(2); blocks of 4 are independent; twice
 * is the identity up to rounding. */
Test(fwd_ops, hadamard_blocks)
{
	uint16_t x[8];
	float in[8] = {1, 3, 1, 2, 3, 4, 0.5f, -1};
	for (int i = 0; i < 8; i++)
		x[i] = cal_f32_to_bf16(in[i]);
	struct cal_hadamard_args a = {x, 1, 2, 2};
	cr_assert_eq(cal_op_hadamard(be, &a, NULL), CAL_OK);
	float s = (float)(1.0 / sqrt(2.0));
	cr_expect_eq(x[0], cal_f32_to_bf16(4.0f * s));
	cr_expect_eq(x[1], cal_f32_to_bf16(-2.0f * s));
	/* block 4 over a row of 8: (1, 2, 3, 4) -> (10, -2, -4, 0) / 2 */
	for (int i = 0; i < 8; i++)
		x[i] = cal_f32_to_bf16((float)(i % 4 + 1));
	a = (struct cal_hadamard_args){x, 1, 8, 4};
	cr_assert_eq(cal_op_hadamard(be, &a, NULL), CAL_OK);
	static const float want[4] = {5, -1, -2, 0};
	for (int i = 0; i < 8; i++)
		cr_expect_eq(x[i], cal_f32_to_bf16(want[i % 4]), "%d", i);
	cr_assert_eq(cal_op_hadamard(be, &a, NULL), CAL_OK);
	for (int i = 0; i < 8; i++)
		cr_expect_eq(x[i], cal_f32_to_bf16((float)(i % 4 + 1)), "%d", i);
	struct cal_error err = {0};
	a.block = 3;
	cr_assert_eq(cal_op_hadamard(be, &a, &err), CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "block"));
	cal_error_clear(&err);
}

/* The affine KV observer (docs/numerics.md "Affine KV cache") on two
 * forwards of one column: m1 = 1, m2 = 3, bias 1 then bf16((1 + 3) / 2) = 2;
 * amax = max(|x - 1| over forward 1, |x - 2| over forward 2). */
Test(fwd_ops, kv_affine_running_mean)
{
	float xs[5] = {0, 2, 1, 6, 2}; /* forward 1: rows 0..2 (mean 1), 2: rows 3..4 (mean 4) */
	uint16_t x[5], bias[1] = {0};
	for (int i = 0; i < 5; i++)
		x[i] = cal_f32_to_bf16(xs[i]);
	uint32_t cu[3] = {0, 3, 5};
	float amax = 0;
	struct cal_nonfinite nf = {0, CAL_NONFINITE_NONE};
	struct cal_kv_affine_args a = {x, 5, 1, cu, 2, 0, bias, 0, &amax, &nf};
	cr_assert_eq(cal_op_kv_affine(be, &a, NULL), CAL_OK);
	/* bias: 1, then (1 * 1 + 4) / 2 = 2.5; amax: |0 - 1|, |6 - 2.5| = 3.5 */
	cr_expect_eq(cal_bf16_to_f32(bias[0]), 2.5f);
	cr_expect_eq(amax, 3.5f);
	cr_expect_eq(nf.count, 0);
	/* a third forward continues the average: n0 = 2, mean 8.5 -> (2.5 * 2 + 8.5) / 3 = 4.5 */
	float x3[2] = {8, 9};
	for (int i = 0; i < 2; i++)
		x[i] = cal_f32_to_bf16(x3[i]);
	uint32_t cu3[2] = {0, 2};
	a = (struct cal_kv_affine_args){x, 2, 1, cu3, 1, 2, bias, 0, &amax, &nf};
	cr_assert_eq(cal_op_kv_affine(be, &a, NULL), CAL_OK);
	cr_expect_eq(cal_bf16_to_f32(bias[0]), 4.5f);
	cr_expect_eq(amax, 4.5f); /* |9 - 4.5| */
}

Test(fwd_ops, router_group_masks_groups_and_scales)
{
	/* h = 1, x = 1: logits are the weights.  4 experts in 2 groups. */
	uint16_t x[1] = {0x3f80};
	float w[4] = {2.0f, -3.0f, 1.0f, 0.5f};
	/* bias lifts expert 1 for selection: group 0 = {0, 1}, group 1 = {2, 3} */
	float bias[4] = {0.0f, 0.9f, 0.0f, 0.0f};
	float logits[4], wt[2];
	uint32_t idx[3];
	struct cal_router_group_args a = {x, w, bias, logits, 1, 1, 4, 2, 3, 2, 1, 1, 2.5f, idx, wt};
	cr_assert_eq(cal_op_router_group(be, &a, NULL), CAL_OK);
	float s0 = (float)(1.0 / (1.0 + exp(-2.0))), s1 = (float)(1.0 / (1.0 + exp(3.0)));
	/* group 0 wins (s0 + s1 + 0.9 > s2 + s3); by selection score expert 1
	 * (s1 + 0.9) then 0; the extra slot from the masked group in index order;
	 * the weights are the unbiased scores */
	cr_expect_eq(idx[0], 1u);
	cr_expect_eq(idx[1], 0u);
	cr_expect_eq(idx[2], 2u);
	float sum = s1 + s0 + 1e-20f;
	cr_expect(fabsf(wt[0] - s1 / sum * 2.5f) <= 1e-6f, "%g", (double)wt[0]);
	cr_expect(fabsf(wt[1] - s0 / sum * 2.5f) <= 1e-6f, "%g", (double)wt[1]);
	/* without the bias, group 1 wins: experts 2 then 3, weights unnormalised */
	a.bias = NULL;
	a.renorm = 0;
	cr_assert_eq(cal_op_router_group(be, &a, NULL), CAL_OK);
	cr_expect_eq(idx[0], 2u);
	cr_expect_eq(idx[1], 3u);
	cr_expect(fabsf(wt[0] - 2.5f / (1.0f + expf(-1.0f))) <= 1e-6f);
	a.topk_group = 3; /* more groups than exist */
	cr_expect_eq(cal_op_router_group(be, &a, NULL), CAL_ERR_INVALID);
}

Test(fwd_ops, fp8_block_dequant_partial_blocks)
{
	enum { R = 5, C = 3, BR = 2, BC = 2 };
	uint8_t q[R * C];
	float sc[3 * 2] = {1.0f, 2.0f, 0.5f, 4.0f, 0.25f, 8.0f};
	uint16_t out[R * C];
	for (int i = 0; i < R * C; i++)
		q[i] = (uint8_t)(0x30 + i); /* e4m3 values 1.0 .. */
	struct cal_fp8_block_dequant_args a = {q, sc, R, C, BR, BC, out};
	cr_assert_eq(cal_op_fp8_block_dequant(be, &a, NULL), CAL_OK);
	for (int r = 0; r < R; r++)
		for (int c = 0; c < C; c++) {
			float want = cal_e4m3_decode(q[r * C + c]) * sc[(r / BR) * 2 + c / BC];
			cr_expect_eq(out[r * C + c], cal_f32_to_bf16(want), "[%d, %d]", r, c);
		}
}

/* INT8 with one static scale (an input's input_scale in `calibd eval`,
 * docs/eval.md): rint(fl32(x / s)) with ties to even, saturating to
 * [-128, 127], dequantized as fl32(q * s). */
Test(fwd_ops, int8_static_scale)
{
	float xv[8] = {1.0f, -2.5f, 0.25f, 0.75f, -0.25f, 1000.0f, -1000.0f, 63.5f};
	int8_t want[8] = {2, -5, 0, 2, 0, 127, -128, 127};
	uint16_t x[8], o[8];
	uint8_t q[8];
	for (int i = 0; i < 8; i++)
		x[i] = cal_f32_to_bf16(xv[i]);
	struct cal_int8_quant_args qa = {x, 2, 4, CAL_DIV_RECIP, q, NULL, 0.5f};
	struct cal_int8_dequant_args da = {q, NULL, 2, 4, CAL_DTYPE_BF16, o, 0.5f};
	cr_assert_eq(cal_op_int8_quant(be, &qa, NULL), CAL_OK);
	cr_assert_eq(cal_op_int8_dequant(be, &da, NULL), CAL_OK);
	for (int i = 0; i < 8; i++) {
		cr_expect_eq((int8_t)q[i], want[i], "x %g: code %d", (double)xv[i], (int8_t)q[i]);
		cr_expect_eq(f(o[i]), want[i] * 0.5, "x %g", (double)xv[i]);
	}
	qa.scale = -1.0f; /* a scale that is not positive is refused */
	cr_assert_lt(cal_op_int8_quant(be, &qa, NULL), 0);
	da.scale = 0.0f;
	cr_assert_lt(cal_op_int8_dequant(be, &da, NULL), 0);
}
