/*
 * test_units.c — api-suite checks that need no running daemon: SHA-256 and
 * the constant-time compare, the error table, path confinement, the
 * configuration loader, the route table against api/openapi.yaml, the
 * Kubernetes manifests and the systemd unit; a job's devices given as a
 * device string, and the spec as the engine's job options (what the worker
 * runs and the API validates).
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
#include "api/sha256.h"
#include "daemon/config.h"
#include "daemon/fsutil.h"

static const char *srcdir(void)
{
	const char *s = getenv("SRCDIR");
	cr_assert(s, "SRCDIR must be set (meson test sets it)");
	return s;
}

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
	char p[CAL_PATH_PARAM_MAX];
	cr_expect_geq(cal_route_match("GET", "/v1/jobs/abc", p), 0);
	cr_expect_str_eq(p, "abc");
	cr_expect_eq(cal_route_match("PUT", "/v1/jobs/abc", p), -2);
	cr_expect_eq(cal_route_match("GET", "/v1/jobs/a/b", p), -1);
	cr_expect_eq(cal_route_match("GET", "/v1/jobs/..", p), -1);
	cr_expect_eq(cal_route_match("GET", "/v1/jobs/%2e", p), -1);
	cr_expect_eq(cal_route_match("GET", "/v1/jobs/", p), -1);
	/* a multi-segment parameter (recipe names) */
	cr_expect_geq(cal_route_match("GET", "/v1/recipes/general/ptq/fp8_default-kv_fp8", p), 0);
	cr_expect_str_eq(p, "general/ptq/fp8_default-kv_fp8");
	cr_expect_eq(cal_route_match("GET", "/v1/recipes/general/../x", p), -1);
	cr_expect_eq(cal_route_match("GET", "/v1/recipes/general//x", p), -1);
	cr_expect_eq(cal_route_match("GET", "/v1/recipes/general/", p), -1);
	cr_expect_eq(cal_route_match("GET", "/v1/recipes/.hidden", p), -1);
	cr_expect_geq(cal_route_match("GET", "/v1/recipes", p), 0);
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
		{"{\"qformat\": \"nvfp4\"}", CAL_API_OK, NULL, NULL},
		{"{\"qformat\": \"nvfp4_awq\"}", CAL_API_ERR_INVALID_RECIPE, "qformat",
		 "awq_lite with NVFP4 weights"},
		{"{\"qformat\": \"int8_sq\"}", CAL_API_ERR_INVALID_RECIPE, "qformat", "smoothquant"},
		{"{\"qformat\": \"nvfp5\"}", CAL_API_ERR_INVALID_FIELD, "qformat", "nvfp4_mlp_only"},
		{"{\"qformat\": 4}", CAL_API_ERR_INVALID_FIELD, "qformat", "string"},
		{"{\"qformat\": \"fp8\", \"recipe\": \"general/ptq/fp8_default-kv_fp8\"}",
		 CAL_API_ERR_INVALID_FIELD, "qformat", "not several"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *req = json_loads(cases[i].req, 0, NULL), *out = json_object();
		struct cal_api_problem prob = {0};
		enum cal_api_err ae = cal_jobspec_recipe(req, out, &prob);
		cr_assert_eq(ae, cases[i].ae, "%s: %d %s", cases[i].req, ae,
			     prob.message ? prob.message : "");
		if (ae == CAL_API_OK) {
			cr_assert_str_eq(json_string_value(json_object_get(out, "recipe")),
					 "general/ptq/nvfp4_default-kv_fp8_cast");
			cr_assert_str_eq(json_string_value(json_object_get(out, "qformat")), "nvfp4");
		} else {
			cr_assert_str_eq(prob.field, cases[i].field);
			cr_assert(strstr(prob.message, cases[i].needle), "%s: %s", cases[i].req,
				  prob.message);
		}
		cal_api_problem_clear(&prob);
		json_decref(req);
		json_decref(out);
	}
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
	snprintf(p, sizeof(p), "%s/m/config.json", models);
	FILE *f = fopen(p, "w");
	cr_assert(f);
	fputs("{}", f);
	fclose(f);
	snprintf(p, sizeof(p), "%s/d.jsonl", data);
	f = fopen(p, "w");
	cr_assert(f);
	fputs("{\"text\":\"x\"}\n", f);
	fclose(f);
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
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	cr_assert_eq(system(cmd), 0);
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
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	cr_assert_eq(system(cmd), 0);
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

