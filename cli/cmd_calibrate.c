/*
 * cmd_calibrate.c — `calibd calibrate`: opens the job (engine/job.h: a
 * checkpoint, a recipe and calibration data — a token file, or datasets
 * through the model's tokenizer, as `calibd quantize`), runs the calibration
 * engine (engine/calib.h) on it, and writes the statistics JSON (the amax
 * every enabled quantizer gets, the per-expert amax and token counts of
 * every MoE layer).  A progress line per layer on stderr (a bar when stderr
 * is a terminal).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "common/parse.h"
#include "engine/calib.h"
#include "engine/job.h"

static void calibrate_usage(FILE *o)
{
	fprintf(o,
		"usage: calibd calibrate --model DIR (--recipe NAME|FILE | --qformat NAME)\n"
		"         " CAL_CLI_KV_QFORMAT_SYNOPSIS "\n"
		"         (--calib-tokens FILE | --calib FILE[:N],... [--samples N] [--seq-len S]\n"
		"          [--seed K])\n"
		"         [--device cpu|cuda[:i]] [--stats-out FILE] [--pad-like-modelopt]\n"
		"         [--pad-id N] [--per-expert-input-amax] [--moe-calib-experts-ratio R]\n"
		"         [--max-gpu-mem BYTES] [--micro-batch TOKENS] [--threads N] [--ranks N]\n"
		"         [--combine eager|f32] [--recipes-dir DIR] [--datasets-file FILE] [--quiet]\n"
		"Runs the model's forward pass over the calibration tokens (JSONL lines\n"
		"{\"input_ids\": [...]} or one {\"input_ids\": [[...], ...]}), or over datasets\n"
		"tokenized with the model's tokenizer.json (JSONL text/messages/input_ids or\n"
		"text files; --samples 512 and --seq-len 512 by default, --seed K > 0 samples\n"
		"in a seeded order), and records what the recipe's quantizers need.  Writes the statistics JSON to --stats-out\n"
		"(default: stdout).  A --calib entry NAME[:N] names a dataset of the catalog of\n"
		"--datasets-file or $CALIBD_DATASETS_FILE (the `datasets:` map of a calibd.yaml).\n"
		"docs/calibration.md explains the options.\n");
	cal_cli_kv_qformat_help(o);
	fprintf(o, "--qformat takes hf_ptq.py's --qformat names instead of a recipe (`calibd\n"
		   "recipes` lists them).  Give `calibd export` the same --recipe (or --qformat)\n"
		   "and --kv-cache-qformat.\n");
}

struct progress {
	int tty, quiet;
};

static void on_progress(void *ctx, int32_t layer, int32_t n_layers, double tps)
{
	struct progress *p = ctx;
	if (p->quiet)
		return;
	if (p->tty) {
		int w = 30, fill = (int)((int64_t)(layer + 1) * w / (n_layers ? n_layers : 1));
		fprintf(stderr, "\r[%.*s%*s] layer %d/%d  %.0f token-layers/s", fill,
			"##############################", w - fill, "", layer + 1, n_layers, tps);
		if (layer + 1 == n_layers)
			fputc('\n', stderr);
	} else {
		fprintf(stderr, "calibrate: layer %d/%d done, %.0f token-layers/s\n", layer + 1, n_layers,
			tps);
	}
	fflush(stderr);
}

/* The engine's statistics JSON plus "calibration" {samples, seq_len, tokens,
 * sequence_hashes} (what `calibd export --stats` puts in its report). */
static char *stats_with_calibration(const struct cal_calib *cal, const struct cal_token_info *ti,
				    const struct cal_calib_tokens *tk)
{
	json_t *j = cal_calib_stats(cal);
	char *hashes = cal_calib_tokens_hashes(tk);
	if (!j || !hashes) {
		json_decref(j);
		free(hashes);
		return NULL;
	}
	json_object_set_new(j, "calibration", json_pack("{s:I, s:I, s:I, s:s}", "samples",
		(json_int_t)ti->samples, "seq_len", (json_int_t)ti->seq_len, "tokens",
		(json_int_t)ti->tokens, "sequence_hashes", hashes));
	free(hashes);
	char *out = cal_calib_stats_dump(j);
	json_decref(j);
	return out;
}

