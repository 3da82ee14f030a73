/*
 * jobs.c — the /v1/jobs resource: submit (with Idempotency-Key), list,
 * get, cancel, the Server-Sent Events stream, the log and the report.
 * Handlers validate and hand over to the daemon's job table; the only disk
 * work on an HTTP thread is reading the recipe and config.json a
 * submission names (api/recipes.c: small, bounded), the submission's own
 * fsyncs (a 202 means durable) and streaming a job's log/report from a
 * file descriptor.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/http.h"
#include "api/jobspec.h"
#include "api/recipes.h"
#include "api/report_html.h"
#include "api/routes.h"
#include "common/parse.h"
#include "common/util.h"
#include "common/fsutil.h"
#include "daemon/log.h"

#define LIST_MAX 1000
#define LOG_TAIL_DEFAULT (1024 * 1024)
#define LOG_TAIL_MAX (64 * 1024 * 1024)
/* what a job id (and so a list cursor) is made of */
#define CURSOR_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

/* Idempotency-Key: a structured-field string ("..."); bare tokens are
 * accepted too.  1-255 printable ASCII characters. */
static int idem_key(const char *h, char *out, size_t cap)
{
	size_t n = strlen(h);
	if (n >= 2 && h[0] == '"' && h[n - 1] == '"') {
		h++;
		n -= 2;
	}
	if (n == 0 || n > 255 || n >= cap)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (h[i] < 0x20 || h[i] > 0x7e || h[i] == '"' || h[i] == '\\')
			return -1;
	memcpy(out, h, n);
	out[n] = '\0';
	return 0;
}

/* Free space: below min_free_percent on the state directory's or the
 * output's file system, a new job is refused with 507 before anything is
 * written (a job that would run out of disk midway fails late and costly). */
static enum cal_api_err space_check(const struct cal_config *c, const json_t *spec, struct cal_api_problem *prob)
{
	if (c->min_free_percent <= 0)
		return CAL_API_OK;
	double pct;
	if (cal_free_percent(c->state_dir, &pct) == 0 && pct < c->min_free_percent)
		return cal_api_problem_set(prob, CAL_API_ERR_STORAGE_FULL, NULL,
					   "the state directory's file system has %.1f%% free, below the %.1f%% "
					   "reserve (min_free_percent)", pct, c->min_free_percent);
	char *parent = strdup(json_string_value(json_object_get(spec, "output")));
	char *slash = parent ? strrchr(parent, '/') : NULL;
	if (slash && slash != parent)
		*slash = '\0';
	int low = slash && cal_free_percent(parent, &pct) == 0 && pct < c->min_free_percent;
	free(parent);
	if (low)
		return cal_api_problem_set(prob, CAL_API_ERR_STORAGE_FULL, "output",
					   "the output's file system has %.1f%% free, below the %.1f%% reserve "
					   "(min_free_percent)", pct, c->min_free_percent);
	return CAL_API_OK;
}

static enum MHD_Result job_reply(struct cal_http_req *r, unsigned status, json_t *job)
{
	const char *url = json_string_value(json_object_get(job, "url"));
	char *loc = url ? strdup(url) : NULL;
	enum MHD_Result ret = cal_http_json_h(r, status, job, loc ? "Location" : NULL, loc);
	free(loc);
	return ret;
}

