/*
 * serve.c — `calibd serve`: the supervisor process.  It never loads or
 * initialises CUDA; jobs run in worker processes (supervisor.c).  Threads:
 * this one runs the supervisor loop (signals, workers, scheduling); the
 * HTTP server runs in libmicrohttpd's threads.  SIGHUP reloads the
 * configuration (the old one stays when the new one is invalid); SIGTERM
 * stops accepting connections, lets running jobs finish for
 * shutdown_grace_s, then stops them and exits.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "api/http.h"
#include "cli.h"
#include "common/util.h"
#include "daemon/daemon.h"
#include "common/fsutil.h"
#include "daemon/log.h"
#include "daemon/notify.h"

struct serve_ctx {
	const char *config_path;
	int argc;
	char **argv;
	struct cal_http *http, *admin;
};

static void serve_usage(FILE *f)
{
	fprintf(f, "usage: calibd serve [--config FILE] [--check] [OPTIONS]\n\n"
		   "Runs the daemon.  Every configuration key (docs/api.md) is also a flag:\n"
		   "  --listen ADDR  --port N  --port-file FILE  --state-dir DIR\n"
		   "  --admin-listen ADDR  --admin-port N (-1: none)  --admin-port-file FILE\n"
		   "  --request-timeout S\n"
		   "  --model-root DIR  --data-root DIR  --output-root DIR   (repeatable)\n"
		   "  --recipes-dir DIR  --devices auto|none|0,1,..  --max-jobs N  --max-queue N\n"
		   "  --progress-timeout S  --kill-grace S  --shutdown-grace S  --job-timeout S\n"
		   "  --resume-on-restart  --worker-command PATH (repeat for arguments)\n"
		   "  --token-file FILE  --auth-read  --log-format text|json  --dataset NAME=PATH (repeatable)\n"
		   "  --max-connections N  --per-ip-connections N  --connection-timeout S  --retry-after S\n"
		   "--check validates the configuration and exits (0 valid, 3 invalid).\n");
}

static void reload(struct cal_daemon *d, void *ctx)
{
	struct serve_ctx *s = ctx;
	struct cal_error err = {0};
	struct cal_config *nc = NULL;
	if (cal_config_load(s->config_path, s->argc, s->argv, 0, &nc, &err)) {
		cal_log(CAL_LOG_ERROR, "reload_rejected", "error", cal_error_msg(&err), NULL);
		cal_error_clear(&err);
		return;
	}
	pthread_mutex_lock(&d->mu);
	struct cal_config *old = d->cfg;
	if (strcmp(old->state_dir, nc->state_dir)) {
		pthread_mutex_unlock(&d->mu);
		cal_log(CAL_LOG_ERROR, "reload_rejected", "error", "state_dir cannot change without a restart", NULL);
		cal_config_unref(nc);
		return;
	}
	int relisten = strcmp(old->listen, nc->listen) || old->port != nc->port ||
		       strcmp(old->admin_listen, nc->admin_listen) || old->admin_port != nc->admin_port;
	d->cfg = nc;
	pthread_cond_broadcast(&d->changed);
	pthread_mutex_unlock(&d->mu);
	cal_config_unref(old);
	cal_log_set_json(nc->log_json);
	if (relisten)
		cal_log(CAL_LOG_WARN, "reload_partial", "message",
			"listen, port, admin_listen and admin_port apply at the next restart", NULL);
	cal_log(CAL_LOG_INFO, "reloaded", "config", nc->config_path, NULL);
	cal_daemon_wake(d);
}

static void stop_accepting(struct cal_daemon *d, void *ctx)
{
	struct serve_ctx *s = ctx;
	(void)d;
	cal_http_quiesce(s->http);
}

static int lock_state_dir(const char *dir, struct cal_error *err)
{
	char *p = cal_path_join(dir, "lock");
	if (!p) {
		cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		return -1;
	}
	int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	free(p);
	if (fd < 0) {
		cal_error_set(err, CAL_ERR_IO, "state_dir %s: %s", dir, strerror(errno));
		return -1;
	}
	/* a predecessor killed a moment ago may leave a worker that has not
	 * reached execve() yet holding the lock (fork shares it): wait 2 s */
	int locked = -1;
	for (int i = 0; i < 40 && (locked = flock(fd, LOCK_EX | LOCK_NB)) < 0 && errno == EWOULDBLOCK; i++)
		nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
	if (locked < 0) {
		cal_error_set(err, CAL_ERR_EXISTS, "state_dir %s is in use by another calibd", dir);
		close(fd);
		return -1;
	}
	return fd; /* held for the life of the process */
}

