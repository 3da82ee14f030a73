/*
 * test_api.c — the api suite: the real daemon on loopback, driven through
 * HTTP.  Each test starts its own daemon on an ephemeral port with a temp
 * state dir and the fake worker (fake_worker.c).  This file holds the suite
 * (setup, teardown) and the job lifecycle, auth, restart, client and
 * metrics tests; test_api_state.c the idempotency and state-store tests;
 * test_api_inputs.c recipes, plans, paths, names and real jobs.
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

struct hd H;

static void setup(void)
{
	hd_setup(&H);
}

static void teardown(void)
{
	hd_cleanup(&H);
}

TestSuite(api, .init = setup, .fini = teardown, .timeout = 60);


static int pid_alive(pid_t p)
{
	return kill(p, 0) == 0;
}

void nap(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
	nanosleep(&ts, NULL);
}

const char *err_code(json_t *job)
{
	return json_string_value(json_object_get(json_object_get(job, "error"), "code"));
}

/* Entries of dir whose name starts with prefix, and the bytes of the files
 * directly in them (a partial checkpoint a worker left behind). */
int leftovers(const char *dir, const char *prefix, long long *ret_bytes)
{
	int n = 0;
	long long bytes = 0;
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (strncmp(e->d_name, prefix, strlen(prefix)))
			continue;
		n++;
		char sub[512];
		snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
		DIR *s = opendir(sub);
		struct dirent *f;
		while (s && (f = readdir(s))) {
			char p[1024];
			struct stat sb;
			snprintf(p, sizeof(p), "%s/%s", sub, f->d_name);
			if (f->d_name[0] != '.' && stat(p, &sb) == 0)
				bytes += sb.st_size;
		}
		if (s)
			closedir(s);
	}
	if (d)
		closedir(d);
	if (ret_bytes)
		*ret_bytes = bytes;
	return n;
}

/* No temporary output of the job writing out/<name> is left. */
/* Expects job id in state (now), why in the message. */
void expect_state(const char *id, const char *state, const char *why)
{
	json_t *j = hd_job(&H, id);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), state, "%s", why);
	json_decref(j);
}

void submit(const char *name, const char *out, const char *key, char id[32])
{
	cr_assert(hd_submit(&H, name, out, key), "submitting %s", name);
	snprintf(id, 32, "%s", H.last_id);
}

void await_state(const char *id, const char *state, double timeout_s, const char *why)
{
	json_t *j = hd_wait(&H, id, state, timeout_s);
	cr_assert(j, "%s", why ? why : "job did not reach the state in time");
	json_decref(j);
}

static void expect_no_temp(const char *name, const char *why)
{
	char prefix[128];
	long long bytes = 0;
	snprintf(prefix, sizeof(prefix), ".%s.tmp-", name);
	int n = leftovers(H.out, prefix, &bytes);
	cr_log_info("%s: %d temporary dirs, %lld bytes left in the output root", why, n, bytes);
	cr_expect_eq(n, 0, "%s: %d temporary dir(s) of out/%s left (%lld bytes)", why, n, name, bytes);
}

static pid_t worker_pid(const char *id)
{
	pid_t wpid = 0;
	for (int i = 0; i < 50 && !wpid; i++, nap(0.05)) {
		json_t *j = hd_job(&H, id);
		wpid = (pid_t)json_integer_value(json_object_get(j, "worker_pid"));
		json_decref(j);
	}
	return wpid;
}

Test(api, submit_get_list_and_finish)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	char *ok = hd_spec(&H, "fake-ok", "o1");
	const struct step steps[] = {
		{"livez", "GET", "/livez", NULL, NULL, 200, NULL},
		{"readyz", "GET", "/readyz", NULL, NULL, 200, NULL},
		{"submit", "POST", "/v1/jobs", JSON, ok, 202, NULL},
		{"get", "GET", "/v1/jobs/{id}", NULL, NULL, 200, NULL},
		{"list", "GET", "/v1/jobs", NULL, NULL, 200, NULL},
		{"list by state", "GET", "/v1/jobs?state=queued,running,succeeded&limit=5", NULL, NULL, 200, NULL},
		{"bad state filter", "GET", "/v1/jobs?state=bogus", NULL, NULL, 400, "bad_query"},
		{"bad limit", "GET", "/v1/jobs?limit=0", NULL, NULL, 400, "bad_query"},
		{"empty cursor", "GET", "/v1/jobs?cursor=", NULL, NULL, 400, "bad_query"},
		{"cursor not a job id", "GET", "/v1/jobs?cursor=a%2Fb", NULL, NULL, 400, "bad_query"},
		{"unknown job", "GET", "/v1/jobs/j000000", NULL, NULL, 404, "job_not_found"},
		{"unknown route", "GET", "/v2/nothing", NULL, NULL, 404, "route_not_found"},
		{"wrong method", "PUT", "/v1/jobs", NULL, NULL, 405, "method_not_allowed"},
		{"devices", "GET", "/v1/devices", NULL, NULL, 200, NULL},
		{"metrics", "GET", "/metrics", NULL, NULL, 200, NULL},
	};
	hd_steps(&H, steps, N(steps));
	free(ok);
	char id[32];
	snprintf(id, sizeof(id), "%s", H.last_id);
	json_t *j = hd_wait(&H, id, "succeeded", 10);
	cr_assert(j, "the fake-ok job did not succeed");
	cr_expect(json_is_object(json_object_get(j, "result")), "result recorded");
	cr_expect(!json_object_get(json_object_get(j, "spec"), "recipes_dir"), "the recipe tree's path is not shown");
	cr_expect_eq(json_integer_value(json_object_get(json_object_get(j, "progress"), "layers")), 3);
	json_decref(j);
	const struct step after[] = {
		{"report", "GET", "/v1/jobs/{id}/report", NULL, NULL, 200, NULL},
		{"log", "GET", "/v1/jobs/{id}/log?tail_bytes=100", NULL, NULL, 200, NULL},
		{"bad tail", "GET", "/v1/jobs/{id}/log?tail_bytes=-1", NULL, NULL, 400, "bad_query"},
		{"cancel finished", "DELETE", "/v1/jobs/{id}", NULL, NULL, 409, "job_finished"},
	};
	hd_steps(&H, after, N(after));
	/* paging: two jobs, limit 1 */
	cr_assert(hd_submit(&H, "fake-ok", "o2", NULL));
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", "/v1/jobs?limit=1", NULL, NULL, &r), 200);
	json_t *page = json_loads(r.body, 0, NULL);
	cal_client_resp_free(&r);
	cr_expect_eq(json_array_size(json_object_get(page, "jobs")), 1);
	const char *cur = json_string_value(json_object_get(page, "next_cursor"));
	cr_assert(cur, "next_cursor set");
	char path[128];
	snprintf(path, sizeof(path), "/v1/jobs?limit=1&cursor=%s", cur);
	cr_assert_eq(hd_req(&H, "GET", path, NULL, NULL, &r), 200);
	json_t *page2 = json_loads(r.body, 0, NULL);
	cal_client_resp_free(&r);
	cr_expect_eq(json_array_size(json_object_get(page2, "jobs")), 1);
	cr_expect(json_is_null(json_object_get(page2, "next_cursor")));
	json_decref(page);
	json_decref(page2);
	cr_assert_eq(hd_req(&H, "GET", "/metrics", NULL, NULL, &r), 200);
	cr_expect(strstr(r.body, "calibd_jobs{state=\"succeeded\"}"), "metrics: jobs by state");
	cr_expect(strstr(r.body, "calibd_http_requests_total{method=\"POST\",route=\"/v1/jobs\",code=\"202\"}"),
		  "metrics: requests by route and code");
	cr_expect(strstr(r.body, "calibd_job_duration_seconds_bucket"), "metrics: duration histogram");
	cal_client_resp_free(&r);
}

