/*
 * awq_search.c — calibd's AWQ-lite search (cal_awq_lite, engine/awq.h) or
 * its awq_clip search (cal_awq_clip_int4 / cal_awq_clip_nvfp4) on a weight
 * and inputs read from files, as JSON on stdout: the loss of every alpha,
 * the chosen alpha and the pre_quant_scale; or the clip ratios, the chosen
 * clip amax (per 128-block for INT4, of the tensor for NVFP4) and, NVFP4,
 * every ratio's loss.  A diagnostic for the
 * whole-model differential tests (tests/modelopt/search_inputs.py,
 * docs/awq.md "Where the searches part"): it runs calibd's search on the inputs
 * modelopt's search saw.
 *
 *   awq_search int4|nvfp4 ROWS COLS W.bf16 X.bf16 [BATCH [ALPHA_STEP]]
 *   awq_search clip-int4|clip-nvfp4 ROWS COLS W.bf16 X.bf16 [BATCH [PQS.bf16|-
 *              [AMAX_BF16 [MAX_TOKENS]]]]
 *
 * W.bf16: [ROWS, COLS] little-endian bf16; X.bf16: [T, COLS] (T from the
 * file's size); BATCH: the rows of one calibration step (default T);
 * PQS.bf16: the pre_quant_scale [COLS] the inputs are multiplied by ("-":
 * none); AMAX_BF16: 1 (default) rounds the clip amax to bf16
 * (cal_awq_clip_opts.amax_bf16); MAX_TOKENS: max_tokens_per_batch (64).
 * The clip options are otherwise modelopt's defaults.
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

/* The clip search (argv as in the header); 0, or 1 with a message. */
static int clip(struct cal_backend *be, int argc, char **argv, const uint16_t *w,
		uint64_t rows, uint64_t cols, const uint16_t *x, uint64_t tokens, uint64_t batch)
{
	int nvfp4 = !strcmp(argv[1], "clip-nvfp4");
	uint64_t np = 0, nb = nvfp4 ? 1 : rows * cols / 128;
	uint16_t *pqs = argc > 7 && strcmp(argv[7], "-") ? read_bf16(argv[7], &np) : NULL;
	struct cal_awq_clip_opts o = {argc > 9 ? strtoull(argv[9], NULL, 10) : 64, 0.5, 0.05,
				      argc > 8 ? atoi(argv[8]) : 1};
	struct cal_error err = {0};
	float ratios[CAL_AWQ_MAX_RATIOS], *amax = malloc(nb * sizeof(float));
	double loss[CAL_AWQ_MAX_RATIOS];
	unsigned nr = cal_awq_clip_ratios(o.min_ratio, o.step, ratios);
	if (argc > 7 && strcmp(argv[7], "-") && (!pqs || np != cols)) {
		fprintf(stderr, "awq_search: %s is not [%llu] bf16\n", argv[7],
			(unsigned long long)cols);
		free(pqs), free(amax);
		return 1;
	}
	struct cal_awq_dev dev = {be, be, 0};
	if (!amax || (nvfp4 ? cal_awq_clip_nvfp4(&dev, w, rows, cols, x, tokens, batch, pqs, &o,
						  amax, loss, &err)
			    : cal_awq_clip_int4(be, w, rows, cols, x, tokens, batch, pqs, &o, amax,
						&err)) < 0) {
		fprintf(stderr, "awq_search: %s\n", amax ? cal_error_msg(&err) : "out of memory");
		free(pqs), free(amax);
		return 1;
	}
	printf("{\"ratios\": [");
	for (unsigned j = 0; j < nr; j++)
		printf("%s%.9g", j ? ", " : "", (double)ratios[j]);
	printf("], \"clip_amax\": [");
	for (uint64_t b = 0; b < nb; b++)
		printf("%s%.9g", b ? ", " : "", (double)amax[b]);
	printf("]");
	for (unsigned j = 0; nvfp4 && j < nr; j++)
		printf("%s%.17g", j ? ", " : ", \"loss\": [", loss[j]);
	printf("%s}\n", nvfp4 ? "]" : "");
	free(pqs), free(amax);
	return 0;
}

int main(int argc, char **argv)
{
	int is_clip = argc > 1 && (!strcmp(argv[1], "clip-int4") || !strcmp(argv[1], "clip-nvfp4"));
	if (argc < 6 || (strcmp(argv[1], "int4") && strcmp(argv[1], "nvfp4") && !is_clip)) {
		fprintf(stderr, "usage: awq_search int4|nvfp4 ROWS COLS W.bf16 X.bf16 "
				"[BATCH [ALPHA_STEP]]\n"
				"       awq_search clip-int4|clip-nvfp4 ROWS COLS W.bf16 X.bf16 "
				"[BATCH [PQS.bf16|- [AMAX_BF16 [MAX_TOKENS]]]]\n");
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
	double step = argc > 7 && !is_clip ? strtod(argv[7], NULL) : 0.1;
	struct cal_error err = {0};
	struct cal_backend_opts bo = {0};
	struct cal_backend *be = NULL;
	if (is_clip) {
		int rc = cal_backend_init(CAL_BACKEND_CPU, &bo, &be, &err) < 0 ? 1 : 0;
		if (rc)
			fprintf(stderr, "awq_search: %s\n", cal_error_msg(&err));
		else
			rc = clip(be, argc, argv, w, rows, cols, x, tokens, batch);
		free(w), free(x);
		cal_backend_free(be);
		return rc;
	}
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
