/*
 * test_api_inputs.c — api suite (test_api.h): the dataset catalog, recipes
 * and plans, output names that grow longer later, paths checked when they
 * are used, real jobs end to end and input bounded before parsing.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "cli/cli.h"
#include "engine/job.h"
#include "fixture.h"
#include "harness.h"
#include "test_api.h"
#include "test_recipes.h"

/* ---- recipes and plans ----------------------------------------------- */

json_t *get_json(const char *method, const char *path, const char *hdrs, const char *body, int want)
{
	struct cal_client_resp r;
	int st = hd_req(&H, method, path, hdrs, body, &r);
	cr_assert_eq(st, want, "%s %s → %d, expected %d: %s", method, path, st, want, st > 0 ? r.body : "");
	json_t *j = json_loads(r.body, 0, NULL);
	cal_client_resp_free(&r);
	cr_assert(j, "%s %s: not JSON", method, path);
	return j;
}

/* Submits a job whose only calibration dataset is `entry`, expecting HTTP
 * status want; returns the reply. */
static json_t *submit_dataset(const char *entry, const char *out, int want)
{
	char body[1024];
	snprintf(body, sizeof(body),
		 "{\"name\":\"fake-ok\",\"model\":\"%s/m\",\"recipe\":\"" HD_RECIPE "\",\"calibration\":{\"datasets\":"
		 "[\"%s\"],\"seq_len\":16},\"output\":\"%s/%s\",\"devices\":\"cpu\"}",
		 H.models, entry, H.out, out);
	return get_json("POST", "/v1/jobs", JSON, body, want);
}

/* Jobs name calibration data by catalog name, "cnn_dailymail:4" as hf_ptq
 * users do; unknown names are refused naming the known ones. */
Test(api, dataset_catalog)
{
	char cat[300], out_of_roots[300];
	snprintf(cat, sizeof(cat), "cnn_dailymail=%s/d.jsonl", H.data);
	snprintf(out_of_roots, sizeof(out_of_roots), "elsewhere=%s/m/config.json", H.models);
	cr_assert_eq(hd_start(&H, (const char *const[]){"--dataset", cat, "--dataset", out_of_roots, NULL}), 0);
	json_t *job = submit_dataset("cnn_dailymail:4", "cat", 202);
	json_t *d0 = json_array_get(json_object_get(json_object_get(json_object_get(job, "spec"), "calibration"),
						   "datasets"), 0);
	char want[300];
	snprintf(want, sizeof(want), "%s/d.jsonl", H.data);
	char *real = realpath(want, NULL);
	cr_expect(d0 && real && !strcmp(json_string_value(json_object_get(d0, "path")), real), "spec: %s",
		  d0 ? json_string_value(json_object_get(d0, "path")) : "(no datasets)");
	cr_expect_eq(json_integer_value(json_object_get(d0, "samples")), 4);
	free(real);
	json_decref(job);
	job = submit_dataset("wikitext:4", "cat2", 400);
	const char *msg = json_string_value(json_object_get(json_object_get(job, "error"), "message"));
	cr_expect(msg && strstr(msg, "no dataset 'wikitext'") && strstr(msg, "cnn_dailymail") &&
			  strstr(msg, "elsewhere"), "%s", msg ? msg : "(no message)");
	cr_expect_str_eq(json_string_value(json_object_get(json_object_get(job, "error"), "field")),
			 "calibration.datasets[0]");
	json_decref(job);
	/* the catalog does not widen the data roots */
	job = submit_dataset("elsewhere", "cat3", 403);
	cr_expect_str_eq(json_string_value(json_object_get(json_object_get(job, "error"), "code")),
			 "path_outside_roots");
	json_decref(job);
}