Test(api, validation_errors)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	char big[200];
	snprintf(big, sizeof(big), JSON "Content-Length: %d\r\n", 2 << 20);
	char deep[200] = "{\"a\":";
	for (int i = 0; i < 40; i++)
		strcat(deep, "[");
	const struct step steps[] = {
		{"empty body", "POST", "/v1/jobs", JSON, "", 400, "bad_json"},
		{"not json", "POST", "/v1/jobs", JSON, "{nope", 400, "bad_json"},
		{"not an object", "POST", "/v1/jobs", JSON, "[1,2]", 400, "bad_json"},
		{"duplicate keys", "POST", "/v1/jobs", JSON, "{\"model\":\"a\",\"model\":\"b\"}", 400, "bad_json"},
		{"too deep", "POST", "/v1/jobs", JSON, deep, 400, "json_too_deep"},
		{"wrong content type", "POST", "/v1/jobs", "Content-Type: text/plain\r\n", "{}", 415,
		 "unsupported_media_type"},
		{"unknown field", "POST", "/v1/jobs", JSON, "{\"modle\":1}", 400, "unknown_field"},
		{"missing recipe", "POST", "/v1/jobs", JSON, "{" J_MODEL "}", 400, "missing_field"},
		{"bad recipe name", "POST", "/v1/jobs", JSON, "{\"recipe\":\"../x\"}", 400, "invalid_field"},
		{"empty inline recipe", "POST", "/v1/jobs", JSON, "{\"recipe\":{\"yaml\":\"\"}}", 400, "invalid_field"},
		{"bad priority", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\",\"priority\":1000}", 400, "invalid_field"},
		{"gpus not configured", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\",\"devices\":2}", 422,
		 "devices_unavailable"},
		{"gpus not configured (device string)", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"devices\":\"cuda:0,1\"}", 422, "devices_unavailable"},
		{"bad device string", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\",\"devices\":\"gpu:0\"}", 400,
		 "invalid_field"},
		{"bad option", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"options\":{\"moe_calib_experts_ratio\":2}}", 400, "invalid_field"},
		{"max_shard_size not a byte count", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"options\":{\"max_shard_size\":\"10GB\"}}", 400, "invalid_field"},
		{"max_shard_size zero", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"options\":{\"max_shard_size\":0}}", 400, "invalid_field"},
		{"missing model", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\"}", 400, "missing_field"},
		{"relative model", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\",\"model\":\"models/m\"}", 400,
		 "invalid_field"},
		{"model outside roots", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\",\"model\":\"/etc\"}", 403,
		 "path_outside_roots"},
		{"model traversal", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/../data\"}", 403, "path_outside_roots"},
		{"model absent", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\",\"model\":\"{root}/models/zz\"}", 422,
		 "path_not_found"},
		{"model without config.json", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/nocfg\"}", 422, "not_a_model"},
		{"no calibration", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\"," J_MODEL "}", 400,
		 "missing_field"},
		{"dataset outside roots", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\"," J_MODEL ",\"calibration\":{\"datasets\":[\"/etc/passwd\"]}}", 403,
		 "path_outside_roots"},
		{"both datasets and tokens", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\"," J_MODEL ",\"calibration\":{\"datasets\":[\"{root}/data/d.jsonl\"],"
		 "\"tokens\":\"{root}/data/d.jsonl\"}}", 400, "invalid_field"},
		{"samples out of range", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\"," J_MODEL ",\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\","
		 "\"samples\":0}}", 400, "invalid_field"},
		{"output exists", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\"," J_MODEL "," J_TOKENS "," J_OUT("exists") "}", 409, "output_exists"},
		{"output outside roots", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\"," J_MODEL "," J_TOKENS ",\"output\":\"/tmp/elsewhere\"}", 403,
		 "path_outside_roots"},
		{"output dot-dot", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\"," J_MODEL "," J_TOKENS "," J_OUT("..") "}", 400, "invalid_field"},
		{"unknown recipe", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"general/ptq/nope\"," J_INPUTS("x") "}", 422, "unknown_recipe"},
		{"recipe name escaping the tree", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"general/../../etc/x\"," J_MODEL "}", 400, "invalid_field"},
		{"recipe and recipe_yaml", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"recipe_yaml\":\"a: 1\"," J_MODEL "}", 400, "invalid_field"},
		{"inline recipe not YAML", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":{\"yaml\":\"quantize: [\"}," J_INPUTS("x") "}", 422, "invalid_recipe"},
		{"inline recipe schema error", "POST", "/v1/jobs", JSON,
		 "{\"recipe_yaml\":\"quant_cfg: []\"," J_INPUTS("x") "}", 422, "invalid_recipe"},
		{"inline import outside the tree", "POST", "/v1/jobs", JSON,
		 "{\"recipe_yaml\":\"imports:\\n  x: /etc/passwd\\n" INLINE_BODY "\"," J_INPUTS("x") "}",
		 422, "invalid_recipe"},
		{"inline import climbing out", "POST", "/v1/jobs", JSON,
		 "{\"recipe_yaml\":\"imports: {x: ../../../etc/passwd}\\n" INLINE_BODY "\","
		 J_INPUTS("x") "}", 422, "invalid_recipe"},
		{"recipe not applicable (MXFP8 block 32 vs expert dim 48)", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"general/ptq/mxfp8\"," J_INPUTS("x") "}", 422, "invalid_recipe"},
		{"unsupported architecture", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"" HD_RECIPE "\",\"model\":\"{root}/models/unsupported\"," J_TOKENS ","
		 J_OUT("x") "}", 422, "unsupported_model"},
		/* still running when "same output while active" comes (a fake-ok
		 * job could finish and publish first: output_exists) */
		{"valid (inline recipe)", "POST", "/v1/jobs", JSON,
		 "{\"name\":\"fake-slow\",\"recipe\":{\"yaml\":\"" INLINE_BODY "\"}," J_INPUTS("new") "}",
		 202, NULL},
		{"valid (recipe_yaml with an import in the tree)", "POST", "/v1/jobs", JSON,
		 "{\"name\":\"fake-ok\",\"recipe_yaml\":\"imports: {nvfp4: configs/numerics/nvfp4}\\n"
		 INLINE_BODY "\"," J_INPUTS("new2") "}", 202, NULL},
		{"same output while active", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"" HD_RECIPE "\"," J_INPUTS("new") "}", 409, "output_in_use"},
	};
	hd_steps(&H, steps, N(steps));
	/* 413 from Content-Length alone, before any body is read */
	struct cal_client_resp r;
	int st = hd_req(&H, "POST", "/v1/jobs", big, NULL, &r);
	cr_expect_eq(st, 413, "Content-Length 2 MiB → %d", st);
	if (st > 0)
		cal_client_resp_free(&r);
	/* 413 for a real body over the cap */
	char *huge = malloc((1 << 20) + 64);
	memset(huge, ' ', (1 << 20) + 63);
	huge[0] = '{';
	huge[(1 << 20) + 62] = '}';
	huge[(1 << 20) + 63] = '\0';
	st = hd_req(&H, "POST", "/v1/jobs", JSON, huge, &r);
	cr_expect(st == 413 || st == -1, "1 MiB + 64 body → %d", st);
	if (st > 0)
		cal_client_resp_free(&r);
	free(huge);
	cr_expect_eq(hd_req(&H, "GET", "/livez", NULL, NULL, &r), 200, "still serving");
	cal_client_resp_free(&r);
}

