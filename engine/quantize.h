/*
 * quantize.h — one quantization job, end to end (calibration + export).
 *
 * This is the contract between the job runners (`calibd quantize` in the
 * foreground, `calibd worker JOB_DIR` under the daemon) and the engine
 * (engine/quantize.c, library cal_quantize: meson `cal_quantize_dep`, also in
 * `cal_engine_dep`).  The runner opens the job (engine/job.h) and this
 * borrows everything from it.  docs/quantize.md describes the job, its
 * progress lines and its report.
 *
 * The job reads the source once: the exporter is opened first (an existing
 * output or too little disk space fails before any compute), then the
 * calibration engine runs layer by layer and, as soon as a layer's
 * statistics are final, that layer is quantized and written; the directory
 * is published after the last layer.
 */
#ifndef CAL_QUANTIZE_H
#define CAL_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/status.h"
#include "engine/job.h"

struct cal_st_publish;

struct cal_quantize_opts {
	const char *out_dir;        /* final output directory; must not exist */
	volatile const int *cancel; /* set non-zero to request a graceful stop */
	/* temporary name tag and publish hooks of the output (st_writer.h), or NULL */
	const struct cal_st_publish *publish;
};

/* Progress as it happens; `event` is one JSON object (borrowed for the
 * call), e.g. {"phase":"calibrate","layer":3,"layers":48,"tokens_done":..,
 * "tokens_total":..,"tokens_per_s":..,"bytes_written":..,"eta_s":..}. */
typedef void (*cal_progress_fn)(void *ctx, const json_t *event);

/*
 * Runs the quantization of `job` (engine/job.h: opened with its checkpoint
 * and back end; the job's calibration data, options and recipe).  On
 * success the output directory is published and *ret_report (new
 * reference, may be NULL) holds the report summary.  On failure nothing
 * exists under out_dir.
 *
 * progress (may be NULL) is called on the calling thread at each phase and
 * after every layer; it may set *opts->cancel.  A cancel request is seen
 * between layers (the current layer finishes first) and before publishing.
 * Errors: CAL_ERR_EXISTS (out_dir exists), CAL_ERR_INVALID (bad options,
 * named), CAL_ERR_NOTFOUND / CAL_ERR_FORMAT / CAL_ERR_UNSUPPORTED (model,
 * recipe, data; what cal_job_check refuses), CAL_ERR_NOSPACE,
 * CAL_ERR_DEVICE, CAL_ERR_NUMERIC, CAL_ERR_INTERRUPTED (cancelled: nothing
 * published), CAL_ERR_IO, CAL_ERR_NOMEM.
 *
 * Ranks (engine/job.h struct cal_job_ranks, docs/expert_parallel.md): the
 * process that hosts global rank 0 calibrates with every rank, exports and
 * publishes; every other process of the job calls this too with the same
 * out_dir (as it sees it): its ranks calibrate and quantize and write their
 * routed experts into rank 0's temporary output (*ret_report: {rank_first,
 * calibrate_s, export_bytes, ranks}).  A rank's failure fails every
 * process's run, naming the rank; nothing is published.
 */
/* The first thing cal_quantize_run() checks, for runners to check before
 * they open the job: CAL_ERR_EXISTS when out_dir exists (it is never
 * overwritten), CAL_ERR_INVALID when it is empty. */
enum cal_status cal_quantize_check_output(const char *out_dir, struct cal_error *err);

enum cal_status cal_quantize_run(struct cal_job *job, const struct cal_quantize_opts *opts,
				 cal_progress_fn progress, void *progress_ctx,
				 json_t **ret_report, struct cal_error *err);

#endif
