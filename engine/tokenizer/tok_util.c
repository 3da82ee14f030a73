/*
 * tok_util.c — the tokenizer's small building blocks: growable buffers and
 * piece lists, UTF-8 validation / lossy repair / decoding, the Unicode
 * predicates Rust's char methods define, and regex patterns (Oniguruma
 * syntax, as `tokenizers` writes them, compiled with PCRE2).
 */
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "tok_internal.h"

/* ---- buffers ------------------------------------------------------------ */

enum cal_status tok_buf_reserve(struct tok_buf *b, size_t extra)
{
	if (b->cap - b->n >= extra)
		return CAL_OK;
	size_t need = b->n + extra;
	if (need < b->n)
		return CAL_ERR_NOMEM;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < need) {
		if (cap > SIZE_MAX / 2)
			return CAL_ERR_NOMEM;
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (!p)
		return CAL_ERR_NOMEM;
	b->p = p;
	b->cap = cap;
	return CAL_OK;
}

enum cal_status tok_buf_put(struct tok_buf *b, const void *s, size_t n)
{
	if (tok_buf_reserve(b, n))
		return CAL_ERR_NOMEM;
	if (n)
		memcpy(b->p + b->n, s, n);
	b->n += n;
	return CAL_OK;
}

void tok_buf_free(struct tok_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
}

void tok_pieces_clear(struct tok_pieces *p)
{
	p->n = 0;
	p->text.n = 0;
}

void tok_pieces_free(struct tok_pieces *p)
{
	free(p->v);
	tok_buf_free(&p->text);
	p->v = NULL;
	p->n = p->cap = 0;
}

enum cal_status tok_pieces_add(struct tok_pieces *p, const char *s, size_t n,
			       int32_t id, bool first)
{
	struct tok_piece *v = cal_grow(p->v, &p->cap, p->n + 1, sizeof(*v), 64);
	if (!v)
		return CAL_ERR_NOMEM;
	p->v = v;
	size_t off = p->text.n;
	if (tok_buf_put(&p->text, s, n))
		return CAL_ERR_NOMEM;
	p->v[p->n++] = (struct tok_piece){ .off = off, .len = n, .id = id,
					   .first = first };
	return CAL_OK;
}

/* ---- UTF-8 -------------------------------------------------------------- */

/* Length of the valid sequence at s (1..4), or -(bytes of its maximal
 * invalid subpart) when it is not valid. */
static int utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	int need;
	unsigned lo = 0x80, hi = 0xBF;
	if (c >= 0xC2 && c <= 0xDF)
		need = 1;
	else if (c >= 0xE0 && c <= 0xEF) {
		need = 2;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 3;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	} else
		return -1;
	for (int i = 1; i <= need; i++) {
		if ((size_t)i >= n)
			return -i;
		unsigned d = s[i];
		if (d < lo || d > hi)
			return -i;
		lo = 0x80;
		hi = 0xBF;
	}
	return need + 1;
}

size_t tok_utf8_valid_prefix(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		/* ASCII run, eight bytes at a time */
		while (i + 8 <= n) {
			uint64_t w;
			memcpy(&w, u + i, 8);
			if (w & 0x8080808080808080ull)
				break;
			i += 8;
		}
		if (i >= n)
			break;
		int k = utf8_seq(u + i, n - i);
		if (k < 0)
			return i;
		i += (size_t)k;
	}
	return n;
}

enum cal_status tok_utf8_lossy(const char *s, size_t n, struct tok_buf *out)
{
	static const char repl[3] = { (char)0xEF, (char)0xBF, (char)0xBD };
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		size_t v = tok_utf8_valid_prefix(s + i, n - i);
		if (tok_buf_put(out, s + i, v))
			return CAL_ERR_NOMEM;
		i += v;
		if (i >= n)
			break;
		int k = utf8_seq(u + i, n - i);
		if (tok_buf_put(out, repl, 3))
			return CAL_ERR_NOMEM;
		i += (size_t)(k < 0 ? -k : k);
	}
	return CAL_OK;
}

size_t tok_utf8_decode(const char *s, size_t n, int32_t *cp)
{
	const unsigned char *u = (const unsigned char *)s;
	unsigned c = u[0];
	if (c < 0x80 || n < 2) {
		*cp = (int32_t)c;
		return 1;
	}
	if (c < 0xE0) {
		*cp = (int32_t)(((c & 0x1F) << 6) | (u[1] & 0x3F));
		return 2;
	}
	if (c < 0xF0 || n < 4) {
		if (n < 3) {
			*cp = (int32_t)c;
			return 1;
		}
		*cp = (int32_t)(((c & 0x0F) << 12) | ((u[1] & 0x3Fu) << 6) |
				(u[2] & 0x3F));
		return 3;
	}
	*cp = (int32_t)(((c & 0x07) << 18) | ((u[1] & 0x3Fu) << 12) |
			((u[2] & 0x3Fu) << 6) | (u[3] & 0x3F));
	return 4;
}

