/*
 * jobspec.c — JSON body limits and job submission validation.
 */
#include "jobspec.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sha256.h"
#include "common/device.h"
#include "common/jsonscan.h"
#include "common/fsutil.h"
#include "common/parse.h"
#include "common/util.h"
#include "engine/job.h"

enum cal_api_err cal_json_parse_body(const char *buf, size_t len, json_t **ret,
				     struct cal_api_problem *prob)
{
	*ret = NULL;
	static const struct cal_json_limits lim = {CAL_JSON_MAX_DEPTH, CAL_JSON_MAX_VALUES};
	int why = 0;
	if (cal_json_prescan("body", buf, len, &lim, &why, NULL))
		return cal_api_problem_set(prob, why == 1 ? CAL_API_ERR_JSON_TOO_DEEP : CAL_API_ERR_JSON_TOO_LARGE,
					   NULL, NULL);
	json_error_t je;
	json_t *v = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!v)
		return cal_api_problem_set(prob, CAL_API_ERR_BAD_JSON, NULL,
					   "line %d column %d: %s", je.line, je.column, je.text);
	if (!json_is_object(v)) {
		json_decref(v);
		return cal_api_problem_set(prob, CAL_API_ERR_BAD_JSON, NULL, "the body must be a JSON object");
	}
	*ret = v;
	return CAL_API_OK;
}

int cal_json_fingerprint(const json_t *v, char out[65])
{
	char *s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
	if (!s)
		return -1;
	uint8_t d[CAL_SHA256_LEN];
	cal_sha256(s, strlen(s), d);
	cal_sha256_hex(d, out);
	free(s);
	return 0;
}

/* ---- field helpers --------------------------------------------------- */

static enum cal_api_err check_keys(const json_t *obj, const char *const *allowed, const char *prefix,
				   struct cal_api_problem *prob)
{
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)obj, k, v) {
		int ok = 0;
		for (const char *const *a = allowed; *a; a++)
			ok |= !strcmp(*a, k);
		if (!ok) {
			char *f = NULL;
			if (asprintf(&f, "%s%s", prefix, k) < 0)
				f = NULL;
			cal_api_problem_set(prob, CAL_API_ERR_UNKNOWN_FIELD, f, "unknown field '%s%s'", prefix, k);
			free(f);
			return CAL_API_ERR_UNKNOWN_FIELD;
		}
	}
	return CAL_API_OK;
}

/* obj[key], or NULL where the key is absent or null (JSON null means "not
 * given" throughout the job spec). */
static json_t *get_given(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return v && !json_is_null(v) ? v : NULL;
}

static enum cal_api_err get_int(const json_t *obj, const char *key, const char *field, long long lo,
				long long hi, long long def, long long *ret, struct cal_api_problem *prob)
{
	/* *ret is set on every path: callers may read it after an error */
	*ret = def;
	json_t *v = get_given(obj, key);
	if (!v)
		return CAL_API_OK;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, field,
					   "%s must be an integer in [%lld, %lld]", field, lo, hi);
	*ret = json_integer_value(v);
	return CAL_API_OK;
}

static int plain_name(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max || s[0] == '.')
		return 0;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '_' || *p == '-' || *p == '.' || *p == ':'))
			return 0;
	return 1;
}

/* Maps a cal_path_confine failure to the API error for field. */
static enum cal_api_err path_problem(enum cal_status st, const char *field, const char *path,
				     struct cal_error *e, struct cal_api_problem *prob)
{
	enum cal_api_err ae;
	switch (st) {
	case CAL_ERR_NOTFOUND: ae = CAL_API_ERR_PATH_NOT_FOUND; break;
	case CAL_ERR_EXISTS: ae = CAL_API_ERR_OUTPUT_EXISTS; break;
	case CAL_ERR_RANGE: ae = CAL_API_ERR_PATH_OUTSIDE_ROOTS; break;
	default: ae = CAL_API_ERR_INVALID_FIELD; break;
	}
	/* the client's own path is echoed (it is valid UTF-8: it came from JSON) */
	cal_api_problem_set(prob, ae, field, "%s '%s': %s", field, path, cal_error_msg(e));
	cal_error_clear(e);
	return ae;
}

static enum cal_api_err get_path(const json_t *v, const char *field, char *const *roots, size_t nroots,
				 int must_exist, char **ret, struct cal_api_problem *prob)
{
	*ret = NULL;
	if (!v || json_is_null(v))
		return cal_api_problem_set(prob, CAL_API_ERR_MISSING_FIELD, field, "%s is required", field);
	if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > CAL_SPEC_MAX_PATH)
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, field,
					   "%s must be an absolute path of 1 to %d bytes", field, CAL_SPEC_MAX_PATH);
	const char *s = json_string_value(v);
	if (strlen(s) != json_string_length(v))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, field, "%s contains a NUL byte", field);
	struct cal_error e = {0};
	enum cal_status st = cal_path_confine(s, roots, nroots, must_exist, ret, &e);
	if (st)
		return path_problem(st, field, s, &e, prob);
	return CAL_API_OK;
}

/*
 * The names the output becomes while the job runs must fit the file system's
 * limits, or the job would be accepted and fail hours later with "File name
 * too long": the temporary sibling `.NAME.tmp-<job id>-XXXXXX` (engine/job.h)
 * within NAME_MAX, and the longest path the writer creates in it (or in the
 * published directory) within PATH_MAX.  real is the resolved output.
 */
