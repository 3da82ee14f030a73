/*
 * jobspec.h — request bodies: bounded JSON parsing and the validation of a
 * job submission (POST /v1/jobs) into the canonical job spec the worker
 * reads.  No global state; safe to call from any HTTP thread.
 */
#ifndef CAL_JOBSPEC_H
#define CAL_JOBSPEC_H

#include <jansson.h>
#include <stddef.h>

#include "common/status.h"
#include "engine/job.h"
#include "errors.h"

/* options.max_shard_size: at most 2^53 bytes (a JSON number stays exact) */
#define CAL_JOBSPEC_MAX_SHARD_SIZE (INT64_C(1) << 53)

#define CAL_JSON_MAX_DEPTH 32
#define CAL_JSON_MAX_VALUES 100000
#define CAL_SPEC_MAX_PATH 4095
#define CAL_RECIPE_YAML_MAX (256 * 1024)
#define CAL_SPEC_MAX_DATASETS 64
#define CAL_RECIPE_NAME_MAX 200

/* The dataset catalog: names such as cnn_dailymail mapped to files, so
 * that a job can say "cnn_dailymail:256" as it would "/data/cnn.jsonl:256".
 * Entries are "NAME=PATH" strings (the configuration's `datasets:`). */
#define CAL_DATASET_NAME_MAX 64
#define CAL_DATASET_NAME_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"

/*
 * Resolves a catalog reference "NAME" or "NAME:N" (N samples, 1..1000000):
 * *ret_path points into catalog, *ret_samples is N or 0.  Returns 0, or -1
 * with a message in msg naming the reference and every known name.
 */
int cal_dataset_resolve(char *const *catalog, size_t n, const char *ref, const char **ret_path, long *ret_samples,
			char *msg, size_t msg_len);

/* Where client paths may point and which devices exist (from the config). */
struct cal_jobspec_env {
	char *const *model_roots, *const *data_roots, *const *output_roots;
	size_t n_model_roots, n_data_roots, n_output_roots;
	const char *recipes_dir; /* unused here: api/recipes.c resolves recipe names */
	const int *devices;
	size_t n_devices;
	char *const *datasets;   /* the catalog, "NAME=PATH" */
	size_t n_datasets;
};

/*
 * Parses a request body: one JSON object, duplicate keys rejected, nesting
 * at most CAL_JSON_MAX_DEPTH and at most CAL_JSON_MAX_VALUES values, both
 * checked before jansson parses (common/jsonscan.h).  len must already be
 * bounded by the caller.  *ret (new reference) on success; BAD_JSON /
 * JSON_TOO_DEEP / JSON_TOO_LARGE otherwise.
 */
enum cal_api_err cal_json_parse_body(const char *buf, size_t len, json_t **ret,
				     struct cal_api_problem *prob);

/* SHA-256 (hex) of the canonical form of v (sorted keys, compact): the
 * Idempotency-Key fingerprint.  Returns 0, or -1 when v cannot be dumped. */
int cal_json_fingerprint(const json_t *v, char out[65]);

/* 1 when s is a well-formed recipe name: '/'-separated segments of
 * [A-Za-z0-9._-], none empty or starting with '.', 1..CAL_RECIPE_NAME_MAX. */
int cal_recipe_name_ok(const char *s);

/*
 * The recipe fields of a request: "recipe" (a name, or {"yaml": TEXT}) or
 * "recipe_yaml" (TEXT), exactly one.  Checks their syntax only and copies
 * them to out as "recipe" (name) or "recipe_yaml" (text).
 */
enum cal_api_err cal_jobspec_recipe(const json_t *req, json_t *out, struct cal_api_problem *prob);

/* The request's "model": an absolute path resolving (realpath) inside the
 * model roots to a directory with a config.json.  *ret_real is the
 * resolved path (heap, caller frees). */
enum cal_api_err cal_jobspec_model(const json_t *req, const struct cal_jobspec_env *env, char **ret_real,
				   struct cal_api_problem *prob);

/*
 * Validates a submission against env: types, ranges, unknown fields, paths
 * confined to their roots (realpath), the model directory holding
 * config.json, the output absent and not overlapping the model, the recipe
 * well-formed (loading it and the model is api/recipes.c's job).  On success *ret_spec (new reference) is the canonical spec:
 *   {"name", "model", "recipe" | "recipe_yaml", "calibration": {"datasets":
 *    [{"path","samples"}], "tokens", "samples", "seq_len", "seed"},
 *    "output", "devices": "cpu" | N | [ids], "priority", "options": {...},
 *    "timeout_s"}
 * with resolved paths and defaults filled in.  On failure prob names the
 * field (dotted path) and the reason.
 */
enum cal_api_err cal_jobspec_validate(const json_t *req, const struct cal_jobspec_env *env,
				      json_t **ret_spec, struct cal_api_problem *prob);

/* The engine's options for a canonical spec (engine/job.h). */
struct cal_jobspec_job {
	struct cal_job_opts opts;
	struct cal_job_dataset datasets[CAL_SPEC_MAX_DATASETS];
};

/*
 * Fills ret from a canonical spec: the model, the recipe (name or inline
 * YAML) resolved in spec.recipes_dir with the no-filesystem confinement,
 * the calibration data, the options and the devices.  "cpu" runs on the
 * CPU; a GPU count or list runs on CUDA ordinals 0..n-1, because the
 * supervisor starts the worker with CUDA_VISIBLE_DEVICES set to the GPUs it
 * assigned.  The strings point into spec (which must outlive ret's use).
 * Used by the worker to run the job and by the API to validate it.
 * Errors: CAL_ERR_FORMAT naming a field of a spec that is not canonical.
 */
enum cal_status cal_jobspec_job_opts(const json_t *spec, struct cal_jobspec_job *ret,
				     struct cal_error *err);

/*
 * One job over `nodes` processes, this one node `node_rank` (docs/deploy.md):
 * every node runs the local ranks o->ranks and o->devices give (the same
 * number L on each), so this node holds the global ranks node_rank·L ..
 * node_rank·L+L-1 of nodes·L.  Sets o->ranks.local, first and world (the
 * caller sets the rendezvous).  CAL_ERR_INVALID when node_rank is not
 * below nodes or there would be more than CAL_CALIB_MAX_RANKS ranks.
 */
enum cal_status cal_jobspec_node_ranks(struct cal_job_opts *o, unsigned nodes, unsigned node_rank,
				       struct cal_error *err);

#endif
