/*
 * worker_main.c — `calibd worker JOB_DIR`: runs one job for the supervisor.
 * Reads JOB_DIR/spec.json, runs the engine (worker.c), streams progress as
 * JSON lines on the fd named by $CALIBD_PROGRESS_FD (3 under the
 * supervisor; stdout otherwise), writes JOB_DIR/report.json on success, and
 * ends with {"event":"result"} or {"event":"error"} plus the exit code of
 * common/exit.h.  SIGTERM asks the engine to stop at its next safe point (the
 * engine then removes its temporary output).
 *
 * Files are opened confined to the roots spec.json records (common/confine.h).
 * The output's temporary directory carries the job id in its name, so the
 * daemon can remove it after a worker that could not (SIGKILL).  The
 * publish is recorded in JOB_DIR/publish.json (daemon.h): "renaming" before
 * the rename, "published" after it; once published, the job has succeeded
 * whatever fails after (a report that cannot be saved is only logged).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/confine.h"
#include "common/exit.h"
#include "common/parse.h"
#include "common/util.h"
#include "daemon.h"
#include "engine/st/st_writer.h"
#include "common/fsutil.h"
#include "log.h"
#include "worker.h"

static volatile int cancel_flag;

static void on_term(int sig)
{
	(void)sig;
	cancel_flag = 1;
}

/* The job log (stderr, JOB_DIR/log under the supervisor) says what the job
 * does: a line when a phase starts and for every layer done, with the
 * throughput and the bytes written so far. */
struct wlog {
	char phase[32];
	json_int_t layer;
	double t0;
};
static struct wlog wlog = {.layer = -2};

static void log_progress(const json_t *p)
{
	const char *phase = json_string_value(json_object_get(p, "phase"));
	json_t *layer = json_object_get(p, "layer");
	if (!phase || (!strcmp(phase, wlog.phase) && json_integer_value(layer) == wlog.layer))
		return;
	int new_phase = strcmp(phase, wlog.phase) != 0;
	snprintf(wlog.phase, sizeof(wlog.phase), "%s", phase);
	wlog.layer = json_integer_value(layer);
	json_t *f = json_pack("{s:s, s:f}", "phase", phase, "elapsed_s", cal_now() - wlog.t0);
	static const char *const keys[] = {"layer", "layers", "tokens_done", "tokens_total", "tokens_per_s",
					   "bytes_written", "eta_s"};
	for (size_t i = 0; f && i < CAL_ARRAY_LEN(keys); i++) {
		json_t *v = json_object_get(p, keys[i]);
		if (json_is_number(v))
			json_object_set(f, keys[i], v);
	}
	cal_logj(CAL_LOG_INFO, new_phase ? "phase" : "layer_done", f);
}

