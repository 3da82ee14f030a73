/*
 * jobs.c — the job table: creation (with Idempotency-Key handling),
 * durable state files, reload after a restart, cancellation, and the JSON
 * the API shows.  Layout of one job on disk:
 *   <state_dir>/jobs/<id>/spec.json   written once, before the 202
 *   <state_dir>/jobs/<id>/state.json  rewritten atomically on each transition;
 *                                     state.json.prev keeps the generation before
 *   <state_dir>/jobs/<id>/log, report.json, publish.json  (the worker's)
 */
#include "daemon.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "common/fsutil.h"
#include "log.h"

const char *const cal_job_state_names[CAL_JOB_NSTATES] = {"queued", "running", "succeeded", "failed",
							  "cancelled"};

#define SPEC_MAX_BYTES (2 * 1024 * 1024)
#define STATE_MAX_BYTES (2 * 1024 * 1024)

static double wall_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static json_t *time_json(double t)
{
	if (t <= 0)
		return json_null();
	char buf[40];
	struct tm tm;
	time_t s = (time_t)t;
	gmtime_r(&s, &tm);
	size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, sizeof(buf) - n, ".%03dZ", (int)((t - (double)s) * 1000));
	return json_string(buf);
}

int cal_daemon_init(struct cal_daemon *d, struct cal_config *cfg)
{
	memset(d, 0, sizeof(*d));
	pthread_mutex_init(&d->mu, NULL);
	cal_cond_init_monotonic(&d->changed);
	d->cfg = cfg;
	d->next_seq = 1;
	d->started_mono = cal_now();
	d->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	return d->wake_fd < 0 ? -1 : 0;
}

static void job_free(struct cal_job *j)
{
	if (!j)
		return;
	CAL_FREE_ALL(j->dir, j->idem_key, j->idem_client, j->error_code, j->error_msg, j->line);
	CAL_EACH(json_decref, json_t, j->spec, j->progress, j->result);
	if (j->pipe_fd >= 0)
		close(j->pipe_fd);
	pthread_mutex_destroy(&j->persist_mu);
	free(j);
}

void cal_daemon_free(struct cal_daemon *d)
{
	for (size_t i = 0; i < d->n_jobs; i++)
		job_free(d->jobs[i]);
	free(d->jobs);
	for (size_t i = 0; i < d->n_pending; i++)
		free(d->pending_keys[i]);
	free(d->pending_keys);
	cal_config_unref(d->cfg);
	if (d->wake_fd >= 0)
		close(d->wake_fd);
	pthread_cond_destroy(&d->changed);
	pthread_mutex_destroy(&d->mu);
}

struct cal_config *cal_daemon_config(struct cal_daemon *d)
{
	pthread_mutex_lock(&d->mu);
	struct cal_config *c = cal_config_ref(d->cfg);
	pthread_mutex_unlock(&d->mu);
	return c;
}

void cal_daemon_wake(struct cal_daemon *d)
{
	uint64_t one = 1;
	ssize_t r = write(d->wake_fd, &one, sizeof(one));
	(void)r;
}

/* ---- table ----------------------------------------------------------- */

