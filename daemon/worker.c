/*
 * worker.c — the worker's one call into the engine: canonical job spec →
 * struct cal_job_opts (api/jobspec.c, the same conversion the API validates
 * with) → cal_job_open() → cal_quantize_run().
 */
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/jobspec.h"
#include "common/parse.h"
#include "common/util.h"
#include "engine/eval.h"
#include "engine/job.h"
#include "engine/quantize.h"
#include "common/fsutil.h"
#include "kernels/comm.h"

/* The spec's evaluate {path, samples}: `calibd eval` of the published
 * output on that dataset (docs/eval.md), in this worker.  The numbers go
 * into the job's summary ("evaluation") and the whole report into
 * OUT/calibd_report.json ("evaluation", rewritten atomically).  The output
 * is already published: a failed evaluation is reported in the summary
 * and does not fail the job. */
static void evaluate(const json_t *spec, const struct cal_jobspec_job *jj, const char *out_dir,
		     json_t *summary)
{
	const json_t *ev = json_object_get(spec, "evaluate");
	struct cal_job_opts o = jj->opts;
	struct cal_job_dataset ds = {json_string_value(json_object_get(ev, "path")),
				     (size_t)json_integer_value(json_object_get(ev, "samples"))};
	struct cal_job *job = NULL;
	struct cal_error err = {0};
	json_t *rep = NULL, *s = NULL;
	char *path = NULL, *text = NULL;
	size_t len = 0;
	int overlap = 0;
	for (size_t i = 0; i < jj->opts.n_datasets; i++)
		overlap |= ds.path && !strcmp(ds.path, jj->opts.datasets[i].path);
	o.datasets = &ds;
	o.n_datasets = 1;
	o.tokens = NULL;
	o.samples = ds.samples;
	o.seed = 0;
	enum cal_status st = cal_job_open(&o, CAL_JOB_OPEN_FOR(CAL_JOB_CALIBRATE), &job, NULL, &err);
	if (st >= 0)
		st = cal_job_eval(job, out_dir, NULL, &rep, &err);
	cal_job_close(job);
	if (st < 0) {
		json_object_set_new(summary, "evaluation",
				    json_pack("{s:s}", "error", cal_error_msg(&err)));
		cal_error_clear(&err);
		return;
	}
	/* the same dataset file, or any evaluated sequence equal to a calibration one */
	overlap |= json_integer_value(json_object_get(json_object_get(rep, "calibration_overlap"),
						      "sequences")) > 0;
	json_object_set_new(rep, "dataset", json_string(ds.path));
	json_object_set_new(rep, "overlaps_calibration", json_boolean(overlap));
	const json_t *kl = json_object_get(rep, "kl"), *pp = json_object_get(rep, "perplexity");
	s = json_pack("{s:s, s:b, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O}",
		"dataset", ds.path, "overlaps_calibration", overlap,
		"calibration_overlap", json_object_get(rep, "calibration_overlap"),
		"tokens", json_object_get(json_object_get(rep, "data"), "tokens"),
		"kl_mean", json_object_get(kl, "mean"), "kl_median", json_object_get(kl, "median"),
		"kl_p99", json_object_get(kl, "p99"),
		"top1_agreement", json_object_get(rep, "top1_agreement"),
		"perplexity_original", json_object_get(pp, "original"),
		"perplexity_quantized", json_object_get(pp, "quantized"),
		"seconds", json_object_get(rep, "seconds"),
		"report_file", json_string_value(json_object_get(summary, "report_file")) ?
			json_object_get(summary, "report_file") : json_null());
	if (s)
		json_object_set_new(summary, "evaluation", s);
	/* the exporter's report with the evaluation added */
	path = cal_path_join(out_dir, "calibd_report.json");
	if (path && cal_read_file(path, 256u << 20, &text, &len, &err) >= 0) {
		json_t *r = json_loadb(text, len, 0, NULL);
		char *o2 = NULL;
		if (json_is_object(r)) {
			json_object_set(r, "evaluation", rep);
			o2 = json_dumps(r, JSON_INDENT(2));
		}
		if (!o2 || cal_write_atomic(out_dir, "calibd_report.json", o2, strlen(o2), &err) < 0)
			json_object_set_new(s, "report_error", json_string(o2 ? cal_error_msg(&err)
										: "out of memory"));
		free(o2);
		json_decref(r);
	}
	cal_error_clear(&err);
	free(text);
	free(path);
	json_decref(rep);
}

