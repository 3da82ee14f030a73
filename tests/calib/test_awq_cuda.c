/*
 * test_awq_cuda.c — gpu suite: AWQ's searches with their GEMMs on the CUDA
 * back end (cal_awq_lite_bias, cal_awq_clip_nvfp4; docs/awq.md "What runs
 * where") against the CPU back end, on a random linear with a bias (INT4
 * and NVFP4 weights, several batches, a short last one): two CUDA runs give
 * the same bytes; every loss within 1e-3 relative of the CPU's (cuBLAS's
 * order of terms moves a bf16 output a step now and then); the same alpha
 * and clip amax where the CPU's best beats its runner-up by more than
 * 1e-2 relative (a nearer tie may go either way, printed).  A plain main
 * (no fork after CUDA); exits 77 (meson: SKIP) without a GPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "awq_gen.h"
#include "engine/awq.h"

enum { R = 96, C = 512, T = 300, B = 64 };

/* The relative margin of the least of n losses over the runner-up. */
static double margin(const double *l, unsigned n)
{
	double a = INFINITY, b = INFINITY;
	for (unsigned i = 0; i < n; i++)
		if (l[i] < a)
			b = a, a = l[i];
		else if (l[i] < b)
			b = l[i];
	return b / a - 1.0;
}

/* Losses of n candidates: the largest relative difference, 1 when a CPU
 * loss is not positive. */
static double worst(const double *c, const double *g, unsigned n)
{
	double w = 0.0;
	for (unsigned i = 0; i < n; i++)
		w = c[i] > 0.0 ? fmax(w, fabs(g[i] / c[i] - 1.0)) : 1.0;
	return w;
}

struct run {
	double loss[CAL_AWQ_MAX_ALPHAS], clip_loss[CAL_AWQ_MAX_RATIOS];
	uint16_t pq[C], w[R * C];
	float am[R * C / 16], alpha, clip;
};

static int search(const struct cal_awq_dev *dev, enum cal_awq_wq wq, const uint16_t *w,
		  const uint16_t *bias, const uint16_t *x, struct run *r)
{
	struct cal_error err = {0};
	struct cal_awq_out o = {r->pq, r->w, r->am, r->loss, 0, 0.0f};
	struct cal_awq_clip_opts co = {64, 0.5, 0.05, 1};
	memset(r, 0, sizeof(*r));
	if (cal_awq_lite_bias(dev, wq, w, bias, R, C, x, T, B, 0.1, &o, NULL, &err) < 0 ||
	    (wq == CAL_AWQ_WQ_NVFP4 && cal_awq_clip_nvfp4(dev, r->w, R, C, x, T, B, r->pq, &co,
							    &r->clip, r->clip_loss, &err) < 0)) {
		fprintf(stderr, "FAIL: %s\n", cal_error_msg(&err));
		return 1;
	}
	r->alpha = o.best_alpha;
	return 0;
}

/* A back end of kind k (2 CPU threads), or NULL with the reason printed. */
static struct cal_backend *backend(enum cal_backend_kind k)
{
	struct cal_error err = {0};
	struct cal_backend_opts bo = {.cpu_threads = 2};
	struct cal_backend *be = NULL;
	if (cal_backend_init(k, &bo, &be, &err) < 0)
		fprintf(stderr, "FAIL: back end: %s\n", cal_error_msg(&err));
	return be;
}

int main(void)
{
	int bad = 0;
	if (!cal_backend_cuda_available()) {
		printf("SKIP: no CUDA device (or built without CUDA)\n");
		return 77;
	}
	struct cal_backend *cpu = backend(CAL_BACKEND_CPU), *cuda = backend(CAL_BACKEND_CUDA);
	if (!cpu || !cuda)
		return 1;
	printf("AWQ searches on %s\n", cal_backend_describe(cuda));
	uint16_t *w = malloc(R * C * 2), *x = malloc(T * C * 2), bias[R];
	struct run *rc = malloc(sizeof(*rc)), *rg = malloc(sizeof(*rg)), *rg2 = malloc(sizeof(*rg2));
	if (!w || !x || !rc || !rg || !rg2) {
		fprintf(stderr, "FAIL: out of memory\n");
		return 1;
	}
	awq_gen(5, w, R * C, x, T * C, C);
	for (int r = 0; r < R; r++) /* in [-0.25, 0.25] */
		bias[r] = cal_nf_f32_to_bf16((float)(r % 17 - 8) / 32.0f);
	struct cal_awq_dev dc = {cpu, cpu, 0}, dg = {cuda, cpu, 0};
	for (int nv = 0; nv < 2; nv++) {
		enum cal_awq_wq wq = nv ? CAL_AWQ_WQ_NVFP4 : CAL_AWQ_WQ_INT4;
		const char *nm = nv ? "nvfp4" : "int4";
		if (search(&dc, wq, w, bias, x, rc) || search(&dg, wq, w, bias, x, rg) ||
		    search(&dg, wq, w, bias, x, rg2)) {
			bad++;
			continue;
		}
		if (memcmp(rg, rg2, sizeof(*rg))) {
			fprintf(stderr, "FAIL %s: two CUDA runs differ\n", nm);
			bad++;
		}
		double wl = worst(rc->loss, rg->loss, 11), ml = margin(rc->loss, 11);
		double wc = nv ? worst(rc->clip_loss, rg->clip_loss, 11) : 0.0;
		double mc = nv ? margin(rc->clip_loss, 11) : 1.0;
		printf("%s: alpha cpu %g cuda %g (cpu margin %.2e), losses within %.2e; clip amax "
		       "cpu %g cuda %g (margin %.2e), losses within %.2e\n", nm, (double)rc->alpha,
		       (double)rg->alpha, ml, wl, (double)rc->clip, (double)rg->clip, mc, wc);
		if (wl > 1e-3 || wc > 1e-3 || (ml > 1e-2 && rc->alpha != rg->alpha) ||
		    (mc > 1e-2 && rc->clip != rg->clip)) {
			fprintf(stderr, "FAIL %s: CUDA's search differs from the CPU's\n", nm);
			bad++;
		}
	}
	free(w), free(x), free(rc), free(rg), free(rg2);
	cal_backend_free(cuda);
	cal_backend_free(cpu);
	printf("%s\n", bad ? "FAILED" : "cuda's AWQ searches agree with the cpu's");
	return bad ? 1 : 0;
}
