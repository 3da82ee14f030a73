/*
 * tokenizer.h — a Hugging Face `tokenizer.json` loader and encoder that
 * produces the same token ids as the `tokenizers` library for the components
 * listed in docs/tokenizer.md (BPE model; Split/ByteLevel/Metaspace/Digits/
 * Punctuation/Whitespace/WhitespaceSplit pre-tokenizers; Unicode, Replace,
 * Prepend, Lowercase, Strip normalizers; added/special tokens; Template,
 * ByteLevel, Roberta and Bert post-processors).  Anything else is refused at
 * load time with CAL_ERR_UNSUPPORTED naming the component: ids are never
 * approximated.
 *
 * Threading: a tokenizer keeps scratch buffers and a word cache, so one
 * tokenizer must be used by one thread at a time.  Load one per thread for
 * parallel encoding (loading is cheap compared to a calibration run).
 */
#ifndef CAL_TOKENIZER_H
#define CAL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

struct cal_tokenizer;

/* A growable array of token ids.  Zero-initialise it; cal_tok_ids_free
 * releases the storage.  Encoding appends to it. */
struct cal_tok_ids {
	int32_t *v;
	size_t n, cap;
};

void cal_tok_ids_free(struct cal_tok_ids *ids);

/* Appends n ids; CAL_ERR_NOMEM on allocation failure. */
enum cal_status cal_tok_ids_push(struct cal_tok_ids *ids, const int32_t *v,
				 size_t n);

/* Upper bound on tokenizer.json size accepted by cal_tokenizer_load. */
#define CAL_TOKENIZER_MAX_JSON ((size_t)512 << 20)

/*
 * Loads a tokenizer.  path is either a tokenizer.json file or a directory
 * holding one (a model checkpoint); tokenizer_config.json is not read (see
 * docs/tokenizer.md).  *ret is owned by the caller
 * (cal_tokenizer_free).  Errors: CAL_ERR_IO / CAL_ERR_NOTFOUND for the file,
 * CAL_ERR_FORMAT for malformed JSON or inconsistent vocab/merges,
 * CAL_ERR_UNSUPPORTED naming the component for what calibd does not
 * implement.
 */
enum cal_status cal_tokenizer_load(const char *path, struct cal_tokenizer **ret,
				   struct cal_error *err);

/* Same, from the JSON text in memory; name is used in error messages. */
enum cal_status cal_tokenizer_load_buffer(const char *json, size_t len,
					  const char *name,
					  struct cal_tokenizer **ret,
					  struct cal_error *err);

/* Frees a tokenizer; NULL is a no-op. */
void cal_tokenizer_free(struct cal_tokenizer *tok);

/*
 * Encodes len bytes of text and appends the ids to *out.  Invalid UTF-8 is
 * first replaced by U+FFFD (one per maximal invalid subsequence, as Python's
 * bytes.decode(errors="replace") and Rust's from_utf8_lossy do).  Added and
 * special tokens inside the text are always recognised; add_special only
 * controls the post-processor (BOS/EOS and the like).  A character with no
 * token, when the model has neither unk_token nor byte_fallback, is dropped
 * (as `tokenizers` drops it).  Errors: CAL_ERR_NOMEM, CAL_ERR_RANGE for text
 * over 2 GiB.
 */
enum cal_status cal_tokenizer_encode(struct cal_tokenizer *tok, const char *text,
				     size_t len, bool add_special,
				     struct cal_tok_ids *out,
				     struct cal_error *err);

/* One more than the largest token id (model vocabulary and added tokens). */
size_t cal_tokenizer_vocab_size(const struct cal_tokenizer *tok);

/* Id of the token spelled exactly s[0..len), or -1. */
int32_t cal_tokenizer_token_id(const struct cal_tokenizer *tok, const char *s,
			       size_t len);

/* Spelling of token id (not NUL-terminated, *ret_len bytes), or NULL. */
const char *cal_tokenizer_token_str(const struct cal_tokenizer *tok, int32_t id,
				    size_t *ret_len);

/* How many ids the post-processor puts before and after a single sequence
 * when add_special is true (e.g. 1 and 0 for a BOS-only template). */
void cal_tokenizer_special_counts(const struct cal_tokenizer *tok,
				  size_t *ret_prefix, size_t *ret_suffix);

/* Appends the post-processor's prefix ids, ids[0..n), then its suffix ids
 * to *out (what encode does with add_special). */
enum cal_status cal_tokenizer_wrap_special(const struct cal_tokenizer *tok,
					   const int32_t *ids, size_t n,
					   struct cal_tok_ids *out);

/* Disables (capacity 0) or re-enables the word cache; for benchmarks and
 * tests.  Encoding results never depend on it. */
void cal_tokenizer_set_cache(struct cal_tokenizer *tok, bool enabled);

#endif
