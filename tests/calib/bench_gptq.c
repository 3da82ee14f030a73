/*
 * bench_gptq.c — times the GPTQ pieces on the CPU back end: the `hessian`
 * op over the tokens, and cal_gptq_nvfp4 (inverse factor + update) for one
 * [rows, cols] linear with random bf16 weights and inputs.
 *
 *   bench_gptq [rows cols tokens threads]     (default 1024 1024 1024 0)
 */
#include <stdio.h>
#include <stdlib.h>

#include "common/util.h"
#include "engine/gptq.h"
#include "kernels/ops.h"

static uint16_t rnd_bf16(uint64_t *s, float scale)
{
	*s = *s * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
	return cal_nf_f32_to_bf16(((float)(*s >> 40) / 16777216.0f * 2.0f - 1.0f) * scale);
}

int main(int argc, char **argv)
{
	uint64_t rows = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
	uint64_t cols = argc > 2 ? strtoull(argv[2], NULL, 10) : 1024;
	uint64_t tok = argc > 3 ? strtoull(argv[3], NULL, 10) : 1024;
	unsigned threads = argc > 4 ? (unsigned)strtoul(argv[4], NULL, 10) : 0;
	struct cal_error err = {0};
	struct cal_backend_opts bo = {0};
	struct cal_backend *be = NULL;
	bo.cpu_threads = threads;
	if (cal_backend_init(CAL_BACKEND_CPU, &bo, &be, &err) < 0) {
		fprintf(stderr, "%s\n", cal_error_msg(&err));
		return 1;
	}
	uint64_t s = 42;
	uint16_t *w = malloc(rows * cols * 2), *x = malloc(tok * cols * 2), *o = malloc(rows * cols * 2);
	float *h = calloc(cols * cols, 4), *am = calloc(rows * cols / 16, 4);
	for (uint64_t i = 0; i < rows * cols; i++)
		w[i] = rnd_bf16(&s, 0.05f);
	for (uint64_t i = 0; i < tok * cols; i++)
		x[i] = rnd_bf16(&s, 1.0f);
	struct cal_nonfinite nf = {0, CAL_NONFINITE_NONE};
	struct cal_amax_blocks_args ab = {CAL_DTYPE_BF16, w, rows, cols, 16, 0, am, &nf};
	struct cal_hessian_args ha = {CAL_DTYPE_BF16, x, tok, cols, NULL, 0, h};
	double t0 = cal_now();
	if (cal_op_amax_blocks(be, &ab, &err) < 0 || cal_op_hessian(be, &ha, &err) < 0) {
		fprintf(stderr, "%s\n", cal_error_msg(&err));
		return 1;
	}
	double t1 = cal_now();
	float g = 0.0f;
	for (uint64_t b = 0; b < rows * cols / 16; b++)
		g = am[b] > g ? am[b] : g;
	struct cal_gptq_opts go = {CAL_GPTQ_PERC_DAMP, CAL_GPTQ_BLOCK, 0};
	struct cal_gptq_nvfp4 q = {am, g, 448.0f, CAL_DIV_EXACT};
	struct cal_gptq_stats st;
	if (cal_gptq_nvfp4(be, w, rows, cols, h, tok, &go, &q, o, &st, &err) < 0) {
		fprintf(stderr, "%s\n", cal_error_msg(&err));
		return 1;
	}
	double t2 = cal_now();
	printf("gptq [%llu, %llu], %llu tokens, %s: hessian %.3f s, gptq %.3f s "
	       "(rel err %.3e, fallback %d)\n",
	       (unsigned long long)rows, (unsigned long long)cols, (unsigned long long)tok,
	       cal_backend_describe(be), t1 - t0, t2 - t1, st.rel_err, st.fallback);
	free(w), free(x), free(o), free(h), free(am);
	cal_backend_free(be);
	return 0;
}