int cal_cmd_calibrate(int argc, char **argv)
{
	const char *out_path = NULL, *calib = NULL, *dsfile = NULL, *qformat = NULL;
	const char *device = "cpu";
	struct cal_job_opts o = {.combine = CAL_COMBINE_EAGER};
	struct progress pr = {isatty(2), 0};
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"calibrate", argc, argv, "h",
		CAL_CLI_CALIB_OPTIONS CAL_CLI_RESOURCE_OPTIONS
		"stats-out pad-like-modelopt pad-id combine recipes-dir kv-cache-qformat qformat",
		CAL_CLI_SETS(CAL_CLI_STR("model", &o.model_dir), CAL_CLI_STR("recipe", &o.recipe),
			     CAL_CLI_STR("qformat", &qformat),
			     CAL_CLI_STR("kv-cache-qformat", &o.kv_cache_qformat),
			     CAL_CLI_STR("calib-tokens", &o.tokens), CAL_CLI_STR("calib", &calib),
			     CAL_CLI_STR("datasets-file", &dsfile), CAL_CLI_STR("device", &device),
			     CAL_CLI_STR("stats-out", &out_path),
			     CAL_CLI_FLAG("pad-like-modelopt", &o.pad_like_modelopt),
			     CAL_CLI_FLAG("per-expert-input-amax", &o.per_expert_input_amax),
			     CAL_CLI_STR("recipes-dir", &o.recipe_opts.builtin_dir),
			     CAL_CLI_FLAG("quiet", &pr.quiet), CAL_CLI_JOB_NUMBERS(&o)));
	int c;
	uint64_t v;
	while ((c = cal_cli_next(&ca)) != -1) {
		switch (c) {
		case 'P':
			if (cal_cli_parse_u64(optarg, &v) < 0 || v > INT64_MAX) {
				fprintf(stderr, "calibd calibrate: bad --pad-id '%s'\n", optarg);
				return CAL_EXIT_USAGE;
			}
			o.pad_id = (int64_t)v;
			o.has_pad_id = 1;
			break;
		case 'R': {
			if (cal_parse_f64("--moe-calib-experts-ratio", optarg, 0, 1,
					  &o.moe_calib_experts_ratio, NULL) < 0 ||
			    o.moe_calib_experts_ratio == 0) {
				fprintf(stderr, "calibd calibrate: --moe-calib-experts-ratio '%s' not in (0, 1]\n",
					optarg);
				return CAL_EXIT_USAGE;
			}
			break;
		}
		case 'c':
			if (!strcmp(optarg, "eager"))
				o.combine = CAL_COMBINE_EAGER;
			else if (!strcmp(optarg, "f32"))
				o.combine = CAL_COMBINE_F32;
			else {
				fprintf(stderr, "calibd calibrate: --combine is eager or f32\n");
				return CAL_EXIT_USAGE;
			}
			break;
		default: return cal_cli_usage(calibrate_usage, c);
		}
	}
	if (!cal_cli_one_of("calibrate", calib, "calib", o.tokens, "calib-tokens") ||
	    !o.model_dir || optind != argc)
		return cal_cli_usage(calibrate_usage, '?');
	int rq = cal_cli_recipe_or_qformat("calibrate", calibrate_usage, &o.recipe, qformat);
	if (rq != CAL_CLI_PARSED)
		return rq;
	struct cal_error err = {0};
	struct cal_cli_data data;
	enum cal_status st;
	int rc = cal_cli_job_data("calibrate", device, calib, dsfile, &o, &data, &st, &err);
	if (rc != CAL_EXIT_OK)
		return rc;

	struct cal_job *job = NULL;
	struct cal_calib_tokens *tk = NULL;
	struct cal_calib *cal = NULL;
	struct cal_token_info ti = {0};
	char *json = NULL;
	if (st >= 0)
		st = cal_job_open(&o, CAL_JOB_OPEN_FOR(CAL_JOB_CALIBRATE), &job, NULL, &err);
	if (st >= 0)
		st = cal_job_tokens(job, &tk, &ti, &err);
	if (st >= 0) {
		struct cal_job_hooks hooks = {.progress = on_progress, .ctx = &pr};
		st = cal_job_calib_open(job, &hooks, &cal, &err);
	}
	if (st >= 0) {
		if (!pr.quiet)
			fprintf(stderr, "calibrate: %s, %zu sequences, %zu tokens, %lld layers, %s\n",
				cal_job_model(job)->model_type, tk->n, tk->n_tokens,
				(long long)cal_job_model(job)->num_layers, cal_job_device(job));
		st = cal_calib_run(cal, tk, &err);
	}
	if (st >= 0) {
		json = stats_with_calibration(cal, &ti, tk);
		if (!json)
			st = cal_error_set(&err, CAL_ERR_NOMEM, "statistics JSON: out of memory");
	}
	if (st >= 0) {
		FILE *f = out_path ? fopen(out_path, "w") : stdout;
		if (!f) {
			st = cal_error_set(&err, CAL_ERR_IO, "%s: %s", out_path, strerror(errno));
		} else {
			int bad = fputs(json, f) < 0 || fputc('\n', f) < 0;
			if (out_path)
				bad |= fclose(f) != 0;
			else
				bad |= fflush(f) != 0;
			if (bad)
				st = cal_error_set(&err, CAL_ERR_IO, "%s: write failed: %s",
						   out_path ? out_path : "stdout", strerror(errno));
		}
	}
	free(json);
	cal_calib_free(cal);
	cal_calib_tokens_free(tk);
	cal_job_close(job);
	cal_cli_data_free(&data, &o);
	return cal_cli_finish("calibrate", st, &err);
}
