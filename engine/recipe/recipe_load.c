/*
 * recipe_load.c — loading a recipe by name or from text and validating the
 * resolved YAML tree into struct cal_recipe (docs/recipes.md).  Finding
 * files and resolving `imports:` / `$import` is recipe_import.c's half
 * (recipe_import.h); listing the recipe tree is recipe_list.c's.
 */
#include "recipe.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"
#include "recipe_import.h"
#include "ytree.h"

#ifndef CAL_RECIPES_DIR
#define CAL_RECIPES_DIR "recipes"
#endif
#ifndef CAL_RECIPES_INSTALL_DIR
#define CAL_RECIPES_INSTALL_DIR "/usr/local/share/calibd/recipes"
#endif

/* ---- schema validation -------------------------------------------------- */

struct vctx {
	struct cal_error *err;
};

static enum cal_status unknown_key(struct cal_error *err, const struct cal_ynode *k,
				   const char *path, const char *accepted)
{
	if (k->kind != CAL_Y_STR)
		return at_err(err, CAL_ERR_FORMAT, k, "%s: keys must be strings", path);
	return at_err(err, CAL_ERR_FORMAT, k, "%s%s%s: unknown key (accepted: %s)", path,
		      *path ? "." : "", k->str, accepted);
}

static enum cal_status want(struct cal_error *err, const struct cal_ynode *v, const char *path,
			    const char *what)
{
	return at_err(err, CAL_ERR_FORMAT, v, "%s: expected %s, got a %s", path, what,
		      cal_ykind_name(v->kind));
}

static enum cal_status get_bool(struct cal_error *err, const struct cal_ynode *v,
				const char *path, int *ret)
{
	if (v->kind != CAL_Y_BOOL)
		return want(err, v, path, "true or false");
	*ret = (int)v->i;
	return CAL_OK;
}

static enum cal_status get_num(struct cal_error *err, const struct cal_ynode *v,
			       const char *path, double *ret)
{
	if (v->kind == CAL_Y_INT)
		*ret = (double)v->i;
	else if (v->kind == CAL_Y_FLOAT)
		*ret = v->f;
	else
		return want(err, v, path, "a number");
	return CAL_OK;
}

static enum cal_status get_str(struct cal_error *err, const struct cal_ynode *v,
			       const char *path, char **ret)
{
	if (v->kind != CAL_Y_STR)
		return want(err, v, path, "a string");
	free(*ret);
	*ret = strdup(v->str);
	return *ret ? CAL_OK : cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
}

/* A quantization type, "static" or "dynamic": *dynamic 0 or 1. */
static enum cal_status get_dynamic(struct cal_error *err, const struct cal_ynode *v,
				   const char *path, int *dynamic)
{
	if (v->kind != CAL_Y_STR || (strcmp(v->str, "static") && strcmp(v->str, "dynamic")))
		return at_err(err, CAL_ERR_FORMAT, v, "%s: expected 'static' or 'dynamic'", path);
	*dynamic = !strcmp(v->str, "dynamic");
	return CAL_OK;
}

static int fp_allowed(int64_t e, int64_t m)
{
	static const int ok[][2] = {{4, 3}, {5, 2}, {2, 1}, {1, 2}, {0, 3}, {3, 0}, {3, 2}, {2, 3}};
	for (size_t i = 0; i < CAL_ARRAY_LEN(ok); i++)
		if (ok[i][0] == e && ok[i][1] == m)
			return 1;
	return 0;
}

/* num_bits / scale_bits: an int, or (E, M) from "ExMy" or a two-int list. */
static enum cal_status get_bits(struct cal_error *err, const struct cal_ynode *v,
				const char *path, int scale, int *bits, int *e, int *m)
{
	if (v->kind == CAL_Y_INT) {
		if (v->i < 1 || v->i > 64)
			return at_err(err, CAL_ERR_FORMAT, v, "%s: %lld bits is out of range 1..64",
				      path, (long long)v->i);
		*bits = (int)v->i;
		*e = *m = -1;
		return CAL_OK;
	}
	if (v->kind == CAL_Y_SEQ && v->n == 2 && v->items[0]->kind == CAL_Y_INT &&
	    v->items[1]->kind == CAL_Y_INT) {
		int64_t x = v->items[0]->i, y = v->items[1]->i;
		if (!fp_allowed(x, y) && !(scale && x == 8 && y == 0))
			return at_err(err, CAL_ERR_FORMAT, v,
				      "%s: (%lld, %lld) is not a floating-point format modelopt "
				      "accepts (E4M3, E5M2, E2M1, E1M2, E0M3, E3M0, E3M2, E2M3%s)",
				      path, (long long)x, (long long)y, scale ? ", E8M0" : "");
		*bits = 0;
		*e = (int)x;
		*m = (int)y;
		return CAL_OK;
	}
	return want(err, v, path, "an integer bit count or an ExMy format such as e4m3");
}

static void qattr_defaults(struct cal_qattr *a)
{
	memset(a, 0, sizeof(*a));
	a->enable = 1;
	a->num_bits = 8;
	a->fp_e = a->fp_m = -1;
	a->scale_fp_e = a->scale_fp_m = -1;
	a->fake_quant = 1;
	a->pass_through_bwd = 1;
}

static void qattr_clear(struct cal_qattr *a)
{
	if (!a)
		return;
	CAL_FREE_ALL(a->calibrator, a->trt_high_precision_dtype, a->backend);
}

static enum cal_status fill_string_defaults(struct cal_error *err, struct cal_qattr *a)
{
	if (!a->calibrator && !(a->calibrator = strdup("max")))
		return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
	if (!a->trt_high_precision_dtype && !(a->trt_high_precision_dtype = strdup("Float")))
		return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
	return CAL_OK;
}

static char *subpath(const char *path, const char *key)
{
	return cat3(path, ".", key);
}

/* The path of mapping key k under `path` into *p (its previous value
 * freed); an error for a key that is not a string. */
static enum cal_status key_path(struct cal_error *err, const struct cal_ynode *k,
				const char *path, char **p)
{
	if (k->kind != CAL_Y_STR)
		return unknown_key(err, k, path, NULL);
	free(*p);
	*p = subpath(path, k->str);
	return *p ? CAL_OK : cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
}

/* A key whose value goes into a field of the struct at hand as it stands:
 * a bool (int), a string (char *) or a number (double).  method: the only
 * algorithm that takes the key (CAL_CALIB_NONE: any; algorithm null has no
 * keys); nullable: null leaves the field as it is; lo < hi: a number must
 * lie in (lo, hi], or (lo, hi) when hi_open. */