/* ---- YAML helpers (document API; test inputs are our own files) ---- */

/* The node at path, components separated by any character of sep. */
static yaml_node_t *ynode_sep(yaml_document_t *d, yaml_node_t *n, const char *path, const char *sep)
{
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *tok = strtok(buf, sep); tok && n; tok = strtok(NULL, sep)) {
		if (n->type == YAML_SEQUENCE_NODE) {
			long i = atol(tok);
			yaml_node_item_t *it = n->data.sequence.items.start + i;
			n = it < n->data.sequence.items.top ? yaml_document_get_node(d, *it) : NULL;
			continue;
		}
		if (n->type != YAML_MAPPING_NODE)
			return NULL;
		yaml_node_t *found = NULL;
		for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
			yaml_node_t *k = yaml_document_get_node(d, p->key);
			if (k->type == YAML_SCALAR_NODE && !strcmp((char *)k->data.scalar.value, tok))
				found = yaml_document_get_node(d, p->value);
		}
		n = found;
	}
	return n;
}

static yaml_node_t *ynode(yaml_document_t *d, yaml_node_t *n, const char *path)
{
	return ynode_sep(d, n, path, ".");
}

static const char *yscalar(yaml_document_t *d, yaml_node_t *root, const char *path)
{
	yaml_node_t *n = ynode(d, root, path);
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Loads api/openapi.yaml into d (yaml_document_delete when done). */
static void openapi_load(yaml_document_t *d)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/api/openapi.yaml", srcdir());
	FILE *f = fopen(path, "rb");
	cr_assert(f, "%s", path);
	yaml_parser_t p;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_file(&p, f);
	cr_assert(yaml_parser_load(&p, d), "openapi.yaml: %s", p.problem);
	yaml_parser_delete(&p);
	fclose(f);
}

Test(units, openapi_lists_exactly_the_routes)
{
	yaml_document_t d;
	openapi_load(&d);
	yaml_node_t *paths = ynode(&d, yaml_document_get_root_node(&d), "paths");
	cr_assert(paths && paths->type == YAML_MAPPING_NODE);
	size_t documented = 0;
	for (yaml_node_pair_t *pp = paths->data.mapping.pairs.start; pp < paths->data.mapping.pairs.top; pp++) {
		const char *route = (const char *)yaml_document_get_node(&d, pp->key)->data.scalar.value;
		yaml_node_t *ops = yaml_document_get_node(&d, pp->value);
		for (yaml_node_pair_t *op = ops->data.mapping.pairs.start; op < ops->data.mapping.pairs.top; op++) {
			const char *m = (const char *)yaml_document_get_node(&d, op->key)->data.scalar.value;
			if (!strcmp(m, "parameters") || !strcmp(m, "summary"))
				continue;
			char M[16];
			size_t i = 0;
			for (; m[i] && i < 15; i++)
				M[i] = (char)(m[i] >= 'a' && m[i] <= 'z' ? m[i] - 32 : m[i]);
			M[i] = '\0';
			int found = 0;
			for (size_t r = 0; r < cal_n_routes; r++)
				found |= !strcmp(cal_routes[r].method, M) && !strcmp(cal_routes[r].pattern, route);
			cr_expect(found, "openapi.yaml documents %s %s, which the route table lacks", M, route);
			documented++;
		}
	}
	cr_expect_eq(documented, cal_n_routes, "the route table has %zu routes, openapi.yaml documents %zu",
		     cal_n_routes, documented);
	yaml_document_delete(&d);
}