Test(api, recipes_and_plan)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	json_t *l = get_json("GET", "/v1/recipes", NULL, NULL, 200);
	json_t *list = json_object_get(l, "recipes");
	int found = 0;
	for (size_t i = 0; i < json_array_size(list); i++)
		found |= !strcmp(json_string_value(json_object_get(json_array_get(list, i), "name")), HD_RECIPE);
	cr_expect(found, "GET /v1/recipes lists %s", HD_RECIPE);
	json_decref(l);
	json_t *rc = get_json("GET", "/v1/recipes/" HD_RECIPE, NULL, NULL, 200);
	cr_expect_str_eq(json_string_value(json_object_get(rc, "name")), HD_RECIPE);
	cr_expect_gt(json_array_size(json_object_get(rc, "entries")), 3, "entries after imports");
	cr_expect(strstr(json_string_value(json_object_get(rc, "yaml")), "imports:"), "the recipe file");
	cr_expect_str_eq(json_string_value(json_object_get(json_object_get(rc, "algorithm"), "method")), "max");
	json_decref(rc);
	rc = get_json("GET", "/v1/recipes/general%2Fptq%2Ffp8_default-kv_fp8", NULL, NULL, 200);
	cr_expect_str_eq(json_string_value(json_object_get(rc, "name")), "general/ptq/fp8_default-kv_fp8");
	json_decref(rc);

	char body[1024];
	snprintf(body, sizeof(body), "{\"model\":\"%s/m\",\"recipe\":\"%s\"}", H.models, HD_RECIPE);
	json_t *plan = get_json("POST", "/v1/plan", JSON, body, 200);
	json_t *sum = json_object_get(plan, "summary");
	cr_expect_gt(json_integer_value(json_object_get(sum, "enabled")), 0);
	cr_expect_lt(json_integer_value(json_object_get(sum, "bytes_after")),
		     json_integer_value(json_object_get(sum, "bytes_before")));
	cr_expect_str_eq(json_string_value(json_object_get(sum, "kv_cache")), "fp8");
	cr_expect_gt(json_array_size(json_object_get(plan, "quantizers")), 0);
	cr_expect(!json_object_get(json_object_get(plan, "recipe"), "source"), "no server path in the reply");
	json_decref(plan);
	plan = get_json("POST", "/v1/plan?detail=summary", JSON, body, 200);
	cr_expect(!json_object_get(plan, "quantizers"), "detail=summary drops the quantizer list");
	cr_expect(json_object_get(plan, "summary"));
	json_decref(plan);
	snprintf(body, sizeof(body), "{\"model\":\"%s/m\",\"recipe_yaml\":\"" INLINE_BODY "\"}", H.models);
	plan = get_json("POST", "/v1/plan", JSON, body, 200);
	cr_expect_eq(json_integer_value(json_object_get(json_object_get(plan, "summary"), "enabled")), 0,
		     "an inline recipe disabling everything");
	json_decref(plan);

	const struct step steps[] = {
		{"unknown recipe", "GET", "/v1/recipes/general/ptq/nope", NULL, NULL, 404, "recipe_not_found"},
		{"dot segment", "GET", "/v1/recipes/general/../x", NULL, NULL, 404, "route_not_found"},
		{"not a recipe file", "GET", "/v1/recipes/configs/numerics/nvfp4", NULL, NULL, 422, "invalid_recipe"},
		{"recipes: wrong method", "POST", "/v1/recipes", JSON, "{}", 405, "method_not_allowed"},
		{"plan: empty", "POST", "/v1/plan", JSON, "", 400, "bad_json"},
		{"plan: unknown field", "POST", "/v1/plan", JSON, "{\"modle\":1}", 400, "unknown_field"},
		{"plan: no recipe", "POST", "/v1/plan", JSON, "{" J_MODEL "}", 400, "missing_field"},
		{"plan: no model", "POST", "/v1/plan", JSON, "{\"recipe\":\"" HD_RECIPE "\"}", 400, "missing_field"},
		{"plan: model outside roots", "POST", "/v1/plan", JSON,
		 "{\"model\":\"/etc\",\"recipe\":\"" HD_RECIPE "\"}", 403, "path_outside_roots"},
		{"plan: no config.json", "POST", "/v1/plan", JSON,
		 "{\"model\":\"{root}/models/nocfg\",\"recipe\":\"" HD_RECIPE "\"}", 422, "not_a_model"},
		{"plan: unsupported", "POST", "/v1/plan", JSON,
		 "{\"model\":\"{root}/models/unsupported\",\"recipe\":\"" HD_RECIPE "\"}", 422, "unsupported_model"},
		{"plan: unknown recipe", "POST", "/v1/plan", JSON,
		 "{" J_MODEL ",\"recipe\":\"nope\"}", 422, "unknown_recipe"},
		{"plan: not applicable", "POST", "/v1/plan", JSON,
		 "{" J_MODEL ",\"recipe\":\"general/ptq/int4_blockwise_weight_only\"}", 422,
		 "invalid_recipe"},
		{"plan: bad inline", "POST", "/v1/plan", JSON,
		 "{" J_MODEL ",\"recipe\":{\"yaml\":\"metadata: [\"}}", 422, "invalid_recipe"},
		{"plan: bad detail", "POST", "/v1/plan?detail=all", JSON,
		 "{" J_MODEL ",\"recipe\":\"" HD_RECIPE "\"}", 400, "bad_query"},
	};
	hd_steps(&H, steps, N(steps));
	/* errors name the field and carry no path of the recipe tree */
	struct cal_client_resp r;
	snprintf(body, sizeof(body), "{\"model\":\"%s/m\",\"recipe\":\"general/ptq/mxfp8\"}", H.models);
	cr_assert_eq(hd_req(&H, "POST", "/v1/plan", JSON, body, &r), 422);
	json_t *doc = json_loads(r.body, 0, NULL), *e = json_object_get(doc, "error");
	cr_expect_str_eq(json_string_value(json_object_get(e, "field")), "recipe");
	cr_expect(strstr(json_string_value(json_object_get(e, "message")), "not a multiple"), "%s", r.body);
	cr_expect(!strstr(r.body, getenv("SRCDIR")), "no recipe tree path: %s", r.body);
	json_decref(doc);
	cal_client_resp_free(&r);
}