struct plain_key {
	const char *key;
	enum { PK_BOOL, PK_STR, PK_NUM } kind;
	size_t off;
	enum cal_calib_method method;
	int nullable;
	double lo, hi;
	int hi_open, lo_closed;
};

/* The row of `key` for `method` in tab[n], or NULL. */
static const struct plain_key *plain_find(const struct plain_key *tab, size_t n,
					  const char *key, enum cal_calib_method method)
{
	for (size_t i = 0; i < n; i++)
		if ((tab[i].method == CAL_CALIB_NONE || tab[i].method == method) &&
		    !strcmp(tab[i].key, key))
			return &tab[i];
	return NULL;
}

/* Reads v (at path) into the field of *base that row k names. */
static enum cal_status plain_get(struct cal_error *err, const struct plain_key *k,
				 const struct cal_ynode *v, const char *path, void *base)
{
	char *field = (char *)base + k->off;
	if (k->nullable && v->kind == CAL_Y_NULL)
		return CAL_OK;
	if (k->kind == PK_BOOL)
		return get_bool(err, v, path, (int *)(void *)field);
	if (k->kind == PK_STR)
		return get_str(err, v, path, (char **)(void *)field);
	double *d = (double *)(void *)field;
	CAL_TRY_RET(get_num(err, v, path, d));
	if (k->lo < k->hi && !((k->lo_closed ? *d >= k->lo : *d > k->lo) &&
			       (k->hi_open ? *d < k->hi : *d <= k->hi)))
		return at_err(err, CAL_ERR_FORMAT, v, "%s: must be in %c%g, %g%c", path,
			      k->lo_closed ? '[' : '(', k->lo, k->hi, k->hi_open ? ')' : ']');
	return CAL_OK;
}

/* path.key: the string no (*ret 0) or yes (*ret 1). */
static enum cal_status get_pair(struct cal_error *err, const struct cal_ynode *v, const char *path,
				const char *key, const char *no, const char *yes, int *ret)
{
	if (v->kind != CAL_Y_STR || (strcmp(v->str, no) && strcmp(v->str, yes)))
		return at_err(err, CAL_ERR_FORMAT, v, "%s.%s: expected '%s' or '%s'", path, key, no,
			      yes);
	*ret = !strcmp(v->str, yes);
	return CAL_OK;
}

/* bias: {axis: null, ..., type: static|dynamic, method: mean|max_min}; the
 * integer keys are the axes the bias keeps (modelopt's bias_axis). */
static enum cal_status conv_bias(struct cal_error *err, const struct cal_ynode *b,
				 const char *path, struct cal_qattr *a)
{
	if (b->kind != CAL_Y_MAP) /* null: no bias */
		return b->kind == CAL_Y_NULL ? CAL_OK
					     : want(err, b, path, "a mapping (axis: null, type, method) or null");
	a->has_bias = 1;
	for (size_t i = 0; i < b->n; i++) {
		const struct cal_ynode *k = b->items[2 * i], *v = b->items[2 * i + 1];
		const char *ks = k->kind == CAL_Y_STR ? k->str : "";
		if (k->kind == CAL_Y_INT && a->n_bias_axis < 8) {
			a->bias_axis[a->n_bias_axis++] = k->i;
			continue;
		}
		enum cal_status st =
			k->kind == CAL_Y_INT ? at_err(err, CAL_ERR_FORMAT, k, "%s: too many bias axes",
						      path)
			: !strcmp(ks, "type") ? get_dynamic(err, v, path, &a->bias_dynamic)
			: !strcmp(ks, "method") ? get_pair(err, v, path, "method", "mean", "max_min",
							   &a->bias_max_min)
			: unknown_key(err, k, path, "integer axes, type, method");
		if (st < 0)
			return st;
	}
	return CAL_OK;
}

/* rotate: a bool, or {enable, rotate_fp32, block_size, mode}. */
static enum cal_status conv_rotate(struct cal_error *err, const struct cal_ynode *r,
				   const char *path, struct cal_qattr *a)
{
	if (r->kind != CAL_Y_MAP)
		return get_bool(err, r, path, &a->rotate);
	a->rotate = 0; /* RotateConfig's enable defaults to false */
	for (size_t i = 0; i < r->n; i++) {
		const struct cal_ynode *k = r->items[2 * i], *v = r->items[2 * i + 1];
		int dummy;
		const char *ks = k->kind == CAL_Y_STR ? k->str : "";
		if (!strcmp(ks, "enable")) {
			CAL_TRY_RET(get_bool(err, v, path, &a->rotate));
		} else if (!strcmp(ks, "rotate_fp32")) { /* bf16 rotates in fp32 either way */
			CAL_TRY_RET(get_bool(err, v, path, &dummy));
		} else if (!strcmp(ks, "block_size")) {
			if (v->kind == CAL_Y_NULL)
				a->rotate_block = 0;
			else if (v->kind == CAL_Y_INT && v->i >= 2 && v->i <= (1 << 20) &&
				 !(v->i & (v->i - 1)))
				a->rotate_block = v->i;
			else
				return at_err(err, CAL_ERR_FORMAT, v, "%s.block_size: expected null or "
					      "a power of two >= 2", path);
		} else if (!strcmp(ks, "mode")) {
			CAL_TRY_RET(get_pair(err, v, path, "mode", "rotate", "rotate_back",
					     &a->rotate_back));
		} else {
			return unknown_key(err, k, path, "enable, rotate_fp32, block_size, mode");
		}
	}
	return CAL_OK;
}

