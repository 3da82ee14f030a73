/*
 * cmd_export.c — `calibd export` (a modelopt-compatible checkpoint from a
 * model, a recipe and a stats JSON: re-exports and tests) and
 * `calibd verify` (checks an exported checkpoint as a loader would; with
 * --source, SQNR of every quantized weight).  Both go through the engine's
 * entry point (engine/job.h).  docs/export.md.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/parse.h"
#include "engine/job.h"

#include <jansson.h>

static void export_usage(FILE *o)
{
	fprintf(o, "usage: calibd export --model DIR (--recipe NAME|FILE | --qformat NAME)\n"
		   "                     --stats FILE --out DIR\n"
		   "                     " CAL_CLI_KV_QFORMAT_SYNOPSIS "\n"
		   "                     [--device cpu|cuda] [--div recip|exact]\n"
		   "                     [--per-expert-input-amax] [--shard-bytes N]\n"
		   "Writes a modelopt-compatible quantized checkpoint into DIR (which must not\n"
		   "exist; published atomically) using the amax of FILE (docs/export.md).\n"
		   "--div exact reproduces modelopt run on CPU; the default reproduces its GPU run.\n");
	cal_cli_kv_qformat_help(o);
	fprintf(o, "Give it the --recipe (or --qformat: hf_ptq.py's names, `calibd recipes`\n"
		   "lists them) and --kv-cache-qformat that `calibd calibrate` had.\n"
		   "Exit codes: 0 ok, 2 usage, 3 bad input, 4 no disk space, 5 device, 1 other.\n");
}

int cal_cmd_export(int argc, char **argv)
{
	const char *stats = NULL, *out = NULL, *dev = "cpu", *qformat = NULL;
	struct cal_job_opts jo = {0};
	struct cal_error perr = {0};
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"export", argc, argv, "m:r:s:o:D:v:pb:h",
		"model recipe stats out device div per-expert-input-amax shard-bytes kv-cache-qformat "
		"qformat",
		CAL_CLI_SETS(CAL_CLI_NEED("model", &jo.model_dir), CAL_CLI_STR("recipe", &jo.recipe),
			     CAL_CLI_STR("qformat", &qformat),
			     CAL_CLI_STR("kv-cache-qformat", &jo.kv_cache_qformat),
			     CAL_CLI_NEED("stats", &stats), CAL_CLI_NEED("out", &out),
			     CAL_CLI_STR("device", &dev),
			     CAL_CLI_FLAG("per-expert-input-amax", &jo.per_expert_input_amax)));
	int c;
	while ((c = cal_cli_next(&ca)) != -1) {
		switch (c) {
		case 'v':
			if (!strcmp(optarg, "exact"))
				jo.div = CAL_DIV_EXACT;
			else if (!strcmp(optarg, "recip"))
				jo.div = CAL_DIV_RECIP;
			else
				return cal_cli_usage(export_usage, '?');
			break;
		case 'b':
			if (cal_parse_size("--shard-bytes", optarg, 0, UINT64_MAX, &jo.max_shard_bytes,
					   &perr) < 0)
				return cal_cli_fail("export", &perr, CAL_EXIT_USAGE);
			break;
		default: return cal_cli_usage(export_usage, c);
		}
	}
	if (optind != argc)
		return cal_cli_usage(export_usage, '?');
	int rq = cal_cli_recipe_or_qformat("export", export_usage, &jo.recipe, qformat);
	if (rq != CAL_CLI_PARSED)
		return rq;
	int rc = cal_cli_devices("export", dev, &jo.devices);
	if (rc != CAL_EXIT_OK)
		return rc;
	struct cal_error err = {0};
	struct cal_stats *s = NULL;
	struct cal_job *job = NULL;
	enum cal_status st = cal_stats_load(stats, &s, &err);
	if (st >= 0)
		st = cal_job_open(&jo, CAL_JOB_OPEN_FOR(CAL_JOB_EXPORT), &job, NULL, &err);
	if (st >= 0)
		st = cal_job_export(job, s, out, NULL, &err);
	if (st >= 0)
		printf("exported %s\n", out);
	cal_job_close(job);
	cal_stats_free(s);
	return cal_cli_finish("export", st, &err);
}

static void verify_usage(FILE *o)
{
	fprintf(o, "usage: calibd verify OUT_DIR [--source DIR] [--json] [--device cpu|cuda]\n"
		   "Checks an exported checkpoint as vLLM / SGLang / TensorRT-LLM read it: tensor\n"
		   "names, dtypes, shapes, every scale present, finite and positive, gate/up\n"
		   "weight_scale_2 equal, hf_quant_config.json and config.json consistent.\n"
		   "With --source, prints the SQNR of every quantized weight against the source.\n"
		   "Exit codes: 0 valid, 3 a violation (the first is named on stderr), 2 usage,\n"
		   "1 other.\n");
}

int cal_cmd_verify(int argc, char **argv)
{
	const char *source = NULL, *dev = "cpu";
	int json = 0;
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"verify", argc, argv, "s:jD:h", "source json device",
		CAL_CLI_SETS(CAL_CLI_STR("source", &source), CAL_CLI_FLAG("json", &json),
			     CAL_CLI_STR("device", &dev)));
	CAL_CLI_PARSE_RET(&ca, verify_usage, 1);
	struct cal_devices devices;
	int rc = cal_cli_devices("verify", dev, &devices);
	if (rc != CAL_EXIT_OK)
		return rc;
	struct cal_error err = {0};
	json_t *report = NULL;
	enum cal_status st = cal_job_verify(argv[optind], source, &devices, &report, &err);
	if (json && report) {
		json_dumpf(report, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
		putchar('\n');
	}
	if (st < 0)
		fprintf(stderr, "calibd verify: %s\n", cal_error_msg(&err));
	else if (!json)
		printf("%s: ok\n", argv[optind]);
	if (!json && report && source) {
		size_t i;
		json_t *w;
		json_array_foreach(json_object_get(report, "weights"), i, w) {
			json_t *db = json_object_get(w, "sqnr_db");
			printf("sqnr %-70s %-12s %s%.2f dB\n",
			       json_string_value(json_object_get(w, "name")),
			       json_string_value(json_object_get(w, "format")),
			       db && json_is_real(db) ? "" : "inf ", db ? json_number_value(db) : 0.0);
		}
	}
	json_decref(report);
	cal_error_clear(&err);
	/* any violation, or an unreadable checkpoint, is bad input (3) */
	return st < 0 && st != CAL_ERR_NOMEM && st != CAL_ERR_DEVICE ? CAL_EXIT_BAD_INPUT :
	       cal_exit_from_status(st);
}
