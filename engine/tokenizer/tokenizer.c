/*
 * tokenizer.c — loads tokenizer.json into a struct cal_tokenizer and runs
 * the encoding pipeline (see tok_internal.h): lossy UTF-8, added-token
 * extraction (raw, then normalized), normalizer, pre-tokenizer, BPE model,
 * post-processor.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "common/util.h"
#include "tok_internal.h"

#define MAX_IDS ((size_t)1 << 24) /* largest token id accepted, plus one */

/* ---- id arrays ---------------------------------------------------------- */

void cal_tok_ids_free(struct cal_tok_ids *ids)
{
	if (!ids)
		return;
	free(ids->v);
	ids->v = NULL;
	ids->n = ids->cap = 0;
}

enum cal_status cal_tok_ids_push(struct cal_tok_ids *ids, const int32_t *v,
				 size_t n)
{
	if (ids->cap - ids->n < n) {
		size_t cap = ids->cap ? ids->cap : 64;
		while (cap - ids->n < n) {
			if (cap > SIZE_MAX / 2 / sizeof(int32_t))
				return CAL_ERR_NOMEM;
			cap *= 2;
		}
		int32_t *p = realloc(ids->v, cap * sizeof(*p));
		if (!p)
			return CAL_ERR_NOMEM;
		ids->v = p;
		ids->cap = cap;
	}
	if (n)
		memcpy(ids->v + ids->n, v, n * sizeof(*v));
	ids->n += n;
	return CAL_OK;
}

/* ---- added-token tries -------------------------------------------------- */

struct trie_build {
	/* node i: first child, next sibling, byte, added index */
	int32_t *child, *sib, *added;
	uint8_t *byte;
	size_t n, cap;
};

static int32_t tb_node(struct trie_build *t, uint8_t b)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 256;
		int32_t *c = realloc(t->child, cap * sizeof(*c));
		if (c)
			t->child = c;
		int32_t *s = realloc(t->sib, cap * sizeof(*s));
		if (s)
			t->sib = s;
		int32_t *a = realloc(t->added, cap * sizeof(*a));
		if (a)
			t->added = a;
		uint8_t *y = realloc(t->byte, cap);
		if (y)
			t->byte = y;
		if (!c || !s || !a || !y)
			return -1;
		t->cap = cap;
	}
	t->child[t->n] = t->sib[t->n] = t->added[t->n] = -1;
	t->byte[t->n] = b;
	return (int32_t)t->n++;
}

/* Converts the linked build form into the matcher's edge arrays. */
static enum cal_status tb_finish(struct trie_build *t, struct tok_matcher *m)
{
	m->nodes = calloc(t->n, sizeof(*m->nodes));
	m->edge_byte = malloc(t->n);
	m->edge_node = malloc(t->n * sizeof(*m->edge_node));
	if (!m->nodes || !m->edge_byte || !m->edge_node)
		return CAL_ERR_NOMEM;
	m->n_nodes = t->n;
	size_t e = 0;
	for (size_t i = 0; i < t->n; i++) {
		m->nodes[i].added = t->added[i];
		m->nodes[i].child_base = (uint32_t)e;
		for (int32_t c = t->child[i]; c >= 0; c = t->sib[c]) {
			m->edge_byte[e] = t->byte[c];
			m->edge_node[e] = (uint32_t)c;
			e++;
			m->nodes[i].n_child++;
		}
	}
	m->n_edges = e;
	for (size_t k = 0; k < m->nodes[0].n_child; k++)
		m->first[m->edge_byte[k]] = 1;
	return CAL_OK;
}

static void matcher_free(struct tok_matcher *m)
{
	CAL_FREE_ALL(m->nodes, m->edge_byte, m->edge_node);
	memset(m, 0, sizeof(*m));
}

/* Builds the matcher of the added tokens whose `normalized` flag equals
 * normalized (their spelling normalized first, when so flagged). */
