/*
 * job.h — the one entry point to the engine (docs/engine.md).
 *
 * A job is one model with one recipe, and the calibration data and device
 * it runs on.  cal_job_open() builds, exactly once, everything the engine
 * works from: the recipe (with its loading options), the model description
 * (config.json), the quantization plan, the checkpoint mapping, the tensor
 * catalog and the back end.  Everything else borrows from the job:
 *   - quantize (engine/quantize.h), calibrate (cal_job_calib_open), export
 *     (cal_job_export) and verify (cal_job_verify);
 *   - `calibd quantize / calibrate / export / verify` and `calibd worker`,
 *     which fill struct cal_job_opts (the worker from the canonical job
 *     spec, api/jobspec.h cal_jobspec_job_opts);
 *   - the API's submit-time validation, which opens the job without a back
 *     end (CAL_JOB_OPEN_NO_BACKEND) and asks cal_job_check() what the engine
 *     can run, so that a job the engine would refuse gets its 422 at submit.
 *
 * Lifetimes: the options (and the strings and arrays they point to) are
 * borrowed and must outlive the job; the job owns what it built; what
 * borrows from the job (a calibration engine, an exporter, the plan's
 * pointers) must be freed before cal_job_close().
 */
#ifndef CAL_JOB_H
#define CAL_JOB_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/device.h"
#include "common/status.h"
#include "engine/calib.h"
#include "engine/export/stats.h"
#include "engine/model/catalog.h"
#include "engine/model/model.h"
#include "engine/recipe/plan.h"
#include "engine/recipe/qformat.h"
#include "engine/recipe/recipe.h"
#include "engine/st/safetensors.h"
#include "engine/st/st_writer.h"
#include "kernels/backend.h"
#include "kernels/numfmt.h"
#include "kernels/ops.h"

/* One calibration dataset: a JSONL or text file, and how many samples to
 * take from it (0: its share of cal_job_opts.samples). */
struct cal_job_dataset {
	const char *path;
	size_t samples;
};

/* The command line's "FILE[:N],FILE[:N],..." (--calib) as datasets: *ret
 * (cal_job_datasets_free) holds *ret_n entries.  Errors: CAL_ERR_INVALID
 * naming the bad entry, CAL_ERR_NOMEM.  NULL gives none. */
enum cal_status cal_job_datasets_parse(const char *spec, struct cal_job_dataset **ret,
				       size_t *ret_n, struct cal_error *err);
void cal_job_datasets_free(struct cal_job_dataset *ds, size_t n);

/*
 * The rank layout of a job (docs/expert_parallel.md).  Each MoE layer's
 * experts are split across the ranks; everything else runs data parallel
 * by calibration micro-batch.  The output is byte-identical for every
 * layout.  All zero: one rank.
 *   - local: ranks run by this process, one thread each.  CUDA: one per
 *     device of `devices` ("cuda:0,1" is 2 ranks; 0 takes that number, any
 *     other value must equal it).  CPU: N ranks (0: 1), each a CPU back end
 *     with its share of cpu_threads (at least 1).
 *   - first, world: this process's first global rank and the number of
 *     global ranks of the job (0: local; a single process has first 0,
 *     world == local).  world > local needs a rendezvous.
 *   - rendezvous: where the processes of one job meet (kernels/comm.h:
 *     the leader's file); NULL for one process.
 *   - timeout_ms: the deadline of every collective (0: kernels/comm.h's
 *     default); a rank that misses it fails the job, naming the rank.
 * Only global rank 0 calls the hooks and writes the export.
 */
struct cal_job_ranks {
	unsigned local;
	unsigned first;
	unsigned world;
	const char *rendezvous;
	unsigned timeout_ms;
};

/* Ranks of this process under `r` and `devices` (the rule above), or 0
 * when the layout is invalid. */
unsigned cal_job_local_ranks(const struct cal_job_ranks *r, const struct cal_devices *devices);

