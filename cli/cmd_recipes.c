/*
 * cmd_recipes.c — `calibd recipes [--recipes-dir DIR] [--json]`: lists the
 * built-in recipes (general/, huggingface/, models/ of the recipe tree) with
 * their descriptions.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "engine/recipe/qformat.h"
#include "engine/recipe/recipe.h"

static void recipes_usage(FILE *o)
{
	fprintf(o, "usage: calibd recipes [--recipes-dir DIR] [--json]\n"
		   "Lists the built-in recipes (tree: --recipes-dir, else $" CAL_RECIPES_ENV
		   ", else the installed one), then modelopt hf_ptq.py's --qformat names\n"
		   "(`calibd quantize --qformat`) with the recipe each runs or why it is refused.\n"
		   "Last the --kv_cache_qformat names (--kv-cache-qformat of `calibd quantize`,\n"
		   "calibrate, export and plan) with the KV-cache unit each appends.\n"
		   "--json: {\"recipes\": [{name, description}], \"qformats\": [{name, recipe |\n"
		   "refused}], \"kv_cache_qformats\": [{name, unit (null: none)}]}.\n");
}

int cal_cmd_recipes(int argc, char **argv)
{
	const char *dir = NULL;
	int json = 0;
	struct cal_cli_args ca = CAL_CLI_ARGS(
		"recipes", argc, argv, "d:jh", "recipes-dir json",
		CAL_CLI_SETS(CAL_CLI_STR("recipes-dir", &dir), CAL_CLI_FLAG("json", &json)));
	CAL_CLI_PARSE_RET(&ca, recipes_usage, 0);
	if (!dir)
		dir = cal_recipe_builtin_dir();
	struct cal_error err = {0};
	struct cal_recipe_info *list = NULL;
	size_t n = 0;
	enum cal_status st = cal_recipe_list(dir, &list, &n, &err);
	if (st < 0)
		return cal_cli_finish("recipes", st, &err);
	size_t nq = 0, nk = 0;
	const struct cal_qformat *q = cal_qformat_list(&nq);
	const struct cal_kv_qformat *kq = cal_kv_qformat_list(&nk);
	if (json) {
		json_t *a = json_array(), *qa = json_array();
		for (size_t i = 0; i < n; i++)
			json_array_append_new(a, json_pack("{s:s, s:s}", "name", list[i].name,
							   "description", list[i].description));
		for (size_t i = 0; i < nq; i++)
			json_array_append_new(qa, json_pack("{s:s, s:s}", "name", q[i].name,
							    q[i].recipe ? "recipe" : "refused",
							    q[i].recipe ? q[i].recipe : q[i].reason));
		json_t *ka = json_array();
		for (size_t i = 0; i < nk; i++)
			json_array_append_new(ka, json_pack("{s:s, s:o}", "name", kq[i].name, "unit",
							    kq[i].unit ? json_string(kq[i].unit)
								       : json_null()));
		json_t *doc = json_pack("{s:o, s:o, s:o}", "recipes", a, "qformats", qa,
					"kv_cache_qformats", ka);
		char *s = json_dumps(doc, JSON_INDENT(1));
		if (s)
			printf("%s\n", s);
		free(s);
		json_decref(doc);
	} else {
		printf("built-in recipes (%s):\n", dir);
		for (size_t i = 0; i < n; i++)
			printf("  %-44s %s\n", list[i].name, list[i].description);
		printf("\nhf_ptq.py --qformat names (calibd quantize --qformat; KV cache: hf_ptq's "
		       "default fp8_cast):\n");
		for (size_t i = 0; i < nq; i++)
			printf("  %-20s %s%s\n", q[i].name, q[i].recipe ? "" : "refused: ",
			       q[i].recipe ? q[i].recipe : q[i].reason);
		printf("\nhf_ptq.py --kv_cache_qformat names (--kv-cache-qformat of calibd quantize, "
		       "calibrate, export, plan; appended over the recipe's KV cache):\n");
		for (size_t i = 0; i < nk; i++)
			printf("  %-20s %s\n", kq[i].name, kq[i].unit ? kq[i].unit
								: "(KV-cache quantizers disabled)");
	}
	cal_recipe_list_free(list, n);
	return CAL_EXIT_OK;
}