static enum cal_status build_matcher(struct cal_tokenizer *tok, bool normalized,
				     struct tok_matcher *m)
{
	struct trie_build t = { 0 };
	enum cal_status st = CAL_ERR_NOMEM;
	m->empty = true;
	if (tb_node(&t, 0) < 0)
		goto out;
	for (size_t i = 0; i < tok->n_added; i++) {
		struct tok_added *a = &tok->added[i];
		if (a->normalized != normalized || !a->n)
			continue;
		m->empty = false;
		int32_t node = 0;
		for (size_t k = 0; k < a->n; k++) {
			uint8_t b = (uint8_t)a->s[k];
			int32_t c = t.child[node];
			while (c >= 0 && t.byte[c] != b)
				c = t.sib[c];
			if (c < 0) {
				if ((c = tb_node(&t, b)) < 0)
					goto out;
				t.sib[c] = t.child[node];
				t.child[node] = c;
			}
			node = c;
		}
		/* the same spelling twice: the first entry wins */
		if (t.added[node] < 0)
			t.added[node] = (int32_t)i;
	}
	st = tb_finish(&t, m);
out:
	CAL_FREE_ALL(t.child, t.sib, t.added, t.byte);
	return st;
}

/* Longest added token starting at s[0..n): its index, *ret_len; or -1. */
static int32_t match_at(const struct tok_matcher *m, const char *s, size_t n,
			size_t *ret_len)
{
	uint32_t node = 0;
	int32_t best = -1;
	for (size_t j = 0; j < n; j++) {
		const struct tok_trie_node *nd = &m->nodes[node];
		uint8_t b = (uint8_t)s[j];
		uint32_t next = UINT32_MAX;
		for (uint32_t k = 0; k < nd->n_child; k++) {
			if (m->edge_byte[nd->child_base + k] == b) {
				next = m->edge_node[nd->child_base + k];
				break;
			}
		}
		if (next == UINT32_MAX)
			break;
		node = next;
		if (m->nodes[node].added >= 0) {
			best = m->nodes[node].added;
			*ret_len = j + 1;
		}
	}
	return best;
}

/* ---- character tests for single_word / lstrip / rstrip ------------------ */

static bool is_word_at(struct cal_tokenizer *tok, const char *s, size_t n)
{
	int rc = pcre2_match(tok->re_alnum, (PCRE2_SPTR)s, n, 0,
			     PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, tok->md_alnum, NULL);
	return rc >= 0;
}

/* start of the last character of s[0..n) */
static size_t last_char(const char *s, size_t n)
{
	size_t k = n - 1;
	while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
		k--;
	return k;
}

/*
 * Splits s[0..n) at the added tokens of m (leftmost-longest, non
 * overlapping), honouring single_word, lstrip and rstrip, and appends the
 * pieces to out: tokens with their id, text between them (after normalizing
 * it, when norm_then is set: the raw pass hands each text segment to the
 * normalized pass).  first: s begins the original text.
 */
static enum cal_status split_added(struct cal_tokenizer *tok,
				   const struct tok_matcher *m, const char *s,
				   size_t n, bool first, bool raw_pass,
				   struct tok_pieces *out);

static enum cal_status text_segment(struct cal_tokenizer *tok, const char *s,
				    size_t n, bool first, bool raw_pass,
				    struct tok_pieces *out)
{
	if (!n)
		return CAL_OK;
	if (!raw_pass)
		return tok_pieces_add(out, s, n, -1, first);
	if (tok->norm) {
		enum cal_status st = tok_normalize(tok->norm, s, n, &tok->nbuf,
						   &tok->nbuf2);
		if (st)
			return st;
		s = tok->nbuf.p;
		n = tok->nbuf.n;
		if (!n)
			return CAL_OK;
	}
	if (tok->match_norm.empty)
		return tok_pieces_add(out, s, n, -1, first);
	return split_added(tok, &tok->match_norm, s, n, first, false, out);
}