Test(api, idempotency)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	char id[32];
	submit("fake-ok", "idem", "key-1", id);
	cr_assert(hd_submit(&H, "fake-ok", "idem", "key-1"), "replay accepted");
	cr_expect_str_eq(H.last_id, id, "replay returns the same job");
	char *other = hd_spec(&H, "fake-ok", "idem-other");
	const struct step steps[] = {
		{"same key, other body", "POST", "/v1/jobs", JSON "Idempotency-Key: \"key-1\"\r\n", other, 422,
		 "idempotency_mismatch"},
		{"bad key", "POST", "/v1/jobs", JSON "Idempotency-Key: \"\"\r\n", other, 400, "bad_idempotency_key"},
	};
	hd_steps(&H, steps, N(steps));
	free(other);
	await_state(id, "succeeded", 10, NULL);
	/* after success the output exists, yet a replay still answers the job */
	cr_assert(hd_submit(&H, "fake-ok", "idem", "key-1"));
	cr_expect_str_eq(H.last_id, id);
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", "/v1/jobs", NULL, NULL, &r), 200);
	json_t *l = json_loads(r.body, 0, NULL);
	cr_expect_eq(json_array_size(json_object_get(l, "jobs")), 1, "exactly one job");
	json_decref(l);
	cal_client_resp_free(&r);
}

Test(api, auth)
{
	const char *const extra[] = {"--token-file", H.tokfile, NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char *ok = hd_spec(&H, "fake-ok", "auth");
	const struct step steps[] = {
		{"no token", "POST", "/v1/jobs", JSON, ok, 401, "unauthorized"},
		{"wrong token", "POST", "/v1/jobs", JSON "Authorization: Bearer nope\r\n", ok, 401, "unauthorized"},
		{"wrong scheme", "POST", "/v1/jobs", JSON "Authorization: Basic eDp5\r\n", ok, 401, "unauthorized"},
		{"token in query ignored", "POST", "/v1/jobs?access_token=" HD_TOKEN, JSON, ok, 401, "unauthorized"},
		{"cancel without token", "DELETE", "/v1/jobs/x", NULL, NULL, 401, "unauthorized"},
		{"read without token", "GET", "/v1/jobs", NULL, NULL, 200, NULL},
		{"recipes without token", "GET", "/v1/recipes", NULL, NULL, 200, NULL},
		{"plan (work) without token", "POST", "/v1/plan", JSON,
		 "{" J_MODEL ",\"recipe\":\"" HD_RECIPE "\"}", 401, "unauthorized"},
		{"plan with token", "POST", "/v1/plan", JSON "Authorization: Bearer " HD_TOKEN "\r\n",
		 "{" J_MODEL ",\"recipe\":\"" HD_RECIPE "\"}", 200, NULL},
		{"right token", "POST", "/v1/jobs", JSON "Authorization: Bearer " HD_TOKEN "\r\n", ok, 202, NULL},
	};
	hd_steps(&H, steps, N(steps));
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "POST", "/v1/jobs", JSON, ok, &r), 401);
	char *wa = cal_client_header(&r, "WWW-Authenticate");
	cr_expect(wa && !strncmp(wa, "Bearer", 6), "WWW-Authenticate: %s", wa ? wa : "(none)");
	free(wa);
	cal_client_resp_free(&r);
	cr_assert_eq(hd_req(&H, "POST", "/v1/jobs", JSON "Authorization: Bearer bad\r\n", ok, &r), 401);
	wa = cal_client_header(&r, "WWW-Authenticate");
	cr_expect(wa && strstr(wa, "invalid_token"), "invalid_token: %s", wa ? wa : "(none)");
	free(wa);
	cal_client_resp_free(&r);
	free(ok);
	hd_stop(&H, SIGTERM);
	/* the token never reaches the log */
	FILE *f = fopen(H.log, "r");
	cr_assert(f);
	char line[4096];
	while (fgets(line, sizeof(line), f))
		cr_expect(!strstr(line, HD_TOKEN), "token in the log: %s", line);
	fclose(f);
}

