/*
 * pretok.c — tokenizer.json pre-tokenizers: Sequence, Split (literal or
 * regex, every behavior, invert), ByteLevel, Metaspace, Digits,
 * Punctuation, Whitespace and WhitespaceSplit.  Each one turns every text
 * piece into sub-pieces; pieces that already carry an added token pass
 * through untouched, and empty pieces are dropped (as `tokenizers` does).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tok_internal.h"

enum cal_status tok_parse_pattern(struct tok_pattern *p, json_t *pat,
				  const char *what, struct cal_error *err);

/* GPT-2's pre-tokenization regex, used by ByteLevel when use_regex is set */
static const char bytelevel_re[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* the Whitespace pre-tokenizer keeps these matches */
static const char whitespace_re[] = "\\w+|[^\\w\\s]+";

/* ---- byte-level alphabet ------------------------------------------------ */

/* byte → its printable stand-in character, UTF-8 encoded (1 or 2 bytes) */
static char bl_chars[256][2];
static uint8_t bl_len[256];
static pthread_once_t bl_once = PTHREAD_ONCE_INIT;

static void bl_init(void)
{
	int next = 256;
	for (int b = 0; b < 256; b++) {
		bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
			    (b >= 0xAE && b <= 0xFF);
		int cp = keep ? b : next++;
		char e[4];
		size_t n = tok_utf8_encode(cp, e);
		memcpy(bl_chars[b], e, n);
		bl_len[b] = (uint8_t)n;
	}
}

/* ---- parsing ------------------------------------------------------------ */

static enum cal_status parse_behavior(json_t *v, enum tok_behavior *ret,
				      const char *what, struct cal_error *err)
{
	static const struct cal_name_val names[] = {
		{ "Removed", TOK_SPLIT_REMOVED },
		{ "Isolated", TOK_SPLIT_ISOLATED },
		{ "MergedWithPrevious", TOK_SPLIT_MERGED_PREV },
		{ "MergedWithNext", TOK_SPLIT_MERGED_NEXT },
		{ "Contiguous", TOK_SPLIT_CONTIGUOUS },
	};
	const char *s = json_string_value(v);
	int b;
	if (!cal_name_val_find(names, CAL_ARRAY_LEN(names), s, &b)) {
		*ret = (enum tok_behavior)b;
		return CAL_OK;
	}
	return cal_error_set(err, s ? CAL_ERR_UNSUPPORTED : CAL_ERR_FORMAT,
			     "pre_tokenizer %s: behavior '%s' is not supported",
			     what, s ? s : "(missing)");
}

/* The Metaspace pre-tokenizer's replacement character, prepend scheme and
 * split flag. */
static enum cal_status parse_metaspace(struct tok_pretok *p, json_t *j, struct cal_error *err)
{
	json_t *r = json_object_get(j, "replacement");
	const char *rs = json_string_value(r);
	if (!rs || !json_string_length(r))
		return cal_error_set(err, CAL_ERR_FORMAT,
				     "pre_tokenizer Metaspace: 'replacement' must be a one-character string");
	size_t rl = json_string_length(r);
	if (tok_utf8_decode(rs, rl, &p->replacement) != rl)
		return cal_error_set(err, CAL_ERR_FORMAT,
				     "pre_tokenizer Metaspace: 'replacement' must be one character");
	static const struct cal_name_val schemes[] = {
		{ "always", TOK_PREPEND_ALWAYS },
		{ "first", TOK_PREPEND_FIRST },
		{ "never", TOK_PREPEND_NEVER },
	};
	const char *ps = json_string_value(json_object_get(j, "prepend_scheme"));
	int scheme = json_is_false(json_object_get(j, "add_prefix_space"))
		? TOK_PREPEND_NEVER : TOK_PREPEND_ALWAYS;
	if (ps && cal_name_val_find(schemes, CAL_ARRAY_LEN(schemes), ps, &scheme) < 0)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "pre_tokenizer Metaspace: prepend_scheme '%s' is not supported", ps);
	p->prepend = (enum tok_prepend)scheme;
	json_t *sp = json_object_get(j, "split");
	p->split = sp ? json_is_true(sp) : true;
	return CAL_OK;
}