static size_t lower_bound(struct cal_daemon *d, const char *id)
{
	size_t lo = 0, hi = d->n_jobs;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (strcmp(d->jobs[mid]->id, id) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct cal_job *cal_jobs_find(struct cal_daemon *d, const char *id)
{
	size_t i = lower_bound(d, id);
	return i < d->n_jobs && !strcmp(d->jobs[i]->id, id) ? d->jobs[i] : NULL;
}

static int jobs_insert(struct cal_daemon *d, struct cal_job *j)
{
	if (d->n_jobs == d->cap_jobs) {
		size_t cap = d->cap_jobs ? 2 * d->cap_jobs : 64;
		struct cal_job **v = realloc(d->jobs, cap * sizeof(*v));
		if (!v)
			return -1;
		d->jobs = v;
		d->cap_jobs = cap;
	}
	size_t i = lower_bound(d, j->id);
	memmove(d->jobs + i + 1, d->jobs + i, (d->n_jobs - i) * sizeof(*d->jobs));
	d->jobs[i] = j;
	d->n_jobs++;
	d->n_state[j->state]++;
	return 0;
}

static struct cal_job *job_alloc(void)
{
	struct cal_job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->pipe_fd = -1;
	j->pid = 0;
	pthread_mutex_init(&j->persist_mu, NULL);
	return j;
}

/* Reads the device request out of a canonical spec. */
static void job_device_request(struct cal_job *j)
{
	json_t *d = json_object_get(j->spec, "devices");
	j->want_cpu = 0;
	j->want_count = 0;
	j->n_want_ids = 0;
	if (json_is_integer(d)) {
		j->want_count = (int)json_integer_value(d);
	} else if (json_is_array(d)) {
		size_t i;
		json_t *x;
		json_array_foreach(d, i, x)
			if (j->n_want_ids < CAL_MAX_DEVICES)
				j->want_ids[j->n_want_ids++] = (int)json_integer_value(x);
	} else {
		j->want_cpu = 1;
	}
	j->priority = (int)json_integer_value(json_object_get(j->spec, "priority"));
	j->timeout_s = json_number_value(json_object_get(j->spec, "timeout_s"));
}

void cal_job_set_state(struct cal_daemon *d, struct cal_job *j, enum cal_job_state s)
{
	d->n_state[j->state]--;
	d->n_state[s]++;
	j->state = s;
	if (s == CAL_JOB_RUNNING)
		j->started_at = wall_now();
	if (s >= CAL_JOB_SUCCEEDED) {
		j->finished_at = wall_now();
		d->metrics.jobs_finished[s]++;
		cal_metrics_job_done(d, j);
	}
	j->version++;
	j->state_version = j->version;
	pthread_cond_broadcast(&d->changed);
}

void cal_job_set_error(struct cal_job *j, const char *code, const char *msg)
{
	free(j->error_code);
	free(j->error_msg);
	j->error_code = code ? strdup(code) : NULL;
	j->error_msg = msg ? strdup(msg) : NULL;
}

/* The fields the API view and state.json share, in this order: the three
 * times (as `t` writes them), devices, progress, result, and the error when
 * there is one (caller holds mu). */
static void put_run(json_t *o, const struct cal_job *j, json_t *(*t)(double))
{
	json_object_set_new(o, "created_at", t(j->created_at));
	json_object_set_new(o, "started_at", t(j->started_at));
	json_object_set_new(o, "finished_at", t(j->finished_at));
	json_t *devs = json_array();
	for (size_t i = 0; i < j->n_devices; i++)
		json_array_append_new(devs, json_integer(j->devices[i]));
	json_object_set_new(o, "devices", devs);
	json_object_set_new(o, "progress", j->progress ? json_deep_copy(j->progress) : json_null());
	json_object_set_new(o, "result", j->result ? json_deep_copy(j->result) : json_null());
	if (j->error_code)
		json_object_set_new(o, "error", json_pack("{s:s, s:s}", "code", j->error_code, "message",
							  j->error_msg ? j->error_msg : ""));
}

json_t *cal_job_json(const struct cal_job *j)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_string(j->id));
	json_t *name = json_object_get(j->spec, "name");
	json_object_set_new(o, "name", name ? json_incref(name) : json_null());
	json_object_set_new(o, "state", json_string(cal_job_state_names[j->state]));
	json_object_set_new(o, "priority", json_integer(j->priority));
	put_run(o, j, time_json);
	if (!j->error_code)
		json_object_set_new(o, "error", json_null());
	if (j->state == CAL_JOB_RUNNING && j->pid > 0)
		json_object_set_new(o, "worker_pid", json_integer(j->pid));
	json_t *spec = json_deep_copy(j->spec);
	json_object_del(spec, "recipes_dir"); /* where the tree lives is the daemon's business */
	json_object_set_new(o, "spec", spec);
	char url[64];
	snprintf(url, sizeof(url), "/v1/jobs/%s", j->id);
	json_object_set_new(o, "url", json_string(url));
	return o;
}

/* state.json content (caller holds mu). */
static json_t *state_json(const struct cal_job *j)
{
	json_t *o = json_object();
	json_object_set_new(o, "format", json_integer(1));
	json_object_set_new(o, "state", json_string(cal_job_state_names[j->state]));
	put_run(o, j, json_real);
	return o;
}