static const char *yval(yaml_document_t *d, yaml_node_pair_t *p, int key)
{
	yaml_node_t *n = yaml_document_get_node(d, key ? p->key : p->value);
	return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Every key of a schema object is a schema keyword (an unquoted
 * "description: a, b" in a flow mapping makes "b" a key). */
static void schema_keys_ok(yaml_document_t *d, yaml_node_t *n, const char *where)
{
	static const char *const kw[] = {"type", "properties", "items", "required", "description", "oneOf", "anyOf",
					 "allOf", "not", "enum", "format", "pattern", "minLength", "maxLength",
					 "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
					 "maxItems", "uniqueItems", "additionalProperties", "nullable", "default",
					 "example", "$ref", "title", NULL};
	if (!n || n->type != YAML_MAPPING_NODE)
		return;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		const char *k = yval(d, p, 1);
		int ok = 0;
		for (const char *const *w = kw; *w && k; w++)
			ok |= !strcmp(*w, k);
		cr_expect(ok, "openapi.yaml %s: '%s' is not a schema keyword", where, k ? k : "(non-scalar)");
		yaml_node_t *v = yaml_document_get_node(d, p->value);
		if (!k || !v)
			continue;
		if (!strcmp(k, "properties") && v->type == YAML_MAPPING_NODE) {
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++)
				schema_keys_ok(d, yaml_document_get_node(d, q->value), where);
		} else if (!strcmp(k, "items") || !strcmp(k, "additionalProperties") || !strcmp(k, "not")) {
			schema_keys_ok(d, v, where);
		} else if ((!strcmp(k, "oneOf") || !strcmp(k, "anyOf") || !strcmp(k, "allOf")) &&
			   v->type == YAML_SEQUENCE_NODE) {
			for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++)
				schema_keys_ok(d, yaml_document_get_node(d, *it), where);
		}
	}
}

/* Checks every "schema:" value under n. */
static void schemas_under(yaml_document_t *d, yaml_node_t *n, const char *where)
{
	if (!n)
		return;
	if (n->type == YAML_SEQUENCE_NODE)
		for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
			schemas_under(d, yaml_document_get_node(d, *it), where);
	if (n->type != YAML_MAPPING_NODE)
		return;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		const char *k = yval(d, p, 1);
		yaml_node_t *v = yaml_document_get_node(d, p->value);
		if (k && !strcmp(k, "schema"))
			schema_keys_ok(d, v, where);
		else
			schemas_under(d, v, k ? k : where);
	}
}

/* The spec says what the daemon does: schemas are well-formed, each
 * operation's security matches the route's auth class (token routes:
 * bearer only; read routes: the empty requirement too, as they are open
 * without auth_read; probes: none), and every route that can answer 401
 * lists it. */
