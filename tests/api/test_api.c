/*
 * test_api.c — the api suite: the real daemon on loopback, driven through
 * HTTP.  Each test starts its own daemon on an ephemeral port with a temp
 * state dir and the fake worker (fake_worker.c).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/cli.h"
#include "harness.h"

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
		{"bad option", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"options\":{\"moe_calib_experts_ratio\":2}}", 400, "invalid_field"},
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
		{"valid (inline recipe)", "POST", "/v1/jobs", JSON,
		 "{\"name\":\"fake-ok\",\"recipe\":{\"yaml\":\"quant_cfg: []\"},\"model\":\"{root}/models/m\","
		 "\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},\"output\":\"{root}/out/new\"}", 202, NULL},
		{"same output while active", "POST", "/v1/jobs", JSON,
		 "{\"recipe\":\"r\",\"model\":\"{root}/models/m\",\"calibration\":{\"tokens\":\"{root}/data/d.jsonl\"},"
		 "\"output\":\"{root}/out/new\"}", 409, NULL},
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
	j = hd_job(&H, queued);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "queued", "max_concurrent_jobs 1");
	json_decref(j);
	char path[96];
	struct cal_client_resp r;
	snprintf(path, sizeof(path), "/v1/jobs/%s", queued);
	cr_expect_eq(hd_req(&H, "DELETE", path, NULL, NULL, &r), 200, "a queued job is cancelled at once");
	cal_client_resp_free(&r);
	snprintf(path, sizeof(path), "/v1/jobs/%s", run);
	cr_expect_eq(hd_req(&H, "DELETE", path, NULL, NULL, &r), 202, "a running job is asked to stop");
	cal_client_resp_free(&r);
	j = hd_wait(&H, run, "cancelled", 5);
	cr_assert(j, "the running job ends cancelled");
	json_decref(j);
	j = hd_job(&H, queued);
	cr_expect_str_eq(json_string_value(json_object_get(j, "state")), "cancelled");
	json_decref(j);
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
	j = hd_wait(&H, crash, "failed", 5);
	cr_assert(j);
	cr_expect_str_eq(err_code(j), "worker_crashed");
	json_decref(j);
	j = hd_wait(&H, hang, "failed", 6);
	cr_assert(j);
	cr_expect_str_eq(err_code(j), "progress_timeout");
	json_decref(j);
	j = hd_wait(&H, stubborn, "failed", 6);
	cr_assert(j, "a worker ignoring SIGTERM is killed");
	cr_expect_str_eq(err_code(j), "progress_timeout");
	json_decref(j);
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
	struct cal_client_resp r;
	cr_expect_eq(hd_req(&H, "GET", "/readyz", NULL, NULL, &r), 200, "the daemon keeps serving");
	cal_client_resp_free(&r);
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
