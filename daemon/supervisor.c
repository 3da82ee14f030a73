/*
 * supervisor.c — the supervisor loop: one thread, poll() over the signalfd,
 * the wake eventfd and every worker's progress pipe.  It is the only thread
 * that forks, signals or reaps workers, so a worker's lifecycle needs no
 * locking beyond the job table's mutex.  A worker is `calibd worker
 * JOB_DIR` (or worker_command) in its own process group, with
 * PR_SET_PDEATHSIG so that it dies with the daemon, fd 3 a pipe for JSON
 * progress lines, stdout/stderr appended to JOB_DIR/log.  The loop also
 * removes finished jobs past their retention (cal_jobs_gc, once a second).
 */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "log.h"
#include "notify.h"

extern char **environ;

#define LINE_MAX_BYTES (64 * 1024)
#define PROGRESS_MAX_DEPTH 8

/* ---- spawning --------------------------------------------------------- */

static char *devices_env(const struct cal_job *j)
{
	char *s = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&s, &len);
	if (!f)
		return NULL;
	fputs("CUDA_VISIBLE_DEVICES=", f);
	for (size_t i = 0; i < j->n_devices; i++)
		fprintf(f, "%s%d", i ? "," : "", j->devices[i]);
	fclose(f);
	return s;
}

/*
 * Forks and execs the worker for j.  Everything the child needs is built
 * before fork(); the child only calls async-signal-safe functions.
 */
static int spawn_worker(struct cal_daemon *d, struct cal_config *cfg, struct cal_job *j, pid_t *ret_pid,
			int *ret_fd, char **ret_why)
{
	int rc = -1;
	int p[2] = {-1, -1}, logfd = -1, nullfd = -1, hp = -1, hl = -1, hn = -1;
	char **argv = NULL, **envp = NULL;
	char *logpath = cal_path_join(j->dir, "log");
	char *e_dev = devices_env(j), *e_dir = NULL, *e_pt = NULL;
	size_t nenv = 0;
	*ret_why = NULL;
	if (!logpath || !e_dev || asprintf(&e_dir, "CALIBD_JOB_DIR=%s", j->dir) < 0) {
		e_dir = NULL;
		goto out;
	}
	/* the worker keeps its ranks' deadline inside it (docs/deploy.md) */
	if (asprintf(&e_pt, "CALIBD_PROGRESS_TIMEOUT_S=%g", cfg->progress_timeout_s) < 0) {
		e_pt = NULL;
		goto out;
	}
	/* a marker of an earlier run (resume_on_restart) must not speak for this one */
	int mfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (mfd >= 0) {
		if (unlinkat(mfd, CAL_JOB_PUBLISH_FILE, 0) == 0)
			fsync(mfd);
		close(mfd);
	}
	argv = calloc(cfg->n_worker_command + 2, sizeof(char *));
	while (environ[nenv])
		nenv++;
	envp = calloc(nenv + 5, sizeof(char *));
	if (!argv || !envp)
		goto out;
	for (size_t i = 0; i < cfg->n_worker_command; i++)
		argv[i] = cfg->worker_command[i];
	argv[cfg->n_worker_command] = j->dir;
	size_t k = 0;
	for (size_t i = 0; i < nenv; i++)
		if (strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21) && strncmp(environ[i], "CALIBD_", 7) &&
		    strncmp(environ[i], "NOTIFY_SOCKET=", 14) && strncmp(environ[i], "WATCHDOG_", 9))
			envp[k++] = environ[i];
	envp[k++] = e_dir;
	envp[k++] = "CALIBD_PROGRESS_FD=3";
	envp[k++] = e_pt;
	/* a CPU job sees no GPU at all */
	envp[k++] = e_dev;
	if (pipe2(p, O_CLOEXEC) < 0 ||
	    (logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640)) < 0 ||
	    (nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
		if (asprintf(ret_why, "cannot set up the worker: %s", strerror(errno)) < 0)
			*ret_why = NULL;
		goto out;
	}
	/* move the child's fds above 3 so the dup2s below cannot collide */
	hp = fcntl(p[1], F_DUPFD_CLOEXEC, 10);
	hl = fcntl(logfd, F_DUPFD_CLOEXEC, 10);
	hn = fcntl(nullfd, F_DUPFD_CLOEXEC, 10);
	if (hp < 0 || hl < 0 || hn < 0)
		goto out;
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		if (asprintf(ret_why, "fork: %s", strerror(errno)) < 0)
			*ret_why = NULL;
		goto out;
	}
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		if (dup2(hn, 0) < 0 || dup2(hl, 1) < 0 || dup2(hl, 2) < 0 || dup2(hp, 3) < 0)
			_exit(127);
		execve(argv[0], argv, envp);
		static const char msg[] = "calibd: cannot execute the worker command\n";
		ssize_t w = write(2, msg, sizeof(msg) - 1);
		(void)w;
		_exit(127);
	}
	setpgid(pid, pid); /* also in the parent: no race with the kill below */
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	*ret_pid = pid;
	*ret_fd = p[0];
	p[0] = -1;
	rc = 0;
	(void)d;
