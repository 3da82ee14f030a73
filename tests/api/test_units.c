/*
 * test_units.c — api-suite checks that need no running daemon: SHA-256 and
 * the constant-time compare, the error table, path confinement, the
 * configuration loader; a job's devices given as a device string, and the
 * spec as the engine's job options (what the worker runs and the API
 * validates).  The route table, manifests and unit files:
 * test_units_deploy.c.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml.h>

#include "api/errors.h"
#include "api/http.h"
#include "api/jobspec.h"
#include "common/sha256.h"
#include "daemon/config.h"
#include "common/fsutil.h"
#include "testutil.h"

static void hex_of(const char *in, size_t n, char out[65])
{
	uint8_t d[32];
	cal_sha256(in, n, d);
	cal_sha256_hex(d, out);
}

Test(units, sha256_vectors)
{
	char h[65];
	hex_of("", 0, h);
	cr_expect_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	hex_of("abc", 3, h);
	cr_expect_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	hex_of(two, strlen(two), h);
	cr_expect_str_eq(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	char *mil = malloc(1000000);
	memset(mil, 'a', 1000000);
	struct cal_sha256 s;
	cal_sha256_init(&s);
	for (int i = 0; i < 1000; i++)
		cal_sha256_update(&s, mil + i * 1000, 1000);
	uint8_t d[32];
	cal_sha256_final(&s, d);
	cal_sha256_hex(d, h);
	cr_expect_str_eq(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	free(mil);
}

Test(units, digest_equal)
{
	uint8_t a[32], b[32];
	cal_sha256("token", 5, a);
	memcpy(b, a, 32);
	cr_expect_eq(cal_digest_equal(a, b), 1);
	for (int i = 0; i < 32; i++) {
		b[i] ^= 0x80;
		cr_expect_eq(cal_digest_equal(a, b), 0, "differs at byte %d", i);
		b[i] ^= 0x80;
	}
}

Test(units, error_table_is_unique)
{
	unsigned n = cal_api_err_count();
	for (unsigned i = 0; i < n; i++) {
		enum cal_api_err a = cal_api_err_at(i);
		unsigned st = cal_api_err_http(a);
		cr_expect(st >= 400 && st <= 599, "%s: status %u", cal_api_err_code(a), st);
		for (unsigned k = i + 1; k < n; k++) {
			enum cal_api_err b = cal_api_err_at(k);
			cr_expect_neq(a, b, "number %d twice", (int)a);
			cr_expect_str_neq(cal_api_err_code(a), cal_api_err_code(b));
		}
	}
}

Test(units, route_match)
{
	/* want: 1 a route (any index), -1 no route, -2 the path's route lacks
	 * the method; param: the path parameter of a match, or NULL */
	static const struct {
		const char *method, *path;
		int want;
		const char *param;
	} cases[] = {
		{"GET", "/v1/jobs/abc", 1, "abc"},
		{"PUT", "/v1/jobs/abc", -2, NULL},
		{"GET", "/v1/jobs/a/b", -1, NULL},
		{"GET", "/v1/jobs/..", -1, NULL},
		{"GET", "/v1/jobs/%2e", -1, NULL},
		{"GET", "/v1/jobs/", -1, NULL},
		/* a multi-segment parameter (recipe names) */
		{"GET", "/v1/recipes/general/ptq/fp8_default-kv_fp8", 1, "general/ptq/fp8_default-kv_fp8"},
		{"GET", "/v1/recipes/general/../x", -1, NULL},
		{"GET", "/v1/recipes/general//x", -1, NULL},
		{"GET", "/v1/recipes/general/", -1, NULL},
		{"GET", "/v1/recipes/.hidden", -1, NULL},
		{"GET", "/v1/recipes", 1, NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char p[CAL_PATH_PARAM_MAX];
		int r = cal_route_match(cases[i].method, cases[i].path, p);
		if (cases[i].want > 0)
			cr_expect_geq(r, 0, "%s %s: %d", cases[i].method, cases[i].path, r);
		else
			cr_expect_eq(r, cases[i].want, "%s %s: %d", cases[i].method, cases[i].path, r);
		if (cases[i].param && r >= 0)
			cr_expect_str_eq(p, cases[i].param, "%s %s", cases[i].method, cases[i].path);
	}
}