/* ---- names that become longer later ----------------------------------- */

/* Posts a submission writing `output`; expects status (and field "output"
 * on a 422). */
static void submit_output(const char *output, int status, const char *why)
{
	char *body = NULL;
	cr_assert(asprintf(&body,
			   "{\"name\":\"fake-ok\",\"model\":\"%s/m\",\"recipe\":\"" HD_RECIPE "\",\"calibration\":"
			   "{\"tokens\":\"%s/tokens.jsonl\"},\"output\":\"%s\",\"devices\":\"cpu\"}",
			   H.models, H.data, output) > 0);
	struct cal_client_resp r;
	int st = hd_req(&H, "POST", "/v1/jobs", JSON, body, &r);
	cr_expect_eq(st, status, "%s: %d %s", why, st, st > 0 ? r.body : "");
	if (st == 422) {
		json_t *j = json_loads(r.body, 0, NULL);
		const char *f = json_string_value(json_object_get(json_object_get(j, "error"), "field"));
		cr_expect(f && !strcmp(f, "output"), "%s: the error names the field: %s", why, r.body);
		json_decref(j);
	}
	if (st > 0)
		cal_client_resp_free(&r);
	free(body);
}

/* Creates directories under base until the path is `len` bytes long. */
static void deep_dir(const char *base, size_t len, char *out)
{
	char name[201];
	strcpy(out, base);
	while (strlen(out) < len) {
		size_t room = len - strlen(out) - 1;
		memset(name, 'd', sizeof(name));
		name[room > 200 ? 200 : room] = '\0';
		strcat(out, "/");
		strcat(out, name);
		cr_assert_eq(mkdir(out, 0755), 0, "%zu", strlen(out));
	}
}

/* An output whose temporary name (".NAME.tmp-<job id>-XXXXXX") would not
 * fit NAME_MAX, or whose files would not fit PATH_MAX, is refused at
 * submit instead of failing later with "File name too long". */
Test(api, output_names_fit_the_file_system)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	char name[300], out[600];
	int max = 255 - (1 + 5 + 31 + 1 + 6); /* CAL_ST_TMP_NAME_EXTRA */
	memset(name, 'n', sizeof(name));
	name[244] = '\0';
	snprintf(out, sizeof(out), "%s/%s", H.out, name);
	submit_output(out, 422, "a 244-byte name");
	name[max + 1] = '\0';
	snprintf(out, sizeof(out), "%s/%s", H.out, name);
	submit_output(out, 422, "one byte over");
	name[max] = '\0';
	snprintf(out, sizeof(out), "%s/%s", H.out, name);
	submit_output(out, 202, "the longest name that fits");
	/* a deep parent: the output's name is short, the path is not;
	 * parent + "/.q.tmp-<id>-XXXXXX/" + a shard name: past 4095 bytes */
	char deep[4200];
	deep_dir(H.out, 3990, deep);
	char *longp = NULL;
	cr_assert(asprintf(&longp, "%s/q", deep) > 0);
	submit_output(longp, 422, "a path whose temporary files exceed PATH_MAX");
	free(longp);
	/* a model whose config.json fits PATH_MAX, its index and shards not */
	deep_dir(H.models, 4070, deep);
	char cfg[4300], src[300];
	snprintf(cfg, sizeof(cfg), "%s/config.json", deep);
	snprintf(src, sizeof(src), "%s/m/config.json", H.models);
	cr_assert_eq(link(src, cfg), 0);
	char *body = NULL;
	cr_assert(asprintf(&body,
			   "{\"model\":\"%s\",\"recipe\":\"" HD_RECIPE "\",\"calibration\":{\"tokens\":"
			   "\"%s/tokens.jsonl\"},\"output\":\"%s/deep-model-out\",\"devices\":\"cpu\"}",
			   deep, H.data, H.out) > 0);
	struct cal_client_resp r;
	int st = hd_req(&H, "POST", "/v1/jobs", JSON, body, &r);
	cr_expect_eq(st, 422, "a model path too long for its shard names: %d %.300s", st, st > 0 ? r.body : "");
	if (st > 0) {
		cr_expect(strstr(r.body, "\"field\":\"model\"") && strstr(r.body, "path_too_long"), "%.300s", r.body);
		cal_client_resp_free(&r);
	}
	free(body);
}

