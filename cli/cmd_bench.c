/*
 * cmd_bench.c — benchmarks; they print numbers and judge none.
 *
 * `calibd bench numerics`: throughput of the weight quantizers (NVFP4, FP8)
 * and the observers on one back end, next to the memory copy bandwidth of
 * that back end (cudaMemcpy device-to-device on CUDA, memcpy on the CPU).
 * GB/s counts bytes read plus bytes written, for the copy as for the ops.
 *
 * `calibd bench calibrate`: the calibration engine end to end on a
 * checkpoint (e.g. the synthetic Qwen3-30B-A3B-shaped one that
 * tests/bench/moe_baseline.py writes) with a recipe (default: experts-only
 * NVFP4): calibration tokens/s, the time of each phase (a second run with
 * phase syncs), peak back-end memory, micro-batching and where the hidden
 * states lived.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/fp.h"
#include "common/parse.h"
#include "common/util.h"
#include "engine/calib.h"
#include "engine/job.h"
#include "engine/model/model.h"
#include "engine/recipe/plan.h"
#include "engine/recipe/recipe.h"
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
		"usage: calibd bench numerics [--device cpu|cuda[:i]] [--mib N] [--iters N] [--threads N]\n"
		"       calibd bench calibrate --model DIR [options] (calibd bench calibrate --help)\n"
		"       calibd bench quantize --model DIR --tokens FILE [options] (--help)\n"
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
					 b->scales, 0};
	return cal_op_nvfp4_quant(b->be, &a, err);
}

static enum cal_status run_fp8(struct bench *b, struct cal_error *err)
{
	struct cal_fp8_quant_args a = {b->w, b->n, 0.0086495f, CAL_DIV_RECIP, b->q, 0, NULL, 0, 0};
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

static int bench_numerics(enum cal_backend_kind kind, int ordinal, uint64_t mib, int iters,
			  unsigned threads)
{
	struct cal_error err = {0};
	struct cal_backend_opts o = {threads, 0, ordinal};
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
	return cal_cli_finish("bench", st, &err);
}

/* ---- bench calibrate ------------------------------------------------------- */

static void calib_usage(FILE *out)
{
	fprintf(out,
		"usage: calibd bench calibrate --model DIR [--tokens FILE | --seqs N --seq-len N]\n"
		"         [--device cpu|cuda[:i]] [--recipe NAME|FILE] [--recipes-dir DIR]\n"
		"         [--max-gpu-mem BYTES] [--micro-batch TOKENS] [--threads N]\n"
		"         [--repeat N] [--no-profile] [--json FILE]\n"
		"  Calibrates DIR (e.g. the synthetic Qwen3-30B-A3B-shaped checkpoint of\n"
		"  tests/bench/moe_baseline.py) and prints calibration tokens/s (best of\n"
		"  --repeat runs), the time of each phase (one more run that syncs at phase\n"
		"  boundaries), peak back-end memory and the micro-batching.  Tokens: the\n"
		"  file (JSONL input_ids), else --seqs random sequences of --seq-len ids\n"
		"  (seed 0; defaults 512 x 512).  Recipe default:\n"
		"  general/ptq/nvfp4_experts_only-kv_fp8.\n");
}

/* n sequences of len random ids (splitmix64, seed 0) as a token set. */
static enum cal_status random_tokens(uint64_t n, uint64_t len, uint64_t vocab,
				     struct cal_calib_tokens **ret, struct cal_error *err)
{
	uint64_t cap = n * (len * 8 + 32) + 64, s = 0;
	char *text = malloc(cap), *p = text;
	enum cal_status st;
	if (!text)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory for %llu tokens",
				     (unsigned long long)(n * len));
	for (uint64_t i = 0; i < n; i++) {
		p += sprintf(p, "{\"input_ids\":[");
		for (uint64_t j = 0; j < len; j++) {
			uint64_t z = cal_splitmix64(&s);
			p += sprintf(p, "%s%llu", j ? "," : "", (unsigned long long)(z % vocab));
		}
		p += sprintf(p, "]}\n");
	}
	st = cal_calib_tokens_parse("random tokens", text, (size_t)(p - text), vocab, ret, err);
	free(text);
	return st;
}

