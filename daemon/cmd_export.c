/*
 * cmd_export.c — `calibd export` (a modelopt-compatible checkpoint from a
 * model, a recipe and a stats JSON: re-exports and tests) and
 * `calibd verify` (checks an exported checkpoint as a loader would; with
 * --source, SQNR of every quantized weight).  docs/export.md.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine/export/export.h"
#include "kernels/backend.h"

#include <jansson.h>

static void export_usage(FILE *o)
{
	fprintf(o, "usage: calibd export --model DIR --recipe NAME|FILE --stats FILE --out DIR\n"
		   "                     [--device cpu|cuda] [--div recip|exact]\n"
		   "                     [--per-expert-input-amax] [--shard-bytes N]\n"
		   "Writes a modelopt-compatible quantized checkpoint into DIR (which must not\n"
		   "exist; published atomically) using the amax of FILE (docs/export.md).\n"
		   "--div exact reproduces modelopt run on CPU; the default reproduces its GPU run.\n"
		   "Exit codes: 0 ok, 2 usage, 3 bad input, 4 no disk space, 5 device, 1 other.\n");
}

static enum cal_status open_backend(const char *dev, struct cal_backend **be,
				    struct cal_error *err)
{
	enum cal_backend_kind k = CAL_BACKEND_CPU;
	if (dev && strncmp(dev, "cuda", 4) && cal_backend_kind_from_name(dev, &k) < 0)
		return cal_error_set(err, CAL_ERR_INVALID, "unknown device '%s' (cpu or cuda)", dev);
	if (dev && !strncmp(dev, "cuda", 4))
		k = CAL_BACKEND_CUDA;
	struct cal_backend_opts bo = {0};
	if (dev && !strncmp(dev, "cuda:", 5))
		bo.cuda_device = atoi(dev + 5);
	return cal_backend_init(k, &bo, be, err);
}

int cal_cmd_export(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, NULL, 'm'},
		{"recipe", required_argument, NULL, 'r'},
		{"stats", required_argument, NULL, 's'},
		{"out", required_argument, NULL, 'o'},
		{"device", required_argument, NULL, 'D'},
		{"div", required_argument, NULL, 'v'},
		{"per-expert-input-amax", no_argument, NULL, 'p'},
		{"shard-bytes", required_argument, NULL, 'b'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *model = NULL, *recipe = NULL, *stats = NULL, *out = NULL, *dev = NULL;
	struct cal_export_opts eo = {0};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:r:s:o:D:v:pb:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'r': recipe = optarg; break;
		case 's': stats = optarg; break;
		case 'o': out = optarg; break;
		case 'D': dev = optarg; break;
		case 'v':
			if (!strcmp(optarg, "exact"))
				eo.div = CAL_DIV_EXACT;
			else if (!strcmp(optarg, "recip"))
				eo.div = CAL_DIV_RECIP;
			else {
				export_usage(stderr);
				return CAL_EXIT_USAGE;
			}
			break;
		case 'p': eo.per_expert_input_amax = 1; break;
		case 'b': eo.max_shard_bytes = strtoull(optarg, NULL, 10); break;
		case 'h': export_usage(stdout); return CAL_EXIT_OK;
		default: export_usage(stderr); return CAL_EXIT_USAGE;
		}
	}
	if (!model || !recipe || !stats || !out || optind != argc) {
		export_usage(stderr);
		return CAL_EXIT_USAGE;
	}
	struct cal_error err = {0};
	struct cal_stats *s = NULL;
	struct cal_backend *be = NULL;
	char *report = NULL;
	eo.model_dir = model;
	eo.out_dir = out;
	eo.recipe_name = recipe;
	enum cal_status st = cal_stats_load(stats, &s, &err);
	if (st >= 0)
		st = open_backend(dev, &be, &err);
	if (st >= 0)
		st = cal_export_run(recipe, s, be, &eo, &report, &err);
	if (st < 0)
		fprintf(stderr, "calibd export: %s\n", cal_error_msg(&err));
	else
		printf("exported %s\n", out);
	free(report);
	cal_backend_free(be);
	cal_stats_free(s);
	cal_error_clear(&err);
	return cal_exit_from_status(st);
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
	static const struct option opts[] = {
		{"source", required_argument, NULL, 's'},
		{"json", no_argument, NULL, 'j'},
		{"device", required_argument, NULL, 'D'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *source = NULL, *dev = NULL;
	int json = 0, c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "s:jD:h", opts, NULL)) != -1) {
		switch (c) {
		case 's': source = optarg; break;
		case 'j': json = 1; break;
		case 'D': dev = optarg; break;
		case 'h': verify_usage(stdout); return CAL_EXIT_OK;
		default: verify_usage(stderr); return CAL_EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		verify_usage(stderr);
		return CAL_EXIT_USAGE;
	}
	struct cal_error err = {0};
	struct cal_backend *be = NULL;
	char *report = NULL;
	enum cal_status st = open_backend(dev, &be, &err);
	if (st >= 0)
		st = cal_export_verify(argv[optind], source, be, &report, &err);
	if (json && report)
		printf("%s\n", report);
	if (st < 0)
		fprintf(stderr, "calibd verify: %s\n", cal_error_msg(&err));
	else if (!json)
		printf("%s: ok\n", argv[optind]);
	if (!json && report && source) {
		json_t *r = json_loads(report, 0, NULL);
		size_t i;
		json_t *w;
		json_array_foreach(json_object_get(r, "weights"), i, w) {
			json_t *db = json_object_get(w, "sqnr_db");
			printf("sqnr %-70s %-12s %s%.2f dB\n",
			       json_string_value(json_object_get(w, "name")),
			       json_string_value(json_object_get(w, "format")),
			       db && json_is_real(db) ? "" : "inf ", db ? json_number_value(db) : 0.0);
		}
		json_decref(r);
	}
	free(report);
	cal_backend_free(be);
	cal_error_clear(&err);
	/* any violation, or an unreadable checkpoint, is bad input (3) */
	return st < 0 && st != CAL_ERR_NOMEM && st != CAL_ERR_DEVICE ? CAL_EXIT_BAD_INPUT :
	       cal_exit_from_status(st);
}
