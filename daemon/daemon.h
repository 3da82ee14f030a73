/*
 * daemon.h — the supervisor's shared state: configuration, the job table,
 * counters.  One struct cal_daemon per `calibd serve` process.  Everything
 * in it is guarded by `mu` unless a field says otherwise; HTTP threads hold
 * `mu` only for short in-memory work (never for disk I/O or waiting on a
 * worker), the supervisor thread likewise.
 */
#ifndef CAL_DAEMON_H
#define CAL_DAEMON_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

enum cal_job_state {
	CAL_JOB_QUEUED,
	CAL_JOB_RUNNING,
	CAL_JOB_SUCCEEDED,
	CAL_JOB_FAILED,
	CAL_JOB_CANCELLED,
	CAL_JOB_NSTATES
};

/* Why the supervisor is stopping a worker (decides the final state). */
enum cal_job_kill {
	CAL_KILL_NONE,
	CAL_KILL_CANCEL,
	CAL_KILL_PROGRESS_TIMEOUT,
	CAL_KILL_JOB_TIMEOUT,
	CAL_KILL_SHUTDOWN,
};

#define CAL_JOB_ID_MAX 32

/*
 * JOB_DIR/publish.json, written (fsynced) by the worker around the rename
 * that publishes the output: {"format":1, "state":"renaming", "tmp": TMP,
 * "output": OUT} before it, {"state":"published", "output": OUT} after it.
 * The supervisor deletes it before each start of a worker.  A job whose
 * worker died is published when the marker says "published", or says
 * "renaming" while TMP is gone and OUT exists (cal_job_published).
 */
#define CAL_JOB_PUBLISH_FILE "publish.json"
#define CAL_DURATION_BUCKETS 10

struct cal_job {
	char id[CAL_JOB_ID_MAX];
	char *dir;                 /* state_dir/jobs/<id> */
	json_t *spec;              /* canonical spec (jobspec.h); immutable */
	char *idem_key;            /* Idempotency-Key, or NULL */
	char *idem_client;         /* the client that sent it ("anonymous" without auth) */
	char fingerprint[65];      /* SHA-256 of the request body (canonical) */
	int priority;
	uint64_t seq;              /* submission order */
	enum cal_job_state state;
	double created_at, started_at, finished_at; /* epoch seconds; 0: not yet */
	json_t *progress;          /* last progress object from the worker, or NULL */
	json_t *result;            /* report summary on success, or NULL */
	char *error_code, *error_msg; /* why it failed, or NULL */
	/* device request (from the spec) and assignment */
	int want_cpu;
	int want_count;            /* 0 when ids are given */
	int want_ids[CAL_MAX_DEVICES];
	size_t n_want_ids;
	int devices[CAL_MAX_DEVICES];
	size_t n_devices;
	double timeout_s;          /* 0: none */
	uint64_t version;          /* bumped on every visible change (SSE) */
	uint64_t state_version;    /* version at the last state change */
	/* supervisor-thread runtime (pid/pipe also read under mu for display) */
	pid_t pid;
	int pipe_fd;
	char *line;                /* partial progress line */
	size_t line_len, line_cap;
	int line_overflow;         /* the current line exceeded the cap: dropped */
	double start_mono, last_progress_mono, term_mono;
	int term_sent, kill_sent;
	int cancel_requested;      /* set by DELETE; read by the supervisor */
	enum cal_job_kill kill_reason;
	pthread_mutex_t persist_mu; /* serialises writes of state.json */
};

struct cal_metrics {
	uint64_t jobs_submitted, jobs_finished[CAL_JOB_NSTATES];
	uint64_t duration_buckets[CAL_DURATION_BUCKETS + 1]; /* cumulative at render */
	double duration_sum;
	uint64_t duration_count;
	uint64_t bytes_written;    /* from finished jobs' last progress */
	uint64_t tokens;           /* tokens_done of finished jobs' last progress */
	double started_wall;       /* epoch seconds of the start (set at the first render) */
	uint64_t worker_crashes, progress_timeouts, state_write_errors;
};

