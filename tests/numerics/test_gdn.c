/*
 * test_gdn.c — suite 'unit': the Gated DeltaNet ops on the CPU back end
 * (kernels/gdn_conv.c, gated_delta.c, rmsnorm_gated.c).
 *   - the chunked algorithm (chunks of 64, the one CUDA runs) against the
 *     token-by-token recurrence on a long packed batch (4096 tokens, three
 *     sequences, lengths not multiples of 64, slow and fast decays);
 *   - both against an independent double-precision evaluation of
 *     S_t = a_t (I - b_t k k^T) S_{t-1} + b_t k v^T, o_t = S_t^T q;
 *   - the conv (sequence resets) and the gated norm against double formulas;
 *   - argument errors name the field.
 * Inputs are random with a fixed seed, printed.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "kernels/ops.h"
#include "testrng.h"

static uint16_t *bf_rand(uint64_t n, float scale, uint64_t *s)
{
	uint16_t *p = malloc((n ? n : 1) * 2);
	cr_assert_not_null(p);
	for (uint64_t i = 0; i < n; i++)
		p[i] = cal_f32_to_bf16(cal_test_unit(s) * scale);
	return p;
}

static double bf(uint16_t v)
{
	return (double)cal_bf16_to_f32(v);
}

static struct cal_backend *cpu(unsigned threads)
{
	struct cal_backend *be = NULL;
	struct cal_backend_opts o = {.cpu_threads = threads};
	struct cal_error err = {0};
	cr_assert(cal_backend_init(CAL_BACKEND_CPU, &o, &be, &err) >= 0, "%s", cal_error_msg(&err));
	return be;
}

struct gd_case {
	uint64_t t;
	uint32_t nk, nv, dk, dv, n_seq, cu[8];
	uint16_t *qkv, *b, *a;
	float alog[16], dt[16];
};

static void gd_case_make(struct gd_case *g, uint64_t t, uint32_t nk, uint32_t nv, uint32_t dk,
			 uint32_t dv, const uint32_t *lens, uint32_t n_seq, uint64_t seed)
{
	uint64_t s = seed, cd = 2 * (uint64_t)nk * dk + (uint64_t)nv * dv;
	*g = (struct gd_case){.t = t, .nk = nk, .nv = nv, .dk = dk, .dv = dv, .n_seq = n_seq};
	for (uint32_t i = 0; i < n_seq; i++)
		g->cu[i + 1] = g->cu[i] + lens[i];
	cr_assert_eq(g->cu[n_seq], t);
	g->qkv = bf_rand(t * cd, 2.0f, &s);
	g->b = bf_rand(t * nv, 3.0f, &s);
	g->a = bf_rand(t * nv, 3.0f, &s);
	for (uint32_t h = 0; h < nv; h++) {
		/* head 0: A = 0.01 and dt_bias -4, a very slow decay (long memory);
		 * the others: A in [0.01, 16] as HF's init */
		g->alog[h] = h == 0 ? logf(0.01f) : logf(0.01f + 8.0f * (cal_test_unit(&s) + 1.0f));
		g->dt[h] = h == 0 ? -4.0f : 1.0f + 0.5f * cal_test_unit(&s);
		/* the op receives bf16-rounded parameters, as the engine passes them */
		g->alog[h] = cal_bf16_to_f32(cal_f32_to_bf16(g->alog[h]));
		g->dt[h] = cal_bf16_to_f32(cal_f32_to_bf16(g->dt[h]));
	}
}

static void gd_case_free(struct gd_case *g)
{
	free(g->qkv);
	free(g->b);
	free(g->a);
}

static uint16_t *gd_run(struct cal_backend *be, const struct gd_case *g, int chunked)
{
	struct cal_error err = {0};
	uint16_t *out = calloc(g->t * g->nv * g->dv, 2);
	cr_assert_not_null(out);
	struct cal_gated_delta_args a = {g->qkv, g->b, g->a, g->alog, g->dt, out, g->t, g->nk,
					 g->nv, g->dk, g->dv, g->cu, g->n_seq, chunked};
	cr_assert(cal_op_gated_delta(be, &a, &err) >= 0, "%s", cal_error_msg(&err));
	return out;
}

