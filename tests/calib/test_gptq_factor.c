/*
 * test_gptq_factor.c — cal_gptq_factor (engine/calib/gptq.c, blocked and
 * threaded) gives the same bytes as the single-threaded column algorithms
 * of gptq_factor_ref.h, for sizes around the block (32), several thread
 * counts, a dead column, a rank-deficient Hessian and the identity fallback.
 */
#include <criterion/criterion.h>
#include <stdio.h>

#include "engine/gptq.h"
#include "gptq_factor_ref.h"

static void check(uint64_t n, uint64_t rows, uint64_t tok, uint64_t samples, double damp,
		  unsigned threads, int want_fallback)
{
	struct cal_error err = {0};
	struct cal_backend_opts bo = {.cpu_threads = threads};
	struct cal_backend *be = NULL;
	cr_assert_eq(cal_backend_init(CAL_BACKEND_CPU, &bo, &be, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	float *h = malloc(n * n * 4), *u = malloc(n * n * 4), *r = malloc(n * n * 4);
	uint16_t *w = malloc(rows * n * 2);
	cr_assert(h && u && r && w);
	gptq_factor_case(n, tok, n * 7 + tok, h, w, rows);
	struct cal_gptq_opts o = {damp, CAL_GPTQ_BLOCK, 1};
	struct cal_gptq_stats st;
	cr_assert_eq(cal_gptq_factor(be, w, rows, n, h, samples, &o, u, &st, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	int fb = gptq_factor_ref(w, rows, n, h, samples, damp, r);
	cr_assert_eq(fb, want_fallback, "n %llu: reference fallback %d",
		     (unsigned long long)n, fb);
	cr_assert_eq(st.fallback, fb, "n %llu, %u threads: fallback %d, reference %d",
		     (unsigned long long)n, threads, st.fallback, fb);
	uint64_t diff = 0;
	for (uint64_t k = 0; k < n * n; k++)
		diff += memcmp(&u[k], &r[k], 4) != 0;
	cr_assert_eq(diff, 0, "n %llu, %llu tokens, %u threads: %llu of %llu U values differ "
		     "from the column algorithm", (unsigned long long)n, (unsigned long long)tok,
		     threads, (unsigned long long)diff, (unsigned long long)(n * n));
	free(h), free(u), free(r), free(w);
	cal_backend_free(be);
}

Test(gptq_factor, same_bytes_as_the_column_algorithm)
{
	static const uint64_t sizes[] = {16, 32, 48, 64, 80, 96, 144, 256, 272};
	static const unsigned threads[] = {1, 2, 3};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		for (size_t t = 0; t < 3; t++) {
			check(sizes[i], 8, 0, 100, 0.01, threads[t], 0);            /* dominant */
			check(sizes[i], 8, 2 * sizes[i], 2 * sizes[i], 0.01, threads[t], 0);
		}
}

Test(gptq_factor, rank_deficient_before_damping)
{
	/* fewer rows than columns: H singular, positive definite after damping */
	check(256, 8, 40, 40, 0.05, 2, 0);
	check(272, 4, 17, 17, 0.01, 3, 0);
}

Test(gptq_factor, identity_fallback)
{
	/* no damping to speak of on a rank-one H: a non-positive pivot */
	check(64, 4, 1, 1, 1e-300, 2, 1);
}

Test(gptq_factor, batched_same_bytes_as_one_at_a_time)
{
	/* one batched chol_inv for a dominant, a full-rank and a rank-one
	 * (not positive definite with no damping to speak of) Hessian: each U
	 * (and its stats) is the column algorithm's, as cal_gptq_factor gives
	 * it alone */
	enum { N = 96, ROWS = 8, K = 3 };
	static const uint64_t tok[K] = {0, 2 * N, 1}, samples[K] = {100, 2 * N, 1};
	static const int want_fb[K] = {0, 0, 1};
	struct cal_error err = {0};
	struct cal_backend_opts bo = {.cpu_threads = 2};
	struct cal_backend *be = NULL;
	cr_assert_eq(cal_backend_init(CAL_BACKEND_CPU, &bo, &be, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	struct cal_gptq_opts o = {1e-300, CAL_GPTQ_BLOCK, 1};
	struct cal_gptq_factor_in in[K];
	struct cal_gptq_stats st[K];
	float *u[K], *r = malloc(N * N * 4);
	cr_assert(r);
	for (int k = 0; k < K; k++) {
		float *h = malloc(N * N * 4);
		uint16_t *w = malloc(ROWS * N * 2);
		u[k] = malloc(N * N * 4);
		cr_assert(h && w && u[k]);
		gptq_factor_case(N, tok[k], N * 7 + tok[k], h, w, ROWS);
		in[k] = (struct cal_gptq_factor_in){w, ROWS, h, samples[k]};
	}
	cr_assert_eq(cal_gptq_factor_many(be, N, K, in, &o, u, st, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	uint8_t dead[N];
	for (int k = 0; k < K; k++) {
		int fb = gptq_factor_ref(in[k].w, ROWS, N, in[k].hsum, samples[k], o.perc_damp, r);
		cr_assert_eq(st[k].fallback, fb, "matrix %d: fallback %d, reference %d", k,
			     st[k].fallback, fb);
		cr_assert_eq(fb, want_fb[k], "matrix %d: reference fallback %d", k, fb);
		cr_assert_eq(memcmp(u[k], r, N * N * 4), 0, "matrix %d: U differs", k);
		cr_assert_eq(cal_gptq_dead_mask(in[k].w, ROWS, N, dead), st[k].dead_cols,
			     "matrix %d: the dead mask's count", k);
		free((void *)in[k].hsum), free((void *)in[k].w), free(u[k]);
	}
	free(r);
	cal_backend_free(be);
}