static enum cal_status split_added(struct cal_tokenizer *tok,
				   const struct tok_matcher *m, const char *s,
				   size_t n, bool first, bool raw_pass,
				   struct tok_pieces *out)
{
	enum cal_status st;
	size_t done = 0; /* start of text not yet emitted */
	for (size_t i = 0; !m->empty && i < n;) {
		if (!m->first[(unsigned char)s[i]]) {
			i++;
			continue;
		}
		size_t len = 0;
		int32_t ai = match_at(m, s + i, n - i, &len);
		if (ai < 0) {
			i++;
			continue;
		}
		const struct tok_added *a = &tok->added[ai];
		size_t start = i, stop = i + len;
		i = stop;
		if (start < done)
			continue; /* inside a previous token's rstrip */
		if (a->single_word) {
			bool before = start > 0 &&
				is_word_at(tok, s + last_char(s, start),
					   start - last_char(s, start));
			bool after = stop < n && is_word_at(tok, s + stop, n - stop);
			if (before || after)
				continue;
		}
		if (a->lstrip) {
			size_t k = start;
			while (k > done) {
				size_t c = last_char(s, k);
				int32_t cp;
				tok_utf8_decode(s + c, k - c, &cp);
				if (!tok_is_whitespace(cp))
					break;
				k = c;
			}
			start = k;
		}
		if (a->rstrip) {
			while (stop < n) {
				int32_t cp;
				size_t cl = tok_utf8_decode(s + stop, n - stop, &cp);
				if (!tok_is_whitespace(cp))
					break;
				stop += cl;
			}
			i = stop;
		}
		if ((st = text_segment(tok, s + done, start - done, first && done == 0,
				       raw_pass, out)))
			return st;
		if ((st = tok_pieces_add(out, s + start, stop - start, a->id,
					 first && start == 0)))
			return st;
		done = stop;
	}
	return text_segment(tok, s + done, n - done, first && done == 0, raw_pass, out);
}

/* ---- post-processors ---------------------------------------------------- */

static enum cal_status ids_from_json(json_t *a, struct cal_tok_ids *out,
				     const char *what, struct cal_error *err)
{
	size_t i;
	json_t *v;
	json_array_foreach(a, i, v) {
		json_int_t x = json_integer_value(v);
		if (!json_is_integer(v) || x < 0 || x >= (json_int_t)MAX_IDS)
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "post_processor %s: bad token id", what);
		int32_t id = (int32_t)x;
		if (cal_tok_ids_push(out, &id, 1))
			return CAL_ERR_NOMEM;
	}
	return CAL_OK;
}

/* Parses one post-processor into the ids it puts before and after a
 * single sequence. */
static enum cal_status parse_post(json_t *j, struct cal_tok_ids *pre,
				  struct cal_tok_ids *suf, struct cal_error *err)
{
	const char *type = json_string_value(json_object_get(j, "type"));
	if (!type)
		return cal_error_set(err, CAL_ERR_FORMAT, "post_processor without a 'type'");
	if (!strcmp(type, "ByteLevel"))
		return CAL_OK; /* only trims offsets */
	if (!strcmp(type, "TemplateProcessing")) {
		json_t *single = json_object_get(j, "single");
		json_t *specials = json_object_get(j, "special_tokens");
		if (!json_is_array(single))
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "post_processor TemplateProcessing: 'single' must be an array");
		bool seen = false;
		size_t i;
		json_t *it;
		json_array_foreach(single, i, it) {
			json_t *sp = json_object_get(it, "SpecialToken");
			json_t *sq = json_object_get(it, "Sequence");
			if (sq) {
				const char *id = json_string_value(json_object_get(sq, "id"));
				if (!id || strcmp(id, "A") || seen)
					return cal_error_set(err, CAL_ERR_UNSUPPORTED,
							     "post_processor TemplateProcessing: single template must hold sequence A once");
				seen = true;
				continue;
			}
			const char *name = json_string_value(json_object_get(sp, "id"));
			json_t *def = name ? json_object_get(specials, name) : NULL;
			json_t *ids = json_object_get(def, "ids");
			if (!json_is_array(ids))
				return cal_error_set(err, CAL_ERR_FORMAT,
						     "post_processor TemplateProcessing: special token '%s' is not defined",
						     name ? name : "(missing)");
			enum cal_status st = ids_from_json(ids, seen ? suf : pre,
							   "TemplateProcessing", err);
			if (st)
				return st;
		}
		if (!seen)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "post_processor TemplateProcessing: single template lacks sequence A");
		return CAL_OK;
	}
	if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
		json_t *cls = json_array_get(json_object_get(j, "cls"), 1);
		json_t *sep = json_array_get(json_object_get(j, "sep"), 1);
		json_int_t c = json_integer_value(cls), s = json_integer_value(sep);
		if (!json_is_integer(cls) || !json_is_integer(sep) || c < 0 || s < 0 ||
		    c >= (json_int_t)MAX_IDS || s >= (json_int_t)MAX_IDS)
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "post_processor %s: 'cls' and 'sep' must be [token, id]", type);
		int32_t ci = (int32_t)c, si = (int32_t)s;
		if (cal_tok_ids_push(pre, &ci, 1) || cal_tok_ids_push(suf, &si, 1))
			return CAL_ERR_NOMEM;
		return CAL_OK;
	}
	if (!strcmp(type, "Sequence")) {
		json_t *a = json_object_get(j, "processors");
		if (!json_is_array(a))
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "post_processor Sequence: 'processors' must be an array");
		size_t i;
		json_t *p;
		json_array_foreach(a, i, p) {
			/* each processor wraps what the previous ones produced */
			struct cal_tok_ids p1 = { 0 }, s1 = { 0 };
			enum cal_status st = parse_post(p, &p1, &s1, err);
			if (!st && (cal_tok_ids_push(&p1, pre->v, pre->n) ||
				    cal_tok_ids_push(suf, s1.v, s1.n)))
				st = CAL_ERR_NOMEM;
			if (!st) {
				cal_tok_ids_free(pre);
				*pre = p1;
				p1 = (struct cal_tok_ids){ 0 };
			}
			cal_tok_ids_free(&p1);
			cal_tok_ids_free(&s1);
			if (st)
				return st;
		}
		return CAL_OK;
	}
	return cal_error_set(err, CAL_ERR_UNSUPPORTED,
			     "post_processor type '%s' is not supported", type);
}

