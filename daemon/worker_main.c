/*
 * worker_main.c — `calibd worker JOB_DIR`: runs one job for the supervisor.
 * Reads JOB_DIR/spec.json, runs the engine (worker.c), streams progress as
 * JSON lines on the fd named by $CALIBD_PROGRESS_FD (3 under the
 * supervisor; stdout otherwise), writes JOB_DIR/report.json on success, and
 * ends with {"event":"result"} or {"event":"error"} plus the exit code of
 * cli.h.  SIGTERM asks the engine to stop at its next safe point.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "common/util.h"
#include "fsutil.h"
#include "worker.h"

static volatile int cancel_flag;

static void on_term(int sig)
{
	(void)sig;
	cancel_flag = 1;
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
	emit_line(*(int *)ctx, event);
}

static void emit_json(int fd, json_t *v)
{
	if (v)
		emit_line(fd, v);
	json_decref(v);
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
		int v = atoi(pfd);
		if (v > 2 && fcntl(v, F_GETFD) >= 0)
			fd = v;
	}
	struct sigaction sa = {.sa_handler = on_term};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	struct cal_error err = {0};
	char *path = cal_path_join(dir, "spec.json"), *text = NULL, *report_text = NULL;
	json_t *doc = NULL, *report = NULL;
	enum cal_status st = path ? cal_read_file(path, 4 << 20, &text, NULL, &err)
				  : cal_error_set(&err, CAL_ERR_NOMEM, "out of memory");
	if (!st) {
		json_error_t je;
		doc = json_loads(text, JSON_REJECT_DUPLICATES, &je);
		if (!json_is_object(json_object_get(doc, "spec")))
			st = cal_error_set(&err, CAL_ERR_FORMAT, "%s: not a job spec", path);
	}
	if (!st) {
		fprintf(stderr, "calibd worker: job %s\n", json_string_value(json_object_get(doc, "id")));
		st = cal_worker_run_engine(json_object_get(doc, "spec"), emit, &fd, &cancel_flag, &report, &err);
	}
	if (!st && report) {
		report_text = json_dumps(report, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
		if (!report_text)
			st = cal_error_set(&err, CAL_ERR_NOMEM, "report: out of memory");
		else if (cal_write_atomic(dir, "report.json", report_text, strlen(report_text), &err) == CAL_OK)
			emit_json(fd, json_pack("{s:s, s:O}", "event", "result", "report", report));
		else
			st = err.code;
	}
	int rc = CAL_EXIT_OK;
	if (st) {
		if (cancel_flag && st == CAL_ERR_INTERRUPTED)
			fprintf(stderr, "calibd worker: cancelled\n");
		fprintf(stderr, "calibd worker: %s\n", cal_error_msg(&err));
		emit_json(fd, json_pack("{s:s, s:s, s:s}", "event", "error", "code", cal_status_code(st), "message",
					cal_error_msg(&err)));
		rc = cal_exit_from_status(st);
		if (rc == CAL_EXIT_OK)
			rc = CAL_EXIT_FAILURE;
	}
	cal_error_clear(&err);
	json_decref(doc);
	json_decref(report);
	free(report_text);
	free(text);
	free(path);
	free(dir);
	return rc;
}