static void print_perf(const char *what, const struct cal_calib_perf *p, uint64_t n_tok)
{
	printf("%s: %.3f s, %.0f tokens/s (%.0f tokens/s without embedding)\n", what, p->total_s,
	       (double)n_tok / p->total_s,
	       p->total_s > p->embed_s ? (double)n_tok / (p->total_s - p->embed_s) : 0.0);
}

static int bench_calibrate(int argc, char **argv)
{
	const char *model = NULL, *tokens = NULL, *device = NULL, *json_path = NULL;
	const char *recipe = "general/ptq/nvfp4_experts_only-kv_fp8", *rdir = NULL;
	uint64_t seqs = 512, seq_len = 512, max_mem = 0, mb = 0, threads = 0, reps = 1;
	int no_profile = 0, c;
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"bench calibrate", argc, argv, "h",
		CAL_CLI_RESOURCE_OPTIONS "model tokens seqs seq-len device recipe recipes-dir "
		"repeat no-profile json-file",
		CAL_CLI_SETS(CAL_CLI_NEED("model", &model), CAL_CLI_STR("tokens", &tokens),
			     CAL_CLI_STR("device", &device), CAL_CLI_STR("recipe", &recipe),
			     CAL_CLI_STR("recipes-dir", &rdir), CAL_CLI_STR("json-file", &json_path),
			     CAL_CLI_FLAG("no-profile", &no_profile)));

	while ((c = cal_cli_next(&ca)) != -1) {
		uint64_t v = 0;
		switch (c) {
		case 'n': case 'S': case 'M': case 'b': case 'T': case 'k':
			if (cal_cli_parse_u64(optarg, &v) < 0 ||
			    ((c == 'n' || c == 'S' || c == 'k') && (v < 1 || v > ((uint64_t)1 << 24)))) {
				fprintf(stderr, "calibd bench calibrate: bad value '%s'\n", optarg);
				return CAL_EXIT_USAGE;
			}
			*(c == 'n' ? &seqs : c == 'S' ? &seq_len : c == 'M' ? &max_mem : c == 'b' ? &mb
			  : c == 'T' ? &threads : &reps) = v;
			break;
		default: return cal_cli_usage(calib_usage, c);
		}
	}
	if (optind != argc)
		return cal_cli_usage(calib_usage, '?');
	if (seqs * seq_len > CAL_CALIB_MAX_TOKENS) {
		fprintf(stderr, "calibd bench calibrate: --seqs x --seq-len exceeds %llu tokens\n",
			(unsigned long long)CAL_CALIB_MAX_TOKENS);
		return CAL_EXIT_USAGE;
	}
	int repeat = (int)reps, profile = !no_profile;
	struct cal_calib_opts o = {.cpu_threads = (unsigned)threads, .max_mem = max_mem,
				   .micro_batch_tokens = mb};
	struct cal_error err = {0};
	struct cal_devices devices;
	int rc = cal_cli_devices("bench calibrate", device, &devices);
	if (rc != CAL_EXIT_OK)
		return rc;
	/* the engine opens its own back end on every run: the open is measured */
	o.backend = cal_job_backend_kind(&devices, &o.cuda_device);

	struct cal_model_desc *d = NULL;
	struct cal_recipe *r = NULL;
	struct cal_plan *p = NULL;
	struct cal_calib_tokens *tk = NULL;
	struct cal_calib *cal = NULL;
	struct cal_recipe_opts ro = {.builtin_dir = rdir};
	struct cal_calib_perf best, prof;
	double t_open = 0;
	enum cal_status st = cal_model_desc_load(model, &d, &err);
	memset(&best, 0, sizeof(best));
	memset(&prof, 0, sizeof(prof));
	if (st >= 0)
		st = cal_recipe_load(recipe, &ro, &r, &err);
	if (st >= 0)
		st = cal_plan_build(d, r, &p, &err);
	if (st >= 0)
		st = tokens ? cal_calib_tokens_load(tokens, (uint64_t)d->vocab_size, &tk, &err)
			    : random_tokens(seqs, seq_len, (uint64_t)d->vocab_size, &tk, &err);
	if (st < 0)
		goto done;
	printf("model: %s (%s), %lld layers, hidden %lld, %lld experts x %lld (top-%lld), "
	       "%lld/%lld heads x %lld\n", model, d->model_type, (long long)d->num_layers,
	       (long long)d->hidden_size, (long long)d->num_experts,
	       (long long)d->moe_intermediate_size, (long long)d->top_k, (long long)d->num_heads,
	       (long long)d->num_kv_heads, (long long)d->head_dim);
	printf("tokens: %zu sequences, %zu tokens; recipe %s\n", tk->n, tk->n_tokens, recipe);
	for (int i = 0; i < repeat + profile && st >= 0; i++) {
		struct cal_calib_perf pf;
		int prof_run = i == repeat;
		double t0 = cal_now();
		o.profile = prof_run;
		cal_calib_free(cal);
		cal = NULL;
		st = cal_calib_open(model, p, &o, &cal, &err);
		if (st < 0)
			break;
		t_open = cal_now() - t0;
		if (i == 0)
			printf("device: %s (%s); checkpoint opened in %.3f s\n",
			       o.backend == CAL_BACKEND_CUDA ? "cuda" : "cpu",
			       cal_calib_backend_describe(cal), t_open);
		st = cal_calib_run(cal, tk, &err);
		if (st < 0)
			break;
		cal_calib_perf(cal, &pf);
		char what[64];
		snprintf(what, sizeof(what), prof_run ? "run %d (profiled)" : "run %d", i + 1);
		print_perf(what, &pf, cal_calib_tokens_processed(cal));
		if (prof_run)
			prof = pf;
		else if (!best.total_s || pf.total_s < best.total_s)
			best = pf;
	}
	if (st < 0)
		goto done;
	uint64_t n_tok = cal_calib_tokens_processed(cal);
	printf("\ncalibration: %.0f tokens/s (best of %d; %llu tokens x %lld layers in %.3f s)\n",
	       (double)n_tok / best.total_s, repeat, (unsigned long long)n_tok,
	       (long long)d->num_layers, best.total_s);
	printf("memory: peak %.2f GiB of back-end memory (budget %.2f GiB%s); weights %.2f GiB "
	       "in all, %.2f GiB the largest layer; %s\n",
	       (double)best.peak_mem / 1073741824.0, (double)best.mem_budget / 1073741824.0,
	       max_mem ? ", --max-gpu-mem" : "", (double)best.model_weight_bytes / 1073741824.0,
	       (double)best.max_layer_bytes / 1073741824.0,
	       best.streamed ? "weights streamed through two arenas" : "weights used from the mapping");
	printf("micro-batches: %zu per layer of up to %llu tokens; hidden states in %s\n", best.n_mb,
	       (unsigned long long)best.mb_tokens,
	       best.hidden_on_host ? "pinned host memory" : "back-end memory");
	printf("staging: %.3f s of host staging, %.3f s not hidden behind compute\n", best.stage_s,
	       best.stage_wait_s);
	if (profile) {
		const struct {
			const char *name;
			double s;
		} ph[] = {
			{"embedding", prof.embed_s},   {"upload wait", prof.upload_s},
			{"attention", prof.attn_s},    {"linear attention (GDN)", prof.linattn_s},
			{"router+sort+gather", prof.router_s},
			{"experts", prof.experts_s},   {"dense mlp", prof.dense_s},
			{"observers", prof.observers_s}, {"read-back", prof.readback_s},
			{"hidden i/o", prof.hidden_io_s}, {"other", prof.other_s},
		};
		printf("\nphases (profiled run, %.3f s with syncs):\n", prof.total_s);
		for (size_t i = 0; i < CAL_ARRAY_LEN(ph); i++)
			printf("  %-24s %8.3f s %5.1f%%\n", ph[i].name, ph[i].s,
			       100.0 * ph[i].s / (prof.total_s > 0 ? prof.total_s : 1));
	}
	if (json_path) {
		FILE *f = fopen(json_path, "w");
		if (!f) {
			st = cal_error_set(&err, CAL_ERR_IO, "%s: cannot write", json_path);
			goto done;
		}
		fprintf(f,
			"{\"tokens\": %llu, \"layers\": %lld, \"seconds\": %.6f, \"tokens_per_s\": %.1f, "
			"\"peak_mem\": %llu, \"mem_budget\": %llu, \"weights\": %llu, "
			"\"mb_tokens\": %llu, \"n_mb\": %zu, \"hidden_on_host\": %d, "
			"\"stage_s\": %.6f, \"stage_wait_s\": %.6f, \"phases\": {\"embed\": %.6f, "
			"\"upload\": %.6f, \"attention\": %.6f, \"linear_attention\": %.6f, \"router\": %.6f, \"experts\": %.6f, "
			"\"dense\": %.6f, \"observers\": %.6f, \"readback\": %.6f, "
			"\"hidden_io\": %.6f, \"other\": %.6f, \"total\": %.6f}}\n",
			(unsigned long long)n_tok, (long long)d->num_layers, best.total_s,
			(double)n_tok / best.total_s, (unsigned long long)best.peak_mem,
			(unsigned long long)best.mem_budget, (unsigned long long)best.model_weight_bytes,
			(unsigned long long)best.mb_tokens, best.n_mb, best.hidden_on_host,
			best.stage_s, best.stage_wait_s, prof.embed_s, prof.upload_s, prof.attn_s, prof.linattn_s,
			prof.router_s, prof.experts_s, prof.dense_s, prof.observers_s, prof.readback_s,
			prof.hidden_io_s, prof.other_s, prof.total_s);
		if (fclose(f) != 0)
			st = cal_error_set(&err, CAL_ERR_IO, "%s: write failed", json_path);
	}
