/*
 * recipe_list.c — listing the recipe tree (`calibd recipes`, GET
 * /v1/recipes): every recipe under general/, huggingface/ and models/ by
 * name with its description, or the error that loading it gives
 * (docs/recipes.md).
 */
#include "recipe.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "recipe_import.h"

struct listing {
	struct cal_recipe_info *v;
	size_t n, cap;
};

static int info_cmp(const void *a, const void *b)
{
	return strcmp(((const struct cal_recipe_info *)a)->name,
		      ((const struct cal_recipe_info *)b)->name);
}

static enum cal_status walk(const char *root, const char *rel, struct listing *out, int depth,
			    struct cal_error *err)
{
	if (depth > 8)
		return CAL_OK;
	char *dir = rel[0] ? cat3(root, "/", rel) : strdup(root);
	if (!dir)
		return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
	DIR *d = opendir(dir);
	if (!d) {
		free(dir);
		return CAL_OK;
	}
	enum cal_status st = CAL_OK;
	struct dirent *de;
	while ((de = readdir(d)) && st >= 0) {
		if (de->d_name[0] == '.')
			continue;
		char *r = rel[0] ? cat3(rel, "/", de->d_name) : strdup(de->d_name);
		char *full = r ? cat3(root, "/", r) : NULL;
		if (!r || !full) {
			free(r);
			free(full);
			st = cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
			break;
		}
		if (is_dir(full)) {
			st = walk(root, r, out, depth + 1, err);
		} else if (has_yaml_suffix(de->d_name)) {
			struct cal_recipe_opts o = {.builtin_dir = root, .no_filesystem = 1};
			struct cal_recipe *rec = NULL;
			struct cal_error e2 = {0};
			char *name = strndup(r, strlen(r) - (r[strlen(r) - 4] == '.' ? 4 : 5));
			enum cal_status ls = name ? cal_recipe_load(name, &o, &rec, &e2) : CAL_ERR_NOMEM;
			if (out->n == out->cap) {
				size_t nc = out->cap ? out->cap * 2 : 32;
				struct cal_recipe_info *nv = realloc(out->v, nc * sizeof(*nv));
				if (!nv) {
					free(name);
					cal_recipe_free(rec);
					cal_error_clear(&e2);
					free(r);
					free(full);
					st = cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
					break;
				}
				out->v = nv;
				out->cap = nc;
			}
			char *desc = NULL;
			if (ls >= 0)
				desc = strdup(rec->description);
			else if (asprintf(&desc, "(error: %s)", cal_error_msg(&e2)) < 0)
				desc = NULL;
			if (name && desc) {
				out->v[out->n].name = name;
				out->v[out->n].description = desc;
				out->n++;
			} else {
				free(name);
				free(desc);
				st = cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
			}
			cal_recipe_free(rec);
			cal_error_clear(&e2);
		}
		free(r);
		free(full);
	}
	closedir(d);
	free(dir);
	return st;
}

enum cal_status cal_recipe_list(const char *dir, struct cal_recipe_info **ret, size_t *n,
				struct cal_error *err)
{
	struct listing out = {0};
	static const char *const tops[] = {"general", "huggingface", "models"};
	*ret = NULL;
	*n = 0;
	if (!is_dir(dir))
		return cal_error_set(err, CAL_ERR_NOTFOUND, "%s: recipe directory not found", dir);
	for (size_t i = 0; i < CAL_ARRAY_LEN(tops); i++) {
		enum cal_status st = walk(dir, tops[i], &out, 0, err);
		if (st < 0) {
			cal_recipe_list_free(out.v, out.n);
			return st;
		}
	}
	if (out.n)
		qsort(out.v, out.n, sizeof(*out.v), info_cmp);
	*ret = out.v;
	*n = out.n;
	return CAL_OK;
}

void cal_recipe_list_free(struct cal_recipe_info *list, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(list[i].name);
		free(list[i].description);
	}
	free(list);
}