Test(units, openapi_matches_the_daemon)
{
	yaml_document_t d;
	openapi_load(&d);
	yaml_node_t *root = yaml_document_get_root_node(&d);
	yaml_node_t *schemas = ynode(&d, root, "components.schemas");
	cr_assert(schemas && schemas->type == YAML_MAPPING_NODE);
	for (yaml_node_pair_t *pp = schemas->data.mapping.pairs.start; pp < schemas->data.mapping.pairs.top; pp++)
		schema_keys_ok(&d, yaml_document_get_node(&d, pp->value), yval(&d, pp, 1));
	schemas_under(&d, ynode(&d, root, "paths"), "paths");
	yaml_node_t *global = ynode(&d, root, "security");
	for (size_t r = 0; r < cal_n_routes; r++) {
		char key[128], m[16];
		size_t i = 0;
		for (; cal_routes[r].method[i] && i < 15; i++)
			m[i] = (char)(cal_routes[r].method[i] + 32);
		m[i] = '\0';
		/* tab-separated: a route may contain a dot (report.html) */
		snprintf(key, sizeof(key), "paths\t%s\t%s", cal_routes[r].pattern, m);
		yaml_node_t *op = ynode_sep(&d, root, key, "\t");
		cr_assert(op, "openapi.yaml lacks %s", key);
		yaml_node_t *sec = ynode(&d, op, "security");
		if (!sec)
			sec = global;
		cr_assert(sec && sec->type == YAML_SEQUENCE_NODE, "%s: security", key);
		int anonymous = 0, bearer = 0;
		for (yaml_node_item_t *it = sec->data.sequence.items.start; it < sec->data.sequence.items.top; it++) {
			yaml_node_t *req = yaml_document_get_node(&d, *it);
			if (req->type == YAML_MAPPING_NODE && req->data.mapping.pairs.start == req->data.mapping.pairs.top)
				anonymous = 1;
			else if (ynode(&d, req, "bearer"))
				bearer = 1;
		}
		unsigned fl = cal_routes[r].flags;
		const char *want = (fl & CAL_ROUTE_PUBLIC) ? "no security" :
				   (fl & CAL_ROUTE_TOKEN) ? "bearer only" : "bearer or anonymous";
		int ok = (fl & CAL_ROUTE_PUBLIC) ? !anonymous && !bearer :
			 (fl & CAL_ROUTE_TOKEN) ? bearer && !anonymous : bearer && anonymous;
		cr_expect(ok, "%s: security should be %s", key, want);
		snprintf(key + strlen(key), sizeof(key) - strlen(key), "\tresponses\t401");
		if (!(fl & CAL_ROUTE_PUBLIC))
			cr_expect(ynode_sep(&d, root, key, "\t"), "openapi.yaml lacks %s", key);
	}
	yaml_document_delete(&d);
}

struct kdoc {
	yaml_document_t d;
	yaml_node_t *root;
	const char *kind, *name;
};

static size_t load_docs(const char *file, struct kdoc *out, size_t max)
{
	FILE *f = fopen(file, "rb");
	cr_assert(f, "%s", file);
	yaml_parser_t p;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_file(&p, f);
	size_t n = 0;
	while (n < max) {
		cr_assert(yaml_parser_load(&p, &out[n].d), "%s: %s", file, p.problem);
		out[n].root = yaml_document_get_root_node(&out[n].d);
		if (!out[n].root) {
			yaml_document_delete(&out[n].d);
			break;
		}
		out[n].kind = yscalar(&out[n].d, out[n].root, "kind");
		out[n].name = yscalar(&out[n].d, out[n].root, "metadata.name");
		n++;
	}
	yaml_parser_delete(&p);
	fclose(f);
	return n;
}

/* Loads every document of the resources a kustomization lists (dir
 * relative to the source tree); returns how many. */
static size_t load_kustomization(const char *dir, struct kdoc *docs, size_t max)
{
	char base[512], file[800];
	snprintf(base, sizeof(base), "%s/deploy/k8s/%s", srcdir(), dir);
	snprintf(file, sizeof(file), "%s/kustomization.yaml", base);
	struct kdoc k;
	cr_assert_eq(load_docs(file, &k, 1), 1);
	yaml_node_t *res = ynode(&k.d, k.root, "resources");
	cr_assert(res && res->type == YAML_SEQUENCE_NODE, "%s: no resources", file);
	size_t n = 0;
	for (yaml_node_item_t *it = res->data.sequence.items.start; it < res->data.sequence.items.top; it++) {
		const char *r = (const char *)yaml_document_get_node(&k.d, *it)->data.scalar.value;
		snprintf(file, sizeof(file), "%s/%s", base, r);
		cr_assert(access(file, R_OK) == 0, "%s lists %s, which is missing", dir, r);
		n += load_docs(file, docs + n, max - n);
	}
	yaml_document_delete(&k.d);
	return n;
}

static void free_docs(struct kdoc *docs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		yaml_document_delete(&docs[i].d);
}

/* 1 when the pod spec at `spec` tolerates the nvidia.com/gpu taint. */
static int tolerates_gpu(yaml_document_t *d, yaml_node_t *r, const char *spec)
{
	char q[160];
	for (int i = 0; i < 8; i++) {
		snprintf(q, sizeof(q), "%s.tolerations.%d.key", spec, i);
		const char *k = yscalar(d, r, q);
		if (k && !strcmp(k, "nvidia.com/gpu"))
			return 1;
	}
	return 0;
}

