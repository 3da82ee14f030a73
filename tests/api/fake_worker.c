/*
 * fake_worker.c — a test double for `calibd worker JOB_DIR`, configured as
 * the daemon's worker_command in the api suite.  It speaks the worker
 * protocol (JSON lines on $CALIBD_PROGRESS_FD, report.json, exit codes)
 * without any engine.  Behaviour comes from the job's "name":
 *   fake-ok          three progress lines, a report, exit 0
 *   fake-slow-N      progress every 100 ms for N steps (default 50), then ok;
 *                    SIGTERM: {"event":"error","code":"interrupted"}, exit 6
 *   fake-fail        {"event":"error","code":"format"}, exit 3
 *   fake-crash       one progress line, then SIGSEGV
 *   fake-hang        one progress line, then silence (SIGTERM ends it)
 *   fake-ignore-term one progress line, silence, SIGTERM ignored
 *   fake-publish-hang   publishes (marker "renaming", rename), then silence
 *                       (killed in the finish phase after the rename)
 *   fake-publish-fail   publishes (both markers), then {"event":"error",
 *                       "code":"nospace"}, exit 4
 * Like the real worker, every behaviour first writes a partial output into
 * `.NAME.tmp-<job id>-fake00/` beside the output, renames it to the output
 * to publish (recording publish.json around the rename) and removes it
 * itself when it fails or is stopped by SIGTERM; a crash or SIGKILL leaves
 * it for the daemon to remove.
 */
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t term;
static int out_fd = 1;

static void on_term(int s)
{
	(void)s;
	term = 1;
}

static void line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void line(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	buf[n++] = '\n';
	ssize_t w = write(out_fd, buf, (size_t)n);
	(void)w;
}

static void nap_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void progress(int i, int n)
{
	line("{\"event\":\"progress\",\"phase\":\"calibrate\",\"layer\":%d,\"layers\":%d,\"tokens_done\":%d,"
	     "\"tokens_total\":%d,\"tokens_per_s\":1000.5,\"bytes_written\":%d,\"eta_s\":%d}",
	     i, n, i * 100, n * 100, i * 4096, n - i);
}

static char tmp_dir[4096];

/* The partial output, named as st_writer.h names it for job `id`. */
static void start_output(const char *output, const char *id)
{
	const char *slash = output ? strrchr(output, '/') : NULL;
	if (!slash || !id)
		return;
	snprintf(tmp_dir, sizeof(tmp_dir), "%.*s/.%s.tmp-%s-fake00", (int)(slash - output), output, slash + 1, id);
	mkdir(tmp_dir, 0755);
	char p[4200];
	snprintf(p, sizeof(p), "%s/model.safetensors", tmp_dir);
	FILE *f = fopen(p, "w");
	if (f) {
		for (int i = 0; i < 4096; i++)
			fputc('x', f);
		fclose(f);
	}
}

static void drop_output(void)
{
	char p[4200];
	if (!tmp_dir[0])
		return;
	snprintf(p, sizeof(p), "%s/model.safetensors", tmp_dir);
	unlink(p);
	rmdir(tmp_dir);
}

static void marker(const char *dir, const char *state, const char *output)
{
	char p[4200];
	snprintf(p, sizeof(p), "%s/publish.json", dir);
	FILE *f = fopen(p, "w");
	if (!f)
		return;
	json_t *m = json_pack("{s:i, s:s, s:s, s:s}", "format", 1, "state", state, "tmp", tmp_dir, "output", output);
	json_dumpf(m, f, JSON_COMPACT);
	json_decref(m);
	fclose(f);
}

/* Publishes: marker, rename (a plain mkdir without a partial output). */
static void publish(const char *dir, const char *output, int mark_done)
{
	if (!output)
		return;
	if (tmp_dir[0]) {
		marker(dir, "renaming", output);
		rename(tmp_dir, output);
	} else {
		mkdir(output, 0750);
	}
	if (mark_done)
		marker(dir, "published", output);
}

static int succeed(const char *dir, const char *output)
{
	char path[4096];
	publish(dir, output, 1);
	snprintf(path, sizeof(path), "%s/report.json", dir);
	FILE *f = fopen(path, "w");
	if (f) {
		fputs("{\"tensors\":3,\"fake\":true}", f);
		fclose(f);
	}
	line("{\"event\":\"result\",\"report\":{\"tensors\":3,\"fake\":true}}");
	fprintf(stderr, "fake worker: done\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fake_worker JOB_DIR\n");
		return 2;
	}
	const char *fd = getenv("CALIBD_PROGRESS_FD");
	if (fd)
		out_fd = atoi(fd);
	char path[4096];
	snprintf(path, sizeof(path), "%s/spec.json", argv[1]);
	json_t *doc = json_load_file(path, 0, NULL);
	const char *name = json_string_value(json_object_get(json_object_get(doc, "spec"), "name"));
	if (!name)
		name = "fake-ok";
	const char *output = json_string_value(json_object_get(json_object_get(doc, "spec"), "output"));
	start_output(output, json_string_value(json_object_get(doc, "id")));
	fprintf(stderr, "fake worker: %s (CUDA_VISIBLE_DEVICES=%s)\n", name,
		getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "(unset)");
	struct sigaction sa = {.sa_handler = on_term};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	int rc = 0;
	if (!strcmp(name, "fake-ok")) {
		for (int i = 1; i <= 3; i++) {
			progress(i, 3);
			nap_ms(20);
		}
		rc = succeed(argv[1], output);
	} else if (!strncmp(name, "fake-slow", 9)) {
		int n = name[9] == '-' ? atoi(name + 10) : 50;
		for (int i = 1; i <= n && !term; i++) {
			progress(i, n);
			nap_ms(100);
		}
		if (term) {
			drop_output();
			line("{\"event\":\"error\",\"code\":\"interrupted\",\"message\":\"stopped by SIGTERM\"}");
			rc = 6;
		} else {
			rc = succeed(argv[1], output);
		}
	} else if (!strcmp(name, "fake-fail")) {
		progress(1, 3);
		drop_output();
		line("{\"event\":\"error\",\"code\":\"format\",\"message\":\"model.safetensors: bad header\"}");
		rc = 3;
	} else if (!strcmp(name, "fake-crash")) {
		progress(1, 3);
		nap_ms(50);
		signal(SIGSEGV, SIG_DFL);
		raise(SIGSEGV);
	} else if (!strcmp(name, "fake-hang") || !strcmp(name, "fake-ignore-term")) {
		if (!strcmp(name, "fake-ignore-term"))
			signal(SIGTERM, SIG_IGN);
		progress(1, 3);
		while (!term)
			pause();
		drop_output();
		rc = 6;
	} else if (!strcmp(name, "fake-publish-hang")) {
		progress(1, 3);
		publish(argv[1], output, 0);
		while (!term)
			pause();
		rc = 6;
	} else if (!strcmp(name, "fake-publish-fail")) {
		progress(1, 3);
		publish(argv[1], output, 1);
		line("{\"event\":\"error\",\"code\":\"nospace\",\"message\":\"report.json: No space left on device\"}");
		rc = 4;
	} else {
		fprintf(stderr, "fake worker: unknown behaviour %s\n", name);
		rc = 2;
	}
	json_decref(doc);
	return rc;
}
