/*
 * fuzz_tokenizer.c — libFuzzer target: encodes arbitrary bytes with a fixed
 * tiny byte-level BPE tokenizer (Qwen-style Split regex, ByteLevel, added
 * tokens with lstrip / rstrip / single_word, a BOS/EOS template) and checks
 * that the tokens spell the input back exactly (after the lossy UTF-8
 * repair).  It also checks the NFC fast path against utf8proc on the whole
 * input.  The first input byte chooses add_special and the word cache.
 * Added-token ids follow the vocabulary (263...), as `tokenizers` assigns them.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine/tokenizer/tok_internal.h"
#include "engine/tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct cal_tokenizer *tok;
static struct tok_normalizer nfc_norm = { .type = TOK_NORM_NFC };
static uint8_t char_byte[0x200]; /* byte-level character → byte */

static const char *added_json =
	"[{\"id\": 263, \"content\": \"<|im_start|>\", \"special\": true},"
	" {\"id\": 264, \"content\": \"<|endoftext|>\", \"special\": true},"
	" {\"id\": 265, \"content\": \"<mask>\", \"special\": true, \"lstrip\": true, \"rstrip\": true},"
	" {\"id\": 266, \"content\": \"[W]\", \"special\": false, \"single_word\": true},"
	" {\"id\": 267, \"content\": \" x\", \"special\": false, \"rstrip\": true}]";

static void init(void)
{
	json_t *vocab = json_object(), *merges = json_array();
	char ch[256][4];
	int next = 256;
	for (int b = 0; b < 256; b++) {
		int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
		int cp = keep ? b : next++;
		size_t n = tok_utf8_encode(cp, ch[b]);
		ch[b][n] = 0;
		char_byte[cp] = (uint8_t)b;
		json_object_set_new(vocab, ch[b], json_integer(b));
	}
	static const char *pairs[][2] = { { "\xc4\xa0", "t" }, { "h", "e" }, { "\xc4\xa0t", "he" },
					  { "i", "n" }, { "\xc4\xa0", "\xc4\xa0" },
					  { "\xc4\xa0\xc4\xa0", "\xc4\xa0\xc4\xa0" }, { "1", "2" } };
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		char m[32];
		snprintf(m, sizeof(m), "%s%s", pairs[i][0], pairs[i][1]);
		json_object_set_new(vocab, m, json_integer(256 + (int)i));
		json_array_append_new(merges, json_pack("[s, s]", pairs[i][0], pairs[i][1]));
	}
	json_t *root = json_pack(
		"{s:{s:s, s:o, s:o}, s:o, s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]},"
		" s:{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}],"
		" s:{s:{s:[i]}, s:{s:[i]}}}}",
		"model", "type", "BPE", "vocab", vocab, "merges", merges,
		"added_tokens", json_loads(added_json, 0, NULL),
		"pre_tokenizer", "type", "Sequence", "pretokenizers",
		"type", "Split", "pattern", "Regex",
		"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
		"behavior", "Isolated", "invert", 0,
		"type", "ByteLevel", "add_prefix_space", 0, "use_regex", 0,
		"post_processor", "type", "TemplateProcessing", "single",
		"SpecialToken", "id", "<|im_start|>", "type_id", 0,
		"Sequence", "id", "A", "type_id", 0,
		"SpecialToken", "id", "<|endoftext|>", "type_id", 0,
		"special_tokens", "<|im_start|>", "ids", 263, "<|endoftext|>", "ids", 264);
	char *s = json_dumps(root, 0);
	struct cal_error err = { 0 };
	if (!s || cal_tokenizer_load_buffer(s, strlen(s), "fuzz", &tok, &err)) {
		fprintf(stderr, "fuzz_tokenizer: %s\n", cal_error_msg(&err));
		abort();
	}
	free(s);
	json_decref(root);
}

/* Removes every White_Space character from b (in place). */
static void strip_ws(struct tok_buf *b)
{
	size_t o = 0;
	for (size_t i = 0; i < b->n;) {
		int32_t cp;
		size_t l = tok_utf8_decode(b->p + i, b->n - i, &cp);
		if (!tok_is_whitespace(cp)) {
			memmove(b->p + o, b->p + i, l);
			o += l;
		}
		i += l;
	}
	b->n = o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!tok)
		init();
	if (!size)
		return 0;
	bool special = data[0] & 1;
	cal_tokenizer_set_cache(tok, !(data[0] & 2));
	const char *text = (const char *)data + 1;
	size_t n = size - 1;

	struct cal_tok_ids ids = { 0 };
	struct cal_error err = { 0 };
	if (cal_tokenizer_encode(tok, text, n, special, &ids, &err))
		abort();
	/* spell the tokens back */
	struct tok_buf want = { 0 }, got = { 0 };
	if (tok_utf8_lossy(text, n, &want))
		abort();
	size_t from = 0, to = ids.n;
	if (special) {
		if (ids.n < 2 || ids.v[0] != 263 || ids.v[ids.n - 1] != 264)
			abort();
		from = 1;
		to = ids.n - 1;
	}
	for (size_t i = from; i < to; i++) {
		size_t l;
		const char *s = cal_tokenizer_token_str(tok, ids.v[i], &l);
		if (!s)
			abort();
		if (ids.v[i] >= 263) { /* added tokens are their own spelling */
			tok_buf_put(&got, s, l);
			continue;
		}
		for (size_t k = 0; k < l;) {
			int32_t cp;
			k += tok_utf8_decode(s + k, l - k, &cp);
			char b = (char)char_byte[cp];
			tok_buf_put(&got, &b, 1);
		}
	}
	/* lstrip / rstrip tokens absorb whitespace: compare without it */
	strip_ws(&want);
	strip_ws(&got);
	if (want.n != got.n || (want.n && memcmp(want.p, got.p, want.n)))
		abort();
	tok_buf_free(&want);
	if (tok_utf8_lossy(text, n, &want))
		abort();

	/* NFC fast path vs utf8proc on the whole (repaired) text */
	struct tok_buf nfc = { 0 }, tmp = { 0 };
	if (tok_normalize(&nfc_norm, want.p ? want.p : "", want.n, &nfc, &tmp))
		abort();
	utf8proc_uint8_t *ref = NULL;
	utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)(want.p ? want.p : ""),
					  (utf8proc_ssize_t)want.n, &ref,
					  UTF8PROC_STABLE | UTF8PROC_COMPOSE);
	if (r < 0 || (size_t)r != nfc.n || memcmp(ref, nfc.p ? nfc.p : "", nfc.n))
		abort();
	free(ref);
	tok_buf_free(&nfc);
	tok_buf_free(&tmp);
	tok_buf_free(&want);
	tok_buf_free(&got);
	cal_tok_ids_free(&ids);
	return 0;
}
