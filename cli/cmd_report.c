/*
 * cmd_report.c — `calibd report OUT --html FILE`: the report page
 * (api/report_html.c, docs/eval.md) of a quantized checkpoint from its
 * calibd_report.json.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/report_html.h"
#include "cli.h"
#include "common/util.h"

static void report_usage(FILE *o)
{
	fprintf(o, "usage: calibd report OUT_DIR --html FILE [--eval EVAL.json]\n"
		   "Writes the report page of the quantized checkpoint OUT_DIR (written by calibd):\n"
		   "one self-contained HTML file with inline SVG plots of the per-layer weight\n"
		   "SQNR, the per-layer error of an evaluation (calibd eval, a job's evaluate),\n"
		   "the calibration tokens per expert and the calibration throughput\n"
		   "(docs/eval.md).  FILE '-' is stdout.  --eval: a `calibd eval --out` report\n"
		   "to show (a job's evaluation is in calibd_report.json already).\n");
}

int cal_cmd_report(int argc, char **argv)
{
	const char *html_path = NULL, *eval_path = NULL;
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"report", argc, argv, "h", "html eval",
		CAL_CLI_SETS(CAL_CLI_NEED("html", &html_path), CAL_CLI_STR("eval", &eval_path)));
	CAL_CLI_PARSE_RET(&ca, report_usage, 1);
	const char *dir = argv[optind];
	struct cal_error err = {0};
	char *path = cal_path_join(dir, "calibd_report.json"), *text = NULL, *html = NULL;
	size_t len = 0;
	json_t *rep = NULL;
	json_error_t je;
	enum cal_status st = path ? cal_read_file(path, 256u << 20, &text, &len, &err)
				  : cal_error_set(&err, CAL_ERR_NOMEM, "out of memory");
	if (st >= 0)
		rep = json_loadb(text, len, 0, &je); /* json_is_object() evaluates twice */
	if (st >= 0 && !json_is_object(rep))
		st = cal_error_set(&err, CAL_ERR_FORMAT, "%s:%d: %s", path, je.line, je.text);
	if (st >= 0 && eval_path) {
		json_t *ev = json_load_file(eval_path, 0, &je);
		if (!json_is_object(ev))
			st = cal_error_set(&err, CAL_ERR_FORMAT, "%s:%d: %s", eval_path, je.line, je.text);
		else
			json_object_set(rep, "evaluation", ev);
		json_decref(ev);
	}
	if (st >= 0 && !(html = cal_report_html(rep, dir)))
		st = cal_error_set(&err, CAL_ERR_NOMEM, "out of memory");
	if (st >= 0) {
		FILE *f = strcmp(html_path, "-") ? fopen(html_path, "w") : stdout;
		int bad = !f || fputs(html, f) < 0;
		if (f && f != stdout)
			bad |= fclose(f) != 0;
		if (bad)
			st = cal_error_set(&err, CAL_ERR_IO, "%s: cannot write", html_path);
	}
	json_decref(rep);
	free(html);
	free(text);
	free(path);
	return cal_cli_finish("report", st, &err);
}