static enum cal_status conv_block_sizes(struct cal_error *err, const struct cal_ynode *b,
					const char *path, struct cal_qattr *a)
{
	enum cal_status st = CAL_OK;
	char *p = NULL;
	if (b->kind == CAL_Y_NULL)
		return CAL_OK;
	if (b->kind != CAL_Y_MAP)
		return want(err, b, path, "a mapping (axis: size, type, scale_bits, ...)");
	a->has_block = 1;
	for (size_t i = 0; i < b->n; i++) {
		const struct cal_ynode *k = b->items[2 * i], *v = b->items[2 * i + 1];
		free(p);
		p = NULL;
		if (k->kind == CAL_Y_INT) {
			if (asprintf(&p, "%s[%lld]", path, (long long)k->i) < 0)
				return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
			if (a->n_block >= 8) {
				st = at_err(err, CAL_ERR_FORMAT, k, "%s: too many block axes", path);
				goto fail;
			}
			if (v->kind == CAL_Y_NULL) {
				a->block_size[a->n_block] = 0;
			} else if (v->kind == CAL_Y_INT && v->i > 0 && v->i <= (1 << 20)) {
				a->block_size[a->n_block] = v->i;
			} else {
				st = at_err(err, CAL_ERR_FORMAT, v, "%s: block size must be a positive "
					    "integer (or null)", p);
				goto fail;
			}
			a->block_axis[a->n_block++] = k->i;
			continue;
		}
		if (k->kind != CAL_Y_STR) {
			st = at_err(err, CAL_ERR_FORMAT, k, "%s: keys are axes (integers) or "
				    "type/scale_bits/scale_block_sizes/four_over_six", path);
			goto fail;
		}
		CAL_TRY(key_path(err, k, path, &p));
		if (!strcmp(k->str, "type")) {
			CAL_TRY(get_dynamic(err, v, p, &a->block_dynamic));
		} else if (!strcmp(k->str, "scale_bits")) {
			a->has_scale_bits = 1;
			CAL_TRY(get_bits(err, v, p, 1, &a->scale_num_bits, &a->scale_fp_e, &a->scale_fp_m));
		} else if (!strcmp(k->str, "scale_block_sizes")) {
			if (v->kind != CAL_Y_MAP && v->kind != CAL_Y_NULL) {
				st = want(err, v, p, "a mapping");
				goto fail;
			}
			a->has_scale_block_sizes = v->kind == CAL_Y_MAP;
		} else if (!strcmp(k->str, "four_over_six")) {
			CAL_TRY(get_bool(err, v, p, &a->four_over_six));
		} else {
			st = unknown_key(err, k, path, "integer axes, type, scale_bits, "
					 "scale_block_sizes, four_over_six");
			goto fail;
		}
	}
	if (a->block_dynamic && a->n_block != 1) {
		st = at_err(err, CAL_ERR_FORMAT, b, "%s: dynamic block quantization needs exactly "
			    "one block axis, %d given", path, a->n_block);
		goto fail;
	}
fail:
	free(p);
	return st;
}

static const char attr_keys[] =
	"enable, num_bits, axis, block_sizes, type, fake_quant, unsigned, narrow_range, "
	"learn_amax, calibrator, bias, rotate, pass_through_bwd, trt_high_precision_dtype, "
	"backend, backend_extra_args, use_constant_amax, constant_amax, effective_bits";

#define QA(field) offsetof(struct cal_qattr, field)
static const struct plain_key attr_plain[] = {
	{.key = "enable", .kind = PK_BOOL, .off = QA(enable)},
	{.key = "fake_quant", .kind = PK_BOOL, .off = QA(fake_quant)},
	{.key = "unsigned", .kind = PK_BOOL, .off = QA(is_unsigned)},
	{.key = "narrow_range", .kind = PK_BOOL, .off = QA(narrow_range)},
	{.key = "learn_amax", .kind = PK_BOOL, .off = QA(learn_amax)},
	{.key = "pass_through_bwd", .kind = PK_BOOL, .off = QA(pass_through_bwd)},
	{.key = "use_constant_amax", .kind = PK_BOOL, .off = QA(use_constant_amax)},
	{.key = "calibrator", .kind = PK_STR, .off = QA(calibrator)},
	{.key = "trt_high_precision_dtype", .kind = PK_STR, .off = QA(trt_high_precision_dtype)},
	{.key = "backend", .kind = PK_STR, .off = QA(backend), .nullable = 1},
};
#undef QA

/* One QuantizerAttributeConfig mapping into *a (defaults first). */
static enum cal_status conv_attr(struct cal_error *err, const struct cal_ynode *m,
				 const char *path, struct cal_qattr *a)
{
	enum cal_status st = CAL_OK;
	char *p = NULL;
	qattr_defaults(a);
	if (m->kind != CAL_Y_MAP)
		return want(err, m, path, "a mapping of quantizer attributes");
	for (size_t i = 0; i < m->n; i++) {
		const struct cal_ynode *k = m->items[2 * i], *v = m->items[2 * i + 1];
		CAL_TRY(key_path(err, k, path, &p));
		const char *key = k->str;
		const struct plain_key *pk = plain_find(attr_plain, CAL_ARRAY_LEN(attr_plain), key,
							CAL_CALIB_NONE);
		if (pk) {
			CAL_TRY(plain_get(err, pk, v, p, a));
		} else if (!strcmp(key, "num_bits")) {
			CAL_TRY(get_bits(err, v, p, 0, &a->num_bits, &a->fp_e, &a->fp_m));
		} else if (!strcmp(key, "axis")) {
			a->n_axis = 0;
			if (v->kind == CAL_Y_INT) {
				a->axis[a->n_axis++] = v->i;
			} else if (v->kind == CAL_Y_SEQ && v->n <= 8) {
				for (size_t j = 0; j < v->n; j++) {
					if (v->items[j]->kind != CAL_Y_INT) {
						st = want(err, v->items[j], p, "an integer axis");
						goto fail;
					}
					a->axis[a->n_axis++] = v->items[j]->i;
				}
			} else if (v->kind != CAL_Y_NULL) {
				st = want(err, v, p, "null, an integer or a list of integers");
				goto fail;
			}
		} else if (!strcmp(key, "block_sizes")) {
			CAL_TRY(conv_block_sizes(err, v, p, a));
		} else if (!strcmp(key, "type")) {
			CAL_TRY(get_dynamic(err, v, p, &a->dynamic));
		} else if (!strcmp(key, "backend_extra_args")) {
			if (v->kind != CAL_Y_NULL && v->kind != CAL_Y_MAP) {
				st = want(err, v, p, "a mapping or null");
				goto fail;
			}
		} else if (!strcmp(key, "bias")) {
			CAL_TRY(conv_bias(err, v, p, a));
		} else if (!strcmp(key, "rotate")) {
			CAL_TRY(conv_rotate(err, v, p, a));
		} else if (!strcmp(key, "constant_amax")) {
			if (v->kind != CAL_Y_NULL) {
				CAL_TRY(get_num(err, v, p, &a->constant_amax));
				if (!(a->constant_amax > 0) || isinf(a->constant_amax)) {
					st = at_err(err, CAL_ERR_FORMAT, v, "%s: must be a positive "
						    "finite number", p);
					goto fail;
				}
				a->has_constant_amax = 1;
			}
		} else if (!strcmp(key, "effective_bits")) {
			if (v->kind != CAL_Y_NULL) {
				CAL_TRY(get_num(err, v, p, &a->effective_bits));
				a->has_effective_bits = 1;
			}
		} else {
			st = unknown_key(err, k, path, attr_keys);
			goto fail;
		}
	}
	if (a->has_block && a->n_axis) {
		st = at_err(err, CAL_ERR_FORMAT, m, "%s: axis and block_sizes cannot both be set", path);
		goto fail;
	}
	if (a->use_constant_amax && a->has_constant_amax) {
		st = at_err(err, CAL_ERR_FORMAT, m, "%s: use_constant_amax and constant_amax are "
			    "exclusive", path);
		goto fail;
	}
	if (a->fp_e >= 0 && !((a->fp_e == 4 && a->fp_m == 3) || (a->fp_e == 2 && a->fp_m == 1)) &&
	    !(a->has_block && a->block_dynamic)) {
		st = at_err(err, CAL_ERR_FORMAT, m, "%s: E%dM%d is only accepted with dynamic block "
			    "quantization (block_sizes.type: dynamic)", path, a->fp_e, a->fp_m);
		goto fail;
	}
	CAL_TRY(fill_string_defaults(err, a));
fail:
	free(p);
	return st;
}