struct cal_job_opts {
	const char *model_dir;             /* source checkpoint (config.json, safetensors) */
	/* the recipe: exactly one of a built-in name / file path, or inline YAML */
	const char *recipe;
	const char *recipe_yaml;
	const char *recipe_display;        /* the inline recipe in messages and reports
					    * (NULL: "<inline recipe>") */
	struct cal_recipe_opts recipe_opts; /* tree and no-filesystem confinement */
	/* hf_ptq's --kv_cache_qformat name layered over the recipe's KV unit
	 * (engine/recipe/qformat.h cal_kv_qformat_apply), or NULL */
	const char *kv_cache_qformat;
	/* calibration data: datasets (through the model's tokenizer.json) or a
	 * token file; needed by cal_job_tokens() only */
	const struct cal_job_dataset *datasets;
	size_t n_datasets;
	const char *tokens;
	size_t samples;                    /* 0: datasets 512 (or the sum of their counts
					    * when every one has one); token files: all */
	size_t seq_len;                    /* 0: datasets 512; token files: as they are */
	uint64_t seed;                     /* datasets: 0 = file order (modelopt), else shuffled */
	struct cal_devices devices;        /* common/device.h; AUTO: CUDA when present */

	/* calibration options (engine/calib.h) */
	int per_expert_input_amax;
	double moe_calib_experts_ratio;    /* 0: the recipe's algorithm value, else off */
	int pad_like_modelopt;
	int has_pad_id;                    /* else the EOS id of generation_config.json */
	int64_t pad_id;
	uint64_t max_mem;                  /* back-end memory cap, bytes (0: none) */
	uint64_t micro_batch_tokens;       /* 0: from the memory */
	unsigned cpu_threads;              /* 0: all online CPUs */
	enum cal_combine_mode combine;     /* default CAL_COMBINE_EAGER */
	/* export options (engine/export/export.h) */
	enum cal_div_mode div;             /* default CAL_DIV_RECIP (modelopt's GPU run) */
	uint64_t max_shard_bytes;          /* 0: the exporter's default */

	/* expert parallelism (docs/expert_parallel.md): the job's ranks */
	struct cal_job_ranks ranks;

	/* refuse a model whose plan would hold more quantizers than this,
	 * estimated from config.json before the plan is built (0: no limit) */
	uint64_t max_quantizers;
};

/* What the engine can run of a job (an OR of these): cal_job_check(). */
#define CAL_JOB_CALIBRATE 1u
#define CAL_JOB_EXPORT 2u
#define CAL_JOB_QUANTIZE (CAL_JOB_CALIBRATE | CAL_JOB_EXPORT)

/* cal_job_open() flags */
#define CAL_JOB_OPEN_NO_BACKEND 1u    /* validation: no back end (never a GPU) */
#define CAL_JOB_OPEN_NO_CHECKPOINT 2u /* and no checkpoint or catalog (plans only) */
/* Refuse at open, before the checkpoint is read, what the engine cannot run
 * of these stages (cal_job_check; CAL_JOB_PART_ENGINE). */
#define CAL_JOB_OPEN_FOR(ops) ((unsigned)(ops) << 4)

/* What a failed cal_job_open() was building (the API maps it to a field). */
enum cal_job_part {
	CAL_JOB_PART_OPTIONS,     /* the options themselves */
	CAL_JOB_PART_RECIPE,      /* loading the recipe */
	CAL_JOB_PART_MODEL,       /* config.json, the plan-size bound */
	CAL_JOB_PART_PLAN,        /* the recipe applied to the model */
	CAL_JOB_PART_ENGINE,      /* what the engine runs (CAL_JOB_OPEN_FOR) */
	CAL_JOB_PART_CHECKPOINT,  /* safetensors headers, the catalog */
	CAL_JOB_PART_EXPORT,      /* the exporter's checks of the planned output
				   * (CAL_JOB_OPEN_FOR(CAL_JOB_EXPORT)) */
	CAL_JOB_PART_DEVICE,      /* the back end */
};

struct cal_job;

/*
 * Opens a job (flags: CAL_JOB_OPEN_*).  *ret is owned by the caller
 * (cal_job_close).  On failure ret_part (may be NULL) says what failed and
 * err names it: CAL_ERR_INVALID (options), the recipe loader's errors,
 * cal_model_desc_load's (CAL_ERR_UNSUPPORTED: an unknown architecture),
 * CAL_ERR_RANGE (max_quantizers), cal_plan_build's, the checkpoint's and
 * catalog's (CAL_ERR_NOTFOUND / CAL_ERR_FORMAT), the back end's
 * (CAL_ERR_DEVICE, CAL_ERR_UNSUPPORTED without CUDA).  An architecture the
 * engine describes but cannot run opens, unless CAL_JOB_OPEN_FOR(stages)
 * asks for them: then cal_job_check()'s refusal (CAL_JOB_PART_ENGINE from
 * the description, before the checkpoint is read; CAL_JOB_PART_EXPORT from
 * the exporter's checks after it).
 */