Test(api, auth_read_and_startup_refusals)
{
	const char *const extra[] = {"--token-file", H.tokfile, "--auth-read", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	const struct step steps[] = {
		{"read needs token", "GET", "/v1/jobs", NULL, NULL, 401, "unauthorized"},
		{"metrics needs token", "GET", "/metrics", NULL, NULL, 401, "unauthorized"},
		{"probes stay open", "GET", "/livez", NULL, NULL, 200, NULL},
		{"readyz open", "GET", "/readyz", NULL, NULL, 200, NULL},
		{"with token", "GET", "/v1/jobs", "Authorization: Bearer second-token\r\n", NULL, 200, NULL},
	};
	hd_steps(&H, steps, N(steps));
	hd_stop(&H, SIGTERM);
	/* a non-loopback address without tokens is refused */
	const char *const open[] = {"--listen", "0.0.0.0", NULL};
	cr_expect_eq(hd_start(&H, open), CAL_EXIT_BAD_INPUT);
	/* the state dir is locked against a second daemon */
	cr_assert_eq(hd_start(&H, NULL), 0);
	struct hd second = H;
	snprintf(second.port_file, sizeof(second.port_file), "%s/port2", H.root);
	second.pid = -1;
	const char *const again[] = {"--port-file", second.port_file, NULL};
	cr_expect_neq(hd_start(&second, again), 0, "a second daemon on the same state dir must refuse");
}

Test(api, sse_progress_and_states)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	cr_assert(hd_submit(&H, "fake-slow-5", "sse", NULL));
	char path[96];
	snprintf(path, sizeof(path), "/v1/jobs/%s/events", H.last_id);
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", path, NULL, NULL, &r), 200);
	char *ct = cal_client_header(&r, "Content-Type");
	cr_expect(ct && !strcmp(ct, "text/event-stream"));
	free(ct);
	cr_expect(strstr(r.body, "event: state\n"), "state events");
	cr_expect(strstr(r.body, "event: progress\n"), "progress events");
	cr_expect(strstr(r.body, "\"tokens_done\":500"), "the last progress line");
	cr_expect(strstr(r.body, "\"state\":\"succeeded\""), "the final state ends the stream");
	cal_client_resp_free(&r);
	cr_expect_eq(hd_req(&H, "GET", "/v1/jobs/nope/events", NULL, NULL, &r), 404);
	cal_client_resp_free(&r);
}

Test(api, cancel_running_and_queued)
{
	const char *const extra[] = {"--max-jobs", "1", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char run[32], queued[32];
	submit("fake-slow-200", "c1", NULL, run);
	submit("fake-ok", "c2", NULL, queued);
	await_state(run, "running", 5, NULL);
	expect_state(queued, "queued", "max_concurrent_jobs 1");
	char path[96];
	struct cal_client_resp r;
	snprintf(path, sizeof(path), "/v1/jobs/%s", queued);
	cr_expect_eq(hd_req(&H, "DELETE", path, NULL, NULL, &r), 200, "a queued job is cancelled at once");
	cal_client_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/jobs/%s", run);
	int st = hd_req(&H, "DELETE", path, NULL, NULL, &r);
	cr_expect_eq(st, 202, "a running job is asked to stop: %d %s", st, st > 0 ? r.body : "");
	cal_client_resp_free(&r);
	await_state(run, "cancelled", 5, "the running job ends cancelled");
	expect_state(queued, "cancelled", "the queued job stays cancelled");
}


Test(api, worker_failures)
{
	const char *const extra[] = {"--progress-timeout", "1", "--kill-grace", "0.5", "--max-jobs", "4", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char fail[32], crash[32], hang[32], stubborn[32], killed[32];
	submit("fake-fail", "f1", NULL, fail);
	submit("fake-crash", "f2", NULL, crash);
	submit("fake-hang", "f3", NULL, hang);
	submit("fake-ignore-term", "f4", NULL, stubborn);
	json_t *j = hd_wait(&H, fail, "failed", 5);
	cr_assert(j);
	cr_expect_str_eq(err_code(j), "format", "the worker's own error code");
	json_decref(j);
	expect_no_temp("f1", "worker failure");
	j = hd_wait(&H, crash, "failed", 5);
	cr_assert(j);
	cr_expect_str_eq(err_code(j), "worker_crashed");
	json_decref(j);
	expect_no_temp("f2", "worker crash (SIGSEGV)");
	j = hd_wait(&H, hang, "failed", 6);
	cr_assert(j);
	cr_expect_str_eq(err_code(j), "progress_timeout");
	json_decref(j);
	expect_no_temp("f3", "progress timeout");
	j = hd_wait(&H, stubborn, "failed", 6);
	cr_assert(j, "a worker ignoring SIGTERM is killed");
	cr_expect_str_eq(err_code(j), "progress_timeout");
	json_decref(j);
	expect_no_temp("f4", "progress timeout past the kill grace (SIGKILL)");
	/* kill -9 of a worker */
	submit("fake-slow-200", "f5", NULL, killed);
	j = hd_wait(&H, killed, "running", 5);
	cr_assert(j);
	pid_t wpid = 0;
	for (int i = 0; i < 50 && !wpid; i++, nap(0.05)) {
		json_decref(j);
		j = hd_job(&H, killed);
		wpid = (pid_t)json_integer_value(json_object_get(j, "worker_pid"));
	}
	json_decref(j);
	cr_assert(wpid > 0, "worker_pid shown while running");
	kill(wpid, SIGKILL);
	j = hd_wait(&H, killed, "failed", 5);
	cr_assert(j);
	cr_expect_str_eq(err_code(j), "worker_crashed");
	cr_expect(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "signal 9"));
	json_decref(j);
	expect_no_temp("f5", "kill -9 of the worker");
	struct cal_client_resp r;
	cr_expect_eq(hd_req(&H, "GET", "/readyz", NULL, NULL, &r), 200, "the daemon keeps serving");
	cal_client_resp_free(&r);
}

Test(api, drain_past_kill_grace_leaves_no_temp)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	cr_assert(hd_submit(&H, "fake-ignore-term", "d1", NULL));
	await_state(H.last_id, "running", 5, NULL);
	char prefix[64];
	snprintf(prefix, sizeof(prefix), ".d1.tmp-%s-", H.last_id);
	for (int i = 0; i < 40 && !leftovers(H.out, prefix, NULL); i++)
		nap(0.05);
	cr_assert_eq(leftovers(H.out, prefix, NULL), 1, "the worker is writing its output");
	int st = hd_stop(&H, SIGTERM); /* grace 1 s, SIGTERM ignored, SIGKILL after 1 s */
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "clean exit");
	expect_no_temp("d1", "drain past the kill grace");
}