static const char entry_keys[] = "quantizer_name, parent_class, cfg, enable";

static enum cal_status conv_entry(struct cal_error *err, const struct cal_ynode *m,
				  const char *path, struct cal_qentry *e)
{
	enum cal_status st = CAL_OK;
	char *p = NULL;
	const struct cal_ynode *cfg = NULL, *en = NULL, *name = NULL;
	size_t len = 0, cap = 0;
	e->enable = 1;
	if (asprintf(&e->where, "%s:%d:%d", m->file ? m->file : "?", m->line, m->col) < 0) {
		e->where = NULL;
		return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
	}
	if (m->kind != CAL_Y_MAP)
		return want(err, m, path, "a mapping (quantizer_name, cfg, enable)");
	for (size_t i = 0; i < m->n; i++) {
		const struct cal_ynode *k = m->items[2 * i], *v = m->items[2 * i + 1];
		CAL_TRY(key_path(err, k, path, &p));
		if (!strcmp(k->str, "quantizer_name")) {
			name = v;
			CAL_TRY(get_str(err, v, p, &e->quantizer_name));
			if (!*e->quantizer_name) {
				st = at_err(err, CAL_ERR_FORMAT, v, "%s: empty pattern", p);
				goto fail;
			}
		} else if (!strcmp(k->str, "parent_class")) {
			if (v->kind != CAL_Y_NULL)
				CAL_TRY(get_str(err, v, p, &e->parent_class));
		} else if (!strcmp(k->str, "cfg")) {
			cfg = v;
		} else if (!strcmp(k->str, "enable")) {
			en = v;
			CAL_TRY(get_bool(err, v, p, &e->enable));
		} else {
			st = unknown_key(err, k, path, entry_keys);
			goto fail;
		}
	}
	if (!name) {
		st = at_err(err, CAL_ERR_FORMAT, m, "%s: quantizer_name is required", path);
		goto fail;
	}
	if (cfg && cfg->kind == CAL_Y_NULL)
		cfg = NULL;
	if (!cfg && !en) {
		st = at_err(err, CAL_ERR_FORMAT, m, "%s: an entry needs 'cfg' or 'enable'", path);
		goto fail;
	}
	free(p);
	p = subpath(path, "cfg");
	if (!p) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
		goto fail;
	}
	if (cfg) {
		if (cfg->kind != CAL_Y_MAP && cfg->kind != CAL_Y_SEQ) {
			st = want(err, cfg, p, "a mapping of attributes or a list of them");
			goto fail;
		}
		if (cfg->n == 0) {
			if (e->enable) {
				st = at_err(err, CAL_ERR_FORMAT, cfg, "%s: an empty cfg needs "
					    "'enable: false'", p);
				goto fail;
			}
		} else {
			size_t n = cfg->kind == CAL_Y_MAP ? 1 : cfg->n;
			e->cfg = calloc(n, sizeof(*e->cfg));
			if (!e->cfg) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
				goto fail;
			}
			e->has_cfg = 1;
			if (cfg->kind == CAL_Y_MAP) {
				e->n_cfg = 1;
				CAL_TRY(conv_attr(err, cfg, p, &e->cfg[0]));
			} else {
				for (size_t i = 0; i < n; i++) {
					char *pi = NULL;
					if (asprintf(&pi, "%s[%zu]", p, i) < 0) {
						st = cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
						goto fail;
					}
					e->n_cfg = i + 1;
					st = conv_attr(err, cfg->items[i], pi, &e->cfg[i]);
					free(pi);
					if (st < 0)
						goto fail;
				}
			}
			for (size_t i = 0; i < e->n_cfg; i++)
				e->cfg[i].enable = e->enable;
		}
	}
	/* canonical text: 'pattern'[ parent_class=X][ cfg={...}] enable=B */
	char *buf = NULL;
	int bad = cal_ybuf_puts(&buf, &len, &cap, "'") < 0 ||
		  cal_ybuf_puts(&buf, &len, &cap, e->quantizer_name) < 0 ||
		  cal_ybuf_puts(&buf, &len, &cap, "'") < 0;
	if (!bad && e->parent_class)
		bad = cal_ybuf_puts(&buf, &len, &cap, " parent_class=") < 0 ||
		      cal_ybuf_puts(&buf, &len, &cap, e->parent_class) < 0;
	if (!bad && e->has_cfg)
		bad = cal_ybuf_puts(&buf, &len, &cap, " cfg=") < 0 ||
		      cal_ynode_render(cfg, &buf, &len, &cap) < 0;
	if (!bad)
		bad = cal_ybuf_puts(&buf, &len, &cap, e->enable ? " enable=true" : " enable=false") < 0;
	if (bad) {
		free(buf);
		st = cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
		goto fail;
	}
	e->text = buf;
fail:
	free(p);
	return st;
}

static void algo_defaults(struct cal_algorithm *a)
{
	static const struct cal_algorithm defaults = {
		.method = CAL_CALIB_MAX, .distributed_sync = 1, .layerwise_save_every = 1,
		.layerwise_calib_mutates_weights = 1, .step_size = 0.1, .start_multiplier = 0.25,
		.stop_multiplier = 4.0, .perc_damp = 0.01, .gptq_block_size = 128,
		.alpha_step = 0.1, .clip_max_co_batch = 1024, .clip_max_tokens = 64,
		.clip_min_ratio = 0.5, .clip_shrink_step = 0.05, .sq_alpha = 1.0, .hr_anchor_percentile = 1.0,
		.hr_upper_percentile = 99.99, .hr_rho = 16384.0,
	};
	*a = defaults;
}

