/*
 * job_api.c — the recipe and output facts the HTTP API validates a
 * submission with, before there is a job (engine/job.h "what the API asks
 * before there is a job"): api/ reaches the engine through job.h only.
 */
#include "engine/job.h"

#include <string.h>

#include "engine/recipe/ytree.h"

const char *cal_job_recipe_tree(void)
{
	return cal_recipe_builtin_dir();
}

enum cal_status cal_job_recipe_list(const char *dir, struct cal_recipe_info **ret, size_t *ret_n,
				    struct cal_error *err)
{
	return cal_recipe_list(dir, ret, ret_n, err);
}

void cal_job_recipe_list_free(struct cal_recipe_info *list, size_t n)
{
	cal_recipe_list_free(list, n);
}

enum cal_status cal_job_recipe_load(const char *dir, const char *name, struct cal_recipe **ret,
				    struct cal_error *err)
{
	struct cal_recipe_opts o = {.builtin_dir = dir, .no_filesystem = 1};
	return cal_recipe_load(name, &o, ret, err);
}

void cal_job_recipe_free(struct cal_recipe *r)
{
	cal_recipe_free(r);
}

char *cal_job_plan_json(const struct cal_job *j)
{
	return cal_plan_json(cal_job_plan(j), cal_job_recipe_name(j));
}

/* An import of an inline recipe: relative, without "..": inside the tree. */
static int import_path_ok(const char *p)
{
	if (!*p || p[0] == '/')
		return 0;
	for (const char *s = p; *s;) {
		size_t n = strcspn(s, "/");
		if (n == 2 && s[0] == '.' && s[1] == '.')
			return 0;
		s += n;
		if (*s == '/')
			s++;
	}
	return 1;
}

/* Every scalar value under n (an `imports:` value) must be import_path_ok.
 * Returns the offending scalar, or NULL. */
static const char *bad_import(const struct cal_ynode *n, int depth)
{
	if (depth > 8)
		return "(imports nested too deeply)";
	if (n->kind == CAL_Y_SEQ || n->kind == CAL_Y_MAP) {
		size_t step = n->kind == CAL_Y_MAP ? 2 : 1;
		for (size_t i = step - 1; i < n->n * step; i += step) {
			const char *b = bad_import(n->items[i], depth + 1);
			if (b)
				return b;
		}
		return NULL;
	}
	return n->str && !import_path_ok(n->str) ? n->str : NULL;
}

/* The text is read by the recipe loader's own bounded reader
 * (engine/recipe/ytree.h: size, depth and node limits enforced while
 * libyaml's events arrive, so hostile nesting costs microseconds). */
enum cal_status cal_job_recipe_imports_check(const char *yaml, struct cal_error *err)
{
	struct cal_ydocs docs;
	struct cal_error e = {0};
	enum cal_status st = cal_ytree_parse("<inline>", yaml, strlen(yaml), NULL, &docs, &e);
	cal_error_clear(&e);
	if (st == CAL_ERR_NOMEM)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	if (st)
		return CAL_OK;
	st = CAL_OK;
	for (size_t i = 0; i < docs.n && st == CAL_OK; i++) {
		const struct cal_ynode *imports = cal_ymap_get(docs.doc[i], "imports");
		const char *bad = imports ? bad_import(imports, 0) : NULL;
		if (bad)
			st = cal_error_set(err, CAL_ERR_INVALID,
					   "import '%.200s' must be a relative path inside the "
					   "recipe tree (no leading '/', no '..')", bad);
	}
	cal_ydocs_clear(&docs);
	return st;
}
