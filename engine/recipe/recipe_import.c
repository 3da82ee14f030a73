/*
 * recipe_import.c — the first half of the recipe loader: finding recipe
 * files, confining them to the recipe tree (no_filesystem), and resolving
 * `imports:` / `$import` (docs/recipes.md).  recipe_load.c validates the
 * resolved tree; recipe_import.h is what the two share.
 *
 * Import resolution works on located YAML trees (ytree.h): every imported
 * file is parsed, its own imports resolved, and its value copied where it is
 * referenced, so nodes keep the file:line:col they were written at and
 * errors point into the snippet that holds the mistake.
 */
#include "recipe_import.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"

static const struct {
	const char *path;
	enum ytype t;
} schemas[] = {
	{"modelopt.torch.quantization.config.QuantizerAttributeConfig", YT_ATTR},
	{"modelopt.torch.quantization.config.QuantizerCfgEntry", YT_CFG_ENTRY},
	{"modelopt.torch.quantization.config.QuantizerCfgListConfig", YT_CFG_LIST},
	{"modelopt.torch.quantization.config.QuantizeConfig", YT_QCONFIG},
};

static const char *ytype_name(enum ytype t)
{
	switch (t) {
	case YT_ATTR: return "QuantizerAttributeConfig";
	case YT_CFG_ENTRY: return "QuantizerCfgEntry";
	case YT_CFG_LIST: return "QuantizerCfgListConfig";
	case YT_QCONFIG: return "QuantizeConfig";
	case YT_RECIPE: return "recipe";
	case YT_CFG: return "cfg";
	default: return "untyped";
	}
}


void imptab_clear(struct imptab *t)
{
	for (size_t i = 0; i < t->n; i++) {
		free(t->v[i].name);
		free(t->v[i].path);
		cal_ynode_free(t->v[i].val);
	}
	free(t->v);
	t->v = NULL;
	t->n = 0;
}

enum cal_status nomem(struct loader *L)
{
	return cal_error_set(L->err, CAL_ERR_NOMEM, "recipe: out of memory");
}

enum cal_status at_err(struct cal_error *err, enum cal_status st, const struct cal_ynode *n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *msg = NULL;
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (!msg)
		return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
	if (n && n->file)
		st = cal_error_set(err, st, "%s:%d:%d: %s", n->file, n->line, n->col, msg);
	else
		st = cal_error_set(err, st, "%s", msg);
	free(msg);
	return st;
}

const char *intern_file(struct loader *L, const char *path)
{
	struct lfile *f = calloc(1, sizeof(*f));
	if (!f || !(f->path = strdup(path))) {
		free(f);
		return NULL;
	}
	f->next = L->files;
	L->files = f;
	return f->path;
}

void files_free(struct lfile *f)
{
	while (f) {
		struct lfile *n = f->next;
		free(f->path);
		free(f);
		f = n;
	}
}