static enum cal_status set_algo_name(struct cal_error *err, struct cal_algorithm *a,
				     const char *name)
{
	free(a->name);
	a->name = strdup(name);
	if (!a->name)
		return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
	static const struct {
		const char *name;
		enum cal_calib_method method;
	} methods[] = {
		{"max", CAL_CALIB_MAX}, {"mse", CAL_CALIB_MSE}, {"none", CAL_CALIB_NONE},
		{"gptq", CAL_CALIB_GPTQ}, {"awq_lite", CAL_CALIB_AWQ_LITE},
		{"awq_full", CAL_CALIB_AWQ_LITE}, /* awq_lite, then awq_clip */
		{"awq_clip", CAL_CALIB_AWQ_LITE}, /* awq_clip alone */
		{"nvfp4_act_headroom", CAL_CALIB_HEADROOM}, {"smoothquant", CAL_CALIB_SMOOTHQUANT},
	};
	a->method = CAL_CALIB_OTHER;
	a->awq_clip = !strcmp(name, "awq_full") || !strcmp(name, "awq_clip");
	a->awq_no_search = !strcmp(name, "awq_clip");
	for (size_t i = 0; i < CAL_ARRAY_LEN(methods); i++)
		if (!strcmp(name, methods[i].name))
			a->method = methods[i].method;
	return CAL_OK;
}

#define AL(field) offsetof(struct cal_algorithm, field)
static const struct plain_key layerwise_plain[] = {
	{.key = "enable", .kind = PK_BOOL, .off = AL(layerwise)},
	{.key = "calib_mutates_weights", .kind = PK_BOOL,
	 .off = AL(layerwise_calib_mutates_weights)},
	{.key = "checkpoint_dir", .kind = PK_STR, .off = AL(layerwise_checkpoint_dir),
	 .nullable = 1},
};

/* The algorithm's keys read as they stand (conv_algorithm has the others). */
static const struct plain_key algo_plain[] = {
	{.key = "distributed_sync", .kind = PK_BOOL, .off = AL(distributed_sync)},
	{.key = "sync_expert_weight_amax", .kind = PK_BOOL, .off = AL(sync_expert_weight_amax)},
	{.key = "skip_forward_without_activation_calib", .kind = PK_BOOL,
	 .off = AL(skip_forward_without_activation_calib)},
	{.key = "anchor_percentile", .kind = PK_NUM, .off = AL(hr_anchor_percentile),
	 .method = CAL_CALIB_HEADROOM, .lo = 0, .hi = 100},
	{.key = "upper_percentile", .kind = PK_NUM, .off = AL(hr_upper_percentile),
	 .method = CAL_CALIB_HEADROOM, .lo = 0, .hi = 100},
	{.key = "rho", .kind = PK_NUM, .off = AL(hr_rho), .method = CAL_CALIB_HEADROOM, .lo = 0,
	 .hi = 28672, .hi_open = 1},
	{.key = "step_size", .kind = PK_NUM, .off = AL(step_size), .method = CAL_CALIB_MSE},
	{.key = "start_multiplier", .kind = PK_NUM, .off = AL(start_multiplier),
	 .method = CAL_CALIB_MSE},
	{.key = "stop_multiplier", .kind = PK_NUM, .off = AL(stop_multiplier),
	 .method = CAL_CALIB_MSE},
	{.key = "fp8_scale_sweep", .kind = PK_BOOL, .off = AL(fp8_scale_sweep),
	 .method = CAL_CALIB_MSE},
	{.key = "perc_damp", .kind = PK_NUM, .off = AL(perc_damp), .method = CAL_CALIB_GPTQ,
	 .nullable = 1, .lo = 0, .hi = 1},
	{.key = "fused", .kind = PK_BOOL, .off = AL(gptq_fused), .method = CAL_CALIB_GPTQ},
	{.key = "alpha_step", .kind = PK_NUM, .off = AL(alpha_step), .method = CAL_CALIB_AWQ_LITE,
	 .nullable = 1, .lo = 0, .hi = 1},
	{.key = "alpha", .kind = PK_NUM, .off = AL(sq_alpha), .method = CAL_CALIB_SMOOTHQUANT,
	 .nullable = 1, .lo = 0, .hi = 1, .lo_closed = 1},
};

/* awq_full's own keys (awq_clip's; the method is CAL_CALIB_AWQ_LITE). */
static const struct plain_key clip_plain[] = {
	{.key = "min_clip_ratio", .kind = PK_NUM, .off = AL(clip_min_ratio), .nullable = 1,
	 .lo = 0, .hi = 1},
	{.key = "shrink_step", .kind = PK_NUM, .off = AL(clip_shrink_step), .nullable = 1,
	 .lo = 0, .hi = 1},
};
#undef AL

static enum cal_status conv_layerwise(struct cal_error *err, const struct cal_ynode *v,
				      const char *path, struct cal_algorithm *a)
{
	enum cal_status st = CAL_OK;
	char *p = NULL;
	if (v->kind == CAL_Y_BOOL) {
		a->layerwise = (int)v->i;
		return CAL_OK;
	}
	if (v->kind == CAL_Y_NULL)
		return CAL_OK;
	if (v->kind != CAL_Y_MAP)
		return want(err, v, path, "a mapping (enable, ...)");
	for (size_t i = 0; i < v->n; i++) {
		const struct cal_ynode *k = v->items[2 * i], *x = v->items[2 * i + 1];
		CAL_TRY(key_path(err, k, path, &p));
		const struct plain_key *pk = plain_find(layerwise_plain,
							CAL_ARRAY_LEN(layerwise_plain), k->str,
							CAL_CALIB_NONE);
		if (pk) {
			CAL_TRY(plain_get(err, pk, x, p, a));
		} else if (!strcmp(k->str, "get_qdq_activations_from_prev_layer")) {
			CAL_TRY(get_bool(err, x, p, &a->layerwise_qdq_from_prev));
			a->has_layerwise_qdq_from_prev = 1;
		} else if (!strcmp(k->str, "save_every")) {
			if (x->kind != CAL_Y_INT || x->i < 1) {
				st = want(err, x, p, "a positive integer");
				goto fail;
			}
			a->layerwise_save_every = x->i;
		} else {
			st = unknown_key(err, k, path, "enable, get_qdq_activations_from_prev_layer, "
					 "checkpoint_dir, save_every, calib_mutates_weights");
			goto fail;
		}
	}
	if (a->layerwise_checkpoint_dir && !a->layerwise) {
		st = at_err(err, CAL_ERR_FORMAT, v, "%s: checkpoint_dir requires enable: true", path);
		goto fail;
	}
fail:
	free(p);
	return st;
}