out:
	if (p[0] >= 0)
		close(p[0]);
	if (p[1] >= 0)
		close(p[1]);
	if (logfd >= 0)
		close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	if (hp >= 0)
		close(hp);
	if (hl >= 0)
		close(hl);
	if (hn >= 0)
		close(hn);
	free(argv);
	free(envp);
	free(logpath);
	free(e_dev);
	free(e_dir);
	free(e_pt);
	if (rc && !*ret_why)
		*ret_why = strdup("cannot set up the worker: out of resources");
	return rc;
}

/* ---- scheduling ------------------------------------------------------- */

static int device_busy(struct cal_daemon *d, int dev)
{
	for (size_t i = 0; i < d->n_jobs; i++) {
		const struct cal_job *j = d->jobs[i];
		if (j->state != CAL_JOB_RUNNING)
			continue;
		for (size_t k = 0; k < j->n_devices; k++)
			if (j->devices[k] == dev)
				return 1;
	}
	return 0;
}

static int device_configured(const struct cal_config *c, int dev)
{
	for (size_t i = 0; i < c->n_devices; i++)
		if (c->devices[i] == dev)
			return 1;
	return 0;
}

/* Head of the queue: highest priority, then oldest. */
static struct cal_job *queue_head(struct cal_daemon *d)
{
	struct cal_job *best = NULL;
	for (size_t i = 0; i < d->n_jobs; i++) {
		struct cal_job *j = d->jobs[i];
		if (j->state != CAL_JOB_QUEUED)
			continue;
		if (!best || j->priority > best->priority || (j->priority == best->priority && j->seq < best->seq))
			best = j;
	}
	return best;
}

/* Assigns devices to j when free.  Returns 1 assigned, 0 must wait,
 * -1 never satisfiable by this configuration. */
static int assign_devices(struct cal_daemon *d, struct cal_job *j)
{
	const struct cal_config *c = d->cfg;
	j->n_devices = 0;
	if (j->want_cpu)
		return 1;
	if (j->want_count > 0) {
		if ((size_t)j->want_count > c->n_devices)
			return -1;
		for (size_t i = 0; i < c->n_devices && j->n_devices < (size_t)j->want_count; i++)
			if (!device_busy(d, c->devices[i]))
				j->devices[j->n_devices++] = c->devices[i];
		if (j->n_devices < (size_t)j->want_count) {
			j->n_devices = 0;
			return 0;
		}
		return 1;
	}
	for (size_t i = 0; i < j->n_want_ids; i++)
		if (!device_configured(c, j->want_ids[i]))
			return -1;
	for (size_t i = 0; i < j->n_want_ids; i++)
		if (device_busy(d, j->want_ids[i]))
			return 0;
	memcpy(j->devices, j->want_ids, j->n_want_ids * sizeof(int));
	j->n_devices = j->n_want_ids;
	return 1;
}