/* ---- loading ------------------------------------------------------------ */

static enum cal_status load_model(struct cal_tokenizer *tok, json_t *model,
				  size_t n_ids, struct cal_error *err)
{
	struct tok_bpe *m = &tok->bpe;
	enum cal_status st;
	json_t *vocab = json_object_get(model, "vocab");
	json_t *merges = json_object_get(model, "merges");
	if ((st = tok_bpe_init(m, n_ids)))
		return st;

	const char *pre = json_string_value(json_object_get(model, "continuing_subword_prefix"));
	const char *suf = json_string_value(json_object_get(model, "end_of_word_suffix"));
	if (pre && *pre) {
		if (!(m->prefix = strdup(pre)))
			return CAL_ERR_NOMEM;
		m->prefix_len = strlen(pre);
	}
	if (suf && *suf) {
		if (!(m->suffix = strdup(suf)))
			return CAL_ERR_NOMEM;
		m->suffix_len = strlen(suf);
	}
	m->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
	m->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
	m->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));

	for (void *it = json_object_iter(vocab); it;
	     it = json_object_iter_next(vocab, it)) {
		const char *k = json_object_iter_key(it);
		size_t kl = json_object_iter_key_len(it);
		json_int_t id = json_integer_value(json_object_iter_value(it));
		st = tok_bpe_add_token(m, k, kl, (int32_t)id);
		if (st == CAL_ERR_FORMAT)
			return cal_error_set(err, st,
					     "model.vocab: token '%.*s' (id %lld) repeats an id or a spelling",
					     (int)kl, k, (long long)id);
		if (st)
			return st;
	}

	const char *unk = json_string_value(json_object_get(model, "unk_token"));
	if (unk) {
		m->unk = tok_bpe_lookup(m, unk, strlen(unk));
		if (m->unk < 0)
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "model.unk_token '%s' is not in the vocabulary", unk);
	}

	if (!json_is_array(merges))
		return cal_error_set(err, CAL_ERR_FORMAT, "model.merges must be an array");
	if ((st = tok_bpe_merges_reserve(m, json_array_size(merges))))
		return st;
	size_t i;
	json_t *mg;
	json_array_foreach(merges, i, mg) {
		const char *a, *b;
		size_t an, bn;
		if (json_is_string(mg)) {
			/* "a b": exactly one space */
			a = json_string_value(mg);
			size_t n = json_string_length(mg);
			const char *sp = memchr(a, ' ', n);
			if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - a)))
				return cal_error_set(err, CAL_ERR_FORMAT,
						     "model.merges[%zu]: '%s' is not two tokens separated by one space",
						     i, a);
			an = (size_t)(sp - a);
			b = sp + 1;
			bn = n - an - 1;
		} else if (json_is_array(mg) && json_array_size(mg) == 2 &&
			   json_is_string(json_array_get(mg, 0)) &&
			   json_is_string(json_array_get(mg, 1))) {
			a = json_string_value(json_array_get(mg, 0));
			an = json_string_length(json_array_get(mg, 0));
			b = json_string_value(json_array_get(mg, 1));
			bn = json_string_length(json_array_get(mg, 1));
		} else {
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", i);
		}
		if ((st = tok_bpe_add_merge(m, a, an, b, bn, err)))
			return cal_error_wrap(err, st, "model.merges[%zu]", i);
	}
	return tok_bpe_finish(m);
}