/* Writes "PORT\n" atomically to path (NULL: nothing). */
static void write_port_file(const char *path, const char *port)
{
	if (!path)
		return;
	struct cal_error err = {0};
	char *dup1 = strdup(path), *dup2 = strdup(path);
	char line[24];
	snprintf(line, sizeof(line), "%s\n", port);
	if (!dup1 || !dup2 || cal_write_atomic(dirname(dup1), basename(dup2), line, strlen(line), &err))
		cal_log(CAL_LOG_ERROR, "port_file_failed", "file", path, "error", cal_error_msg(&err), NULL);
	cal_error_clear(&err);
	free(dup1);
	free(dup2);
}

int cal_cmd_serve(int argc, char **argv)
{
	const char *config = NULL;
	int check = 0;
	char **flags = calloc((size_t)argc + 1, sizeof(char *));
	int nflags = 0;
	if (!flags)
		return CAL_EXIT_FAILURE;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			serve_usage(stdout);
			free(flags);
			return CAL_EXIT_OK;
		} else if (!strcmp(argv[i], "--check")) {
			check = 1;
		} else if (!strcmp(argv[i], "--config") && i + 1 < argc) {
			config = argv[++i];
		} else {
			flags[nflags++] = argv[i];
		}
	}
	/* jansson's hash seed before any thread exists */
	json_object_seed(0);
	struct cal_error err = {0};
	struct cal_config *cfg = NULL;
	enum cal_status st = cal_config_check_flags(nflags, flags, &err);
	if (st) {
		cal_cli_fail("serve", &err, 0);
		serve_usage(stderr);
		free(flags);
		return st == CAL_ERR_NOMEM ? CAL_EXIT_FAILURE : CAL_EXIT_USAGE;
	}
	st = cal_config_load(config, nflags, flags, check, &cfg, &err);
	if (st) {
		free(flags);
		return cal_cli_fail("serve", &err,
				    st == CAL_ERR_NOMEM ? CAL_EXIT_FAILURE : CAL_EXIT_BAD_INPUT);
	}
	if (check) {
		printf("configuration OK\n");
		cal_config_unref(cfg);
		free(flags);
		return CAL_EXIT_OK;
	}
	cal_log_set_json(cfg->log_json);

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by every thread */
	signal(SIGPIPE, SIG_IGN);
	int sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);

	int rc = CAL_EXIT_FAILURE;
	struct cal_daemon d;
	int inited = 0;
	struct serve_ctx ctx = {config, nflags, flags, NULL, NULL};
	int lockfd = lock_state_dir(cfg->state_dir, &err);
	if (sigfd < 0 || lockfd < 0) {
		fprintf(stderr, "calibd serve: %s\n", lockfd < 0 ? cal_error_msg(&err) : "signalfd failed");
		cal_config_unref(cfg);
		goto out;
	}
	if (cal_daemon_init(&d, cfg) < 0) {
		fprintf(stderr, "calibd serve: cannot initialise\n");
		cal_config_unref(cfg);
		goto out;
	}
	inited = 1;
	if ((st = cal_jobs_load(&d, &err)) || (st = cal_http_start(&d, cfg, 0, &ctx.http, &err)) ||
	    (cfg->admin_port >= 0 && (st = cal_http_start(&d, cfg, 1, &ctx.admin, &err)))) {
		cal_log(CAL_LOG_ERROR, "start_failed", "error", cal_error_msg(&err), NULL);
		goto out;
	}
	char port[16], admin_port[16];
	snprintf(port, sizeof(port), "%u", cal_http_port(ctx.http));
	snprintf(admin_port, sizeof(admin_port), "%u", ctx.admin ? cal_http_port(ctx.admin) : 0);
	pthread_mutex_lock(&d.mu);
	d.ready = 1;
	pthread_mutex_unlock(&d.mu);
	if (ctx.admin) /* first: the API's port file is the usual sign of readiness */
		write_port_file(cfg->admin_port_file, admin_port);
	write_port_file(cfg->port_file, port);
	cal_logj(CAL_LOG_INFO, "listening",
		 json_pack("{s:s, s:i, s:s, s:i, s:s, s:s}", "address", cfg->listen, "port", (int)cal_http_port(ctx.http),
			   "admin_address", ctx.admin ? cfg->admin_listen : "none", "admin_port",
			   ctx.admin ? (int)cal_http_port(ctx.admin) : -1, "state_dir", cfg->state_dir, "auth",
			   cfg->n_tokens ? "bearer" : "none"));
	cal_notify("READY=1\nSTATUS=serving");
	struct cal_supervisor_hooks hooks = {reload, stop_accepting, &ctx};
	cal_supervisor_run(&d, sigfd, &hooks);
	rc = CAL_EXIT_OK;
	cal_log(CAL_LOG_INFO, "stopped", NULL);
out:
	cal_http_stop(ctx.http);
	cal_http_stop(ctx.admin);
	if (inited)
		cal_daemon_free(&d);
	cal_error_clear(&err);
	if (sigfd >= 0)
		close(sigfd);
	if (lockfd >= 0)
		close(lockfd);
	free(flags);
	return rc;
}
