/*
 * cmd_bench.c — `calibd bench numerics`: throughput of the weight quantizers
 * (NVFP4, FP8) and the observers on one back end, next to the memory copy
 * bandwidth of that back end (cudaMemcpy device-to-device on CUDA, memcpy
 * on the CPU).  A benchmark, not a test: it prints numbers and judges none.
 * GB/s counts bytes read plus bytes written, for the copy as for the ops.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/fp.h"
#include "common/util.h"
#include "kernels/ops.h"

struct bench {
	struct cal_backend *be;
	uint64_t n;       /* bf16 weight elements */
	int iters;
	void *w, *packed, *scales, *q, *amax, *nf, *blk, *idx, *off;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: calibd bench numerics [--device cpu|cuda] [--mib N] [--iters N] [--threads N]\n"
		"  GB/s of the NVFP4 and FP8 weight quantizers and of the observers on one back\n"
		"  end, next to its copy bandwidth (read + write bytes).  Defaults: the CUDA\n"
		"  back end when a GPU is present, 512 MiB of bf16 input (64 MiB on cpu).\n");
}

typedef enum cal_status (*bench_fn)(struct bench *b, struct cal_error *err);

static enum cal_status run_copy(struct bench *b, struct cal_error *err)
{
	return cal_backend_copy(b->be, b->q, b->w, b->n * 2, err);
}

static enum cal_status run_nvfp4(struct bench *b, struct cal_error *err)
{
	struct cal_nvfp4_quant_args a = {b->w, b->n / 4096, 4096, 0.0014415922f, b->packed,
					 b->scales};
	return cal_op_nvfp4_quant(b->be, &a, err);
}

static enum cal_status run_fp8(struct bench *b, struct cal_error *err)
{
	struct cal_fp8_quant_args a = {b->w, b->n, 0.0086495f, CAL_DIV_RECIP, b->q};
	return cal_op_fp8_quant(b->be, &a, err);
}

static enum cal_status run_amax(struct bench *b, struct cal_error *err)
{
	struct cal_amax_args a = {CAL_DTYPE_BF16, b->w, b->n, 0, b->amax, b->nf};
	return cal_op_amax(b->be, &a, err);
}

static enum cal_status run_amax_f32(struct bench *b, struct cal_error *err)
{
	struct cal_amax_args a = {CAL_DTYPE_F32, b->w, b->n / 2, 0, b->amax, b->nf};
	return cal_op_amax(b->be, &a, err);
}

static enum cal_status run_rows(struct bench *b, struct cal_error *err)
{
	struct cal_amax_rows_args a = {CAL_DTYPE_BF16, b->w, b->n / 4096, 4096, b->idx,
				       b->n / 4096, 0, b->amax, b->nf};
	return cal_op_amax_rows(b->be, &a, err);
}

static enum cal_status run_segments(struct bench *b, struct cal_error *err)
{
	struct cal_amax_segments_args a = {CAL_DTYPE_BF16, b->w, b->n / 4096, 4096, b->off,
					   128, 0, b->blk, b->nf};
	return cal_op_amax_segments(b->be, &a, err);
}

static enum cal_status run_blocks(struct bench *b, struct cal_error *err)
{
	struct cal_amax_blocks_args a = {CAL_DTYPE_BF16, b->w, b->n / 4096, 4096, 16, 0,
					 b->blk, b->nf};
	return cal_op_amax_blocks(b->be, &a, err);
}

/* Runs fn iters times (after one warm-up); returns seconds per run. */
static enum cal_status time_it(struct bench *b, bench_fn fn, double *ret, struct cal_error *err)
{
	enum cal_status st;
	double t0;
	if ((st = fn(b, err)) < 0 || (st = cal_backend_sync(b->be, err)) < 0)
		return st;
	t0 = cal_now();
	for (int i = 0; i < b->iters; i++)
		if ((st = fn(b, err)) < 0)
			return st;
	if ((st = cal_backend_sync(b->be, err)) < 0)
		return st;
	*ret = (cal_now() - t0) / b->iters;
	return CAL_OK;
}

