/*
 * awq_search.c — calibd's AWQ-lite search (cal_awq_lite, engine/awq.h) on
 * a weight and inputs read from files: the loss of every alpha, the chosen
 * alpha and the pre_quant_scale, as JSON on stdout.  A diagnostic for the
 * whole-model differential tests (tests/modelopt/search_inputs.py,
 * docs/awq.md "Where the searches part"): it runs calibd's search on the inputs
 * modelopt's search saw.
 *
 *   awq_search int4|nvfp4 ROWS COLS W.bf16 X.bf16 [BATCH [ALPHA_STEP]]
 *
 * W.bf16: [ROWS, COLS] little-endian bf16; X.bf16: [T, COLS] (T from the
 * file's size); BATCH: the rows of one calibration step (default T).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/awq.h"

static uint16_t *read_bf16(const char *path, uint64_t *n)
{
	FILE *f = fopen(path, "rb");
	uint16_t *b = NULL;
	long sz;
	if (f && fseek(f, 0, SEEK_END) == 0 && (sz = ftell(f)) > 0 && sz % 2 == 0 &&
	    fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)sz)) &&
	    fread(b, 1, (size_t)sz, f) == (size_t)sz) {
		*n = (uint64_t)sz / 2;
	} else {
		fprintf(stderr, "awq_search: cannot read %s\n", path);
		free(b);
		b = NULL;
	}
	if (f)
		fclose(f);
	return b;
}

int main(int argc, char **argv)
{
	if (argc < 6 || (strcmp(argv[1], "int4") && strcmp(argv[1], "nvfp4"))) {
		fprintf(stderr, "usage: awq_search int4|nvfp4 ROWS COLS W.bf16 X.bf16 "
				"[BATCH [ALPHA_STEP]]\n");
		return 2;
	}
	enum cal_awq_wq wq = strcmp(argv[1], "nvfp4") ? CAL_AWQ_WQ_INT4 : CAL_AWQ_WQ_NVFP4;
	uint64_t rows = strtoull(argv[2], NULL, 10), cols = strtoull(argv[3], NULL, 10), nw, nx;
	uint16_t *w = read_bf16(argv[4], &nw), *x = read_bf16(argv[5], &nx);
	if (!w || !x || !cols || nw != rows * cols || nx % cols) {
		fprintf(stderr, "awq_search: %s is not [%s, %s] bf16 or %s not [T, %s]\n", argv[4],
			argv[2], argv[3], argv[5], argv[3]);
		return 1;
	}
	uint64_t tokens = nx / cols;
	uint64_t batch = argc > 6 ? strtoull(argv[6], NULL, 10) : tokens;
	double step = argc > 7 ? strtod(argv[7], NULL) : 0.1;
	struct cal_error err = {0};
	struct cal_backend_opts bo = {0};
	struct cal_backend *be = NULL;
	double loss[CAL_AWQ_MAX_ALPHAS];
	uint16_t *pq = malloc(cols * 2), *wf = malloc(rows * cols * 2);
	float *wa = malloc(rows * cols / 16 * sizeof(float));
	struct cal_awq_out o = {pq, wf, wa, loss, 0, 0.0f};
	if (!pq || !wf || !wa || cal_backend_init(CAL_BACKEND_CPU, &bo, &be, &err) < 0 ||
	    cal_awq_lite(be, wq, w, rows, cols, x, tokens, batch, step, &o, NULL, &err) < 0) {
		fprintf(stderr, "awq_search: %s\n", cal_error_msg(&err));
		return 1;
	}
	printf("{\"best_alpha\": %.9g, \"loss\": [", (double)o.best_alpha);
	for (unsigned i = 0; i < o.n_alpha; i++)
		printf("%s%.17g", i ? ", " : "", loss[i]);
	printf("], \"pre_quant_scale_bf16\": [");
	for (uint64_t k = 0; k < cols; k++)
		printf("%s%u", k ? ", " : "", (unsigned)pq[k]);
	printf("]}\n");
	free(w), free(x), free(pq), free(wf), free(wa);
	cal_backend_free(be);
	return 0;
}
