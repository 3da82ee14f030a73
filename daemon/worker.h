/*
 * worker.h — the seam between `calibd worker` (worker_main.c: the job
 * directory, the progress pipe, signals) and the engine's
 * cal_job_open() and cal_quantize_run() (worker.c).
 */
#ifndef CAL_WORKER_H
#define CAL_WORKER_H

#include <jansson.h>

#include "common/status.h"

struct cal_st_publish;

/* Progress sink: one JSON object per call (borrowed for the call). */
typedef void (*cal_worker_progress_fn)(void *ctx, const json_t *event);

/*
 * Runs the job described by `spec` (the canonical spec, api/jobspec.h)
 * through the engine's entry point (engine/job.h) and cal_quantize_run().
 * *cancel becomes non-zero on SIGTERM.  publish (or NULL) tags the
 * output's temporary directory and follows its publish (st_writer.h).  On
 * success *ret_report (new reference) is the report summary.
 */
enum cal_status cal_worker_run_engine(const json_t *spec, cal_worker_progress_fn progress, void *ctx,
				      volatile const int *cancel, const struct cal_st_publish *publish,
				      json_t **ret_report, struct cal_error *err);

/*
 * `calibd worker JOB_DIR` (worker_main.c): the worker process's main, which
 * cli/main.c dispatches to (cli/commands.def); returns an exit code of
 * common/exit.h.
 */
int cal_cmd_worker(int argc, char **argv);

#endif
