/*
 * harness.h — the api suite's test harness: a temp tree (roots, state dir,
 * token file), the real `calibd serve` on 127.0.0.1 with an ephemeral port
 * and the fake worker, requests through the daemon's own HTTP client, and
 * table-driven steps (name, request, expected status and error code).
 * Paths of the binaries come from $CALIBD and $FAKE_WORKER (meson sets them).
 */
#ifndef CAL_TEST_HARNESS_H
#define CAL_TEST_HARNESS_H

#include <jansson.h>
#include <sys/types.h>

#include "cli/client.h"

#define HD_TOKEN "s3cret-token-for-tests"
#define HD_RECIPE "general/ptq/nvfp4_experts_only-kv_fp8"

struct hd {
	char root[128];
	char state[192], models[192], data[192], out[192], port_file[192], tokfile[192], log[192];
	char admin_port_file[192];
	char port[16], admin_port[16]; /* the API's and the admin listener's */
	pid_t pid;
	const char *token;      /* sent as a bearer token when set */
	int real_worker;        /* run jobs with `calibd worker` instead of the fake */
	char last_id[32];
};

/* Creates the temp tree: models/m (the tiny qwen3_moe fixture, seed 1),
 * models/nocfg (no config.json), models/unsupported (unknown model_type),
 * data/d.jsonl, data/tokens.jsonl (4 x 16 ids), out/, out/exists/, state/,
 * tokens. */
void hd_setup(struct hd *h);
/* Starts the daemon (recipes_dir: $SRCDIR/recipes) with the default flags
 * plus extra (NULL-terminated);
 * waits for the port file.  Returns 0, or the exit status when it died. */
int hd_start(struct hd *h, const char *const *extra);
/* Sends sig to the daemon and waits for it (SIGKILL: no grace).  Returns
 * the wait status. */
int hd_stop(struct hd *h, int sig);
/* Stops the daemon if running and removes the tree. */
void hd_cleanup(struct hd *h);

/* One request; returns the HTTP status, or -1 when unreachable. */
int hd_req(struct hd *h, const char *method, const char *path, const char *headers, const char *body,
	   struct cal_client_resp *r);
/* Connects to 127.0.0.1:port (a string), or -1. */
int hd_connect(const char *port);
/* Sends len raw bytes to port and reads the answer until the server closes
 * or timeout_s passes; returns the bytes read (NUL-terminated in resp, cap
 * bytes at most), or -1 when it cannot connect. */
long hd_raw(const char *port, const void *req, size_t len, char *resp, size_t cap, double timeout_s);
/* The status of a raw HTTP response, or 0. */
int hd_raw_status(const char *resp);

/* Submission body for a job named `name` writing out/<out>. */
char *hd_spec(struct hd *h, const char *name, const char *out);
/* Submits; returns the job id (static buffer h->last_id) or NULL. */
const char *hd_submit(struct hd *h, const char *name, const char *out, const char *key);
/* GET the job; new reference or NULL. */
json_t *hd_job(struct hd *h, const char *id);
/* Polls until the job is in `state` (or any final state when state is
 * NULL), at most timeout_s.  Returns the job (new reference) or NULL. */
json_t *hd_wait(struct hd *h, const char *id, const char *state, double timeout_s);
/* Runs `calibd ARGS...` against this daemon; returns its exit code. */
int hd_cli(struct hd *h, const char *const *args);
/* Runs argv (NULL-terminated) with stdout to /dev/null, no proxy variables
 * but http_proxy when set; returns its exit code. */
int hd_exec(const char *const *argv, const char *http_proxy);

struct step {
	const char *name;
	const char *method, *path;  /* "{id}" in path: the last created job */
	const char *headers;        /* extra header lines, or NULL */
	const char *body;           /* "{root}" in body: the temp tree */
	int status;                 /* expected HTTP status */
	const char *code;           /* expected error code, or NULL */
};

/* Runs the steps in order; a mismatch fails the test naming the step. */
void hd_steps(struct hd *h, const struct step *s, size_t n);

#endif
