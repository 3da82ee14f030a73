/*
 * job_ranks.c — how many ranks a process of a job runs (engine/job.h,
 * docs/expert_parallel.md "Running it").  Apart from job.c so that the job
 * spec's validation (api/jobspec.c, and its fuzz target) can use it without
 * linking the engine.
 */
#include "engine/job.h"

unsigned cal_job_local_ranks(const struct cal_job_ranks *r, const struct cal_devices *devices)
{
	if (devices->kind == CAL_DEVICE_CUDA) {
		if (r->local && r->local != devices->n)
			return 0;
		return (unsigned)devices->n;
	}
	return r->local ? r->local : 1;
}
