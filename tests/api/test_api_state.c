/*
 * test_api_state.c — api suite (test_api.h): idempotency keys per client
 * and their expiry, the queue bound under concurrent submissions, state
 * generations, retention and the free-space floor.
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
	await_state(H.last_id, "running", 5, NULL);
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
	submit("fake-ok", "s1", NULL, one);
	submit("fake-ok", "s2", NULL, two);
	await_state(one, "succeeded", 10, NULL);
	await_state(two, "succeeded", 10, NULL);
	hd_stop(&H, SIGTERM);
	/* one: state.json torn; state.json.prev (the "running" generation) is sound */
	clobber(H.state, one, "state.json", "{\"format\":1,\"state\":\"succ");
	/* two: both generations damaged */
	clobber(H.state, two, "state.json", "\x01\x02 not json");
	clobber(H.state, two, "state.json.prev", "{\"state\":\"bogus\"}");
	cr_assert_eq(hd_start(&H, NULL), 0, "a damaged state file never stops the daemon");
	json_t *j = hd_job(&H, one);
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
	submit("fake-ok", "t1", NULL, plain);
	submit("fake-ok", "t2", "live-key", keyed);
	await_state(plain, "succeeded", 10, NULL);
	await_state(keyed, "succeeded", 10, NULL);
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
	json_t *j = hd_job(&H, keyed);
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