/* Largest id in the vocabulary and the added tokens; validates ids. */
static enum cal_status count_ids(json_t *vocab, json_t *added, size_t *ret,
				 struct cal_error *err)
{
	json_int_t max = -1;
	for (void *it = json_object_iter(vocab); it;
	     it = json_object_iter_next(vocab, it)) {
		json_t *v = json_object_iter_value(it);
		json_int_t id = json_integer_value(v);
		if (!json_is_integer(v) || id < 0 || id >= (json_int_t)MAX_IDS)
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "model.vocab: token '%s' has an invalid id",
					     json_object_iter_key(it));
		if (id > max)
			max = id;
	}
	size_t i;
	json_t *a;
	json_array_foreach(added, i, a) {
		json_t *v = json_object_get(a, "id");
		json_int_t id = json_integer_value(v);
		if (!json_is_integer(v) || id < 0 || id >= (json_int_t)MAX_IDS ||
		    !json_is_string(json_object_get(a, "content")))
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "added_tokens[%zu]: needs an integer 'id' below %zu and a 'content' string",
					     i, MAX_IDS);
		if (id > max)
			max = id;
	}
	*ret = (size_t)(max + 1);
	return CAL_OK;
}

/*
 * The id `tokenizers` gives added token number i when it loads the file
 * (it re-adds them rather than trusting the file's "id"): an earlier added
 * token's id when the spelling repeats, else the model vocabulary's id for
 * that spelling, else the next id after the vocabulary and the earlier
 * added tokens.  Files written by `tokenizers` always agree with this.
 */
static int32_t added_id(struct cal_tokenizer *tok, const char *s, size_t n,
			size_t i, int64_t *max_added)
{
	for (size_t k = 0; k < i; k++)
		if (tok->added[k].raw_n == n && !memcmp(tok->added[k].raw, s, n))
			return tok->added[k].id;
	int32_t id = tok_bpe_lookup(&tok->bpe, s, n);
	if (id < 0) {
		int64_t vs = (int64_t)tok->bpe.n_tokens;
		id = (int32_t)(*max_added < 0 ? vs
			       : (*max_added >= vs || vs == 0) ? *max_added + 1 : vs);
	}
	if (id > *max_added)
		*max_added = id;
	return id;
}

static enum cal_status load_added(struct cal_tokenizer *tok, json_t *added,
				  struct cal_error *err)
{
	int64_t max_added = -1;
	size_t n = json_array_size(added);
	tok->added = calloc(n ? n : 1, sizeof(*tok->added));
	if (!tok->added)
		return CAL_ERR_NOMEM;
	size_t i;
	json_t *a;
	json_array_foreach(added, i, a) {
		struct tok_added *t = &tok->added[i];
		json_t *c = json_object_get(a, "content");
		tok->n_added = i + 1;
		t->id = added_id(tok, json_string_value(c), json_string_length(c), i,
				 &max_added);
		t->single_word = json_is_true(json_object_get(a, "single_word"));
		t->lstrip = json_is_true(json_object_get(a, "lstrip"));
		t->rstrip = json_is_true(json_object_get(a, "rstrip"));
		t->special = json_is_true(json_object_get(a, "special"));
		json_t *nm = json_object_get(a, "normalized");
		t->normalized = nm ? json_is_true(nm) : !t->special;
		const char *s = json_string_value(c);
		size_t sn = json_string_length(c);
		if (!(t->raw = malloc(sn + 1)))
			return CAL_ERR_NOMEM;
		memcpy(t->raw, s, sn + 1);
		t->raw_n = sn;
		if (t->id >= 0 && (size_t)t->id >= tok->vocab_size)
			tok->vocab_size = (size_t)t->id + 1;
		if (t->normalized && tok->norm) {
			enum cal_status st = tok_normalize(tok->norm, s, sn, &tok->nbuf,
							   &tok->nbuf2);
			if (st)
				return st;
			s = tok->nbuf.p ? tok->nbuf.p : "";
			sn = tok->nbuf.n;
		}
		if (!(t->s = malloc(sn + 1)))
			return CAL_ERR_NOMEM;
		memcpy(t->s, s, sn);
		t->s[sn] = 0;
		t->n = sn;
	}
	(void)err;
	enum cal_status st = build_matcher(tok, false, &tok->match_raw);
	if (!st)
		st = build_matcher(tok, true, &tok->match_norm);
	return st;
}

