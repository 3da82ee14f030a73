/*
 * client_cmds.c — `calibd submit|status|wait|cancel|logs`: talk to a
 * running daemon.  Exit codes (cli.h, docs/api.md) let a Kubernetes Job
 * tell a final outcome from a retriable one:
 *   0 success · 1 other failure · 2 usage · 3 rejected request or job failed
 *   on bad input · 4 out of space · 5 worker/GPU failure (retriable) ·
 *   6 cancelled or timed out · 7 daemon unreachable or 5xx (retriable)
 */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "common/parse.h"
#include "common/util.h"

struct conn {
	const char *url;  /* base: scheme, host, port, path prefix */
	char *auth;       /* "Authorization: Bearer ...\r\n" or NULL */
	struct cal_client_opts o;
};

static void conn_free(struct conn *c)
{
	if (c->auth)
		explicit_bzero(c->auth, strlen(c->auth));
	free(c->auth);
}

static void client_usage(const char *cmd)
{
	fprintf(stderr,
		"usage: calibd %s [--url URL] [--token-file FILE] [--cacert FILE] [--timeout S] %s\n"
		"  --url http[s]://HOST[:PORT][/PREFIX] defaults to $CALIBD_URL or http://127.0.0.1:8080\n"
		"  (http_proxy, https_proxy and no_proxy apply); --token-file to $CALIBD_TOKEN_FILE\n",
		cmd,
		!strcmp(cmd, "submit") ? "[--idempotency-key KEY] [--wait] [--interval S] SPEC.json|-" :
		!strcmp(cmd, "wait")   ? "[--interval S] [--wait-timeout S] JOB_ID" :
		!strcmp(cmd, "logs")   ? "[--tail-bytes N] JOB_ID" : "JOB_ID");
}

/* A duration or size option of cmd: 0, or CAL_EXIT_USAGE after saying why. */
static int opt_number(const char *cmd, enum cal_status st, struct cal_error *err)
{
	if (st >= 0)
		return 0;
	fprintf(stderr, "calibd %s: %s\n", cmd, cal_error_msg(err));
	cal_error_clear(err);
	return CAL_EXIT_USAGE;
}

#define CAL_CLIENT_MAX_S 1e9 /* about 30 years: "no limit" in practice */

/* Parses the common options; the rest (options of cmd, positional) stays in
 * rest[].  Returns 0 or an exit code. */
static int parse_common(int argc, char **argv, struct conn *c, char **rest, int *nrest)
{
	const char *url = getenv("CALIBD_URL");
	const char *tokf = getenv("CALIBD_TOKEN_FILE");
	struct cal_error err = {0};
	c->o.timeout_s = 30;
	*nrest = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			client_usage(argv[0]);
			return -1;
		}
		if (!strcmp(argv[i], "--url") && i + 1 < argc)
			url = argv[++i];
		else if (!strcmp(argv[i], "--token-file") && i + 1 < argc)
			tokf = argv[++i];
		else if (!strcmp(argv[i], "--cacert") && i + 1 < argc)
			c->o.cacert = argv[++i];
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
			if (opt_number(argv[0], cal_parse_duration("--timeout", argv[++i], 0,
								   CAL_CLIENT_MAX_S, &c->o.timeout_s,
								   &err), &err))
				return CAL_EXIT_USAGE;
		} else
			rest[(*nrest)++] = argv[i];
	}
	if (c->o.timeout_s <= 0)
		c->o.timeout_s = 30;
	c->url = url && *url ? url : "http://127.0.0.1:8080";
	if (cal_client_check_url(c->url, &err)) {
		fprintf(stderr, "calibd %s: %s\n", argv[0], cal_error_msg(&err));
		cal_error_clear(&err);
		return CAL_EXIT_USAGE;
	}
	if (tokf && *tokf) {
		char *text = NULL;
		if (cal_read_file(tokf, 64 * 1024, &text, NULL, &err)) {
			fprintf(stderr, "calibd %s: token file: %s\n", argv[0], cal_error_msg(&err));
			cal_error_clear(&err);
			return CAL_EXIT_USAGE;
		}
		char *line = text + strspn(text, " \t\r\n");
		line[strcspn(line, "\r\n")] = '\0';
		if (*line && asprintf(&c->auth, "Authorization: Bearer %s\r\n", line) < 0)
			c->auth = NULL;
		explicit_bzero(text, strlen(text));
		free(text);
	}
	return 0;
}

/* Exit code for an HTTP reply that is not a success. */
static int exit_for_http(int status)
{
	if (status >= 500 || status == 429 || status == 408)
		return CAL_EXIT_UNREACHABLE;
	return CAL_EXIT_BAD_INPUT;
}

