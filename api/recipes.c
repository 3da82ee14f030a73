/*
 * recipes.c — the /v1/recipes and /v1/plan resources, and the real recipe
 * and model checks of a job submission (recipes.h).
 *
 * Recipe names resolve in the daemon's recipe tree only (recipes_dir, else
 * the built-in tree; never the daemon's working directory), and the
 * imports of an inline recipe must be relative paths inside that tree, so
 * a client cannot make the daemon read other files.  Loading a recipe,
 * parsing config.json and building a plan are CPU-only, take milliseconds
 * and are bounded (file sizes and node counts by engine/recipe, plan size
 * by CAL_API_PLAN_MAX_QUANTIZERS, concurrency by CAL_API_PLAN_SLOTS), so
 * they run on the HTTP thread that asked: no GPU, no tensor data, no
 * worker.  Error messages have the recipe tree's path removed.  The reads
 * are confined (common/confine.h): recipe files beneath the recipe tree,
 * config.json beneath the model roots, so a link leading out of them is
 * refused and no byte of an outside file reaches an error message.
 */
#include "api/recipes.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "api/jobspec.h"
#include "api/routes.h"
#include "common/confine.h"
#include "common/util.h"
#include "engine/job.h"

#define RECIPE_TEXT_MAX (1024 * 1024)

/* ---- helpers ---------------------------------------------------------- */

/* The recipe tree of this configuration (realpath when it resolves;
 * heap, caller frees). */
static char *tree_dir(const struct cal_config *c)
{
	const char *d = c->recipes_dir ? c->recipes_dir : cal_job_recipe_tree();
	char *real = realpath(d, NULL);
	return real ? real : strdup(d);
}

/* Sets prob from an engine error: "<what>: <message without the tree>". */
static enum cal_api_err from_error(struct cal_api_problem *prob, enum cal_api_err ae, const char *field,
				   const char *what, struct cal_error *e, const char *dir)
{
	char *m = cal_str_scrub_dir(cal_error_msg(e), dir ? dir : "");
	cal_api_problem_set(prob, ae, field, "%s%s%s", what ? what : "", what ? ": " : "", m ? m : cal_error_msg(e));
	free(m);
	cal_error_clear(e);
	return ae;
}

/* Takes one of the CAL_API_PLAN_SLOTS (waits up to CAL_API_PLAN_WAIT_S). */
static int slot_take(struct cal_daemon *d)
{
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += CAL_API_PLAN_WAIT_S;
	pthread_mutex_lock(&d->mu);
	while (d->plans_active >= CAL_API_PLAN_SLOTS) {
		if (pthread_cond_timedwait(&d->changed, &d->mu, &dl) == ETIMEDOUT) {
			pthread_mutex_unlock(&d->mu);
			return -1;
		}
	}
	d->plans_active++;
	pthread_mutex_unlock(&d->mu);
	return 0;
}

static void slot_give(struct cal_daemon *d)
{
	pthread_mutex_lock(&d->mu);
	d->plans_active--;
	pthread_cond_broadcast(&d->changed);
	pthread_mutex_unlock(&d->mu);
}

/* Refuses an inline recipe whose top-level `imports:` name a path outside
 * the recipe tree (engine/job.h cal_job_recipe_imports_check); YAML errors
 * are left to the recipe loader, which reports them with line and column. */
static enum cal_api_err inline_imports_ok(const char *text, const char *field, struct cal_api_problem *prob)
{
	struct cal_error e = {0};
	enum cal_status st = cal_job_recipe_imports_check(text, &e);
	if (st == CAL_ERR_NOMEM) {
		cal_error_clear(&e);
		return cal_api_problem_set(prob, CAL_API_ERR_INTERNAL, NULL, "out of memory");
	}
	if (st < 0)
		return from_error(prob, CAL_API_ERR_INVALID_RECIPE, field, field, &e, NULL);
	return CAL_API_OK;
}

/* A recipe that did not load (named `name`, or inline when yaml): prob. */
static enum cal_api_err recipe_problem(enum cal_status st, struct cal_error *e, const char *name, int yaml,
				       const char *field, const char *dir, struct cal_api_problem *prob)
{
	if (st == CAL_ERR_NOMEM || st == CAL_ERR_IO)
		return from_error(prob, CAL_API_ERR_INTERNAL, NULL, "recipe", e, dir);
	if (st == CAL_ERR_NOTFOUND && !yaml) {
		cal_error_clear(e);
		return cal_api_problem_set(prob, CAL_API_ERR_UNKNOWN_RECIPE, field,
					   "recipe '%s' is not a known recipe (GET /v1/recipes lists them)", name);
	}
	return from_error(prob, CAL_API_ERR_INVALID_RECIPE, field, field, e, dir);
}