static enum cal_api_err output_names_fit(const char *real, struct cal_api_problem *prob)
{
	const char *slash = strrchr(real, '/');
	size_t base = strlen(slash + 1), parent = (size_t)(slash - real);
	size_t tmp_name = base + CAL_JOB_OUT_TMP_NAME_EXTRA;
	size_t longest = parent + 1 + tmp_name + 1 + CAL_JOB_OUT_FILE_NAME_MAX;
	if (tmp_name > NAME_MAX)
		return cal_api_problem_set(prob, CAL_API_ERR_PATH_TOO_LONG, "output",
					   "output: the last path component is %zu bytes, at most %d are allowed (its "
					   "temporary name while the job runs adds %d bytes and must fit NAME_MAX %d)",
					   base, NAME_MAX - CAL_JOB_OUT_TMP_NAME_EXTRA, CAL_JOB_OUT_TMP_NAME_EXTRA, NAME_MAX);
	if (longest >= PATH_MAX)
		return cal_api_problem_set(prob, CAL_API_ERR_PATH_TOO_LONG, "output",
					   "output: the resolved path is %zu bytes, at most %d are allowed (the files "
					   "written in its temporary directory must fit PATH_MAX %d)", strlen(real),
					   PATH_MAX - 2 - CAL_JOB_OUT_TMP_NAME_EXTRA - CAL_JOB_OUT_FILE_NAME_MAX, PATH_MAX);
	return CAL_API_OK;
}

/* The worker opens files of the model directory that the submit does not
 * (the index, shards, tokenizer files): their paths must fit PATH_MAX too. */
static enum cal_api_err model_names_fit(const char *real, struct cal_api_problem *prob)
{
	if (strlen(real) + 1 + CAL_JOB_OUT_FILE_NAME_MAX >= PATH_MAX)
		return cal_api_problem_set(prob, CAL_API_ERR_PATH_TOO_LONG, "model",
					   "model: the resolved path is %zu bytes, at most %d are allowed (the files "
					   "the job reads in it must fit PATH_MAX %d)", strlen(real),
					   PATH_MAX - 2 - CAL_JOB_OUT_FILE_NAME_MAX, PATH_MAX);
	return CAL_API_OK;
}

/* ---- the submission --------------------------------------------------- */

/* One dataset of a submission: a path, a catalog name ("cnn_dailymail:256")
 * or {"path", "samples"}, as the canonical {"path": real path, "samples"?}. */
static enum cal_api_err resolve_dataset(const json_t *d, const char *field,
					const struct cal_jobspec_env *env, json_t **ret,
					struct cal_api_problem *prob)
{
	enum cal_api_err ae;
	const json_t *path = d;
	long long n = 0;
	*ret = NULL;
	if (json_is_object(d)) {
		static const char *const dkeys[] = {"path", "samples", NULL};
		char prefix[80];
		snprintf(prefix, sizeof(prefix), "%s.", field);
		if ((ae = check_keys(d, dkeys, prefix, prob)))
			return ae;
		path = json_object_get(d, "path");
		char sf[96];
		snprintf(sf, sizeof(sf), "%s.samples", field);
		if ((ae = get_int(d, "samples", sf, 1, 1000000, 0, &n, prob)))
			return ae;
	} else if (!json_is_string(d)) {
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, field,
					   "%s must be a path, a catalog dataset or {\"path\", \"samples\"}",
					   field);
	}
	json_t *named = NULL;
	if (json_is_string(d) && json_string_value(d)[0] != '/') {
		/* a name of the catalog, "cnn_dailymail:256" */
		const char *cp;
		long cn;
		char msg[512];
		if (cal_dataset_resolve(env->datasets, env->n_datasets, json_string_value(d), &cp, &cn, msg,
					sizeof(msg)))
			return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, field, "%s: %s", field,
						   msg);
		path = named = json_string(cp);
		n = cn;
	}
	char *real = NULL;
	ae = get_path(path, field, env->data_roots, env->n_data_roots, 1, &real, prob);
	json_decref(named);
	if (ae)
		return ae;
	struct stat sb;
	if (stat(real, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		free(real);
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, field,
					   "%s '%s' is not a regular file", field, json_string_value(path));
	}
	json_t *e = json_pack("{s:s}", "path", real);
	free(real);
	if (!e)
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, field, "%s is not UTF-8", field);
	if (n)
		json_object_set_new(e, "samples", json_integer(n));
	*ret = e;
	return CAL_API_OK;
}

/* evaluate: {dataset, samples}: `calibd eval` after the export
 * (docs/eval.md), canonical {"path", "samples"}. */
static enum cal_api_err validate_evaluate(const json_t *e, const struct cal_jobspec_env *env,
					  json_t *out, struct cal_api_problem *prob)
{
	static const char *const keys[] = {"dataset", "samples", NULL};
	enum cal_api_err ae;
	long long samples;
	json_t *entry = NULL;
	if (!e || json_is_null(e))
		return CAL_API_OK;
	if (!json_is_object(e))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "evaluate",
					   "evaluate must be an object {dataset, samples}");
	if ((ae = check_keys(e, keys, "evaluate.", prob)) ||
	    (ae = get_int(e, "samples", "evaluate.samples", 1, 100000, 128, &samples, prob)))
		return ae;
	const json_t *d = get_given(e, "dataset");
	if (!d)
		return cal_api_problem_set(prob, CAL_API_ERR_MISSING_FIELD, "evaluate.dataset",
					   "evaluate.dataset is required");
	if (json_is_object(d))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "evaluate.dataset",
					   "evaluate.dataset must be a path or a catalog dataset");
	if ((ae = resolve_dataset(d, "evaluate.dataset", env, &entry, prob)))
		return ae;
	json_object_set_new(entry, "samples", json_integer(samples));
	json_object_set_new(out, "evaluate", entry);
	return CAL_API_OK;
}

