/*
 * bpe.c — the BPE model: vocabulary hash (spelling → id), merge table keyed
 * by the (left id, right id) pair, the per-word merge loop and a bounded
 * word cache.
 *
 * Merge order is the one `tokenizers` defines: repeatedly apply the
 * adjacent pair of lowest merge rank, the leftmost one among equal ranks.
 * Short words use a linear scan over cached pair ranks; long words (long
 * runs of spaces or digits without a pre-tokenizer) use a binary heap with
 * lazy invalidation, so a word costs O(n log n) rather than O(n^2).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define EMPTY32 UINT32_MAX
#define LINEAR_MAX 48         /* symbols: linear scan up to here */
#define CACHE_WORD_MAX 512    /* bytes: longer words are not cached */
#define CACHE_SLOTS (1u << 15)

struct tok_sym {
	int32_t id;
	int32_t prev, next;
	uint32_t rank; /* linear scan: rank of the pair (this, next) */
	int32_t newid;
};

struct tok_heap_item {
	uint32_t rank;
	int32_t pos;
	int32_t newid;
};

struct tok_cache_entry {
	uint64_t hash;
	uint32_t wlen, nids;
	int32_t ids[]; /* then the word's bytes */
};

static uint64_t hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xA24BAED4963EE407ull);
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, s, 8);
		h = (h ^ w) * 0xFF51AFD7ED558CCDull;
		h ^= h >> 32;
		s += 8;
		n -= 8;
	}
	uint64_t w = 0;
	memcpy(&w, s, n);
	h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
	h ^= h >> 29;
	h *= 0xFF51AFD7ED558CCDull;
	h ^= h >> 32;
	return h;
}

static uint64_t hash_pair(uint64_t key)
{
	key *= 0x9E3779B97F4A7C15ull;
	return key ^ (key >> 31);
}

enum cal_status tok_bpe_init(struct tok_bpe *m, size_t n_ids)
{
	m->unk = -1;
	m->n_ids = n_ids;
	m->str_off = malloc((n_ids ? n_ids : 1) * sizeof(*m->str_off));
	m->str_len = calloc(n_ids ? n_ids : 1, sizeof(*m->str_len));
	size_t slots = 16;
	while (slots < n_ids * 2)
		slots *= 2;
	m->vslot = malloc(slots * sizeof(*m->vslot));
	if (!m->str_off || !m->str_len || !m->vslot)
		return CAL_ERR_NOMEM;
	for (size_t i = 0; i < n_ids; i++)
		m->str_off[i] = SIZE_MAX;
	memset(m->vslot, 0xFF, slots * sizeof(*m->vslot));
	m->vmask = slots - 1;
	for (int i = 0; i < 256; i++)
		m->byte_ids[i] = -1;
	return CAL_OK;
}

void tok_bpe_free(struct tok_bpe *m)
{
	free(m->str_off);
	free(m->str_len);
	tok_buf_free(&m->strs);
	free(m->vslot);
	free(m->mkey);
	free(m->mrank);
	free(m->mnew);
	free(m->prefix);
	free(m->suffix);
	if (m->cache) {
		for (size_t i = 0; i < CACHE_SLOTS; i++)
			free(m->cache[i]);
		free(m->cache);
	}
	free(m->syms);
	free(m->heap);
	cal_tok_ids_free(&m->word);
	tok_buf_free(&m->sbuf);
	memset(m, 0, sizeof(*m));
}

int32_t tok_bpe_lookup(const struct tok_bpe *m, const char *s, size_t n)
{
	size_t i = hash_bytes(s, n) & m->vmask;
	for (;;) {
		uint32_t id = m->vslot[i];
		if (id == EMPTY32)
			return -1;
		if (m->str_len[id] == n && !memcmp(m->strs.p + m->str_off[id], s, n))
			return (int32_t)id;
		i = (i + 1) & m->vmask;
	}
}

enum cal_status tok_bpe_add_token(struct tok_bpe *m, const char *s, size_t n,
				  int32_t id)
{
	if (id < 0 || (size_t)id >= m->n_ids || m->str_off[id] != SIZE_MAX ||
	    n > UINT32_MAX)
		return CAL_ERR_FORMAT;
	size_t i = hash_bytes(s, n) & m->vmask;
	for (;;) {
		uint32_t o = m->vslot[i];
		if (o == EMPTY32)
			break;
		if (m->str_len[o] == n && !memcmp(m->strs.p + m->str_off[o], s, n))
			return CAL_ERR_FORMAT;
		i = (i + 1) & m->vmask;
	}
	m->str_off[id] = m->strs.n;
	m->str_len[id] = (uint32_t)n;
	if (tok_buf_put(&m->strs, s, n))
		return CAL_ERR_NOMEM;
	m->vslot[i] = (uint32_t)id;
	m->n_tokens++;
	return CAL_OK;
}

