/*
 * ytree.c — libyaml events to a located node tree, with PyYAML SafeLoader
 * scalar resolution and the safety limits of ytree.h.
 */
#include "ytree.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "common/parse.h"
#include "common/util.h"

#define TAG_PREFIX "tag:yaml.org,2002:"
#define CAL_XSTR_(x) #x
#define CAL_STR_Y(x) CAL_XSTR_(x)

const char *cal_ykind_name(enum cal_ykind k)
{
	switch (k) {
	case CAL_Y_NULL: return "null";
	case CAL_Y_BOOL: return "bool";
	case CAL_Y_INT: return "int";
	case CAL_Y_FLOAT: return "float";
	case CAL_Y_STR: return "string";
	case CAL_Y_SEQ: return "list";
	case CAL_Y_MAP: return "mapping";
	}
	return "?";
}

void cal_ynode_free(struct cal_ynode *n)
{
	if (!n)
		return;
	size_t cnt = n->kind == CAL_Y_MAP ? 2 * n->n : n->n;
	for (size_t i = 0; i < cnt && n->items; i++)
		cal_ynode_free(n->items[i]);
	free(n->items);
	free(n->str);
	free(n);
}

void cal_ydocs_clear(struct cal_ydocs *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < 2; i++)
		cal_ynode_free(d->doc[i]);
	free(d->schema);
	memset(d, 0, sizeof(*d));
}

struct cal_ynode *cal_ynode_new(enum cal_ykind kind, const struct cal_ynode *at)
{
	struct cal_ynode *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->kind = kind;
	if (at) {
		n->file = at->file;
		n->line = at->line;
		n->col = at->col;
	}
	return n;
}

int cal_ynode_append(struct cal_ynode *c, struct cal_ynode *a, struct cal_ynode *b)
{
	size_t per = c->kind == CAL_Y_MAP ? 2 : 1;
	size_t used = c->n * per;
	if (used + per > c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 4;
		while (ncap < used + per)
			ncap *= 2;
		struct cal_ynode **it = realloc(c->items, ncap * sizeof(*it));
		if (!it)
			return -1;
		c->items = it;
		c->cap = ncap;
	}
	c->items[used] = a;
	if (per == 2)
		c->items[used + 1] = b;
	c->n++;
	return 0;
}

struct cal_ynode *cal_ynode_copy(const struct cal_ynode *n, size_t *nodes_left)
{
	if (nodes_left) {
		if (*nodes_left == 0)
			return NULL;
		(*nodes_left)--;
	}
	struct cal_ynode *c = cal_ynode_new(n->kind, n);
	if (!c)
		return NULL;
	c->i = n->i;
	c->f = n->f;
	c->exmy = n->exmy;
	if (n->str && !(c->str = strdup(n->str)))
		goto fail;
	size_t cnt = n->kind == CAL_Y_MAP ? 2 * n->n : n->n;
	if (cnt) {
		c->items = calloc(cnt, sizeof(*c->items));
		if (!c->items)
			goto fail;
		c->cap = cnt;
		for (size_t i = 0; i < cnt; i++) {
			c->items[i] = cal_ynode_copy(n->items[i], nodes_left);
			if (!c->items[i]) {
				/* free what was copied, including a dangling key */
				for (size_t j = 0; j < i; j++)
					cal_ynode_free(c->items[j]);
				c->n = 0;
				goto fail;
			}
		}
		c->n = n->n;
	}
	return c;
fail:
	cal_ynode_free(c);
	return NULL;
}

long cal_ymap_find(const struct cal_ynode *m, const char *key)
{
	if (!m || m->kind != CAL_Y_MAP)
		return -1;
	for (size_t i = 0; i < m->n; i++) {
		const struct cal_ynode *k = m->items[2 * i];
		if (k->kind == CAL_Y_STR && !strcmp(k->str, key))
			return (long)i;
	}
	return -1;
}

const struct cal_ynode *cal_ymap_get(const struct cal_ynode *m, const char *key)
{
	long i = cal_ymap_find(m, key);
	return i < 0 ? NULL : m->items[2 * i + 1];
}

/* ---- scalar resolution (PyYAML SafeLoader, YAML 1.1) -------------------- */