enum cal_status cal_job_persist(struct cal_daemon *d, struct cal_job *j, struct cal_error *err)
{
	pthread_mutex_lock(&j->persist_mu);
	pthread_mutex_lock(&d->mu);
	json_t *s = state_json(j);
	pthread_mutex_unlock(&d->mu);
	char *text = json_dumps(s, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(s);
	enum cal_status st;
	if (!text)
		st = cal_error_set(err, CAL_ERR_NOMEM, "state.json: out of memory");
	else
		st = cal_write_atomic_keep(j->dir, "state.json", "state.json.prev", text, strlen(text), err);
	free(text);
	pthread_mutex_unlock(&j->persist_mu);
	if (st) {
		pthread_mutex_lock(&d->mu);
		d->metrics.state_write_errors++;
		pthread_mutex_unlock(&d->mu);
		cal_log(CAL_LOG_ERROR, "state_write_failed", "job", j->id, "error", cal_error_msg(err), NULL);
	}
	return st;
}

/* ---- what a worker left on disk ------------------------------------- */

int cal_job_published(const struct cal_job *j)
{
	char *p = cal_path_join(j->dir, CAL_JOB_PUBLISH_FILE), *text = NULL;
	int yes = 0;
	if (p && cal_read_file(p, 64 * 1024, &text, NULL, NULL) == CAL_OK) {
		json_t *m = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
		const char *state = json_string_value(json_object_get(m, "state"));
		const char *out = json_string_value(json_object_get(m, "output"));
		const char *tmp = json_string_value(json_object_get(m, "tmp"));
		const char *want = json_string_value(json_object_get(j->spec, "output"));
		struct stat sb;
		if (state && out && want && !strcmp(out, want)) {
			if (!strcmp(state, "published"))
				yes = 1;
			else if (!strcmp(state, "renaming") && tmp)
				/* killed between the marker and "published": the rename
				 * happened when the temporary directory is gone and the
				 * output is there */
				yes = lstat(tmp, &sb) < 0 && errno == ENOENT && lstat(out, &sb) == 0 &&
				      S_ISDIR(sb.st_mode);
		}
		json_decref(m);
	}
	free(text);
	free(p);
	return yes;
}

void cal_job_remove_temps(const struct cal_job *j)
{
	/* node 0 of a multi-process job wrote the rendezvous file (docs/deploy.md):
	 * gone with it, so no later run meets a leader that has ended */
	const json_t *dist = json_object_get(j->spec, "distributed");
	const char *rv = json_string_value(json_object_get(dist, "rendezvous"));
	if (rv && json_integer_value(json_object_get(dist, "node_rank")) == 0 && unlink(rv) == 0)
		cal_log(CAL_LOG_INFO, "rendezvous_removed", "job", j->id, "path", rv, NULL);
	const char *out = json_string_value(json_object_get(j->spec, "output"));
	const char *slash = out ? strrchr(out, '/') : NULL;
	if (!slash || !slash[1])
		return;
	char *parent = slash == out ? strdup("/") : strndup(out, (size_t)(slash - out)), *prefix = NULL;
	if (!parent || asprintf(&prefix, ".%s.tmp-%s-", slash + 1, j->id) < 0) {
		free(parent);
		return;
	}
	size_t plen = strlen(prefix);
	DIR *dir = opendir(parent);
	struct dirent *e;
	while (dir && (e = readdir(dir))) {
		/* exactly the writer's name for this job: prefix + 6 random characters */
		if (strncmp(e->d_name, prefix, plen) || strlen(e->d_name) != plen + 6)
			continue;
		char *p = cal_path_join(parent, e->d_name);
		struct cal_error err = {0};
		if (p && cal_rmtree(p, &err) == CAL_OK)
			cal_log(CAL_LOG_INFO, "temp_removed", "job", j->id, "path", p, NULL);
		else if (p)
			cal_log(CAL_LOG_ERROR, "temp_remove_failed", "job", j->id, "path", p, "error",
				cal_error_msg(&err), NULL);
		cal_error_clear(&err);
		free(p);
	}
	if (dir)
		closedir(dir);
	free(prefix);
	free(parent);
}

/* ---- submission ------------------------------------------------------ */

/* The live job holding client's key (linear: keys are checked once per
 * POST; 10^4 jobs cost microseconds).  A key expires idempotency_ttl_s
 * after its job was created. */
static struct cal_job *find_by_key(struct cal_daemon *d, const char *client, const char *key)
{
	double oldest = wall_now() - d->cfg->idempotency_ttl_s;
	for (size_t i = 0; i < d->n_jobs; i++) {
		struct cal_job *j = d->jobs[i];
		if (j->idem_key && !strcmp(j->idem_key, key) && j->idem_client && !strcmp(j->idem_client, client) &&
		    j->created_at > oldest)
			return j;
	}
	return NULL;
}

/* "client\nkey": the in-flight reservation of one client's key. */
static char *scoped_key(const char *client, const char *key)
{
	char *s = NULL;
	if (asprintf(&s, "%s\n%s", client, key) < 0)
		return NULL;
	return s;
}

static int key_pending(struct cal_daemon *d, const char *scoped)
{
	for (size_t i = 0; i < d->n_pending; i++)
		if (!strcmp(d->pending_keys[i], scoped))
			return 1;
	return 0;
}

static void unpend(struct cal_daemon *d, const char *scoped)
{
	for (size_t i = 0; i < d->n_pending; i++) {
		if (!strcmp(d->pending_keys[i], scoped)) {
			free(d->pending_keys[i]);
			d->pending_keys[i] = d->pending_keys[--d->n_pending];
			return;
		}
	}
}

enum cal_submit cal_daemon_idem_lookup(struct cal_daemon *d, const char *client, const char *key,
				       const char *fp, json_t **ret_job)
{
	*ret_job = NULL;
	char *sk = scoped_key(client, key);
	pthread_mutex_lock(&d->mu);
	enum cal_submit r = CAL_SUBMIT_CREATED;
	struct cal_job *j = find_by_key(d, client, key);
	if (j && strcmp(j->fingerprint, fp)) {
		r = CAL_SUBMIT_MISMATCH;
	} else if (j) {
		r = CAL_SUBMIT_REPLAY;
		*ret_job = cal_job_json(j);
	} else if (sk && key_pending(d, sk)) {
		r = CAL_SUBMIT_IN_FLIGHT;
	}
	pthread_mutex_unlock(&d->mu);
	free(sk);
	return r;
}

/* The rendezvous file of a spec's distributed job, or NULL. */
static const char *rendezvous_of(const json_t *spec)
{
	return json_string_value(json_object_get(json_object_get(spec, "distributed"), "rendezvous"));
}

/* 1 when an active job writes to spec's output.  The nodes of one
 * distributed job (same rendezvous file) share their output: every node
 * writes its experts into node 0's (docs/expert_parallel.md). */
static int output_in_use(struct cal_daemon *d, const json_t *spec)
{
	const char *out = json_string_value(json_object_get(spec, "output"));
	const char *rv = rendezvous_of(spec);
	for (size_t i = 0; i < d->n_jobs; i++) {
		struct cal_job *j = d->jobs[i];
		const char *jrv = rendezvous_of(j->spec);
		if (j->state <= CAL_JOB_RUNNING &&
		    !strcmp(json_string_value(json_object_get(j->spec, "output")), out) &&
		    !(rv && jrv && !strcmp(rv, jrv)))
			return 1;
	}
	return 0;
}

static void new_id(char out[CAL_JOB_ID_MAX])
{
	uint8_t rnd[3] = {0};
	if (getrandom(rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		rnd[0] = (uint8_t)ts.tv_nsec;
		rnd[1] = (uint8_t)(ts.tv_nsec >> 8);
		rnd[2] = (uint8_t)getpid();
	}
	unsigned long long ms = (unsigned long long)(wall_now() * 1000);
	snprintf(out, CAL_JOB_ID_MAX, "j%012llx%02x%02x%02x", ms, rnd[0], rnd[1], rnd[2]);
}

enum cal_submit cal_daemon_submit(struct cal_daemon *d, json_t *spec, const char *client, const char *key,
				  const char *fp, json_t **ret_job, struct cal_error *err)
{
	*ret_job = NULL;
	enum cal_submit r = CAL_SUBMIT_CREATED;
	struct cal_job *j = job_alloc();
	char *jobs_dir = NULL, *text = NULL, *sk = NULL;
	json_t *doc = NULL, *roots = json_array();
	int reserved = 0, slot = 0;
	if (!client)
		client = "anonymous";
	if (!j || (key && !(sk = scoped_key(client, key)))) {
		job_free(j);
		cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		return CAL_SUBMIT_IO;
	}
	j->spec = json_incref(spec);
	snprintf(j->fingerprint, sizeof(j->fingerprint), "%s", fp);
	job_device_request(j);
	j->created_at = wall_now();

	pthread_mutex_lock(&d->mu);
	/* the roots the worker confines its opens to (common/confine.h) */
	const struct cal_config *c = d->cfg;
	for (size_t i = 0; roots && i < c->n_model_roots + c->n_data_roots + c->n_output_roots; i++)
		json_array_append_new(roots, json_string(i < c->n_model_roots ? c->model_roots[i] :
							 i < c->n_model_roots + c->n_data_roots ?
							 c->data_roots[i - c->n_model_roots] :
							 c->output_roots[i - c->n_model_roots - c->n_data_roots]));
	json_t *rdir = json_object_get(spec, "recipes_dir");
	if (roots && json_is_string(rdir))
		json_array_append(roots, rdir);
	if (d->stopping) {
		r = CAL_SUBMIT_SHUTTING_DOWN;
	} else if (key && find_by_key(d, client, key)) {
		struct cal_job *o = find_by_key(d, client, key);
		r = strcmp(o->fingerprint, fp) ? CAL_SUBMIT_MISMATCH : CAL_SUBMIT_REPLAY;
		if (r == CAL_SUBMIT_REPLAY)
			*ret_job = cal_job_json(o);
	} else if (key && key_pending(d, sk)) {
		r = CAL_SUBMIT_IN_FLIGHT;
	} else if (d->n_state[CAL_JOB_QUEUED] + d->n_reserved >= (size_t)d->cfg->max_queue) {
		r = CAL_SUBMIT_QUEUE_FULL;
	} else if (output_in_use(d, spec)) {
		r = CAL_SUBMIT_OUTPUT_IN_USE;
	} else {
		do {
			new_id(j->id);
		} while (cal_jobs_find(d, j->id));
		j->seq = d->next_seq++;
		d->n_reserved++; /* the slot is ours until the insert or the failure */
		slot = 1;
		jobs_dir = cal_path_join(d->cfg->state_dir, "jobs");
		if (key) {
			char **pk = realloc(d->pending_keys, (d->n_pending + 1) * sizeof(char *));
			if (pk) {
				d->pending_keys = pk;
				pk[d->n_pending] = strdup(sk);
				if (pk[d->n_pending]) {
					d->n_pending++;
					reserved = 1;
				}
			}
			if (!reserved)
				r = CAL_SUBMIT_IO;
		}
	}
	pthread_mutex_unlock(&d->mu);
	if (r != CAL_SUBMIT_CREATED)
		goto done;
	if (!jobs_dir || (key && (!(j->idem_key = strdup(key)) || !(j->idem_client = strdup(client)))) ||
	    !(j->dir = cal_path_join(jobs_dir, j->id))) {
		cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		r = CAL_SUBMIT_IO;
		goto done;
	}
	/* durable before the 202: dir, spec.json, state.json, each fsync'd */
	doc = roots ? json_pack("{s:i, s:s, s:O, s:s?, s:s?, s:s, s:I, s:f, s:O}", "format", 1, "id", j->id,
				"spec", spec, "idempotency_key", key, "idempotency_client", key ? client : NULL,
				"fingerprint", fp, "seq", (json_int_t)j->seq, "created_at", j->created_at, "roots",
				roots) : NULL;
	text = doc ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	enum cal_status st = CAL_OK;
	if (!text)
		st = cal_error_set(err, CAL_ERR_NOMEM, "spec.json: cannot encode");
	if (!st)
		st = cal_mkdir_p(jobs_dir, err);
	if (!st)
		st = cal_mkdir_durable(j->dir, 1, err);
	if (!st)
		st = cal_write_atomic(j->dir, "spec.json", text, strlen(text), err);
	if (!st)
		st = cal_job_persist(d, j, err);
	if (st) {
		r = st == CAL_ERR_NOSPACE ? CAL_SUBMIT_NOSPACE : CAL_SUBMIT_IO;
		/* never acked: leave nothing behind that a restart would load */
		char *p;
		if ((p = cal_path_join(j->dir, "state.json")))
			unlink(p), free(p);
		if ((p = cal_path_join(j->dir, "spec.json")))
			unlink(p), free(p);
		rmdir(j->dir);
		pthread_mutex_lock(&d->mu);
		d->metrics.state_write_errors++;
		pthread_mutex_unlock(&d->mu);
		goto done;
	}
	pthread_mutex_lock(&d->mu);
	d->n_reserved--; /* the slot becomes the queued job (same critical section) */
	slot = 0;
	if (jobs_insert(d, j) < 0) {
		r = CAL_SUBMIT_IO;
		cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	} else {
		d->metrics.jobs_submitted++;
		*ret_job = cal_job_json(j);
		j = NULL;
	}
	pthread_mutex_unlock(&d->mu);
	cal_daemon_wake(d);
done:
	if (reserved || slot) {
		pthread_mutex_lock(&d->mu);
		if (reserved)
			unpend(d, sk);
		if (slot)
			d->n_reserved--;
		pthread_mutex_unlock(&d->mu);
	}
	free(sk);
	json_decref(roots);
	json_decref(doc);
	free(text);
	free(jobs_dir);
	job_free(j);
	return r;
}

enum cal_cancel cal_daemon_cancel(struct cal_daemon *d, const char *id, json_t **ret_job)
{
	*ret_job = NULL;
	int persist = 0;
	pthread_mutex_lock(&d->mu);
	struct cal_job *j = cal_jobs_find(d, id);
	if (!j) {
		pthread_mutex_unlock(&d->mu);
		return CAL_CANCEL_NOT_FOUND;
	}
	if (j->state >= CAL_JOB_SUCCEEDED) {
		*ret_job = cal_job_json(j);
		pthread_mutex_unlock(&d->mu);
		return CAL_CANCEL_FINISHED;
	}
	if (j->state == CAL_JOB_QUEUED) {
		cal_job_set_error(j, "cancelled", "cancelled while queued");
		cal_job_set_state(d, j, CAL_JOB_CANCELLED);
		persist = 1;
	} else {
		j->cancel_requested = 1;
	}
	/* the job as this request left it: a running one is still "running"
	 * (202) even when its worker stops before the reply is sent */
	*ret_job = cal_job_json(j);
	pthread_mutex_unlock(&d->mu);
	if (persist)
		cal_job_persist(d, j, NULL); /* finished just now: retention (>= 1 s) cannot free it yet */
	else
		cal_daemon_wake(d);
	cal_log(CAL_LOG_INFO, "job_cancel", "job", id, NULL);
	return CAL_CANCEL_OK;
}

/* ---- reload after a restart ----------------------------------------- */

static int state_from_name(const char *s)
{
	for (int i = 0; i < CAL_JOB_NSTATES; i++)
		if (s && !strcmp(s, cal_job_state_names[i]))
			return i;
	return -1;
}

/* The file dir/name of at most max bytes, parsed as JSON, into *ret: NULL
 * when it is not JSON, *je then says why (the caller names the file). */
static enum cal_status read_doc(const char *dir, const char *name, size_t max, json_t **ret,
				json_error_t *je, struct cal_error *err)
{
	char *text = NULL;
	char *p = cal_path_join(dir, name);
	*ret = NULL;
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	enum cal_status st = cal_read_file(p, max, &text, NULL, err);
	free(p);
	if (st == CAL_OK)
		*ret = json_loads(text, JSON_REJECT_DUPLICATES, je);
	free(text);
	return st;
}

/* Reads dir/name (a state.json generation) into j.  CAL_ERR_NOTFOUND when
 * absent, CAL_ERR_FORMAT when it is not a state document. */
static enum cal_status read_state(struct cal_job *j, const char *name, struct cal_error *err)
{
	json_error_t je;
	json_t *doc;
	enum cal_status st = read_doc(j->dir, name, STATE_MAX_BYTES, &doc, &je, err);
	if (st)
		return st;
	int s = state_from_name(json_string_value(json_object_get(doc, "state")));
	json_t *devs = json_object_get(doc, "devices");
	json_t *e = json_object_get(doc, "error");
	if (!json_is_object(doc) || s < 0 || (devs && !json_is_array(devs)) ||
	    (e && !json_is_null(e) && !json_is_object(e))) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: malformed%s%s", name, doc ? "" : ": ",
				   doc ? "" : je.text);
		json_decref(doc);
		return st;
	}
	j->state = (enum cal_job_state)s;
	j->started_at = json_number_value(json_object_get(doc, "started_at"));
	j->finished_at = json_number_value(json_object_get(doc, "finished_at"));
	json_decref(j->progress);
	json_decref(j->result);
	j->progress = j->result = NULL;
	json_t *pr = json_object_get(doc, "progress");
	if (json_is_object(pr))
		j->progress = json_incref(pr);
	json_t *rs = json_object_get(doc, "result");
	if (json_is_object(rs))
		j->result = json_incref(rs);
	cal_job_set_error(j, NULL, NULL);
	if (json_is_object(e))
		cal_job_set_error(j, json_string_value(json_object_get(e, "code")),
				  json_string_value(json_object_get(e, "message")));
	j->n_devices = 0;
	size_t i;
	json_t *x;
	json_array_foreach(devs, i, x)
		if (j->n_devices < CAL_MAX_DEVICES)
			j->devices[j->n_devices++] = (int)json_integer_value(x);
	json_decref(doc);
	return CAL_OK;
}