enum MHD_Result cal_route_jobs_create(struct cal_http_req *r)
{
	struct cal_api_problem prob = {0};
	json_t *req = NULL, *spec = NULL, *job = NULL;
	char key[256];
	const char *kh = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
	if (kh && idem_key(kh, key, sizeof(key)) < 0)
		return cal_http_error(r, CAL_API_ERR_BAD_IDEMPOTENCY_KEY, NULL, NULL);
	if (!r->body || r->body_len == 0)
		return cal_http_error(r, CAL_API_ERR_BAD_JSON, NULL, "the request body is empty");
	if (cal_json_parse_body(r->body, r->body_len, &req, &prob))
		return cal_http_problem(r, &prob);
	char fp[65];
	if (cal_json_fingerprint(req, fp) < 0) {
		json_decref(req);
		return cal_http_error(r, CAL_API_ERR_INTERNAL, NULL, "cannot fingerprint the request");
	}
	/* a replay must not fail validation (its output exists by now) */
	if (kh) {
		enum cal_submit s = cal_daemon_idem_lookup(r->d, r->client, key, fp, &job);
		if (s == CAL_SUBMIT_REPLAY) {
			json_decref(req);
			return job_reply(r, 200, job);
		}
		if (s == CAL_SUBMIT_MISMATCH || s == CAL_SUBMIT_IN_FLIGHT) {
			json_decref(req);
			return cal_http_error(r, s == CAL_SUBMIT_MISMATCH ? CAL_API_ERR_IDEMPOTENCY_MISMATCH :
					      CAL_API_ERR_IDEMPOTENCY_IN_FLIGHT, NULL, NULL);
		}
	}
	const struct cal_config *c = r->cfg;
	struct cal_jobspec_env env = {
		.model_roots = c->model_roots, .n_model_roots = c->n_model_roots,
		.data_roots = c->data_roots, .n_data_roots = c->n_data_roots,
		.output_roots = c->output_roots, .n_output_roots = c->n_output_roots,
		.recipes_dir = c->recipes_dir, .devices = c->devices, .n_devices = c->n_devices,
		.datasets = c->datasets, .n_datasets = c->n_datasets,
	};
	if (cal_jobspec_validate(req, &env, &spec, &prob) ||
	    cal_api_job_check(r, spec, cal_api_recipe_field(req), &prob) || space_check(c, spec, &prob)) {
		json_decref(spec);
		json_decref(req);
		return cal_http_problem(r, &prob);
	}
	json_decref(req);
	struct cal_error err = {0};
	enum cal_submit s = cal_daemon_submit(r->d, spec, r->client, kh ? key : NULL, fp, &job, &err);
	json_decref(spec);
	enum MHD_Result ret;
	switch (s) {
	case CAL_SUBMIT_CREATED:
		cal_log(CAL_LOG_INFO, "job_submitted", "job", json_string_value(json_object_get(job, "id")), NULL);
		ret = job_reply(r, 202, job);
		break;
	case CAL_SUBMIT_REPLAY:
		ret = job_reply(r, 200, job);
		break;
	case CAL_SUBMIT_MISMATCH:
		ret = cal_http_error(r, CAL_API_ERR_IDEMPOTENCY_MISMATCH, NULL, NULL);
		break;
	case CAL_SUBMIT_IN_FLIGHT:
		ret = cal_http_error(r, CAL_API_ERR_IDEMPOTENCY_IN_FLIGHT, NULL, NULL);
		break;
	case CAL_SUBMIT_QUEUE_FULL:
		ret = cal_http_error(r, CAL_API_ERR_QUEUE_FULL, NULL, "the queue holds %d jobs", c->max_queue);
		break;
	case CAL_SUBMIT_SHUTTING_DOWN:
		ret = cal_http_error(r, CAL_API_ERR_SHUTTING_DOWN, NULL, NULL);
		break;
	case CAL_SUBMIT_OUTPUT_IN_USE:
		ret = cal_http_error(r, CAL_API_ERR_OUTPUT_IN_USE, "output", NULL);
		break;
	case CAL_SUBMIT_NOSPACE:
		ret = cal_http_error(r, CAL_API_ERR_STORAGE_FULL, NULL, NULL);
		break;
	default:
		cal_log(CAL_LOG_ERROR, "job_submit_failed", "error", cal_error_msg(&err), NULL);
		ret = cal_http_error(r, CAL_API_ERR_STORAGE_ERROR, NULL, NULL);
		break;
	}
	cal_error_clear(&err);
	return ret;
}

static int parse_state_filter(const char *s, unsigned *mask)
{
	*mask = 0;
	if (!s)
		return 0;
	while (*s) {
		size_t n = strcspn(s, ",");
		int found = 0;
		for (int i = 0; i < CAL_JOB_NSTATES; i++) {
			if (strlen(cal_job_state_names[i]) == n && !strncmp(s, cal_job_state_names[i], n)) {
				*mask |= 1u << i;
				found = 1;
			}
		}
		if (!found)
			return -1;
		s += n;
		if (*s == ',')
			s++;
	}
	return 0;
}

enum MHD_Result cal_route_jobs_list(struct cal_http_req *r)
{
	const char *st = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "state");
	const char *lim = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "limit");
	const char *cur = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "cursor");
	unsigned mask;
	if (parse_state_filter(st, &mask) < 0)
		return cal_http_error(r, CAL_API_ERR_BAD_QUERY, "state",
				      "state must be a comma-separated list of queued, running, succeeded, failed, cancelled");
	uint64_t limit = 100;
	if (lim) {
		if (cal_parse_u64("limit", lim, 1, LIST_MAX, &limit, NULL) < 0)
			return cal_http_error(r, CAL_API_ERR_BAD_QUERY, "limit", "limit must be in [1, %d]", LIST_MAX);
	}
	if (cur && (strlen(cur) >= CAL_JOB_ID_MAX || !*cur || cur[strspn(cur, CURSOR_CHARS)]))
		return cal_http_error(r, CAL_API_ERR_BAD_QUERY, "cursor",
				      "cursor must be a job id (1 to %d characters [A-Za-z0-9_-])", CAL_JOB_ID_MAX - 1);
	json_t *list = json_array();
	json_t *next = json_null();
	struct cal_daemon *d = r->d;
	pthread_mutex_lock(&d->mu);
	for (size_t i = 0; i < d->n_jobs; i++) {
		struct cal_job *j = d->jobs[i];
		if (cur && strcmp(j->id, cur) <= 0)
			continue;
		if (mask && !(mask & (1u << j->state)))
			continue;
		if (json_array_size(list) == limit) {
			json_decref(next);
			next = json_string(json_string_value(json_object_get(json_array_get(list, (size_t)limit - 1),
									     "id")));
			break;
		}
		json_t *o = cal_job_json(j);
		json_object_del(o, "spec");
		json_array_append_new(list, o);
	}
	pthread_mutex_unlock(&d->mu);
	return cal_http_json(r, 200, json_pack("{s:o, s:o}", "jobs", list, "next_cursor", next));
}