enum cal_status tok_bpe_merges_reserve(struct tok_bpe *m, size_t n_merges)
{
	size_t slots = 16;
	while (slots < n_merges * 2)
		slots *= 2;
	m->mkey = calloc(slots, sizeof(*m->mkey));
	m->mrank = malloc(slots * sizeof(*m->mrank));
	m->mnew = malloc(slots * sizeof(*m->mnew));
	if (!m->mkey || !m->mrank || !m->mnew)
		return CAL_ERR_NOMEM;
	m->mmask = slots - 1;
	return CAL_OK;
}

/* Looks up the pair (a, b): returns its rank and sets *newid, or EMPTY32. */
static inline uint32_t merge_find(const struct tok_bpe *m, int32_t a, int32_t b,
				  int32_t *newid)
{
	uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
	size_t i = hash_pair(key) & m->mmask;
	for (;;) {
		uint64_t k = m->mkey[i];
		if (k == key) {
			*newid = (int32_t)m->mnew[i];
			return m->mrank[i];
		}
		if (!k)
			return EMPTY32;
		i = (i + 1) & m->mmask;
	}
}

enum cal_status tok_bpe_add_merge(struct tok_bpe *m, const char *a, size_t an,
				  const char *b, size_t bn, struct cal_error *err)
{
	int32_t ia = tok_bpe_lookup(m, a, an), ib = tok_bpe_lookup(m, b, bn);
	if (ia < 0 || ib < 0)
		return cal_error_set(err, CAL_ERR_FORMAT,
				     "merge %zu ('%.*s' '%.*s'): token '%.*s' is not in the vocabulary",
				     m->n_merges, (int)an, a, (int)bn, b,
				     ia < 0 ? (int)an : (int)bn, ia < 0 ? a : b);
	/* the merged token drops the right part's continuing-subword prefix */
	size_t skip = m->prefix_len;
	if (skip > bn)
		return cal_error_set(err, CAL_ERR_FORMAT,
				     "merge %zu: '%.*s' is shorter than the continuing_subword_prefix",
				     m->n_merges, (int)bn, b);
	m->sbuf.n = 0;
	if (tok_buf_put(&m->sbuf, a, an) || tok_buf_put(&m->sbuf, b + skip, bn - skip))
		return CAL_ERR_NOMEM;
	int32_t inew = tok_bpe_lookup(m, m->sbuf.p, m->sbuf.n);
	if (inew < 0)
		return cal_error_set(err, CAL_ERR_FORMAT,
				     "merge %zu ('%.*s' '%.*s'): result '%.*s' is not in the vocabulary",
				     m->n_merges, (int)an, a, (int)bn, b,
				     (int)m->sbuf.n, m->sbuf.p);
	uint64_t key = (((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib) + 1;
	size_t i = hash_pair(key) & m->mmask;
	while (m->mkey[i] && m->mkey[i] != key)
		i = (i + 1) & m->mmask;
	/* a repeated pair keeps the later rank, as a map built in order does */
	m->mkey[i] = key;
	m->mrank[i] = (uint32_t)m->n_merges;
	m->mnew[i] = (uint32_t)inew;
	m->n_merges++;
	return CAL_OK;
}

enum cal_status tok_bpe_finish(struct tok_bpe *m)
{
	for (int b = 0; b < 256; b++) {
		char s[8];
		snprintf(s, sizeof(s), "<0x%02X>", b);
		m->byte_ids[b] = tok_bpe_lookup(m, s, 6);
	}
	/* single characters below U+0800 (all of the byte-level alphabet) */
	for (int32_t c = 0; c < TOK_CHAR_IDS; c++) {
		char s[4];
		size_t n = tok_utf8_encode(c, s);
		m->char_ids[c] = tok_bpe_lookup(m, s, n);
	}
	tok_bpe_set_cache(m, true);
	return m->cache ? CAL_OK : CAL_ERR_NOMEM;
}

void tok_bpe_set_cache(struct tok_bpe *m, bool enabled)
{
	if (enabled && !m->cache) {
		m->cache = calloc(CACHE_SLOTS, sizeof(*m->cache));
		m->cache_mask = m->cache ? CACHE_SLOTS - 1 : 0;
	} else if (!enabled && m->cache) {
		for (size_t i = 0; i < CACHE_SLOTS; i++)
			free(m->cache[i]);
		free(m->cache);
		m->cache = NULL;
		m->cache_mask = 0;
	}
}

static enum cal_status sym_push(struct tok_bpe *m, size_t *n, int32_t id)
{
	struct tok_sym *s = cal_grow(m->syms, &m->syms_cap, *n + 1, sizeof(*s), 64);
	if (!s)
		return CAL_ERR_NOMEM;
	m->syms = s;
	m->syms[*n] = (struct tok_sym){ .id = id, .prev = (int32_t)*n - 1,
					.next = (int32_t)*n + 1 };
	(*n)++;
	return CAL_OK;
}

/* Linear scan: each pass applies the leftmost lowest-rank pair. */
static void merge_linear(struct tok_bpe *m, size_t n)
{
	struct tok_sym *s = m->syms;
	for (size_t i = 0; i + 1 < n; i++)
		s[i].rank = merge_find(m, s[i].id, s[i + 1].id, &s[i].newid);
	if (n)
		s[n - 1].rank = EMPTY32;
	for (;;) {
		uint32_t best = EMPTY32;
		int32_t bi = -1;
		for (int32_t i = 0; i >= 0 && (size_t)i < n; i = s[i].next) {
			if (s[i].rank < best) {
				best = s[i].rank;
				bi = i;
			}
		}
		if (bi < 0)
			break;
		struct tok_sym *x = &s[bi];
		int32_t nx = x->next;
		x->id = x->newid;
		x->next = s[nx].next;
		if ((size_t)x->next < n)
			s[x->next].prev = bi;
		x->rank = (size_t)x->next < n
			? merge_find(m, x->id, s[x->next].id, &x->newid) : EMPTY32;
		if (x->prev >= 0)
			s[x->prev].rank = merge_find(m, s[x->prev].id, x->id,
						     &s[x->prev].newid);
	}
}

static inline bool heap_less(const struct tok_heap_item *a,
			     const struct tok_heap_item *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static enum cal_status heap_push(struct tok_bpe *m, size_t *hn,
				 struct tok_heap_item it)
{
	struct tok_heap_item *h = cal_grow(m->heap, &m->heap_cap, *hn + 1, sizeof(*h), 64);
	if (!h)
		return CAL_ERR_NOMEM;
	m->heap = h;
	size_t i = (*hn)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!heap_less(&it, &h[p]))
			break;
		h[i] = h[p];
		i = p;
	}
	h[i] = it;
	return CAL_OK;
}

static struct tok_heap_item heap_pop(struct tok_bpe *m, size_t *hn)
{
	struct tok_heap_item *h = m->heap, top = h[0], last = h[--(*hn)];
	size_t i = 0, n = *hn;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && heap_less(&h[c + 1], &h[c]))
			c++;
		if (!heap_less(&h[c], &last))
			break;
		h[i] = h[c];
		i = c;
	}
	if (n)
		h[i] = last;
	return top;
}

