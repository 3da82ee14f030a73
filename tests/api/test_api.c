/*
 * test_api.c — the api suite: the real daemon on loopback, driven through
 * HTTP.  Each test starts its own daemon on an ephemeral port with a temp
 * state dir and the fake worker (fake_worker.c).
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
#include "daemon/cli.h"
#include "engine/job.h"
#include "fixture.h"
#include "harness.h"
#include "test_recipes.h"

static struct hd H;

static void setup(void)
{
	hd_setup(&H);
}

static void teardown(void)
{
	hd_cleanup(&H);
}

TestSuite(api, .init = setup, .fini = teardown, .timeout = 60);

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define JSON "Content-Type: application/json\r\n"
/* a minimal valid recipe in YAML flow style, as a JSON string body */
#define INLINE_BODY "metadata: {recipe_type: ptq}\\nquantize: {algorithm: max, quant_cfg: [{quantizer_name: '*', enable: false}]}"

static int pid_alive(pid_t p)
{
	return kill(p, 0) == 0;
}

static void nap(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
	nanosleep(&ts, NULL);
}

static const char *err_code(json_t *job)
{
	return json_string_value(json_object_get(json_object_get(job, "error"), "code"));
}

/* Entries of dir whose name starts with prefix, and the bytes of the files
 * directly in them (a partial checkpoint a worker left behind). */
static int leftovers(const char *dir, const char *prefix, long long *ret_bytes)
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
static void expect_state(const char *id, const char *state, const char *why)
{
	json_t *j = hd_job(&H, id);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), state, "%s", why);
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
		{"missing recipe", "POST", "/v1/jobs", JSON, "{\"model\":\"{root}/models/m\"}", 400, "missing_field"},
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
		{"no calibration", "POST", "/v1/jobs", JSON, "{\"recipe\":\"r\",\"model\":\"{root}/models/m\"}", 400,
		 "missing_field"},
		{"dataset outside roots", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/m\",\"calibration\":{\"datasets\":[\"/etc/passwd\"]}}", 403,
		 "path_outside_roots"},
		{"both datasets and tokens", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/m\",\"calibration\":{\"datasets\":[\"{root}/data/d.jsonl\"],"
		 "\"tokens\":\"{root}/data/d.jsonl\"}}", 400, "invalid_field"},
		{"samples out of range", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\","
		 "\"samples\":0}}", 400, "invalid_field"},
		{"output exists", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},"
		 "\"output\":\"{root}/out/exists\"}", 409, "output_exists"},
		{"output outside roots", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},"
		 "\"output\":\"/tmp/elsewhere\"}", 403, "path_outside_roots"},
		{"output dot-dot", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},"
		 "\"output\":\"{root}/out/..\"}", 400, "invalid_field"},
		{"unknown recipe", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"general/ptq/nope\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":"
		 "\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/x\"}", 422, "unknown_recipe"},
		{"recipe name escaping the tree", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"general/../../etc/x\",\"model\":\"{root}/models/m\"}", 400, "invalid_field"},
		{"recipe and recipe_yaml", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"recipe_yaml\":\"a: 1\",\"model\":\"{root}/models/m\"}", 400, "invalid_field"},
		{"inline recipe not YAML", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":{\"yaml\":\"quantize: [\"},\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":"
		 "\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/x\"}", 422, "invalid_recipe"},
		{"inline recipe schema error", "POST", "/v1/jobs", JSON,
		 "{\"recipe_yaml\":\"quant_cfg: []\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":"
		 "\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/x\"}", 422, "invalid_recipe"},
		{"inline import outside the tree", "POST", "/v1/jobs", JSON,
		 "{\"recipe_yaml\":\"imports:\\n  x: /etc/passwd\\n" INLINE_BODY "\",\"model\":\"{root}/models/m\","
		 "\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/x\"}", 422,
		 "invalid_recipe"},
		{"inline import climbing out", "POST", "/v1/jobs", JSON,
		 "{\"recipe_yaml\":\"imports: {x: ../../../etc/passwd}\\n" INLINE_BODY "\",\"model\":\"{root}/models/m\","
		 "\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/x\"}", 422,
		 "invalid_recipe"},
		{"recipe not applicable (MXFP8 block 32 vs expert dim 48)", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"general/ptq/mxfp8\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":"
		 "\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/x\"}", 422, "invalid_recipe"},
		{"unsupported architecture", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"" HD_RECIPE "\",\"model\":\"{root}/models/unsupported\",\"calibration\":{\"tokens\":"
		 "\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/x\"}", 422, "unsupported_model"},
		/* still running when "same output while active" comes (a fake-ok
		 * job could finish and publish first: output_exists) */
		{"valid (inline recipe)", "POST", "/v1/jobs", JSON,
		 "{\"name\":\"fake-slow\",\"recipe\":{\"yaml\":\"" INLINE_BODY "\"},\"model\":\"{root}/models/m\","
		 "\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/new\"}", 202, NULL},
		{"valid (recipe_yaml with an import in the tree)", "POST", "/v1/jobs", JSON,
		 "{\"name\":\"fake-ok\",\"recipe_yaml\":\"imports: {nvfp4: configs/numerics/nvfp4}\\n" INLINE_BODY
		 "\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},"
		 "\"output\":\"{root}/out/new2\"}", 202, NULL},
		{"same output while active", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"" HD_RECIPE "\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":"
		 "\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/new\"}", 409, "output_in_use"},
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
	cr_assert(hd_submit(&H, "fake-ok", "idem", "key-1"));
	snprintf(id, sizeof(id), "%s", H.last_id);
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
	json_t *j = hd_wait(&H, id, "succeeded", 10);
	cr_assert(j);
	json_decref(j);
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
		 "{\"model\":\"{root}/models/m\",\"recipe\":\"" HD_RECIPE "\"}", 401, "unauthorized"},
		{"plan with token", "POST", "/v1/plan", JSON "Authorization: Bearer " HD_TOKEN "\r\n",
		 "{\"model\":\"{root}/models/m\",\"recipe\":\"" HD_RECIPE "\"}", 200, NULL},
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
	cr_assert(hd_submit(&H, "fake-slow-200", "c1", NULL));
	snprintf(run, sizeof(run), "%s", H.last_id);
	cr_assert(hd_submit(&H, "fake-ok", "c2", NULL));
	snprintf(queued, sizeof(queued), "%s", H.last_id);
	json_t *j = hd_wait(&H, run, "running", 5);
	cr_assert(j);
	json_decref(j);
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
	j = hd_wait(&H, run, "cancelled", 5);
	cr_assert(j, "the running job ends cancelled");
	json_decref(j);
	expect_state(queued, "cancelled", "the queued job stays cancelled");
}