/*
 * A follower node of a multi-process job (spec "distributed", node_rank > 0)
 * reports no progress of its own (global rank 0 does): a thread sends a
 * heartbeat line every HEARTBEAT_S so the supervisor's progress timeout
 * does not stop it.  Its hangs are caught by the ranks' deadline instead.
 */
#define HEARTBEAT_S 5
struct heartbeat {
	cal_worker_progress_fn progress;
	void *ctx;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stop;
};

static void *heartbeat_main(void *arg)
{
	struct heartbeat *h = arg;
	json_t *line = json_pack("{s:s}", "event", "heartbeat");
	pthread_mutex_lock(&h->mu);
	while (!h->stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += HEARTBEAT_S;
		if (pthread_cond_timedwait(&h->cv, &h->mu, &ts) == ETIMEDOUT && !h->stop && line)
			h->progress(h->ctx, line);
	}
	pthread_mutex_unlock(&h->mu);
	json_decref(line);
	return NULL;
}

/* The ranks' deadline under the supervisor when the spec sets none: half
 * its progress timeout (at most comm.h's default), so a rank that stops
 * answering is reported by name before the supervisor stops the worker. */
static void default_comm_timeout(struct cal_job_opts *o)
{
	const char *pt = getenv("CALIBD_PROGRESS_TIMEOUT_S");
	double s = 0;
	if (pt && cal_parse_f64("CALIBD_PROGRESS_TIMEOUT_S", pt, 0, 1e10, &s, NULL) < 0)
		s = 0;
	if (o->ranks.timeout_ms || !(s > 0))
		return;
	double ms = s * 1000 / 2;
	o->ranks.timeout_ms = ms < 1000 ? 1000u : ms > CAL_COMM_DEFAULT_TIMEOUT_MS ? 0u : (unsigned)ms;
}

enum cal_status cal_worker_run_engine(const json_t *spec, cal_worker_progress_fn progress, void *ctx,
				      volatile const int *cancel, const struct cal_st_publish *publish,
				      json_t **ret_report, struct cal_error *err)
{
	struct cal_jobspec_job jj;
	struct cal_job *job = NULL;
	*ret_report = NULL;
	struct cal_quantize_opts o = {
		.out_dir = json_string_value(json_object_get(spec, "output")),
		.cancel = cancel,
		.publish = publish,
	};
	struct heartbeat hb = {.progress = progress, .ctx = ctx};
	pthread_t hb_thread;
	int hb_started = 0;
	enum cal_status st = cal_jobspec_job_opts(spec, &jj, err);
	if (st >= 0)
		st = cal_quantize_check_output(o.out_dir, err);
	if (st >= 0) {
		default_comm_timeout(&jj.opts);
		if (jj.opts.ranks.first > 0) {
			pthread_mutex_init(&hb.mu, NULL);
			pthread_cond_init(&hb.cv, NULL);
			hb_started = pthread_create(&hb_thread, NULL, heartbeat_main, &hb) == 0;
		}
		st = cal_job_open(&jj.opts, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &job, NULL, err);
	}
	if (st >= 0)
		st = cal_quantize_run(job, &o, progress, ctx, ret_report, err);
	if (hb_started) {
		pthread_mutex_lock(&hb.mu);
		hb.stop = 1;
		pthread_cond_signal(&hb.cv);
		pthread_mutex_unlock(&hb.mu);
		pthread_join(hb_thread, NULL);
	}
	cal_job_close(job);
	if (st >= 0 && *ret_report && json_is_object(json_object_get(spec, "evaluate")))
		evaluate(spec, &jj, o.out_dir, *ret_report);
	return st;
}