static enum cal_status load_one(struct cal_daemon *d, const char *jobs_dir, const char *name,
				int *ret_repersist, int *ret_fallback, struct cal_job **ret, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	json_t *spec_doc = NULL;
	json_error_t je;
	struct cal_job *j = job_alloc();
	*ret = NULL;
	*ret_repersist = 0;
	*ret_fallback = 0;
	if (!j)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	if (strlen(name) >= CAL_JOB_ID_MAX) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "job directory name too long");
		goto fail;
	}
	snprintf(j->id, sizeof(j->id), "%s", name);
	if (!(j->dir = cal_path_join(jobs_dir, name))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	CAL_TRY(read_doc(j->dir, "spec.json", SPEC_MAX_BYTES, &spec_doc, &je, err));
	if (!spec_doc || !json_is_object(json_object_get(spec_doc, "spec")) ||
	    !json_is_string(json_object_get(spec_doc, "id")) ||
	    strcmp(json_string_value(json_object_get(spec_doc, "id")), name) ||
	    !json_is_string(json_object_get(spec_doc, "fingerprint")) ||
	    !json_is_string(json_object_get(json_object_get(spec_doc, "spec"), "output"))) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "spec.json: malformed%s%s", spec_doc ? "" : ": ",
				   spec_doc ? "" : je.text);
		goto fail;
	}
	j->spec = json_incref(json_object_get(spec_doc, "spec"));
	snprintf(j->fingerprint, sizeof(j->fingerprint), "%s",
		 json_string_value(json_object_get(spec_doc, "fingerprint")));
	const char *key = json_string_value(json_object_get(spec_doc, "idempotency_key"));
	const char *client = json_string_value(json_object_get(spec_doc, "idempotency_client"));
	if (key && (!(j->idem_key = strdup(key)) || !(j->idem_client = strdup(client ? client : "anonymous")))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	j->seq = (uint64_t)json_integer_value(json_object_get(spec_doc, "seq"));
	j->created_at = json_number_value(json_object_get(spec_doc, "created_at"));
	job_device_request(j);

	st = read_state(j, "state.json", err);
	if (st == CAL_ERR_NOMEM)
		goto fail;
	if (st) {
		/* a missing or damaged state.json: the previous generation */
		struct cal_error pe = {0};
		enum cal_status ps = read_state(j, "state.json.prev", &pe);
		if (ps == CAL_OK) {
			cal_log(CAL_LOG_WARN, "state_fallback", "job", j->id, "error", cal_error_msg(err), "using",
				"state.json.prev", NULL);
			cal_error_clear(err);
			st = CAL_OK;
			*ret_fallback = 1;
			*ret_repersist = 1;
		} else if (st == CAL_ERR_NOTFOUND && ps == CAL_ERR_NOTFOUND) {
			/* crashed between spec.json and state.json: never acknowledged,
			 * but a retry with the same key should find it: keep it queued */
			cal_error_clear(err);
			st = CAL_OK;
			j->state = CAL_JOB_QUEUED;
			*ret_repersist = 1;
		} else {
			char *m1 = strdup(cal_error_msg(err)), *m2 = strdup(cal_error_msg(&pe));
			cal_error_clear(err);
			st = cal_error_set(err, CAL_ERR_FORMAT, "no sound state generation: %s; %s",
					   m1 ? m1 : "state.json", m2 ? m2 : "state.json.prev");
			free(m1);
			free(m2);
		}
		cal_error_clear(&pe);
		if (st)
			goto fail;
	}
	/* a worker may have run even for a job recorded queued: the daemon
	 * persists "running" only after the spawn */
	int ran = j->state == CAL_JOB_RUNNING || j->state == CAL_JOB_QUEUED;
	if (ran && cal_job_published(j)) {
		/* killed after the publish: the checkpoint is out */
		*ret_repersist = 1;
		j->n_devices = 0;
		j->state = CAL_JOB_SUCCEEDED;
		if (!j->started_at)
			j->started_at = j->created_at;
		j->finished_at = wall_now();
		cal_job_set_error(j, NULL, NULL);
		cal_job_load_report(j);
	} else if (j->state == CAL_JOB_RUNNING) {
		/* its worker died with the previous daemon (PR_SET_PDEATHSIG) */
		*ret_repersist = 1;
		j->n_devices = 0;
		if (d->cfg->resume_on_restart) {
			j->state = CAL_JOB_QUEUED;
			j->started_at = 0;
			json_decref(j->progress);
			j->progress = NULL;
		} else {
			j->state = CAL_JOB_FAILED;
			j->finished_at = wall_now();
			cal_job_set_error(j, "daemon_restarted",
					  "the daemon restarted while the job was running");
		}
	}
	if (ran)
		cal_job_remove_temps(j);
	*ret = j;
	j = NULL;
fail:
	json_decref(spec_doc);
	job_free(j);
	return st;
}