static int is_null_word(const char *s)
{
	return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
	       !strcmp(s, "NULL");
}

static int bool_word(const char *s, int *ret)
{
	static const char *const yes[] = {"yes", "Yes", "YES", "true", "True", "TRUE",
					  "on", "On", "ON"};
	static const char *const no[] = {"no", "No", "NO", "false", "False", "FALSE",
					 "off", "Off", "OFF"};
	for (size_t i = 0; i < CAL_ARRAY_LEN(yes); i++) {
		if (!strcmp(s, yes[i])) {
			*ret = 1;
			return 1;
		}
		if (!strcmp(s, no[i])) {
			*ret = 0;
			return 1;
		}
	}
	return 0;
}

static int digits_ok(const char *s, const char *set)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s != '_' && !strchr(set, *s))
			return 0;
	return 1;
}

/* 1: an int (value in *ret), 0: not an int, -1: an int that overflows. */
static int int_word(const char *s, int64_t *ret)
{
	int neg = 0;
	const char *p = s;
	if (*p == '-' || *p == '+')
		neg = *p++ == '-';
	int base;
	const char *d;
	if (p[0] == '0' && p[1] == 'b') {
		base = 2;
		d = p + 2;
		if (!digits_ok(d, "01"))
			return 0;
	} else if (p[0] == '0' && p[1] == 'x') {
		base = 16;
		d = p + 2;
		if (!digits_ok(d, "0123456789abcdefABCDEF"))
			return 0;
	} else if (p[0] == '0' && p[1]) {
		base = 8;
		d = p + 1;
		if (!digits_ok(d, "01234567"))
			return 0;
	} else if (p[0] == '0') {
		*ret = 0;
		return 1;
	} else if (p[0] >= '1' && p[0] <= '9') {
		base = 10;
		d = p;
		if (!digits_ok(d, "0123456789"))
			return 0;
	} else {
		return 0;
	}
	uint64_t v = 0;
	for (; *d; d++) {
		if (*d == '_')
			continue;
		int x = *d <= '9' ? *d - '0' : (*d | 0x20) - 'a' + 10;
		if (v > (UINT64_MAX - (uint64_t)x) / (uint64_t)base)
			return -1;
		v = v * (uint64_t)base + (uint64_t)x;
	}
	if (v > (uint64_t)INT64_MAX + (neg ? 1u : 0u))
		return -1;
	*ret = neg ? (int64_t)(0 - v) : (int64_t)v;
	return 1;
}

static int float_word(const char *s, double *ret)
{
	const char *p = s;
	int sign = 0;
	if (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN")) {
		*ret = NAN;
		return 1;
	}
	if (*p == '-' || *p == '+')
		sign = *p++ == '-' ? -1 : 1;
	if (!strcmp(p, ".inf") || !strcmp(p, ".Inf") || !strcmp(p, ".INF")) {
		*ret = sign < 0 ? -INFINITY : INFINITY;
		return 1;
	}
	const char *q = p;
	if (*q == '.') {
		if (sign)
			return 0; /* "[-+].5" is a string to PyYAML */
		q++;
		if (!(*q >= '0' && *q <= '9'))
			return 0;
		while ((*q >= '0' && *q <= '9') || *q == '_')
			q++;
	} else {
		if (!(*q >= '0' && *q <= '9'))
			return 0;
		while ((*q >= '0' && *q <= '9') || *q == '_')
			q++;
		if (*q != '.')
			return 0;
		q++;
		while ((*q >= '0' && *q <= '9') || *q == '_')
			q++;
	}
	if (*q == 'e' || *q == 'E') {
		q++;
		if (*q != '-' && *q != '+')
			return 0;
		q++;
		if (!(*q >= '0' && *q <= '9'))
			return 0;
		while (*q >= '0' && *q <= '9')
			q++;
	}
	if (*q)
		return 0;
	size_t n = strlen(s);
	char *tmp = malloc(n + 1);
	if (!tmp)
		return -1;
	size_t j = 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] != '_')
			tmp[j++] = s[i];
	tmp[j] = 0;
	*ret = strtod(tmp, NULL); /* YAML 1.1's float form is checked above; this only converts
				     (out of range gives ±inf, as PyYAML) */
	free(tmp);
	return 1;
}