/* ---- paths checked when they are used -------------------------------- */

static void put_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	cr_assert(f, "%s", path);
	fputs(text, f);
	fclose(f);
}

/* A config.json that links out of the model roots: refused, and no byte of
 * the file it points to reaches the reply; links that stay beneath the
 * roots keep working. */
Test(api, config_json_link_out_of_roots)
{
	char p[512], q[512];
	snprintf(p, sizeof(p), "%s/secret.json", H.root);
	put_file(p, "TOPSECRET-7f3a9 {\"model_type\": \"qwen3_moe\"}");
	snprintf(p, sizeof(p), "%s/leak", H.models);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/leak/config.json", H.models);
	cr_assert_eq(symlink("../../secret.json", p), 0);
	snprintf(p, sizeof(p), "%s/inside", H.models);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/inside/config.json", H.models);
	snprintf(q, sizeof(q), "%s/m/config.json", H.models);
	cr_assert_eq(symlink(q, p), 0);
	cr_assert_eq(hd_start(&H, NULL), 0);
	char body[1024];
	const char *paths[] = {"/v1/plan", "/v1/jobs"};
	for (size_t i = 0; i < N(paths); i++) {
		snprintf(body, sizeof(body),
			 "{\"model\":\"%s/leak\",\"recipe\":\"" HD_RECIPE "\",\"calibration\":{\"tokens\":"
			 "\"%s/tokens.jsonl\"},\"output\":\"%s/leak-out\",\"devices\":\"cpu\"}",
			 H.models, H.data, H.out);
		if (i == 0)
			snprintf(body, sizeof(body), "{\"model\":\"%s/leak\",\"recipe\":\"" HD_RECIPE "\"}", H.models);
		struct cal_client_resp r;
		int st = hd_req(&H, "POST", paths[i], JSON, body, &r);
		cr_expect_eq(st, 422, "%s: %d %s", paths[i], st, st > 0 ? r.body : "");
		if (st > 0) {
			cr_expect(!strstr(r.body, "TOPSECRET"), "%s echoes the outside file: %s", paths[i], r.body);
			cr_expect(strstr(r.body, "outside"), "%s says why: %s", paths[i], r.body);
			cal_client_resp_free(&r);
		}
	}
	snprintf(body, sizeof(body), "{\"model\":\"%s/inside\",\"recipe\":\"" HD_RECIPE "\"}", H.models);
	json_decref(get_json("POST", "/v1/plan", JSON, body, 200));
}

/* Runs `calibd worker DIR` on a spec written here (the canonical form the
 * daemon writes) and returns its exit code; its progress lines go to
 * DIR/out.jsonl. */