static enum cal_api_err validate_calibration(const json_t *c, const struct cal_jobspec_env *env,
					     json_t *out, struct cal_api_problem *prob)
{
	static const char *const keys[] = {"datasets", "tokens", "samples", "seq_len", "seed", NULL};
	enum cal_api_err ae;
	if (!c || json_is_null(c))
		return cal_api_problem_set(prob, CAL_API_ERR_MISSING_FIELD, "calibration", "calibration is required");
	if (!json_is_object(c))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "calibration", "calibration must be an object");
	if ((ae = check_keys(c, keys, "calibration.", prob)))
		return ae;
	long long samples, seq_len, seed;
	if ((ae = get_int(c, "samples", "calibration.samples", 1, 1000000, 512, &samples, prob)) ||
	    (ae = get_int(c, "seq_len", "calibration.seq_len", 1, 1048576, 512, &seq_len, prob)) ||
	    (ae = get_int(c, "seed", "calibration.seed", 0, INT64_MAX, 0, &seed, prob)))
		return ae;
	if (samples * seq_len > (1LL << 34))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "calibration.samples",
					   "samples x seq_len = %lld tokens exceeds 2^34", samples * seq_len);
	json_t *ds = get_given(c, "datasets");
	json_t *tok = get_given(c, "tokens");
	if (!!ds == !!tok)
		return cal_api_problem_set(prob, ds ? CAL_API_ERR_INVALID_FIELD : CAL_API_ERR_MISSING_FIELD,
					   "calibration.datasets",
					   "give exactly one of calibration.datasets and calibration.tokens");
	json_t *cal = json_object();
	json_object_set_new(out, "calibration", cal);
	if (ds) {
		if (!json_is_array(ds) || json_array_size(ds) == 0 || json_array_size(ds) > CAL_SPEC_MAX_DATASETS)
			return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "calibration.datasets",
						   "calibration.datasets must be a list of 1 to %d entries",
						   CAL_SPEC_MAX_DATASETS);
		json_t *list = json_array();
		json_object_set_new(cal, "datasets", list);
		size_t i;
		json_t *d;
		json_array_foreach(ds, i, d) {
			char field[64];
			json_t *e = NULL;
			snprintf(field, sizeof(field), "calibration.datasets[%zu]", i);
			if ((ae = resolve_dataset(d, field, env, &e, prob)))
				return ae;
			json_array_append_new(list, e);
		}
	} else {
		char *real = NULL;
		if ((ae = get_path(tok, "calibration.tokens", env->data_roots, env->n_data_roots, 1, &real, prob)))
			return ae;
		struct stat sb;
		int reg = stat(real, &sb) == 0 && S_ISREG(sb.st_mode);
		json_t *s = reg ? json_string(real) : NULL;
		free(real);
		if (!s)
			return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "calibration.tokens",
						   "calibration.tokens must name a regular file");
		json_object_set_new(cal, "tokens", s);
	}
	json_object_set_new(cal, "samples", json_integer(samples));
	json_object_set_new(cal, "seq_len", json_integer(seq_len));
	json_object_set_new(cal, "seed", json_integer(seed));
	return CAL_API_OK;
}

int cal_dataset_resolve(char *const *catalog, size_t n, const char *ref, const char **ret_path, long *ret_samples,
			char *msg, size_t msg_len)
{
	*ret_path = NULL;
	*ret_samples = 0;
	size_t nl = strcspn(ref, ":");
	if (ref[nl] == ':') {
		uint64_t v;
		if (cal_parse_u64("sample count", ref + nl + 1, 1, 1000000, &v, NULL) < 0) {
			snprintf(msg, msg_len, "'%.200s': the sample count after ':' must be an integer in [1, 1000000]",
				 ref);
			return -1;
		}
		*ret_samples = (long)v;
	}
	for (size_t i = 0; nl > 0 && i < n; i++) {
		if (!strncmp(catalog[i], ref, nl) && catalog[i][nl] == '=') {
			*ret_path = catalog[i] + nl + 1;
			return 0;
		}
	}
	int w = snprintf(msg, msg_len, "no dataset '%.*s' in the catalog (%s", (int)(nl < 100 ? nl : 100), ref,
			 n ? "known:" : "which is empty: the configuration's datasets: names them");
	for (size_t i = 0; i < n && w > 0 && (size_t)w < msg_len; i++)
		w += snprintf(msg + w, msg_len - (size_t)w, "%s %.*s", i ? "," : "", (int)strcspn(catalog[i], "="),
			      catalog[i]);
	if (w > 0 && (size_t)w < msg_len)
		snprintf(msg + w, msg_len - (size_t)w, ")");
	return -1;
}

/* A recipe name: '/'-separated segments of [A-Za-z0-9._-], none empty or
 * starting with '.', at most CAL_RECIPE_NAME_MAX bytes ("general/ptq/fp8_default-kv_fp8"). */
int cal_recipe_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > CAL_RECIPE_NAME_MAX)
		return 0;
	int seg_start = 1;
	for (const char *p = s; *p; p++) {
		if (*p == '/') {
			if (seg_start)
				return 0;
			seg_start = 1;
			continue;
		}
		if (seg_start && *p == '.')
			return 0;
		seg_start = 0;
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '_' || *p == '-' || *p == '.'))
			return 0;
	}
	return !seg_start;
}

