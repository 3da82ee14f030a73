/*
 * bench_gptq_factor.c — times GPTQ's host factorisation (cal_gptq_factor:
 * f64 Cholesky of the reversed damped Hessian and its triangular inverse,
 * engine/calib/gptq.c, blocked and threaded) on an n x n matrix, next to
 * the single-threaded column algorithms it replaced (gptq_factor_ref.h),
 * and checks them: the CPU back end must give the same bytes, a device
 * (cuSOLVER) U within 1e-5 of max |U| (the largest difference printed).
 * On the back end named (cpu or cuda; the gptq_factor op there), batch
 * copies of the matrix in one cal_gptq_factor_many (one batched op).
 *
 *   bench_gptq_factor [n threads [ref [backend [batch]]]]
 *       (default 2048 0 1 cpu 1; ref 0 skips the reference)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/util.h"
#include "engine/gptq.h"
#include "gptq_factor_ref.h"

/* CPU seconds of the process (all threads): the work, whatever else the
 * machine runs. */
static double cpu_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
	return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 2048;
	unsigned threads = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 0;
	int ref = argc > 3 ? atoi(argv[3]) : 1;
	size_t batch = argc > 5 ? strtoul(argv[5], NULL, 10) : 1;
	enum cal_backend_kind kind = CAL_BACKEND_CPU;
	struct cal_error err = {0};
	struct cal_backend_opts bo = {.cpu_threads = threads};
	struct cal_backend *be = NULL;
	if (argc > 4 && cal_backend_kind_from_name(argv[4], &kind) < 0) {
		fprintf(stderr, "bench_gptq_factor: back end '%s' is not cpu or cuda\n", argv[4]);
		return 1;
	}
	if (!batch || batch > 65535) {
		fprintf(stderr, "bench_gptq_factor: batch must be in [1, 65535]\n");
		return 1;
	}
	if (!n || n % 16 || cal_backend_init(kind, &bo, &be, &err) < 0) {
		fprintf(stderr, "bench_gptq_factor: %s\n", n && n % 16 == 0 ? cal_error_msg(&err)
									   : "n must be a multiple of 16");
		return 1;
	}
	uint64_t rows = 4;
	float *h = malloc(n * n * 4), *u = malloc(batch * n * n * 4),
	      *r = ref ? malloc(n * n * 4) : NULL;
	uint16_t *w = malloc(rows * n * 2);
	struct cal_gptq_factor_in *in = malloc(batch * sizeof(*in));
	float **ub = malloc(batch * sizeof(*ub));
	struct cal_gptq_stats *sb = malloc(batch * sizeof(*sb));
	if (!h || !u || !w || (ref && !r) || !in || !ub || !sb) {
		fprintf(stderr, "bench_gptq_factor: out of memory\n");
		return 1;
	}
	gptq_factor_case(n, 0, 1, h, w, rows);
	struct cal_gptq_opts o = {CAL_GPTQ_PERC_DAMP, CAL_GPTQ_BLOCK, 1};
	for (size_t b = 0; b < batch; b++) {
		in[b] = (struct cal_gptq_factor_in){w, rows, h, 1000};
		ub[b] = u + b * n * n;
	}
	double t0 = cal_now(), c0 = cpu_s();
	if (cal_gptq_factor_many(be, n, batch, in, &o, ub, sb, &err) < 0) {
		fprintf(stderr, "bench_gptq_factor: %s\n", cal_error_msg(&err));
		return 1;
	}
	double t1 = cal_now(), c1 = cpu_s();
	const struct cal_gptq_stats st = sb[0];
	printf("gptq factor n=%llu x %zu, %s: wall %.3f s (%.4f s a factor), cpu %.3f s "
	       "(fallback %d)", (unsigned long long)n, batch, cal_backend_describe(be), t1 - t0,
	       (t1 - t0) / (double)batch, c1 - c0, st.fallback);
	if (ref) {
		double t2 = cal_now(), c2 = cpu_s();
		int fb = gptq_factor_ref(w, rows, n, h, 1000, CAL_GPTQ_PERC_DAMP, r);
		double t3 = cal_now(), c3 = cpu_s();
		uint64_t diff = 0;
		double dmax = 0.0, umax = 0.0;
		for (uint64_t k = 0; k < batch * n * n; k++) {
			double d = fabs((double)u[k] - (double)r[k % (n * n)]);
			diff += memcmp(&u[k], &r[k % (n * n)], 4) != 0;
			dmax = d > dmax ? d : dmax;
			umax = fabs((double)r[k % (n * n)]) > umax ? fabs((double)r[k % (n * n)]) : umax;
		}
		printf("; column algorithm (1 thread) wall %.3f s, cpu %.3f s; U values "
		       "differing: %llu, largest difference %.3g of max |U|%s", t3 - t2, c3 - c2,
		       (unsigned long long)diff, umax > 0.0 ? dmax / umax : dmax,
		       fb != st.fallback ? " (fallback differs)" : "");
		if ((kind == CAL_BACKEND_CPU && diff) || dmax > 1e-5 * umax || fb != st.fallback) {
			printf("\n");
			return 1;
		}
	}
	printf("\n");
	free(h), free(u), free(r), free(w), free(in), free(ub), free(sb);
	cal_backend_free(be);
	return 0;
}