static int run_worker(const char *dir, const char *model, const char *output)
{
	char p[512], recipes[512];
	snprintf(recipes, sizeof(recipes), "%s/recipes", getenv("SRCDIR"));
	char *rreal = realpath(recipes, NULL);
	cr_assert(rreal);
	mkdir(dir, 0755);
	json_t *spec = json_pack("{s:s, s:s, s:s, s:{s:s, s:i, s:i, s:i}, s:s, s:s, s:{s:b, s:f}}", "model", model,
				 "recipe", HD_RECIPE, "recipes_dir", rreal, "calibration", "tokens",
				 "", "samples", 4, "seq_len", 16, "seed", 0, "output", output, "devices", "cpu",
				 "options", "per_expert_input_amax", 0, "moe_calib_experts_ratio", 0.0);
	snprintf(p, sizeof(p), "%s/tokens.jsonl", H.data);
	json_object_set_new(json_object_get(spec, "calibration"), "tokens", json_string(p));
	json_t *doc = json_pack("{s:i, s:s, s:o, s:[s, s, s, s]}", "format", 1, "id", "jtest0000000000000001", "spec",
				spec, "roots", H.models, H.data, H.out, rreal);
	snprintf(p, sizeof(p), "%s/spec.json", dir);
	cr_assert_eq(json_dump_file(doc, p, 0), 0);
	json_decref(doc);
	free(rreal);
	pid_t pid = fork();
	if (pid == 0) {
		snprintf(p, sizeof(p), "%s/out.jsonl", dir);
		int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		unsetenv("CALIBD_PROGRESS_FD");
		execl(getenv("CALIBD"), "calibd", "worker", dir, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int file_has(const char *path, const char *needle)
{
	char *text = NULL;
	struct cal_error e = {0};
	int yes = cal_read_file(path, 1 << 20, &text, NULL, &e) == CAL_OK && strstr(text, needle);
	cal_error_clear(&e);
	free(text);
	return yes;
}

/* A checkpoint whose weights link out of the model roots is not read; one
 * whose files link beneath them (a Hugging Face cache snapshot) is. */
Test(api, worker_refuses_weights_outside_roots, .timeout = 120)
{
	const char *files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
			       "model.safetensors"};
	char outside[256], evil[256], snap[256], p[512], q[512], job[256], out[256];
	snprintf(outside, sizeof(outside), "%s/outside", H.root);
	snprintf(evil, sizeof(evil), "%s/evil", H.models);
	snprintf(snap, sizeof(snap), "%s/snap", H.models);
	mkdir(outside, 0755);
	mkdir(evil, 0755);
	mkdir(snap, 0755);
	for (size_t i = 0; i < N(files); i++) {
		snprintf(q, sizeof(q), "%s/m/%s", H.models, files[i]);
		snprintf(p, sizeof(p), "%s/%s", snap, files[i]);
		cr_assert_eq(symlink(q, p), 0, "%s", p); /* beneath the model root */
		snprintf(p, sizeof(p), "%s/%s", evil, files[i]);
		if (strcmp(files[i], "model.safetensors")) {
			cr_assert_eq(symlink(q, p), 0, "%s", p);
			continue;
		}
		char o[512];
		snprintf(o, sizeof(o), "%s/model.safetensors", outside);
		cr_assert_eq(link(q, o), 0, "%s", o); /* the same bytes, outside the roots */
		cr_assert_eq(symlink(o, p), 0, "%s", p);
	}
	snprintf(job, sizeof(job), "%s/job-evil", H.root);
	snprintf(out, sizeof(out), "%s/evil-out", H.out);
	int rc = run_worker(job, evil, out);
	snprintf(p, sizeof(p), "%s/out.jsonl", job);
	cr_expect_neq(rc, 0, "weights outside the model roots are refused");
	cr_expect(file_has(p, "outside the allowed directories"), "the error says why (%s)", p);
	struct stat sb;
	cr_expect_neq(stat(out, &sb), 0, "nothing published");
	cr_expect_eq(leftovers(H.out, ".evil-out.tmp-", NULL), 0, "nothing left behind");
	snprintf(job, sizeof(job), "%s/job-snap", H.root);
	snprintf(out, sizeof(out), "%s/snap-out", H.out);
	rc = run_worker(job, snap, out);
	cr_expect_eq(rc, 0, "links beneath the model root work (log %s/out.jsonl)", job);
	cr_expect_eq(stat(out, &sb), 0, "published");
}

/* The report cannot be saved after the publish (a full state directory):
 * the job still succeeds, its checkpoint is out. */
Test(api, worker_failure_after_publish_still_succeeds, .timeout = 120)
{
	char job[256], out[256], p[512];
	snprintf(job, sizeof(job), "%s/job-full", H.root);
	mkdir(job, 0755);
	/* report.json's temporary file cannot be created: the write fails */
	snprintf(p, sizeof(p), "%s/.report.json.tmp", job);
	cr_assert_eq(mkdir(p, 0755), 0);
	snprintf(out, sizeof(out), "%s/full-out", H.out);
	snprintf(p, sizeof(p), "%s/m", H.models);
	int rc = run_worker(job, p, out);
	cr_expect_eq(rc, 0, "published, then the report failed: still a success (log %s/out.jsonl)", job);
	snprintf(p, sizeof(p), "%s/out.jsonl", job);
	cr_expect(file_has(p, "\"event\":\"result\""), "the result is reported (%s)", p);
	snprintf(p, sizeof(p), "%s/publish.json", job);
	cr_expect(file_has(p, "\"published\""), "the publish is recorded (%s)", p);
	struct stat sb;
	cr_expect_eq(stat(out, &sb), 0, "published");
}

/* The output's parent is replaced by a symbolic link after the submit
 * checked it: the worker refuses, nothing is published outside the roots. */
Test(api, worker_refuses_output_parent_swapped_for_link, .timeout = 120)
{
	char sub[256], outside[256], job[256], out[300], p[512];
	snprintf(sub, sizeof(sub), "%s/sub", H.out);
	snprintf(outside, sizeof(outside), "%s/elsewhere", H.root);
	mkdir(outside, 0755);
	cr_assert_eq(symlink(outside, sub), 0); /* out/sub was a directory at submit */
	snprintf(job, sizeof(job), "%s/job-swap", H.root);
	snprintf(out, sizeof(out), "%s/q", sub);
	snprintf(p, sizeof(p), "%s/m", H.models);
	int rc = run_worker(job, p, out);
	snprintf(p, sizeof(p), "%s/out.jsonl", job);
	cr_expect_neq(rc, 0, "refused");
	cr_expect(file_has(p, "outside the allowed directories"), "the error says why (%s)", p);
	snprintf(p, sizeof(p), "%s/q", outside);
	struct stat sb;
	cr_expect_neq(stat(p, &sb), 0, "nothing published outside the roots");
	cr_expect_eq(leftovers(outside, ".q.tmp-", NULL), 0, "nothing written outside the roots");
}

/* ---- a real job ------------------------------------------------------ */

Test(api, real_job_end_to_end)
{
	/* `calibd worker` runs the engine on the CPU: the tiny qwen3_moe
	 * fixture, 4 x 16 calibration tokens, NVFP4 experts + FP8 KV */
	H.real_worker = 1;
	cr_assert_eq(hd_start(&H, NULL), 0);
	char body[1024];
	snprintf(body, sizeof(body),
		 "{\"name\":\"real\",\"model\":\"%s/m\",\"recipe\":\"%s\",\"calibration\":{\"tokens\":"
		 "\"%s/tokens.jsonl\",\"samples\":4,\"seq_len\":16},\"output\":\"%s/q\",\"devices\":\"cpu\"}",
		 H.models, HD_RECIPE, H.data, H.out);
	json_t *job = get_json("POST", "/v1/jobs", JSON, body, 202);
	char id[32], path[96];
	snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(job, "id")));
	json_decref(job);
	snprintf(path, sizeof(path), "/v1/jobs/%s/events", id);
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", path, NULL, NULL, &r), 200);
	cr_expect(strstr(r.body, "event: state\n"), "state events");
	cr_expect(strstr(r.body, "\"state\":\"succeeded\""), "the stream ends with success: %.2000s", r.body);
	cal_client_resp_free(&r);
	json_t *j = hd_wait(&H, id, NULL, 30);
	cr_assert(j);
	cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "succeeded");
	json_t *res = json_object_get(j, "result");
	cr_expect_str_eq(json_string_value(json_object_get(res, "quant_algo")), "NVFP4");
	cr_expect_str_eq(json_string_value(json_object_get(res, "kv_cache_quant_algo")), "FP8");
	json_t *pr = json_object_get(j, "progress");
	cr_expect_eq(json_integer_value(json_object_get(pr, "layers")), 3);
	cr_expect_eq(json_integer_value(json_object_get(pr, "tokens_done")),
		     json_integer_value(json_object_get(pr, "tokens_total")));
	json_decref(j);
	char out[256], cfg[300];
	snprintf(out, sizeof(out), "%s/q", H.out);
	snprintf(cfg, sizeof(cfg), "%s/hf_quant_config.json", out);
	struct stat sb;
	cr_expect_eq(stat(cfg, &sb), 0, "the checkpoint is published at %s", out);
	snprintf(path, sizeof(path), "/v1/jobs/%s/report", id);
	json_t *rep = get_json("GET", path, NULL, NULL, 200);
	cr_expect(json_object_get(rep, "weight_sqnr_min_db"), "the quality report");
	json_decref(rep);
	/* a loader's view of the output */
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);
		dup2(fd, 1);
		execl(getenv("CALIBD"), "calibd", "verify", out, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "calibd verify %s: status %d", out, st);
	/* the job log says what the job did, not one line */
	snprintf(path, sizeof(path), "/v1/jobs/%s/log", id);
	cr_assert_eq(hd_req(&H, "GET", path, NULL, NULL, &r), 200);
	cr_expect(strstr(r.body, " job_start ") && strstr(r.body, " model="), "job log: %s", r.body);
	cr_expect(strstr(r.body, " phase phase=calibrate "), "job log: %s", r.body);
	cr_expect(strstr(r.body, " layer_done ") && strstr(r.body, " tokens_per_s="), "job log: %s", r.body);
	cr_expect(strstr(r.body, " job_done ") && strstr(r.body, " bytes="), "job log: %s", r.body);
	cal_client_resp_free(&r);
}

