/*
 * tok_internal.h — the tokenizer's private data structures, shared by the
 * files of engine/tokenizer/ (loader, normalizers, pre-tokenizers, BPE model,
 * UTF-8 helpers).  Nothing here is part of the public API.
 *
 * Encoding pipeline (the order Hugging Face `tokenizers` uses):
 *   raw text → lossy UTF-8 → split on non-normalized added tokens →
 *   normalize each remaining segment → split on normalized added tokens →
 *   pre-tokenize into pieces → BPE each piece → post-process (specials).
 * Text moves between stages as a "piece list": pieces are byte ranges in a
 * buffer owned by the list; a piece carrying an added token keeps its id and
 * skips every later stage.
 */
#ifndef CAL_TOK_INTERNAL_H
#define CAL_TOK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/status.h"
#include "common/util.h"
#include "tokenizer.h"

/* ---- growable byte buffer ---------------------------------------------- */

struct tok_buf {
	char *p;
	size_t n, cap;
};

enum cal_status tok_buf_reserve(struct tok_buf *b, size_t extra);
enum cal_status tok_buf_put(struct tok_buf *b, const void *s, size_t n);
void tok_buf_free(struct tok_buf *b);

/* ---- UTF-8 ------------------------------------------------------------- */

/* Length of the valid UTF-8 prefix of s (== n when all of it is valid). */
size_t tok_utf8_valid_prefix(const char *s, size_t n);

/* Appends s with every maximal invalid subsequence replaced by U+FFFD. */
enum cal_status tok_utf8_lossy(const char *s, size_t n, struct tok_buf *out);

/* Decodes the (valid) character at s[0..n); returns its length, *cp the
 * code point.  n must be > 0. */
size_t tok_utf8_decode(const char *s, size_t n, int32_t *cp);

/* Encodes cp into out (4 bytes room); returns the length. */
size_t tok_utf8_encode(int32_t cp, char *out);

/* Unicode predicates with the meaning Rust's char methods give them (the
 * `tokenizers` library is written in Rust). */
bool tok_is_whitespace(int32_t cp);  /* White_Space property */
bool tok_is_numeric(int32_t cp);     /* general category N* */
bool tok_is_punctuation(int32_t cp); /* ASCII punctuation or P* */

/* ---- patterns (Split pre-tokenizer, Replace normalizer) ----------------- */

struct tok_pattern {
	char *lit; /* literal pattern (String form), or NULL */
	size_t lit_len;
	pcre2_code *re; /* compiled regex (Regex form), or NULL */
	pcre2_match_data *md;
	bool jit;
};

/* Compiles an Oniguruma-syntax regex (as `tokenizers` uses) with PCRE2,
 * translating the constructs whose meaning differs (see regex.c). */
enum cal_status tok_pattern_regex(struct tok_pattern *p, const char *src,
				  size_t len, const char *what,
				  struct cal_error *err);
enum cal_status tok_pattern_literal(struct tok_pattern *p, const char *s,
				    size_t len);
void tok_pattern_free(struct tok_pattern *p);

/* Finds the first match at or after byte `from` of s[0..n).  Returns 1 and
 * the match range, 0 when there is none, or a negative status. */
int tok_pattern_find(struct tok_pattern *p, const char *s, size_t n,
		     size_t from, size_t *ret_start, size_t *ret_end);

/* ---- piece lists ------------------------------------------------------- */

struct tok_piece {
	size_t off, len;
	int32_t id;  /* added token id, or -1 for text still to be encoded */
	bool first;  /* piece begins at offset 0 of the original text */
};

struct tok_pieces {
	struct tok_piece *v;
	size_t n, cap;
	struct tok_buf text;
};

void tok_pieces_clear(struct tok_pieces *p);
void tok_pieces_free(struct tok_pieces *p);
/* Appends a piece whose text (s, n) is copied into the list's buffer. */
enum cal_status tok_pieces_add(struct tok_pieces *p, const char *s, size_t n,
			       int32_t id, bool first);

/* A segment of a piece: [start, end) and whether it is a pattern match. */
struct tok_seg {
	size_t start, end;
	bool match;
};

struct tok_segs {
	struct tok_seg *v;
	size_t n, cap;
};

/* ---- normalizers ------------------------------------------------------- */