static enum cal_status conv_algorithm(struct cal_error *err, const struct cal_ynode *v,
				      const char *path, struct cal_algorithm *a)
{
	enum cal_status st = CAL_OK;
	char *p = NULL;
	if (!v)
		return set_algo_name(err, a, "max");
	if (v->kind == CAL_Y_NULL)
		return set_algo_name(err, a, "none");
	if (v->kind == CAL_Y_STR)
		return set_algo_name(err, a, v->str);
	if (v->kind == CAL_Y_SEQ)
		return set_algo_name(err, a, "list");
	if (v->kind != CAL_Y_MAP)
		return want(err, v, path, "a method name, a mapping with 'method', or null");
	const struct cal_ynode *meth = cal_ymap_get(v, "method");
	if (meth && meth->kind != CAL_Y_STR)
		return want(err, meth, "quantize.algorithm.method", "a string");
	CAL_TRY(set_algo_name(err, a, meth ? meth->str : "max"));
	if (a->method == CAL_CALIB_OTHER || a->method == CAL_CALIB_NONE)
		return CAL_OK; /* fields of algorithms calibd does not run are not checked */
	int mse = a->method == CAL_CALIB_MSE, gptq = a->method == CAL_CALIB_GPTQ;
	int awq = a->method == CAL_CALIB_AWQ_LITE;
	int hr = a->method == CAL_CALIB_HEADROOM;
	int sq = a->method == CAL_CALIB_SMOOTHQUANT;
	for (size_t i = 0; i < v->n; i++) {
		const struct cal_ynode *k = v->items[2 * i], *x = v->items[2 * i + 1];
		CAL_TRY(key_path(err, k, path, &p));
		const char *key = k->str;
		double d = 0;
		const struct plain_key *pk = plain_find(algo_plain, CAL_ARRAY_LEN(algo_plain), key,
							a->method);
		if (pk && a->awq_no_search && !strcmp(key, "alpha_step"))
			pk = NULL; /* awq_clip alone has no scale search */
		if (pk) {
			CAL_TRY(plain_get(err, pk, x, p, a));
		} else if (!strcmp(key, "method") || !strcmp(key, "shared_states")) {
			continue;
		} else if (!strcmp(key, "moe_calib_experts_ratio")) {
			if (x->kind == CAL_Y_NULL)
				continue;
			CAL_TRY(get_num(err, x, p, &d));
			if (!(d > 0 && d <= 1)) {
				st = at_err(err, CAL_ERR_FORMAT, x, "%s: must be in (0, 1]", p);
				goto fail;
			}
			a->has_moe_calib_experts_ratio = 1;
			a->moe_calib_experts_ratio = d;
		} else if (!strcmp(key, "layerwise")) {
			CAL_TRY(conv_layerwise(err, x, p, a));
		} else if (hr && !strcmp(key, "weight_scale_algorithm")) {
			/* calibd runs max weight scales only under this algorithm */
			const struct cal_ynode *wm = x->kind == CAL_Y_MAP ? cal_ymap_get(x, "method")
							 : x->kind == CAL_Y_STR ? x : NULL;
			if (x->kind == CAL_Y_NULL)
				continue;
			if (!wm || wm->kind != CAL_Y_STR || strcmp(wm->str, "max") ||
			    (x->kind == CAL_Y_MAP && x->n != 1)) {
				st = at_err(err, CAL_ERR_UNSUPPORTED, x, "%s: only {method: max} is "
					    "implemented", p);
				goto fail;
			}
		} else if (awq && a->awq_clip &&
			   (pk = plain_find(clip_plain, CAL_ARRAY_LEN(clip_plain), key,
					    CAL_CALIB_NONE))) {
			CAL_TRY(plain_get(err, pk, x, p, a));
		} else if (awq && a->awq_clip && (!strcmp(key, "max_co_batch_size") ||
						  !strcmp(key, "max_tokens_per_batch"))) {
			if (x->kind == CAL_Y_NULL)
				continue;
			if (x->kind != CAL_Y_INT || x->i < 1 || x->i > 1048576) {
				st = want(err, x, p, "a positive integer (at most 1048576)");
				goto fail;
			}
			if (!strcmp(key, "max_co_batch_size"))
				a->clip_max_co_batch = x->i;
			else
				a->clip_max_tokens = x->i;
		} else if (gptq && !strcmp(key, "block_size")) {
			if (x->kind == CAL_Y_NULL)
				continue;
			if (x->kind != CAL_Y_INT || x->i < 1 || x->i > 65536) {
				st = want(err, x, p, "a positive integer (at most 65536)");
				goto fail;
			}
			a->gptq_block_size = x->i;
		} else {
			/* the keys every method takes, then the method's own */
#define ALGO_KEYS "method, distributed_sync, sync_expert_weight_amax, " \
		  "skip_forward_without_activation_calib, shared_states, " \
		  "moe_calib_experts_ratio, layerwise"
			st = unknown_key(err, k, path,
					 mse ? ALGO_KEYS ", step_size, start_multiplier, "
						       "stop_multiplier, fp8_scale_sweep"
					 : gptq ? ALGO_KEYS ", perc_damp, block_size, fused"
					 : awq && a->awq_no_search
					 ? ALGO_KEYS ", max_co_batch_size, max_tokens_per_batch, "
						     "min_clip_ratio, shrink_step"
					 : awq && a->awq_clip
					 ? ALGO_KEYS ", alpha_step, max_co_batch_size, "
						     "max_tokens_per_batch, min_clip_ratio, shrink_step"
					 : awq ? ALGO_KEYS ", alpha_step"
					 : sq ? ALGO_KEYS ", alpha"
					 : hr ? ALGO_KEYS ", anchor_percentile, upper_percentile, rho, "
							  "weight_scale_algorithm"
					      : ALGO_KEYS);
#undef ALGO_KEYS
			goto fail;
		}
	}
	/* GPTQCalibConfig: layerwise GPTQ feeds each layer the previous one's
	 * quantized outputs unless the recipe says otherwise */
	if (gptq && !a->has_layerwise_qdq_from_prev)
		a->layerwise_qdq_from_prev = 1;
	if (mse && !(a->step_size > 0 && a->start_multiplier > 0 &&
		     a->stop_multiplier >= a->start_multiplier)) {
		st = at_err(err, CAL_ERR_FORMAT, v, "%s: mse needs step_size > 0 and "
			    "0 < start_multiplier <= stop_multiplier", path);
		goto fail;
	}
fail:
	free(p);
	return st;
}