struct cal_daemon {
	pthread_mutex_t mu;
	pthread_cond_t changed;    /* broadcast on every job change and on stop */
	struct cal_config *cfg;    /* current configuration (swap under mu) */
	struct cal_job **jobs;     /* sorted by id */
	size_t n_jobs, cap_jobs;
	size_t n_state[CAL_JOB_NSTATES];
	char **pending_keys;       /* "client\nkey" of submissions in flight */
	size_t n_pending;
	size_t n_reserved;         /* queue slots held by submissions between the
				    * bound check and the insert (their fsyncs) */
	uint64_t next_seq;
	int wake_fd;               /* eventfd: wakes the supervisor loop */
	int stopping;              /* SIGTERM seen: no new jobs, no new starts */
	int ready;                 /* jobs loaded, HTTP up */
	size_t corrupt_jobs;       /* job directories skipped at load */
	size_t state_fallbacks;    /* jobs loaded from state.json.prev */
	size_t plans_active;       /* recipe/plan builds on HTTP threads (bounded) */
	double next_gc_mono;       /* next retention sweep (supervisor thread) */
	double started_mono;
	struct cal_metrics metrics;
};

extern const char *const cal_job_state_names[CAL_JOB_NSTATES];
extern const double cal_duration_bounds[CAL_DURATION_BUCKETS];

/* Initialises d with configuration cfg (reference taken over). */
int cal_daemon_init(struct cal_daemon *d, struct cal_config *cfg);
/* Frees the jobs and the configuration.  No thread may use d any more. */
void cal_daemon_free(struct cal_daemon *d);

/* Current configuration with a reference (caller unrefs).  Takes mu. */
struct cal_config *cal_daemon_config(struct cal_daemon *d);

/* Wakes the supervisor loop (any thread). */
void cal_daemon_wake(struct cal_daemon *d);

/* ---- job table (daemon/jobs.c); callers hold mu unless noted ---- */

struct cal_job *cal_jobs_find(struct cal_daemon *d, const char *id);

/* The job as the API shows it (new reference).  Holds mu. */
json_t *cal_job_json(const struct cal_job *j);

/* Moves j to state s (counters, version, timestamps, change broadcast). */
void cal_job_set_state(struct cal_daemon *d, struct cal_job *j, enum cal_job_state s);

/* Sets the failure reason (copies). */
void cal_job_set_error(struct cal_job *j, const char *code, const char *msg);

/* 1 when j's worker published the output (CAL_JOB_PUBLISH_FILE).  Reads
 * the disk: call without mu. */
int cal_job_published(const struct cal_job *j);

/* Removes what a worker of j left in the output's parent: directories named
 * `.NAME.tmp-<j's id>-XXXXXX` (st_writer.h), never anything else; and the
 * rendezvous file of a node-0 job (spec "distributed").  Call without mu,
 * when no worker of j runs. */
void cal_job_remove_temps(const struct cal_job *j);

/* Loads JOB_DIR/report.json into j->result unless it has one.  Disk read:
 * call without mu on a job no other thread changes (the supervisor's). */
void cal_job_load_report(struct cal_job *j);

/* Writes j's state.json durably.  Call WITHOUT mu held (it takes mu for a
 * snapshot, then writes outside it). */
enum cal_status cal_job_persist(struct cal_daemon *d, struct cal_job *j, struct cal_error *err);

/*
 * Loads every job under state_dir/jobs (call before any thread starts).
 * Queued jobs stay queued; running ones become succeeded when their worker
 * had published the output (cal_job_published), else failed
 * "daemon_restarted" or queued again with resume_on_restart; either way
 * their temporary output is removed (cal_job_remove_temps).  A state.json that cannot be
 * read falls back to state.json.prev (the previous generation; logged,
 * counted in state_fallbacks); a directory whose spec.json, or both state
 * generations, cannot be read is logged and skipped (counted in
 * corrupt_jobs).  Leftovers of an interrupted removal (.gc-*) are removed.
 */