/* A model the engine describes but does not run is refused at submit with
 * the engine's own reason (422 unsupported_model), never in the worker:
 * a Gated DeltaNet model past the engine's conv-kernel limit, and the
 * fixtures of every architecture, each compared with what the engine's
 * capability query says. */
Test(api, unsupported_architecture_refused_at_submit)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	char model[256], recipes[512], body[1536];
	snprintf(recipes, sizeof(recipes), "%s/recipes", getenv("SRCDIR"));
	int refused = 0;
	for (size_t i = 0; i <= cal_fixture_arch_count(); i++) {
		const char *arch = i < cal_fixture_arch_count() ? cal_fixture_arch_name(i) : "qwen3_next";
		struct cal_fixture_opts fo = {.arch = arch, .seed = 1};
		struct cal_error err = {0};
		snprintf(model, sizeof(model), "%s/arch-%zu", H.models, i);
		cr_assert_eq(cal_fixture_write(&fo, model, &err), CAL_OK, "%s: %s", arch, cal_error_msg(&err));
		if (i == cal_fixture_arch_count()) {
			/* beyond the limits: linear_conv_kernel_dim 100 (the engine runs 1..64) */
			char cfg[300];
			snprintf(cfg, sizeof(cfg), "%s/config.json", model);
			json_t *c = json_load_file(cfg, 0, NULL);
			cr_assert(c);
			json_object_set_new(c, "linear_conv_kernel_dim", json_integer(100));
			cr_assert_eq(json_dump_file(c, cfg, 0), 0);
			json_decref(c);
		}
		/* what the engine says */
		struct cal_job_opts o = {.model_dir = model, .recipe = "general/ptq/fp8_default-kv_fp8",
					 .recipe_opts = {.builtin_dir = recipes, .no_filesystem = 1}};
		struct cal_job *job = NULL;
		enum cal_status st = cal_job_open(&o, CAL_JOB_OPEN_NO_BACKEND | CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE),
						  &job, NULL, &err);
		cal_job_close(job);
		cr_assert(st == CAL_OK || st == CAL_ERR_UNSUPPORTED || st == CAL_ERR_FORMAT, "%s: %s", arch,
			  cal_error_msg(&err));
		/* what the API says */
		snprintf(body, sizeof(body),
			 "{\"model\":\"%s\",\"recipe\":\"general/ptq/fp8_default-kv_fp8\",\"calibration\":"
			 "{\"tokens\":\"%s/tokens.jsonl\"},\"output\":\"%s/arch-%zu\",\"devices\":\"cpu\"}",
			 model, H.data, H.out, i);
		struct cal_client_resp r;
		int code = hd_req(&H, "POST", "/v1/jobs", JSON, body, &r);
		json_t *doc = json_loads(r.body, 0, NULL), *e = json_object_get(doc, "error");
		if (st == CAL_OK) {
			cr_expect_eq(code, 202, "%s: the engine runs it, the API says %d: %s", arch, code, r.body);
		} else {
			refused++;
			cr_expect_eq(code, 422, "%s: %d %s", arch, code, r.body);
			cr_expect_str_eq(json_string_value(json_object_get(e, "code")), "unsupported_model", "%s", arch);
			cr_expect_str_eq(json_string_value(json_object_get(e, "field")), "model", "%s", arch);
			const char *msg = json_string_value(json_object_get(e, "message"));
			cr_expect(msg && strstr(msg, cal_error_msg(&err)), "%s: the engine's reason '%s' not in '%s'",
				  arch, cal_error_msg(&err), msg);
			if (i == cal_fixture_arch_count())
				cr_expect(msg && strstr(msg, "linear_conv_kernel_dim 100"), "%s", msg);
		}
		json_decref(doc);
		cal_client_resp_free(&r);
		cal_error_clear(&err);
	}
	cr_expect(refused >= 1, "the out-of-limits model was refused");

	/* what only the exporter knows (its plan of every output tensor): an MSE
	 * weight search without fp8_scale_sweep is not implemented */
	snprintf(model, sizeof(model), "%s/m", H.models);
	snprintf(body, sizeof(body), "%s/tokens.jsonl", H.data);
	char out[256];
	snprintf(out, sizeof(out), "%s/mse", H.out);
	json_t *req = json_pack("{s:s, s:s, s:{s:s}, s:s, s:s}", "model", model, "recipe_yaml",
				CAL_TEST_RECIPE_MSE_NO_SWEEP, "calibration", "tokens", body, "output", out,
				"devices", "cpu");
	char *text = json_dumps(req, JSON_COMPACT);
	json_t *doc = get_json("POST", "/v1/jobs", JSON, text, 422);
	json_t *e = json_object_get(doc, "error");
	cr_expect_str_eq(json_string_value(json_object_get(e, "code")), "invalid_recipe");
	cr_expect_str_eq(json_string_value(json_object_get(e, "field")), "recipe_yaml");
	cr_expect(strstr(json_string_value(json_object_get(e, "message")), "fp8_scale_sweep"), "%s",
		  json_string_value(json_object_get(e, "message")));
	json_decref(doc);
	free(text);
	json_decref(req);
}

