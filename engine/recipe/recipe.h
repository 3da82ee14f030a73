/*
 * recipe.h — modelopt PTQ recipes: loading, validation, name resolution and
 * quantizer-name matching (docs/recipes.md).
 *
 * A recipe is YAML in the modelopt recipe schema: `metadata` (recipe_type,
 * description), `quantize` (`algorithm`, ordered `quant_cfg` entries), with
 * `imports:` / `$import` composition.  cal_recipe_load() resolves a name or
 * path exactly as modelopt's load_recipe() does (built-in tree first, then
 * the filesystem), resolves imports (filesystem first, then built-in), and
 * validates every key: errors read "file:line:col: key.path: reason".
 *
 * The result is immutable: the ordered entry list modelopt would apply and
 * the calibration algorithm.  Turning it into per-quantizer decisions for a
 * given model is plan.h's job.
 *
 * Ownership: cal_recipe_load()/_parse() return a heap object owned by the
 * caller (cal_recipe_free); every pointer inside it is owned by it.
 */
#ifndef CAL_RECIPE_H
#define CAL_RECIPE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Limits (docs/reliability.md "Limits"): per file 1 MiB, nesting 64; per load:
 */
#define CAL_RECIPE_MAX_IMPORT_DEPTH 16  /* nested imports */
#define CAL_RECIPE_MAX_FILES 256        /* files read (imports are not cached) */
#define CAL_RECIPE_MAX_NODES 100000     /* YAML nodes, parsed and copied */
#define CAL_RECIPE_MAX_ENTRIES 10000    /* quant_cfg entries after splicing */

/* Environment variable that overrides the built-in recipe tree. */
#define CAL_RECIPES_ENV "CALIBD_RECIPES_DIR"

/*
 * One quantizer's attributes (modelopt QuantizerAttributeConfig), with the
 * defaults modelopt gives unspecified fields.  FP formats have fp_e/fp_m
 * set (num_bits 0); integer formats have num_bits set (fp_e = fp_m = -1).
 */
struct cal_qattr {
	int enable;                 /* 1 */
	int num_bits;               /* 8 */
	int fp_e, fp_m;             /* -1, -1 */
	int n_axis;                 /* 0: axis null; else the axes in axis[] */
	int64_t axis[8];
	int has_block;              /* block_sizes given (not null) */
	int n_block;                /* integer keys of block_sizes */
	int64_t block_axis[8], block_size[8]; /* size 0: null ("whole axis") */
	int block_dynamic;          /* block_sizes.type == dynamic (default static) */
	int has_scale_bits;         /* block_sizes.scale_bits */
	int scale_num_bits, scale_fp_e, scale_fp_m; /* as num_bits / fp_e / fp_m */
	int has_scale_block_sizes;
	int four_over_six;          /* block_sizes.four_over_six */
	int dynamic;                /* type: dynamic (default static) */
	int fake_quant;             /* 1 */
	int is_unsigned;            /* `unsigned`, 0 */
	int narrow_range;           /* 0 */
	int learn_amax;             /* 0 */
	char *calibrator;           /* "max" */
	int has_bias;               /* bias given (affine) */
	int n_bias_axis;            /* its integer keys: the axes kept (docs/numerics.md) */
	int64_t bias_axis[8];
	int bias_dynamic;           /* bias.type == dynamic (default static) */
	int bias_max_min;           /* bias.method == max_min (default mean) */
	int rotate;                 /* rotate true, or a rotate mapping with enable true */
	int64_t rotate_block;       /* rotate.block_size, 0: automatic */
	int rotate_back;            /* rotate.mode == rotate_back */
	int pass_through_bwd;       /* 1 */
	char *trt_high_precision_dtype; /* "Float" */
	char *backend;              /* NULL */
	int use_constant_amax;      /* 0 */
	int has_constant_amax;
	double constant_amax;
	int has_effective_bits;
	double effective_bits;
};

/* One quant_cfg entry, in recipe order. */
struct cal_qentry {
	char *quantizer_name;       /* fnmatch pattern */
	char *parent_class;         /* NULL: any parent */
	int has_cfg;                /* 0: enable-only entry (toggles) */
	size_t n_cfg;               /* 1 (mapping) or the list length (sequential) */
	struct cal_qattr *cfg;      /* n_cfg attribute sets, `enable` = entry's */
	int enable;                 /* default 1 */
	char *where;                /* "file:line:col" of the entry */
	char *text;                 /* canonical one-line rendering (tests, plan) */
};

enum cal_calib_method {
	CAL_CALIB_NONE,   /* algorithm: null — no calibration */
	CAL_CALIB_MAX,
	CAL_CALIB_MSE,
	CAL_CALIB_GPTQ,   /* docs/gptq.md */
	CAL_CALIB_AWQ_LITE, /* docs/awq.md */
	CAL_CALIB_HEADROOM, /* nvfp4_act_headroom: NVFP4 input amax from a block-amax histogram */
	CAL_CALIB_SMOOTHQUANT, /* docs/smoothquant.md */
	CAL_CALIB_OTHER,  /* awq_full, a list, ...: loaded, not run */
};