/* POSTs hd_spec(name, out) with field `key` set to `value` (JSON text);
 * returns the HTTP status (r filled). */
static int post_spec(const char *name, const char *out, const char *key, const char *value,
		     struct cal_client_resp *r)
{
	char *body = hd_spec(&H, name, out);
	json_t *b = json_loads(body, 0, NULL);
	free(body);
	json_object_set_new(b, key, json_loads(value, JSON_DECODE_ANY, NULL));
	body = json_dumps(b, JSON_COMPACT);
	json_decref(b);
	int st = hd_req(&H, "POST", "/v1/jobs", NULL, body, r);
	free(body);
	return st;
}

/* post_spec that must be accepted; returns the job id (H.last_id). */
static const char *submit_on(const char *name, const char *out, const char *key, const char *value)
{
	struct cal_client_resp r;
	int st = post_spec(name, out, key, value, &r);
	cr_assert_eq(st, 202, "submit %s with %s %s: HTTP %d", name, key, value, st);
	json_t *j = json_loads(r.body, 0, NULL);
	snprintf(H.last_id, sizeof(H.last_id), "%s", json_string_value(json_object_get(j, "id")));
	json_decref(j);
	cal_client_resp_free(&r);
	return H.last_id;
}

/* GET /v1/devices as "0=JOB,1=-,..." (the holder of each GPU), and the
 * CPU's jobs as "cpu:JOB/RANKS,...". */
static void devices_now(char *buf, size_t cap)
{
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", "/v1/devices", NULL, NULL, &r), 200);
	json_t *v = json_loads(r.body, 0, NULL), *x;
	cal_client_resp_free(&r);
	size_t i, n = 0;
	buf[0] = '\0';
	json_array_foreach(json_object_get(v, "devices"), i, x) {
		const char *job = json_string_value(json_object_get(x, "job"));
		n += (size_t)snprintf(buf + n, cap - n, "%s%lld=%s", i ? "," : "",
				      (long long)json_integer_value(json_object_get(x, "id")), job ? job : "-");
	}
	json_array_foreach(json_object_get(v, "cpu_jobs"), i, x)
		n += (size_t)snprintf(buf + n, cap - n, ",cpu:%s/%lld", json_string_value(json_object_get(x, "job")),
				      (long long)json_integer_value(json_object_get(x, "ranks")));
	json_decref(v);
}