Test(api, restart_removes_own_temps_only)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	cr_assert(hd_submit(&H, "fake-hang", "t1", NULL));
	char id[32];
	snprintf(id, sizeof(id), "%s", H.last_id);
	await_state(id, "running", 5, NULL);
	cr_assert(worker_pid(id) > 0);
	/* others' temporary directories: another name, and this name without our job id */
	const char *foreign[] = {".x.tmp-abc", ".t1.tmp-abcdef", ".t1.tmp-j0000000000000000000-abcdef"};
	for (size_t i = 0; i < N(foreign); i++) {
		char p[512];
		snprintf(p, sizeof(p), "%s/%s", H.out, foreign[i]);
		cr_assert_eq(mkdir(p, 0755), 0);
		strcat(p, "/model.safetensors");
		FILE *f = fopen(p, "w");
		fputs("partial", f);
		fclose(f);
	}
	long long bytes = 0;
	char prefix[64];
	snprintf(prefix, sizeof(prefix), ".t1.tmp-%s-", id);
	for (int i = 0; i < 40 && !leftovers(H.out, prefix, NULL); i++)
		nap(0.05);
	cr_assert_eq(leftovers(H.out, prefix, &bytes), 1, "the worker is writing its output");
	hd_stop(&H, SIGKILL);
	cr_log_info("kill -9 of the daemon: %lld bytes in the job's temporary dir", bytes);
	cr_assert_eq(hd_start(&H, NULL), 0, "restart");
	json_t *j = hd_job(&H, id);
	cr_expect_str_eq(err_code(j), "daemon_restarted");
	json_decref(j);
	cr_expect_eq(leftovers(H.out, prefix, &bytes), 0, "kill -9 of the daemon, then restart: the job's "
		     "temporary dir is left (%lld bytes)", bytes);
	for (size_t i = 0; i < N(foreign); i++)
		cr_expect_eq(leftovers(H.out, foreign[i], NULL), 1, "%s is not ours: left alone", foreign[i]);
}

/* The daemon is killed after the worker renamed its output into place but
 * before the job was recorded as finished. */
static void publish_then_daemon_killed(int resume)
{
	const char *const extra[] = {resume ? "--resume-on-restart" : NULL, NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	cr_assert(hd_submit(&H, "fake-publish-hang", "p1", NULL));
	char id[32], out[256];
	snprintf(id, sizeof(id), "%s", H.last_id);
	snprintf(out, sizeof(out), "%s/p1", H.out);
	struct stat sb;
	for (int i = 0; i < 100 && stat(out, &sb); i++)
		nap(0.05);
	cr_assert_eq(stat(out, &sb), 0, "published");
	hd_stop(&H, SIGKILL);
	cr_assert_eq(hd_start(&H, extra), 0);
	json_t *j = hd_wait(&H, id, NULL, 5);
	cr_assert(j);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "succeeded", "%s",
			 err_code(j) ? err_code(j) : "");
	json_decref(j);
}

Test(api, publish_survives_daemon_kill)
{
	publish_then_daemon_killed(0);
}

Test(api, publish_survives_daemon_kill_with_resume)
{
	publish_then_daemon_killed(1);
}

Test(api, failure_after_publish_is_success)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	cr_assert(hd_submit(&H, "fake-publish-fail", "p2", NULL));
	json_t *j = hd_wait(&H, H.last_id, NULL, 5);
	cr_assert(j);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "succeeded", "%s",
			 err_code(j) ? err_code(j) : "");
	json_decref(j);
}

Test(api, restart_recovery)
{
	const char *const extra[] = {"--max-jobs", "1", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char run[32], queued[32];
	submit("fake-slow-200", "r1", "restart-key", run);
	submit("fake-ok", "r2", NULL, queued);
	json_t *j = hd_wait(&H, run, "running", 5);
	cr_assert(j);
	pid_t wpid = 0;
	for (int i = 0; i < 50 && !wpid; i++, nap(0.05)) {
		json_decref(j);
		j = hd_job(&H, run);
		wpid = (pid_t)json_integer_value(json_object_get(j, "worker_pid"));
	}
	json_decref(j);
	cr_assert(wpid > 0);
	hd_stop(&H, SIGKILL);
	int gone = 0;
	for (int i = 0; i < 100 && !gone; i++, nap(0.05))
		gone = !pid_alive(wpid);
	cr_expect(gone, "the worker dies with its daemon (no orphan)");
	/* a corrupt job directory is reported and skipped */
	char bad[256];
	snprintf(bad, sizeof(bad), "%s/jobs/jcorrupt", H.state);
	mkdir(bad, 0750);
	strcat(bad, "/spec.json");
	FILE *f = fopen(bad, "w");
	fputs("{\"id\": truncated", f);
	fclose(f);
	cr_assert_eq(hd_start(&H, extra), 0, "restart");
	j = hd_job(&H, run);
	cr_assert(j);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "failed");
	cr_expect_str_eq(err_code(j), "daemon_restarted");
	json_decref(j);
	j = hd_wait(&H, queued, "succeeded", 10);
	cr_expect(j, "the queued job survives the restart and runs");
	json_decref(j);
	/* the idempotency key survives too */
	cr_assert(hd_submit(&H, "fake-slow-200", "r1", "restart-key"));
	cr_expect_str_eq(H.last_id, run);
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", "/readyz", NULL, NULL, &r), 200);
	cr_expect(strstr(r.body, "\"skipped_job_dirs\":1"), "%s", r.body);
	cal_client_resp_free(&r);
}

Test(api, resume_on_restart)
{
	const char *const extra[] = {"--resume-on-restart", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char run[32];
	submit("fake-slow-20", "rr", NULL, run);
	await_state(run, "running", 5, NULL);
	hd_stop(&H, SIGKILL);
	cr_assert_eq(hd_start(&H, extra), 0);
	json_t *j = hd_wait(&H, run, "succeeded", 10);
	cr_expect(j, "re-queued and run again");
	json_decref(j);
}

Test(api, queue_full)
{
	const char *const extra[] = {"--max-jobs", "1", "--max-queue", "1", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	cr_assert(hd_submit(&H, "fake-slow-200", "q1", NULL));
	await_state(H.last_id, "running", 5, NULL);
	cr_assert(hd_submit(&H, "fake-ok", "q2", NULL));
	char *body = hd_spec(&H, "fake-ok", "q3");
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "POST", "/v1/jobs", JSON, body, &r), 503);
	char *ra = cal_client_header(&r, "Retry-After");
	cr_expect(ra && atoi(ra) > 0, "Retry-After: %s", ra ? ra : "(none)");
	free(ra);
	cal_client_resp_free(&r);
	free(body);
}