/* Does a request; prints the error body for non-2xx.  Returns 0 (2xx) or
 * the exit code; *resp filled on 0. */
static int call(const char *cmd, struct conn *c, const char *method, const char *path, const char *extra,
		const char *body, size_t blen, struct cal_client_resp *resp)
{
	struct cal_error err = {0};
	char *hdrs = NULL;
	if (asprintf(&hdrs, "%s%s", c->auth ? c->auth : "", extra ? extra : "") < 0)
		return CAL_EXIT_FAILURE;
	enum cal_status st = cal_client_fetch(c->url, &c->o, method, path, hdrs, body, blen, resp, &err);
	explicit_bzero(hdrs, strlen(hdrs));
	free(hdrs);
	if (st) {
		fprintf(stderr, "calibd %s: %s\n", cmd, cal_error_msg(&err));
		cal_error_clear(&err);
		return st == CAL_ERR_NOMEM ? CAL_EXIT_FAILURE : st == CAL_ERR_INVALID ? CAL_EXIT_USAGE : CAL_EXIT_UNREACHABLE;
	}
	if (resp->status < 200 || resp->status > 299) {
		fprintf(stderr, "calibd %s: HTTP %d: %s\n", cmd, resp->status, resp->body);
		int rc = exit_for_http(resp->status);
		cal_client_resp_free(resp);
		return rc;
	}
	return 0;
}

static const char *job_state(json_t *job)
{
	return json_string_value(json_object_get(job, "state"));
}

static int wait_job(const char *cmd, struct conn *c, const char *id, double interval, double limit)
{
	char path[96];
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	double t0 = cal_now();
	for (;;) {
		struct cal_client_resp r;
		int rc = call(cmd, c, "GET", path, NULL, NULL, 0, &r);
		if (rc)
			return rc;
		json_t *job = json_loads(r.body, 0, NULL);
		cal_client_resp_free(&r);
		const char *s = job_state(job);
		if (!s) {
			json_decref(job);
			fprintf(stderr, "calibd %s: the daemon sent no job state\n", cmd);
			return CAL_EXIT_UNREACHABLE;
		}
		if (!strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "cancelled")) {
			char *text = json_dumps(job, JSON_INDENT(2));
			if (text)
				printf("%s\n", text);
			free(text);
			int rc2 = CAL_EXIT_OK;
			if (strcmp(s, "succeeded")) {
				json_t *e = json_object_get(job, "error");
				const char *code = json_string_value(json_object_get(e, "code"));
				rc2 = !strcmp(s, "cancelled") ? CAL_EXIT_INTERRUPTED : cal_exit_from_job_error(code);
				fprintf(stderr, "calibd %s: job %s %s: %s\n", cmd, id, s,
					json_string_value(json_object_get(e, "message")) ?: "");
			}
			json_decref(job);
			return rc2;
		}
		json_decref(job);
		if (limit > 0 && cal_now() - t0 > limit) {
			fprintf(stderr, "calibd %s: job %s still %s after %.0f s\n", cmd, id, s, limit);
			return CAL_EXIT_INTERRUPTED;
		}
		struct timespec ts = {(time_t)interval, (long)((interval - (double)(time_t)interval) * 1e9)};
		nanosleep(&ts, NULL);
	}
}

static int valid_id(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > 31)
		return 0;
	for (const char *p = id; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
		      *p == '_'))
			return 0;
	return 1;
}

/* Common driver: options, one positional argument. */
struct opts {
	struct conn c;
	const char *arg;
	const char *key;
	int wait;
	double interval, wait_limit;
	long tail;
};

static int parse(int argc, char **argv, struct opts *o)
{
	char **rest = calloc((size_t)argc + 1, sizeof(char *));
	int nrest = 0, rc;
	struct cal_error err = {0};
	memset(o, 0, sizeof(*o));
	o->interval = 2;
	if (!rest)
		return CAL_EXIT_FAILURE;
	rc = parse_common(argc, argv, &o->c, rest, &nrest);
	for (int i = 0; rc == 0 && i < nrest; i++) {
		if (!strcmp(rest[i], "--idempotency-key") && i + 1 < nrest)
			o->key = rest[++i];
		else if (!strcmp(rest[i], "--wait"))
			o->wait = 1;
		else if (!strcmp(rest[i], "--interval") && i + 1 < nrest)
			rc = opt_number(argv[0], cal_parse_duration("--interval", rest[++i], 0,
								    CAL_CLIENT_MAX_S, &o->interval,
								    &err), &err);
		else if (!strcmp(rest[i], "--wait-timeout") && i + 1 < nrest)
			rc = opt_number(argv[0], cal_parse_duration("--wait-timeout", rest[++i], 0,
								    CAL_CLIENT_MAX_S, &o->wait_limit,
								    &err), &err);
		else if (!strcmp(rest[i], "--tail-bytes") && i + 1 < nrest) {
			uint64_t n = 0;
			rc = opt_number(argv[0], cal_parse_size("--tail-bytes", rest[++i], 0, LONG_MAX,
								&n, &err), &err);
			o->tail = (long)n;
		} else if ((rest[i][0] != '-' || !strcmp(rest[i], "-")) && !o->arg)
			o->arg = rest[i];
		else {
			fprintf(stderr, "calibd %s: unexpected argument '%s'\n", argv[0], rest[i]);
			rc = CAL_EXIT_USAGE;
		}
	}
	free(rest);
	if (rc == 0 && !o->arg) {
		client_usage(argv[0]);
		rc = CAL_EXIT_USAGE;
	}
	if (o->interval <= 0.05)
		o->interval = 0.05;
	if (rc < 0)
		rc = CAL_EXIT_OK - 100; /* --help */
	return rc;
}

