/*
 * worker.h — the seam between `calibd worker` (worker_main.c: the job
 * directory, the progress pipe, signals) and the engine's
 * cal_quantize_run() (worker.c).
 */
#ifndef CAL_WORKER_H
#define CAL_WORKER_H

#include <jansson.h>

#include "common/status.h"

struct cal_st_publish;

/* Progress sink: one JSON object per call, no newline. */
typedef void (*cal_worker_progress_fn)(void *ctx, const char *json);

/*
 * Runs the job described by `spec` (the canonical spec, api/jobspec.h)
 * through cal_quantize_run().  *cancel becomes non-zero on SIGTERM.
 * publish (or NULL) tags the output's temporary directory and follows its
 * publish (st_writer.h).  On success *ret_report (heap JSON text, caller
 * frees) is the report summary.
 */
enum cal_status cal_worker_run_engine(const json_t *spec, cal_worker_progress_fn progress, void *ctx,
				      volatile const int *cancel, const struct cal_st_publish *publish,
				      char **ret_report, struct cal_error *err);

#endif