static enum cal_api_err inline_yaml(const json_t *y, const char *field, json_t *out, struct cal_api_problem *prob)
{
	if (!json_is_string(y) || json_string_length(y) == 0 || json_string_length(y) > CAL_RECIPE_YAML_MAX ||
	    strlen(json_string_value(y)) != json_string_length(y))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, field,
					   "%s must be a non-empty string of at most %d bytes without NUL", field,
					   CAL_RECIPE_YAML_MAX);
	json_object_set(out, "recipe_yaml", (json_t *)y);
	return CAL_API_OK;
}

/* "qformat": hf_ptq.py's --qformat name, mapped to its built-in recipe
 * (engine/job.h cal_job_qformat_recipe): the spec keeps both. */
static enum cal_api_err jobspec_qformat(const json_t *q, json_t *out, struct cal_api_problem *prob)
{
	if (!json_is_string(q) || strlen(json_string_value(q)) != json_string_length(q))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "qformat",
					   "qformat must be a string (hf_ptq.py's --qformat name, e.g. nvfp4)");
	const char *recipe = NULL;
	struct cal_error err = {0};
	enum cal_status st = cal_job_qformat_recipe(json_string_value(q), &recipe, &err);
	if (st < 0) {
		enum cal_api_err ae = cal_api_problem_set(
			prob, st == CAL_ERR_UNSUPPORTED ? CAL_API_ERR_INVALID_RECIPE : CAL_API_ERR_INVALID_FIELD,
			"qformat", "%s", cal_error_msg(&err));
		cal_error_clear(&err);
		return ae;
	}
	json_object_set(out, "qformat", (json_t *)q);
	json_object_set_new(out, "recipe", json_string(recipe));
	return CAL_API_OK;
}

/* "kv_cache_qformat": hf_ptq.py's --kv_cache_qformat name, appended over
 * the recipe's KV cache (engine/recipe/qformat.h cal_kv_qformat_apply). */
static enum cal_api_err jobspec_kv_qformat(const json_t *req, json_t *out,
					   struct cal_api_problem *prob)
{
	json_t *k = get_given(req, "kv_cache_qformat");
	size_t n = 0, i;
	const struct cal_kv_qformat *l = cal_kv_qformat_list(&n);
	if (!k)
		return CAL_API_OK;
	for (i = 0; json_is_string(k) && i < n; i++)
		if (!strcmp(l[i].name, json_string_value(k)) &&
		    strlen(json_string_value(k)) == json_string_length(k))
			break;
	if (!json_is_string(k) || i == n) {
		char names[256] = "";
		for (size_t j = 0; j < n; j++)
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
				 j ? ", " : "", l[j].name);
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "kv_cache_qformat",
					   "unknown kv_cache_qformat '%.64s': one of %s",
					   json_is_string(k) ? json_string_value(k) : "(not a string)",
					   names);
	}
	json_object_set(out, "kv_cache_qformat", k);
	return CAL_API_OK;
}

static enum cal_api_err recipe_fields(const json_t *req, json_t *out, struct cal_api_problem *prob);

/* "recipe": NAME | {"yaml": TEXT}, "recipe_yaml": TEXT, or "qformat": NAME
 * (exactly one), and "kv_cache_qformat".  Syntax only: api/recipes.c loads
 * the recipe. */
enum cal_api_err cal_jobspec_recipe(const json_t *req, json_t *out, struct cal_api_problem *prob)
{
	enum cal_api_err ae = recipe_fields(req, out, prob);
	return ae ? ae : jobspec_kv_qformat(req, out, prob);
}

static enum cal_api_err recipe_fields(const json_t *req, json_t *out, struct cal_api_problem *prob)
{
	json_t *r = get_given(req, "recipe");
	json_t *ry = get_given(req, "recipe_yaml");
	json_t *q = get_given(req, "qformat");
	if (q && (r || ry))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "qformat",
					   "give one of recipe, recipe_yaml and qformat, not several");
	if (q)
		return jobspec_qformat(q, out, prob);
	if (r && ry)
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "recipe_yaml",
					   "give one of recipe and recipe_yaml, not both");
	if (ry)
		return inline_yaml(ry, "recipe_yaml", out, prob);
	if (!r)
		return cal_api_problem_set(prob, CAL_API_ERR_MISSING_FIELD, "recipe",
					   "recipe is required: a recipe name, {\"yaml\": \"...\"}, recipe_yaml or "
					   "qformat");
	if (json_is_object(r)) {
		static const char *const keys[] = {"yaml", NULL};
		enum cal_api_err ae = check_keys(r, keys, "recipe.", prob);
		if (ae)
			return ae;
		return inline_yaml(json_object_get(r, "yaml"), "recipe.yaml", out, prob);
	}
	if (!json_is_string(r) || strlen(json_string_value(r)) != json_string_length(r) ||
	    !cal_recipe_name_ok(json_string_value(r)))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "recipe",
					   "recipe must be a name of 1 to %d characters: '/'-separated segments of "
					   "[A-Za-z0-9._-] not starting with '.' (e.g. general/ptq/fp8_default-kv_fp8), "
					   "or {\"yaml\": ...}", CAL_RECIPE_NAME_MAX);
	json_object_set(out, "recipe", r);
	return CAL_API_OK;
}

static enum cal_api_err validate_devices_json(const json_t *d, const struct cal_jobspec_env *env, json_t *out,
					      struct cal_api_problem *prob);