enum MHD_Result cal_route_job_get(struct cal_http_req *r)
{
	pthread_mutex_lock(&r->d->mu);
	struct cal_job *j = cal_jobs_find(r->d, r->param);
	json_t *o = j ? cal_job_json(j) : NULL;
	pthread_mutex_unlock(&r->d->mu);
	if (!o)
		return cal_http_error(r, CAL_API_ERR_JOB_NOT_FOUND, "id", "no job '%s'", r->param);
	return cal_http_json(r, 200, o);
}

enum MHD_Result cal_route_job_cancel(struct cal_http_req *r)
{
	json_t *o = NULL;
	enum cal_cancel c = cal_daemon_cancel(r->d, r->param, &o);
	if (c == CAL_CANCEL_NOT_FOUND)
		return cal_http_error(r, CAL_API_ERR_JOB_NOT_FOUND, "id", "no job '%s'", r->param);
	if (c == CAL_CANCEL_FINISHED) {
		const char *s = json_string_value(json_object_get(o, "state"));
		enum MHD_Result ret = cal_http_error(r, CAL_API_ERR_JOB_FINISHED, "id", "job '%s' is already %s",
						     r->param, s ? s : "finished");
		json_decref(o);
		return ret;
	}
	const char *s = json_string_value(json_object_get(o, "state"));
	return cal_http_json(r, s && !strcmp(s, "cancelled") ? 200 : 202, o);
}

/* ---- Server-Sent Events ---- */

struct sse {
	struct cal_daemon *d;
	char id[CAL_JOB_ID_MAX];
	uint64_t sent_version;
	int first, done;
	double keepalive_s;
	char *pending;
	size_t pending_len, pending_off;
};

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct sse *s = cls;
	(void)pos;
	if (s->pending_off < s->pending_len) {
		size_t n = s->pending_len - s->pending_off;
		if (n > max)
			n = max;
		memcpy(buf, s->pending + s->pending_off, n);
		s->pending_off += n;
		return (ssize_t)n;
	}
	if (s->done)
		return MHD_CONTENT_READER_END_OF_STREAM;
	struct cal_daemon *d = s->d;
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += (time_t)s->keepalive_s;
	pthread_mutex_lock(&d->mu);
	for (;;) {
		struct cal_job *j = cal_jobs_find(d, s->id);
		if (!j) {
			pthread_mutex_unlock(&d->mu);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		if (s->first || j->version != s->sent_version) {
			const char *ev = (s->first || j->state_version > s->sent_version) ? "state" : "progress";
			json_t *o = cal_job_json(j);
			json_object_del(o, "spec");
			s->sent_version = j->version;
			s->first = 0;
			if (j->state >= CAL_JOB_SUCCEEDED)
				s->done = 1;
			pthread_mutex_unlock(&d->mu);
			char *data = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
			json_decref(o);
			free(s->pending);
			s->pending = NULL;
			int n = data ? asprintf(&s->pending, "event: %s\nid: %llu\ndata: %s\n\n", ev,
						(unsigned long long)s->sent_version, data) : -1;
			free(data);
			if (n < 0) {
				s->pending = NULL;
				return MHD_CONTENT_READER_END_WITH_ERROR;
			}
			s->pending_len = (size_t)n;
			s->pending_off = 0;
			return sse_read(cls, pos, buf, max);
		}
		if (d->stopping) {
			pthread_mutex_unlock(&d->mu);
			s->done = 1;
			static const char bye[] = "event: shutdown\ndata: {}\n\n";
			size_t n = sizeof(bye) - 1 < max ? sizeof(bye) - 1 : max;
			memcpy(buf, bye, n);
			return (ssize_t)n;
		}
		if (pthread_cond_timedwait(&d->changed, &d->mu, &deadline) == ETIMEDOUT) {
			pthread_mutex_unlock(&d->mu);
			static const char ka[] = ": keepalive\n\n";
			size_t n = sizeof(ka) - 1 < max ? sizeof(ka) - 1 : max;
			memcpy(buf, ka, n);
			return (ssize_t)n;
		}
	}
}