/* ---- the parser --------------------------------------------------------- */

struct frame {
	struct cal_ynode *node;
	struct cal_ynode *key; /* MAP: key waiting for its value */
	struct cal_ykeys keys; /* MAP: its keys, for the duplicate check */
};

struct pstate {
	const char *file;
	size_t *nodes_left;
	size_t own_budget;
	struct frame stack[CAL_YTREE_MAX_DEPTH + 1];
	int depth;
	struct cal_ynode *root;
	struct cal_error *err;
};

static enum cal_status perr(struct pstate *ps, const yaml_mark_t *m, enum cal_status st,
			    const char *what)
{
	return cal_error_set(ps->err, st, "%s:%zu:%zu: %s", ps->file, m->line + 1,
			     m->column + 1, what);
}

static int keys_equal(const struct cal_ynode *a, const struct cal_ynode *b)
{
	if (a->kind != b->kind)
		return 0;
	switch (a->kind) {
	case CAL_Y_NULL: return 1;
	case CAL_Y_BOOL:
	case CAL_Y_INT: return a->i == b->i;
	case CAL_Y_FLOAT: return a->f == b->f;
	case CAL_Y_STR: return !strcmp(a->str, b->str);
	default: return 0;
	}
}

static size_t key_hash(const struct cal_ynode *n)
{
	uint64_t h = 1469598103934665603ull ^ (uint64_t)n->kind;
	switch (n->kind) {
	case CAL_Y_BOOL:
	case CAL_Y_INT: h ^= (uint64_t)n->i; h *= 1099511628211ull; break;
	case CAL_Y_FLOAT: {
		double f = n->f == 0 ? 0 : n->f; /* -0.0 equals 0.0 */
		uint64_t b;
		memcpy(&b, &f, sizeof(b));
		h ^= b;
		h *= 1099511628211ull;
		break;
	}
	case CAL_Y_STR:
		for (const char *c = n->str; *c; c++) {
			h ^= (unsigned char)*c;
			h *= 1099511628211ull;
		}
		break;
	default: break;
	}
	return (size_t)(h ^ (h >> 29));
}

_Thread_local unsigned long cal_ykeys_compares;

long cal_ykeys_find(struct cal_ykeys *ix, const struct cal_ynode *m, const struct cal_ynode *key)
{
	if (m->n < 16) {
		for (size_t i = 0; i < m->n; i++)
			if (cal_ykeys_compares++, keys_equal(m->items[2 * i], key))
				return (long)i;
		return -1;
	}
	if (4 * m->n > 3 * ix->cap) {
		size_t cap = ix->cap ? 2 * ix->cap : 64;
		while (4 * m->n > 3 * cap)
			cap *= 2;
		size_t *ht = calloc(cap, sizeof(*ht));
		if (!ht)
			return -2;
		free(ix->ht);
		ix->ht = ht;
		ix->cap = cap;
		ix->indexed = 0;
	}
	for (; ix->indexed < m->n; ix->indexed++) {
		size_t s = key_hash(m->items[2 * ix->indexed]) & (ix->cap - 1);
		while (ix->ht[s])
			s = (s + 1) & (ix->cap - 1);
		ix->ht[s] = ix->indexed + 1;
	}
	for (size_t s = key_hash(key) & (ix->cap - 1); ix->ht[s]; s = (s + 1) & (ix->cap - 1))
		if (cal_ykeys_compares++, keys_equal(m->items[2 * (ix->ht[s] - 1)], key))
			return (long)(ix->ht[s] - 1);
	return -1;
}

void cal_ykeys_free(struct cal_ykeys *ix)
{
	free(ix->ht);
	memset(ix, 0, sizeof(*ix));
}

/* Attaches a new node to the innermost open collection (or makes it the
 * document root).  On failure the node is freed. */