static enum cal_api_err validate_devices(const json_t *req, const struct cal_jobspec_env *env, json_t *out,
					 struct cal_api_problem *prob)
{
	json_t *d = get_given(req, "devices");
	if (!d) {
		json_object_set_new(out, "devices", env->n_devices ? json_integer(1) : json_string("cpu"));
		return CAL_API_OK;
	}
	json_t *parsed = NULL;
	if (json_is_string(d)) {
		/* a device string, as on the command line: "cpu", "cuda" (one GPU)
		 * or "cuda:0,1" (those GPUs) */
		struct cal_devices dv;
		struct cal_error e = {0};
		if (cal_devices_parse(json_string_value(d), &dv, &e) < 0 || dv.kind == CAL_DEVICE_AUTO) {
			cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "devices",
					    "devices must be \"cpu\", \"cuda\", \"cuda:I,J,...\", a GPU "
					    "count or a list of GPU ids%s%s", e.msg ? ": " : "",
					    e.msg ? e.msg : "");
			cal_error_clear(&e);
			return CAL_API_ERR_INVALID_FIELD;
		}
		if (dv.kind == CAL_DEVICE_CPU) {
			json_object_set_new(out, "devices", json_string("cpu"));
			return CAL_API_OK;
		}
		if (!strchr(json_string_value(d), ':')) {
			d = parsed = json_integer(1);
		} else {
			d = parsed = json_array();
			for (size_t i = 0; i < dv.n; i++)
				json_array_append_new(parsed, json_integer(dv.ids[i]));
		}
		enum cal_api_err ae = validate_devices_json(d, env, out, prob);
		json_decref(parsed);
		return ae;
	}
	return validate_devices_json(d, env, out, prob);
}

/* devices as a GPU count or a list of ids */
static enum cal_api_err validate_devices_json(const json_t *d, const struct cal_jobspec_env *env, json_t *out,
					      struct cal_api_problem *prob)
{
	if (json_is_integer(d)) {
		json_int_t n = json_integer_value(d);
		if (n < 1 || n > 64)
			return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "devices",
						   "devices: a GPU count must be in [1, 64]");
		if ((size_t)n > env->n_devices)
			return cal_api_problem_set(prob, CAL_API_ERR_DEVICES_UNAVAILABLE, "devices",
						   "devices: %lld GPUs requested, %zu configured", (long long)n,
						   env->n_devices);
		json_object_set(out, "devices", (json_t *)d);
		return CAL_API_OK;
	}
	if (!json_is_array(d) || json_array_size(d) == 0 || json_array_size(d) > 64)
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "devices",
					   "devices must be \"cpu\", a GPU count or a list of 1 to 64 GPU ids");
	size_t i, j;
	json_t *x, *y;
	json_array_foreach(d, i, x) {
		if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > 1023)
			return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "devices",
						   "devices[%zu] must be a GPU id in [0, 1023]", i);
		json_array_foreach(d, j, y)
			if (j < i && json_integer_value(y) == json_integer_value(x))
				return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "devices",
							   "devices: GPU %lld listed twice",
							   (long long)json_integer_value(x));
		int known = 0;
		for (size_t k = 0; k < env->n_devices; k++)
			known |= env->devices[k] == json_integer_value(x);
		if (!known)
			return cal_api_problem_set(prob, CAL_API_ERR_DEVICES_UNAVAILABLE, "devices",
						   "devices: GPU %lld is not configured", (long long)json_integer_value(x));
	}
	json_object_set(out, "devices", (json_t *)d);
	return CAL_API_OK;
}

static enum cal_api_err validate_options(const json_t *req, json_t *out, struct cal_api_problem *prob)
{
	static const char *const keys[] = {"per_expert_input_amax", "moe_calib_experts_ratio", "max_shard_size",
					   "ranks", "comm_timeout_s", NULL};
	json_t *o = json_object_get(req, "options");
	int amax = 0;
	double ratio = 0;
	json_int_t shard = 0, ranks = 0, comm_timeout = 0;
	if (o && !json_is_null(o)) {
		if (!json_is_object(o))
			return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "options", "options must be an object");
		enum cal_api_err ae = check_keys(o, keys, "options.", prob);
		if (ae)
			return ae;
		json_t *a = json_object_get(o, "per_expert_input_amax");
		if (a && !json_is_boolean(a))
			return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "options.per_expert_input_amax",
						   "options.per_expert_input_amax must be true or false");
		amax = a && json_is_true(a);
		json_t *r = json_object_get(o, "moe_calib_experts_ratio");
		if (r) {
			if (!json_is_number(r) || !(json_number_value(r) >= 0 && json_number_value(r) <= 1))
				return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD,
							   "options.moe_calib_experts_ratio",
							   "options.moe_calib_experts_ratio must be a number in [0, 1]");
			ratio = json_number_value(r);
		}
		/* bytes per output shard (docs/export.md); absent: 10GB, as modelopt */
		json_t *z = json_object_get(o, "max_shard_size");
		if (z) {
			if (!json_is_integer(z) || json_integer_value(z) < 1 ||
			    json_integer_value(z) > CAL_JOBSPEC_MAX_SHARD_SIZE)
				return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "options.max_shard_size",
							   "options.max_shard_size must be a byte count in 1..2^53");
			shard = json_integer_value(z);
		}
		/* expert-parallel ranks (docs/expert_parallel.md): CPU ranks of a CPU
		 * job; a GPU job runs one rank per GPU (devices, checked before) */
		json_t *k = json_object_get(o, "ranks");
		if (k) {
			const json_t *dv = json_object_get(out, "devices");
			size_t gpus = json_is_integer(dv) ? (size_t)json_integer_value(dv) : json_array_size(dv);
			if (!json_is_integer(k) || json_integer_value(k) < 1 ||
			    json_integer_value(k) > CAL_CALIB_MAX_RANKS)
				return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "options.ranks",
							   "options.ranks must be an integer in 1..%d",
							   CAL_CALIB_MAX_RANKS);
			ranks = json_integer_value(k);
			if (gpus && (size_t)ranks != gpus)
				return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "options.ranks",
							   "options.ranks: a GPU job runs one rank per GPU (%zu "
							   "devices), not %lld", gpus, (long long)ranks);
		}
		/* the deadline of every exchange between ranks (docs/deploy.md) */
		json_t *ct = json_object_get(o, "comm_timeout_s");
		if (ct) {
			if (!json_is_integer(ct) || json_integer_value(ct) < 1 || json_integer_value(ct) > 86400)
				return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "options.comm_timeout_s",
							   "options.comm_timeout_s must be an integer in 1..86400");
			comm_timeout = json_integer_value(ct);
		}
	}
	json_t *opts = json_pack("{s:b, s:f}", "per_expert_input_amax", amax, "moe_calib_experts_ratio", ratio);
	if (opts && shard)
		json_object_set_new(opts, "max_shard_size", json_integer(shard));
	if (opts && ranks)
		json_object_set_new(opts, "ranks", json_integer(ranks));
	if (opts && comm_timeout)
		json_object_set_new(opts, "comm_timeout_s", json_integer(comm_timeout));
	json_object_set_new(out, "options", opts);
	return CAL_API_OK;
}

