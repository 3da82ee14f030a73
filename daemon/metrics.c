/*
 * metrics.c — job and process metrics in the Prometheus text exposition
 * format (the HTTP request counters and latencies live with the router,
 * api/http.c).  Throughput is a counter (calibd_calibration_tokens_total):
 * rate() over it gives tokens per second over any window.
 */
#include <stdio.h>
#include <time.h>

#include "common/util.h"
#include "daemon.h"

const double cal_duration_bounds[CAL_DURATION_BUCKETS] = {10, 30, 60, 300, 900, 1800, 3600, 7200,
							  14400, 43200};

/* A non-negative integer of the job's last progress line, else 0. */
static uint64_t progress_count(const struct cal_job *j, const char *key)
{
	json_t *v = j->progress ? json_object_get(j->progress, key) : NULL;
	return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

void cal_metrics_job_done(struct cal_daemon *d, const struct cal_job *j)
{
	if (j->started_at <= 0 || j->finished_at < j->started_at)
		return;
	double dur = j->finished_at - j->started_at;
	size_t b = 0;
	while (b < CAL_DURATION_BUCKETS && dur > cal_duration_bounds[b])
		b++;
	d->metrics.duration_buckets[b]++;
	d->metrics.duration_sum += dur;
	d->metrics.duration_count++;
	d->metrics.bytes_written += progress_count(j, "bytes_written");
	d->metrics.tokens += progress_count(j, "tokens_done");
}

void cal_metrics_render_jobs(struct cal_daemon *d, FILE *f)
{
	pthread_mutex_lock(&d->mu);
	fprintf(f, "# HELP calibd_jobs Jobs known to the daemon, by state.\n# TYPE calibd_jobs gauge\n");
	for (int s = 0; s < CAL_JOB_NSTATES; s++)
		fprintf(f, "calibd_jobs{state=\"%s\"} %zu\n", cal_job_state_names[s], d->n_state[s]);
	fprintf(f, "# HELP calibd_queue_depth Jobs waiting to start.\n# TYPE calibd_queue_depth gauge\n");
	fprintf(f, "calibd_queue_depth %zu\n", d->n_state[CAL_JOB_QUEUED]);
	fprintf(f, "# HELP calibd_jobs_submitted_total Jobs accepted since start.\n"
		   "# TYPE calibd_jobs_submitted_total counter\ncalibd_jobs_submitted_total %llu\n",
		(unsigned long long)d->metrics.jobs_submitted);
	fprintf(f, "# HELP calibd_jobs_finished_total Jobs that reached a final state since start.\n"
		   "# TYPE calibd_jobs_finished_total counter\n");
	for (int s = CAL_JOB_SUCCEEDED; s < CAL_JOB_NSTATES; s++)
		fprintf(f, "calibd_jobs_finished_total{state=\"%s\"} %llu\n", cal_job_state_names[s],
			(unsigned long long)d->metrics.jobs_finished[s]);
	fprintf(f, "# HELP calibd_job_duration_seconds Run time of finished jobs.\n"
		   "# TYPE calibd_job_duration_seconds histogram\n");
	uint64_t cum = 0;
	for (size_t b = 0; b < CAL_DURATION_BUCKETS; b++) {
		cum += d->metrics.duration_buckets[b];
		fprintf(f, "calibd_job_duration_seconds_bucket{le=\"%g\"} %llu\n", cal_duration_bounds[b],
			(unsigned long long)cum);
	}
	cum += d->metrics.duration_buckets[CAL_DURATION_BUCKETS];
	fprintf(f, "calibd_job_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
	fprintf(f, "calibd_job_duration_seconds_sum %g\ncalibd_job_duration_seconds_count %llu\n",
		d->metrics.duration_sum, (unsigned long long)d->metrics.duration_count);
	uint64_t running_tokens = 0, running_bytes = 0;
	for (size_t i = 0; i < d->n_jobs; i++) {
		const struct cal_job *j = d->jobs[i];
		if (j->state != CAL_JOB_RUNNING)
			continue;
		running_tokens += progress_count(j, "tokens_done");
		running_bytes += progress_count(j, "bytes_written");
	}
	fprintf(f, "# HELP calibd_calibration_tokens_total Calibration tokens processed (token x layer passes, "
		   "as progress.tokens_done counts them) by finished and running jobs.\n"
		   "# TYPE calibd_calibration_tokens_total counter\ncalibd_calibration_tokens_total %llu\n",
		(unsigned long long)(d->metrics.tokens + running_tokens));
	fprintf(f, "# HELP calibd_bytes_written_total Checkpoint bytes written by jobs.\n"
		   "# TYPE calibd_bytes_written_total counter\ncalibd_bytes_written_total %llu\n",
		(unsigned long long)(d->metrics.bytes_written + running_bytes));
	fprintf(f, "# HELP calibd_worker_crashes_total Workers that died without a result.\n"
		   "# TYPE calibd_worker_crashes_total counter\ncalibd_worker_crashes_total %llu\n",
		(unsigned long long)d->metrics.worker_crashes);
	fprintf(f, "# HELP calibd_progress_timeouts_total Workers stopped for silence.\n"
		   "# TYPE calibd_progress_timeouts_total counter\ncalibd_progress_timeouts_total %llu\n",
		(unsigned long long)d->metrics.progress_timeouts);
	fprintf(f, "# HELP calibd_state_write_errors_total Failed writes of job state.\n"
		   "# TYPE calibd_state_write_errors_total counter\ncalibd_state_write_errors_total %llu\n",
		(unsigned long long)d->metrics.state_write_errors);
	fprintf(f, "# HELP calibd_corrupt_jobs Job directories skipped at start.\n"
		   "# TYPE calibd_corrupt_jobs gauge\ncalibd_corrupt_jobs %zu\n", d->corrupt_jobs);
	fprintf(f, "# HELP calibd_state_fallbacks Jobs loaded from state.json.prev at start.\n"
		   "# TYPE calibd_state_fallbacks gauge\ncalibd_state_fallbacks %zu\n", d->state_fallbacks);
	fprintf(f, "# HELP calibd_uptime_seconds Seconds since the daemon started.\n"
		   "# TYPE calibd_uptime_seconds gauge\ncalibd_uptime_seconds %.0f\n", cal_now() - d->started_mono);
	if (d->metrics.started_wall <= 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		d->metrics.started_wall = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 - (cal_now() - d->started_mono);
	}
	fprintf(f, "# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.\n"
		   "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.3f\n",
		d->metrics.started_wall);
#ifdef CAL_HAVE_CUDA
	const char *cuda = "yes";
#else
	const char *cuda = "no";
#endif
	fprintf(f, "# HELP calibd_build_info The build: version, CUDA back end.\n"
		   "# TYPE calibd_build_info gauge\ncalibd_build_info{version=\"%s\",cuda=\"%s\"} 1\n",
		CAL_VERSION, cuda);
	pthread_mutex_unlock(&d->mu);
}