static enum cal_status pretok_parse(void *part, int type, json_t *j, struct cal_error *err)
{
	struct tok_pretok *p = part;
	enum cal_status st;
	pthread_once(&bl_once, bl_init);
	p->type = (enum tok_pretok_type)type;
	p->behavior = TOK_SPLIT_ISOLATED;
	switch (p->type) {
	case TOK_PRE_SEQUENCE:
		p->kids = tok_parse_seq(j, "pretokenizers", &tok_pretok_kind, &p->n_kids, &st, err);
		return st;
	case TOK_PRE_SPLIT:
		p->invert = json_is_true(json_object_get(j, "invert"));
		st = parse_behavior(json_object_get(j, "behavior"), &p->behavior, "Split", err);
		if (st)
			return st;
		return tok_parse_pattern(&p->pat, json_object_get(j, "pattern"),
					 "pre_tokenizer Split", err);
	case TOK_PRE_BYTELEVEL: {
		json_t *ap = json_object_get(j, "add_prefix_space");
		json_t *ur = json_object_get(j, "use_regex");
		p->add_prefix_space = json_is_true(ap);
		p->use_regex = ur ? json_is_true(ur) : true;
		if (p->use_regex)
			return tok_pattern_regex(&p->pat, bytelevel_re, strlen(bytelevel_re),
						 "pre_tokenizer ByteLevel", err);
		break;
	}
	case TOK_PRE_METASPACE:
		return parse_metaspace(p, j, err);
	case TOK_PRE_DIGITS:
		p->individual_digits = json_is_true(json_object_get(j, "individual_digits"));
		p->behavior = p->individual_digits ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS;
		break;
	case TOK_PRE_PUNCTUATION: {
		json_t *b = json_object_get(j, "behavior");
		if (b)
			return parse_behavior(b, &p->behavior, "Punctuation", err);
		break;
	}
	case TOK_PRE_WHITESPACE:
		p->behavior = TOK_SPLIT_REMOVED;
		p->invert = true;
		return tok_pattern_regex(&p->pat, whitespace_re, strlen(whitespace_re),
					 "pre_tokenizer Whitespace", err);
	case TOK_PRE_WHITESPACE_SPLIT:
		p->behavior = TOK_SPLIT_REMOVED;
		break;
	}
	return CAL_OK;
}

static void pretok_free(void *part)
{
	struct tok_pretok *p = part;
	tok_pattern_free(&p->pat);
	tok_free_seq(p->kids, p->n_kids, &tok_pretok_kind);
	memset(p, 0, sizeof(*p));
}

static const char *const pretok_types[] = {
	[TOK_PRE_SEQUENCE] = "Sequence", [TOK_PRE_SPLIT] = "Split",
	[TOK_PRE_BYTELEVEL] = "ByteLevel", [TOK_PRE_METASPACE] = "Metaspace",
	[TOK_PRE_DIGITS] = "Digits", [TOK_PRE_PUNCTUATION] = "Punctuation",
	[TOK_PRE_WHITESPACE] = "Whitespace", [TOK_PRE_WHITESPACE_SPLIT] = "WhitespaceSplit",
};

const struct tok_part_kind tok_pretok_kind = {
	.what = "pre_tokenizer", .types = pretok_types, .n_types = CAL_ARRAY_LEN(pretok_types),
	.size = sizeof(struct tok_pretok), .parse = pretok_parse, .free = pretok_free,
};

/* ---- segments ----------------------------------------------------------- */

static enum cal_status seg_add(struct tok_segs *sg, size_t a, size_t b, bool m)
{
	struct tok_seg *v = cal_grow(sg->v, &sg->cap, sg->n + 1, sizeof(*v), 64);
	if (!v)
		return CAL_ERR_NOMEM;
	sg->v = v;
	sg->v[sg->n++] = (struct tok_seg){ a, b, m };
	return CAL_OK;
}

/* Cuts s[0..n) into alternating non-match / match segments of pattern p.
 * An empty match right where the previous match ended is skipped, and
 * the search steps over one character after an empty match. */