static void finish_persist(struct cal_daemon *d, struct cal_job *j)
{
	struct cal_error err = {0};
	cal_job_persist(d, j, &err);
	cal_error_clear(&err);
}

/* Starts queued jobs while slots and devices allow (strict priority FIFO:
 * the head waits for its devices, nothing overtakes it). */
static void schedule(struct cal_daemon *d)
{
	for (;;) {
		pthread_mutex_lock(&d->mu);
		struct cal_config *cfg = cal_config_ref(d->cfg);
		struct cal_job *j = NULL;
		int a = 0;
		if (!d->stopping && d->n_state[CAL_JOB_RUNNING] < (size_t)cfg->max_concurrent_jobs)
			j = queue_head(d);
		if (j) {
			a = assign_devices(d, j);
			if (a < 0) {
				cal_job_set_error(j, "devices_unavailable",
						  "the requested GPUs are not configured on this daemon");
				cal_job_set_state(d, j, CAL_JOB_FAILED);
			} else if (a > 0) {
				cal_job_set_state(d, j, CAL_JOB_RUNNING);
				json_decref(j->progress);
				j->progress = NULL;
				cal_job_set_error(j, NULL, NULL);
				j->pid = 0;
				j->term_sent = j->kill_sent = 0;
				j->kill_reason = CAL_KILL_NONE;
				j->line_len = 0;
				j->line_overflow = 0;
			}
		}
		pthread_mutex_unlock(&d->mu);
		if (!j || a == 0) {
			cal_config_unref(cfg);
			return;
		}
		if (a < 0) {
			cal_log(CAL_LOG_WARN, "job_failed", "job", j->id, "reason", "devices_unavailable", NULL);
			finish_persist(d, j);
			cal_config_unref(cfg);
			continue;
		}
		pid_t pid = 0;
		int fd = -1;
		char *why = NULL;
		int rc = spawn_worker(d, cfg, j, &pid, &fd, &why);
		cal_config_unref(cfg);
		pthread_mutex_lock(&d->mu);
		if (rc == 0) {
			j->pid = pid;
			j->pipe_fd = fd;
			j->start_mono = j->last_progress_mono = cal_now();
			j->version++;
			pthread_cond_broadcast(&d->changed);
		} else {
			cal_job_set_error(j, "spawn_failed", why);
			cal_job_set_state(d, j, CAL_JOB_FAILED);
		}
		pthread_mutex_unlock(&d->mu);
		if (rc == 0)
			cal_logj(CAL_LOG_INFO, "job_started", json_pack("{s:s, s:i}", "job", j->id, "pid", (int)pid));
		else
			cal_log(CAL_LOG_ERROR, "job_failed", "job", j->id, "reason", why, NULL);
		free(why);
		finish_persist(d, j);
	}
}

/* ---- progress lines --------------------------------------------------- */

static int shallow(const json_t *v, int depth)
{
	if (depth > PROGRESS_MAX_DEPTH)
		return 0;
	const char *k;
	json_t *x;
	size_t i;
	if (json_is_object(v)) {
		json_object_foreach((json_t *)v, k, x)
			if (!shallow(x, depth + 1))
				return 0;
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, x)
			if (!shallow(x, depth + 1))
				return 0;
	}
	return 1;
}

/* One line from a worker (caller holds mu).  Lines:
 *   {"event":"progress", ...fields}  or any object without "event"
 *   {"event":"heartbeat"}
 *   {"event":"result", "report": {...}}
 *   {"event":"error", "code": "...", "message": "..."}
 * Anything else is ignored (the line still counts as a heartbeat). */