static enum cal_status conv_quantize(struct cal_error *err, const struct cal_ynode *q,
				     struct cal_recipe *r)
{
	enum cal_status st = CAL_OK;
	const struct cal_ynode *list = NULL, *algo = NULL;
	if (q->kind != CAL_Y_MAP)
		return want(err, q, "quantize", "a mapping (algorithm, quant_cfg)");
	for (size_t i = 0; i < q->n; i++) {
		const struct cal_ynode *k = q->items[2 * i], *v = q->items[2 * i + 1];
		if (k->kind == CAL_Y_STR && !strcmp(k->str, "quant_cfg"))
			list = v;
		else if (k->kind == CAL_Y_STR && !strcmp(k->str, "algorithm"))
			algo = v;
		else if (k->kind == CAL_Y_STR && !strcmp(k->str, "effective_bits")) {
			if (v->kind != CAL_Y_NULL) {
				CAL_TRY(get_num(err, v, "quantize.effective_bits", &r->effective_bits));
				r->has_effective_bits = 1;
			}
		} else
			return unknown_key(err, k, "quantize", "algorithm, quant_cfg, effective_bits");
	}
	CAL_TRY(conv_algorithm(err, algo, "quantize.algorithm", &r->algo));
	if (list && list->kind != CAL_Y_NULL) {
		if (list->kind != CAL_Y_SEQ)
			return want(err, list, "quantize.quant_cfg", "a list of entries");
		if (list->n > CAL_RECIPE_MAX_ENTRIES)
			return at_err(err, CAL_ERR_RANGE, list, "quantize.quant_cfg: %zu entries "
				      "(limit %d)", list->n, CAL_RECIPE_MAX_ENTRIES);
		r->entries = calloc(list->n ? list->n : 1, sizeof(*r->entries));
		if (!r->entries)
			return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
		for (size_t i = 0; i < list->n; i++) {
			char *p = NULL;
			if (asprintf(&p, "quantize.quant_cfg[%zu]", i) < 0)
				return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
			r->n_entries = i + 1;
			st = conv_entry(err, list->items[i], p, &r->entries[i]);
			free(p);
			if (st < 0)
				return st;
		}
	}
fail:
	return st;
}

static const char *const recipe_types[] = {"ptq", "auto_quantize", "speculative_eagle",
					   "speculative_dflash", "speculative_medusa"};

static enum cal_status conv_metadata(struct cal_error *err, const struct cal_ynode *m,
				     struct cal_recipe *r)
{
	enum cal_status st = CAL_OK;
	const struct cal_ynode *rt = NULL;
	if (m->kind != CAL_Y_MAP)
		return want(err, m, "metadata", "a mapping (recipe_type, description)");
	for (size_t i = 0; i < m->n; i++) {
		const struct cal_ynode *k = m->items[2 * i], *v = m->items[2 * i + 1];
		if (k->kind == CAL_Y_STR && !strcmp(k->str, "recipe_type")) {
			rt = v;
			CAL_TRY(get_str(err, v, "metadata.recipe_type", &r->recipe_type));
		} else if (k->kind == CAL_Y_STR && !strcmp(k->str, "description")) {
			if (v->kind != CAL_Y_NULL)
				CAL_TRY(get_str(err, v, "metadata.description", &r->description));
		} else {
			return unknown_key(err, k, "metadata", "recipe_type, description");
		}
	}
	if (!rt)
		return at_err(err, CAL_ERR_FORMAT, m, "metadata.recipe_type is required");
	int known = 0;
	for (size_t i = 0; i < CAL_ARRAY_LEN(recipe_types); i++)
		known |= !strcmp(r->recipe_type, recipe_types[i]);
	if (!known)
		return at_err(err, CAL_ERR_FORMAT, rt, "metadata.recipe_type: '%s' is not one of "
			      "ptq, auto_quantize, speculative_eagle, speculative_dflash, "
			      "speculative_medusa", r->recipe_type);
	if (strcmp(r->recipe_type, "ptq"))
		return at_err(err, CAL_ERR_UNSUPPORTED, rt, "metadata.recipe_type: '%s' recipes "
			      "are not run by calibd (ptq only)", r->recipe_type);
fail:
	return st;
}

static enum cal_status conv_recipe(struct cal_error *err, const struct cal_ynode *root,
				   const char *file, struct cal_recipe *r)
{
	enum cal_status st = CAL_OK;
	const struct cal_ynode *meta = NULL, *quant = NULL;
	if (root->kind != CAL_Y_MAP)
		return at_err(err, CAL_ERR_FORMAT, root, "a recipe is a mapping with metadata and "
			      "quantize, got a %s", cal_ykind_name(root->kind));
	for (size_t i = 0; i < root->n; i++) {
		const struct cal_ynode *k = root->items[2 * i];
		if (k->kind == CAL_Y_STR && !strcmp(k->str, "metadata"))
			meta = root->items[2 * i + 1];
		else if (k->kind == CAL_Y_STR && !strcmp(k->str, "quantize"))
			quant = root->items[2 * i + 1];
		else
			return unknown_key(err, k, "", "metadata, quantize, imports");
	}
	if (!meta)
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: not a recipe: metadata.recipe_type "
				     "is missing", file);
	CAL_TRY(conv_metadata(err, meta, r));
	if (!quant)
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: a ptq recipe needs a top-level "
				     "'quantize' key", file);
	CAL_TRY(conv_quantize(err, quant, r));
fail:
	return st;
}

/* ---- public ------------------------------------------------------------- */

void cal_recipe_free(struct cal_recipe *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n_entries; i++) {
		struct cal_qentry *e = &r->entries[i];
		free(e->quantizer_name);
		free(e->parent_class);
		for (size_t j = 0; j < e->n_cfg; j++)
			qattr_clear(&e->cfg[j]);
		CAL_FREE_ALL(e->cfg, e->where, e->text);
	}
	CAL_FREE_ALL(r->entries, r->source, r->recipe_type, r->description, r->algo.name,
		     r->algo.layerwise_checkpoint_dir, r);
}

const struct cal_qattr *cal_qattr_default(void)
{
	static const struct cal_qattr d = {
		.enable = 1, .num_bits = 8, .fp_e = -1, .fp_m = -1, .scale_fp_e = -1,
		.scale_fp_m = -1, .fake_quant = 1, .pass_through_bwd = 1,
		.calibrator = (char *)"max", .trt_high_precision_dtype = (char *)"Float",
	};
	return &d;
}

const char *cal_recipe_builtin_dir(void)
{
	const char *e = getenv(CAL_RECIPES_ENV);
	if (e && *e)
		return e;
	if (is_dir(CAL_RECIPES_DIR))
		return CAL_RECIPES_DIR;
	return CAL_RECIPES_INSTALL_DIR;
}

