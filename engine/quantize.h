/*
 * quantize.h — one quantization job, end to end (calibration + export).
 *
 * This is the contract between the job runners (`calibd quantize` in the
 * foreground, `calibd worker JOB_DIR` under the daemon) and the engine.  The
 * implementation arrives with the export work (engine/quantize.c); until it
 * exists nothing links against cal_quantize_run().
 */
#ifndef CAL_QUANTIZE_H
#define CAL_QUANTIZE_H

#include <stdint.h>

#include "common/status.h"

struct cal_quantize_opts {
	const char *model_dir;      /* source checkpoint */
	const char *recipe;         /* built-in name, or a path to a YAML file */
	const char *recipe_yaml;    /* inline YAML (instead of recipe), or NULL */
	const char *calib;          /* "FILE[:N],FILE[:N]" datasets, or NULL */
	const char *calib_tokens;   /* token file (JSONL input_ids), or NULL */
	int samples;                /* 0: default (512) */
	int seq_len;                /* 0: default (512) */
	uint64_t seed;
	const char *out_dir;        /* final output directory; must not exist */
	const char *device;         /* "cpu", "cuda", "cuda:0,1"; NULL = auto */
	int per_expert_input_amax;  /* bool */
	double moe_calib_experts_ratio; /* 0: off */
	volatile const int *cancel; /* set non-zero to request a graceful stop */
};

/* Progress as it happens; `json` is one JSON object (no newline), e.g.
 * {"phase":"calibrate","layer":3,"layers":48,"tokens_done":..,
 *  "tokens_total":..,"tokens_per_s":..,"bytes_written":..,"eta_s":..}. */
typedef void (*cal_progress_fn)(void *ctx, const char *json);

/*
 * Runs the job.  On success the output directory is published and
 * *ret_report_json (owned by the caller, free()) holds the report summary.
 * On failure nothing exists under out_dir.
 */
enum cal_status cal_quantize_run(const struct cal_quantize_opts *opts,
				 cal_progress_fn progress, void *progress_ctx,
				 char **ret_report_json, struct cal_error *err);

#endif