static void handle_line(struct cal_daemon *d, struct cal_job *j, const char *line, size_t len)
{
	j->last_progress_mono = cal_now();
	json_error_t je;
	json_t *v = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
	if (!v || !json_is_object(v) || !shallow(v, 1)) {
		json_decref(v);
		return;
	}
	const char *ev = json_string_value(json_object_get(v, "event"));
	if (!ev || !strcmp(ev, "progress")) {
		json_object_del(v, "event");
		json_decref(j->progress);
		j->progress = v;
		j->version++;
		pthread_cond_broadcast(&d->changed);
		return;
	}
	if (!strcmp(ev, "result")) {
		json_t *r = json_object_get(v, "report");
		if (json_is_object(r)) {
			json_decref(j->result);
			j->result = json_incref(r);
		}
	} else if (!strcmp(ev, "error")) {
		const char *code = json_string_value(json_object_get(v, "code"));
		const char *msg = json_string_value(json_object_get(v, "message"));
		cal_job_set_error(j, code ? code : "worker_error", msg ? msg : "the worker reported an error");
	}
	json_decref(v);
}

/* Reads what the pipe has (non-blocking).  Closes it on EOF. */
static void read_pipe(struct cal_daemon *d, struct cal_job *j)
{
	char buf[16384];
	for (;;) {
		ssize_t n = read(j->pipe_fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			pthread_mutex_lock(&d->mu);
			close(j->pipe_fd);
			j->pipe_fd = -1;
			pthread_mutex_unlock(&d->mu);
			return;
		}
		pthread_mutex_lock(&d->mu);
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] == '\n') {
				if (!j->line_overflow)
					handle_line(d, j, j->line, j->line_len);
				j->line_len = 0;
				j->line_overflow = 0;
				continue;
			}
			if (j->line_overflow)
				continue;
			if (j->line_len >= LINE_MAX_BYTES) {
				j->line_overflow = 1;
				continue;
			}
			if (j->line_len == j->line_cap) {
				size_t cap = j->line_cap ? 2 * j->line_cap : 1024;
				char *nl = realloc(j->line, cap);
				if (!nl) {
					j->line_overflow = 1;
					continue;
				}
				j->line = nl;
				j->line_cap = cap;
			}
			j->line[j->line_len++] = buf[i];
		}
		pthread_mutex_unlock(&d->mu);
	}
}

/* ---- the end of a worker --------------------------------------------- */

void cal_job_load_report(struct cal_job *j)
{
	if (j->result)
		return;
	char *p = cal_path_join(j->dir, "report.json");
	char *text = NULL;
	if (p && cal_read_file(p, 1 << 20, &text, NULL, NULL) == CAL_OK) {
		json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
		if (json_is_object(v) && shallow(v, 1))
			j->result = json_incref(v);
		json_decref(v);
	}
	free(text);
	free(p);
}