/*
 * distributed {nodes, node_rank, rendezvous}: this job is node node_rank of
 * a job run by `nodes` processes, one per node (docs/deploy.md).  The
 * rendezvous is a file on storage every node sees, under an output root:
 * node 0 writes it, so for node 0 it must not exist yet; the others may
 * find it written already.  The spec records the resolved path.
 */
static enum cal_status spec_ranks(const json_t *spec, struct cal_job_opts *o, struct cal_error *err);

static enum cal_api_err validate_distributed(const json_t *d, const struct cal_jobspec_env *env, json_t *out,
					     struct cal_api_problem *prob)
{
	static const char *const keys[] = {"nodes", "node_rank", "rendezvous", NULL};
	if (!d || json_is_null(d))
		return CAL_API_OK;
	if (!json_is_object(d))
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "distributed",
					   "distributed must be an object {nodes, node_rank, rendezvous}");
	enum cal_api_err ae = check_keys(d, keys, "distributed.", prob);
	if (ae)
		return ae;
	const json_t *n = json_object_get(d, "nodes"), *r = json_object_get(d, "node_rank");
	if (!json_is_integer(n) || json_integer_value(n) < 1 || json_integer_value(n) > CAL_CALIB_MAX_RANKS)
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "distributed.nodes",
					   "distributed.nodes must be an integer in 1..%d", CAL_CALIB_MAX_RANKS);
	json_int_t nodes = json_integer_value(n);
	if (!json_is_integer(r) || json_integer_value(r) < 0 || json_integer_value(r) >= nodes)
		return cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "distributed.node_rank",
					   "distributed.node_rank must be an integer in 0..%lld",
					   (long long)nodes - 1);
	json_int_t rank = json_integer_value(r);
	/* the ranks in all: nodes times this node's, as the worker will count them */
	struct cal_job_opts o = {0};
	struct cal_error err = {0};
	json_t *part = json_pack("{s:O?, s:O?, s:{s:I, s:I, s:s}}", "devices", json_object_get(out, "devices"),
				 "options", json_object_get(out, "options"), "distributed", "nodes", nodes,
				 "node_rank", rank, "rendezvous", "-");
	enum cal_status st = part ? spec_ranks(part, &o, &err) : cal_error_set(&err, CAL_ERR_NOMEM, "out of memory");
	json_decref(part);
	if (st < 0) {
		ae = cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "distributed.nodes", "distributed: %s",
					 cal_error_msg(&err));
		cal_error_clear(&err);
		return ae;
	}
	char *rv = NULL;
	const json_t *p = json_object_get(d, "rendezvous");
	ae = get_path(p, "distributed.rendezvous", env->output_roots, env->n_output_roots, 0, &rv, prob);
	if (ae == CAL_API_ERR_OUTPUT_EXISTS && rank > 0) {
		/* a follower: the leader may have written it already */
		cal_api_problem_clear(prob);
		ae = get_path(p, "distributed.rendezvous", env->output_roots, env->n_output_roots, 1, &rv, prob);
	}
	if (ae)
		return ae;
	json_object_set_new(out, "distributed", json_pack("{s:I, s:I, s:s}", "nodes", nodes, "node_rank", rank,
							  "rendezvous", rv));
	free(rv);
	return CAL_API_OK;
}

enum cal_status cal_jobspec_node_ranks(struct cal_job_opts *o, unsigned nodes, unsigned node_rank,
				       struct cal_error *err)
{
	unsigned local = cal_job_local_ranks(&o->ranks, &o->devices);
	if (!nodes || node_rank >= nodes)
		return cal_error_set(err, CAL_ERR_INVALID, "node %u of %u nodes", node_rank, nodes);
	if (!local || (uint64_t)local * nodes > CAL_CALIB_MAX_RANKS)
		return cal_error_set(err, CAL_ERR_INVALID, "%u nodes of %u ranks: at most %d ranks in all",
				     nodes, local, CAL_CALIB_MAX_RANKS);
	o->ranks.local = local;
	o->ranks.world = local * nodes;
	o->ranks.first = local * node_rank;
	return CAL_OK;
}