done:
	cal_calib_free(cal);
	cal_calib_tokens_free(tk);
	cal_plan_free(p);
	cal_recipe_free(r);
	cal_model_desc_free(d);
	return cal_cli_finish("bench calibrate", st, &err);
}

int cal_cmd_bench(int argc, char **argv)
{
	struct cal_cli_args ca =
		CAL_CLI_ARGS("bench", argc, argv, "h", "device mib iters threads", NULL);
	struct cal_devices devices = {CAL_DEVICE_AUTO, 0, {0}};
	struct cal_error err = {0};
	int c, ordinal;
	uint64_t mib = 0, iters = 10, threads = 0;

	if (argc > 1 && !strcmp(argv[1], "calibrate"))
		return bench_calibrate(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "quantize"))
		return cal_bench_quantize(argc - 1, argv + 1);
	while ((c = cal_cli_next(&ca)) != -1) {
		switch (c) {
		case 'D':
			if (cal_cli_devices("bench", optarg, &devices) != CAL_EXIT_OK)
				return CAL_EXIT_USAGE;
			break;
		case 'm': case 'i': case 'T':
			if ((c == 'm' && cal_parse_u64("--mib", optarg, 8, 65536, &mib, &err) < 0) ||
			    (c == 'i' && cal_parse_u64("--iters", optarg, 1, 10000, &iters, &err) < 0) ||
			    (c == 'T' && cal_parse_u64("--threads", optarg, 0, 4096, &threads, &err) < 0))
				return cal_cli_fail("bench", &err, CAL_EXIT_USAGE);
			break;
		default: return cal_cli_usage(usage, c);
		}
	}
	if (optind >= argc || strcmp(argv[optind], "numerics") != 0)
		return cal_cli_usage(usage, '?');
	enum cal_backend_kind kind = cal_job_backend_kind(&devices, &ordinal);
	if (!mib)
		mib = kind == CAL_BACKEND_CUDA ? 512 : 64;
	return bench_numerics(kind, ordinal, mib, (int)iters, (unsigned)threads);
}