static void worker_ended(struct cal_daemon *d, struct cal_job *j, int status)
{
	if (j->pipe_fd >= 0)
		read_pipe(d, j); /* the last lines before the exit */
	kill(-j->pid, SIGKILL); /* anything the worker left in its group */
	/* a worker that died after its publish (killed in the finish phase, a
	 * full state dir after the rename): the checkpoint is out, the job
	 * succeeded; the record must say what the disk holds */
	int published = cal_job_published(j);
	/* what a worker killed mid-write left, gone before the job shows final */
	cal_job_remove_temps(j);
	char msg[160];
	pthread_mutex_lock(&d->mu);
	struct cal_config *cfg = d->cfg;
	enum cal_job_state to = CAL_JOB_FAILED;
	switch (j->kill_reason) {
	case CAL_KILL_CANCEL:
		to = CAL_JOB_CANCELLED;
		cal_job_set_error(j, "cancelled", "cancelled while running");
		break;
	case CAL_KILL_PROGRESS_TIMEOUT:
		snprintf(msg, sizeof(msg), "no progress from the worker for %.0f s", cfg->progress_timeout_s);
		cal_job_set_error(j, "progress_timeout", msg);
		d->metrics.progress_timeouts++;
		break;
	case CAL_KILL_JOB_TIMEOUT:
		cal_job_set_error(j, "job_timeout", "the job ran longer than its time limit");
		break;
	case CAL_KILL_SHUTDOWN:
		if (cfg->resume_on_restart)
			to = CAL_JOB_QUEUED;
		else
			cal_job_set_error(j, "daemon_shutdown", "the daemon stopped while the job was running");
		break;
	case CAL_KILL_NONE:
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			to = CAL_JOB_SUCCEEDED;
			cal_job_set_error(j, NULL, NULL);
			cal_job_load_report(j);
		} else if (WIFEXITED(status)) {
			if (!j->error_code) {
				snprintf(msg, sizeof(msg), "the worker exited with status %d (see the job log)",
					 WEXITSTATUS(status));
				cal_job_set_error(j, "worker_failed", msg);
			}
		} else {
			int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
			snprintf(msg, sizeof(msg), "the worker was killed by signal %d (%s)", sig, strsignal(sig));
			cal_job_set_error(j, "worker_crashed", msg);
			d->metrics.worker_crashes++;
		}
		break;
	}
	if (published && to != CAL_JOB_SUCCEEDED) {
		to = CAL_JOB_SUCCEEDED;
		cal_job_set_error(j, NULL, NULL);
		cal_job_load_report(j);
	}
	j->pid = 0;
	if (to == CAL_JOB_QUEUED) {
		d->n_state[j->state]--;
		d->n_state[CAL_JOB_QUEUED]++;
		j->state = CAL_JOB_QUEUED;
		j->n_devices = 0;
		j->started_at = 0;
		j->version++;
		j->state_version = j->version;
		pthread_cond_broadcast(&d->changed);
	} else {
		cal_job_set_state(d, j, to);
	}
	const char *code = j->error_code;
	char *code_copy = code ? strdup(code) : NULL;
	double ran = j->started_at > 0 && j->finished_at >= j->started_at ? j->finished_at - j->started_at : 0;
	pthread_mutex_unlock(&d->mu);
	cal_logj(to == CAL_JOB_SUCCEEDED ? CAL_LOG_INFO : CAL_LOG_WARN, "job_finished",
		 json_pack("{s:s, s:s, s:s?, s:f}", "job", j->id, "state", cal_job_state_names[to], "reason", code_copy,
			   "duration_s", ran));
	free(code_copy);
	finish_persist(d, j);
}

static void reap(struct cal_daemon *d)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0)
			return;
		struct cal_job *found = NULL;
		pthread_mutex_lock(&d->mu);
		for (size_t i = 0; i < d->n_jobs && !found; i++)
			if (d->jobs[i]->state == CAL_JOB_RUNNING && d->jobs[i]->pid == pid)
				found = d->jobs[i];
		pthread_mutex_unlock(&d->mu);
		if (found)
			worker_ended(d, found, status);
	}
}

/* ---- deadlines -------------------------------------------------------- */

static void send_term(struct cal_job *j, enum cal_job_kill why, double now)
{
	if (j->term_sent || j->pid <= 0)
		return;
	j->kill_reason = why;
	j->term_sent = 1;
	j->term_mono = now;
	kill(-j->pid, SIGTERM);
}

static void check_deadlines(struct cal_daemon *d, int shutdown_now)
{
	double now = cal_now();
	pthread_mutex_lock(&d->mu);
	const struct cal_config *c = d->cfg;
	for (size_t i = 0; i < d->n_jobs; i++) {
		struct cal_job *j = d->jobs[i];
		if (j->state != CAL_JOB_RUNNING || j->pid <= 0)
			continue;
		double limit = j->timeout_s > 0 ? j->timeout_s : c->job_timeout_s;
		if (j->cancel_requested)
			send_term(j, CAL_KILL_CANCEL, now);
		else if (shutdown_now)
			send_term(j, CAL_KILL_SHUTDOWN, now);
		else if (now - j->last_progress_mono > c->progress_timeout_s)
			send_term(j, CAL_KILL_PROGRESS_TIMEOUT, now);
		else if (limit > 0 && now - j->start_mono > limit)
			send_term(j, CAL_KILL_JOB_TIMEOUT, now);
		if (j->term_sent && !j->kill_sent && now - j->term_mono >= c->kill_grace_s) {
			j->kill_sent = 1;
			kill(-j->pid, SIGKILL);
		}
	}
	pthread_mutex_unlock(&d->mu);
}

