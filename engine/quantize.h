/*
 * quantize.h — one quantization job, end to end (calibration + export).
 *
 * This is the contract between the job runners (`calibd quantize` in the
 * foreground, `calibd worker JOB_DIR` under the daemon) and the engine
 * (engine/quantize.c, library cal_quantize: meson `cal_quantize_dep`, also in
 * `cal_engine_dep`).  docs/quantize.md describes the job, its progress lines
 * and its report.
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

#include "common/status.h"
#include "engine/calib.h"

struct cal_st_publish;

struct cal_quantize_opts {
	const char *model_dir;      /* source checkpoint */
	const char *recipe;         /* built-in name, or a path to a YAML file */
	const char *recipe_yaml;    /* inline YAML (instead of recipe), or NULL */
	const char *calib;          /* "FILE[:N],FILE[:N]" datasets, or NULL */
	const char *calib_tokens;   /* token file (JSONL input_ids), or NULL */
	int samples;                /* 0: default (512; token files: all sequences) */
	int seq_len;                /* 0: default (512; token files: as they are) */
	uint64_t seed;              /* 0: first records in file order; else shuffled */
	const char *out_dir;        /* final output directory; must not exist */
	const char *device;         /* "cpu", "cuda", "cuda:0,1"; NULL = auto */
	int per_expert_input_amax;  /* bool */
	double moe_calib_experts_ratio; /* 0: off */
	volatile const int *cancel; /* set non-zero to request a graceful stop */
	/* temporary name tag and publish hooks of the output (st_writer.h), or NULL */
	const struct cal_st_publish *publish;
};

/* Progress as it happens; `json` is one JSON object (no newline), e.g.
 * {"phase":"calibrate","layer":3,"layers":48,"tokens_done":..,
 *  "tokens_total":..,"tokens_per_s":..,"bytes_written":..,"eta_s":..}. */
typedef void (*cal_progress_fn)(void *ctx, const char *json);

/*
 * Runs the job.  On success the output directory is published and
 * *ret_report_json (owned by the caller, free()) holds the report summary.
 * On failure nothing exists under out_dir.
 *
 * progress (may be NULL) is called on the calling thread at each phase and
 * after every layer; it may set *opts->cancel.  A cancel request is seen
 * between layers (the current layer finishes first) and before publishing.
 * Errors: CAL_ERR_EXISTS (out_dir exists), CAL_ERR_INVALID (bad options,
 * named), CAL_ERR_NOTFOUND / CAL_ERR_FORMAT / CAL_ERR_UNSUPPORTED (model,
 * recipe, data), CAL_ERR_NOSPACE, CAL_ERR_DEVICE, CAL_ERR_NUMERIC,
 * CAL_ERR_INTERRUPTED (cancelled: nothing published), CAL_ERR_IO,
 * CAL_ERR_NOMEM.
 */
enum cal_status cal_quantize_run(const struct cal_quantize_opts *opts,
				 cal_progress_fn progress, void *progress_ctx,
				 char **ret_report_json, struct cal_error *err);

/* ---- calibration tokens (shared by `calibd quantize` and `calibrate`) ---- */

/* Where the calibration tokens come from: exactly one of calib / tokens. */
struct cal_token_source {
	const char *calib;          /* "FILE[:N],..." through the model's tokenizer.json */
	const char *tokens;         /* token file (engine/calib.h format) */
	size_t samples;             /* 0: datasets 512 (or the sum of the FILE:N counts
				     * when every source has one); token files: all */
	size_t seq_len;             /* 0: datasets 512; token files: not truncated */
	uint64_t seed;              /* datasets: 0 = first records in file order
				     * (modelopt), else a seeded shuffle */
};

/* What the token set turned out to be. */
struct cal_token_info {
	size_t samples;             /* sequences */
	size_t seq_len;             /* S asked for (token files: the longest sequence) */
	uint64_t tokens;
	size_t shortfall;           /* samples asked for that the sources did not have */
	size_t truncated;           /* samples cut to seq_len */
	size_t dropped_empty;       /* records that gave no token */
};

/*
 * Builds the calibration token sequences of `src` for the checkpoint in
 * model_dir (its tokenizer.json for datasets; every id checked < vocab when
 * vocab > 0).  Fewer samples than asked for is not an error (info->shortfall);
 * none at all is.  *ret is owned by the caller (cal_calib_tokens_free);
 * ret_info may be NULL.  Errors: CAL_ERR_INVALID (neither or both sources,
 * no samples), CAL_ERR_RANGE (limits of engine/calib.h), the tokenizer's and
 * the dataset reader's errors (file and line named).
 */
enum cal_status cal_quantize_tokens_load(const char *model_dir, uint64_t vocab,
					 const struct cal_token_source *src,
					 struct cal_calib_tokens **ret,
					 struct cal_token_info *ret_info, struct cal_error *err);

#endif