/* The scheduler's device sets (configured GPU ids, no GPU needed: the fake
 * worker only reads CUDA_VISIBLE_DEVICES): a job holds the GPUs it was
 * given until it ends in any way (succeeded, cancelled, crashed); the head
 * of the queue waits for its GPUs; /v1/devices names each GPU's job. */
Test(api, device_sets)
{
	const char *const extra[] = {"--devices", "0,1,2", "--max-jobs", "3", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char a[32], b[32], c[32], want[256], got[256];
	snprintf(a, sizeof(a), "%s", submit_on("fake-slow-200", "d1", "devices", "2"));
	json_t *j = hd_wait(&H, a, "running", 5);
	cr_assert(j);
	json_decref(j);
	/* GPU 1 is held: the job asking for [1, 2] waits, and nothing overtakes it */
	snprintf(b, sizeof(b), "%s", submit_on("fake-slow-200", "d2", "devices", "[2,1]"));
	snprintf(c, sizeof(c), "%s", submit_on("fake-ok", "d3", "devices", "\"cpu\""));
	nap(0.5);
	snprintf(want, sizeof(want), "0=%s,1=%s,2=-", a, a);
	devices_now(got, sizeof(got));
	cr_expect_str_eq(got, want);
	expect_state(b, "queued", "GPU 1 is held");
	expect_state(c, "queued", "strict FIFO");
	/* the worker sees its GPUs only */
	char path[96];
	struct cal_client_resp r;
	snprintf(path, sizeof(path), "/v1/jobs/%s/log", a);
	cr_assert_eq(hd_req(&H, "GET", path, NULL, NULL, &r), 200);
	cr_expect(strstr(r.body, "CUDA_VISIBLE_DEVICES=0,1)"), "%s", r.body);
	cal_client_resp_free(&r);
	/* cancelled: its GPUs go to the next job */
	snprintf(path, sizeof(path), "/v1/jobs/%s", a);
	cr_expect_eq(hd_req(&H, "DELETE", path, NULL, NULL, &r), 202);
	cal_client_resp_free(&r);
	j = hd_wait(&H, a, "cancelled", 5);
	cr_assert(j);
	json_decref(j);
	j = hd_wait(&H, b, "running", 5);
	cr_assert(j, "the waiting job runs once its GPUs are free");
	json_t *dv = json_object_get(j, "devices");
	cr_expect(json_array_size(dv) == 2 && json_integer_value(json_array_get(dv, 0)) == 2 &&
		  json_integer_value(json_array_get(dv, 1)) == 1, "the job holds the GPUs it named");
	json_decref(j);
	j = hd_wait(&H, c, "succeeded", 5);
	cr_assert(j);
	json_decref(j);
	snprintf(want, sizeof(want), "0=-,1=%s,2=%s", b, b);
	devices_now(got, sizeof(got));
	cr_expect_str_eq(got, want);
	/* a crash releases them too; a CPU job shows its ranks */
	snprintf(path, sizeof(path), "/v1/jobs/%s", b);
	cr_expect_eq(hd_req(&H, "DELETE", path, NULL, NULL, &r), 202);
	cal_client_resp_free(&r);
	j = hd_wait(&H, b, "cancelled", 5);
	json_decref(j);
	snprintf(a, sizeof(a), "%s", submit_on("fake-crash", "d4", "devices", "3"));
	j = hd_wait(&H, a, "failed", 5);
	cr_assert(j);
	cr_expect_str_eq(err_code(j), "worker_crashed");
	json_decref(j);
	snprintf(c, sizeof(c), "%s", submit_on("fake-slow-200", "d5", "options", "{\"ranks\":4}"));
	j = hd_wait(&H, c, "running", 5);
	json_decref(j);
	snprintf(want, sizeof(want), "0=-,1=-,2=-,cpu:%s/4", c);
	devices_now(got, sizeof(got));
	cr_expect_str_eq(got, want, "every GPU free after the crash");
	/* more GPUs than configured: refused at submit */
	cr_expect_eq(post_spec("fake-ok", "d6", "devices", "4", &r), 422);
	cr_expect(strstr(r.body, "devices_unavailable"), "%s", r.body);
	cal_client_resp_free(&r);
}

Test(api, worker_failures)
{
	const char *const extra[] = {"--progress-timeout", "1", "--kill-grace", "0.5", "--max-jobs", "4", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char fail[32], crash[32], hang[32], stubborn[32], killed[32];
	cr_assert(hd_submit(&H, "fake-fail", "f1", NULL));
	snprintf(fail, sizeof(fail), "%s", H.last_id);
	cr_assert(hd_submit(&H, "fake-crash", "f2", NULL));
	snprintf(crash, sizeof(crash), "%s", H.last_id);
	cr_assert(hd_submit(&H, "fake-hang", "f3", NULL));
	snprintf(hang, sizeof(hang), "%s", H.last_id);
	cr_assert(hd_submit(&H, "fake-ignore-term", "f4", NULL));
	snprintf(stubborn, sizeof(stubborn), "%s", H.last_id);
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
	cr_assert(hd_submit(&H, "fake-slow-200", "f5", NULL));
	snprintf(killed, sizeof(killed), "%s", H.last_id);
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
	json_t *j = hd_wait(&H, H.last_id, "running", 5);
	cr_assert(j);
	json_decref(j);
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
	json_t *j = hd_wait(&H, id, "running", 5);
	cr_assert(j);
	json_decref(j);
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
	j = hd_job(&H, id);
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
	cr_assert(hd_submit(&H, "fake-slow-200", "r1", "restart-key"));
	snprintf(run, sizeof(run), "%s", H.last_id);
	cr_assert(hd_submit(&H, "fake-ok", "r2", NULL));
	snprintf(queued, sizeof(queued), "%s", H.last_id);
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
	cr_assert(hd_submit(&H, "fake-slow-20", "rr", NULL));
	snprintf(run, sizeof(run), "%s", H.last_id);
	json_t *j = hd_wait(&H, run, "running", 5);
	cr_assert(j);
	json_decref(j);
	hd_stop(&H, SIGKILL);
	cr_assert_eq(hd_start(&H, extra), 0);
	j = hd_wait(&H, run, "succeeded", 10);
	cr_expect(j, "re-queued and run again");
	json_decref(j);
}

Test(api, queue_full)
{
	const char *const extra[] = {"--max-jobs", "1", "--max-queue", "1", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	cr_assert(hd_submit(&H, "fake-slow-200", "q1", NULL));
	json_t *j = hd_wait(&H, H.last_id, "running", 5);
	cr_assert(j);
	json_decref(j);
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
	cr_assert(hd_submit(&H, "fake-slow-200", "g1", NULL));
	snprintf(run, sizeof(run), "%s", H.last_id);
	json_t *j = hd_wait(&H, run, "running", 5);
	cr_assert(j);
	json_decref(j);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int st = hd_stop(&H, SIGTERM);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "clean exit");
	cr_expect(dt < 5, "stopped in %.2f s (grace 1 s)", dt);
	cr_assert_eq(hd_start(&H, NULL), 0);
	j = hd_job(&H, run);
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
	json_t *j = hd_wait(&H, H.last_id, "succeeded", 20);
	cr_assert(j);
	json_decref(j);
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

/* ---- recipes and plans ----------------------------------------------- */

static json_t *get_json(const char *method, const char *path, const char *hdrs, const char *body, int want)
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
		{"plan: no recipe", "POST", "/v1/plan", JSON, "{\"model\":\"{root}/models/m\"}", 400, "missing_field"},
		{"plan: no model", "POST", "/v1/plan", JSON, "{\"recipe\":\"" HD_RECIPE "\"}", 400, "missing_field"},
		{"plan: model outside roots", "POST", "/v1/plan", JSON,
		 "{\"model\":\"/etc\",\"recipe\":\"" HD_RECIPE "\"}", 403, "path_outside_roots"},
		{"plan: no config.json", "POST", "/v1/plan", JSON,
		 "{\"model\":\"{root}/models/nocfg\",\"recipe\":\"" HD_RECIPE "\"}", 422, "not_a_model"},
		{"plan: unsupported", "POST", "/v1/plan", JSON,
		 "{\"model\":\"{root}/models/unsupported\",\"recipe\":\"" HD_RECIPE "\"}", 422, "unsupported_model"},
		{"plan: unknown recipe", "POST", "/v1/plan", JSON,
		 "{\"model\":\"{root}/models/m\",\"recipe\":\"nope\"}", 422, "unknown_recipe"},
		{"plan: not applicable", "POST", "/v1/plan", JSON,
		 "{\"model\":\"{root}/models/m\",\"recipe\":\"general/ptq/int4_blockwise_weight_only\"}", 422,
		 "invalid_recipe"},
		{"plan: bad inline", "POST", "/v1/plan", JSON,
		 "{\"model\":\"{root}/models/m\",\"recipe\":{\"yaml\":\"metadata: [\"}}", 422, "invalid_recipe"},
		{"plan: bad detail", "POST", "/v1/plan?detail=all", JSON,
		 "{\"model\":\"{root}/models/m\",\"recipe\":\"" HD_RECIPE "\"}", 400, "bad_query"},
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

/* ---- idempotency scope and expiry ------------------------------------ */

static int post_with(const char *token, const char *key, const char *out, char *ret_id)
{
	char *body = hd_spec(&H, "fake-ok", out);
	char hdr[512];
	snprintf(hdr, sizeof(hdr), JSON "Idempotency-Key: \"%s\"\r\n%s%s%s", key, token ? "Authorization: Bearer " : "",
		 token ? token : "", token ? "\r\n" : "");
	struct cal_client_resp r;
	int st = hd_req(&H, "POST", "/v1/jobs", hdr, body, &r);
	free(body);
	if (st > 0) {
		json_t *j = json_loads(r.body, 0, NULL);
		snprintf(ret_id, 32, "%s", json_string_value(json_object_get(j, "id")) ?
			 json_string_value(json_object_get(j, "id")) : "");
		json_decref(j);
		cal_client_resp_free(&r);
	}
	return st;
}

/* 250 concurrent submissions without an Idempotency-Key against max_queue
 * 64: the bound check and the insert are separated by the submission's
 * fsyncs, so every submission reserves its slot atomically with the check */
#define RACE_SUBMITS 250
#define RACE_QUEUE 64

struct race_arg {
	int i, status;
};

static void *race_submit(void *p)
{
	struct race_arg *a = p;
	char out[32];
	snprintf(out, sizeof(out), "race%d", a->i);
	char *body = hd_spec(&H, "fake-ok", out);
	struct cal_client_resp r;
	a->status = hd_req(&H, "POST", "/v1/jobs", JSON, body, &r);
	if (a->status > 0)
		cal_client_resp_free(&r);
	free(body);
	return NULL;
}

Test(api, queue_bound_holds_under_concurrency, .timeout = 120)
{
	const char *const extra[] = {"--max-jobs", "1", "--max-queue", "64", "--per-ip-connections", "512", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	/* the one running job holds the only slot: every other job stays queued */
	cr_assert(hd_submit(&H, "fake-slow-600", "race-run", NULL));
	json_t *j = hd_wait(&H, H.last_id, "running", 5);
	cr_assert(j);
	json_decref(j);
	static struct race_arg args[RACE_SUBMITS];
	static pthread_t th[RACE_SUBMITS];
	for (int i = 0; i < RACE_SUBMITS; i++) {
		args[i] = (struct race_arg){.i = i};
		cr_assert_eq(pthread_create(&th[i], NULL, race_submit, &args[i]), 0);
	}
	int accepted = 0, full = 0;
	for (int i = 0; i < RACE_SUBMITS; i++) {
		pthread_join(th[i], NULL);
		accepted += args[i].status == 202;
		full += args[i].status == 503;
	}
	json_t *list = get_json("GET", "/v1/jobs?state=queued&limit=1000", NULL, NULL, 200);
	size_t queued = json_array_size(json_object_get(list, "jobs"));
	json_decref(list);
	cr_log_info("%d concurrent submits, max_queue %d: %d accepted, %d refused 503, %zu queued", RACE_SUBMITS,
		    RACE_QUEUE, accepted, full, queued);
	cr_expect_leq(queued, RACE_QUEUE, "%zu jobs queued with max_queue %d", queued, RACE_QUEUE);
	cr_expect_leq(accepted, RACE_QUEUE, "%d submissions accepted with max_queue %d", accepted, RACE_QUEUE);
	cr_expect_eq(accepted, (int)queued, "every accepted job is queued");
}

Test(api, idempotency_per_client)
{
	const char *const extra[] = {"--token-file", H.tokfile, NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char a[32], a2[32], b[32], b2[32];
	cr_assert_eq(post_with(HD_TOKEN, "shared-key", "pa", a), 202);
	cr_expect_eq(post_with(HD_TOKEN, "shared-key", "pa", a2), 200, "replay by the same client");
	cr_expect_str_eq(a2, a);
	cr_expect_eq(post_with(HD_TOKEN, "shared-key", "pa-other", a2), 422, "other body, same client");
	cr_expect_eq(post_with("second-token", "shared-key", "pb", b), 202, "another client's key space");
	cr_expect_str_neq(b, a);
	cr_expect_eq(post_with("second-token", "shared-key", "pb", b2), 200);
	cr_expect_str_eq(b2, b);
	/* scopes survive a restart (spec.json keeps the client id, not the token) */
	hd_stop(&H, SIGTERM);
	cr_assert_eq(hd_start(&H, extra), 0);
	cr_expect_eq(post_with("second-token", "shared-key", "pb", b2), 200);
	cr_expect_str_eq(b2, b);
	cr_expect_eq(post_with(HD_TOKEN, "shared-key", "pb", a2), 422, "A's key still bound to A's body");
	char path[256], *spec = NULL;
	snprintf(path, sizeof(path), "%s/jobs/%s/spec.json", H.state, a);
	FILE *f = fopen(path, "r");
	cr_assert(f);
	char buf[8192];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	spec = buf;
	cr_expect(strstr(spec, "\"idempotency_client\""), "client id persisted");
	cr_expect(!strstr(spec, HD_TOKEN), "the token is never stored");
}

Test(api, idempotency_expiry)
{
	const char *const extra[] = {"--idempotency-ttl", "1", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char a[32], b[32];
	cr_assert_eq(post_with(NULL, "ttl-key", "e1", a), 202);
	cr_expect_eq(post_with(NULL, "ttl-key", "e2", b), 422, "within the TTL: mismatch");
	nap(1.2);
	cr_expect_eq(post_with(NULL, "ttl-key", "e2", b), 202, "after the TTL the key is free again");
	cr_expect_str_neq(a, b);
}

/* ---- state generations, retention, free space ------------------------ */

static void clobber(const char *state_dir, const char *id, const char *file, const char *text)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/jobs/%s/%s", state_dir, id, file);
	FILE *f = fopen(p, "w");
	cr_assert(f, "%s", p);
	fputs(text, f);
	fclose(f);
}

Test(api, corrupt_state_falls_back_to_previous_generation)
{
	cr_assert_eq(hd_start(&H, NULL), 0);
	char one[32], two[32];
	cr_assert(hd_submit(&H, "fake-ok", "s1", NULL));
	snprintf(one, sizeof(one), "%s", H.last_id);
	cr_assert(hd_submit(&H, "fake-ok", "s2", NULL));
	snprintf(two, sizeof(two), "%s", H.last_id);
	json_t *j = hd_wait(&H, one, "succeeded", 10);
	cr_assert(j);
	json_decref(j);
	j = hd_wait(&H, two, "succeeded", 10);
	cr_assert(j);
	json_decref(j);
	hd_stop(&H, SIGTERM);
	/* one: state.json torn; state.json.prev (the "running" generation) is sound */
	clobber(H.state, one, "state.json", "{\"format\":1,\"state\":\"succ");
	/* two: both generations damaged */
	clobber(H.state, two, "state.json", "\x01\x02 not json");
	clobber(H.state, two, "state.json.prev", "{\"state\":\"bogus\"}");
	cr_assert_eq(hd_start(&H, NULL), 0, "a damaged state file never stops the daemon");
	j = hd_job(&H, one);
	cr_assert(j, "loaded from state.json.prev");
	/* the previous generation was running, and the job's publish marker
	 * shows its output published: the record follows the disk */
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "succeeded",
			 "running in state.json.prev, published per publish.json");
	cr_expect_null(err_code(j));
	json_decref(j);
	cr_expect_null(hd_job(&H, two), "both generations bad: reported and skipped");
	struct cal_client_resp r;
	cr_assert_eq(hd_req(&H, "GET", "/readyz", NULL, NULL, &r), 200);
	cr_expect(strstr(r.body, "\"skipped_job_dirs\":1"), "%s", r.body);
	cr_expect(strstr(r.body, "\"state_fallbacks\":1"), "%s", r.body);
	cal_client_resp_free(&r);
	hd_stop(&H, SIGTERM);
	FILE *f = fopen(H.log, "r");
	char line[4096];
	int fb = 0, skipped = 0;
	while (f && fgets(line, sizeof(line), f)) {
		fb |= strstr(line, "state_fallback") != NULL;
		skipped |= strstr(line, "job_load_failed") && strstr(line, two);
	}
	if (f)
		fclose(f);
	cr_expect(fb, "the fallback is logged");
	cr_expect(skipped, "the skipped job is logged");
}

Test(api, retention_removes_finished_jobs)
{
	const char *const extra[] = {"--job-retention", "1", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char plain[32], keyed[32];
	cr_assert(hd_submit(&H, "fake-ok", "t1", NULL));
	snprintf(plain, sizeof(plain), "%s", H.last_id);
	cr_assert(hd_submit(&H, "fake-ok", "t2", "live-key"));
	snprintf(keyed, sizeof(keyed), "%s", H.last_id);
	json_t *j = hd_wait(&H, plain, "succeeded", 10);
	cr_assert(j);
	json_decref(j);
	j = hd_wait(&H, keyed, "succeeded", 10);
	cr_assert(j);
	json_decref(j);
	char dir[256];
	snprintf(dir, sizeof(dir), "%s/jobs/%s", H.state, plain);
	int gone = 0;
	for (int i = 0; i < 80 && !gone; i++, nap(0.05)) {
		json_t *x = hd_job(&H, plain);
		gone = !x;
		json_decref(x);
	}
	cr_expect(gone, "a finished job is removed after job_retention_s");
	struct stat sb;
	cr_expect_neq(stat(dir, &sb), 0, "and its directory with it");
	j = hd_job(&H, keyed);
	cr_expect(j, "a job whose Idempotency-Key is still live is kept");
	json_decref(j);
}

Test(api, low_disk_space_refuses_new_jobs)
{
	const char *const extra[] = {"--min-free-percent", "100", NULL};
	cr_assert_eq(hd_start(&H, extra), 0);
	char *body = hd_spec(&H, "fake-ok", "d1");
	const struct step steps[] = {
		{"below the reserve", "POST", "/v1/jobs", JSON, body, 507, "storage_full"},
	};
	hd_steps(&H, steps, N(steps));
	hd_stop(&H, SIGTERM);
	struct statvfs sv;
	cr_assert_eq(statvfs(H.state, &sv), 0);
	double pct = 100.0 * (double)sv.f_bavail / (double)sv.f_blocks;
	char reserve[32];
	snprintf(reserve, sizeof(reserve), "%.3f", pct / 2);
	const char *const half[] = {"--min-free-percent", reserve, NULL};
	cr_assert_eq(hd_start(&H, half), 0);
	const struct step ok[] = {
		{"above the reserve", "POST", "/v1/jobs", JSON, body, 202, NULL},
	};
	hd_steps(&H, ok, N(ok));
	free(body);
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

/* Submits node `rank` of a 2-node real job (docs/deploy.md): the tiny
 * fixture, rendezvous H.out/RV, output H.out/OUT; returns the job id. */
static const char *submit_node(int rank, const char *rv, const char *out, int comm_timeout_s)
{
	char body[1536];
	snprintf(body, sizeof(body),
		 "{\"name\":\"node%d\",\"model\":\"%s/m\",\"recipe\":\"%s\",\"calibration\":{\"tokens\":"
		 "\"%s/tokens.jsonl\",\"samples\":4,\"seq_len\":16},\"output\":\"%s/%s\",\"devices\":\"cpu\","
		 "\"options\":{\"comm_timeout_s\":%d},\"distributed\":{\"nodes\":2,\"node_rank\":%d,"
		 "\"rendezvous\":\"%s/%s\"}}",
		 rank, H.models, HD_RECIPE, H.data, H.out, out, comm_timeout_s, rank, H.out, rv);
	json_t *job = get_json("POST", "/v1/jobs", JSON, body, 202);
	snprintf(H.last_id, sizeof(H.last_id), "%s", json_string_value(json_object_get(job, "id")));
	json_decref(job);
	return H.last_id;
}

/* One job as two nodes through the daemon (two workers here, one per node
 * on a real cluster): node 0 publishes the checkpoint, node 1 calibrates
 * its rank.  Then node 1's worker stopped (SIGSTOP) before it joins: node
 * 0 fails at the ranks' deadline with `device`, naming rank 1; the daemon
 * ends the stopped one on cancel and runs the next job. */
Test(api, distributed_job_and_stopped_rank, .timeout = 120)
{
	H.real_worker = 1;
	cr_assert_eq(hd_start(&H, NULL), 0);
	char n0[32], n1[32];
	snprintf(n1, sizeof(n1), "%s", submit_node(1, "rv1", "f1", 20));
	snprintf(n0, sizeof(n0), "%s", submit_node(0, "rv1", "q1", 20));
	json_t *j = hd_wait(&H, n0, NULL, 60);
	cr_assert(j);
	cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "succeeded", "node 0: %s",
			 json_string_value(json_object_get(json_object_get(j, "error"), "message")));
	cr_expect_str_eq(json_string_value(json_object_get(json_object_get(j, "result"), "quant_algo")), "NVFP4");
	json_decref(j);
	j = hd_wait(&H, n1, NULL, 30);
	cr_assert(j);
	cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "succeeded");
	json_t *res = json_object_get(j, "result");
	cr_expect_eq(json_integer_value(json_object_get(res, "rank_first")), 1, "a follower's summary");
	cr_expect(!json_object_get(res, "quant_algo"), "a follower exports nothing");
	json_decref(j);
	char p[300];
	struct stat sb;
	snprintf(p, sizeof(p), "%s/q1/hf_quant_config.json", H.out);
	cr_expect_eq(stat(p, &sb), 0, "node 0 published %s", p);
	snprintf(p, sizeof(p), "%s/f1", H.out);
	cr_expect_neq(stat(p, &sb), 0, "node 1 wrote no output");

	/* node 1 stopped */
	snprintf(n1, sizeof(n1), "%s", submit_node(1, "rv2", "f2", 2));
	pid_t wpid = 0;
	for (int i = 0; i < 200 && !wpid; i++, nap(0.02)) {
		j = hd_job(&H, n1);
		wpid = (pid_t)json_integer_value(json_object_get(j, "worker_pid"));
		json_decref(j);
	}
	cr_assert(wpid > 0, "node 1's worker_pid");
	cr_assert_eq(kill(wpid, SIGSTOP), 0);
	double t0 = cal_now();
	snprintf(n0, sizeof(n0), "%s", submit_node(0, "rv2", "q2", 2));
	j = hd_wait(&H, n0, NULL, 30);
	cr_assert(j);
	const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "failed");
	cr_expect_str_eq(err_code(j), "device", "a rank's failure is a device failure: %s", msg);
	cr_expect(msg && strstr(msg, "rank 1"), "the error names the stopped rank: %s", msg);
	cr_expect_lt(cal_now() - t0, 20.0, "node 0 failed within the deadline");
	json_decref(j);
	snprintf(p, sizeof(p), "%s/q2", H.out);
	cr_expect_neq(stat(p, &sb), 0, "nothing published");
	snprintf(p, sizeof(p), "%s/rv2", H.out);
	cr_expect_neq(stat(p, &sb), 0, "node 0's rendezvous file is removed when it ends");
	/* the stopped worker is ended (SIGKILL after the grace) and the daemon goes on */
	char path[96];
	struct cal_client_resp r;
	snprintf(path, sizeof(path), "/v1/jobs/%s", n1);
	cr_expect_eq(hd_req(&H, "DELETE", path, NULL, NULL, &r), 202);
	cal_client_resp_free(&r);
	j = hd_wait(&H, n1, "cancelled", 10);
	cr_expect(j, "the stopped node is cancelled");
	json_decref(j);
	char body[1024];
	snprintf(body, sizeof(body),
		 "{\"model\":\"%s/m\",\"recipe\":\"%s\",\"calibration\":{\"tokens\":\"%s/tokens.jsonl\"},"
		 "\"output\":\"%s/q3\",\"devices\":\"cpu\",\"options\":{\"ranks\":2}}",
		 H.models, HD_RECIPE, H.data, H.out);
	j = get_json("POST", "/v1/jobs", JSON, body, 202);
	snprintf(n0, sizeof(n0), "%s", json_string_value(json_object_get(j, "id")));
	json_decref(j);
	j = hd_wait(&H, n0, NULL, 30);
	cr_assert(j);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "succeeded", "the next job runs");
	json_decref(j);
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