/* ---- the loop --------------------------------------------------------- */

void cal_supervisor_run(struct cal_daemon *d, int sigfd, const struct cal_supervisor_hooks *hooks)
{
	uint64_t wd_usec = cal_notify_watchdog_usec();
	double wd_next = 0, stop_deadline = 0;
	struct pollfd *pfd = NULL;
	struct cal_job **pj = NULL;
	size_t cap = 0;
	for (;;) {
		pthread_mutex_lock(&d->mu);
		size_t need = 2 + d->n_state[CAL_JOB_RUNNING];
		if (need > cap) {
			struct pollfd *np = realloc(pfd, need * sizeof(*np));
			struct cal_job **nj = np ? realloc(pj, need * sizeof(*nj)) : NULL;
			if (np)
				pfd = np;
			if (nj) {
				pj = nj;
				cap = need;
			}
		}
		size_t n = 2;
		for (size_t i = 0; i < d->n_jobs && n < cap; i++) {
			struct cal_job *j = d->jobs[i];
			if (j->state == CAL_JOB_RUNNING && j->pipe_fd >= 0) {
				pfd[n] = (struct pollfd){.fd = j->pipe_fd, .events = POLLIN};
				pj[n++] = j;
			}
		}
		int stopping = d->stopping;
		size_t running = d->n_state[CAL_JOB_RUNNING];
		pthread_mutex_unlock(&d->mu);
		if (!pfd || cap < 2) {
			sleep(1);
			continue;
		}
		if (stopping && running == 0)
			break;
		pfd[0] = (struct pollfd){.fd = sigfd, .events = POLLIN};
		pfd[1] = (struct pollfd){.fd = d->wake_fd, .events = POLLIN};
		int r = poll(pfd, n, 200);
		if (r < 0 && errno != EINTR)
			cal_log(CAL_LOG_ERROR, "poll_failed", "error", strerror(errno), NULL);
		if (r > 0 && (pfd[0].revents & POLLIN)) {
			struct signalfd_siginfo si;
			while (read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				if (si.ssi_signo == SIGHUP) {
					if (hooks && hooks->reload)
						hooks->reload(d, hooks->ctx);
				} else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
					if (!stopping) {
						cal_notify("STOPPING=1\nSTATUS=stopping");
						cal_log(CAL_LOG_INFO, "stopping", "signal", strsignal((int)si.ssi_signo),
							NULL);
						pthread_mutex_lock(&d->mu);
						d->stopping = 1;
						stop_deadline = cal_now() + d->cfg->shutdown_grace_s;
						pthread_cond_broadcast(&d->changed);
						pthread_mutex_unlock(&d->mu);
						stopping = 1;
						if (hooks && hooks->stop)
							hooks->stop(d, hooks->ctx);
					}
				}
			}
		}
		if (r > 0 && (pfd[1].revents & POLLIN)) {
			uint64_t v;
			ssize_t rr = read(d->wake_fd, &v, sizeof(v));
			(void)rr;
		}
		for (size_t i = 2; r > 0 && i < n; i++)
			if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
				read_pipe(d, pj[i]);
		reap(d);
		check_deadlines(d, stopping && cal_now() >= stop_deadline);
		if (!stopping)
			schedule(d);
		if (!stopping && cal_now() >= d->next_gc_mono) {
			/* retention: at most once a second (a scan of the table) */
			cal_jobs_gc(d);
			d->next_gc_mono = cal_now() + 1;
		}
		if (wd_usec) {
			double now = cal_now();
			if (now >= wd_next) {
				cal_notify("WATCHDOG=1");
				wd_next = now + (double)wd_usec / 2e6;
			}
		}
	}
	free(pfd);
	free(pj);
}