enum cal_status cal_jobs_load(struct cal_daemon *d, struct cal_error *err);

enum cal_submit {
	CAL_SUBMIT_CREATED,
	CAL_SUBMIT_REPLAY,          /* same key, same body: the existing job */
	CAL_SUBMIT_MISMATCH,        /* same key, other body */
	CAL_SUBMIT_IN_FLIGHT,       /* same key, first submission not finished */
	CAL_SUBMIT_QUEUE_FULL,
	CAL_SUBMIT_SHUTTING_DOWN,
	CAL_SUBMIT_OUTPUT_IN_USE,
	CAL_SUBMIT_NOSPACE,
	CAL_SUBMIT_IO,
};

/*
 * Looks up client's Idempotency-Key before validation: CAL_SUBMIT_REPLAY
 * (the job's JSON in *ret_job), CAL_SUBMIT_MISMATCH, CAL_SUBMIT_IN_FLIGHT,
 * or CAL_SUBMIT_CREATED meaning "not seen".  Keys are scoped per client
 * and honoured for idempotency_ttl_s after their job was created; an
 * expired key is "not seen".  Takes mu.
 */
enum cal_submit cal_daemon_idem_lookup(struct cal_daemon *d, const char *client, const char *key,
				       const char *fp, json_t **ret_job);

/*
 * Creates a job from a validated spec: reserves client's key and a queue
 * slot (atomically with the bound check, so concurrent submissions never
 * queue more than max_queue), writes spec.json and state.json durably
 * (outside mu), inserts the job, releases the slot and wakes the scheduler.  *ret_job is the job's JSON on
 * CREATED and REPLAY.  Takes mu itself.
 */
enum cal_submit cal_daemon_submit(struct cal_daemon *d, json_t *spec, const char *client, const char *key,
				  const char *fp, json_t **ret_job, struct cal_error *err);

/*
 * Retention: removes finished jobs whose finished_at is older than
 * job_retention_s (and whose Idempotency-Key, if any, has expired) from the
 * table and from disk (renamed to jobs/.gc-<id>, then deleted).  Call from
 * the supervisor thread, without mu.  Returns how many were removed.
 */
size_t cal_jobs_gc(struct cal_daemon *d);

enum cal_cancel { CAL_CANCEL_OK, CAL_CANCEL_NOT_FOUND, CAL_CANCEL_FINISHED };

/* Cancels a job: queued → cancelled at once (persisted); running → the
 * supervisor sends SIGTERM, then SIGKILL after kill_grace_s.  *ret_job is
 * the job's JSON after the request.  Takes mu itself. */
enum cal_cancel cal_daemon_cancel(struct cal_daemon *d, const char *id, json_t **ret_job);

/* ---- supervisor (daemon/supervisor.c) ---- */

struct cal_supervisor_hooks {
	void (*reload)(struct cal_daemon *d, void *ctx); /* SIGHUP */
	void (*stop)(struct cal_daemon *d, void *ctx);   /* SIGTERM/SIGINT: stop accepting */
	void *ctx;
};

/*
 * Runs the supervisor loop on the calling thread: starts queued jobs when
 * their devices are free, reads worker progress, enforces the progress,
 * job and cancel deadlines, reaps workers and records their outcome.
 * Returns after SIGTERM/SIGINT once every worker has exited (running jobs
 * may finish for shutdown_grace_s; then SIGTERM, then SIGKILL after
 * kill_grace_s).  sigfd is a signalfd for SIGCHLD, SIGTERM, SIGINT and
 * SIGHUP, which every thread blocks.
 */
void cal_supervisor_run(struct cal_daemon *d, int sigfd, const struct cal_supervisor_hooks *hooks);

/* ---- metrics (daemon/metrics.c) ---- */

/* Appends the job metrics in Prometheus text format to f.  Takes mu. */
void cal_metrics_render_jobs(struct cal_daemon *d, FILE *f);

/* Records a finished job's duration.  Caller holds mu. */
void cal_metrics_job_done(struct cal_daemon *d, const struct cal_job *j);

#endif
