/*
 * worker.c — the worker's one call into the engine: canonical job spec →
 * struct cal_job_opts (api/jobspec.c, the same conversion the API validates
 * with) → cal_job_open() → cal_quantize_run().
 */
#include "worker.h"

#include "api/jobspec.h"
#include "engine/job.h"
#include "engine/quantize.h"

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
	enum cal_status st = cal_jobspec_job_opts(spec, &jj, err);
	if (st >= 0)
		st = cal_quantize_check_output(o.out_dir, err);
	if (st >= 0)
		st = cal_job_open(&jj.opts, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &job, NULL, err);
	if (st >= 0)
		st = cal_quantize_run(job, &o, progress, ctx, ret_report, err);
	cal_job_close(job);
	return st;
}