static enum cal_status attach(struct pstate *ps, struct cal_ynode *n, const yaml_mark_t *m)
{
	if (ps->depth == 0) {
		ps->root = n;
		return CAL_OK;
	}
	struct frame *f = &ps->stack[ps->depth - 1];
	if (f->node->kind == CAL_Y_SEQ) {
		if (cal_ynode_append(f->node, n, NULL) < 0) {
			cal_ynode_free(n);
			return cal_error_set(ps->err, CAL_ERR_NOMEM, "%s: out of memory", ps->file);
		}
		return CAL_OK;
	}
	if (!f->key) {
		if (n->kind == CAL_Y_SEQ || n->kind == CAL_Y_MAP) {
			cal_ynode_free(n);
			return perr(ps, m, CAL_ERR_FORMAT, "mapping keys must be scalars");
		}
		long ki = cal_ykeys_find(&f->keys, f->node, n);
		if (ki == -2) {
			cal_ynode_free(n);
			return cal_error_set(ps->err, CAL_ERR_NOMEM, "%s: out of memory", ps->file);
		}
		if (ki >= 0) {
			const struct cal_ynode *k = f->node->items[2 * ki];
			char msg[64];
			snprintf(msg, sizeof(msg), "duplicate key (first at line %d)", k->line);
			enum cal_status st = cal_error_set(ps->err, CAL_ERR_FORMAT, "%s:%d:%d: key '%s': %s",
							   ps->file, n->line, n->col, n->str ? n->str : "", msg);
			cal_ynode_free(n);
			return st;
		}
		f->key = n;
		return CAL_OK;
	}
	if (cal_ynode_append(f->node, f->key, n) < 0) {
		cal_ynode_free(n);
		return cal_error_set(ps->err, CAL_ERR_NOMEM, "%s: out of memory", ps->file);
	}
	f->key = NULL;
	return CAL_OK;
}

static enum cal_status new_node(struct pstate *ps, const yaml_event_t *ev, enum cal_ykind kind,
				struct cal_ynode **ret)
{
	*ret = NULL;
	if (*ps->nodes_left == 0)
		return perr(ps, &ev->start_mark, CAL_ERR_RANGE,
			    "too many YAML nodes (limit " CAL_STR_Y(CAL_YTREE_MAX_NODES) ")");
	(*ps->nodes_left)--;
	struct cal_ynode *n = cal_ynode_new(kind, NULL);
	if (!n)
		return cal_error_set(ps->err, CAL_ERR_NOMEM, "%s: out of memory", ps->file);
	n->file = ps->file;
	n->line = (int)ev->start_mark.line + 1;
	n->col = (int)ev->start_mark.column + 1;
	*ret = n;
	return CAL_OK;
}

static enum cal_status scalar_node(struct pstate *ps, const yaml_event_t *ev,
				   struct cal_ynode **ret)
{
	const char *tag = (const char *)ev->data.scalar.tag;
	const char *val = (const char *)ev->data.scalar.value;
	size_t len = ev->data.scalar.length;
	struct cal_ynode *n;
	enum cal_status st = new_node(ps, ev, CAL_Y_STR, &n);
	if (st < 0)
		return st;
	if (memchr(val, 0, len)) {
		cal_ynode_free(n);
		return perr(ps, &ev->start_mark, CAL_ERR_FORMAT, "NUL character in a scalar");
	}
	n->str = strndup(val, len);
	if (!n->str) {
		cal_ynode_free(n);
		return cal_error_set(ps->err, CAL_ERR_NOMEM, "%s: out of memory", ps->file);
	}
	const char *want = NULL; /* explicit type from a tag */
	if (tag && strcmp(tag, "!")) {
		if (strncmp(tag, TAG_PREFIX, strlen(TAG_PREFIX)) ||
		    (strcmp(tag + strlen(TAG_PREFIX), "str") &&
		     strcmp(tag + strlen(TAG_PREFIX), "int") &&
		     strcmp(tag + strlen(TAG_PREFIX), "float") &&
		     strcmp(tag + strlen(TAG_PREFIX), "bool") &&
		     strcmp(tag + strlen(TAG_PREFIX), "null"))) {
			cal_ynode_free(n);
			return perr(ps, &ev->start_mark, CAL_ERR_FORMAT,
				    "YAML tags other than !!str/!!int/!!float/!!bool/!!null are not accepted");
		}
		want = tag + strlen(TAG_PREFIX);
	}
	int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
	if (want ? !strcmp(want, "str") : !plain) {
		*ret = n;
		return CAL_OK;
	}
	int b;
	int64_t iv;
	double fv;
	int r;
	if ((!want || !strcmp(want, "null")) && is_null_word(n->str)) {
		n->kind = CAL_Y_NULL;
	} else if ((!want || !strcmp(want, "bool")) && bool_word(n->str, &b)) {
		n->kind = CAL_Y_BOOL;
		n->i = b;
	} else if ((!want || !strcmp(want, "int")) && (r = int_word(n->str, &iv)) != 0) {
		if (r < 0) {
			cal_ynode_free(n);
			return perr(ps, &ev->start_mark, CAL_ERR_RANGE,
				    "integer does not fit in 64 bits");
		}
		n->kind = CAL_Y_INT;
		n->i = iv;
	} else if ((!want || !strcmp(want, "float")) && (r = float_word(n->str, &fv)) != 0) {
		if (r < 0) {
			cal_ynode_free(n);
			return cal_error_set(ps->err, CAL_ERR_NOMEM, "%s: out of memory", ps->file);
		}
		n->kind = CAL_Y_FLOAT;
		n->f = fv;
	} else if (want) {
		cal_ynode_free(n);
		return perr(ps, &ev->start_mark, CAL_ERR_FORMAT,
			    "scalar does not match its explicit tag");
	}
	*ret = n;
	return CAL_OK;
}