enum cal_api_err cal_jobspec_model(const json_t *req, const struct cal_jobspec_env *env, char **ret_real,
				   struct cal_api_problem *prob)
{
	char *model = NULL;
	enum cal_api_err ae = get_path(json_object_get(req, "model"), "model", env->model_roots,
				       env->n_model_roots, 1, &model, prob);
	if (ae)
		return ae;
	struct stat sb;
	if (stat(model, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		ae = cal_api_problem_set(prob, CAL_API_ERR_NOT_A_MODEL, "model", "model '%s' is not a directory",
					 json_string_value(json_object_get(req, "model")));
		goto fail;
	}
	char *cfg = NULL;
	if (cal_path_join_checked(model, "config.json", &cfg, NULL) < 0) {
		/* too long: path_too_long, as for the files the worker opens there */
		if (!(ae = model_names_fit(model, prob)))
			ae = cal_api_problem_set(prob, CAL_API_ERR_INTERNAL, NULL, "out of memory");
		goto fail;
	}
	int has_cfg = stat(cfg, &sb) == 0 && S_ISREG(sb.st_mode);
	free(cfg);
	if (!has_cfg) {
		ae = cal_api_problem_set(prob, CAL_API_ERR_NOT_A_MODEL, "model", "model '%s' has no config.json",
					 json_string_value(json_object_get(req, "model")));
		goto fail;
	}
	*ret_real = model;
	return CAL_API_OK;
fail:
	free(model);
	return ae;
}

enum cal_api_err cal_jobspec_validate(const json_t *req, const struct cal_jobspec_env *env,
				      json_t **ret_spec, struct cal_api_problem *prob)
{
	static const char *const keys[] = {"name", "model", "recipe", "recipe_yaml", "qformat", "kv_cache_qformat", "calibration", "output",
					   "devices", "priority", "options", "timeout_s", "evaluate", "distributed",
					   NULL};
	enum cal_api_err ae;
	char *model = NULL, *output = NULL;
	*ret_spec = NULL;
	json_t *out = json_object();
	if (!out)
		return cal_api_problem_set(prob, CAL_API_ERR_INTERNAL, NULL, "out of memory");
	if (!json_is_object(req)) {
		ae = cal_api_problem_set(prob, CAL_API_ERR_BAD_JSON, NULL, "the body must be a JSON object");
		goto fail;
	}
	if ((ae = check_keys(req, keys, "", prob)))
		goto fail;
	json_t *name = get_given(req, "name");
	if (name) {
		if (!json_is_string(name) || !plain_name(json_string_value(name), 128)) {
			ae = cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "name",
						 "name must be 1 to 128 characters [A-Za-z0-9._:-], not starting with '.'");
			goto fail;
		}
		json_object_set(out, "name", name);
	}
	long long prio;
	if ((ae = get_int(req, "priority", "priority", -100, 100, 0, &prio, prob)))
		goto fail;
	json_t *to = get_given(req, "timeout_s");
	if (to) {
		if (!json_is_number(to) || !(json_number_value(to) > 0 && json_number_value(to) <= 1e8)) {
			ae = cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "timeout_s",
						 "timeout_s must be a number in (0, 1e8]");
			goto fail;
		}
		json_object_set_new(out, "timeout_s", json_real(json_number_value(to)));
	}
	/* cheap checks first, the file system last */
	if ((ae = cal_jobspec_recipe(req, out, prob)) || (ae = validate_devices(req, env, out, prob)) ||
	    (ae = validate_options(req, out, prob)))
		goto fail;
	if ((ae = cal_jobspec_model(req, env, &model, prob)) || (ae = model_names_fit(model, prob)))
		goto fail;
	if ((ae = validate_calibration(json_object_get(req, "calibration"), env, out, prob)) ||
	    (ae = validate_evaluate(json_object_get(req, "evaluate"), env, out, prob)))
		goto fail;
	if ((ae = get_path(json_object_get(req, "output"), "output", env->output_roots, env->n_output_roots, 0,
			   &output, prob)) ||
	    (ae = output_names_fit(output, prob)))
		goto fail;
	if ((ae = validate_distributed(json_object_get(req, "distributed"), env, out, prob)))
		goto fail;
	if (cal_path_under(output, model) || cal_path_under(model, output)) {
		ae = cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, "output",
					 "output must not overlap the model directory");
		goto fail;
	}
	json_t *ms = json_string(model), *os = json_string(output);
	if (!ms || !os) {
		json_decref(ms);
		json_decref(os);
		ae = cal_api_problem_set(prob, CAL_API_ERR_INVALID_FIELD, ms ? "output" : "model",
					 "the resolved path is not valid UTF-8");
		goto fail;
	}
	json_object_set_new(out, "model", ms);
	json_object_set_new(out, "output", os);
	json_object_set_new(out, "priority", json_integer(prio));
	free(model);
	free(output);
	*ret_spec = out;
	return CAL_API_OK;
fail:
	free(model);
	free(output);
	json_decref(out);
	return ae;
}

/* ---- the spec as engine options ------------------------------------------ */