/* Loads the recipe `name` from the tree `dir`, its files read beneath it. */
static enum cal_api_err recipe_load(const char *dir, const char *name, const char *field,
				    struct cal_recipe **ret, struct cal_api_problem *prob)
{
	struct cal_error e = {0};
	const char *const roots[] = {dir};
	struct cal_confine conf = {roots, 1};
	cal_confine_set(&conf);
	enum cal_status st = cal_job_recipe_load(dir, name, ret, &e);
	cal_confine_set(NULL);
	return st >= 0 ? CAL_API_OK : recipe_problem(st, &e, name, 0, field, dir, prob);
}

/*
 * Opens the job of `o` (recipe resolved in the tree `dir`) without a back
 * end, as the worker would (flags: CAL_JOB_OPEN_FOR(stages) asks the engine
 * whether it runs them); maps a refusal onto prob: unknown_recipe /
 * invalid_recipe (field), not_a_model / unsupported_model ("model"),
 * internal.
 */
static enum cal_api_err job_open(const struct cal_config *c, struct cal_job_opts *o, const char *dir,
				 unsigned flags, const char *field, struct cal_job **ret,
				 struct cal_api_problem *prob)
{
	struct cal_error e = {0};
	enum cal_job_part part = CAL_JOB_PART_OPTIONS;
	enum cal_api_err ae;
	*ret = NULL;
	o->recipe_opts.builtin_dir = dir;
	o->recipe_opts.no_filesystem = 1;
	o->max_quantizers = CAL_API_PLAN_MAX_QUANTIZERS;
	if (o->recipe_yaml && (ae = inline_imports_ok(o->recipe_yaml, field, prob)))
		return ae;
	/* every file the job reads lies beneath the recipe tree or a model root
	 * (common/confine.h): no byte of an outside file reaches an error */
	const char **roots = calloc(c->n_model_roots + 1, sizeof(*roots));
	if (!roots)
		return cal_api_problem_set(prob, CAL_API_ERR_INTERNAL, NULL, "out of memory");
	roots[0] = dir;
	for (size_t k = 0; k < c->n_model_roots; k++)
		roots[k + 1] = c->model_roots[k];
	struct cal_confine conf = {roots, c->n_model_roots + 1};
	cal_confine_set(&conf);
	enum cal_status st = cal_job_open(o, flags | CAL_JOB_OPEN_NO_BACKEND, ret, &part, &e);
	cal_confine_set(NULL);
	free(roots);
	if (st >= 0)
		return CAL_API_OK;
	if (part == CAL_JOB_PART_RECIPE)
		return recipe_problem(st, &e, o->recipe, !!o->recipe_yaml, field, dir, prob);
	if (st == CAL_ERR_NOMEM || part == CAL_JOB_PART_OPTIONS)
		return from_error(prob, CAL_API_ERR_INTERNAL, NULL, "job", &e, dir);
	switch (part) {
	case CAL_JOB_PART_MODEL:
		ae = st == CAL_ERR_UNSUPPORTED || st == CAL_ERR_RANGE ? CAL_API_ERR_UNSUPPORTED_MODEL
								      : CAL_API_ERR_NOT_A_MODEL;
		return from_error(prob, ae, "model", "model", &e, NULL);
	case CAL_JOB_PART_PLAN:
		return from_error(prob, CAL_API_ERR_INVALID_RECIPE, field,
				  "the recipe does not apply to this model", &e, dir);
	case CAL_JOB_PART_ENGINE: /* described, but not run by the engine */
		return from_error(prob, CAL_API_ERR_UNSUPPORTED_MODEL, "model", "model", &e, NULL);
	case CAL_JOB_PART_EXPORT: /* the exporter cannot write this recipe for this model */
		return from_error(prob, CAL_API_ERR_INVALID_RECIPE, field,
				  "the recipe cannot be exported for this model", &e, dir);
	default: /* the checkpoint: its safetensors headers and tensors */
		return from_error(prob, CAL_API_ERR_NOT_A_MODEL, "model", "model", &e, NULL);
	}
}

const char *cal_api_recipe_field(const json_t *req)
{
	const json_t *ry = json_object_get(req, "recipe_yaml");
	const json_t *q = json_object_get(req, "qformat");
	if (q && !json_is_null(q))
		return "qformat";
	if (ry && !json_is_null(ry))
		return "recipe_yaml";
	return json_is_object(json_object_get(req, "recipe")) ? "recipe.yaml" : "recipe";
}

/* ---- job submissions -------------------------------------------------- */