#define PARSE_OR_RETURN(argc, argv, o)                                                                         \
	do {                                                                                                   \
		int prc_ = parse(argc, argv, o);                                                               \
		if (prc_) {                                                                                    \
			conn_free(&(o)->c);                                                                    \
			return prc_ == -100 ? CAL_EXIT_OK : prc_;                                              \
		}                                                                                              \
	} while (0)

int cal_cmd_submit(int argc, char **argv)
{
	struct opts o;
	PARSE_OR_RETURN(argc, argv, &o);
	char *body = NULL;
	size_t blen = 0;
	struct cal_error err = {0};
	int rc;
	if (!strcmp(o.arg, "-")) {
		FILE *f = open_memstream(&body, &blen);
		char buf[4096];
		size_t n;
		while (f && (n = fread(buf, 1, sizeof(buf), stdin)) > 0 && blen < (2u << 20))
			fwrite(buf, 1, n, f);
		if (f)
			fclose(f);
	} else if (cal_read_file(o.arg, 2u << 20, &body, &blen, &err)) {
		conn_free(&o.c);
		return cal_cli_fail("submit", &err, CAL_EXIT_USAGE);
	}
	char *extra = NULL;
	if (o.key && asprintf(&extra, "Idempotency-Key: \"%s\"\r\n", o.key) < 0)
		extra = NULL;
	struct cal_client_resp r;
	rc = call("submit", &o.c, "POST", "/v1/jobs", extra, body ? body : "", body ? blen : 0, &r);
	free(extra);
	free(body);
	if (rc == 0) {
		printf("%s\n", r.body);
		json_t *job = json_loads(r.body, 0, NULL);
		const char *id = json_string_value(json_object_get(job, "id"));
		if (o.wait && id) {
			fflush(stdout);
			rc = wait_job("submit", &o.c, id, o.interval, o.wait_limit);
		}
		json_decref(job);
		cal_client_resp_free(&r);
	}
	conn_free(&o.c);
	return rc;
}

static int simple(int argc, char **argv, const char *method, const char *suffix)
{
	struct opts o;
	PARSE_OR_RETURN(argc, argv, &o);
	if (!valid_id(o.arg)) {
		fprintf(stderr, "calibd %s: '%s' is not a job id\n", argv[0], o.arg);
		conn_free(&o.c);
		return CAL_EXIT_USAGE;
	}
	char path[128];
	if (o.tail > 0)
		snprintf(path, sizeof(path), "/v1/jobs/%s%s?tail_bytes=%ld", o.arg, suffix, o.tail);
	else
		snprintf(path, sizeof(path), "/v1/jobs/%s%s", o.arg, suffix);
	struct cal_client_resp r;
	int rc = call(argv[0], &o.c, method, path, NULL, NULL, 0, &r);
	if (rc == 0) {
		fwrite(r.body, 1, r.len, stdout);
		if (r.len && r.body[r.len - 1] != '\n')
			putchar('\n');
		cal_client_resp_free(&r);
	}
	conn_free(&o.c);
	return rc;
}

int cal_cmd_status(int argc, char **argv)
{
	return simple(argc, argv, "GET", "");
}

int cal_cmd_cancel(int argc, char **argv)
{
	return simple(argc, argv, "DELETE", "");
}

int cal_cmd_logs(int argc, char **argv)
{
	return simple(argc, argv, "GET", "/log");
}

int cal_cmd_wait(int argc, char **argv)
{
	struct opts o;
	PARSE_OR_RETURN(argc, argv, &o);
	int rc = valid_id(o.arg) ? wait_job("wait", &o.c, o.arg, o.interval, o.wait_limit) : CAL_EXIT_USAGE;
	conn_free(&o.c);
	return rc;
}