enum cal_status cal_job_open(const struct cal_job_opts *opts, unsigned flags, struct cal_job **ret,
			     enum cal_job_part *ret_part, struct cal_error *err);

/* Frees the job; NULL is a no-op. */
void cal_job_close(struct cal_job *j);

/*
 * The capability query: CAL_OK when the engine runs every stage in `ops`,
 * else CAL_ERR_UNSUPPORTED (or CAL_ERR_FORMAT / CAL_ERR_INVALID) with the
 * reason in err, naming the model type and the feature ("gpt_oss: gqa
 * attention with sinks is not run by the calibration engine yet").  Calibration: the
 * description only.  Export: the description, and when the job has its
 * checkpoint, every planned output tensor as the exporter would write it
 * (weight dtypes, formats, block sizes, algorithms), without writing.
 */
enum cal_status cal_job_check(const struct cal_job *j, unsigned ops, struct cal_error *err);

/* What the job built (owned by the job).  cal_job_checkpoint / _catalog are
 * NULL with CAL_JOB_OPEN_NO_CHECKPOINT, cal_job_backend with
 * CAL_JOB_OPEN_NO_BACKEND. */
const struct cal_job_opts *cal_job_options(const struct cal_job *j);
const struct cal_model_desc *cal_job_model(const struct cal_job *j);
const struct cal_recipe *cal_job_recipe(const struct cal_job *j);
const struct cal_plan *cal_job_plan(const struct cal_job *j);
const struct cal_checkpoint *cal_job_checkpoint(const struct cal_job *j);
const struct cal_catalog *cal_job_catalog(const struct cal_job *j);
struct cal_backend *cal_job_backend(struct cal_job *j);
/* The recipe as named in reports: its name / path, or recipe_display. */
const char *cal_job_recipe_name(const struct cal_job *j);
/* The device the engine runs on: "cpu" or "cuda:N" (AUTO resolved at
 * open; "auto" without a back end). */
const char *cal_job_device(const struct cal_job *j);
/* Ranks this process runs, and the job's global rank count
 * (struct cal_job_ranks). */
unsigned cal_job_ranks_local(const struct cal_job *j);
unsigned cal_job_ranks_world(const struct cal_job *j);
/* Wall-clock seconds cal_job_open() took (the "load" phase of reports). */
double cal_job_open_seconds(const struct cal_job *j);

/*
 * The back end of `devices` (AUTO: CUDA when a GPU is present): the one
 * place a device becomes a back end.  Several CUDA ids run on the first.
 * *ret is owned by the caller (cal_backend_free).
 */
enum cal_status cal_job_backend_open(const struct cal_devices *devices, unsigned cpu_threads,
				     struct cal_backend **ret, struct cal_error *err);
/* The back-end kind and CUDA ordinal cal_job_backend_open() uses for
 * `devices` (AUTO asks the CUDA runtime whether a GPU is present). */
enum cal_backend_kind cal_job_backend_kind(const struct cal_devices *devices, int *ret_ordinal);

/* ---- what the API asks before there is a job ------------------------------ *
 * The HTTP API (api/) reaches the engine through this header only
 * (docs/architecture.md "Layers"); these are the recipe and output facts it
 * validates a submission with (engine/job_api.c).
 */

/* The built-in recipe tree (engine/recipe/recipe.h cal_recipe_builtin_dir). */
const char *cal_job_recipe_tree(void);

/* The runnable recipes of the tree `dir`, name and description, sorted by
 * name (engine/recipe/recipe.h cal_recipe_list); *ret
 * (cal_job_recipe_list_free) holds *ret_n. */
enum cal_status cal_job_recipe_list(const char *dir, struct cal_recipe_info **ret, size_t *ret_n,
				    struct cal_error *err);
void cal_job_recipe_list_free(struct cal_recipe_info *list, size_t n);

/* Loads the recipe `name` from the tree `dir` only (no other file system
 * path, imports confined to the tree); *ret is the caller's
 * (cal_job_recipe_free).  Errors: engine/recipe/recipe.h cal_recipe_load. */
enum cal_status cal_job_recipe_load(const char *dir, const char *name, struct cal_recipe **ret,
				    struct cal_error *err);
void cal_job_recipe_free(struct cal_recipe *r);

/* An inline recipe's top-level `imports:` must name relative paths without
 * "..", inside the recipe tree: CAL_ERR_INVALID naming the first that does
 * not.  YAML that does not parse passes (the recipe loader reports it with
 * line and column when the job opens); CAL_ERR_NOMEM. */
enum cal_status cal_job_recipe_imports_check(const char *yaml, struct cal_error *err);