/* 1 when a volumeMount of the pod's first container holds path. */
static int mounted(yaml_document_t *d, yaml_node_t *r, const char *spec, const char *path)
{
	char q[160];
	for (int i = 0; i < 32; i++) {
		snprintf(q, sizeof(q), "%s.containers.0.volumeMounts.%d.mountPath", spec, i);
		const char *m = yscalar(d, r, q);
		if (!m)
			return 0;
		size_t n = strlen(m);
		if (!strncmp(path, m, n) && (path[n] == '\0' || path[n] == '/'))
			return 1;
	}
	return 0;
}

/* 1 when recipes/NAME.yaml exists. */
static int recipe_exists(const char *name)
{
	char f[512];
	snprintf(f, sizeof(f), "%s/recipes/%s.yaml", srcdir(), name);
	return access(f, R_OK) == 0;
}

/* Every root the daemon's configuration names is mounted in its pod. */
static void check_config_roots(const char *conf, yaml_document_t *dep, yaml_node_t *dr)
{
	yaml_parser_t p;
	yaml_document_t c;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_string(&p, (const unsigned char *)conf, strlen(conf));
	cr_assert(yaml_parser_load(&p, &c), "calibd.yaml of the ConfigMap: %s", p.problem);
	yaml_node_t *root = yaml_document_get_root_node(&c);
	static const char *const lists[] = {"model_roots", "data_roots", "output_roots"};
	int nroots = 0;
	for (size_t l = 0; l < sizeof(lists) / sizeof(*lists); l++) {
		yaml_node_t *seq = ynode(&c, root, lists[l]);
		cr_assert(seq && seq->type == YAML_SEQUENCE_NODE, "config lacks %s", lists[l]);
		for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
			const char *v = (const char *)yaml_document_get_node(&c, *it)->data.scalar.value;
			cr_expect(mounted(dep, dr, "spec.template.spec", v), "%s names %s, which no volume mounts",
				  lists[l], v);
			nroots++;
		}
	}
	cr_expect_geq(nroots, 3);
	static const char *const files[] = {"state_dir", "token_file"};
	for (size_t i = 0; i < sizeof(files) / sizeof(*files); i++) {
		const char *v = yscalar(&c, root, files[i]);
		cr_expect(!v || mounted(dep, dr, "spec.template.spec", v), "%s %s is not mounted", files[i], v);
	}
	yaml_node_t *ds = ynode(&c, root, "datasets");
	for (yaml_node_pair_t *q = ds ? ds->data.mapping.pairs.start : NULL; ds && q < ds->data.mapping.pairs.top; q++) {
		const char *v = (const char *)yaml_document_get_node(&c, q->value)->data.scalar.value;
		cr_expect(mounted(dep, dr, "spec.template.spec", v), "dataset %s is not mounted", v);
	}
	yaml_document_delete(&c);
	yaml_parser_delete(&p);
}