enum cal_status tok_part_parse(const struct tok_part_kind *k, void *part, json_t *json,
			       struct cal_error *err)
{
	const char *type = json_string_value(json_object_get(json, "type"));
	if (!json_is_object(json) || !type)
		return cal_error_set(err, CAL_ERR_FORMAT, "%s without a 'type'", k->what);
	for (size_t i = 0; i < k->n_types; i++)
		if (!strcmp(type, k->types[i]))
			return k->parse(part, (int)i, json, err);
	return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s type '%s' is not supported", k->what,
			     type);
}

void *tok_parse_seq(json_t *json, const char *key, const struct tok_part_kind *k,
		    size_t *ret_n, enum cal_status *ret_st, struct cal_error *err)
{
	*ret_n = 0;
	*ret_st = CAL_OK;
	json_t *a = json_object_get(json, key);
	if (!json_is_array(a)) {
		*ret_st = cal_error_set(err, CAL_ERR_FORMAT, "%s Sequence: '%s' must be an array",
					k->what, key);
		return NULL;
	}
	size_t n = json_array_size(a);
	char *kids = calloc(n ? n : 1, k->size);
	if (!kids)
		*ret_st = CAL_ERR_NOMEM;
	for (size_t i = 0; kids && i < n && !*ret_st; i++) {
		*ret_n = i + 1;
		*ret_st = tok_part_parse(k, kids + i * k->size, json_array_get(a, i), err);
	}
	return kids;
}

void tok_free_seq(void *kids, size_t n, const struct tok_part_kind *k)
{
	for (size_t i = 0; i < n; i++)
		k->free((char *)kids + i * k->size);
	free(kids);
}

/* The component root[key] of kind k (calloc'd) into *ret; *ret NULL when
 * it is absent or null. */
static enum cal_status parse_part(json_t *root, const char *key, const struct tok_part_kind *k,
				  void **ret, struct cal_error *err)
{
	*ret = NULL;
	json_t *j = json_object_get(root, key);
	if (!j || json_is_null(j))
		return CAL_OK;
	if (!(*ret = calloc(1, k->size)))
		return CAL_ERR_NOMEM;
	return tok_part_parse(k, *ret, j, err);
}

static enum cal_status load_json(struct cal_tokenizer *tok, json_t *root,
				 struct cal_error *err)
{
	enum cal_status st;
	json_t *model = json_object_get(root, "model");
	json_t *added = json_object_get(root, "added_tokens");
	if (!json_is_object(root) || !json_is_object(model))
		return cal_error_set(err, CAL_ERR_FORMAT, "no 'model' object");
	if (added && !json_is_array(added) && !json_is_null(added))
		return cal_error_set(err, CAL_ERR_FORMAT, "'added_tokens' must be an array");
	const char *mtype = json_string_value(json_object_get(model, "type"));
	if (mtype ? strcmp(mtype, "BPE") != 0 : !json_object_get(model, "merges"))
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "model type '%s' is not supported (only BPE)",
				     mtype ? mtype : "(untyped)");
	json_t *drop = json_object_get(model, "dropout");
	if (drop && !json_is_null(drop) && json_number_value(drop) != 0.0)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "model BPE with dropout is not supported (it is random)");
	json_t *vocab = json_object_get(model, "vocab");
	if (!json_is_object(vocab))
		return cal_error_set(err, CAL_ERR_FORMAT, "model.vocab must be an object");

	size_t n_ids = 0;
	if ((st = count_ids(vocab, added, &n_ids, err)))
		return st;

	void *part = NULL;
	st = parse_part(root, "normalizer", &tok_normalizer_kind, &part, err);
	tok->norm = part;
	if (st)
		return st;
	st = parse_part(root, "pre_tokenizer", &tok_pretok_kind, &part, err);
	tok->pre = part;
	if (st)
		return st;
	json_t *post = json_object_get(root, "post_processor");
	struct cal_tok_ids pre = { 0 }, suf = { 0 };
	if (post && !json_is_null(post))
		st = parse_post(post, &pre, &suf, err);
	tok->post_prefix = pre.v;
	tok->n_post_prefix = pre.n;
	tok->post_suffix = suf.v;
	tok->n_post_suffix = suf.n;
	if (st)
		return st;
	if ((st = load_model(tok, model, n_ids, err)))
		return st;
	tok->vocab_size = n_ids;
	if ((st = load_added(tok, added, err)))
		return st;
	for (size_t i = 0; i < pre.n + suf.n; i++) {
		int32_t id = i < pre.n ? pre.v[i] : suf.v[i - pre.n];
		if ((size_t)id >= tok->vocab_size)
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "post_processor: token id %d is outside the vocabulary", id);
	}

	struct tok_pattern w = { 0 };
	if ((st = tok_pattern_regex(&w, "\\w", 2, "word test", err)))
		return st;
	tok->re_alnum = w.re;
	tok->md_alnum = w.md;
	return CAL_OK;
}