size_t tok_utf8_encode(int32_t cp, char *out)
{
	uint32_t c = (uint32_t)cp;
	if (c < 0x80) {
		out[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		out[0] = (char)(0xC0 | (c >> 6));
		out[1] = (char)(0x80 | (c & 0x3F));
		return 2;
	}
	if (c < 0x10000) {
		out[0] = (char)(0xE0 | (c >> 12));
		out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
		out[2] = (char)(0x80 | (c & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (c >> 18));
	out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
	out[3] = (char)(0x80 | (c & 0x3F));
	return 4;
}

bool tok_is_whitespace(int32_t c)
{
	/* the White_Space property (PropList.txt) */
	if (c <= 0x20)
		return c == 0x20 || (c >= 0x09 && c <= 0x0D);
	if (c < 0x85)
		return false;
	return c == 0x85 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
	       c == 0x202F || c == 0x205F || c == 0x3000;
}

bool tok_is_numeric(int32_t c)
{
	if (c < 0x80)
		return c >= '0' && c <= '9';
	utf8proc_category_t k = utf8proc_category(c);
	return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL ||
	       k == UTF8PROC_CATEGORY_NO;
}

bool tok_is_punctuation(int32_t c)
{
	if (c < 0x80)
		return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) ||
		       (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
	utf8proc_category_t k = utf8proc_category(c);
	return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

/* ---- patterns ----------------------------------------------------------- */

/* Oniguruma's \w for Unicode text (Alphabetic, marks, decimal digits,
 * connector punctuation, join controls); PCRE2's differs by version. */
#define ONIG_WORD "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}"

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
	       (c >= 'A' && c <= 'F');
}

/*
 * Translates the Oniguruma (Ruby syntax) constructs whose meaning PCRE2
 * spells differently: \h/\H (hex digit), \uHHHH, \s/\S (White_Space),
 * \w/\W (Unicode word), and the inline option m (dot matches newline,
 * PCRE2's s).  Constructs PCRE2 cannot express the same way (nested classes,
 * class intersection, \W or \H inside a class, the absent operator) are
 * refused.  Returns the offset of a refused construct in *ret_bad, or
 * SIZE_MAX.
 */
static enum cal_status onig_to_pcre2(const char *s, size_t n,
				     struct tok_buf *out, size_t *ret_bad)
{
	bool in_class = false;
	size_t class_start = 0;
	*ret_bad = SIZE_MAX;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		const char *rep = NULL;
		if (c == '\\' && i + 1 < n) {
			char e = s[++i];
			switch (e) {
			case 'h': rep = in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"; break;
			case 'H': rep = in_class ? NULL : "[^0-9a-fA-F]"; break;
			case 's': rep = "\\p{White_Space}"; break;
			case 'S': rep = "\\P{White_Space}"; break;
			case 'w': rep = in_class ? ONIG_WORD : "[" ONIG_WORD "]"; break;
			case 'W': rep = in_class ? NULL : "[^" ONIG_WORD "]"; break;
			case 'u':
				if (i + 4 < n && is_hex(s[i + 1]) && is_hex(s[i + 2]) &&
				    is_hex(s[i + 3]) && is_hex(s[i + 4])) {
					if (tok_buf_put(out, "\\x{", 3) ||
					    tok_buf_put(out, s + i + 1, 4) ||
					    tok_buf_put(out, "}", 1))
						return CAL_ERR_NOMEM;
					i += 4;
					continue;
				}
				break;
			default:
				if (tok_buf_put(out, s + i - 1, 2))
					return CAL_ERR_NOMEM;
				continue;
			}
			if (!rep) {
				*ret_bad = i - 1;
				return CAL_ERR_UNSUPPORTED;
			}
			if (tok_buf_put(out, rep, strlen(rep)))
				return CAL_ERR_NOMEM;
			continue;
		}
		if (in_class) {
			if (c == ']' && i > class_start) {
				in_class = false;
			} else if (c == '[') {
				const char *end = i + 1 < n && s[i + 1] == ':'
					? memmem(s + i, n - i, ":]", 2) : NULL;
				if (!end) {
					*ret_bad = i; /* nested class */
					return CAL_ERR_UNSUPPORTED;
				}
				/* POSIX bracket: copy through its closing ":]" */
				size_t len = (size_t)(end - (s + i)) + 2;
				if (tok_buf_put(out, s + i, len))
					return CAL_ERR_NOMEM;
				i += len - 1;
				continue;
			} else if (c == '&' && i + 1 < n && s[i + 1] == '&') {
				*ret_bad = i; /* class intersection */
				return CAL_ERR_UNSUPPORTED;
			}
		} else if (c == '[') {
			in_class = true;
			class_start = i + 1;
			if (class_start < n && s[class_start] == '^')
				class_start++;
			/* a ']' right after '[' or '[^' is a literal in both */
		} else if (c == '(' && i + 2 < n && s[i + 1] == '?') {
			if (s[i + 2] == '~') {
				*ret_bad = i; /* absent operator */
				return CAL_ERR_UNSUPPORTED;
			}
			size_t k = i + 2;
			while (k < n && (s[k] == 'i' || s[k] == 'm' || s[k] == 'x' ||
					 s[k] == '-'))
				k++;
			if (k > i + 2 && k < n && (s[k] == ')' || s[k] == ':')) {
				if (tok_buf_put(out, "(?", 2))
					return CAL_ERR_NOMEM;
				for (size_t j = i + 2; j < k; j++) {
					char o = s[j] == 'm' ? 's' : s[j];
					if (tok_buf_put(out, &o, 1))
						return CAL_ERR_NOMEM;
				}
				i = k - 1;
				continue;
			}
		}
		if (tok_buf_put(out, &c, 1))
			return CAL_ERR_NOMEM;
	}
	return CAL_OK;
}

enum cal_status tok_pattern_regex(struct tok_pattern *p, const char *src,
				  size_t len, const char *what,
				  struct cal_error *err)
{
	struct tok_buf tr = { 0 };
	size_t bad;
	enum cal_status st = onig_to_pcre2(src, len, &tr, &bad);
	if (st == CAL_ERR_UNSUPPORTED) {
		st = cal_error_set(err, st,
				   "%s: regex construct at offset %zu of '%.*s' is not supported",
				   what, bad, (int)(len > 300 ? 300 : len), src);
		goto out;
	}
	if (st)
		goto out;
	int ec;
	PCRE2_SIZE eo;
	/* Ruby syntax: ^ and $ match at line boundaries */
	p->re = pcre2_compile((PCRE2_SPTR)tr.p, tr.n,
			      PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NO_UTF_CHECK,
			      &ec, &eo, NULL);
	if (!p->re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(ec, msg, sizeof(msg));
		st = cal_error_set(err, CAL_ERR_FORMAT,
				   "%s: regex '%.*s' does not compile: %s at offset %zu",
				   what, (int)(len > 300 ? 300 : len), src,
				   (const char *)msg, (size_t)eo);
		goto out;
	}
	p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
	p->md = pcre2_match_data_create_from_pattern(p->re, NULL);
	if (!p->md) {
		st = CAL_ERR_NOMEM;
		goto out;
	}
out:
	tok_buf_free(&tr);
	return st;
}

enum cal_status tok_pattern_literal(struct tok_pattern *p, const char *s,
				    size_t len)
{
	p->lit = malloc(len + 1);
	if (!p->lit)
		return CAL_ERR_NOMEM;
	memcpy(p->lit, s, len);
	p->lit[len] = 0;
	p->lit_len = len;
	return CAL_OK;
}

void tok_pattern_free(struct tok_pattern *p)
{
	free(p->lit);
	pcre2_match_data_free(p->md);
	pcre2_code_free(p->re);
	memset(p, 0, sizeof(*p));
}

int tok_pattern_find(struct tok_pattern *p, const char *s, size_t n,
		     size_t from, size_t *ret_start, size_t *ret_end)
{
	if (from > n)
		return 0;
	if (!p->re) {
		if (!p->lit_len)
			return 0;
		const char *m = memmem(s + from, n - from, p->lit, p->lit_len);
		if (!m)
			return 0;
		*ret_start = (size_t)(m - s);
		*ret_end = *ret_start + p->lit_len;
		return 1;
	}
	int rc = p->jit ? pcre2_jit_match(p->re, (PCRE2_SPTR)s, n, from, 0, p->md, NULL)
			: pcre2_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK,
				      p->md, NULL);
	if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* interpreter keeps its stack on the heap */
		rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK |
				 PCRE2_NO_JIT, p->md, NULL);
	if (rc == PCRE2_ERROR_NOMATCH)
		return 0;
	if (rc < 0)
		return rc == PCRE2_ERROR_NOMEMORY ? CAL_ERR_NOMEM : CAL_ERR_INTERNAL;
	PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->md);
	*ret_start = ov[0];
	*ret_end = ov[1];
	return 1;
}