Test(units, kubernetes_manifests)
{
	struct kdoc docs[32];
	size_t n = load_kustomization("base", docs, 32);
	int have_dep = 0, pvc_models = 0, pvc_out = 0, secret = 0, svc = 0, cm = 0;
	const char *conf = NULL;
	yaml_document_t *dep = NULL;
	yaml_node_t *dr = NULL;
	for (size_t i = 0; i < n; i++) {
		yaml_document_t *d = &docs[i].d;
		yaml_node_t *r = docs[i].root;
		const char *kind = docs[i].kind;
		cr_assert(kind && yscalar(d, r, "apiVersion") && docs[i].name, "document %zu lacks kind/apiVersion/name", i);
		if (!strcmp(kind, "Deployment")) {
			have_dep = 1;
			dep = d;
			dr = r;
			cr_expect_str_eq(yscalar(d, r, "spec.strategy.type"), "Recreate");
			cr_expect_str_eq(yscalar(d, r, "spec.replicas"), "1");
			const char *c0 = "spec.template.spec.containers.0";
			char q[128];
			snprintf(q, sizeof(q), "%s.livenessProbe.httpGet.path", c0);
			cr_expect_str_eq(yscalar(d, r, q), "/livez", "liveness checks the supervisor only");
			snprintf(q, sizeof(q), "%s.readinessProbe.httpGet.path", c0);
			cr_expect_str_eq(yscalar(d, r, q), "/readyz");
			snprintf(q, sizeof(q), "%s.startupProbe.httpGet.path", c0);
			cr_expect(yscalar(d, r, q), "startup probe");
			snprintf(q, sizeof(q), "%s.resources.limits", c0);
			yaml_node_t *lim = ynode(d, r, q);
			int gpu = 0;
			for (yaml_node_pair_t *p = lim ? lim->data.mapping.pairs.start : NULL; lim && p < lim->data.mapping.pairs.top; p++)
				gpu |= !strcmp((char *)yaml_document_get_node(d, p->key)->data.scalar.value, "nvidia.com/gpu");
			cr_expect(gpu, "GPU limit");
			cr_expect(tolerates_gpu(d, r, "spec.template.spec"), "the Deployment does not tolerate nvidia.com/gpu");
		} else if (!strcmp(kind, "Job")) {
			/* applied with the daemon, a Job would share its ReadWriteOnce volume */
			cr_expect_fail("the base holds Job %s: Jobs belong in overlays", docs[i].name);
		} else if (!strcmp(kind, "PersistentVolumeClaim")) {
			pvc_models |= !strcmp(docs[i].name, "calibd-models");
			pvc_out |= !strcmp(docs[i].name, "calibd-outputs");
		} else if (!strcmp(kind, "Secret")) {
			secret = 1;
		} else if (!strcmp(kind, "Service")) {
			svc = 1;
		} else if (!strcmp(kind, "ConfigMap")) {
			cm = 1;
			/* the key holds a '.', which ynode() reads as a step */
			yaml_node_t *data = ynode(d, r, "data");
			for (yaml_node_pair_t *p = data ? data->data.mapping.pairs.start : NULL;
			     data && p < data->data.mapping.pairs.top; p++)
				if (!strcmp((char *)yaml_document_get_node(d, p->key)->data.scalar.value, "calibd.yaml"))
					conf = (const char *)yaml_document_get_node(d, p->value)->data.scalar.value;
		}
	}
	cr_expect(have_dep && pvc_models && pvc_out && secret && svc && cm,
		  "dep %d pvc %d/%d secret %d svc %d cm %d", have_dep, pvc_models, pvc_out, secret, svc, cm);
	cr_assert(conf && dep, "the base has no calibd.yaml ConfigMap or no Deployment");
	check_config_roots(conf, dep, dr);
	free_docs(docs, n);
}

/* The Jobs of the overlays: one that runs `calibd quantize` on a GPU with
 * a recipe that exists, one that submits to the daemon and waits. */
