/*
 * harness.c — see harness.h.
 */
#include "harness.h"

#include <criterion/criterion.h>

#include "fixture.h"
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
	nanosleep(&ts, NULL);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	cr_assert(f, "cannot write %s", path);
	fputs(text, f);
	fclose(f);
}

void hd_setup(struct hd *h)
{
	memset(h, 0, sizeof(*h));
	snprintf(h->root, sizeof(h->root), "/tmp/calibd-api-XXXXXX");
	cr_assert(mkdtemp(h->root), "mkdtemp");
	char p[256];
	snprintf(h->models, sizeof(h->models), "%s/models", h->root);
	snprintf(h->data, sizeof(h->data), "%s/data", h->root);
	snprintf(h->out, sizeof(h->out), "%s/out", h->root);
	snprintf(h->state, sizeof(h->state), "%s/state", h->root);
	snprintf(h->port_file, sizeof(h->port_file), "%s/port", h->root);
	snprintf(h->admin_port_file, sizeof(h->admin_port_file), "%s/admin_port", h->root);
	snprintf(h->tokfile, sizeof(h->tokfile), "%s/tokens", h->root);
	snprintf(h->log, sizeof(h->log), "%s/daemon.log", h->root);
	mkdir(h->models, 0755);
	mkdir(h->data, 0755);
	mkdir(h->out, 0755);
	/* a real (tiny) checkpoint: submissions load its config.json and plan it */
	snprintf(p, sizeof(p), "%s/m", h->models);
	struct cal_fixture_opts fo = {.arch = "qwen3_moe", .seed = 1};
	struct cal_error err = {0};
	cr_assert_eq(cal_fixture_write(&fo, p, &err), CAL_OK, "fixture: %s", cal_error_msg(&err));
	snprintf(p, sizeof(p), "%s/unsupported", h->models);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/unsupported/config.json", h->models);
	write_file(p, "{\"model_type\":\"not_a_real_arch\",\"num_hidden_layers\":2}");
	snprintf(p, sizeof(p), "%s/nocfg", h->models);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/d.jsonl", h->data);
	write_file(p, "{\"text\":\"hello\"}\n");
	/* 4 sequences of 16 token ids (the fixture's vocabulary is 320) */
	snprintf(p, sizeof(p), "%s/tokens.jsonl", h->data);
	FILE *tf = fopen(p, "w");
	cr_assert(tf);
	for (int s = 0; s < 4; s++) {
		fputs("{\"input_ids\":[", tf);
		for (int i = 0; i < 16; i++)
			fprintf(tf, "%s%d", i ? "," : "", (s * 37 + i * 11) % 256 + 1);
		fputs("]}\n", tf);
	}
	fclose(tf);
	snprintf(p, sizeof(p), "%s/exists", h->out);
	mkdir(p, 0755);
	write_file(h->tokfile, "# tokens\n" HD_TOKEN "\nsecond-token\n");
	chmod(h->tokfile, 0600);
	h->pid = -1;
}