/* Double-precision recurrence of the same gates and normalisation. */
static double *gd_double(const struct gd_case *g)
{
	const uint64_t cd = 2 * (uint64_t)g->nk * g->dk + (uint64_t)g->nv * g->dv;
	const uint32_t dk = g->dk, dv = g->dv, r = g->nv / g->nk;
	double *out = calloc(g->t * g->nv * dv, sizeof(double));
	double *S = malloc((size_t)dk * dv * sizeof(double)), *q = malloc(dk * sizeof(double));
	double *k = malloc(dk * sizeof(double)), *kS = malloc(dv * sizeof(double));
	cr_assert(out && S && q && k && kS);
	for (uint32_t s = 0; s < g->n_seq; s++)
		for (uint32_t h = 0; h < g->nv; h++) {
			memset(S, 0, (size_t)dk * dv * sizeof(double));
			for (uint64_t t = g->cu[s]; t < g->cu[s + 1]; t++) {
				const uint16_t *row = g->qkv + t * cd;
				uint32_t kh = h / r;
				double sq = 0, sk = 0;
				for (uint32_t i = 0; i < dk; i++) {
					q[i] = bf(row[kh * dk + i]);
					k[i] = bf(row[g->nk * dk + kh * dk + i]);
					sq += q[i] * q[i];
					sk += k[i] * k[i];
				}
				for (uint32_t i = 0; i < dk; i++) {
					q[i] = q[i] / sqrt(sq + 1e-6) / sqrt((double)dk);
					k[i] = k[i] / sqrt(sk + 1e-6);
				}
				/* HF: beta = sigmoid of the bf16 tensor, rounded to bf16 */
				double beta = bf(cal_f32_to_bf16(
					(float)(1.0 / (1.0 + exp(-bf(g->b[t * g->nv + h]))))));
				double x = bf(g->a[t * g->nv + h]) + g->dt[h];
				double sp = x > 20 ? x : log1p(exp(x));
				double alpha = exp(-exp((double)g->alog[h]) * sp);
				/* S = alpha (I - beta k k^T) S + beta k v^T */
				for (uint32_t j = 0; j < dv; j++) {
					kS[j] = 0;
					for (uint32_t i = 0; i < dk; i++)
						kS[j] += k[i] * S[(uint64_t)i * dv + j];
				}
				for (uint32_t i = 0; i < dk; i++)
					for (uint32_t j = 0; j < dv; j++) {
						double v = bf(row[2 * g->nk * dk + h * dv + j]);
						double *e = &S[(uint64_t)i * dv + j];
						*e = alpha * (*e - beta * k[i] * kS[j]) + beta * k[i] * v;
					}
				for (uint32_t j = 0; j < dv; j++) {
					double o = 0;
					for (uint32_t i = 0; i < dk; i++)
						o += q[i] * S[(uint64_t)i * dv + j];
					out[(t * g->nv + h) * dv + j] = o;
				}
			}
		}
	free(S);
	free(q);
	free(k);
	free(kS);
	return out;
}

/* Relative Frobenius error of bf16 x against reference y, and the count of
 * elements off by more than rtol |y| + atol. */
