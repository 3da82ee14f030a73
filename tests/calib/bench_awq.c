/*
 * bench_awq.c — times AWQ-lite's scale search (cal_awq_lite_bias,
 * engine/awq.h) of one [rows, cols] linear with random bf16 weights and
 * inputs, its GEMMs on the back end named (cpu or cuda), the fake-quantized
 * weights on host threads; prints the wall and CPU seconds, the chosen alpha
 * and the loss of every alpha (docs/awq.md "What runs where").
 *
 *   bench_awq [rows cols tokens [backend [threads [batch [nvfp4]]]]]
 *       (default 4096 2048 8192 cpu 0 512 0: a q_proj-shaped linear,
 *        INT4; batch: the tokens of one calibration step)
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "awq_gen.h"
#include "common/util.h"
#include "engine/awq.h"

int main(int argc, char **argv)
{
	uint64_t rows = argc > 1 ? strtoull(argv[1], NULL, 10) : 4096;
	uint64_t cols = argc > 2 ? strtoull(argv[2], NULL, 10) : 2048;
	uint64_t tok = argc > 3 ? strtoull(argv[3], NULL, 10) : 8192;
	unsigned threads = argc > 5 ? (unsigned)strtoul(argv[5], NULL, 10) : 0;
	uint64_t batch = argc > 6 ? strtoull(argv[6], NULL, 10) : 512;
	enum cal_awq_wq wq = argc > 7 && atoi(argv[7]) ? CAL_AWQ_WQ_NVFP4 : CAL_AWQ_WQ_INT4;
	enum cal_backend_kind kind = CAL_BACKEND_CPU;
	struct cal_error err = {0};
	struct cal_backend_opts bo = {.cpu_threads = threads};
	struct cal_backend *be = NULL, *host = NULL;
	if (argc > 4 && cal_backend_kind_from_name(argv[4], &kind) < 0) {
		fprintf(stderr, "bench_awq: back end '%s' is not cpu or cuda\n", argv[4]);
		return 1;
	}
	if (cal_backend_init(kind, &bo, &be, &err) < 0 ||
	    cal_backend_init(CAL_BACKEND_CPU, &bo, &host, &err) < 0) {
		fprintf(stderr, "bench_awq: %s\n", cal_error_msg(&err));
		return 1;
	}
	uint16_t *w = malloc(rows * cols * 2), *x = malloc(tok * cols * 2);
	uint16_t *pq = malloc(cols * 2), *wf = malloc(rows * cols * 2);
	float *wa = malloc(rows * cols / 16 * sizeof(float));
	if (!w || !x || !pq || !wf || !wa) {
		fprintf(stderr, "bench_awq: out of memory\n");
		return 1;
	}
	awq_gen(42, w, rows * cols, x, tok * cols, cols);
	double loss[CAL_AWQ_MAX_ALPHAS];
	struct cal_awq_out o = {pq, wf, wa, loss, 0, 0.0f};
	struct cal_awq_dev dev = {be, host, 0};
	double t0 = cal_now(), c0 = (double)clock() / CLOCKS_PER_SEC; /* all threads */
	if (cal_awq_lite_bias(&dev, wq, w, NULL, rows, cols, x, tok, batch, 0.1, &o, NULL, &err) <
	    0) {
		fprintf(stderr, "bench_awq: %s\n", cal_error_msg(&err));
		return 1;
	}
	double t1 = cal_now(), c1 = (double)clock() / CLOCKS_PER_SEC;
	printf("awq_lite search [%llu, %llu] x %llu tokens (batch %llu, %s), %s: wall %.3f s, "
	       "cpu %.3f s; alpha %g; losses", (unsigned long long)rows, (unsigned long long)cols,
	       (unsigned long long)tok, (unsigned long long)batch,
	       wq == CAL_AWQ_WQ_NVFP4 ? "nvfp4" : "int4", cal_backend_describe(be), t1 - t0,
	       c1 - c0, (double)o.best_alpha);
	for (unsigned i = 0; i < o.n_alpha; i++)
		printf(" %.6e", loss[i]);
	printf("\n");
	free(w), free(x), free(pq), free(wf), free(wa);
	cal_backend_free(be);
	cal_backend_free(host);
	return 0;
}