enum cal_status cal_jobs_load(struct cal_daemon *d, struct cal_error *err)
{
	char *jobs_dir = cal_path_join(d->cfg->state_dir, "jobs");
	if (!jobs_dir)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	enum cal_status st = cal_mkdir_p(jobs_dir, err);
	if (st) {
		free(jobs_dir);
		return st;
	}
	DIR *dir = opendir(jobs_dir);
	if (!dir) {
		st = cal_error_set(err, CAL_ERR_IO, "%s: %s", jobs_dir, strerror(errno));
		free(jobs_dir);
		return st;
	}
	struct dirent *e;
	struct cal_job **redo = NULL;
	size_t n_redo = 0;
	while ((e = readdir(dir))) {
		if (!strncmp(e->d_name, ".gc-", 4)) {
			/* a removal the previous daemon did not finish */
			char *p = cal_path_join(jobs_dir, e->d_name);
			if (p)
				cal_rmtree(p, NULL);
			free(p);
			continue;
		}
		if (e->d_name[0] == '.')
			continue;
		struct cal_error le = {0};
		struct cal_job *j = NULL;
		int repersist = 0, fallback = 0;
		enum cal_status ls = load_one(d, jobs_dir, e->d_name, &repersist, &fallback, &j, &le);
		if (ls) {
			d->corrupt_jobs++;
			cal_log(CAL_LOG_ERROR, "job_load_failed", "job_dir", e->d_name, "error", cal_error_msg(&le),
				NULL);
			cal_error_clear(&le);
			continue;
		}
		if (jobs_insert(d, j) < 0) {
			job_free(j);
			st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
			break;
		}
		if (j->seq >= d->next_seq)
			d->next_seq = j->seq + 1;
		d->state_fallbacks += (size_t)fallback;
		if (repersist) {
			struct cal_job **nr = realloc(redo, (n_redo + 1) * sizeof(*nr));
			if (nr) {
				redo = nr;
				redo[n_redo++] = j;
			}
		}
	}
	closedir(dir);
	free(jobs_dir);
	for (size_t i = 0; i < n_redo; i++) {
		cal_log(CAL_LOG_WARN, "job_recovered", "job", redo[i]->id, "state",
			cal_job_state_names[redo[i]->state], NULL);
		cal_job_persist(d, redo[i], NULL);
	}
	free(redo);
	cal_logj(CAL_LOG_INFO, "jobs_loaded",
		 json_pack("{s:I, s:I}", "jobs", (json_int_t)d->n_jobs, "skipped", (json_int_t)d->corrupt_jobs));
	return st;
}

