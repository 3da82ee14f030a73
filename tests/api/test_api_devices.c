/*
 * test_api_devices.c — api suite (test_api.h): the scheduler's device sets
 * (GPUs held by a job until it ends, /v1/devices) and one job over two nodes
 * through the daemon, with a stopped rank (docs/deploy.md).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "harness.h"
#include "test_api.h"

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
	await_state(a, "running", 5, NULL);
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
	await_state(a, "cancelled", 5, NULL);
	json_t *j = hd_wait(&H, b, "running", 5);
	cr_assert(j, "the waiting job runs once its GPUs are free");
	json_t *dv = json_object_get(j, "devices");
	cr_expect(json_array_size(dv) == 2 && json_integer_value(json_array_get(dv, 0)) == 2 &&
		  json_integer_value(json_array_get(dv, 1)) == 1, "the job holds the GPUs it named");
	json_decref(j);
	await_state(c, "succeeded", 5, NULL);
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
 * on a real cluster), both naming the same output: node 0 publishes the
 * checkpoint, node 1 calibrates its rank and writes its experts into it.  Then node 1's worker stopped (SIGSTOP) before it joins: node
 * 0 fails at the ranks' deadline with `device`, naming rank 1; the daemon
 * ends the stopped one on cancel and runs the next job. */
Test(api, distributed_job_and_stopped_rank, .timeout = 120)
{
	H.real_worker = 1;
	cr_assert_eq(hd_start(&H, NULL), 0);
	char n0[32], n1[32];
	snprintf(n1, sizeof(n1), "%s", submit_node(1, "rv1", "q1", 20));
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
	cr_expect(!json_object_get(res, "quant_algo"), "a follower publishes nothing");
	cr_expect_gt(json_integer_value(json_object_get(res, "export_bytes")), 0,
		     "a follower writes its experts into node 0's output");
	json_decref(j);
	char p[300];
	struct stat sb;
	snprintf(p, sizeof(p), "%s/q1/hf_quant_config.json", H.out);
	cr_expect_eq(stat(p, &sb), 0, "node 0 published %s", p);

	/* node 1 stopped */
	snprintf(n1, sizeof(n1), "%s", submit_node(1, "rv2", "q2", 2));
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