/* Text of the "# modelopt-schema: X" line of the leading comment block. */
static char *find_schema(const char *text, size_t len)
{
	static const char key[] = "modelopt-schema:";
	size_t i = 0;
	while (i < len) {
		size_t e = i;
		while (e < len && text[e] != '\n')
			e++;
		size_t a = i;
		while (a < e && (text[a] == ' ' || text[a] == '\t' || text[a] == '\r'))
			a++;
		if (a < e && text[a] != '#')
			break; /* first non-comment line */
		if (a < e) {
			size_t p = a + 1;
			while (p < e && (text[p] == ' ' || text[p] == '\t'))
				p++;
			if (e - p >= sizeof(key) - 1 && !memcmp(text + p, key, sizeof(key) - 1)) {
				p += sizeof(key) - 1;
				while (p < e && (text[p] == ' ' || text[p] == '\t'))
					p++;
				size_t q = e;
				while (q > p && (text[q - 1] == ' ' || text[q - 1] == '\t' ||
						 text[q - 1] == '\r'))
					q--;
				return strndup(text + p, q - p);
			}
		}
		i = e + 1;
	}
	return NULL;
}

/* "e4m3" -> 4, 3; returns 1 when s is an ExMy string. */
static int exmy_word(const char *s, int64_t *e, int64_t *m)
{
	const char *end;
	uint64_t x, y;
	if ((*s != 'e' && *s != 'E') || cal_scan_u64(s + 1, &end, &x) < 0 || x > INT64_MAX ||
	    (*end != 'm' && *end != 'M') || cal_scan_u64(end + 1, &end, &y) < 0 ||
	    y > INT64_MAX || *end)
		return 0;
	*e = (int64_t)x;
	*m = (int64_t)y;
	return 1;
}

/* modelopt turns the string value of any key named num_bits or scale_bits
 * that reads "ExMy" into the tuple (x, y), anywhere in the tree. */
static enum cal_status exmy_pass(struct pstate *ps, struct cal_ynode *n)
{
	enum cal_status st;
	if (!n)
		return CAL_OK;
	if (n->kind == CAL_Y_SEQ) {
		for (size_t i = 0; i < n->n; i++)
			if ((st = exmy_pass(ps, n->items[i])) < 0)
				return st;
		return CAL_OK;
	}
	if (n->kind != CAL_Y_MAP)
		return CAL_OK;
	for (size_t i = 0; i < n->n; i++) {
		struct cal_ynode *k = n->items[2 * i], *v = n->items[2 * i + 1];
		int64_t e, m;
		if (k->kind == CAL_Y_STR && (!strcmp(k->str, "num_bits") || !strcmp(k->str, "scale_bits")) &&
		    v->kind == CAL_Y_STR && exmy_word(v->str, &e, &m)) {
			if (*ps->nodes_left < 2)
				return cal_error_set(ps->err, CAL_ERR_RANGE, "%s: too many YAML nodes",
						     ps->file);
			*ps->nodes_left -= 2;
			struct cal_ynode *a = cal_ynode_new(CAL_Y_INT, v), *b = cal_ynode_new(CAL_Y_INT, v);
			if (!a || !b || cal_ynode_append(v, a, NULL) < 0) {
				cal_ynode_free(a);
				cal_ynode_free(b);
				return cal_error_set(ps->err, CAL_ERR_NOMEM, "%s: out of memory", ps->file);
			}
			if (cal_ynode_append(v, b, NULL) < 0) {
				cal_ynode_free(b);
				return cal_error_set(ps->err, CAL_ERR_NOMEM, "%s: out of memory", ps->file);
			}
			a->i = e;
			b->i = m;
			v->kind = CAL_Y_SEQ;
			v->exmy = 1;
		} else if ((st = exmy_pass(ps, v)) < 0) {
			return st;
		}
	}
	return CAL_OK;
}

