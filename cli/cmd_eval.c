/*
 * cmd_eval.c — `calibd eval`: what quantization did to a model.  Opens the
 * source as a job (engine/job.h) with held-out data (--data FILE[:N], as
 * --calib of `calibd calibrate`, or --data-tokens FILE), and runs the
 * original and the exported quantized model side by side (cal_job_eval,
 * docs/eval.md).  Prints a summary on stderr and the report JSON on stdout
 * or into --out.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "engine/eval.h"
#include "engine/job.h"

/* The recipe only sizes the engine's observers (nothing is calibrated). */
static const char eval_recipe[] =
	"metadata: {recipe_type: ptq, description: calibd eval}\n"
	"quantize:\n"
	"  algorithm: max\n"
	"  quant_cfg:\n"
	"    - {quantizer_name: '*', enable: false}\n";

static void eval_usage(FILE *o)
{
	fprintf(o,
		"usage: calibd eval --model SRC --quantized OUT (--data FILE[:N],... | --data-tokens FILE)\n"
		"         [--samples N] [--seq-len S] [--seed K] [--device cpu|cuda[:i]]\n"
		"         [--out FILE] [--micro-batch TOKENS] [--max-gpu-mem BYTES] [--threads N]\n"
		"         [--datasets-file FILE] [--quiet]\n"
		"         [--logits-out FILE] [--logits-orig-out FILE] [--layer-kl-positions N]\n"
		"Runs the source model SRC and the quantized checkpoint OUT (written by calibd\n"
		"from SRC, checked) side by side, layer by layer, over held-out tokens, the\n"
		"quantized one as a serving engine runs it.  Reports the KL divergence of the\n"
		"next-token distributions, top-1 agreement, both perplexities, each layer's KL\n"
		"contribution (logit lens on at most --layer-kl-positions positions, 4096) and\n"
		"the error its quantization adds (routed experts by expert), the worst tokens\n"
		"and any overlap with the calibration set (docs/eval.md).  --samples 128 and\n"
		"--seq-len 512 by default for --data.\n");
}

static void summary(const json_t *r)
{
	const json_t *kl = json_object_get(r, "kl"), *pp = json_object_get(r, "perplexity");
	fprintf(stderr,
		"eval: %lld tokens predicted; KL mean %.6g median %.6g p99 %.6g; top-1 agreement "
		"%.4f; perplexity %.4f -> %.4f\n",
		(long long)json_integer_value(json_object_get(r, "predicted_tokens")),
		json_number_value(json_object_get(kl, "mean")),
		json_number_value(json_object_get(kl, "median")),
		json_number_value(json_object_get(kl, "p99")),
		json_number_value(json_object_get(r, "top1_agreement")),
		json_number_value(json_object_get(pp, "original")),
		json_number_value(json_object_get(pp, "quantized")));
	const json_t *ov = json_object_get(r, "calibration_overlap");
	if (json_integer_value(json_object_get(ov, "sequences")) > 0)
		fprintf(stderr, "eval: warning: %lld of the %lld evaluated sequences are in the "
			"calibration set\n", (long long)json_integer_value(json_object_get(ov, "sequences")),
			(long long)json_integer_value(json_object_get(ov, "of")));
}

int cal_cmd_eval(int argc, char **argv)
{
	const char *out_path = NULL, *data = NULL, *dsfile = NULL, *qdir = NULL, *device = "cpu";
	struct cal_job_opts o = {.combine = CAL_COMBINE_EAGER, .recipe_yaml = eval_recipe,
				 .recipe_display = "<eval>"};
	struct cal_eval_opts eo = {0};
	struct cal_error err = {0};
	enum cal_status st;
	int c, quiet = 0;
	uint64_t v;
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"eval", argc, argv, "h",
		CAL_CLI_RESOURCE_OPTIONS "model quantized data data-tokens samples seq-len seed "
		"device out datasets-file quiet logits-out logits-orig-out layer-kl-positions",
		CAL_CLI_SETS(CAL_CLI_STR("model", &o.model_dir), CAL_CLI_STR("quantized", &qdir),
			     CAL_CLI_STR("data", &data), CAL_CLI_STR("data-tokens", &o.tokens),
			     CAL_CLI_STR("datasets-file", &dsfile), CAL_CLI_STR("device", &device),
			     CAL_CLI_STR("out", &out_path),
			     CAL_CLI_STR("logits-out", &eo.logits_out),
			     CAL_CLI_STR("logits-orig-out", &eo.logits_orig_out),
			     CAL_CLI_FLAG("quiet", &quiet), CAL_CLI_JOB_NUMBERS(&o)));
	while ((c = cal_cli_next(&ca)) != -1) {
		switch (c) {
		case 'K':
			if (cal_cli_parse_u64(optarg, &v) < 0) {
				fprintf(stderr, "calibd eval: bad value '%s' for --layer-kl-positions\n",
					optarg);
				return CAL_EXIT_USAGE;
			}
			eo.layer_kl_positions = v;
			break;
		default: return cal_cli_usage(eval_usage, c);
		}
	}
	if (!cal_cli_one_of("eval", data, "data", o.tokens, "data-tokens") || !o.model_dir ||
	    !qdir || optind != argc)
		return cal_cli_usage(eval_usage, '?');
	if (data && !o.samples)
		o.samples = 128;
	struct cal_cli_data dd;
	int rc = cal_cli_job_data("eval", device, data, dsfile, &o, &dd, &st, &err);
	if (rc != CAL_EXIT_OK)
		return rc;
	struct cal_job *job = NULL;
	json_t *rep = NULL;
	if (st >= 0)
		st = cal_job_open(&o, CAL_JOB_OPEN_FOR(CAL_JOB_CALIBRATE), &job, NULL, &err);
	if (st >= 0)
		st = cal_job_eval(job, qdir, &eo, &rep, &err);
	if (st >= 0) {
		if (!quiet)
			summary(rep);
		if (json_dump_file(rep, out_path ? out_path : "/dev/stdout",
				   JSON_INDENT(2) | JSON_SORT_KEYS) < 0)
			st = cal_error_set(&err, CAL_ERR_IO, "%s: write failed",
					   out_path ? out_path : "stdout");
	}
	json_decref(rep);
	cal_job_close(job);
	cal_cli_data_free(&dd, &o);
	return cal_cli_finish("eval", st, &err);
}