Test(api, graceful_stop)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	char run[32];
	submit("fake-slow-200", "g1", NULL, run);
	await_state(run, "running", 5, NULL);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int st = hd_stop(&H, SIGTERM);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "clean exit");
	cr_expect(dt < 5, "stopped in %.2f s (grace 1 s)", dt);
	cr_assert_eq(hd_start(&H, NULL), 0);
	json_t *j = hd_job(&H, run);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "failed");
	cr_expect_str_eq(err_code(j), "daemon_shutdown");
	json_decref(j);
}

Test(api, reload_keeps_old_config_when_invalid)
{
	char cfg[256];
	snprintf(cfg, sizeof(cfg), "%s/calibd.yaml", H.root);
	FILE *f = fopen(cfg, "w");
	fputs("max_queue: 5\nlog_format: json\n", f);
	fclose(f);
	const char *const extra[] = {"--config", cfg, NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	f = fopen(cfg, "w");
	fputs("max_queue: [oops\n", f);
	fclose(f);
	kill(H.pid, SIGHUP);
	nap(0.3);
	struct cal_client_resp r;
	cr_expect_eq(hd_req(&H, "GET", "/livez", NULL, NULL, &r), 200, "still serving after a bad reload");
	cal_client_resp_free(&r);
	f = fopen(cfg, "w");
	fputs("max_queue: 7\n", f);
	fclose(f);
	kill(H.pid, SIGHUP);
	nap(0.3);
	cr_expect_eq(hd_req(&H, "GET", "/livez", NULL, NULL, &r), 200);
	cal_client_resp_free(&r);
	hd_stop(&H, SIGTERM);
	char log[1 << 16];
	f = fopen(H.log, "r");
	size_t n = fread(log, 1, sizeof(log) - 1, f);
	fclose(f);
	log[n] = '\0';
	cr_expect(strstr(log, "reload_rejected"), "bad config rejected");
	cr_expect(strstr(log, "reloaded"), "good config applied");
}

Test(api, client_exit_codes)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	char spec[256];
	snprintf(spec, sizeof(spec), "%s/spec.json", H.root);
	char *body = hd_spec(&H, "fake-ok", "cli1");
	FILE *f = fopen(spec, "w");
	fputs(body, f);
	fclose(f);
	free(body);
	cr_expect_eq(hd_cli(&H, (const char *const[]){"submit", "--wait", "--interval", "0.1", spec, NULL}), 0,
		     "submit --wait of a good job");
	cr_expect_eq(hd_cli(&H, (const char *const[]){"submit", spec, NULL}), CAL_EXIT_BAD_INPUT,
		     "output exists now: 409 → 3");
	body = hd_spec(&H, "fake-fail", "cli2");
	f = fopen(spec, "w");
	fputs(body, f);
	fclose(f);
	free(body);
	cr_expect_eq(hd_cli(&H, (const char *const[]){"submit", "--wait", "--interval", "0.1", spec, NULL}),
		     CAL_EXIT_BAD_INPUT, "job failed on bad input → 3");
	cr_assert(hd_submit(&H, "fake-crash", "cli3", NULL));
	cr_expect_eq(hd_cli(&H, (const char *const[]){"wait", "--interval", "0.1", H.last_id, NULL}), CAL_EXIT_DEVICE,
		     "worker crash → 5 (retriable)");
	cr_expect_eq(hd_cli(&H, (const char *const[]){"status", H.last_id, NULL}), 0);
	cr_expect_eq(hd_cli(&H, (const char *const[]){"logs", H.last_id, NULL}), 0);
	cr_expect_eq(hd_cli(&H, (const char *const[]){"status", "jnothere", NULL}), CAL_EXIT_BAD_INPUT);
	cr_expect_eq(hd_cli(&H, (const char *const[]){"cancel", H.last_id, NULL}), CAL_EXIT_BAD_INPUT,
		     "cancel of a finished job → 3");
	hd_stop(&H, SIGTERM);
	cr_expect_eq(hd_cli(&H, (const char *const[]){"status", "jx", NULL}), CAL_EXIT_UNREACHABLE,
		     "daemon down → 7");
}

/* A one-request-at-a-time HTTP server on loopback, in a child: appends each
 * request line to `log` and answers 503 for paths ending in /j503, else 200
 * with a finished job.  Returns its pid; *port is its port. */
static pid_t fake_http(const char *log, int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 8) == 0);
	getsockname(fd, (struct sockaddr *)&a, &al);
	*port = ntohs(a.sin_port);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid > 0) {
		close(fd);
		return pid;
	}
	for (;;) {
		int c = accept(fd, NULL, NULL);
		if (c < 0)
			_exit(0);
		char req[8192];
		size_t n = 0;
		while (n < sizeof(req) - 1) {
			ssize_t r = read(c, req + n, sizeof(req) - 1 - n);
			if (r <= 0)
				break;
			n += (size_t)r;
			req[n] = '\0';
			if (strstr(req, "\r\n\r\n"))
				break;
		}
		req[n] = '\0';
		size_t ll = strcspn(req, "\r\n");
		FILE *f = fopen(log, "a");
		if (f) {
			fprintf(f, "%.*s\n", (int)ll, req);
			fclose(f);
		}
		int bad = ll > 14 && !memcmp(req + ll - 14, "/j503 HTTP/1.1", 14);
		const char *body = bad ? "{\"error\":{\"code\":\"internal\"}}" : "{\"id\":\"jok\",\"state\":\"succeeded\"}";
		dprintf(c, "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
			bad ? "503 Service Unavailable" : "200 OK", strlen(body), body);
		close(c);
	}
}