static int bench_numerics(enum cal_backend_kind kind, uint64_t mib, int iters, unsigned threads)
{
	struct cal_error err = {0};
	struct cal_backend_opts o = {threads, 0, 0};
	struct bench b;
	enum cal_status st;
	uint16_t *hw = NULL;
	uint32_t *hidx = NULL, hoff[129];
	double copy_s = 0;

	memset(&b, 0, sizeof(b));
	b.iters = iters;
	b.n = mib * 1024 * 1024 / 2 / 4096 * 4096;
	CAL_TRY(cal_backend_init(kind, &o, &b.be, &err));
	printf("back end: %s (%s)\ninput: %llu bf16 elements (%.0f MiB), %d iterations\n",
	       b.be->name, cal_backend_describe(b.be), (unsigned long long)b.n,
	       (double)b.n * 2 / 1048576.0, iters);

	uint64_t rows = b.n / 4096;
	CAL_TRY(cal_backend_alloc(b.be, b.n * 2, &b.w, &err));
	CAL_TRY(cal_backend_alloc(b.be, b.n * 2, &b.q, &err));
	CAL_TRY(cal_backend_alloc(b.be, b.n / 2, &b.packed, &err));
	CAL_TRY(cal_backend_alloc(b.be, b.n / 16, &b.scales, &err));
	CAL_TRY(cal_backend_alloc(b.be, b.n / 16 * 4, &b.blk, &err));
	CAL_TRY(cal_backend_alloc(b.be, 4, &b.amax, &err));
	CAL_TRY(cal_backend_alloc(b.be, sizeof(struct cal_nonfinite), &b.nf, &err));
	CAL_TRY(cal_backend_alloc(b.be, rows * 4, &b.idx, &err));
	CAL_TRY(cal_backend_alloc(b.be, sizeof(hoff), &b.off, &err));

	hw = malloc(b.n * 2);
	hidx = malloc(rows * 4);
	if (!hw || !hidx) {
		st = cal_error_set(&err, CAL_ERR_NOMEM, "bench: out of host memory");
		goto fail;
	}
	uint64_t s = 88172645463325252ull;
	for (uint64_t i = 0; i < b.n; i++) {
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		hw[i] = cal_f32_to_bf16((float)((int64_t)(s >> 40) - (1 << 23)) / (float)(1 << 22));
	}
	for (uint64_t r = 0; r < rows; r++) /* a permutation-like gather of every row */
		hidx[r] = (uint32_t)((r * 2654435761u) % rows);
	for (int i = 0; i <= 128; i++)
		hoff[i] = (uint32_t)(rows * (uint64_t)i / 128);
	CAL_TRY(cal_backend_upload(b.be, b.w, hw, b.n * 2, &err));
	CAL_TRY(cal_backend_upload(b.be, b.idx, hidx, rows * 4, &err));
	CAL_TRY(cal_backend_upload(b.be, b.off, hoff, sizeof(hoff), &err));
	CAL_TRY(cal_backend_memset(b.be, b.amax, 0, 4, &err));
	CAL_TRY(cal_backend_memset(b.be, b.blk, 0, b.n / 16 * 4, &err));
	CAL_TRY(cal_nonfinite_reset(b.be, b.nf, &err));

	CAL_TRY(time_it(&b, run_copy, &copy_s, &err));
	double copy_gbs = 2.0 * b.n * 2 / copy_s / 1e9;
	printf("\n%-34s %10s %9s %8s  %s\n", "op", "ms", "GB/s", "% copy", "target");
	printf("%-34s %10.3f %9.1f %8s\n", kind == CAL_BACKEND_CUDA ? "copy (cudaMemcpy D2D)"
								 : "copy (memcpy)",
	       copy_s * 1e3, copy_gbs, "100%");

	static const struct {
		const char *name;
		bench_fn fn;
		double bytes_per_elem; /* read + written per bf16 element */
		int target;            /* % of copy on H100/H200 */
	} runs[] = {
		{"nvfp4_quant (bf16 -> e2m1+e4m3)", run_nvfp4, 2.0 + 0.5 + 1.0 / 16, 50},
		{"fp8_quant (bf16 -> e4m3)", run_fp8, 3.0, 50},
		{"amax (bf16, per tensor)", run_amax, 2.0, 70},
		{"amax (f32, per tensor)", run_amax_f32, 2.0, 70},
		{"amax_rows (bf16, gathered rows)", run_rows, 2.0 + 4.0 / 4096, 70},
		{"amax_segments (bf16, 128 experts)", run_segments, 2.0, 70},
		{"amax_blocks (bf16, per 16)", run_blocks, 2.0 + 4.0 / 16 * 2, 70},
	};
	for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		double t = 0;
		CAL_TRY(time_it(&b, runs[i].fn, &t, &err));
		double gbs = runs[i].bytes_per_elem * (double)b.n / t / 1e9;
		printf("%-34s %10.3f %9.1f %7.0f%%  >= %d%% on H100/H200\n", runs[i].name, t * 1e3, gbs,
		       100.0 * gbs / copy_gbs, runs[i].target);
	}
	st = CAL_OK;