enum cal_api_err cal_api_job_check(struct cal_http_req *r, json_t *spec, const char *recipe_field,
				   struct cal_api_problem *prob)
{
	struct cal_jobspec_job jj;
	struct cal_job *job = NULL;
	struct cal_error e = {0};
	char *dir = tree_dir(r->cfg);
	enum cal_api_err ae;
	if (!dir)
		return cal_api_problem_set(prob, CAL_API_ERR_INTERNAL, NULL, "out of memory");
	/* the worker resolves the recipe in the same tree */
	if (json_object_set_new(spec, "recipes_dir", json_string(dir)) < 0) {
		free(dir);
		return cal_api_problem_set(prob, CAL_API_ERR_INTERNAL, NULL, "recipes_dir is not UTF-8");
	}
	/* the worker's own options, from the same spec */
	if (cal_jobspec_job_opts(spec, &jj, &e) < 0) {
		ae = from_error(prob, CAL_API_ERR_INTERNAL, NULL, "job spec", &e, dir);
		free(dir);
		return ae;
	}
	if (slot_take(r->d) < 0) {
		free(dir);
		return cal_api_problem_set(prob, CAL_API_ERR_BUSY, NULL, NULL);
	}
	ae = job_open(r->cfg, &jj.opts, dir, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), recipe_field, &job, prob);
	slot_give(r->d);
	cal_job_close(job);
	free(dir);
	return ae;
}

/* ---- GET /v1/recipes -------------------------------------------------- */

enum MHD_Result cal_route_recipes_list(struct cal_http_req *r)
{
	char *dir = tree_dir(r->cfg);
	struct cal_recipe_info *list = NULL;
	size_t n = 0;
	struct cal_error e = {0};
	struct cal_api_problem prob = {0};
	if (!dir)
		return cal_http_error(r, CAL_API_ERR_INTERNAL, NULL, "out of memory");
	if (slot_take(r->d) < 0) {
		free(dir);
		return cal_http_error(r, CAL_API_ERR_BUSY, NULL, NULL);
	}
	enum cal_status st = cal_job_recipe_list(dir, &list, &n, &e);
	slot_give(r->d);
	if (st < 0) {
		from_error(&prob, CAL_API_ERR_INTERNAL, NULL, "recipes", &e, dir);
		free(dir);
		return cal_http_problem(r, &prob);
	}
	free(dir);
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++) {
		char *url = NULL;
		if (asprintf(&url, "/v1/recipes/%s", list[i].name) < 0)
			url = NULL;
		json_array_append_new(a, json_pack("{s:s, s:s, s:s?}", "name", list[i].name, "description",
						   list[i].description, "url", url));
		free(url);
	}
	cal_job_recipe_list_free(list, n);
	return cal_http_json(r, 200, json_pack("{s:o}", "recipes", a));
}

/* ---- GET /v1/recipes/{name} ------------------------------------------- */

/* The recipe file's text when it is one regular file inside dir. */
static json_t *recipe_text(const char *source, const char *dir)
{
	char *real = realpath(source, NULL), *text = NULL;
	struct stat sb;
	json_t *v = json_null();
	size_t dl = strlen(dir);
	if (real && !strncmp(real, dir, dl) && real[dl] == '/' && stat(real, &sb) == 0 && S_ISREG(sb.st_mode) &&
	    cal_read_file(real, RECIPE_TEXT_MAX, &text, NULL, NULL) == CAL_OK) {
		json_t *s = json_string(text);
		if (s) {
			json_decref(v);
			v = s;
		}
	}
	free(text);
	free(real);
	return v;
}

static json_t *algorithm_json(const struct cal_algorithm *a)
{
	return json_pack("{s:s, s:b, s:o}", "method", a->name ? a->name : "none", "layerwise", a->layerwise,
			 "moe_calib_experts_ratio",
			 a->has_moe_calib_experts_ratio ? json_real(a->moe_calib_experts_ratio) : json_null());
}

enum MHD_Result cal_route_recipe_get(struct cal_http_req *r)
{
	struct cal_api_problem prob = {0};
	struct cal_recipe *rc = NULL;
	if (!cal_recipe_name_ok(r->param))
		return cal_http_error(r, CAL_API_ERR_RECIPE_NOT_FOUND, "name", "no recipe '%s'", r->param);
	char *dir = tree_dir(r->cfg);
	if (!dir)
		return cal_http_error(r, CAL_API_ERR_INTERNAL, NULL, "out of memory");
	if (slot_take(r->d) < 0) {
		free(dir);
		return cal_http_error(r, CAL_API_ERR_BUSY, NULL, NULL);
	}
	enum cal_api_err ae = recipe_load(dir, r->param, "name", &rc, &prob);
	slot_give(r->d);
	if (ae) {
		free(dir);
		if (ae == CAL_API_ERR_UNKNOWN_RECIPE) {
			cal_api_problem_clear(&prob);
			return cal_http_error(r, CAL_API_ERR_RECIPE_NOT_FOUND, "name", "no recipe '%s'", r->param);
		}
		return cal_http_problem(r, &prob);
	}
	json_t *entries = json_array();
	for (size_t i = 0; i < rc->n_entries; i++)
		json_array_append_new(entries, json_string(rc->entries[i].text ? rc->entries[i].text : ""));
	char *url = NULL;
	if (asprintf(&url, "/v1/recipes/%s", r->param) < 0)
		url = NULL;
	json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:s?}", "name", r->param, "description",
			      rc->description ? rc->description : "", "recipe_type",
			      rc->recipe_type ? rc->recipe_type : "ptq", "algorithm", algorithm_json(&rc->algo),
			      "entries", entries, "yaml", recipe_text(rc->source, dir), "url", url);
	free(url);
	free(dir);
	cal_job_recipe_free(rc);
	return cal_http_json(r, 200, o);
}