/* Runs calibd with args and, when proxy is set, http_proxy=proxy. */
static int run_cli(const char *proxy, const char *const *args)
{
	const char *argv[16] = {getenv("CALIBD")};
	size_t n = 1;
	for (size_t i = 0; args[i] && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	return hd_exec(argv, proxy);
}

/* The client commands (libcurl): a path prefix in --url, as behind an
 * ingress; http_proxy; 5xx and an unreachable daemon exit 7; a URL of
 * another scheme is a usage error. */
Test(api, client_url_prefix_and_proxy)
{
	char log[256], url[128], proxy[64];
	snprintf(log, sizeof(log), "%s/requests.log", H.root);
	int port;
	pid_t srv = fake_http(log, &port);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/calibd/", port);
	cr_expect_eq(run_cli(NULL, (const char *const[]){"status", "--url", url, "jok", NULL}), 0);
	cr_expect_eq(run_cli(NULL, (const char *const[]){"wait", "--url", url, "--interval", "0.1", "jok", NULL}), 0);
	cr_expect_eq(run_cli(NULL, (const char *const[]){"status", "--url", url, "j503", NULL}), CAL_EXIT_UNREACHABLE,
		     "5xx → 7");
	snprintf(proxy, sizeof(proxy), "http://127.0.0.1:%d", port);
	cr_expect_eq(run_cli(proxy, (const char *const[]){"status", "--url", "http://calibd.invalid:9/pre", "jok", NULL}),
		     0, "through http_proxy");
	cr_expect_eq(run_cli(NULL, (const char *const[]){"status", "--url", "ftp://127.0.0.1/", "jok", NULL}),
		     CAL_EXIT_USAGE);
	kill(srv, SIGKILL);
	waitpid(srv, NULL, 0);
	cr_expect_eq(run_cli(NULL, (const char *const[]){"status", "--url", url, "jok", NULL}), CAL_EXIT_UNREACHABLE,
		     "nothing listening → 7");
	FILE *f = fopen(log, "r");
	cr_assert(f);
	char text[4096];
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	cr_expect(strstr(text, "GET /calibd/v1/jobs/jok HTTP/1.1\n"), "prefix not kept: %s", text);
	cr_expect(strstr(text, "GET /calibd/v1/jobs/j503 HTTP/1.1\n"), "%s", text);
	cr_expect(strstr(text, "GET http://calibd.invalid:9/pre/v1/jobs/jok HTTP/1.1\n"), "proxy not used: %s", text);
}

/* The line of the daemon's JSON log with event `event` (and, when route is
 * set, that route), new reference or NULL. */
static json_t *log_line(const char *event, const char *route)
{
	FILE *f = fopen(H.log, "r");
	cr_assert(f);
	char line[8192];
	json_t *found = NULL;
	while (!found && fgets(line, sizeof(line), f)) {
		json_t *j = json_loads(line, 0, NULL);
		const char *e = json_string_value(json_object_get(j, "event"));
		const char *rt = json_string_value(json_object_get(j, "route"));
		if (e && !strcmp(e, event) && (!route || (rt && !strcmp(rt, route))))
			found = json_incref(j);
		json_decref(j);
	}
	fclose(f);
	return found;
}

/* Metrics an operator expects (a tokens counter, process start time, build
 * info, a latency histogram per route) and JSON logs whose numbers are
 * numbers, with one access line per request. */
Test(api, metrics_and_logs)
{
	cr_assert_eq(hd_start(&H, (const char *const[]){"--log-format", "json", NULL}), 0);
	cr_assert(hd_submit(&H, "fake-ok", "m1", NULL));
	await_state(H.last_id, "succeeded", 20, NULL);
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", "/metrics", NULL, NULL, &r), 200);
	cr_expect(!strstr(r.body, "calibd_tokens_per_second"), "a precomputed rate gauge");
	static const char tk[] = "\ncalibd_calibration_tokens_total ", st[] = "\nprocess_start_time_seconds ";
	const char *t = strstr(r.body, tk);
	cr_expect(t && strtoull(t + strlen(tk), NULL, 10) == 300, "tokens counter (3 layers x 100): %s", r.body);
	const char *ps = strstr(r.body, st);
	double now = (double)time(NULL);
	cr_expect(ps && fabs(strtod(ps + strlen(st), NULL) - now) < 120, "process_start_time_seconds");
	cr_expect(strstr(r.body, "\ncalibd_build_info{version=\"" CAL_VERSION "\",cuda=\""), "build info");
	cr_expect(strstr(r.body, "\ncalibd_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/jobs\","
				 "le=\"+Inf\"} 1\n"), "latency histogram: %s", r.body);
	cr_expect(strstr(r.body, "\ncalibd_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/jobs/{id}\"} "),
		  "per route");
	cal_client_resp_free(&r);
	nap(0.2);
	json_t *a = log_line("http_request", "/v1/jobs");
	cr_assert(a, "no access log line for POST /v1/jobs (%s)", H.log);
	cr_expect_str_eq(json_string_value(json_object_get(a, "method")), "POST");
	cr_expect(json_is_integer(json_object_get(a, "status")) && json_integer_value(json_object_get(a, "status")) == 202);
	cr_expect(json_is_number(json_object_get(a, "duration_ms")));
	cr_expect_str_eq(json_string_value(json_object_get(a, "client")), "127.0.0.1");
	json_decref(a);
	json_t *l = log_line("listening", NULL);
	cr_expect(l && json_is_integer(json_object_get(l, "port")), "port logged as a number");
	json_decref(l);
	l = log_line("job_started", NULL);
	cr_expect(l && json_is_integer(json_object_get(l, "pid")), "pid logged as a number");
	json_decref(l);
	l = log_line("job_finished", NULL);
	cr_expect(l && json_is_number(json_object_get(l, "duration_s")));
	json_decref(l);
}

static void raw_expect(const char *what, const void *req, size_t len, int status, const char *code)
{
	static char resp[65536];
	long n = hd_raw(H.port, req, len, resp, sizeof(resp), 10);
	cr_assert_geq(n, 0, "%s: cannot connect", what);
	cr_expect_eq(hd_raw_status(resp), status, "%s: want %d, got: %.300s", what, status, resp);
	cr_expect(strcasestr(resp, "\r\nContent-Type: application/json\r\n"), "%s: not JSON: %.300s", what, resp);
	char needle[64];
	snprintf(needle, sizeof(needle), "\"code\":\"%s\"", code);
	cr_expect(strstr(resp, needle), "%s: no %s in %.400s", what, needle, resp);
}

/* Malformed and oversized HTTP keeps the JSON error contract: nothing is
 * dropped without an answer, nothing answered in libmicrohttpd's HTML, a
 * NUL never shortens the path, and a 405 is counted under its route. */
Test(api, http_edge_cases_keep_json_contract)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	/* a chunked body that grows past 1 MiB: 413 once it has arrived */
	size_t chunk = 65536, total = 2u << 20;
	char *req = malloc(total + total / chunk * 16 + 1024);
	cr_assert(req);
	size_t k = (size_t)sprintf(req, "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
				   "Transfer-Encoding: chunked\r\n\r\n");
	for (size_t sent = 0; sent < total; sent += chunk) {
		k += (size_t)sprintf(req + k, "%zx\r\n", chunk);
		memset(req + k, ' ', chunk);
		k += chunk;
		k += (size_t)sprintf(req + k, "\r\n");
	}
	k += (size_t)sprintf(req + k, "0\r\n\r\n");
	raw_expect("chunked 2 MiB", req, k, 413, "body_too_large");
	/* headers of 40 KiB, a target of 10 KiB */
	k = (size_t)sprintf(req, "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ");
	memset(req + k, 'a', 40000);
	k += 40000;
	k += (size_t)sprintf(req + k, "\r\n\r\n");
	raw_expect("40 KiB header", req, k, 431, "headers_too_large");
	k = (size_t)sprintf(req, "GET /livez?x=");
	memset(req + k, 'a', 10000);
	k += 10000;
	k += (size_t)sprintf(req + k, " HTTP/1.1\r\nHost: x\r\n\r\n");
	raw_expect("10 KiB target", req, k, 414, "uri_too_long");
	free(req);
	/* a NUL byte in the target, raw and escaped */
	static const char nul[] = "GET /livez\0abc HTTP/1.1\r\nHost: x\r\n\r\n";
	raw_expect("raw NUL", nul, sizeof(nul) - 1, 400, "bad_request");
	static const char nulq[] = "GET /livez?a=b\0c HTTP/1.1\r\nHost: x\r\n\r\n";
	raw_expect("raw NUL in the query", nulq, sizeof(nulq) - 1, 400, "bad_request");
	static const char esc[] = "GET /livez%00abc HTTP/1.1\r\nHost: x\r\n\r\n";
	raw_expect("%00", esc, sizeof(esc) - 1, 404, "route_not_found");
	const struct step steps[] = {
		{"application/jsonx", "POST", "/v1/plan", "Content-Type: application/jsonx\r\n", "{}", 415,
		 "unsupported_media_type"},
		{"application/json-seq", "POST", "/v1/jobs", "Content-Type: application/json-seq\r\n", "{}", 415,
		 "unsupported_media_type"},
		{"json with charset", "POST", "/v1/plan", "Content-Type: Application/JSON; charset=utf-8\r\n", "{}",
		 400, "missing_field"},
		{"405", "PUT", "/v1/jobs", NULL, NULL, 405, "method_not_allowed"},
		{"%2F still decodes", "GET", "/v1/recipes/general%2Fptq%2F" "nvfp4_experts_only-kv_fp8", NULL, NULL,
		 200, NULL},
	};
	hd_steps(&H, steps, N(steps));
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", "/metrics", NULL, NULL, &r), 200);
	cr_expect(strstr(r.body, "calibd_http_requests_total{method=\"PUT\",route=\"/v1/jobs\",code=\"405\"} 1"),
		  "405 counted under its route: %s", r.body);
	cr_expect(!strstr(r.body, "route=\"unmatched\",code=\"405\""), "405 counted as unmatched");
	cal_client_resp_free(&r);
}