/* The calibration algorithm (MaxCalibConfig / MseCalibConfig fields). */
struct cal_algorithm {
	enum cal_calib_method method;
	char *name;                       /* "max", "mse", "none", "awq_lite", "list"... */
	int distributed_sync;             /* 1 */
	int sync_expert_weight_amax;      /* 0 */
	int skip_forward_without_activation_calib; /* 0 */
	int has_moe_calib_experts_ratio;
	double moe_calib_experts_ratio;
	int layerwise;                    /* layerwise.enable, 0 */
	int layerwise_qdq_from_prev;      /* get_qdq_activations_from_prev_layer, 0 */
	char *layerwise_checkpoint_dir;   /* NULL */
	int64_t layerwise_save_every;     /* 1 */
	int layerwise_calib_mutates_weights; /* 1 */
	/* mse */
	double step_size, start_multiplier, stop_multiplier; /* 0.1, 0.25, 4.0 */
	int fp8_scale_sweep;              /* 0 */
	/* gptq (GPTQCalibConfig; docs/gptq.md) */
	double perc_damp;                 /* 0.01 */
	int64_t gptq_block_size;          /* 128 */
	int gptq_fused;                   /* 0 */
	int has_layerwise_qdq_from_prev;  /* get_qdq_activations_from_prev_layer was given */
	/* awq_lite (AWQLiteCalibConfig; docs/awq.md) */
	double alpha_step;                /* 0.1 */
	/* awq_full (AWQFullCalibConfig: awq_lite, then awq_clip; method
	 * CAL_CALIB_AWQ_LITE with awq_clip set; docs/awq.md "awq_full") and
	 * awq_clip alone (AWQClipCalibConfig: awq_no_search set too) */
	int awq_clip;                     /* 0; 1 for awq_full and awq_clip */
	int awq_no_search;                /* 1 for awq_clip alone (no awq_lite search) */
	int64_t clip_max_co_batch;        /* 1024: batching only, no effect on the result */
	int64_t clip_max_tokens;          /* 64: max_tokens_per_batch */
	double clip_min_ratio;            /* 0.5 */
	double clip_shrink_step;          /* 0.05 */
	/* smoothquant (SmoothQuantCalibConfig; docs/smoothquant.md) */
	double sq_alpha;                  /* 1.0: migration strength */
	/* nvfp4_act_headroom (weights: max) */
	double hr_anchor_percentile;      /* 1 */
	double hr_upper_percentile;       /* 99.99 */
	double hr_rho;                    /* 16384 */
};

struct cal_recipe {
	char *source;          /* resolved file or directory ("<inline>" for parse) */
	char *recipe_type;     /* "ptq" */
	char *description;     /* "" when absent */
	struct cal_algorithm algo;
	int has_effective_bits;
	double effective_bits;
	struct cal_qentry *entries;
	size_t n_entries;
};

struct cal_recipe_opts {
	const char *builtin_dir;  /* NULL: cal_recipe_builtin_dir() */
	/* Resolve names and imports in the built-in tree only, and confine them
	 * to it: absolute paths, paths whose ".."s climb out of the tree and
	 * files that resolve outside it (symlinks followed) are refused with
	 * CAL_ERR_INVALID.  The daemon's mode. */
	int no_filesystem;
};

/*
 * Loads the recipe `name`: a built-in name ("general/ptq/fp8_default-kv_fp8"),
 * or a path to a .yml/.yaml file or a recipe directory (metadata.yaml +
 * quantize.yaml).  Resolution order (modelopt load_recipe): BUILTIN/name,
 * BUILTIN/name.yml, BUILTIN/name.yaml (suffix probing only without a
 * .yml/.yaml suffix), then the same on the filesystem.
 * Errors: CAL_ERR_NOTFOUND (no such recipe: the message lists the places
 * tried), CAL_ERR_FORMAT (YAML/schema error at file:line:col with the key),
 * CAL_ERR_UNSUPPORTED (recipe_type other than ptq), CAL_ERR_RANGE (limits),
 * CAL_ERR_INVALID (no_filesystem: the name or an import leaves the tree;
 * an import's message names it and its file:line:col), CAL_ERR_IO,
 * CAL_ERR_NOMEM.
 */
enum cal_status cal_recipe_load(const char *name, const struct cal_recipe_opts *opts,
				struct cal_recipe **ret, struct cal_error *err);

/* Same for recipe text held in memory (`display` names it in messages);
 * imports resolve as for a file in the current directory. */
enum cal_status cal_recipe_parse(const char *display, const char *text, size_t len,
				 const struct cal_recipe_opts *opts, struct cal_recipe **ret,
				 struct cal_error *err);

void cal_recipe_free(struct cal_recipe *r);

/* The built-in tree: $CALIBD_RECIPES_DIR when set and non-empty, else the
 * source tree's recipes/ when it exists (build-tree use), else the
 * installed datadir copy.  Never NULL. */
const char *cal_recipe_builtin_dir(void);

/* Default attributes of a quantizer no cfg entry touched (modelopt's
 * TensorQuantizer defaults: enabled, 8-bit integer, per-tensor). */
const struct cal_qattr *cal_qattr_default(void);

/* Python fnmatch.fnmatchcase on POSIX: `*` (any run, dots included), `?`,
 * `[seq]`, `[!seq]`; no escapes; a `[` without `]` is literal.  1 = match. */
int cal_fnmatch(const char *pattern, const char *name);

/* One built-in recipe, for `calibd recipes`. */
struct cal_recipe_info {
	char *name;         /* "general/ptq/nvfp4_default-kv_fp8" */
	char *description;  /* "" when absent; "(error: ...)" when it fails to load */
};

/*
 * Lists the runnable recipes of the tree `dir` (every .yml/.yaml under
 * general/, huggingface/ and models/ that carries metadata.recipe_type),
 * sorted by name.  *ret (n entries) is owned by the caller:
 * cal_recipe_list_free().
 */
enum cal_status cal_recipe_list(const char *dir, struct cal_recipe_info **ret, size_t *n,
				struct cal_error *err);
void cal_recipe_list_free(struct cal_recipe_info *list, size_t n);

#endif