enum tok_norm_type {
	TOK_NORM_NFC,
	TOK_NORM_NFD,
	TOK_NORM_NFKC,
	TOK_NORM_NFKD,
	TOK_NORM_SEQUENCE,
	TOK_NORM_PREPEND,
	TOK_NORM_REPLACE,
	TOK_NORM_LOWERCASE,
	TOK_NORM_STRIP,
};

struct tok_normalizer {
	enum tok_norm_type type;
	struct tok_normalizer *kids; /* Sequence */
	size_t n_kids;
	char *str;                   /* Prepend text, Replace content */
	size_t str_len;
	struct tok_pattern pat;      /* Replace pattern */
	bool left, right;            /* Strip */
};

/* ---- pre-tokenizers ---------------------------------------------------- */

enum tok_pretok_type {
	TOK_PRE_SEQUENCE,
	TOK_PRE_SPLIT,
	TOK_PRE_BYTELEVEL,
	TOK_PRE_METASPACE,
	TOK_PRE_DIGITS,
	TOK_PRE_PUNCTUATION,
	TOK_PRE_WHITESPACE,
	TOK_PRE_WHITESPACE_SPLIT,
};

enum tok_behavior {
	TOK_SPLIT_REMOVED,
	TOK_SPLIT_ISOLATED,
	TOK_SPLIT_MERGED_PREV,
	TOK_SPLIT_MERGED_NEXT,
	TOK_SPLIT_CONTIGUOUS,
};

enum tok_prepend { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };

struct tok_pretok {
	enum tok_pretok_type type;
	struct tok_pretok *kids; /* Sequence */
	size_t n_kids;
	struct tok_pattern pat;  /* Split, ByteLevel (its regex), Whitespace */
	enum tok_behavior behavior;
	bool invert;
	bool add_prefix_space, use_regex; /* ByteLevel */
	bool individual_digits;           /* Digits */
	int32_t replacement;              /* Metaspace */
	enum tok_prepend prepend;
	bool split;
};

/* ---- BPE model --------------------------------------------------------- */

struct tok_cache_entry; /* bpe.c */
#define TOK_CHAR_IDS 0x800 /* code points with 1- and 2-byte UTF-8 */

struct tok_bpe {
	/* vocabulary: id → spelling, and a hash of spellings */
	size_t n_ids;          /* one more than the largest id */
	size_t n_tokens;       /* number of tokens */
	size_t *str_off;       /* [n_ids], SIZE_MAX where no token */
	uint32_t *str_len;
	struct tok_buf strs;
	uint32_t *vslot;       /* hash slots: id, or UINT32_MAX when empty */
	size_t vmask;
	/* merges: (left, right) → rank, merged id */
	uint64_t *mkey;        /* (left << 32 | right) + 1, 0 = empty */
	uint32_t *mrank, *mnew;
	size_t mmask;
	size_t n_merges;
	/* options */
	int32_t unk;           /* -1: none */
	bool fuse_unk, byte_fallback, ignore_merges;
	char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix */
	size_t prefix_len, suffix_len;
	int32_t byte_ids[256]; /* "<0xAB>" tokens for byte_fallback, -1 when absent */
	int32_t char_ids[TOK_CHAR_IDS]; /* id of each one-character token, or -1 */
	/* word cache (direct mapped) */
	struct tok_cache_entry **cache;
	size_t cache_mask;     /* 0 when disabled */
	bool force_heap;       /* tests: use the heap merge loop for all words */
	/* scratch */
	struct tok_sym *syms;
	size_t syms_cap;
	struct tok_heap_item *heap;
	size_t heap_cap;
	struct cal_tok_ids word;
	struct tok_buf sbuf;
};

/* Initialises an empty vocabulary with room for ids < n_ids. */
enum cal_status tok_bpe_init(struct tok_bpe *m, size_t n_ids);
void tok_bpe_free(struct tok_bpe *m);
/* Adds a token; CAL_ERR_FORMAT when the id or the spelling is taken. */
enum cal_status tok_bpe_add_token(struct tok_bpe *m, const char *s, size_t n,
				  int32_t id);
int32_t tok_bpe_lookup(const struct tok_bpe *m, const char *s, size_t n);
/* Builds the merge table; call after all tokens were added. */
enum cal_status tok_bpe_merges_reserve(struct tok_bpe *m, size_t n_merges);
/* Adds merge number rank (a, b); CAL_ERR_FORMAT when a token is missing. */
enum cal_status tok_bpe_add_merge(struct tok_bpe *m, const char *a, size_t an,
				  const char *b, size_t bn, struct cal_error *err);