/* Heap: pops (rank, position) in order, skipping entries made stale by an
 * earlier merge (the pair at that position no longer yields that token). */
static enum cal_status merge_heap(struct tok_bpe *m, size_t n)
{
	struct tok_sym *s = m->syms;
	size_t hn = 0;
	for (size_t i = 0; i + 1 < n; i++) {
		int32_t nid = -1;
		uint32_t r = merge_find(m, s[i].id, s[i + 1].id, &nid);
		if (r != EMPTY32 &&
		    heap_push(m, &hn, (struct tok_heap_item){ r, (int32_t)i, nid }))
			return CAL_ERR_NOMEM;
	}
	while (hn) {
		struct tok_heap_item it = heap_pop(m, &hn);
		struct tok_sym *x = &s[it.pos];
		if (x->id < 0 || (size_t)x->next >= n)
			continue;
		int32_t nid = -1;
		uint32_t r = merge_find(m, x->id, s[x->next].id, &nid);
		if (r != it.rank || nid != it.newid)
			continue;
		int32_t nx = x->next;
		s[nx].id = -1; /* absorbed */
		x->id = nid;
		x->next = s[nx].next;
		if ((size_t)x->next < n)
			s[x->next].prev = it.pos;
		if (x->prev >= 0) {
			r = merge_find(m, s[x->prev].id, x->id, &nid);
			if (r != EMPTY32 &&
			    heap_push(m, &hn, (struct tok_heap_item){ r, x->prev, nid }))
				return CAL_ERR_NOMEM;
		}
		if ((size_t)x->next < n) {
			r = merge_find(m, x->id, s[x->next].id, &nid);
			if (r != EMPTY32 &&
			    heap_push(m, &hn, (struct tok_heap_item){ r, it.pos, nid }))
				return CAL_ERR_NOMEM;
		}
	}
	return CAL_OK;
}

/* Looks up one character, with the continuing-subword prefix when it is
 * not the first and the end-of-word suffix when it is the last. */