int is_file(const char *p)
{
	struct stat sb;
	return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

int is_dir(const char *p)
{
	struct stat sb;
	return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int has_yaml_suffix(const char *p)
{
	size_t n = strlen(p);
	return (n > 4 && !strcmp(p + n - 4, ".yml")) || (n > 5 && !strcmp(p + n - 5, ".yaml"));
}

char *cat3(const char *a, const char *b, const char *c)
{
	char *s = NULL;
	if (asprintf(&s, "%s%s%s", a, b, c) < 0)
		return NULL;
	return s;
}

/* ---- confinement (no_filesystem) ---------------------------------------- */

/* 1 when the relative path p, with "." and ".." folded lexically, stays
 * inside the directory it is taken from; 0 for absolute paths. */
int rel_path_inside(const char *p)
{
	long depth = 0;
	if (p[0] == '/')
		return 0;
	for (const char *s = p; *s;) {
		size_t n = strcspn(s, "/");
		if (n == 2 && s[0] == '.' && s[1] == '.') {
			if (--depth < 0)
				return 0;
		} else if (n && !(n == 1 && s[0] == '.')) {
			depth++;
		}
		s += n;
		if (*s == '/')
			s++;
	}
	return 1;
}

/*
 * No-filesystem mode: sets *ret_inside to 1 when `real` (a realpath) lies in
 * the recipe tree, symlinks of the tree itself resolved.  Errors: CAL_ERR_IO
 * / CAL_ERR_NOTFOUND when the tree does not resolve, CAL_ERR_NOMEM.
 */
static enum cal_status real_inside(struct loader *L, const char *real, int *ret_inside)
{
	if (!L->builtin_real) {
		L->builtin_real = realpath(L->builtin, NULL);
		if (!L->builtin_real)
			return cal_error_set(L->err, errno == ENOENT ? CAL_ERR_NOTFOUND :
					     errno == ENOMEM ? CAL_ERR_NOMEM : CAL_ERR_IO,
					     "recipe tree %s: %s", L->builtin, strerror(errno));
	}
	const char *root = L->builtin_real;
	size_t n = strlen(root);
	if (n == 1) /* "/" */
		n = 0;
	*ret_inside = !strncmp(real, root, n) && (real[n] == '/' || real[n] == '\0');
	return CAL_OK;
}

/* ---- import resolution -------------------------------------------------- */

/* `$import` names: a string or a list of strings. */
static enum cal_status import_names(struct loader *L, const struct cal_ynode *v,
				    const struct cal_ynode ***ret, size_t *n)
{
	if (v->kind == CAL_Y_STR) {
		*ret = malloc(sizeof(**ret));
		if (!*ret)
			return nomem(L);
		(*ret)[0] = v;
		*n = 1;
		return CAL_OK;
	}
	if (v->kind != CAL_Y_SEQ || v->n == 0)
		return at_err(L->err, CAL_ERR_FORMAT, v,
			      "$import: expected an import name or a list of names, got a %s",
			      cal_ykind_name(v->kind));
	*ret = malloc(v->n * sizeof(**ret));
	if (!*ret)
		return nomem(L);
	for (size_t i = 0; i < v->n; i++) {
		if (v->items[i]->kind != CAL_Y_STR) {
			free(*ret);
			*ret = NULL;
			return at_err(L->err, CAL_ERR_FORMAT, v->items[i],
				      "$import: import names must be strings");
		}
		(*ret)[i] = v->items[i];
	}
	*n = v->n;
	return CAL_OK;
}

static const struct imp *imp_find(const struct imptab *t, const char *name)
{
	for (size_t i = 0; i < t->n; i++)
		if (!strcmp(t->v[i].name, name))
			return &t->v[i];
	return NULL;
}

/* The import a `$import` name (node `name`) refers to, or an error naming it. */
static enum cal_status imp_get(struct cal_error *err, const struct imptab *t,
			       const struct cal_ynode *name, const struct imp **ret)
{
	if (!(*ret = imp_find(t, name->str)))
		return at_err(err, CAL_ERR_FORMAT, name,
			      "$import: '%s' is not declared under imports:", name->str);
	return CAL_OK;
}

static enum ytype child_type(enum ytype t, const char *key)
{
	switch (t) {
	case YT_RECIPE: return key && !strcmp(key, "quantize") ? YT_QCONFIG : YT_OTHER;
	case YT_QCONFIG: return key && !strcmp(key, "quant_cfg") ? YT_CFG_LIST : YT_OTHER;
	case YT_CFG_LIST: return YT_CFG_ENTRY;
	case YT_CFG_ENTRY: return key && !strcmp(key, "cfg") ? YT_CFG : YT_OTHER;
	case YT_CFG: return YT_ATTR; /* items of a cfg list */
	default: return YT_OTHER;
	}
}

/* Sets key -> val in MAP m (replacing in place, as dict.update does). */
/* m[key] = val (replacing an equal key's value; ownership of both taken
 * on success); ix indexes m's keys.  0, or -1 (no memory). */
static int map_set(struct cal_ynode *m, struct cal_ykeys *ix, struct cal_ynode *key, struct cal_ynode *val)
{
	long i = cal_ykeys_find(ix, m, key);
	if (i == -2)
		return -1;
	if (i >= 0) {
		cal_ynode_free(key);
		cal_ynode_free(m->items[2 * i + 1]);
		m->items[2 * i + 1] = val;
		return 0;
	}
	return cal_ynode_append(m, key, val);
}

static enum cal_status copy_node(struct loader *L, const struct cal_ynode *n,
				 struct cal_ynode **ret)
{
	*ret = cal_ynode_copy(n, &L->nodes_left);
	if (*ret)
		return CAL_OK;
	if (L->nodes_left == 0)
		return at_err(L->err, CAL_ERR_RANGE, n,
			      "recipe grows past %d YAML nodes through imports",
			      CAL_RECIPE_MAX_NODES);
	return nomem(L);
}

enum cal_status resolve(struct loader *L, const struct cal_ynode *n, enum ytype t,
			const struct imptab *tab, struct cal_ynode **ret)
{
	enum cal_status st = CAL_OK;
	struct cal_ynode *out = NULL, *k = NULL, *v = NULL;
	const struct cal_ynode **names = NULL;
	struct cal_ykeys keys = {0};
	size_t nn = 0;
	*ret = NULL;
	if (n->kind != CAL_Y_MAP && n->kind != CAL_Y_SEQ)
		return copy_node(L, n, ret);
	if (L->nodes_left == 0)
		return at_err(L->err, CAL_ERR_RANGE, n, "recipe grows past %d YAML nodes",
			      CAL_RECIPE_MAX_NODES);
	L->nodes_left--;
	out = cal_ynode_new(n->kind, n);
	if (!out)
		return nomem(L);
	out->exmy = n->exmy;
	if (n->kind == CAL_Y_MAP) {
		enum ytype mt = t == YT_CFG ? YT_ATTR : t;
		long ii = cal_ymap_find(n, "$import");
		if (ii >= 0) {
			CAL_TRY(import_names(L, n->items[2 * ii + 1], &names, &nn));
			for (size_t j = 0; j < nn; j++) {
				const struct imp *im;
				CAL_TRY(imp_get(L->err, tab, names[j], &im));
				if (im->val->kind != CAL_Y_MAP) {
					st = at_err(L->err, CAL_ERR_FORMAT, names[j],
						    "$import '%s' in a mapping needs a mapping snippet, "
						    "but %s holds a %s",
						    names[j]->str, im->path, cal_ykind_name(im->val->kind));
					goto fail;
				}
				for (size_t p = 0; p < im->val->n; p++) {
					CAL_TRY(copy_node(L, im->val->items[2 * p], &k));
					CAL_TRY(copy_node(L, im->val->items[2 * p + 1], &v));
					if (map_set(out, &keys, k, v) < 0) {
						st = nomem(L);
						goto fail;
					}
					k = v = NULL;
				}
			}
		}
		for (size_t p = 0; p < n->n; p++) {
			if ((long)p == ii)
				continue;
			const struct cal_ynode *key = n->items[2 * p];
			CAL_TRY(copy_node(L, key, &k));
			CAL_TRY(resolve(L, n->items[2 * p + 1],
					child_type(mt, key->kind == CAL_Y_STR ? key->str : NULL), tab,
					&v));
			if (map_set(out, &keys, k, v) < 0) {
				st = nomem(L);
				goto fail;
			}
			k = v = NULL;
		}
	} else {
		enum ytype et = child_type(t, NULL);
		for (size_t i = 0; i < n->n; i++) {
			const struct cal_ynode *it = n->items[i];
			if (it->kind == CAL_Y_MAP && it->n == 1 && cal_ymap_find(it, "$import") == 0) {
				if (t != YT_CFG_LIST && t != YT_CFG) {
					st = at_err(L->err, CAL_ERR_FORMAT, it,
						    "$import inside a list is only allowed in quant_cfg "
						    "lists and cfg lists");
					goto fail;
				}
				free(names);
				names = NULL;
				CAL_TRY(import_names(L, it->items[1], &names, &nn));
				for (size_t j = 0; j < nn; j++) {
					const struct imp *im;
					CAL_TRY(imp_get(L->err, tab, names[j], &im));
					int splice = im->type == t && t == YT_CFG_LIST;
					int append = im->type == et;
					if (splice && im->val->kind == CAL_Y_SEQ) {
						for (size_t q = 0; q < im->val->n; q++) {
							CAL_TRY(copy_node(L, im->val->items[q], &v));
							if (cal_ynode_append(out, v, NULL) < 0) {
								st = nomem(L);
								goto fail;
							}
							v = NULL;
						}
					} else if (append && im->val->kind == CAL_Y_MAP) {
						CAL_TRY(copy_node(L, im->val, &v));
						if (cal_ynode_append(out, v, NULL) < 0) {
							st = nomem(L);
							goto fail;
						}
						v = NULL;
					} else {
						st = at_err(L->err, CAL_ERR_FORMAT, names[j],
							    "$import '%s' (%s, schema %s) cannot be spliced "
							    "into or appended to a list of %s",
							    names[j]->str, im->path, ytype_name(im->type),
							    ytype_name(et));
						goto fail;
					}
				}
				continue;
			}
			CAL_TRY(resolve(L, it, et, tab, &v));
			if (cal_ynode_append(out, v, NULL) < 0) {
				st = nomem(L);
				goto fail;
			}
			v = NULL;
		}
	}
	free(names);
	cal_ykeys_free(&keys);
	*ret = out;
	return CAL_OK;
fail:
	free(names);
	cal_ykeys_free(&keys);
	cal_ynode_free(k);
	cal_ynode_free(v);
	cal_ynode_free(out);
	return st < 0 ? st : CAL_ERR_FORMAT;
}

/* modelopt _resolve_config_path: filesystem (cwd) first, then built-in. */
static enum cal_status find_import(struct loader *L, const struct cal_ynode *at,
				   const char *p, char **ret)
{
	char *cand[4] = {0};
	int nc = 0;
	int abs = p[0] == '/';
	*ret = NULL;
	if (L->no_fs && !rel_path_inside(p))
		return at_err(L->err, CAL_ERR_INVALID, at,
			      "import '%s' %s: only files of the recipe tree %s can be imported",
			      p, abs ? "is an absolute path" : "leaves the recipe tree through '..'",
			      L->builtin);
	if (has_yaml_suffix(p)) {
		if (!L->no_fs || abs)
			cand[nc++] = strdup(p);
		if (!abs)
			cand[nc++] = cat3(L->builtin, "/", p);
	} else {
		if (!L->no_fs || abs) {
			cand[nc++] = cat3(p, ".yml", "");
			cand[nc++] = cat3(p, ".yaml", "");
		}
		if (!abs) {
			cand[nc++] = cat3(L->builtin, "/", p);
			if (cand[nc - 1]) {
				char *b = cand[nc - 1];
				cand[nc - 1] = cat3(b, ".yml", "");
				cand[nc++] = cat3(b, ".yaml", "");
				free(b);
			}
		}
	}
	for (int i = 0; i < nc; i++) {
		if (!cand[i]) {
			for (int j = 0; j < nc; j++)
				free(cand[j]);
			return nomem(L);
		}
	}
	for (int i = 0; i < nc && !*ret; i++) {
		if (is_file(cand[i])) {
			*ret = cand[i];
			cand[i] = NULL;
		}
	}
	for (int i = 0; i < nc; i++)
		free(cand[i]);
	if (!*ret)
		return at_err(L->err, CAL_ERR_NOTFOUND, at,
			      "import '%s' not found (looked for %s%s in %s%s)",
			      p, p, has_yaml_suffix(p) ? "" : ".yml/.yaml",
			      L->no_fs ? "" : "the current directory and in ", L->builtin);
	if (L->no_fs) {
		/* a symlink in the tree may lead out of it */
		enum cal_status st;
		int inside = 0;
		char *real = realpath(*ret, NULL);
		if (!real)
			st = at_err(L->err, errno == ENOMEM ? CAL_ERR_NOMEM : CAL_ERR_IO, at,
				    "import '%s': %s: %s", p, *ret, strerror(errno));
		else if ((st = real_inside(L, real, &inside)) >= 0 && !inside)
			st = at_err(L->err, CAL_ERR_INVALID, at,
				    "import '%s': %s leads outside the recipe tree (symbolic "
				    "link): only files of the tree can be imported", p, *ret);
		free(real);
		if (st < 0) {
			free(*ret);
			*ret = NULL;
			return st;
		}
	}
	return CAL_OK;
}

static enum ytype schema_type(const char *s)
{
	for (size_t i = 0; i < CAL_ARRAY_LEN(schemas); i++)
		if (!strcmp(s, schemas[i].path))
			return schemas[i].t;
	return YT_OTHER;
}


/* Removes the `imports` pair of a mapping, once its imports are loaded
 * (anything else: unchanged). */
void drop_imports(struct cal_ynode *data)
{
	long ii = data->kind == CAL_Y_MAP ? cal_ymap_find(data, "imports") : -1;
	if (ii < 0)
		return;
	cal_ynode_free(data->items[2 * ii]);
	cal_ynode_free(data->items[2 * ii + 1]);
	memmove(&data->items[2 * ii], &data->items[2 * ii + 2],
		(data->n - (size_t)ii - 1) * 2 * sizeof(*data->items));
	data->n--;
}

/* Reads the file's imports: mapping into a table (each snippet resolved). */
enum cal_status load_imports(struct loader *L, const struct cal_ynode *imports,
			     struct imptab *tab)
{
	enum cal_status st = CAL_OK;
	if (!imports || imports->kind == CAL_Y_NULL)
		return CAL_OK;
	if (imports->kind != CAL_Y_MAP)
		return at_err(L->err, CAL_ERR_FORMAT, imports,
			      "imports: expected a mapping of name: path, got a %s",
			      cal_ykind_name(imports->kind));
	tab->v = calloc(imports->n ? imports->n : 1, sizeof(*tab->v));
	if (!tab->v)
		return nomem(L);
	for (size_t i = 0; i < imports->n; i++) {
		const struct cal_ynode *k = imports->items[2 * i], *v = imports->items[2 * i + 1];
		if (k->kind != CAL_Y_STR || v->kind != CAL_Y_STR || !*v->str)
			return at_err(L->err, CAL_ERR_FORMAT, v,
				      "imports: each entry must be name: path (strings)");
		struct imp *im = &tab->v[tab->n];
		char *path = NULL;
		CAL_TRY(find_import(L, v, v->str, &path));
		im->path = path;
		im->name = strdup(k->str);
		tab->n++;
		if (!im->name)
			return nomem(L);
		st = load_tree(L, path, YT_OTHER, 1, &im->val, &im->type);
		if (st < 0)
			return cal_error_wrap(L->err, st, "%s:%d:%d: imports.%s", v->file, v->line,
					      v->col, k->str);
	}
	return CAL_OK;
fail:
	return st;
}

/*
 * Loads one file: parse, combine documents, resolve its imports.  `root` is
 * the type of the whole file when it is not an import (imports take their
 * type from the "# modelopt-schema:" comment, which they must have).
 */
enum cal_status load_tree(struct loader *L, const char *path, enum ytype root,
			  int is_import, struct cal_ynode **ret, enum ytype *ret_type)
{
	enum cal_status st = CAL_OK;
	char *text = NULL, *real = NULL;
	size_t len = 0;
	struct cal_ydocs docs = {0};
	struct cal_ynode *data = NULL, *merged = NULL;
	const struct cal_ynode *imports = NULL;
	struct imptab tab = {0};
	struct cal_ykeys mkeys = {0};
	*ret = NULL;

	if (++L->files_read > CAL_RECIPE_MAX_FILES) {
		st = cal_error_set(L->err, CAL_ERR_RANGE, "%s: more than %d recipe files read "
				   "(imports)", path, CAL_RECIPE_MAX_FILES);
		goto out;
	}
	real = realpath(path, NULL);
	if (!real) {
		st = cal_error_set(L->err, errno == ENOENT ? CAL_ERR_NOTFOUND : CAL_ERR_IO,
				   "%s: %s", path, strerror(errno));
		goto out;
	}
	if (L->no_fs) {
		int inside = 0;
		CAL_TRY(real_inside(L, real, &inside));
		if (!inside) {
			st = cal_error_set(L->err, CAL_ERR_INVALID, "%s: leads outside the recipe "
					   "tree %s (symbolic link): only its files can be loaded",
					   path, L->builtin);
			goto out;
		}
	}
	for (int i = 0; i < L->depth; i++) {
		if (!strcmp(L->stack[i], real)) {
			st = cal_error_set(L->err, CAL_ERR_FORMAT, "%s: import cycle (%s imports it "
					   "again)", path, L->stack[L->depth - 1]);
			goto out;
		}
	}
	if (L->depth > CAL_RECIPE_MAX_IMPORT_DEPTH) {
		st = cal_error_set(L->err, CAL_ERR_RANGE, "%s: imports nested deeper than %d",
				   path, CAL_RECIPE_MAX_IMPORT_DEPTH);
		goto out;
	}
	const char *fname = intern_file(L, path);
	if (!fname) {
		st = nomem(L);
		goto out;
	}
	CAL_TRY(cal_read_file(real, CAL_YTREE_MAX_BYTES, &text, &len, L->err));
	CAL_TRY(cal_ytree_parse(fname, text, len, &L->nodes_left, &docs, L->err));

	enum ytype type = root;
	if (is_import) {
		if (!docs.schema) {
			st = cal_error_set(L->err, CAL_ERR_FORMAT,
					   "%s: an imported file needs a '# modelopt-schema: "
					   "modelopt.<type>' comment before its first line of YAML",
					   fname);
			goto out;
		}
		if (strncmp(docs.schema, "modelopt.", 9)) {
			st = cal_error_set(L->err, CAL_ERR_FORMAT,
					   "%s: modelopt-schema '%s' must start with 'modelopt.'", fname,
					   docs.schema);
			goto out;
		}
		type = schema_type(docs.schema);
	}

	if (docs.n == 0) {
		st = cal_error_set(L->err, CAL_ERR_FORMAT, "%s: no YAML document", fname);
		goto out;
	}
	if (docs.n == 1) {
		data = docs.doc[0];
		docs.doc[0] = NULL;
		if (data->kind == CAL_Y_MAP)
			imports = cal_ymap_get(data, "imports");
	} else {
		struct cal_ynode *d0 = docs.doc[0], *d1 = docs.doc[1];
		if (d0->kind != CAL_Y_MAP) {
			st = at_err(L->err, CAL_ERR_FORMAT, d0, "with two documents the first must "
				    "be a mapping (imports:), got a %s", cal_ykind_name(d0->kind));
			goto out;
		}
		if (d1->kind == CAL_Y_MAP) {
			/* {**doc1, **doc2} */
			merged = cal_ynode_new(CAL_Y_MAP, d0);
			if (!merged) {
				st = nomem(L);
				goto out;
			}
			for (int d = 0; d < 2; d++) {
				struct cal_ynode *src = docs.doc[d];
				for (size_t p = 0; p < src->n; p++) {
					if (map_set(merged, &mkeys, src->items[2 * p], src->items[2 * p + 1]) < 0) {
						st = nomem(L);
						goto out;
					}
					src->items[2 * p] = src->items[2 * p + 1] = NULL;
				}
				src->n = 0;
			}
			data = merged;
			merged = NULL;
			imports = cal_ymap_get(data, "imports");
		} else if (d1->kind == CAL_Y_SEQ) {
			data = d1;
			docs.doc[1] = NULL;
			imports = cal_ymap_get(d0, "imports");
		} else {
			st = at_err(L->err, CAL_ERR_FORMAT, d1, "the second document must be a "
				    "mapping or a list, got a %s", cal_ykind_name(d1->kind));
			goto out;
		}
	}
	if (is_import) {
		int ok = 1;
		if ((type == YT_ATTR || type == YT_CFG_ENTRY || type == YT_QCONFIG) &&
		    data->kind != CAL_Y_MAP)
			ok = 0;
		if (type == YT_CFG_LIST && data->kind != CAL_Y_SEQ)
			ok = 0;
		if (!ok) {
			st = at_err(L->err, CAL_ERR_FORMAT, data, "schema %s needs a %s, the file "
				    "holds a %s", ytype_name(type),
				    type == YT_CFG_LIST ? "list" : "mapping",
				    cal_ykind_name(data->kind));
			goto out;
		}
	}

	L->stack[L->depth++] = real;
	st = load_imports(L, imports, &tab);
	if (st >= 0)
		drop_imports(data);
	if (st >= 0)
		st = resolve(L, data, type, &tab, ret);
	L->depth--;
	if (ret_type)
		*ret_type = type;
out:
fail:
	cal_ykeys_free(&mkeys);
	imptab_clear(&tab);
	cal_ynode_free(data);
	cal_ynode_free(merged);
	cal_ydocs_clear(&docs);
	free(text);
	free(real);
	return st;
}