static enum cal_status segs_pattern(struct tok_pattern *p, const char *s,
				    size_t n, struct tok_segs *sg)
{
	size_t prev = 0, from = 0, last_end = SIZE_MAX;
	sg->n = 0;
	while (from <= n) {
		size_t ms, me;
		int r = tok_pattern_find(p, s, n, from, &ms, &me);
		if (r < 0)
			return (enum cal_status)r;
		if (!r)
			break;
		if (ms == me) {
			int32_t cp;
			from = me + (me < n ? tok_utf8_decode(s + me, n - me, &cp) : 1);
			if (me == last_end)
				continue;
		} else {
			from = me;
		}
		if (prev != ms && seg_add(sg, prev, ms, false))
			return CAL_ERR_NOMEM;
		if (seg_add(sg, ms, me, true))
			return CAL_ERR_NOMEM;
		prev = last_end = me;
	}
	if (prev != n && seg_add(sg, prev, n, false))
		return CAL_ERR_NOMEM;
	return CAL_OK;
}

/* Each character for which pred (or equality with cp when pred is NULL)
 * holds is a match of its own. */
static enum cal_status segs_chars(bool (*pred)(int32_t), int32_t cp_eq,
				  const char *s, size_t n, struct tok_segs *sg)
{
	size_t prev = 0;
	sg->n = 0;
	for (size_t i = 0; i < n;) {
		int32_t cp;
		size_t cl = tok_utf8_decode(s + i, n - i, &cp);
		if (pred ? pred(cp) : cp == cp_eq) {
			if (prev != i && seg_add(sg, prev, i, false))
				return CAL_ERR_NOMEM;
			if (seg_add(sg, i, i + cl, true))
				return CAL_ERR_NOMEM;
			prev = i + cl;
		}
		i += cl;
	}
	if (prev != n && seg_add(sg, prev, n, false))
		return CAL_ERR_NOMEM;
	return CAL_OK;
}

/* Applies behavior (and invert) to the segments of s and appends the
 * non-empty resulting pieces to out, mapped through the byte-level
 * alphabet when bytelevel is set. */
static enum cal_status emit(struct tok_pieces *out, const char *s, bool first,
			    struct tok_segs *sg, enum tok_behavior b, bool invert,
			    bool bytelevel);

static enum cal_status add_piece(struct tok_pieces *out, const char *s,
				 size_t n, bool first, bool bytelevel)
{
	if (!n)
		return CAL_OK;
	if (!bytelevel)
		return tok_pieces_add(out, s, n, -1, first);
	if (tok_pieces_add(out, NULL, 0, -1, first) ||
	    tok_buf_reserve(&out->text, 2 * n))
		return CAL_ERR_NOMEM;
	char *d = out->text.p + out->text.n;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		d[k] = bl_chars[c][0];
		d[k + 1] = bl_chars[c][1];
		k += bl_len[c];
	}
	out->text.n += k;
	out->v[out->n - 1].len = k;
	return CAL_OK;
}

static enum cal_status emit(struct tok_pieces *out, const char *s, bool first,
			    struct tok_segs *sg, enum tok_behavior b, bool invert,
			    bool bytelevel)
{
	struct tok_seg *v = sg->v;
	size_t n = sg->n, lo = 0, hi = 0;
	if (invert)
		for (size_t i = 0; i < n; i++)
			v[i].match = !v[i].match;
	bool prev_match = false;
	switch (b) {
	case TOK_SPLIT_REMOVED:
		for (size_t i = 0; i < n; i++)
			if (!v[i].match)
				v[hi++] = v[i];
		break;
	case TOK_SPLIT_ISOLATED:
		hi = n;
		break;
	case TOK_SPLIT_MERGED_PREV:
		for (size_t i = 0; i < n; i++) {
			bool m = v[i].match;
			if (m && !prev_match && hi > 0)
				v[hi - 1].end = v[i].end;
			else
				v[hi++] = v[i];
			prev_match = m;
		}
		break;
	case TOK_SPLIT_MERGED_NEXT:
		lo = hi = n;
		for (size_t i = n; i-- > 0;) {
			bool m = v[i].match;
			if (m && !prev_match && lo < n)
				v[lo].start = v[i].start;
			else
				v[--lo] = v[i];
			prev_match = m;
		}
		break;
	case TOK_SPLIT_CONTIGUOUS:
		for (size_t i = 0; i < n; i++) {
			bool m = v[i].match;
			if (m == prev_match && hi > 0)
				v[hi - 1].end = v[i].end;
			else
				v[hi++] = v[i];
			prev_match = m;
		}
		break;
	}
	for (size_t i = lo; i < hi; i++)
		if (add_piece(out, s + v[i].start, v[i].end - v[i].start,
			      first && v[i].start == 0, bytelevel))
			return CAL_ERR_NOMEM;
	return CAL_OK;
}