static double rel_err(const uint16_t *x, const double *y, uint64_t n, double rtol, double atol,
		      uint64_t *ret_bad)
{
	double num = 0, den = 0;
	uint64_t bad = 0;
	for (uint64_t i = 0; i < n; i++) {
		double d = bf(x[i]) - y[i];
		num += d * d;
		den += y[i] * y[i];
		if (fabs(d) > rtol * fabs(y[i]) + atol)
			bad++;
	}
	*ret_bad = bad;
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

Test(gdn, chunked_matches_recurrent_4096)
{
	const uint64_t seed = 4242;
	const uint32_t lens[3] = {1000, 2037, 1059};
	struct gd_case g;
	struct cal_backend *be = cpu(2);
	printf("gdn chunked vs recurrent: seed %llu, 4096 tokens\n", (unsigned long long)seed);
	gd_case_make(&g, 4096, 2, 4, 32, 32, lens, 3, seed);
	uint16_t *rec = gd_run(be, &g, 0), *chk = gd_run(be, &g, 1);
	uint64_t n = g.t * g.nv * g.dv, bad = 0, ulp2 = 0;
	double *ref = calloc(n, sizeof(double));
	cr_assert_not_null(ref);
	for (uint64_t i = 0; i < n; i++)
		ref[i] = bf(rec[i]);
	double e = rel_err(chk, ref, n, 1.0 / 128, 1e-4, &bad);
	for (uint64_t i = 0; i < n; i++)
		ulp2 += rec[i] != chk[i];
	printf("  rel. Frobenius %.3e, %llu of %llu bf16 outputs differ, %llu beyond 1/128\n", e,
	       (unsigned long long)ulp2, (unsigned long long)n, (unsigned long long)bad);
	cr_expect(e < 2e-3, "chunked vs token-by-token: relative error %g (seed %llu)", e,
		  (unsigned long long)seed);
	cr_expect(bad * 1000 <= n, "%llu of %llu outputs differ by more than 1/128",
		  (unsigned long long)bad, (unsigned long long)n);
	/* a threaded run is byte-identical to the 1-thread reference */
	struct cal_backend *one = cpu(1);
	uint16_t *chk1 = gd_run(one, &g, 1);
	cr_expect(memcmp(chk1, chk, n * 2) == 0, "chunked: threads change the result");
	free(chk1);
	cal_backend_free(one);
	free(ref);
	free(rec);
	free(chk);
	gd_case_free(&g);
	cal_backend_free(be);
}

Test(gdn, both_algorithms_match_double)
{
	const uint64_t seed = 77;
	const uint32_t lens[2] = {150, 61};
	struct gd_case g;
	struct cal_backend *be = cpu(1);
	printf("gdn vs double: seed %llu\n", (unsigned long long)seed);
	gd_case_make(&g, 211, 1, 2, 8, 12, lens, 2, seed);
	double *ref = gd_double(&g);
	uint64_t n = g.t * g.nv * g.dv;
	for (int chunked = 0; chunked < 2; chunked++) {
		uint16_t *o = gd_run(be, &g, chunked);
		uint64_t bad = 0;
		double e = rel_err(o, ref, n, 1.0 / 128, 1e-3, &bad);
		printf("  %s: rel. Frobenius %.3e, %llu outside tolerance\n",
		       chunked ? "chunked" : "token by token", e, (unsigned long long)bad);
		cr_expect(e < 5e-3 && bad == 0, "%s vs double: error %g, %llu bad (seed %llu)",
			  chunked ? "chunked" : "recurrent", e, (unsigned long long)bad,
			  (unsigned long long)seed);
		free(o);
	}
	free(ref);
	gd_case_free(&g);
	cal_backend_free(be);
}

Test(gdn, conv_resets_per_sequence)
{
	const uint64_t seed = 9;
	uint64_t s = seed, t = 23, ch = 5, K = 4;
	uint32_t cu[4] = {0, 2, 10, 23};
	struct cal_error err = {0};
	struct cal_backend *be = cpu(3);
	uint16_t *x = bf_rand(t * ch, 3.0f, &s), *w = bf_rand(ch * K, 0.8f, &s);
	uint16_t *y = calloc(t * ch, 2);
	printf("gdn conv: seed %llu\n", (unsigned long long)seed);
	struct cal_gdn_conv_args a = {x, w, y, t, (uint32_t)ch, (uint32_t)K, cu, 3};
	cr_assert(cal_op_gdn_conv(be, &a, &err) >= 0, "%s", cal_error_msg(&err));
	for (uint32_t q = 0; q < 3; q++)
		for (uint64_t r = cu[q]; r < cu[q + 1]; r++)
			for (uint64_t c = 0; c < ch; c++) {
				double acc = 0;
				for (uint64_t j = 0; j < K; j++) {
					int64_t src = (int64_t)r - (int64_t)K + 1 + (int64_t)j;
					if (src >= (int64_t)cu[q])
						acc += bf(w[c * K + j]) * bf(x[(uint64_t)src * ch + c]);
				}
				double u = bf(cal_f32_to_bf16((float)acc));
				double want = u / (1 + exp(-u)), got = bf(y[r * ch + c]);
				cr_expect(fabs(got - want) <= fabs(want) / 128 + 1e-6,
					  "row %llu ch %llu: %g vs %g", (unsigned long long)r,
					  (unsigned long long)c, got, want);
			}
	free(x);
	free(w);
	free(y);
	cal_backend_free(be);
}

Test(gdn, gated_norm)
{
	const uint64_t seed = 31;
	uint64_t s = seed, rows = 7, cols = 24;
	struct cal_error err = {0};
	struct cal_backend *be = cpu(2);
	uint16_t *x = bf_rand(rows * cols, 2.0f, &s), *z = bf_rand(rows * cols, 4.0f, &s);
	uint16_t *w = bf_rand(cols, 1.0f, &s), *y = calloc(rows * cols, 2);
	printf("gdn gated norm: seed %llu\n", (unsigned long long)seed);
	struct cal_rmsnorm_gated_args a = {x, z, y, rows, cols, w, 1e-6f};
	cr_assert(cal_op_rmsnorm_gated(be, &a, &err) >= 0, "%s", cal_error_msg(&err));
	for (uint64_t r = 0; r < rows; r++) {
		double ss = 0;
		for (uint64_t j = 0; j < cols; j++)
			ss += bf(x[r * cols + j]) * bf(x[r * cols + j]);
		double inv = 1 / sqrt(ss / (double)cols + 1e-6);
		for (uint64_t j = 0; j < cols; j++) {
			double zf = bf(z[r * cols + j]);
			double want = bf(w[j]) * bf(x[r * cols + j]) * inv * zf / (1 + exp(-zf));
			double got = bf(y[r * cols + j]);
			cr_expect(fabs(got - want) <= fabs(want) * 3.0 / 256 + 1e-6,
				  "row %llu col %llu: %g vs %g", (unsigned long long)r,
				  (unsigned long long)j, got, want);
		}
	}
	free(x);
	free(z);
	free(w);
	free(y);
	cal_backend_free(be);
}

Test(gdn, errors_name_the_field)
{
	struct cal_error err = {0};
	struct cal_backend *be = cpu(1);
	uint16_t buf[64] = {0};
	float f[4] = {0};
	uint32_t bad_cu[3] = {0, 3, 2}, cu[2] = {0, 2};
	struct cal_gated_delta_args g = {buf, buf, buf, f, f, buf, 2, 2, 3, 2, 2, cu, 1, 0};
	cr_expect(cal_op_gated_delta(be, &g, &err) == CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "nv") != NULL, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	g.nv = 2;
	g.cu_seqlens = bad_cu;
	g.n_seq = 2;
	cr_expect(cal_op_gated_delta(be, &g, &err) == CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "cu_seqlens") != NULL, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	struct cal_gdn_conv_args c = {buf, buf, buf + 8, 2, 2, 0, cu, 1};
	cr_expect(cal_op_gdn_conv(be, &c, &err) == CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "kernel") != NULL, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	c.kernel = 2;
	c.y = buf;
	cr_expect(cal_op_gdn_conv(be, &c, &err) == CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "alias") != NULL, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	struct cal_rmsnorm_gated_args r = {buf, NULL, buf, 2, 4, buf, 1e-6f};
	cr_expect(cal_op_rmsnorm_gated(be, &r, &err) == CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "'z'") != NULL, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cal_backend_free(be);
}