static int32_t char_id(struct tok_bpe *m, const char *c, size_t cn, bool first,
		       bool last, const char **ret_s, size_t *ret_n)
{
	bool pre = !first && m->prefix, suf = last && m->suffix;
	if (!pre && !suf) {
		*ret_s = c;
		*ret_n = cn;
		if (cn <= 2) {
			int32_t cp;
			tok_utf8_decode(c, cn, &cp);
			return m->char_ids[cp];
		}
		return tok_bpe_lookup(m, c, cn);
	}
	m->sbuf.n = 0;
	if ((pre && tok_buf_put(&m->sbuf, m->prefix, m->prefix_len)) ||
	    tok_buf_put(&m->sbuf, c, cn) ||
	    (suf && tok_buf_put(&m->sbuf, m->suffix, m->suffix_len))) {
		*ret_n = 0;
		return -2;
	}
	*ret_s = m->sbuf.p;
	*ret_n = m->sbuf.n;
	return tok_bpe_lookup(m, m->sbuf.p, m->sbuf.n);
}

enum cal_status tok_bpe_encode_word(struct tok_bpe *m, const char *w, size_t n,
				    struct cal_tok_ids *out,
				    struct cal_error *err)
{
	if (!n)
		return CAL_OK;
	if (m->ignore_merges) {
		int32_t id = tok_bpe_lookup(m, w, n);
		if (id >= 0)
			return cal_tok_ids_push(out, &id, 1);
	}
	uint64_t h = 0;
	size_t slot = 0;
	bool cacheable = m->cache && n <= CACHE_WORD_MAX;
	if (cacheable) {
		h = hash_bytes(w, n);
		slot = h & m->cache_mask;
		struct tok_cache_entry *e = m->cache[slot];
		if (e && e->hash == h && e->wlen == n &&
		    !memcmp((const char *)(e->ids + e->nids), w, n))
			return cal_tok_ids_push(out, e->ids, e->nids);
	}

	/* one symbol per character (or per byte with byte_fallback) */
	size_t ns = 0;
	int32_t unk_pending = 0; /* 1: an unk symbol waits to be added */
	for (size_t i = 0; i < n;) {
		int32_t cp;
		size_t cl = tok_utf8_decode(w + i, n - i, &cp);
		const char *s;
		size_t sn;
		int32_t id = char_id(m, w + i, cl, i == 0, i + cl == n, &s, &sn);
		if (id == -2)
			return CAL_ERR_NOMEM;
		i += cl;
		if (id >= 0) {
			if (unk_pending && sym_push(m, &ns, m->unk))
				return CAL_ERR_NOMEM;
			unk_pending = 0;
			if (sym_push(m, &ns, id))
				return CAL_ERR_NOMEM;
			continue;
		}
		if (m->byte_fallback) {
			bool all = true;
			for (size_t k = 0; k < sn; k++)
				all = all && m->byte_ids[(unsigned char)s[k]] >= 0;
			if (all) {
				/* like `tokenizers`, a waiting unk is not
				 * flushed before byte tokens */
				for (size_t k = 0; k < sn; k++)
					if (sym_push(m, &ns, m->byte_ids[(unsigned char)s[k]]))
						return CAL_ERR_NOMEM;
				continue;
			}
		}
		if (m->unk >= 0) {
			if (unk_pending && !m->fuse_unk && sym_push(m, &ns, m->unk))
				return CAL_ERR_NOMEM;
			unk_pending = 1;
		}
		/* no unk token: the character is dropped, as `tokenizers` does */
	}
	if (unk_pending && sym_push(m, &ns, m->unk))
		return CAL_ERR_NOMEM;

	if (ns > 1) {
		if (ns <= LINEAR_MAX && !m->force_heap)
			merge_linear(m, ns);
		else if (merge_heap(m, ns))
			return CAL_ERR_NOMEM;
	}
	size_t start = out->n;
	for (int32_t i = 0; i >= 0 && (size_t)i < ns; i = m->syms[i].next)
		if (cal_tok_ids_push(out, &m->syms[i].id, 1))
			return CAL_ERR_NOMEM;
	(void)err;

	if (cacheable) {
		size_t nids = out->n - start;
		struct tok_cache_entry *e = malloc(sizeof(*e) + nids * sizeof(int32_t) + n);
		if (e) {
			e->hash = h;
			e->wlen = (uint32_t)n;
			e->nids = (uint32_t)nids;
			memcpy(e->ids, out->v + start, nids * sizeof(int32_t));
			memcpy((char *)(e->ids + nids), w, n);
			free(m->cache[slot]);
			m->cache[slot] = e;
		}
	}
	return CAL_OK;
}