Test(units, kubernetes_overlays)
{
	struct kdoc docs[8];
	size_t n = load_kustomization("overlays/quantize-job", docs, 8);
	cr_assert_eq(n, 1);
	yaml_document_t *d = &docs[0].d;
	yaml_node_t *r = docs[0].root;
	cr_assert_str_eq(docs[0].kind, "Job");
	cr_expect_str_eq(yscalar(d, r, "spec.template.spec.containers.0.args.0"), "quantize");
	cr_expect_str_eq(yscalar(d, r, "spec.template.spec.restartPolicy"), "Never");
	cr_expect(yscalar(d, r, "spec.ttlSecondsAfterFinished"), "quantize Job without ttlSecondsAfterFinished");
	cr_expect(tolerates_gpu(d, r, "spec.template.spec"), "the quantize Job does not tolerate nvidia.com/gpu");
	int recipes = 0;
	char q[96];
	for (int i = 1; i < 16; i++) {
		snprintf(q, sizeof(q), "spec.template.spec.containers.0.args.%d", i);
		const char *a = yscalar(d, r, q);
		if (a && !strncmp(a, "--recipe=", 9)) {
			cr_expect(recipe_exists(a + 9), "the quantize Job names recipe '%s', which recipes/ lacks", a + 9);
			recipes++;
		}
		if (a && (!strncmp(a, "--model=", 8) || !strncmp(a, "--calib=", 8) || !strncmp(a, "--out=", 6))) {
			const char *v = strchr(a, '=') + 1;
			cr_expect(mounted(d, r, "spec.template.spec", v), "%s is not mounted", a);
		}
	}
	cr_expect_eq(recipes, 1, "the quantize Job passes no --recipe");
	free_docs(docs, n);

	n = load_kustomization("overlays/submit-job", docs, 8);
	cr_assert_eq(n, 1);
	d = &docs[0].d;
	r = docs[0].root;
	cr_assert_str_eq(docs[0].kind, "Job");
	cr_expect_str_eq(yscalar(d, r, "spec.template.spec.containers.0.args.0"), "submit");
	cr_expect(yscalar(d, r, "spec.ttlSecondsAfterFinished"), "submit Job without ttlSecondsAfterFinished");
	int wait = 0;
	for (int i = 1; i < 16; i++) {
		snprintf(q, sizeof(q), "spec.template.spec.containers.0.args.%d", i);
		const char *a = yscalar(d, r, q);
		wait |= a && !strcmp(a, "--wait");
	}
	cr_expect(wait, "the submit Job does not wait for the job");
	free_docs(docs, n);
	char spec[512];
	snprintf(spec, sizeof(spec), "%s/deploy/k8s/overlays/submit-job/spec.json", srcdir());
	json_t *j = json_load_file(spec, 0, NULL);
	cr_assert(j, "%s is not JSON", spec);
	const char *rn = json_string_value(json_object_get(j, "recipe"));
	cr_expect(rn && recipe_exists(rn), "spec.json names recipe '%s', which recipes/ lacks", rn ? rn : "");
	json_decref(j);
}

/* Paths of a unit's ReadOnlyPaths=/ReadWritePaths=/... lines that a fresh
 * host lacks fail the start (226/NAMESPACE): each is optional ('-') or
 * created by calibd.tmpfiles. */
