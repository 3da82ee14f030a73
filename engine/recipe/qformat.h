/*
 * qformat.h — modelopt hf_ptq.py's `--qformat` names (docs/recipes.md
 * "qformat names").  Each name maps to the built-in recipe (recipes/
 * general/ptq/) that runs what hf_ptq runs for it with its default
 * `--kv_cache_qformat fp8_cast`, or is refused with the reason: a format
 * whose algorithm or numerics calibd does not implement is never mapped to
 * something else.
 */
#ifndef CAL_QFORMAT_H
#define CAL_QFORMAT_H

#include <stddef.h>

#include "common/status.h"

struct cal_qformat {
	const char *name;    /* hf_ptq's --qformat value, e.g. "nvfp4" */
	const char *recipe;  /* the built-in recipe, or NULL: refused */
	const char *reason;  /* why it is refused (recipe NULL), else NULL */
};

/* The table, in hf_ptq's order: *n entries. */
const struct cal_qformat *cal_qformat_list(size_t *n);

/*
 * The recipe of qformat `name` in *ret (a static string).  Errors:
 * CAL_ERR_NOTFOUND (not an hf_ptq qformat; the message lists them),
 * CAL_ERR_UNSUPPORTED (a qformat calibd refuses; the message names it and
 * says why).
 */
enum cal_status cal_qformat_recipe(const char *name, const char **ret, struct cal_error *err);

/* hf_ptq.py's --kv_cache_qformat names (modelopt 0.47's KV presets and
 * "none"), in its order, with the calibd unit each appends (NULL: none). */
struct cal_kv_qformat {
	const char *name;    /* "fp8_cast", "nvfp4_affine", ... */
	const char *unit;    /* "configs/ptq/units/kv_fp8_cast", or NULL for "none" */
};
const struct cal_kv_qformat *cal_kv_qformat_list(size_t *n);

/*
 * Appends the KV-cache unit of --kv_cache_qformat `name` to recipe r's
 * quant_cfg, after its own entries, as hf_ptq's
 * update_quant_cfg_with_kv_cache_quant does (later entries win, so it
 * replaces the recipe's KV format); "none" appends an entry disabling the
 * k/v bmm quantizers (docs/recipes.md "KV-cache formats").  opts: the
 * recipe tree the unit is read from.  Errors: CAL_ERR_NOTFOUND (not a
 * --kv_cache_qformat name; the message lists them), the unit's load
 * errors, CAL_ERR_NOMEM.
 */
struct cal_recipe;
struct cal_recipe_opts;
enum cal_status cal_kv_qformat_apply(struct cal_recipe *r, const char *name,
				     const struct cal_recipe_opts *opts, struct cal_error *err);

#endif
