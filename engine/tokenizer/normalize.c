/*
 * normalize.c — tokenizer.json normalizers: NFC, NFD, NFKC, NFKD (utf8proc),
 * Sequence, Prepend, Replace (literal or regex), Lowercase and Strip.
 * Any other type is refused when the tokenizer is loaded.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <utf8proc.h>

#include "tok_internal.h"

static enum cal_status dup_str(json_t *v, char **ret, size_t *ret_len)
{
	size_t n = json_string_length(v);
	*ret = malloc(n + 1);
	if (!*ret)
		return CAL_ERR_NOMEM;
	memcpy(*ret, json_string_value(v), n + 1);
	*ret_len = n;
	return CAL_OK;
}

/* Parses the {"String": s} / {"Regex": r} pattern objects of Split and
 * Replace; shared with pretok.c through this prototype. */
enum cal_status tok_parse_pattern(struct tok_pattern *p, json_t *pat,
				  const char *what, struct cal_error *err);

enum cal_status tok_parse_pattern(struct tok_pattern *p, json_t *pat,
				  const char *what, struct cal_error *err)
{
	json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
	if (json_is_string(s))
		return tok_pattern_literal(p, json_string_value(s), json_string_length(s));
	if (json_is_string(r))
		return tok_pattern_regex(p, json_string_value(r), json_string_length(r),
					 what, err);
	return cal_error_set(err, CAL_ERR_FORMAT,
			     "%s: 'pattern' must be {\"String\": ...} or {\"Regex\": ...}", what);
}

/* The string j[key] into *ret (heap) and *ret_len; what names the
 * normalizer in the error. */
static enum cal_status req_str(json_t *j, const char *key, const char *what, char **ret,
			       size_t *ret_len, struct cal_error *err)
{
	json_t *v = json_object_get(j, key);
	if (!json_is_string(v))
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: '%s' must be a string", what, key);
	return dup_str(v, ret, ret_len);
}

static enum cal_status normalizer_parse(void *part, int type, json_t *j, struct cal_error *err)
{
	struct tok_normalizer *n = part;
	enum cal_status st;
	n->type = (enum tok_norm_type)type;
	switch (n->type) {
	case TOK_NORM_STRIP:
		n->left = json_is_true(json_object_get(j, "strip_left"));
		n->right = json_is_true(json_object_get(j, "strip_right"));
		break;
	case TOK_NORM_PREPEND:
		return req_str(j, "prepend", "normalizer Prepend", &n->str, &n->str_len, err);
	case TOK_NORM_REPLACE:
		st = req_str(j, "content", "normalizer Replace", &n->str, &n->str_len, err);
		if (st)
			return st;
		return tok_parse_pattern(&n->pat, json_object_get(j, "pattern"),
					 "normalizer Replace", err);
	case TOK_NORM_SEQUENCE:
		n->kids = tok_parse_seq(j, "normalizers", &tok_normalizer_kind, &n->n_kids, &st, err);
		return st;
	default: /* the Unicode forms and Lowercase take no parameters */
		break;
	}
	return CAL_OK;
}

static void normalizer_free(void *part)
{
	struct tok_normalizer *n = part;
	free(n->str);
	tok_pattern_free(&n->pat);
	tok_free_seq(n->kids, n->n_kids, &tok_normalizer_kind);
	memset(n, 0, sizeof(*n));
}

static const char *const normalizer_types[] = {
	[TOK_NORM_NFC] = "NFC", [TOK_NORM_NFD] = "NFD", [TOK_NORM_NFKC] = "NFKC",
	[TOK_NORM_NFKD] = "NFKD", [TOK_NORM_SEQUENCE] = "Sequence", [TOK_NORM_PREPEND] = "Prepend",
	[TOK_NORM_REPLACE] = "Replace", [TOK_NORM_LOWERCASE] = "Lowercase",
	[TOK_NORM_STRIP] = "Strip",
};

const struct tok_part_kind tok_normalizer_kind = {
	.what = "normalizer", .types = normalizer_types, .n_types = CAL_ARRAY_LEN(normalizer_types),
	.size = sizeof(struct tok_normalizer), .parse = normalizer_parse, .free = normalizer_free,
};