/* ---- retention -------------------------------------------------------- */

/* Removes j (finished, already out of the table) from disk: renamed to
 * jobs/.gc-<id> first, so a crash halfway leaves no half-job to load. */
static void job_remove_dir(const struct cal_job *j, const char *jobs_dir)
{
	char *gc = NULL;
	struct cal_error err = {0};
	if (asprintf(&gc, "%s/.gc-%s", jobs_dir, j->id) < 0)
		return;
	if (rename(j->dir, gc) < 0) {
		cal_log(CAL_LOG_ERROR, "job_remove_failed", "job", j->id, "error", strerror(errno), NULL);
	} else {
		cal_fsync_dir(jobs_dir, NULL);
		if (cal_rmtree(gc, &err))
			cal_log(CAL_LOG_ERROR, "job_remove_failed", "job", j->id, "error", cal_error_msg(&err), NULL);
	}
	cal_error_clear(&err);
	free(gc);
}

size_t cal_jobs_gc(struct cal_daemon *d)
{
	struct cal_job **dead = NULL;
	size_t n_dead = 0;
	char *jobs_dir = NULL;
	pthread_mutex_lock(&d->mu);
	double keep = d->cfg->job_retention_s, ttl = d->cfg->idempotency_ttl_s, now = wall_now();
	if (keep > 0)
		jobs_dir = cal_path_join(d->cfg->state_dir, "jobs");
	for (size_t i = 0; jobs_dir && i < d->n_jobs;) {
		struct cal_job *j = d->jobs[i];
		int expired = j->state >= CAL_JOB_SUCCEEDED && j->pid == 0 && j->finished_at > 0 &&
			      now - j->finished_at > (keep > 1 ? keep : 1) &&
			      (!j->idem_key || now - j->created_at > ttl);
		struct cal_job **nd = expired ? realloc(dead, (n_dead + 1) * sizeof(*nd)) : NULL;
		if (!nd) {
			i++;
			continue;
		}
		dead = nd;
		dead[n_dead++] = j;
		memmove(d->jobs + i, d->jobs + i + 1, (d->n_jobs - i - 1) * sizeof(*d->jobs));
		d->n_jobs--;
		d->n_state[j->state]--;
	}
	if (n_dead)
		pthread_cond_broadcast(&d->changed); /* event streams of removed jobs end */
	pthread_mutex_unlock(&d->mu);
	for (size_t i = 0; i < n_dead; i++) {
		/* no other thread can reach the job now: HTTP handlers look jobs up
		 * by id under mu and copy what they need before releasing it */
		job_remove_dir(dead[i], jobs_dir);
		cal_log(CAL_LOG_INFO, "job_removed", "job", dead[i]->id, "reason", "retention", NULL);
		job_free(dead[i]);
	}
	free(dead);
	free(jobs_dir);
	return n_dead;
}