enum cal_status cal_tokenizer_load_buffer(const char *json, size_t len,
					  const char *name,
					  struct cal_tokenizer **ret,
					  struct cal_error *err)
{
	*ret = NULL;
	struct cal_tokenizer *tok = calloc(1, sizeof(*tok));
	if (!tok)
		return CAL_ERR_NOMEM;
	enum cal_status st = CAL_ERR_NOMEM;
	json_error_t je;
	json_t *root = json_loadb(json, len, JSON_ALLOW_NUL, &je);
	if (!(tok->name = strdup(name ? name : "tokenizer.json")))
		goto fail;
	if (!root) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: line %d: %s", tok->name,
				   je.line, je.text);
		goto fail;
	}
	if ((st = load_json(tok, root, err))) {
		if (st == CAL_ERR_NOMEM && !(err && err->msg))
			goto fail;
		cal_error_wrap(err, st, "%s", tok->name);
		goto fail;
	}
	json_decref(root);
	*ret = tok;
	return CAL_OK;
fail:
	json_decref(root);
	cal_tokenizer_free(tok);
	return st;
}

enum cal_status cal_tokenizer_load(const char *path, struct cal_tokenizer **ret,
				   struct cal_error *err)
{
	*ret = NULL;
	struct stat sb;
	char *file = NULL, *buf = NULL;
	size_t len;
	enum cal_status st;
	if (stat(path, &sb) != 0)
		return cal_error_set(err, errno == ENOENT ? CAL_ERR_NOTFOUND : CAL_ERR_IO,
				     "%s: %s", path, strerror(errno));
	bool is_dir = S_ISDIR(sb.st_mode);
	file = is_dir ? cal_path_join(path, "tokenizer.json") : strdup(path);
	if (!file)
		return CAL_ERR_NOMEM;
	if (is_dir && stat(file, &sb) != 0) {
		st = cal_error_set(err, CAL_ERR_NOTFOUND,
				   "%s: no tokenizer.json (only tokenizer.json is supported, not "
				   "sentencepiece or tiktoken files)", path);
		goto out;
	}
	if ((st = cal_read_file(file, CAL_TOKENIZER_MAX_JSON, &buf, &len, err)))
		goto out;
	st = cal_tokenizer_load_buffer(buf, len, file, ret, err);
out:
	CAL_FREE_ALL(buf, file);
	return st;
}

void cal_tokenizer_free(struct cal_tokenizer *tok)
{
	if (!tok)
		return;
	tok_bpe_free(&tok->bpe);
	for (size_t i = 0; i < tok->n_added; i++)
		CAL_FREE_ALL(tok->added[i].s, tok->added[i].raw);
	matcher_free(&tok->match_raw);
	matcher_free(&tok->match_norm);
	tok_free_seq(tok->norm, tok->norm != NULL, &tok_normalizer_kind);
	tok_free_seq(tok->pre, tok->pre != NULL, &tok_pretok_kind);
	CAL_FREE_ALL(tok->name, tok->added, tok->post_prefix, tok->post_suffix);
	pcre2_match_data_free(tok->md_alnum);
	pcre2_code_free(tok->re_alnum);
	tok_buf_free(&tok->in);
	tok_buf_free(&tok->nbuf);
	tok_buf_free(&tok->nbuf2);
	tok_pieces_free(&tok->pa);
	tok_pieces_free(&tok->pb);
	tok_pieces_free(&tok->pc);
	free(tok->segs.v);
	free(tok);
}