fail:
	if (b.be) {
		cal_backend_dealloc(b.be, b.w);
		cal_backend_dealloc(b.be, b.q);
		cal_backend_dealloc(b.be, b.packed);
		cal_backend_dealloc(b.be, b.scales);
		cal_backend_dealloc(b.be, b.blk);
		cal_backend_dealloc(b.be, b.amax);
		cal_backend_dealloc(b.be, b.nf);
		cal_backend_dealloc(b.be, b.idx);
		cal_backend_dealloc(b.be, b.off);
	}
	cal_backend_free(b.be);
	free(hw);
	free(hidx);
	if (st < 0)
		fprintf(stderr, "calibd bench: %s\n", cal_error_msg(&err));
	cal_error_clear(&err);
	return cal_exit_from_status(st);
}

int cal_cmd_bench(int argc, char **argv)
{
	static const struct option opts[] = {
		{"device", required_argument, NULL, 'd'}, {"mib", required_argument, NULL, 'm'},
		{"iters", required_argument, NULL, 'i'},  {"threads", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
	};
	enum cal_backend_kind kind;
	int have_kind = 0, iters = 10, c;
	long long mib = 0;
	unsigned threads = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			if (cal_backend_kind_from_name(optarg, &kind) < 0) {
				fprintf(stderr, "calibd bench: --device '%s': expected cpu or cuda\n",
					optarg);
				return CAL_EXIT_USAGE;
			}
			have_kind = 1;
			break;
		case 'm':
			mib = atoll(optarg);
			if (mib < 8 || mib > 65536) {
				fprintf(stderr, "calibd bench: --mib %s: expected 8..65536\n", optarg);
				return CAL_EXIT_USAGE;
			}
			break;
		case 'i':
			iters = atoi(optarg);
			if (iters < 1 || iters > 10000) {
				fprintf(stderr, "calibd bench: --iters %s: expected 1..10000\n", optarg);
				return CAL_EXIT_USAGE;
			}
			break;
		case 't':
			threads = (unsigned)atoi(optarg);
			break;
		case 'h':
			usage(stdout);
			return CAL_EXIT_OK;
		default:
			usage(stderr);
			return CAL_EXIT_USAGE;
		}
	}
	if (optind >= argc || strcmp(argv[optind], "numerics") != 0) {
		usage(stderr);
		return CAL_EXIT_USAGE;
	}
	if (!have_kind)
		kind = cal_backend_cuda_available() ? CAL_BACKEND_CUDA : CAL_BACKEND_CPU;
	if (!mib)
		mib = kind == CAL_BACKEND_CUDA ? 512 : 64;
	return bench_numerics(kind, (uint64_t)mib, iters, threads);
}