static void check_unit_paths(const char *unit, const char *tmpfiles)
{
	static const char *const keys[] = {"ReadOnlyPaths=", "ReadWritePaths=", "InaccessiblePaths=", "ExecPaths="};
	for (const char *line = unit; *line; line += strcspn(line, "\n") + (line[strcspn(line, "\n")] != 0)) {
		for (size_t k = 0; k < sizeof(keys) / sizeof(*keys); k++) {
			size_t kl = strlen(keys[k]);
			if (strncmp(line, keys[k], kl))
				continue;
			char buf[1024];
			snprintf(buf, sizeof(buf), "%.*s", (int)strcspn(line + kl, "\n"), line + kl);
			for (char *save = NULL, *w = strtok_r(buf, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
				if (w[0] == '-' || (w[0] == '+' && w[1] == '-'))
					continue;
				char want[600];
				snprintf(want, sizeof(want), "\nd %s ", w);
				cr_expect(strstr(tmpfiles, want), "%s%s is neither optional ('-') nor created by tmpfiles", keys[k], w);
			}
		}
	}
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	cr_assert(f, "%s", path);
	char *text = calloc(1, 16384);
	cr_assert(text);
	text[0] = '\n';
	size_t n = fread(text + 1, 1, 16384 - 2, f);
	text[n + 1] = '\0';
	fclose(f);
	return text;
}

Test(units, systemd_unit)
{
	char unit[512], tmpf[512];
	snprintf(unit, sizeof(unit), "%s/systemd/calibd.service", srcdir());
	snprintf(tmpf, sizeof(tmpf), "%s/systemd/calibd.tmpfiles", srcdir());
	char *text = slurp(unit), *tmpfiles = slurp(tmpf);
	cr_expect(strstr(text, "Type=notify"));
	cr_expect(strstr(text, "WatchdogSec="));
	cr_expect(strstr(text, "ExecReload=") && strstr(text, "--check"));
	cr_expect(strstr(text, "DeviceAllow="));
	cr_expect(!strstr(text, "PrivateDevices=yes"), "PrivateDevices hides the GPUs");
	check_unit_paths(text, tmpfiles);
	free(text);
	free(tmpfiles);
	if (access("/usr/bin/systemd-analyze", X_OK) != 0 && access("/bin/systemd-analyze", X_OK) != 0) {
		cr_skip_test("systemd-analyze not installed: unit not verified");
	}
	char dir[] = "/tmp/calibd-unit-XXXXXX";
	cr_assert(mkdtemp(dir));
	char cmd[2048];
	snprintf(cmd, sizeof(cmd),
		 "sed 's#/usr/bin/calibd#%s#g' '%s' > %s/calibd.service && systemd-analyze verify %s/calibd.service 2>&1; "
		 "r=$?; rm -rf %s; exit $r", getenv("CALIBD"), unit, dir, dir, dir);
	int st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "systemd-analyze verify failed");
	/* the hardening: exposure 5.5 before CapabilityBoundingSet=,
	 * SystemCallFilter=, PrivateUsers=, ProtectProc=..., 1.6 after */
	cr_assert(mkdtemp(strcpy(dir, "/tmp/calibd-unit-XXXXXX")));
	snprintf(cmd, sizeof(cmd),
		 "sed 's#/usr/bin/calibd#%s#g' '%s' > %s/calibd.service && "
		 "systemd-analyze security --offline=true --threshold=25 %s/calibd.service >%s/out 2>&1; "
		 "r=$?; grep -a 'Overall exposure' %s/out; rm -rf %s; exit $r",
		 getenv("CALIBD"), unit, dir, dir, dir, dir, dir);
	st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "systemd-analyze security: exposure above 2.5");
}

/* The image: a health check, a release build that is not -Werror (CI
 * builds release with -Werror instead), meson >= 1.0 (PyPI: the base
 * image's is older), and a .dockerignore that keeps .git and build trees
 * out of the context.  No Docker engine here: the build itself is not run. */
Test(units, dockerfile)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/deploy/Dockerfile", srcdir());
	char *df = slurp(p);
	cr_expect(strstr(df, "\nHEALTHCHECK "), "the Dockerfile has no HEALTHCHECK");
	cr_expect(strstr(df, "-Dbuildtype=release") && !strstr(df, "werror=true"));
	cr_expect(strstr(df, "\"meson==") || strstr(df, "ubuntu24.04"), "the image's meson must be >= 1.0");
	free(df);
	snprintf(p, sizeof(p), "%s/.dockerignore", srcdir());
	char *ign = slurp(p);
	cr_expect(strstr(ign, "\n.git\n") && strstr(ign, "\nbuild/\n"), ".dockerignore lacks .git or build/");
	free(ign);
}

/* Exit codes are the same everywhere: a bad flag is a usage error (2) in
 * every subcommand, serve included, and so is an unknown command. */
Test(units, usage_error_is_2_everywhere)
{
	static const char *const cmds[] = {
#define CAL_CMD(name, desc) #name,
#include "daemon/commands.def"
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
	snprintf(cmd, sizeof(cmd), "nm -u '%s' 2>/dev/null | grep -Eiq 'cuda[A-Z]|cublas|nccl'",
		 getenv("CALIBD"));
	st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "calibd references CUDA/NCCL symbols");
	snprintf(cmd, sizeof(cmd), "ldd '%s' 2>/dev/null | grep -Eiq 'libcuda|libcublas|libnccl'",
		 getenv("CALIBD"));
	st = system(cmd);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "calibd links a CUDA/NCCL library");
}