int hd_start(struct hd *h, const char *const *extra)
{
	const char *calibd = getenv("CALIBD"), *fake = getenv("FAKE_WORKER"), *src = getenv("SRCDIR");
	cr_assert(calibd && fake && src, "CALIBD, FAKE_WORKER and SRCDIR must be set (meson test sets them)");
	char recipes[512];
	snprintf(recipes, sizeof(recipes), "%s/recipes", src);
	unlink(h->port_file);
	unlink(h->admin_port_file);
	const char *argv[64] = {calibd, "serve", "--listen", "127.0.0.1", "--port", "0", "--port-file", h->port_file,
				"--state-dir", h->state, "--model-root", h->models, "--data-root", h->data,
				"--output-root", h->out, "--worker-command", fake, "--devices", "none",
				"--progress-timeout", "5", "--kill-grace", "1", "--shutdown-grace", "1",
				"--max-jobs", "2", "--recipes-dir", recipes, "--min-free-percent", "0",
				"--admin-port", "0", "--admin-port-file", h->admin_port_file};
	size_t n = 0;
	while (argv[n])
		n++;
	if (h->real_worker) {
		/* drop "--worker-command FAKE": the default is `calibd worker` */
		for (size_t i = 0; i + 1 < n; i++) {
			if (!strcmp(argv[i], "--worker-command")) {
				memmove(&argv[i], &argv[i + 2], (n - i - 2) * sizeof(*argv));
				n -= 2;
				argv[n] = NULL;
				break;
			}
		}
	}
	for (size_t i = 0; extra && extra[i] && n < 62; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		int fd = open(h->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(calibd, (char *const *)argv);
		_exit(127);
	}
	h->pid = pid;
	for (double t0 = now(); now() - t0 < 10;) {
		FILE *f = fopen(h->port_file, "r");
		if (f) {
			int ok = fscanf(f, "%15s", h->port) == 1;
			fclose(f);
			FILE *af = ok ? fopen(h->admin_port_file, "r") : NULL;
			h->admin_port[0] = '\0';
			if (af) {
				if (fscanf(af, "%15s", h->admin_port) != 1)
					h->admin_port[0] = '\0';
				fclose(af);
			}
			if (ok)
				return 0;
		}
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			h->pid = -1;
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
		nap(0.02);
	}
	cr_assert_fail("the daemon did not start within 10 s (log: %s)", h->log);
	return -1;
}

int hd_stop(struct hd *h, int sig)
{
	if (h->pid <= 0)
		return 0;
	kill(h->pid, sig);
	int st = 0;
	waitpid(h->pid, &st, 0);
	h->pid = -1;
	return st;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

void hd_cleanup(struct hd *h)
{
	hd_stop(h, SIGKILL);
	if (!getenv("HD_KEEP") && h->root[0])
		nftw(h->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int hd_req(struct hd *h, const char *method, const char *path, const char *headers, const char *body,
	   struct cal_client_resp *r)
{
	char hdrs[1024];
	snprintf(hdrs, sizeof(hdrs), "%s%s%s%s", h->token ? "Authorization: Bearer " : "", h->token ? h->token : "",
		 h->token ? "\r\n" : "", headers ? headers : "");
	struct cal_error err = {0};
	enum cal_status st = cal_client_request("127.0.0.1", h->port, method, path, hdrs, body,
						body ? strlen(body) : 0, 20, r, &err);
	cal_error_clear(&err);
	return st ? -1 : r->status;
}

int hd_connect(const char *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

long hd_raw(const char *port, const void *req, size_t len, char *resp, size_t cap, double timeout_s)
{
	int fd = hd_connect(port);
	if (fd < 0)
		return -1;
	/* the server may answer and close before everything was sent */
	for (size_t off = 0; off < len;) {
		ssize_t n = send(fd, (const char *)req + off, len - off, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	size_t got = 0;
	double t0 = now();
	while (got + 1 < cap && now() - t0 < timeout_s) {
		struct pollfd pf = {fd, POLLIN, 0};
		if (poll(&pf, 1, 100) <= 0)
			continue;
		ssize_t n = recv(fd, resp + got, cap - 1 - got, 0);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	resp[got] = '\0';
	close(fd);
	return (long)got;
}

int hd_raw_status(const char *resp)
{
	int st = 0;
	return sscanf(resp, "HTTP/1.%*c %d", &st) == 1 ? st : 0;
}

char *hd_spec(struct hd *h, const char *name, const char *out)
{
	char *s = NULL;
	if (asprintf(&s,
		     "{\"name\":\"%s\",\"model\":\"%s/m\",\"recipe\":\"" HD_RECIPE "\",\"calibration\":{\"datasets\":"
		     "[\"%s/d.jsonl\"],\"samples\":4,\"seq_len\":16},\"output\":\"%s/%s\",\"devices\":\"cpu\"}",
		     name, h->models, h->data, h->out, out) < 0)
		return NULL;
	return s;
}

const char *hd_submit(struct hd *h, const char *name, const char *out, const char *key)
{
	char *body = hd_spec(h, name, out);
	char hdr[300] = "";
	if (key)
		snprintf(hdr, sizeof(hdr), "Idempotency-Key: \"%s\"\r\n", key);
	struct cal_client_resp r;
	int st = hd_req(h, "POST", "/v1/jobs", hdr, body, &r);
	free(body);
	if (st != 202 && st != 200) {
		cr_log_error("submit %s: HTTP %d %s", name, st, st > 0 ? r.body : "");
		if (st > 0)
			cal_client_resp_free(&r);
		return NULL;
	}
	json_t *j = json_loads(r.body, 0, NULL);
	snprintf(h->last_id, sizeof(h->last_id), "%s", json_string_value(json_object_get(j, "id")));
	json_decref(j);
	cal_client_resp_free(&r);
	return h->last_id;
}

json_t *hd_job(struct hd *h, const char *id)
{
	char path[96];
	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	struct cal_client_resp r;
	if (hd_req(h, "GET", path, NULL, NULL, &r) != 200) {
		cal_client_resp_free(&r);
		return NULL;
	}
	json_t *j = json_loads(r.body, 0, NULL);
	cal_client_resp_free(&r);
	return j;
}

json_t *hd_wait(struct hd *h, const char *id, const char *state, double timeout_s)
{
	for (double t0 = now(); now() - t0 < timeout_s; nap(0.05)) {
		json_t *j = hd_job(h, id);
		const char *s = json_string_value(json_object_get(j, "state"));
		if (s && (state ? !strcmp(s, state) :
			  (!strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "cancelled"))))
			return j;
		json_decref(j);
	}
	json_t *j = hd_job(h, id);
	char *dump = j ? json_dumps(j, 0) : NULL;
	cr_log_error("job %s not %s after %.1f s: %s", id, state ? state : "final", timeout_s, dump ? dump : "?");
	free(dump);
	json_decref(j);
	return NULL;
}

int hd_cli(struct hd *h, const char *const *args)
{
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%s", h->port);
	const char *argv[32] = {getenv("CALIBD")};
	size_t n = 1;
	argv[n++] = args[0];
	argv[n++] = "--url";
	argv[n++] = url;
	if (h->token) {
		argv[n++] = "--token-file";
		argv[n++] = h->tokfile;
	}
	for (size_t i = 1; args[i] && n < 30; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	return hd_exec(argv, NULL);
}

int hd_exec(const char *const *argv, const char *http_proxy)
{
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);
		dup2(fd, 1);
		static const char *const proxy_vars[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
							 "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"};
		for (size_t i = 0; i < sizeof(proxy_vars) / sizeof(*proxy_vars); i++)
			unsetenv(proxy_vars[i]);
		if (http_proxy)
			setenv("http_proxy", http_proxy, 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *subst(const char *s, const char *key, const char *val)
{
	char *out = strdup(s ? s : "");
	char *p;
	while ((p = strstr(out, key))) {
		char *n = NULL;
		if (asprintf(&n, "%.*s%s%s", (int)(p - out), out, val, p + strlen(key)) < 0)
			break;
		free(out);
		out = n;
	}
	return out;
}

void hd_steps(struct hd *h, const struct step *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *path = subst(s[i].path, "{id}", h->last_id);
		char *body = s[i].body ? subst(s[i].body, "{root}", h->root) : NULL;
		struct cal_client_resp r;
		int st = hd_req(h, s[i].method, path, s[i].headers, body, &r);
		cr_expect_eq(st, s[i].status, "step '%s': %s %s → %d, expected %d: %s", s[i].name, s[i].method, path, st,
			     s[i].status, st > 0 ? r.body : "(unreachable)");
		if (st > 0) {
			json_t *j = json_loads(r.body, 0, NULL);
			const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
			if (s[i].code)
				cr_expect(code && !strcmp(code, s[i].code), "step '%s': error code %s, expected %s",
					  s[i].name, code ? code : "(none)", s[i].code);
			if (st == 202 && !strcmp(s[i].method, "POST") && json_is_string(json_object_get(j, "id")))
				snprintf(h->last_id, sizeof(h->last_id), "%s",
					 json_string_value(json_object_get(j, "id")));
			json_decref(j);
			cal_client_resp_free(&r);
		}
		free(path);
		free(body);
	}
}