/* hf_ptq.py's --qformat name as its built-in recipe (engine/recipe/qformat.h
 * cal_qformat_recipe: CAL_ERR_NOTFOUND, CAL_ERR_UNSUPPORTED). */
static inline enum cal_status cal_job_qformat_recipe(const char *qformat, const char **ret,
						     struct cal_error *err)
{
	return cal_qformat_recipe(qformat, ret, err);
}

/* The plan of j as JSON (`calibd plan --json`): a heap string, or NULL on
 * allocation failure. */
char *cal_job_plan_json(const struct cal_job *j);

/* The names an export writes (engine/st/st_writer.h): its temporary
 * sibling of the output directory adds CAL_JOB_OUT_TMP_NAME_EXTRA bytes to
 * the last component, and no file written inside has a name longer than
 * CAL_JOB_OUT_FILE_NAME_MAX bytes. */
#define CAL_JOB_OUT_TMP_NAME_EXTRA CAL_ST_TMP_NAME_EXTRA
#define CAL_JOB_OUT_FILE_NAME_MAX CAL_ST_FILE_NAME_MAX

/* ---- calibration tokens --------------------------------------------------- */

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
 * Builds the calibration token sequences of the job's datasets or token
 * file (exactly one), every id checked against the vocabulary.  Fewer
 * samples than asked for is not an error (info->shortfall); none at all is.
 * *ret is owned by the caller (cal_calib_tokens_free); ret_info may be NULL.
 * Errors: CAL_ERR_INVALID (neither or both sources, no samples),
 * CAL_ERR_RANGE (limits of engine/calib.h), the tokenizer's and the
 * dataset reader's errors (file and line named).
 */
enum cal_status cal_job_tokens(const struct cal_job *j, struct cal_calib_tokens **ret,
			       struct cal_token_info *ret_info, struct cal_error *err);

/* ---- the stages ------------------------------------------------------------- */

/* Callbacks of a calibration run (engine/calib.h); all may be NULL. */
struct cal_job_hooks {
	cal_calib_layer_fn on_layer;
	cal_calib_progress_fn progress;
	void *ctx;
	int profile;
	int one_rank;    /* the job's back end alone, whatever its ranks (evaluation) */
	const struct cal_calib_rank_hooks *rank_hooks; /* every rank's (engine/calib.h) */
};

/*
 * The calibration engine on the job's checkpoint, catalog and back end with
 * the job's calibration options (moe_calib_experts_ratio 0 takes the
 * recipe's).  Refuses what cal_job_check(CAL_JOB_CALIBRATE) refuses.  The
 * engine borrows from the job: free it (cal_calib_free) before the job.
 */
enum cal_status cal_job_calib_open(struct cal_job *j, const struct cal_job_hooks *hooks,
				   struct cal_calib **ret, struct cal_error *err);

/*
 * Exports the job's checkpoint into out_dir (must not exist; published
 * atomically) with the amax of `stats` (engine/export/stats.h) and the
 * job's export options.  *ret_report (may be NULL; new reference) is
 * calibd_report.json.  Errors: engine/export/export.h.
 */
enum cal_status cal_job_export(struct cal_job *j, const struct cal_stats *stats,
			       const char *out_dir, json_t **ret_report, struct cal_error *err);

/*
 * Verifies the exported checkpoint in out_dir (engine/export/export.h
 * cal_export_verify) on the back end of `devices`; with source_dir, the
 * SQNR of every quantized weight against it.  *ret_report (may be NULL;
 * new reference) is the verification report, also when violations were
 * found (CAL_ERR_FORMAT).
 */
enum cal_status cal_job_verify(const char *out_dir, const char *source_dir,
			       const struct cal_devices *devices, json_t **ret_report,
			       struct cal_error *err);

/* ---- evaluation (engine/eval.h, docs/eval.md) --------------------------------- */

/*
 * `calibd eval`: checks that the exported checkpoint in quant_dir was made
 * from the job's source, then runs the original and the quantized model
 * side by side over the job's tokens (its datasets or token file, held-out
 * data) on the job's back end.  *ret: the evaluation report (new
 * reference) with "data" {samples, seq_len, tokens} added.  The job's
 * recipe only sizes the engine's observers; what is quantized, and how,
 * is read from the exported checkpoint.
 */
struct cal_eval_opts;
enum cal_status cal_job_eval(struct cal_job *j, const char *quant_dir,
			     const struct cal_eval_opts *opts, json_t **ret, struct cal_error *err);

#endif