Test(units, recipe_names)
{
	cr_expect(cal_recipe_name_ok("general/ptq/nvfp4_default-kv_fp8"));
	cr_expect(cal_recipe_name_ok("mine.v2"));
	cr_expect(!cal_recipe_name_ok(""));
	cr_expect(!cal_recipe_name_ok("/etc/passwd"));
	cr_expect(!cal_recipe_name_ok("a/../b"));
	cr_expect(!cal_recipe_name_ok("a//b"));
	cr_expect(!cal_recipe_name_ok("a/"));
	cr_expect(!cal_recipe_name_ok(".hidden"));
	cr_expect(!cal_recipe_name_ok("a b"));
	char longname[CAL_RECIPE_NAME_MAX + 2];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	cr_expect(!cal_recipe_name_ok(longname));
}

/* cal_jobspec_recipe on req: ae; when OK, out.<key> == value and, with
 * recipe, out.recipe == recipe; else the problem names field `value` (key
 * when value is NULL) and its message holds recipe. */
static void jobspec_recipe_case(const char *reqs, enum cal_api_err want, const char *key,
				const char *value, const char *recipe)
{
	json_t *req = json_loads(reqs, 0, NULL), *out = json_object();
	struct cal_api_problem prob = {0};
	enum cal_api_err ae = cal_jobspec_recipe(req, out, &prob);
	cr_assert_eq(ae, want, "%s: %d %s", reqs, ae, prob.message ? prob.message : "");
	if (ae == CAL_API_OK) {
		cr_assert_str_eq(json_string_value(json_object_get(out, key)), value);
		if (recipe)
			cr_assert_str_eq(json_string_value(json_object_get(out, "recipe")), recipe);
	} else {
		cr_assert_str_eq(prob.field, value ? value : key);
		cr_assert(strstr(prob.message, recipe), "%s: %s", reqs, prob.message);
	}
	cal_api_problem_clear(&prob);
	json_decref(req);
	json_decref(out);
}

/* "qformat" in a job spec: mapped to its built-in recipe (both recorded),
 * a refused one names its reason, an unknown one lists the names, and it
 * excludes recipe / recipe_yaml. */
