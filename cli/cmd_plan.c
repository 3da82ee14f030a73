/*
 * cmd_plan.c — `calibd plan --model DIR (--recipe NAME|FILE | --qformat
 * NAME) [--kv-cache-qformat NAME] [--json] [--recipes-dir DIR]`: resolves a
 * recipe (hf_ptq's KV-cache format appended, cli.h) against a model's
 * config.json and shows what would be quantized, layer range by layer
 * range, with bytes before and after; --json lists every quantizer with
 * its resolved attributes.  Reads config.json only: no tensor data, no GPU
 * (the job of engine/job.h opened without checkpoint and back end).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine/job.h"

static void plan_usage(FILE *o)
{
	fprintf(o, "usage: calibd plan --model DIR (--recipe NAME|FILE | --qformat NAME)\n"
		   "                   " CAL_CLI_KV_QFORMAT_SYNOPSIS " [--json] [--recipes-dir DIR]\n"
		   "Shows what a recipe quantizes in a model (reads DIR/config.json only).\n"
		   "NAME is a built-in recipe (`calibd recipes` lists them), FILE a YAML recipe;\n"
		   "--qformat takes hf_ptq.py's --qformat names (listed there too).\n"
		   "The built-in tree is --recipes-dir, else $" CAL_RECIPES_ENV ", else the\n"
		   "installed one.\n");
	cal_cli_kv_qformat_help(o);
}

int cal_cmd_plan(int argc, char **argv)
{
	struct cal_job_opts o = {0};
	int json = 0;
	const char *qformat = NULL;
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"plan", argc, argv, "m:r:jd:h", "model recipe json recipes-dir kv-cache-qformat qformat",
		CAL_CLI_SETS(CAL_CLI_NEED("model", &o.model_dir), CAL_CLI_STR("recipe", &o.recipe),
			     CAL_CLI_STR("qformat", &qformat),
			     CAL_CLI_STR("kv-cache-qformat", &o.kv_cache_qformat),
			     CAL_CLI_FLAG("json", &json),
			     CAL_CLI_STR("recipes-dir", &o.recipe_opts.builtin_dir)));
	CAL_CLI_PARSE_RET(&ca, plan_usage, 0);
	int rq = cal_cli_recipe_or_qformat("plan", plan_usage, &o.recipe, qformat);
	if (rq != CAL_CLI_PARSED)
		return rq;
	struct cal_error err = {0};
	struct cal_job *job = NULL;
	char *out = NULL;
	enum cal_status st = cal_job_open(&o, CAL_JOB_OPEN_NO_CHECKPOINT, &job, NULL, &err);
	if (st >= 0) {
		out = json ? cal_plan_json(cal_job_plan(job), o.recipe)
			   : cal_plan_text(cal_job_plan(job), o.recipe);
		if (!out)
			st = cal_error_set(&err, CAL_ERR_NOMEM, "plan: out of memory");
	}
	if (st >= 0)
		fputs(out, stdout), fputs(json ? "\n" : "", stdout);
	free(out);
	cal_job_close(job);
	return cal_cli_finish("plan", st, &err);
}