static bool all_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return false;
	return true;
}

/*
 * NFC fast path.  A character is "inert" when NFC leaves it alone, its
 * combining class is 0, and it is never a later part of a canonical
 * decomposition (so nothing composes into it).  NFC then acts separately
 * on the spans between inert characters, and text made only of inert
 * characters (ASCII, most CJK, emoji, ...) is copied unchanged.  The table
 * is computed once from utf8proc for U+0000..U+2FFFF; characters above are
 * treated as not inert.
 */
#define INERT_LIMIT 0x30000
static uint8_t inert_bits[INERT_LIMIT / 8];
static pthread_once_t inert_once = PTHREAD_ONCE_INIT;

static void inert_init(void)
{
	static uint8_t second[INERT_LIMIT / 8];
	utf8proc_int32_t d[32];
	for (int32_t c = 0; c < INERT_LIMIT; c++) {
		int bc = 0;
		utf8proc_ssize_t n = utf8proc_decompose_char(c, d, 32, UTF8PROC_DECOMPOSE, &bc);
		for (utf8proc_ssize_t k = 1; k < n && k < 32; k++)
			if (d[k] >= 0 && d[k] < INERT_LIMIT)
				second[d[k] / 8] |= (uint8_t)(1u << (d[k] % 8));
	}
	for (int32_t c = 0; c < INERT_LIMIT; c++) {
		if (second[c / 8] & (1u << (c % 8)))
			continue;
		if (utf8proc_get_property(c)->combining_class != 0)
			continue;
		int bc = 0;
		utf8proc_ssize_t n = utf8proc_decompose_char(c, d, 32, UTF8PROC_DECOMPOSE, &bc);
		if (n != 1 || d[0] != c)
			continue; /* decomposes: NFC may differ (singletons) */
		inert_bits[c / 8] |= (uint8_t)(1u << (c % 8));
	}
}

static inline bool inert(int32_t c)
{
	return c < INERT_LIMIT && (inert_bits[c / 8] >> (c % 8)) & 1;
}

static enum cal_status map_span(const char *s, size_t len, int flags,
				struct tok_buf *out)
{
	utf8proc_uint8_t *dst = NULL;
	utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s,
					  (utf8proc_ssize_t)len, &dst,
					  (utf8proc_option_t)(UTF8PROC_STABLE | flags));
	if (r < 0) {
		free(dst);
		return r == UTF8PROC_ERROR_NOMEM ? CAL_ERR_NOMEM : CAL_ERR_INTERNAL;
	}
	enum cal_status st = tok_buf_put(out, dst, (size_t)r);
	free(dst);
	return st;
}

static enum cal_status nfc(const char *s, size_t len, struct tok_buf *out)
{
	pthread_once(&inert_once, inert_init);
	size_t done = 0, prev = 0;
	for (size_t i = 0; i < len;) {
		if ((unsigned char)s[i] < 0x80) { /* ASCII is inert */
			prev = i++;
			continue;
		}
		int32_t c;
		size_t cl = tok_utf8_decode(s + i, len - i, &c);
		if (inert(c)) {
			prev = i;
			i += cl;
			continue;
		}
		/* the span: the inert starter before (if not yet emitted)
		 * through the last character before the next inert one */
		size_t s0 = i > done ? prev : i, j = i + cl;
		while (j < len) {
			size_t jl = tok_utf8_decode(s + j, len - j, &c);
			if ((unsigned char)s[j] < 0x80 || inert(c))
				break;
			j += jl;
		}
		if (tok_buf_put(out, s + done, s0 - done) || map_span(s + s0, j - s0,
								      UTF8PROC_COMPOSE, out))
			return CAL_ERR_NOMEM;
		done = i = j;
	}
	return tok_buf_put(out, s + done, len - done);
}

static enum cal_status unicode_form(const char *s, size_t len, int flags,
				    struct tok_buf *out)
{
	if (all_ascii(s, len)) /* every form leaves ASCII unchanged */
		return tok_buf_put(out, s, len);
	if (flags == UTF8PROC_COMPOSE)
		return nfc(s, len, out);
	return map_span(s, len, flags, out);
}