enum cal_status cal_ytree_parse(const char *file, const char *text, size_t len,
				size_t *nodes_left, struct cal_ydocs *ret, struct cal_error *err)
{
	memset(ret, 0, sizeof(*ret));
	if (len > CAL_YTREE_MAX_BYTES)
		return cal_error_set(err, CAL_ERR_RANGE, "%s: %zu bytes exceeds the recipe limit of %u",
				     file, len, CAL_YTREE_MAX_BYTES);
	struct pstate ps = {.file = file, .err = err, .own_budget = CAL_YTREE_MAX_NODES};
	ps.nodes_left = nodes_left ? nodes_left : &ps.own_budget;
	yaml_parser_t parser;
	yaml_event_t ev;
	int have_ev = 0;
	enum cal_status st = CAL_OK;
	if (!yaml_parser_initialize(&parser))
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", file);
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	int done = 0;
	while (!done) {
		if (!yaml_parser_parse(&parser, &ev)) {
			const char *prob = parser.problem ? parser.problem : "YAML syntax error";
			yaml_mark_t m = parser.problem_mark;
			if (parser.context)
				st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu:%zu: %s %s", file,
						   m.line + 1, m.column + 1, prob, parser.context);
			else
				st = perr(&ps, &m, CAL_ERR_FORMAT, prob);
			goto fail;
		}
		have_ev = 1;
		struct cal_ynode *n = NULL;
		const unsigned char *anchor = NULL;
		switch (ev.type) {
		case YAML_STREAM_END_EVENT:
			done = 1;
			break;
		case YAML_DOCUMENT_START_EVENT:
			if (ret->n == 2) {
				st = perr(&ps, &ev.start_mark, CAL_ERR_FORMAT,
					  "more than two YAML documents");
				goto fail;
			}
			break;
		case YAML_DOCUMENT_END_EVENT:
			ret->doc[ret->n++] = ps.root;
			ps.root = NULL;
			break;
		case YAML_ALIAS_EVENT:
			st = perr(&ps, &ev.start_mark, CAL_ERR_FORMAT,
				  "YAML aliases (*name) are not accepted in recipes");
			goto fail;
		case YAML_SCALAR_EVENT:
			anchor = ev.data.scalar.anchor;
			if (anchor)
				break;
			CAL_TRY(scalar_node(&ps, &ev, &n));
			CAL_TRY(attach(&ps, n, &ev.start_mark));
			break;
		case YAML_SEQUENCE_START_EVENT:
		case YAML_MAPPING_START_EVENT: {
			int is_map = ev.type == YAML_MAPPING_START_EVENT;
			anchor = is_map ? ev.data.mapping_start.anchor : ev.data.sequence_start.anchor;
			if (anchor)
				break;
			const char *tag = (const char *)(is_map ? ev.data.mapping_start.tag
							       : ev.data.sequence_start.tag);
			if (tag && strcmp(tag, is_map ? TAG_PREFIX "map" : TAG_PREFIX "seq")) {
				st = perr(&ps, &ev.start_mark, CAL_ERR_FORMAT,
					  "YAML tags on collections are not accepted");
				goto fail;
			}
			if (ps.depth >= CAL_YTREE_MAX_DEPTH) {
				st = perr(&ps, &ev.start_mark, CAL_ERR_RANGE,
					  "nesting deeper than " CAL_STR_Y(CAL_YTREE_MAX_DEPTH) " levels");
				goto fail;
			}
			CAL_TRY(new_node(&ps, &ev, is_map ? CAL_Y_MAP : CAL_Y_SEQ, &n));
			CAL_TRY(attach(&ps, n, &ev.start_mark));
			ps.stack[ps.depth] = (struct frame){.node = n};
			ps.depth++;
			break;
		}
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT:
			ps.depth--;
			cal_ykeys_free(&ps.stack[ps.depth].keys);
			break;
		default:
			break;
		}
		if (anchor) {
			st = perr(&ps, &ev.start_mark, CAL_ERR_FORMAT,
				  "YAML anchors (&name) are not accepted in recipes");
			goto fail;
		}
		yaml_event_delete(&ev);
		have_ev = 0;
	}
	yaml_parser_delete(&parser);
	for (size_t i = 0; i < ret->n; i++)
		CAL_TRY(exmy_pass(&ps, ret->doc[i]));
	ret->schema = find_schema(text, len);
	return CAL_OK;