static void sse_free(void *cls)
{
	struct sse *s = cls;
	free(s->pending);
	free(s);
}

enum MHD_Result cal_route_job_events(struct cal_http_req *r)
{
	pthread_mutex_lock(&r->d->mu);
	int found = cal_jobs_find(r->d, r->param) != NULL;
	pthread_mutex_unlock(&r->d->mu);
	if (!found)
		return cal_http_error(r, CAL_API_ERR_JOB_NOT_FOUND, "id", "no job '%s'", r->param);
	struct sse *s = calloc(1, sizeof(*s));
	if (!s)
		return MHD_NO;
	s->d = r->d;
	snprintf(s->id, sizeof(s->id), "%.31s", r->param);
	s->first = 1;
	s->keepalive_s = r->cfg->connection_timeout_s / 2.0;
	if (s->keepalive_s > 15)
		s->keepalive_s = 15;
	if (s->keepalive_s < 1)
		s->keepalive_s = 1;
	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, s, sse_free);
	if (!resp) {
		sse_free(s);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "text/event-stream");
	return cal_http_send(r, 200, resp);
}

/* ---- files of a job ---- */

static enum MHD_Result job_file(struct cal_http_req *r, const char *name, const char *ctype, int tail)
{
	pthread_mutex_lock(&r->d->mu);
	struct cal_job *j = cal_jobs_find(r->d, r->param);
	char *path = j ? cal_path_join(j->dir, name) : NULL;
	pthread_mutex_unlock(&r->d->mu);
	if (!j)
		return cal_http_error(r, CAL_API_ERR_JOB_NOT_FOUND, "id", "no job '%s'", r->param);
	uint64_t want = LOG_TAIL_DEFAULT;
	const char *tb = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "tail_bytes");
	if (tail && tb) {
		if (cal_parse_u64("tail_bytes", tb, 1, LOG_TAIL_MAX, &want, NULL) < 0) {
			free(path);
			return cal_http_error(r, CAL_API_ERR_BAD_QUERY, "tail_bytes", "tail_bytes must be in [1, %d]",
					      LOG_TAIL_MAX);
		}
	}
	int fd = path ? open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
	free(path);
	struct stat sb;
	if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		if (fd >= 0)
			close(fd);
		return cal_http_error(r, CAL_API_ERR_NOT_AVAILABLE, NULL, "job '%s' has no %s yet", r->param, name);
	}
	uint64_t size = (uint64_t)sb.st_size, off = 0;
	if (tail && size > (uint64_t)want) {
		off = size - (uint64_t)want;
		size = (uint64_t)want;
	} else if (!tail && size > LOG_TAIL_MAX) {
		size = LOG_TAIL_MAX;
	}
	struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64(size, fd, off);
	if (!resp) {
		close(fd);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", ctype);
	return cal_http_send(r, 200, resp);
}

enum MHD_Result cal_route_job_log(struct cal_http_req *r)
{
	return job_file(r, "log", "text/plain; charset=utf-8", 1);
}

enum MHD_Result cal_route_job_report(struct cal_http_req *r)
{
	return job_file(r, "report.json", "application/json", 0);
}

/* The report page (api/report_html.c) of a succeeded job's output. */
enum MHD_Result cal_route_job_report_html(struct cal_http_req *r)
{
	pthread_mutex_lock(&r->d->mu);
	struct cal_job *j = cal_jobs_find(r->d, r->param);
	const char *out = j && j->result ? json_string_value(json_object_get(j->result, "output")) : NULL;
	char *path = out ? cal_path_join(out, "calibd_report.json") : NULL;
	char *title = NULL;
	if (j && asprintf(&title, "calibd job %s", r->param) < 0)
		title = NULL;
	pthread_mutex_unlock(&r->d->mu);
	if (!j) {
		free(path);
		free(title);
		return cal_http_error(r, CAL_API_ERR_JOB_NOT_FOUND, "id", "no job '%s'", r->param);
	}
	char *text = NULL, *html = NULL;
	size_t len = 0;
	json_t *rep = NULL;
	if (path && cal_read_file(path, (size_t)LOG_TAIL_MAX, &text, &len, NULL) >= 0)
		rep = json_loadb(text, len, 0, NULL);
	free(path);
	free(text);
	if (!json_is_object(rep)) {
		json_decref(rep);
		free(title);
		return cal_http_error(r, CAL_API_ERR_NOT_AVAILABLE, NULL,
				      "job '%s' has no report of its output yet", r->param);
	}
	html = cal_report_html(rep, title ? title : "calibd job");
	json_decref(rep);
	free(title);
	if (!html)
		return MHD_NO;
	struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(html), html,
								    MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(html);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
	return cal_http_send(r, 200, resp);
}
