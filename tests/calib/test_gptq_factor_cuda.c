/*
 * test_gptq_factor_cuda.c — gpu suite: cal_gptq_factor_many on the CUDA back
 * end (engine/calib/gptq.c cal_gptq_factor_dev: the batched gptq_factor op
 * with cuSOLVER, the flags and damping downloaded, the identity uploaded
 * into the device's U for a fallback) against the CPU back end and the
 * column algorithms of gptq_factor_ref.h: per matrix the same fallback, dead
 * columns and damping (bytes), U within 1e-5 relative plus 1e-6 of max |U|
 * (kernels/ops.h: cuSOLVER's order of terms), a fallback's U the identity.
 * One batch per size mixes a diagonally dominant H with a dead column, a
 * full-rank and a rank-deficient x^T x, and one with a negative diagonal
 * (not positive definite: modelopt's identity).  A plain main (no fork
 * after CUDA); exits 77 (meson: SKIP) without a GPU.
 */
#include <stdio.h>

#include "gptq_factor_ref.h"

enum { K = 4, ROWS = 8 };

/* One size: returns the failures (printed). */
static int one_size(struct cal_backend *cpu, struct cal_backend *cuda, uint64_t n)
{
	const uint64_t nn = n * n, tok[K] = {0, 2 * n, n / 4 + 1, 2 * n},
		       samples[K] = {100, 2 * n, n / 4 + 1, 2 * n};
	struct cal_gptq_opts o = {0.01, CAL_GPTQ_BLOCK, 1};
	struct cal_gptq_factor_in in[K];
	struct cal_gptq_stats sc[K], sg[K];
	struct cal_error err = {0};
	float *h = malloc(K * nn * 4), *uc = malloc(K * nn * 4), *ug = malloc(K * nn * 4),
	      *r = malloc(nn * 4), *pc[K], *pg[K];
	uint16_t *w = malloc(K * ROWS * n * 2);
	int bad = 0;
	if (!h || !uc || !ug || !r || !w) {
		fprintf(stderr, "FAIL n %llu: out of memory\n", (unsigned long long)n);
		return 1;
	}
	for (int k = 0; k < K; k++) {
		/* a dead weight column (n / 3) in the first matrix only */
		gptq_factor_case(n, tok[k], n * 7 + tok[k], h + k * nn, k ? NULL : w, ROWS);
		if (k)
			for (uint64_t i = 0; i < ROWS * n; i++)
				w[k * ROWS * n + i] = 0x3c00; /* 0.0078125: no dead column */
		in[k] = (struct cal_gptq_factor_in){w + k * ROWS * n, ROWS, h + k * nn, samples[k]};
		pc[k] = uc + k * nn;
		pg[k] = ug + k * nn;
	}
	h[(K - 1) * nn + (n / 2) * n + n / 2] = -1e9f;
	if (cal_gptq_factor_many(cpu, n, K, in, &o, pc, sc, &err) < 0 ||
	    cal_gptq_factor_many(cuda, n, K, in, &o, pg, sg, &err) < 0) {
		fprintf(stderr, "FAIL n %llu: %s\n", (unsigned long long)n, cal_error_msg(&err));
		cal_error_clear(&err);
		bad = 1;
		goto out;
	}
	for (int k = 0; k < K; k++) {
		int fb = gptq_factor_ref(in[k].w, ROWS, n, in[k].hsum, samples[k], o.perc_damp, r);
		uint64_t far = 0, diff = 0;
		float umax = 0.0f;
		for (uint64_t e = 0; e < nn; e++)
			umax = fabsf(r[e]) > umax ? fabsf(r[e]) : umax;
		for (uint64_t e = 0; e < nn; e++) {
			float d = fabsf(pg[k][e] - r[e]);
			diff += memcmp(&pg[k][e], &r[e], 4) != 0;
			far += !(d <= 1e-5f * fabsf(r[e]) + 1e-6f * umax);
		}
		int ok = fb == (k == K - 1) && sc[k].fallback == fb && sg[k].fallback == fb &&
			 sc[k].dead_cols == (uint64_t)(k == 0) && sg[k].dead_cols == sc[k].dead_cols &&
			 !memcmp(&sg[k].damp, &sc[k].damp, sizeof(double)) &&
			 !memcmp(pc[k], r, nn * 4) && !far && (!fb || !diff);
		printf("n %3llu matrix %d: fallback %d/%d (reference %d), dead columns %llu, damp %.6g"
		       "/%.6g, U: %llu of %llu differ from the column algorithm, %llu beyond the "
		       "tolerance: %s\n", (unsigned long long)n, k, sc[k].fallback, sg[k].fallback,
		       fb, (unsigned long long)sg[k].dead_cols, sc[k].damp, sg[k].damp,
		       (unsigned long long)diff, (unsigned long long)nn, (unsigned long long)far,
		       ok ? "ok" : "FAIL");
		bad += !ok;
	}
out:
	free(h), free(uc), free(ug), free(r), free(w);
	return bad;
}

int main(void)
{
	struct cal_error err = {0};
	struct cal_backend *cpu = NULL, *cuda = NULL;
	struct cal_backend_opts bo = {.cpu_threads = 2};
	static const uint64_t sizes[] = {16, 48, 96, 272};
	int bad = 0;
	if (!cal_backend_cuda_available()) {
		printf("SKIP: no CUDA device (or built without CUDA)\n");
		return 77;
	}
	if (cal_backend_init(CAL_BACKEND_CPU, &bo, &cpu, &err) < 0 ||
	    cal_backend_init(CAL_BACKEND_CUDA, NULL, &cuda, &err) < 0) {
		fprintf(stderr, "back end: %s\n", cal_error_msg(&err));
		return 1;
	}
	printf("cuda: %s\n", cal_backend_describe(cuda));
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		bad += one_size(cpu, cuda, sizes[i]);
	cal_backend_free(cuda);
	cal_backend_free(cpu);
	printf("%s\n", bad ? "FAILED" : "cuda's GPTQ factors agree with the cpu's");
	return bad ? 1 : 0;
}