/* Input is bounded before it is parsed, on every route that takes a body:
 * 130,000 nested '[' in a recipe took a minute of CPU (libyaml's document
 * loader scans ahead quadratically) before the bounded event reader
 * refused it; a mapping of 20,000 keys took seconds (key lookups).  JSON
 * bodies are refused on depth and value count before jansson runs. */
Test(api, input_bounded_before_parsing)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	size_t n = 130000;
	char *body = malloc(n + 1024);
	cr_assert(body);
	const char *routes[] = {"/v1/plan", "/v1/jobs"};
	for (size_t ri = 0; ri < N(routes); ri++) {
		int k = snprintf(body, 256, "{\"model\":\"%s/m\",\"recipe_yaml\":\"", H.models);
		memset(body + k, '[', n);
		snprintf(body + k + n, 1000, "\",\"name\":\"x\",\"output\":\"%s/x\",\"calibration\":{\"tokens\":"
			 "\"%s/tokens.jsonl\"}}", H.out, H.data);
		if (!strcmp(routes[ri], "/v1/plan"))
			snprintf(body + k + n, 8, "\"}");
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		struct cal_client_resp r;
		cr_assert_eq(hd_req(&H, "POST", routes[ri], JSON, body, &r), 422, "%s: %s", routes[ri], r.body);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		cr_expect(strstr(r.body, "nesting deeper than 64"), "%s", r.body);
		cal_client_resp_free(&r);
		double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
		cr_expect(s < 2, "%s: 130,000 nested '[' took %.2f s", routes[ri], s);
	}
	/* 20,000 keys in one mapping */
	size_t k = (size_t)snprintf(body, 256, "{\"model\":\"%s/m\",\"recipe_yaml\":\"{", H.models);
	body = realloc(body, 20000 * 16 + 256);
	cr_assert(body);
	for (int i = 0; i < 20000; i++)
		k += (size_t)sprintf(body + k, "%sa%d: b", i ? "," : "", i);
	sprintf(body + k, "}\"}");
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "POST", "/v1/plan", JSON, body, &r), 422, "%s", r.body);
	cal_client_resp_free(&r);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	cr_expect(s < 2, "20,000 mapping keys took %.2f s", s);
	/* JSON: 200,001 values, and 100 levels */
	body = realloc(body, 400100);
	cr_assert(body);
	k = (size_t)sprintf(body, "{\"model\":[");
	for (int i = 0; i < 200000; i++)
		body[k++] = '1', body[k++] = ',';
	sprintf(body + k, "1]}");
	const struct step steps[] = {
		{"200,001 values (plan)", "POST", "/v1/plan", JSON, body, 400, "json_too_large"},
		{"200,001 values (jobs)", "POST", "/v1/jobs", JSON, body, 400, "json_too_large"},
		{"100 levels", "POST", "/v1/plan", JSON,
		 "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
		 400, "json_too_deep"},
	};
	hd_steps(&H, steps, N(steps));
	free(body);
}

/* Sends a raw request to the API port; expects `status` with a JSON error
 * body of `code`. */