fail:
	if (have_ev)
		yaml_event_delete(&ev);
	yaml_parser_delete(&parser);
	/* the root owns every attached node; pending keys are not attached */
	for (int i = 0; i < ps.depth; i++) {
		cal_ynode_free(ps.stack[i].key);
		cal_ykeys_free(&ps.stack[i].keys);
	}
	cal_ynode_free(ps.root);
	cal_ydocs_clear(ret);
	return st < 0 ? st : CAL_ERR_FORMAT;
}

/* ---- rendering ---------------------------------------------------------- */

static int put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t nc = *cap ? *cap : 64;
		while (nc < *len + n + 1)
			nc *= 2;
		char *b = realloc(*buf, nc);
		if (!b)
			return -1;
		*buf = b;
		*cap = nc;
	}
	memcpy(*buf + *len, s, n);
	*len += n;
	(*buf)[*len] = 0;
	return 0;
}

int cal_ybuf_puts(char **buf, size_t *len, size_t *cap, const char *s)
{
	return put(buf, len, cap, s, strlen(s));
}

#define puts_ cal_ybuf_puts

int cal_ynode_render(const struct cal_ynode *n, char **buf, size_t *len, size_t *cap)
{
	char tmp[64];
	switch (n->kind) {
	case CAL_Y_NULL: return puts_(buf, len, cap, "null");
	case CAL_Y_BOOL: return puts_(buf, len, cap, n->i ? "true" : "false");
	case CAL_Y_INT:
		snprintf(tmp, sizeof(tmp), "%lld", (long long)n->i);
		return puts_(buf, len, cap, tmp);
	case CAL_Y_FLOAT:
		snprintf(tmp, sizeof(tmp), "%.17g", n->f);
		return puts_(buf, len, cap, tmp);
	case CAL_Y_STR:
		if (puts_(buf, len, cap, "'") < 0 || puts_(buf, len, cap, n->str) < 0)
			return -1;
		return puts_(buf, len, cap, "'");
	case CAL_Y_SEQ:
		if (puts_(buf, len, cap, n->exmy ? "(" : "[") < 0)
			return -1;
		for (size_t i = 0; i < n->n; i++) {
			if ((i && puts_(buf, len, cap, ", ") < 0) ||
			    cal_ynode_render(n->items[i], buf, len, cap) < 0)
				return -1;
		}
		return puts_(buf, len, cap, n->exmy ? ")" : "]");
	case CAL_Y_MAP:
		if (puts_(buf, len, cap, "{") < 0)
			return -1;
		for (size_t i = 0; i < n->n; i++) {
			const struct cal_ynode *k = n->items[2 * i];
			if (i && puts_(buf, len, cap, ", ") < 0)
				return -1;
			if (k->kind == CAL_Y_STR) {
				if (puts_(buf, len, cap, k->str) < 0)
					return -1;
			} else if (cal_ynode_render(k, buf, len, cap) < 0) {
				return -1;
			}
			if (puts_(buf, len, cap, ": ") < 0 ||
			    cal_ynode_render(n->items[2 * i + 1], buf, len, cap) < 0)
				return -1;
		}
		return puts_(buf, len, cap, "}");
	}
	return -1;
}