/* Finishes loading (byte-fallback table, cache). */
enum cal_status tok_bpe_finish(struct tok_bpe *m);
void tok_bpe_set_cache(struct tok_bpe *m, bool enabled);
/* Encodes one pre-tokenized word and appends its ids to *out. */
enum cal_status tok_bpe_encode_word(struct tok_bpe *m, const char *w, size_t n,
				    struct cal_tok_ids *out,
				    struct cal_error *err);

/* ---- the tokenizer ----------------------------------------------------- */

struct tok_added {
	char *s;      /* spelling matched (normalized when `normalized`) */
	size_t n;
	char *raw;    /* spelling as in the file */
	size_t raw_n;
	int32_t id;
	bool single_word, lstrip, rstrip, normalized, special;
};

/* A set of added tokens matched leftmost-longest (a byte trie). */
struct tok_trie_node {
	uint32_t child_base; /* index in the edge array */
	uint16_t n_child;
	int32_t added;       /* index in tok->added, or -1 */
};

struct tok_matcher {
	struct tok_trie_node *nodes;
	size_t n_nodes;
	uint8_t *edge_byte;
	uint32_t *edge_node;
	size_t n_edges;
	uint8_t first[256];  /* bytes that can start a token */
	bool empty;
};

struct cal_tokenizer {
	char *name;
	size_t vocab_size;            /* one more than the largest id */
	struct tok_bpe bpe;
	struct tok_added *added;
	size_t n_added;
	struct tok_matcher match_raw, match_norm;
	struct tok_normalizer *norm;  /* NULL: none */
	struct tok_pretok *pre;       /* NULL: none */
	int32_t *post_prefix, *post_suffix;
	size_t n_post_prefix, n_post_suffix;
	pcre2_code *re_alnum;         /* single_word checks */
	pcre2_match_data *md_alnum;
	/* scratch */
	struct tok_buf in, nbuf, nbuf2;
	struct tok_pieces pa, pb, pc;
	struct tok_segs segs;
};

/* A kind of tokenizer.json component: normalizers (tok_normalizer_kind,
 * struct tok_normalizer) and pre-tokenizers (tok_pretok_kind, struct
 * tok_pretok).  tok_part_parse looks a component's "type" up in types,
 * then calls parse; free releases what parse, even a failed one, left in
 * a component, not the component itself. */
struct tok_part_kind {
	const char *what;         /* "normalizer": names the kind in errors */
	const char *const *types; /* the "type" words, by the kind's enum value */
	size_t n_types;
	size_t size;              /* of the kind's struct */
	enum cal_status (*parse)(void *part, int type, json_t *json, struct cal_error *err);
	void (*free)(void *part);
};
extern const struct tok_part_kind tok_normalizer_kind, tok_pretok_kind;

/* tokenizer.c */
/* The component json of kind k into part (zeroed, k->size bytes).  Errors:
 * CAL_ERR_FORMAT "normalizer without a 'type'", CAL_ERR_UNSUPPORTED
 * "normalizer type 'X' is not supported", or those of k->parse. */
enum cal_status tok_part_parse(const struct tok_part_kind *k, void *part, json_t *json,
			       struct cal_error *err);
/* The components of kind k in the array json[key] of a Sequence, *ret_st
 * the status: returns them (calloc'd; NULL when not even the array was
 * had), *ret_n of them, also after a failure (for tok_free_seq). */
void *tok_parse_seq(json_t *json, const char *key, const struct tok_part_kind *k,
		    size_t *ret_n, enum cal_status *ret_st, struct cal_error *err);
/* The inverse of tok_parse_seq (and of parse_part, n 1): k->free on each
 * of the n components of kids, then kids itself (NULL with n 0: nothing). */
void tok_free_seq(void *kids, size_t n, const struct tok_part_kind *k);

/* normalize.c */
/* Normalizes s[0..len) into *out (cleared first).  tmp is scratch. */
enum cal_status tok_normalize(struct tok_normalizer *n, const char *s,
			      size_t len, struct tok_buf *out,
			      struct tok_buf *tmp);

/* pretok.c */
/* Runs p over *io (pieces carrying an id pass through); *spare is scratch
 * and *io holds the result afterwards. */
enum cal_status tok_pretokenize(struct cal_tokenizer *tok, struct tok_pretok *p,
				struct tok_pieces *io, struct tok_pieces *spare);

#endif