/* Runs one (non-Sequence) pre-tokenizer over one text piece. */
static enum cal_status pretok_piece(struct cal_tokenizer *tok, struct tok_pretok *p,
				    const char *s, size_t n, bool first,
				    struct tok_pieces *out)
{
	struct tok_segs *sg = &tok->segs;
	enum cal_status st;
	switch (p->type) {
	case TOK_PRE_SPLIT:
	case TOK_PRE_WHITESPACE:
		if ((st = segs_pattern(&p->pat, s, n, sg)))
			return st;
		return emit(out, s, first, sg, p->behavior, p->invert, false);
	case TOK_PRE_DIGITS:
		if ((st = segs_chars(tok_is_numeric, 0, s, n, sg)))
			return st;
		return emit(out, s, first, sg, p->behavior, false, false);
	case TOK_PRE_PUNCTUATION:
		if ((st = segs_chars(tok_is_punctuation, 0, s, n, sg)))
			return st;
		return emit(out, s, first, sg, p->behavior, false, false);
	case TOK_PRE_WHITESPACE_SPLIT:
		if ((st = segs_chars(tok_is_whitespace, 0, s, n, sg)))
			return st;
		return emit(out, s, first, sg, TOK_SPLIT_REMOVED, false, false);
	case TOK_PRE_BYTELEVEL: {
		struct tok_buf *t = &tok->nbuf2;
		if (p->add_prefix_space && (n == 0 || s[0] != ' ')) {
			t->n = 0;
			if (tok_buf_put(t, " ", 1) || tok_buf_put(t, s, n))
				return CAL_ERR_NOMEM;
			s = t->p;
			n = t->n;
		}
		if (!p->use_regex)
			return add_piece(out, s, n, first, true);
		if ((st = segs_pattern(&p->pat, s, n, sg)))
			return st;
		return emit(out, s, first, sg, TOK_SPLIT_ISOLATED, false, true);
	}
	case TOK_PRE_METASPACE: {
		struct tok_buf *t = &tok->nbuf2;
		char rep[4];
		size_t rl = tok_utf8_encode(p->replacement, rep);
		t->n = 0;
		bool starts = n >= rl && !memcmp(s, rep, rl);
		/* a leading space becomes the replacement first */
		if (!starts && n && s[0] == ' ' && rl)
			starts = true;
		if ((p->prepend == TOK_PREPEND_ALWAYS ||
		     (p->prepend == TOK_PREPEND_FIRST && first)) && !starts &&
		    tok_buf_put(t, rep, rl))
			return CAL_ERR_NOMEM;
		for (size_t i = 0; i < n; i++) {
			if (s[i] == ' ') {
				if (tok_buf_put(t, rep, rl))
					return CAL_ERR_NOMEM;
			} else if (tok_buf_put(t, s + i, 1)) {
				return CAL_ERR_NOMEM;
			}
		}
		if (!p->split)
			return add_piece(out, t->p, t->n, first, false);
		if ((st = segs_chars(NULL, p->replacement, t->p, t->n, sg)))
			return st;
		return emit(out, t->p, first, sg, TOK_SPLIT_MERGED_NEXT, false, false);
	}
	case TOK_PRE_SEQUENCE:
		break;
	}
	return CAL_ERR_INTERNAL;
}

enum cal_status tok_pretokenize(struct cal_tokenizer *tok, struct tok_pretok *p,
				struct tok_pieces *io, struct tok_pieces *spare)
{
	if (p->type == TOK_PRE_SEQUENCE) {
		for (size_t i = 0; i < p->n_kids; i++) {
			enum cal_status st = tok_pretokenize(tok, &p->kids[i], io, spare);
			if (st)
				return st;
		}
		return CAL_OK;
	}
	tok_pieces_clear(spare);
	for (size_t i = 0; i < io->n; i++) {
		struct tok_piece pc = io->v[i];
		const char *s = io->text.p + pc.off;
		enum cal_status st = pc.id >= 0
			? tok_pieces_add(spare, s, pc.len, pc.id, pc.first)
			: pretok_piece(tok, p, s, pc.len, pc.first, spare);
		if (st)
			return st;
	}
	struct tok_pieces t = *io;
	*io = *spare;
	*spare = t;
	return CAL_OK;
}