enum cal_status cal_jobspec_job_opts(const json_t *spec, struct cal_jobspec_job *ret,
				     struct cal_error *err)
{
	const json_t *cal = json_object_get(spec, "calibration");
	const json_t *opts = json_object_get(spec, "options");
	const json_t *ds = json_object_get(cal, "datasets");
	struct cal_job_opts *o = &ret->opts;
	size_t i;
	json_t *x;
	memset(ret, 0, sizeof(*ret));
	o->model_dir = json_string_value(json_object_get(spec, "model"));
	o->recipe = json_string_value(json_object_get(spec, "recipe"));
	o->recipe_yaml = json_string_value(json_object_get(spec, "recipe_yaml"));
	o->kv_cache_qformat = json_string_value(json_object_get(spec, "kv_cache_qformat"));
	/* the tree the daemon validated the recipe against, confined to it */
	o->recipe_opts.builtin_dir = json_string_value(json_object_get(spec, "recipes_dir"));
	o->recipe_opts.no_filesystem = 1;
	if (!o->model_dir || !o->recipe_opts.builtin_dir || !json_is_object(cal))
		return cal_error_set(err, CAL_ERR_FORMAT, "job spec: model, recipes_dir and "
				     "calibration are required");
	if (json_array_size(ds) > CAL_SPEC_MAX_DATASETS)
		return cal_error_set(err, CAL_ERR_FORMAT, "job spec: more than %d datasets",
				     CAL_SPEC_MAX_DATASETS);
	json_array_foreach(ds, i, x) {
		json_int_t n = json_integer_value(json_object_get(x, "samples"));
		ret->datasets[i].path = json_string_value(json_object_get(x, "path"));
		ret->datasets[i].samples = n > 0 ? (size_t)n : 0;
		if (!ret->datasets[i].path)
			return cal_error_set(err, CAL_ERR_FORMAT, "job spec: calibration.datasets[%zu] "
					     "has no path", i);
	}
	o->datasets = ret->datasets;
	o->n_datasets = json_array_size(ds);
	o->tokens = json_string_value(json_object_get(cal, "tokens"));
	json_int_t samples = json_integer_value(json_object_get(cal, "samples"));
	json_int_t seq_len = json_integer_value(json_object_get(cal, "seq_len"));
	json_int_t seed = json_integer_value(json_object_get(cal, "seed"));
	if (samples < 0 || seq_len < 0 || seed < 0)
		return cal_error_set(err, CAL_ERR_FORMAT, "job spec: negative calibration count");
	o->samples = (size_t)samples;
	o->seq_len = (size_t)seq_len;
	o->seed = (uint64_t)seed;
	o->per_expert_input_amax = json_is_true(json_object_get(opts, "per_expert_input_amax"));
	o->moe_calib_experts_ratio = json_number_value(json_object_get(opts, "moe_calib_experts_ratio"));
	json_int_t shard = json_integer_value(json_object_get(opts, "max_shard_size"));
	o->max_shard_bytes = shard > 0 ? (uint64_t)shard : 0;
	return spec_ranks(spec, o, err);
}

/* The spec's devices, options.ranks and distributed as the engine's
 * devices and rank layout (cal_jobspec_job_opts). */
static enum cal_status spec_ranks(const json_t *spec, struct cal_job_opts *o, struct cal_error *err)
{
	const json_t *dev = json_object_get(spec, "devices");
	size_t n_gpus = 0;
	if (json_is_integer(dev))
		n_gpus = (size_t)json_integer_value(dev);
	else if (json_is_array(dev))
		n_gpus = json_array_size(dev);
	else if (!json_is_string(dev) || strcmp(json_string_value(dev), "cpu"))
		return cal_error_set(err, CAL_ERR_FORMAT, "job spec: devices must be \"cpu\", a "
				     "count or a list");
	if (n_gpus > CAL_DEVICES_MAX)
		return cal_error_set(err, CAL_ERR_FORMAT, "job spec: more than %d devices",
				     CAL_DEVICES_MAX);
	o->devices.kind = n_gpus ? CAL_DEVICE_CUDA : CAL_DEVICE_CPU;
	o->devices.n = n_gpus;
	for (size_t i = 0; i < n_gpus; i++)
		o->devices.ids[i] = (int)i;
	json_int_t ranks = json_integer_value(json_object_get(json_object_get(spec, "options"), "ranks"));
	if (ranks < 0 || ranks > CAL_CALIB_MAX_RANKS)
		return cal_error_set(err, CAL_ERR_FORMAT, "job spec: options.ranks %lld out of range",
				     (long long)ranks);
	o->ranks.local = (unsigned)ranks;
	json_int_t ct = json_integer_value(json_object_get(json_object_get(spec, "options"), "comm_timeout_s"));
	o->ranks.timeout_ms = ct > 0 && ct <= 86400 ? (unsigned)ct * 1000u : 0;
	const json_t *dist = json_object_get(spec, "distributed");
	if (!dist)
		return CAL_OK;
	json_int_t nodes = json_integer_value(json_object_get(dist, "nodes"));
	json_int_t rank = json_integer_value(json_object_get(dist, "node_rank"));
	o->ranks.rendezvous = json_string_value(json_object_get(dist, "rendezvous"));
	if (nodes < 1 || nodes > CAL_CALIB_MAX_RANKS || rank < 0 || rank >= nodes)
		return cal_error_set(err, CAL_ERR_FORMAT, "job spec: distributed needs nodes and "
				     "node_rank below it");
	return cal_jobspec_node_ranks(o, (unsigned)nodes, (unsigned)rank, err);
}