/* One JSON line on fd. */
static void emit_line(int fd, const json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	if (!s)
		return;
	size_t n = strlen(s);
	s[n] = '\n'; /* json_dumps' NUL: the line is written with its length */
	size_t off = 0;
	while (off < n + 1) {
		ssize_t w = write(fd, s + off, n + 1 - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	free(s);
}

static void emit(void *ctx, const json_t *event)
{
	log_progress(event);
	emit_line(*(int *)ctx, event);
}

static void emit_json(int fd, json_t *v)
{
	if (v)
		emit_line(fd, v);
	json_decref(v);
}

struct publish_ctx {
	const char *dir;
	int published;
};

static enum cal_status mark(struct publish_ctx *p, const char *state, const char *tmp, const char *out,
			    struct cal_error *err)
{
	json_t *m = json_pack("{s:i, s:s, s:s?, s:s}", "format", 1, "state", state, "tmp", tmp, "output", out);
	char *text = m ? json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	json_decref(m);
	enum cal_status st = text ? cal_write_atomic(p->dir, CAL_JOB_PUBLISH_FILE, text, strlen(text), err)
				  : cal_error_set(err, CAL_ERR_NOMEM, "publish marker: out of memory");
	free(text);
	return st;
}

/* Before the rename: durable, or the publish does not happen. */
static enum cal_status before_publish(void *ctx, const char *tmp, const char *out, struct cal_error *err)
{
	return mark(ctx, "renaming", tmp, out, err);
}

/* After it: the marker only speeds recovery up ("renaming" with the
 * temporary directory gone says the same), so a failure is only logged. */
static void after_publish(void *ctx, const char *out)
{
	struct publish_ctx *p = ctx;
	p->published = 1;
	struct cal_error err = {0};
	if (mark(p, "published", NULL, out, &err))
		fprintf(stderr, "calibd worker: published, but cannot record it: %s\n", cal_error_msg(&err));
	cal_error_clear(&err);
}

/* The roots of spec.json's "roots" as a confinement (arrays owned by doc). */
static int confine_from(json_t *doc, struct cal_confine *c, const char ***ret_roots)
{
	json_t *r = json_object_get(doc, "roots");
	*ret_roots = NULL;
	if (!json_is_array(r))
		return 0; /* a job of an older daemon: nothing recorded */
	const char **roots = calloc(json_array_size(r) + 1, sizeof(*roots));
	if (!roots)
		return -1;
	size_t i, n = 0;
	json_t *x;
	json_array_foreach(r, i, x)
		if (json_is_string(x) && json_string_value(x)[0] == '/')
			roots[n++] = json_string_value(x);
	c->roots = roots;
	c->n_roots = n;
	*ret_roots = roots;
	cal_confine_set(c);
	return 0;
}

int cal_cmd_worker(int argc, char **argv)
{
	if (argc != 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: calibd worker JOB_DIR\n"
				"Runs one job of the daemon (started by `calibd serve`, not by hand).\n");
		return argc == 2 && !strcmp(argv[1], "--help") ? CAL_EXIT_OK : CAL_EXIT_USAGE;
	}
	char *dir = realpath(argv[1], NULL);
	if (!dir) {
		fprintf(stderr, "calibd worker: %s: %s\n", argv[1], strerror(errno));
		return CAL_EXIT_BAD_INPUT;
	}
	int fd = STDOUT_FILENO;
	const char *pfd = getenv("CALIBD_PROGRESS_FD");
	if (pfd && *pfd) {
		uint64_t v;
		if (cal_parse_u64("CALIBD_PROGRESS_FD", pfd, 3, INT_MAX, &v, NULL) >= 0 &&
		    fcntl((int)v, F_GETFD) >= 0)
			fd = (int)v;
	}
	struct sigaction sa = {.sa_handler = on_term};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	struct cal_error err = {0};
	char *path = cal_path_join(dir, "spec.json"), *text = NULL, *report_text = NULL;
	json_t *doc = NULL, *report = NULL;
	struct publish_ctx pc = {.dir = dir};
	struct cal_st_publish pub = {.before = before_publish, .after = after_publish, .ctx = &pc};
	struct cal_confine conf = {0};
	const char **roots = NULL;
	enum cal_status st = path ? cal_read_file(path, 4 << 20, &text, NULL, &err)
				  : cal_error_set(&err, CAL_ERR_NOMEM, "out of memory");
	if (!st) {
		json_error_t je;
		doc = json_loads(text, JSON_REJECT_DUPLICATES, &je);
		if (!json_is_object(json_object_get(doc, "spec")))
			st = cal_error_set(&err, CAL_ERR_FORMAT, "%s: not a job spec", path);
		else if (confine_from(doc, &conf, &roots) < 0)
			st = cal_error_set(&err, CAL_ERR_NOMEM, "out of memory");
	}
	if (!st) {
		pub.tmp_tag = json_string_value(json_object_get(doc, "id"));
		wlog.t0 = cal_now();
		json_t *spec = json_object_get(doc, "spec"), *cal = json_object_get(spec, "calibration");
		json_t *f = json_pack("{s:s?, s:s?, s:s?, s:s?, s:O?, s:O?, s:O?}", "job", pub.tmp_tag, "model",
				      json_string_value(json_object_get(spec, "model")), "recipe",
				      json_string_value(json_object_get(spec, "recipe")), "output",
				      json_string_value(json_object_get(spec, "output")), "samples",
				      json_object_get(cal, "samples"), "seq_len", json_object_get(cal, "seq_len"), "devices",
				      json_object_get(spec, "devices"));
		cal_logj(CAL_LOG_INFO, "job_start", f);
		st = cal_worker_run_engine(json_object_get(doc, "spec"), emit, &fd, &cancel_flag, &pub, &report, &err);
	}
	if (st && pc.published) {
		/* the checkpoint is out: what failed after cannot undo that */
		fprintf(stderr, "calibd worker: published; after that: %s\n", cal_error_msg(&err));
		cal_error_clear(&err);
		st = CAL_OK;
	}
	if (!st) {
		json_t *rj = report;
		struct cal_error rerr = {0};
		report_text = report ? json_dumps(report, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6))
				     : NULL;
		if (report && !report_text)
			fprintf(stderr, "calibd worker: published, but the report is not saved: out of memory\n");
		else if (report_text && cal_write_atomic(dir, "report.json", report_text, strlen(report_text), &rerr))
			fprintf(stderr, "calibd worker: published, but the report is not saved: %s\n",
				cal_error_msg(&rerr));
		cal_error_clear(&rerr);
		json_t *c = json_object_get(rj, "calibration"), *files = json_object_get(rj, "files");
		cal_logj(CAL_LOG_INFO, "job_done",
			 json_pack("{s:O?, s:O?, s:O?, s:O?, s:o?, s:O?, s:O?}", "wall_s", json_object_get(rj, "wall_s"),
				   "layers", json_object_get(rj, "layers"), "tokens", json_object_get(c, "tokens"), "bytes",
				   json_object_get(rj, "bytes"), "files",
				   files ? json_integer((json_int_t)json_array_size(files)) : NULL, "phases_s",
				   json_object_get(rj, "phases_s"), "weight_sqnr_min_db",
				   json_object_get(rj, "weight_sqnr_min_db")));
		emit_json(fd, json_pack("{s:s, s:o}", "event", "result", "report", rj ? json_incref(rj) : json_object()));
	}
	int rc = CAL_EXIT_OK;
	if (st) {
		/* the API shows the message: without the recipe tree's path */
		const char *rdir = json_string_value(json_object_get(json_object_get(doc, "spec"), "recipes_dir"));
		char *msg = cal_str_scrub_dir(cal_error_msg(&err), rdir ? rdir : "");
		cal_logj(CAL_LOG_ERROR, "job_failed",
			 json_pack("{s:s, s:s, s:b, s:f, s:s}", "code", cal_status_code(st), "phase",
				   wlog.phase[0] ? wlog.phase : "start", "cancelled", cancel_flag && st == CAL_ERR_INTERRUPTED,
				   "elapsed_s", wlog.t0 > 0 ? cal_now() - wlog.t0 : 0.0, "message",
				   msg ? msg : cal_error_msg(&err)));
		emit_json(fd, json_pack("{s:s, s:s, s:s}", "event", "error", "code", cal_status_code(st), "message",
					msg ? msg : cal_error_msg(&err)));
		free(msg);
		rc = cal_exit_from_status(st);
		if (rc == CAL_EXIT_OK)
			rc = CAL_EXIT_FAILURE;
	}
	cal_confine_set(NULL);
	free(roots);
	cal_error_clear(&err);
	json_decref(doc);
	json_decref(report);
	free(report_text);
	free(text);
	free(path);
	free(dir);
	return rc;
}