/* Slow clients: a request whose headers and body have not all arrived
 * within request_timeout_s is answered 408 and closed, however steadily it
 * trickles in (the inactivity timeout alone let one header line every few
 * seconds hold a connection forever).  Probes and metrics stay reachable
 * on the admin listener while every API slot of the address is taken. */
Test(api, slow_clients_deadline_and_admin_listener)
{
	const char *const extra[] = {"--request-timeout", "2", "--per-ip-connections", "6", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	cr_assert(H.admin_port[0], "the admin port file was not written");
	enum { NSLOW = 6 };
	int fds[NSLOW];
	for (int i = 0; i < NSLOW; i++) {
		fds[i] = hd_connect(H.port);
		cr_assert_geq(fds[i], 0);
		static const char start[] = "POST /v1/jobs HTTP/1.1\r\nHost: x\r\n";
		cr_assert_eq(send(fds[i], start, sizeof(start) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(start) - 1);
	}
	nap(0.3);
	/* the address's API slots are all taken ... */
	char resp[4096];
	static const char livez[] = "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	long n = hd_raw(H.port, livez, sizeof(livez) - 1, resp, sizeof(resp), 1);
	cr_expect(n <= 0 || hd_raw_status(resp) != 200, "the API port still had a slot: %s", resp);
	/* ... the admin listener answers probes and metrics, nothing else */
	n = hd_raw(H.admin_port, livez, sizeof(livez) - 1, resp, sizeof(resp), 5);
	cr_expect_eq(hd_raw_status(resp), 200, "admin /livez: %s", resp);
	static const char readyz[] = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	hd_raw(H.admin_port, readyz, sizeof(readyz) - 1, resp, sizeof(resp), 5);
	cr_expect_eq(hd_raw_status(resp), 200, "admin /readyz: %s", resp);
	static const char metrics[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	hd_raw(H.admin_port, metrics, sizeof(metrics) - 1, resp, sizeof(resp), 5);
	cr_expect_eq(hd_raw_status(resp), 200, "admin /metrics: %s", resp);
	static const char jobs[] = "GET /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	hd_raw(H.admin_port, jobs, sizeof(jobs) - 1, resp, sizeof(resp), 5);
	cr_expect_eq(hd_raw_status(resp), 404, "admin /v1/jobs: %s", resp);
	/* one header line every 0.4 s from each: all answered 408 and closed
	 * after 2 s, well before the 30 s inactivity timeout */
	int closed[NSLOW] = {0}, got408 = 0, nclosed = 0;
	double t0 = 0;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	t0 = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
	double t = t0;
	for (int round = 0; nclosed < NSLOW && t - t0 < 8; round++) {
		nap(0.4);
		for (int i = 0; i < NSLOW; i++) {
			if (closed[i])
				continue;
			char line[32];
			int l = snprintf(line, sizeof(line), "X-Slow-%d: a\r\n", round);
			send(fds[i], line, (size_t)l, MSG_NOSIGNAL | MSG_DONTWAIT);
			ssize_t r = recv(fds[i], resp, sizeof(resp) - 1, MSG_DONTWAIT);
			if (r > 0) {
				resp[r] = '\0';
				got408 += hd_raw_status(resp) == 408 && strstr(resp, "\"code\":\"request_timeout\"");
			}
			if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
				closed[i] = 1;
				nclosed++;
			}
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		t = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
	}
	for (int i = 0; i < NSLOW; i++)
		close(fds[i]);
	cr_expect_eq(nclosed, NSLOW, "%d of %d slow connections closed within 8 s", nclosed, NSLOW);
	cr_expect_eq(got408, NSLOW, "%d of %d got a JSON 408", got408, NSLOW);
	/* the slots are free again */
	n = hd_raw(H.port, livez, sizeof(livez) - 1, resp, sizeof(resp), 5);
	cr_expect_eq(hd_raw_status(resp), 200, "API /livez after the deadline: %s", resp);
}