static void loader_init(struct loader *L, const struct cal_recipe_opts *o, struct cal_error *err)
{
	memset(L, 0, sizeof(*L));
	L->builtin = o && o->builtin_dir ? o->builtin_dir : cal_recipe_builtin_dir();
	L->no_fs = o ? o->no_filesystem : 0;
	L->nodes_left = CAL_RECIPE_MAX_NODES;
	L->err = err;
}

static struct cal_recipe *recipe_new(const char *source)
{
	struct cal_recipe *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	algo_defaults(&r->algo);
	r->source = strdup(source);
	r->description = strdup("");
	if (!r->source || !r->description) {
		cal_recipe_free(r);
		return NULL;
	}
	return r;
}

static enum cal_status load_file_recipe(struct loader *L, const char *path, struct cal_recipe **ret)
{
	enum cal_status st;
	struct cal_ynode *tree = NULL;
	struct cal_recipe *r = recipe_new(path);
	if (!r)
		return nomem(L);
	CAL_TRY(load_tree(L, path, YT_RECIPE, 0, &tree, NULL));
	CAL_TRY(conv_recipe(L->err, tree, path, r));
	cal_ynode_free(tree);
	*ret = r;
	return CAL_OK;
fail:
	cal_ynode_free(tree);
	cal_recipe_free(r);
	return st;
}

static char *dir_member(const char *dir, const char *base)
{
	const char *suf[] = {".yml", ".yaml"};
	for (int i = 0; i < 2; i++) {
		char *p = NULL;
		if (asprintf(&p, "%s/%s%s", dir, base, suf[i]) < 0)
			return NULL;
		if (is_file(p))
			return p;
		free(p);
	}
	return NULL;
}

static enum cal_status load_dir_recipe(struct loader *L, const char *dir, struct cal_recipe **ret)
{
	enum cal_status st = CAL_OK;
	struct cal_ynode *meta = NULL, *quant = NULL;
	char *mp = dir_member(dir, "metadata"), *qp = dir_member(dir, "quantize");
	struct cal_recipe *r = recipe_new(dir);
	if (!r) {
		st = nomem(L);
		goto fail;
	}
	if (!mp || !qp) {
		st = cal_error_set(L->err, CAL_ERR_FORMAT, "%s: a recipe directory needs "
				   "metadata.yaml and quantize.yaml", dir);
		goto fail;
	}
	CAL_TRY(load_tree(L, mp, YT_OTHER, 0, &meta, NULL));
	CAL_TRY(conv_metadata(L->err, meta, r));
	CAL_TRY(load_tree(L, qp, YT_QCONFIG, 0, &quant, NULL));
	CAL_TRY(conv_quantize(L->err, quant, r));
	*ret = r;
	r = NULL;
fail:
	cal_ynode_free(meta);
	cal_ynode_free(quant);
	cal_recipe_free(r);
	free(mp);
	free(qp);
	return st;
}

enum cal_status cal_recipe_load(const char *name, const struct cal_recipe_opts *opts,
				struct cal_recipe **ret, struct cal_error *err)
{
	struct loader L;
	enum cal_status st = CAL_OK;
	char *cand[6] = {0};
	int nc = 0;
	*ret = NULL;
	if (!name || !*name)
		return cal_error_set(err, CAL_ERR_INVALID, "recipe: empty recipe name");
	loader_init(&L, opts, err);
	int abs = name[0] == '/';
	int suf = has_yaml_suffix(name);
	if (L.no_fs && !rel_path_inside(name)) {
		st = cal_error_set(err, CAL_ERR_INVALID, "recipe '%s' %s: only recipes of the "
				   "recipe tree %s can be loaded", name,
				   abs ? "is an absolute path" : "leaves the recipe tree through '..'",
				   L.builtin);
		goto out;
	}
	/* modelopt load_recipe: built-in first, then the filesystem */
	for (int fs = 0; fs < 2; fs++) {
		if (fs == 0 && abs)
			continue;
		if (fs == 1 && L.no_fs && !abs)
			continue;
		char *base = fs ? strdup(name) : cat3(L.builtin, "/", name);
		if (!base)
			goto nomem;
		cand[nc++] = base;
		if (!suf) {
			if (!(cand[nc++] = cat3(base, ".yml", "")) ||
			    !(cand[nc++] = cat3(base, ".yaml", "")))
				goto nomem;
		}
	}
	for (int i = 0; i < nc; i++) {
		if (is_file(cand[i])) {
			st = load_file_recipe(&L, cand[i], ret);
			goto out;
		}
		if (is_dir(cand[i])) {
			st = load_dir_recipe(&L, cand[i], ret);
			goto out;
		}
	}
	st = cal_error_set(err, CAL_ERR_NOTFOUND, "recipe '%s' not found (looked in the built-in "
			   "recipes %s%s, then the filesystem%s)", name, L.builtin,
			   suf ? "" : " with .yml/.yaml suffixes", L.no_fs ? " (disabled)" : "");
	goto out;
nomem:
	st = nomem(&L);
out:
	for (int i = 0; i < nc; i++)
		free(cand[i]);
	files_free(L.files);
	free(L.builtin_real);
	return st;
}

enum cal_status cal_recipe_parse(const char *display, const char *text, size_t len,
				 const struct cal_recipe_opts *opts, struct cal_recipe **ret,
				 struct cal_error *err)
{
	struct loader L;
	enum cal_status st = CAL_OK;
	struct cal_ydocs docs = {0};
	struct cal_ynode *data = NULL, *tree = NULL;
	struct imptab tab = {0};
	struct cal_recipe *r = NULL;
	*ret = NULL;
	loader_init(&L, opts, err);
	const char *fname = intern_file(&L, display ? display : "<inline>");
	if (!fname || !(r = recipe_new(fname))) {
		st = nomem(&L);
		goto fail;
	}
	CAL_TRY(cal_ytree_parse(fname, text, len, &L.nodes_left, &docs, err));
	if (docs.n != 1) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: a recipe is one YAML document (%zu "
				   "found)", fname, docs.n);
		goto fail;
	}
	data = docs.doc[0];
	docs.doc[0] = NULL;
	if (data->kind == CAL_Y_MAP) {
		CAL_TRY(load_imports(&L, cal_ymap_get(data, "imports"), &tab));
		drop_imports(data);
	}
	CAL_TRY(resolve(&L, data, YT_RECIPE, &tab, &tree));
	CAL_TRY(conv_recipe(err, tree, fname, r));
	*ret = r;
	r = NULL;
fail:
	cal_recipe_free(r);
	imptab_clear(&tab);
	cal_ynode_free(data);
	cal_ynode_free(tree);
	cal_ydocs_clear(&docs);
	files_free(L.files);
	free(L.builtin_real);
	return st;
}