Test(units, jobspec_qformat)
{
	static const struct {
		const char *req;
		enum cal_api_err ae;
		const char *field, *needle;
	} cases[] = {
		/* OK: field = the qformat recorded, needle = its recipe */
		{"{\"qformat\": \"nvfp4\"}", CAL_API_OK, "nvfp4",
		 "general/ptq/nvfp4_default-kv_fp8_cast"},
		{"{\"qformat\": \"nvfp4_awq\"}", CAL_API_OK, "nvfp4_awq",
		 "general/ptq/nvfp4_awq-kv_fp8_cast"},
		{"{\"qformat\": \"w4a8_awq\"}", CAL_API_OK, "w4a8_awq",
		 "general/ptq/w4a8_awq-kv_fp8_cast"},
		{"{\"qformat\": \"int8_sq\"}", CAL_API_OK, "int8_sq", "general/ptq/int8_sq-kv_fp8_cast"},
		{"{\"qformat\": \"nvfp4_svdquant\"}", CAL_API_ERR_INVALID_RECIPE, "qformat",
		 "svdquant"},
		{"{\"qformat\": \"nvfp5\"}", CAL_API_ERR_INVALID_FIELD, "qformat", "nvfp4_mlp_only"},
		{"{\"qformat\": 4}", CAL_API_ERR_INVALID_FIELD, "qformat", "string"},
		{"{\"qformat\": \"fp8\", \"recipe\": \"general/ptq/fp8_default-kv_fp8\"}",
		 CAL_API_ERR_INVALID_FIELD, "qformat", "not several"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		jobspec_recipe_case(cases[i].req, cases[i].ae, "qformat", cases[i].field,
				    cases[i].needle);
}

/* "kv_cache_qformat": one of hf_ptq's --kv_cache_qformat names, recorded;
 * anything else is invalid_field listing them. */
Test(units, jobspec_kv_cache_qformat)
{
	const char *k = "kv_cache_qformat";
	jobspec_recipe_case("{\"qformat\": \"nvfp4\", \"kv_cache_qformat\": \"nvfp4_affine\"}",
			    CAL_API_OK, k, "nvfp4_affine", "general/ptq/nvfp4_default-kv_fp8_cast");
	jobspec_recipe_case("{\"recipe\": \"general/ptq/fp8_default-kv_fp8\", "
			    "\"kv_cache_qformat\": \"none\"}", CAL_API_OK, k, "none", NULL);
	jobspec_recipe_case("{\"qformat\": \"nvfp4\", \"kv_cache_qformat\": \"nvfp4_rotated\"}",
			    CAL_API_ERR_INVALID_FIELD, k, NULL, "nvfp4_rotate");
	jobspec_recipe_case("{\"qformat\": \"nvfp4\", \"kv_cache_qformat\": 8}",
			    CAL_API_ERR_INVALID_FIELD, k, NULL, "fp8_affine");
}

Test(units, state_write_keeps_previous_generation)
{
	char dir[] = "/tmp/calibd-gen-XXXXXX";
	cr_assert(mkdtemp(dir));
	char p[128], buf[64];
	cr_assert_eq(cal_write_atomic_keep(dir, "s", "s.prev", "one", 3, NULL), CAL_OK);
	snprintf(p, sizeof(p), "%s/s.prev", dir);
	cr_expect_neq(access(p, F_OK), 0, "no prev after the first write");
	cr_assert_eq(cal_write_atomic_keep(dir, "s", "s.prev", "two", 3, NULL), CAL_OK);
	cr_assert_eq(cal_write_atomic_keep(dir, "s", "s.prev", "three", 5, NULL), CAL_OK);
	FILE *f = fopen(p, "r");
	cr_assert(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	cr_expect_str_eq(buf, "two", "prev holds the generation before the current one");
	double pct = -1;
	cr_expect_eq(cal_free_percent(dir, &pct), 0);
	cr_expect(pct >= 0 && pct <= 100, "free %.1f%%", pct);
	cr_expect_eq(cal_rmtree(dir, NULL), CAL_OK);
	cr_expect_neq(access(dir, F_OK), 0, "removed");
}

Test(units, path_confinement)
{
	char root[] = "/tmp/calibd-conf-XXXXXX";
	cr_assert(mkdtemp(root));
	char in[128], link[128], out[128];
	snprintf(in, sizeof(in), "%s/in", root);
	mkdir(in, 0755);
	snprintf(link, sizeof(link), "%s/in/escape", root);
	cr_assert_eq(symlink("/etc", link), 0);
	char *roots[] = {in};
	char *real = NULL;
	cr_expect_eq(cal_path_confine(link, roots, 1, 1, &real, NULL), CAL_ERR_RANGE, "symlink escape");
	snprintf(out, sizeof(out), "%s/in/escape/x", root);
	cr_expect_eq(cal_path_confine(out, roots, 1, 0, &real, NULL), CAL_ERR_RANGE, "output under an escaping link");
	cr_expect_eq(cal_path_confine("in/x", roots, 1, 0, &real, NULL), CAL_ERR_INVALID, "relative");
	cr_expect_eq(cal_path_confine("/tmp/\x01", roots, 1, 0, &real, NULL), CAL_ERR_INVALID, "control byte");
	snprintf(out, sizeof(out), "%s/in/new", root);
	cr_expect_eq(cal_path_confine(out, roots, 1, 0, &real, NULL), CAL_OK);
	free(real);
	snprintf(out, sizeof(out), "%s/in", root);
	cr_expect_eq(cal_path_confine(out, roots, 1, 0, &real, NULL), CAL_ERR_EXISTS);
	char prefix[128];
	snprintf(prefix, sizeof(prefix), "%s/input", root);
	mkdir(prefix, 0755);
	cr_expect_eq(cal_path_confine(prefix, roots, 1, 1, &real, NULL), CAL_ERR_RANGE, "/in is not a prefix of /input");
	unlink(link);
	rmdir(prefix);
	rmdir(in);
	rmdir(root);
}

/* A temp root with models/m/config.json, data/d.jsonl and out/ (each
 * buffer 128 bytes). */
static void spec_dirs(char *root, char *models, char *data, char *out)
{
	char p[256];
	cr_assert(mkdtemp(root));
	snprintf(models, 128, "%s/models", root);
	snprintf(data, 128, "%s/data", root);
	snprintf(out, 128, "%s/out", root);
	mkdir(models, 0755);
	mkdir(data, 0755);
	mkdir(out, 0755);
	snprintf(p, sizeof(p), "%s/m", models);
	mkdir(p, 0755);
	cal_test_write_text(p, "config.json", "{}");
	cal_test_write_text(data, "d.jsonl", "{\"text\":\"x\"}\n");
}

/* A submission's devices as a device string (common/device.h) and the
 * canonical spec as the engine's options (cal_jobspec_job_opts). */
Test(units, job_devices_and_engine_options)
{
	char root[] = "/tmp/calibd-spec-XXXXXX", models[128], data[128], out[128];
	spec_dirs(root, models, data, out);
	char *mr[] = {models}, *dr[] = {data}, *orr[] = {out};
	static const int gpus[] = {0, 1, 2, 3};
	struct cal_jobspec_env env = {.model_roots = mr, .n_model_roots = 1, .data_roots = dr, .n_data_roots = 1,
				      .output_roots = orr, .n_output_roots = 1, .devices = gpus, .n_devices = 4};
	static const struct {
		const char *devices;
		enum cal_api_err ae;
		const char *want;   /* the spec's devices, compact JSON */
		size_t n_gpus;
	} cases[] = {
		{"\"cpu\"", CAL_API_OK, "\"cpu\"", 0},
		{"\"cuda\"", CAL_API_OK, "1", 1},
		{"\"cuda:3,1\"", CAL_API_OK, "[3,1]", 2},
		{"[2]", CAL_API_OK, "[2]", 1},
		{"\"cuda:7\"", CAL_API_ERR_DEVICES_UNAVAILABLE, NULL, 0},
		{"\"cuda:1,1\"", CAL_API_ERR_INVALID_FIELD, NULL, 0},
		{"\"gpu\"", CAL_API_ERR_INVALID_FIELD, NULL, 0},
		{"\"auto\"", CAL_API_ERR_INVALID_FIELD, NULL, 0},
		{"\"cuda:\"", CAL_API_ERR_INVALID_FIELD, NULL, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char body[1024];
		snprintf(body, sizeof(body),
			 "{\"recipe\":\"general/ptq/fp8_default-kv_fp8\",\"model\":\"%s/m\",\"calibration\":"
			 "{\"datasets\":[\"%s/d.jsonl\",{\"path\":\"%s/d.jsonl\",\"samples\":3}],\"seq_len\":64},"
			 "\"output\":\"%s/o\",\"devices\":%s,\"options\":{\"per_expert_input_amax\":true,"
			 "\"max_shard_size\":5000000}}",
			 models, data, data, out, cases[i].devices);
		json_t *req = json_loads(body, 0, NULL), *spec = NULL;
		cr_assert(req, "%s", body);
		struct cal_api_problem prob = {0};
		enum cal_api_err ae = cal_jobspec_validate(req, &env, &spec, &prob);
		cr_expect_eq(ae, cases[i].ae, "devices %s: %d", cases[i].devices, ae);
		if (ae) {
			cr_expect_str_eq(prob.field, "devices", "devices %s", cases[i].devices);
			cal_api_problem_clear(&prob);
			json_decref(req);
			continue;
		}
		char *d = json_dumps(json_object_get(spec, "devices"), JSON_COMPACT | JSON_ENCODE_ANY);
		cr_expect_str_eq(d, cases[i].want, "devices %s", cases[i].devices);
		free(d);
		/* the spec as the engine's options: without recipes_dir it is refused */
		struct cal_jobspec_job jj;
		struct cal_error err = {0};
		cr_expect_eq(cal_jobspec_job_opts(spec, &jj, &err), CAL_ERR_FORMAT);
		cal_error_clear(&err);
		json_object_set_new(spec, "recipes_dir", json_string("/recipes"));
		cr_assert_eq(cal_jobspec_job_opts(spec, &jj, &err), CAL_OK, "%s", cal_error_msg(&err));
		cr_expect_str_eq(jj.opts.recipe, "general/ptq/fp8_default-kv_fp8");
		cr_expect_null(jj.opts.recipe_yaml);
		cr_expect_str_eq(jj.opts.recipe_opts.builtin_dir, "/recipes");
		cr_expect(jj.opts.recipe_opts.no_filesystem);
		cr_expect_eq(jj.opts.n_datasets, 2);
		cr_expect_eq(jj.opts.datasets[0].samples, 0);
		cr_expect_eq(jj.opts.datasets[1].samples, 3);
		cr_expect(strstr(jj.opts.datasets[1].path, "/data/d.jsonl"));
		cr_expect_null(jj.opts.tokens);
		cr_expect_eq(jj.opts.samples, 512);
		cr_expect_eq(jj.opts.seq_len, 64);
		cr_expect(jj.opts.per_expert_input_amax);
		cr_expect_eq(jj.opts.max_shard_bytes, 5000000); /* options.max_shard_size */
		/* the worker sees its GPUs as 0..n-1 (CUDA_VISIBLE_DEVICES) */
		cr_expect_eq(jj.opts.devices.kind, cases[i].n_gpus ? CAL_DEVICE_CUDA : CAL_DEVICE_CPU);
		cr_expect_eq(jj.opts.devices.n, cases[i].n_gpus);
		for (size_t k = 0; k < cases[i].n_gpus; k++)
			cr_expect_eq(jj.opts.devices.ids[k], (int)k);
		json_decref(spec);
		json_decref(req);
	}
	cal_test_rm_rf(root);
}

/* options.ranks (the CPU ranks of a CPU job; a GPU job runs one rank per
 * GPU) and distributed {nodes, node_rank, rendezvous} (this job as one node
 * of several) as the engine's rank layout; refusals name the field. */
Test(units, job_ranks_and_nodes)
{
	char root[] = "/tmp/calibd-spec-XXXXXX", models[128], data[128], out[128], have[200];
	spec_dirs(root, models, data, out);
	snprintf(have, sizeof(have), "%s/rv-old", out);
	FILE *hf = fopen(have, "w");
	cr_assert(hf);
	fclose(hf);
	char *mr[] = {models}, *dr[] = {data}, *orr[] = {out};
	static const int gpus[] = {0, 1};
	struct cal_jobspec_env env = {.model_roots = mr, .n_model_roots = 1, .data_roots = dr, .n_data_roots = 1,
				      .output_roots = orr, .n_output_roots = 1, .devices = gpus, .n_devices = 2};
	/* OUT in extra is the output root */
	static const struct {
		const char *devices, *extra;
		const char *field; /* NULL: accepted */
		unsigned local, world, first;
	} cases[] = {
#define RANKS(devices, extra, field, local, world, first) {devices, extra, field, local, world, first},
#include "ranks_cases.def"
#undef RANKS
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char body[1024], extra[400] = "";
		const char *o = strstr(cases[i].extra, "OUT");
		if (o)
			snprintf(extra, sizeof(extra), "%.*s%s%s", (int)(o - cases[i].extra), cases[i].extra, out, o + 3);
		else
			snprintf(extra, sizeof(extra), "%s", cases[i].extra);
		snprintf(body, sizeof(body),
			 "{\"recipe\":\"general/ptq/fp8_default-kv_fp8\",\"model\":\"%s/m\",\"calibration\":"
			 "{\"datasets\":[\"%s/d.jsonl\"]},\"output\":\"%s/o\",\"devices\":%s%s}",
			 models, data, out, cases[i].devices, extra);
		json_t *req = json_loads(body, 0, NULL), *spec = NULL;
		cr_assert(req, "%s", body);
		struct cal_api_problem prob = {0};
		enum cal_api_err ae = cal_jobspec_validate(req, &env, &spec, &prob);
		if (cases[i].field) {
			cr_expect_neq(ae, CAL_API_OK, "%s", body);
			cr_expect_str_eq(prob.field ? prob.field : "", cases[i].field, "%s: %s", body, prob.message);
			cal_api_problem_clear(&prob);
			json_decref(req);
			continue;
		}
		cr_assert_eq(ae, CAL_API_OK, "%s: %s", body, prob.message);
		json_object_set_new(spec, "recipes_dir", json_string("/recipes"));
		struct cal_jobspec_job jj;
		struct cal_error err = {0};
		cr_assert_eq(cal_jobspec_job_opts(spec, &jj, &err), CAL_OK, "%s", cal_error_msg(&err));
		unsigned local = cal_job_local_ranks(&jj.opts.ranks, &jj.opts.devices);
		unsigned world = jj.opts.ranks.world ? jj.opts.ranks.world : local;
		cr_expect(local == cases[i].local && world == cases[i].world && jj.opts.ranks.first == cases[i].first,
			  "%s: ranks %u..+%u of %u", body, jj.opts.ranks.first, local, world);
		cr_expect_eq(!!jj.opts.ranks.rendezvous, cases[i].world > cases[i].local, "%s", body);
		cr_expect_eq(jj.opts.ranks.timeout_ms, strstr(body, "comm_timeout_s") ? 30000u : 0u, "%s", body);
		json_decref(spec);
		json_decref(req);
	}
	cal_test_rm_rf(root);
}

/* evaluate {dataset, samples}: canonical {path, samples}, errors name the field. */
Test(units, job_evaluate)
{
	char root[] = "/tmp/calibd-spec-XXXXXX", models[128], data[128], out[128];
	spec_dirs(root, models, data, out);
	char *mr[] = {models}, *dr[] = {data}, *orr[] = {out};
	struct cal_jobspec_env env = {.model_roots = mr, .n_model_roots = 1, .data_roots = dr, .n_data_roots = 1,
				      .output_roots = orr, .n_output_roots = 1};
	static const struct {
		const char *evaluate;
		enum cal_api_err ae;
		const char *field;
		long long samples;
	} cases[] = {
		{"{\"dataset\":\"%s/d.jsonl\"}", CAL_API_OK, NULL, 128},
		{"{\"dataset\":\"%s/d.jsonl\",\"samples\":16}", CAL_API_OK, NULL, 16},
		{"{\"samples\":16}", CAL_API_ERR_MISSING_FIELD, "evaluate.dataset", 0},
		{"{\"dataset\":\"%s/nope.jsonl\"}", CAL_API_ERR_PATH_NOT_FOUND, "evaluate.dataset", 0},
		{"{\"dataset\":\"%s/d.jsonl\",\"samples\":0}", CAL_API_ERR_INVALID_FIELD, "evaluate.samples", 0},
		{"{\"dataset\":\"%s/d.jsonl\",\"seq\":1}", CAL_API_ERR_UNKNOWN_FIELD, "evaluate.seq", 0},
		{"\"%s/d.jsonl\"", CAL_API_ERR_INVALID_FIELD, "evaluate", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char ev[256], body[1024];
		snprintf(ev, sizeof(ev), cases[i].evaluate, data);
		snprintf(body, sizeof(body),
			 "{\"recipe\":\"general/ptq/fp8_default-kv_fp8\",\"model\":\"%s/m\",\"calibration\":"
			 "{\"datasets\":[\"%s/d.jsonl\"]},\"output\":\"%s/o\",\"devices\":\"cpu\","
			 "\"evaluate\":%s}", models, data, out, ev);
		json_t *req = json_loads(body, 0, NULL), *spec = NULL;
		cr_assert(req, "%s", body);
		struct cal_api_problem prob = {0};
		enum cal_api_err ae = cal_jobspec_validate(req, &env, &spec, &prob);
		cr_expect_eq(ae, cases[i].ae, "%s: %d", ev, ae);
		if (ae) {
			cr_expect_str_eq(prob.field, cases[i].field, "%s", ev);
		} else {
			json_t *e = json_object_get(spec, "evaluate");
			cr_expect(strstr(json_string_value(json_object_get(e, "path")), "/data/d.jsonl"));
			cr_expect_eq(json_integer_value(json_object_get(e, "samples")), cases[i].samples);
		}
		cal_api_problem_clear(&prob);
		json_decref(spec);
		json_decref(req);
	}
	cal_test_rm_rf(root);
}

static enum cal_status load_cfg(const char *yaml, const char **flags, int nflags, struct cal_error *err)
{
	char path[] = "/tmp/calibd-cfg-XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	cr_assert_eq(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
	close(fd);
	struct cal_config *c = NULL;
	enum cal_status st = cal_config_load(path, nflags, (char **)flags, 1, &c, err);
	cal_config_unref(c);
	unlink(path);
	return st;
}

Test(units, config_errors_name_the_key)
{
	struct cal_error err = {0};
	cr_expect_eq(load_cfg("max_queue: 3\nport: 9000\nmodel_roots: [/tmp]\n", NULL, 0, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_neq(load_cfg("max_qeue: 3\n", NULL, 0, &err), CAL_OK);
	cr_expect(strstr(cal_error_msg(&err), "max_qeue"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_neq(load_cfg("port: 70000\n", NULL, 0, &err), CAL_OK);
	cr_expect(strstr(cal_error_msg(&err), "port"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_neq(load_cfg("a: &x 1\nport: *x\n", NULL, 0, &err), CAL_OK, "anchors refused");
	cal_error_clear(&err);
	cr_expect_neq(load_cfg("listen: 0.0.0.0\n", NULL, 0, &err), CAL_OK, "non-loopback without tokens");
	cr_expect(strstr(cal_error_msg(&err), "token"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_neq(load_cfg("model_roots: [/nonexistent/x]\n", NULL, 0, &err), CAL_OK);
	cal_error_clear(&err);
	const char *flags[] = {"--max-jobs", "0"};
	cr_expect_neq(load_cfg("", flags, 2, &err), CAL_OK, "flag range");
	cr_expect(strstr(cal_error_msg(&err), "max_concurrent_jobs"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	const char *bad[] = {"--nope"};
	cr_expect_neq(load_cfg("", bad, 1, &err), CAL_OK);
	cr_expect(strstr(cal_error_msg(&err), "--nope"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	/* numbers go through common/parse.c: durations take units, junk is named */
	cr_expect_eq(load_cfg("progress_timeout_s: 5m\nkill_grace_s: 250ms\njob_timeout_s: 2h\n", NULL, 0,
			      &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	static const char *const junk[] = {"max_queue: 3x\n", "max_queue: 0x10\n", "kill_grace_s: 5d\n",
					   "min_free_percent: 1e999\n", "port: \" 9000\"\n"};
	for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
		cr_expect_eq(load_cfg(junk[i], NULL, 0, &err), CAL_ERR_INVALID, "%s", junk[i]);
		char key[32];
		snprintf(key, sizeof(key), "%.*s", (int)strcspn(junk[i], ":"), junk[i]);
		cr_expect(strstr(cal_error_msg(&err), key), "%s: %s", junk[i], cal_error_msg(&err));
		cal_error_clear(&err);
	}
	size_t n = 0;
	int ids[CAL_MAX_DEVICES];
	cr_expect_eq(cal_config_parse_devices("0,3", ids, &n, &err), CAL_OK);
	cr_expect(n == 2 && ids[0] == 0 && ids[1] == 3);
	cr_expect_eq(cal_config_parse_devices("0,0", ids, &n, &err), CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "devices") && strstr(cal_error_msg(&err), "twice"), "%s",
		  cal_error_msg(&err));
	cal_error_clear(&err);
}

/* The dataset catalog: a `datasets:` map in the file, --dataset NAME=PATH
 * flags, names and paths checked; the CLI's expansion of --calib lists. */
Test(units, dataset_catalog)
{
	struct cal_error err = {0};
	char path[] = "/tmp/calibd-cat-XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	const char *yaml = "port: 9000\ndatasets:\n  cnn_dailymail: /data/cnn.jsonl\n  pile-10k: /data/pile.jsonl\n"
			   "max_queue: 3\n";
	cr_assert_eq(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
	close(fd);
	struct cal_config *c = NULL;
	cr_assert_eq(cal_config_load(path, 0, NULL, 1, &c, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(c->n_datasets, 2);
	cr_expect_eq(c->max_queue, 3, "keys after the map are read");
	const char *p = NULL;
	long n = -1;
	char msg[512];
	cr_expect_eq(cal_dataset_resolve(c->datasets, c->n_datasets, "cnn_dailymail:256", &p, &n, msg, sizeof(msg)), 0);
	cr_expect_str_eq(p, "/data/cnn.jsonl");
	cr_expect_eq(n, 256);
	cr_expect_eq(cal_dataset_resolve(c->datasets, c->n_datasets, "pile-10k", &p, &n, msg, sizeof(msg)), 0);
	cr_expect_eq(n, 0);
	cr_expect_eq(cal_dataset_resolve(c->datasets, c->n_datasets, "cnn", &p, &n, msg, sizeof(msg)), -1,
		     "a prefix is not a name");
	cr_expect(strstr(msg, "no dataset 'cnn'") && strstr(msg, "known: cnn_dailymail, pile-10k"), "%s", msg);
	cr_expect_eq(cal_dataset_resolve(c->datasets, c->n_datasets, "cnn_dailymail:0", &p, &n, msg, sizeof(msg)), -1);
	cr_expect_eq(cal_dataset_resolve(NULL, 0, "x", &p, &n, msg, sizeof(msg)), -1);
	cr_expect(strstr(msg, "empty"), "%s", msg);
	cal_config_unref(c);

	/* the CLI: names replaced, files and paths kept, unknown names refused */
	char *out = NULL;
	cr_assert_eq(cal_config_expand_calib("cnn_dailymail:8,/x/y.jsonl:2,pile-10k", path, &out, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_expect_str_eq(out, "/data/cnn.jsonl:8,/x/y.jsonl:2,/data/pile.jsonl");
	free(out);
	cr_expect_eq(cal_config_expand_calib("wikitext:8", path, &out, &err), CAL_ERR_NOTFOUND);
	cr_expect(strstr(cal_error_msg(&err), "wikitext") && strstr(cal_error_msg(&err), "cnn_dailymail"), "%s",
		  cal_error_msg(&err));
	cal_error_clear(&err);
	unsetenv("CALIBD_DATASETS_FILE");
	cr_assert_eq(cal_config_expand_calib("wikitext:8", NULL, &out, &err), CAL_OK, "no catalog: unchanged");
	cr_expect_str_eq(out, "wikitext:8");
	free(out);
	unlink(path);

	const char *flags[] = {"--dataset", "a=/d/a.jsonl", "--dataset", "b=/d/b.jsonl"};
	cr_expect_eq(load_cfg("datasets: {x: /d/x}\n", flags, 4, &err), CAL_OK, "%s", cal_error_msg(&err));
	static const char *const bad[] = {"datasets: {'a b': /x}\n", "datasets: {a: relative/x}\n",
					  "datasets: {a: /x, a: /y}\n", "datasets: [/x]\n", "datasets: {a: {b: /x}}\n"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		cr_expect_neq(load_cfg(bad[i], NULL, 0, &err), CAL_OK, "%s", bad[i]);
		cr_expect(strstr(cal_error_msg(&err), "datasets"), "%s: %s", bad[i], cal_error_msg(&err));
		cal_error_clear(&err);
	}
	const char *badflag[] = {"--dataset", "noequals"};
	cr_expect_neq(cal_config_check_flags(2, (char **)badflag, &err), CAL_OK, "a usage error");
	cal_error_clear(&err);
}

/* Exit codes are the same everywhere: a bad flag is a usage error (2) in
 * every subcommand, serve included, and so is an unknown command. */
Test(units, usage_error_is_2_everywhere)
{
	static const char *const cmds[] = {
#define CAL_CMD(name, desc) #name,
#include "cli/commands.def"
#undef CAL_CMD
	};
	const char *calibd = getenv("CALIBD");
	cr_assert(calibd);
	char cmd[1024];
	for (size_t i = 0; i < sizeof(cmds) / sizeof(*cmds); i++) {
		snprintf(cmd, sizeof(cmd), "'%s' %s --no-such-flag </dev/null >/dev/null 2>&1", calibd, cmds[i]);
		int st = system(cmd);
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 2, "calibd %s --no-such-flag: exit %d, expected 2", cmds[i],
			  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	}
	static const char *const more[] = {"serve --port notaport", "serve --config", "nosuchcommand", "status --url"};
	for (size_t i = 0; i < sizeof(more) / sizeof(*more); i++) {
		snprintf(cmd, sizeof(cmd), "'%s' %s </dev/null >/dev/null 2>&1", calibd, more[i]);
		int st = system(cmd);
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 2, "calibd %s: exit %d, expected 2", more[i],
			  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	}
}

/* RELIABILITY B10 / D2: no MHD_PostProcessor, and the calibd binary (the
 * supervisor) links no CUDA/NCCL library nor symbol: the CUDA back end is
 * the dlopen()ed module libcalibd-cuda.so (kernels/meson.build). */
Test(units, binary_dependencies)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "nm -u '%s' 2>/dev/null | grep -q post_processor", getenv("CALIBD"));
	int st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "calibd references MHD_PostProcessor");
	snprintf(cmd, sizeof(cmd), "nm -u '%s' 2>/dev/null | grep -Eiq 'cuda[A-Z]|cublas|cusolver|nccl'",
		 getenv("CALIBD"));
	st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "calibd references CUDA/NCCL symbols");
	snprintf(cmd, sizeof(cmd), "ldd '%s' 2>/dev/null | grep -Eiq 'libcuda|libcublas|libcusolver|libnccl'",
		 getenv("CALIBD"));
	st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "calibd links a CUDA/NCCL library");
}