/* ---- POST /v1/plan ---------------------------------------------------- */

enum MHD_Result cal_route_plan(struct cal_http_req *r)
{
	static const char *const keys[] = {"model", "recipe", "recipe_yaml", "qformat",
					   "kv_cache_qformat", NULL};
	struct cal_api_problem prob = {0};
	json_t *req = NULL, *rf = NULL, *out = NULL;
	char *model = NULL, *dir = NULL, *text = NULL;
	struct cal_job *job = NULL;
	enum cal_api_err ae = CAL_API_OK;
	int have_slot = 0;
	const char *detail = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "detail");
	if (detail && strcmp(detail, "full") && strcmp(detail, "summary"))
		return cal_http_error(r, CAL_API_ERR_BAD_QUERY, "detail", "detail must be full or summary");
	if (!r->body || r->body_len == 0)
		return cal_http_error(r, CAL_API_ERR_BAD_JSON, NULL, "the request body is empty");
	if (cal_json_parse_body(r->body, r->body_len, &req, &prob))
		return cal_http_problem(r, &prob);
	const char *k;
	json_t *v;
	json_object_foreach(req, k, v) {
		int ok = 0;
		for (const char *const *a = keys; *a; a++)
			ok |= !strcmp(*a, k);
		if (!ok) {
			ae = cal_api_problem_set(&prob, CAL_API_ERR_UNKNOWN_FIELD, k, "unknown field '%s'", k);
			goto out;
		}
	}
	const struct cal_config *c = r->cfg;
	struct cal_jobspec_env env = {
		.model_roots = c->model_roots, .n_model_roots = c->n_model_roots,
	};
	const char *field = cal_api_recipe_field(req);
	if (!(rf = json_object())) {
		ae = cal_api_problem_set(&prob, CAL_API_ERR_INTERNAL, NULL, "out of memory");
		goto out;
	}
	if ((ae = cal_jobspec_recipe(req, rf, &prob)) || (ae = cal_jobspec_model(req, &env, &model, &prob)))
		goto out;
	if (!(dir = tree_dir(c))) {
		ae = cal_api_problem_set(&prob, CAL_API_ERR_INTERNAL, NULL, "out of memory");
		goto out;
	}
	if (slot_take(r->d) < 0) {
		ae = cal_api_problem_set(&prob, CAL_API_ERR_BUSY, NULL, NULL);
		goto out;
	}
	have_slot = 1;
	const char *name = json_string_value(json_object_get(rf, "recipe"));
	struct cal_job_opts jo = {
		.model_dir = model,
		.recipe = name,
		.recipe_yaml = json_string_value(json_object_get(rf, "recipe_yaml")),
		.recipe_display = "<inline>",
		.kv_cache_qformat = json_string_value(json_object_get(rf, "kv_cache_qformat")),
	};
	if ((ae = job_open(c, &jo, dir, CAL_JOB_OPEN_NO_CHECKPOINT, field, &job, &prob)))
		goto out;
	text = cal_job_plan_json(job);
	out = text ? json_loads(text, 0, NULL) : NULL;
	if (!out) {
		ae = cal_api_problem_set(&prob, CAL_API_ERR_INTERNAL, NULL, "plan: cannot encode");
		goto out;
	}
	/* the recipe's file name in the tree is the daemon's business */
	json_object_del(json_object_get(out, "recipe"), "source");
	if (detail && !strcmp(detail, "summary"))
		json_object_del(out, "quantizers");
out:
	if (have_slot)
		slot_give(r->d);
	cal_job_close(job);
	free(text);
	free(dir);
	free(model);
	json_decref(rf);
	json_decref(req);
	if (ae) {
		json_decref(out);
		return cal_http_problem(r, &prob);
	}
	return cal_http_json(r, 200, out);
}