static enum cal_status lowercase(const char *s, size_t len, struct tok_buf *out)
{
	if (tok_buf_reserve(out, len))
		return CAL_ERR_NOMEM;
	for (size_t i = 0; i < len;) {
		int32_t cp;
		size_t cl = tok_utf8_decode(s + i, len - i, &cp);
		i += cl;
		char e[8];
		size_t en;
		if (cp == 0x130) { /* the one unconditional multi-char lowercase */
			en = tok_utf8_encode('i', e);
			en += tok_utf8_encode(0x307, e + en);
		} else {
			en = tok_utf8_encode(cp < 0x80 ? (cp >= 'A' && cp <= 'Z' ? cp + 32 : cp)
						       : utf8proc_tolower(cp), e);
		}
		if (tok_buf_put(out, e, en))
			return CAL_ERR_NOMEM;
	}
	return CAL_OK;
}

static enum cal_status strip(const char *s, size_t len, bool left, bool right,
			     struct tok_buf *out)
{
	size_t a = 0, b = len;
	while (left && a < b) {
		int32_t cp;
		size_t cl = tok_utf8_decode(s + a, b - a, &cp);
		if (!tok_is_whitespace(cp))
			break;
		a += cl;
	}
	while (right && b > a) {
		size_t k = b - 1;
		while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80)
			k--;
		int32_t cp;
		tok_utf8_decode(s + k, b - k, &cp);
		if (!tok_is_whitespace(cp))
			break;
		b = k;
	}
	return tok_buf_put(out, s + a, b - a);
}

static enum cal_status replace(struct tok_normalizer *n, const char *s,
			       size_t len, struct tok_buf *out)
{
	size_t pos = 0, from = 0;
	while (from <= len) {
		size_t ms, me;
		int r = tok_pattern_find(&n->pat, s, len, from, &ms, &me);
		if (r < 0)
			return (enum cal_status)r;
		if (!r)
			break;
		if (tok_buf_put(out, s + pos, ms - pos) ||
		    tok_buf_put(out, n->str, n->str_len))
			return CAL_ERR_NOMEM;
		pos = me;
		if (me > ms) {
			from = me;
		} else { /* empty match: step over one character */
			int32_t cp;
			from = me + (me < len ? tok_utf8_decode(s + me, len - me, &cp) : 1);
			if (me < len) {
				if (tok_buf_put(out, s + me, from - me))
					return CAL_ERR_NOMEM;
				pos = from;
			}
		}
	}
	return pos < len ? tok_buf_put(out, s + pos, len - pos) : CAL_OK;
}

enum cal_status tok_normalize(struct tok_normalizer *n, const char *s,
			      size_t len, struct tok_buf *out,
			      struct tok_buf *tmp)
{
	out->n = 0;
	switch (n->type) {
	case TOK_NORM_NFC:
		return unicode_form(s, len, UTF8PROC_COMPOSE, out);
	case TOK_NORM_NFD:
		return unicode_form(s, len, UTF8PROC_DECOMPOSE, out);
	case TOK_NORM_NFKC:
		return unicode_form(s, len, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out);
	case TOK_NORM_NFKD:
		return unicode_form(s, len, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out);
	case TOK_NORM_LOWERCASE:
		return lowercase(s, len, out);
	case TOK_NORM_STRIP:
		return strip(s, len, n->left, n->right, out);
	case TOK_NORM_PREPEND:
		if (len && tok_buf_put(out, n->str, n->str_len))
			return CAL_ERR_NOMEM;
		return tok_buf_put(out, s, len);
	case TOK_NORM_REPLACE:
		return replace(n, s, len, out);
	case TOK_NORM_SEQUENCE: {
		enum cal_status st = tok_buf_put(out, s, len);
		struct tok_buf nested = { 0 };
		for (size_t i = 0; !st && i < n->n_kids; i++) {
			struct tok_buf t = *tmp;
			*tmp = *out;
			*out = t;
			st = tok_normalize(&n->kids[i], tmp->p, tmp->n, out, &nested);
		}
		tok_buf_free(&nested);
		return st;
	}
	}
	return CAL_ERR_INTERNAL;
}