/* ---- encoding ----------------------------------------------------------- */

enum cal_status cal_tokenizer_encode(struct cal_tokenizer *tok, const char *text,
				     size_t len, bool add_special,
				     struct cal_tok_ids *out,
				     struct cal_error *err)
{
	enum cal_status st;
	if (len > (size_t)INT32_MAX)
		return cal_error_set(err, CAL_ERR_RANGE,
				     "text of %zu bytes is over the 2 GiB limit", len);
	if (tok_utf8_valid_prefix(text, len) != len) {
		tok->in.n = 0;
		if ((st = tok_utf8_lossy(text, len, &tok->in)))
			return st;
		text = tok->in.p;
		len = tok->in.n;
	}
	if (add_special && (st = cal_tok_ids_push(out, tok->post_prefix,
						  tok->n_post_prefix)))
		return st;

	struct tok_pieces *pa = &tok->pa;
	tok_pieces_clear(pa);
	if (tok->match_raw.empty)
		st = text_segment(tok, text, len, true, true, pa);
	else
		st = split_added(tok, &tok->match_raw, text, len, true, true, pa);
	if (st)
		return st;
	if (tok->pre && (st = tok_pretokenize(tok, tok->pre, pa, &tok->pb)))
		return st;
	for (size_t i = 0; i < pa->n; i++) {
		struct tok_piece *p = &pa->v[i];
		st = p->id >= 0 ? cal_tok_ids_push(out, &p->id, 1)
				: tok_bpe_encode_word(&tok->bpe, pa->text.p + p->off,
						      p->len, out, err);
		if (st)
			return st;
	}
	if (add_special && (st = cal_tok_ids_push(out, tok->post_suffix,
						  tok->n_post_suffix)))
		return st;
	return CAL_OK;
}

size_t cal_tokenizer_vocab_size(const struct cal_tokenizer *tok)
{
	return tok->vocab_size;
}

int32_t cal_tokenizer_token_id(const struct cal_tokenizer *tok, const char *s,
			       size_t len)
{
	for (size_t i = 0; i < tok->n_added; i++)
		if (tok->added[i].n == len && !memcmp(tok->added[i].s, s, len))
			return tok->added[i].id;
	return tok_bpe_lookup(&tok->bpe, s, len);
}

const char *cal_tokenizer_token_str(const struct cal_tokenizer *tok, int32_t id,
				    size_t *ret_len)
{
	if (id < 0 || (size_t)id >= tok->vocab_size)
		return NULL;
	if ((size_t)id < tok->bpe.n_ids && tok->bpe.str_off[id] != SIZE_MAX) {
		*ret_len = tok->bpe.str_len[id];
		return tok->bpe.strs.p + tok->bpe.str_off[id];
	}
	for (size_t i = 0; i < tok->n_added; i++) {
		if (tok->added[i].id == id) {
			*ret_len = tok->added[i].n;
			return tok->added[i].s;
		}
	}
	return NULL;
}

void cal_tokenizer_special_counts(const struct cal_tokenizer *tok,
				  size_t *ret_prefix, size_t *ret_suffix)
{
	*ret_prefix = tok->n_post_prefix;
	*ret_suffix = tok->n_post_suffix;
}

enum cal_status cal_tokenizer_wrap_special(const struct cal_tokenizer *tok,
					   const int32_t *ids, size_t n,
					   struct cal_tok_ids *out)
{
	if (cal_tok_ids_push(out, tok->post_prefix, tok->n_post_prefix) ||
	    cal_tok_ids_push(out, ids, n) ||
	    cal_tok_ids_push(out, tok->post_suffix, tok->n_post_suffix))
		return CAL_ERR_NOMEM;
	return CAL_OK;
}

void cal_tokenizer_set_cache(struct cal_tokenizer *tok, bool enabled)
{
	tok_bpe_set_cache(&tok->bpe, enabled);
}
