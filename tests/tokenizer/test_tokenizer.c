/*
 * test_tokenizer.c — engine/tokenizer against Hugging Face `tokenizers`:
 * the ids of every corpus sample, with and without special tokens, must be
 * identical to the reference files make_reference.py wrote (Qwen3 and
 * DeepSeek-V3 tokenizers from ../shared/fixtures, skipped when absent, and
 * about thirty tiny tokenizers covering every supported component).  Also:
 * load-time refusals, lossy UTF-8, the heap merge loop, odd inputs.
 *
 * Environment (set by tests/tokenizer/meson.build):
 *   CAL_TOK_TESTDIR  tests/tokenizer in the source tree
 *   CAL_SHARED_DIR   the shared fixtures root (../shared from the repo)
 */
#include "engine/tokenizer/tok_internal.h"
#include "tok_check.h"

static void real_tokenizer(const char *name, bool heap, bool cache)
{
	char *dir = shared_tokenizer(name);
	if (!dir)
		cr_skip_test("%s tokenizer not found under CAL_SHARED_DIR", name);
	struct tok_corpus c = { 0 };
	load_corpus(&c);
	struct cal_tokenizer *tok;
	struct cal_error err = { 0 };
	char *file = path2(dir, "tokenizer.json");
	cr_assert_eq(cal_tokenizer_load(file, &tok, &err), CAL_OK, "%s", cal_error_msg(&err));
	free(file);
	tok->bpe.force_heap = heap;
	cal_tokenizer_set_cache(tok, cache);
	size_t compared;
	size_t bad = check_reference(tok, name, &c, &compared);
	fprintf(stderr, "conformance %s%s: %zu encodings compared, %zu mismatches\n", name,
		heap ? " (heap merge, no cache)" : "", compared, bad);
	cr_expect_eq(bad, 0, "%s: %zu of %zu encodings differ from HF tokenizers", name, bad,
		     compared);
	cal_tokenizer_free(tok);
	tc_free(&c);
	free(dir);
}

Test(tokenizer, qwen3) { real_tokenizer("qwen3", false, true); }
Test(tokenizer, deepseek_v3) { real_tokenizer("deepseek_v3", false, true); }
Test(tokenizer, qwen3_heap_nocache) { real_tokenizer("qwen3", true, false); }

/* Builds a variant's tokenizer.json from data/variants.json. */
static json_t *variant_json(json_t *v)
{
	char file[128];
	snprintf(file, sizeof(file), "data/%s.model.json",
		 json_string_value(json_object_get(v, "model")));
	char *path = path2(testdir(), file);
	json_error_t je;
	json_t *model = json_load_file(path, 0, &je);
	cr_assert(model, "%s: %s", path, je.text);
	free(path);
	json_object_update(model, json_object_get(v, "model_override"));
	json_t *body = json_deep_copy(json_object_get(v, "tokenizer"));
	json_object_set_new(body, "model", model);
	return body;
}

Test(tokenizer, variants)
{
	struct tok_corpus c = { 0 };
	load_corpus(&c);
	char *path = path2(testdir(), "data/variants.json");
	json_error_t je;
	json_t *vs = json_load_file(path, 0, &je);
	cr_assert(vs, "%s: %s", path, je.text);
	size_t i, total = 0, total_bad = 0;
	json_t *v;
	json_array_foreach(vs, i, v) {
		const char *name = json_string_value(json_object_get(v, "name"));
		json_t *body = variant_json(v);
		char *text = json_dumps(body, JSON_COMPACT);
		struct cal_tokenizer *tok;
		struct cal_error err = { 0 };
		cr_assert_eq(cal_tokenizer_load_buffer(text, strlen(text), name, &tok, &err),
			     CAL_OK, "%s", cal_error_msg(&err));
		size_t compared, bad = check_reference(tok, name, &c, &compared);
		if (bad)
			fprintf(stderr, "variant %s: %zu of %zu encodings differ\n", name, bad,
				compared);
		total += compared;
		total_bad += bad;
		cal_tokenizer_free(tok);
		free(text);
		json_decref(body);
	}
	fprintf(stderr, "conformance variants (%zu tokenizers): %zu encodings compared, "
		"%zu mismatches\n", json_array_size(vs), total, total_bad);
	cr_expect_eq(total_bad, 0);
	json_decref(vs);
	free(path);
	tc_free(&c);
}

/* ---- refusals and errors ------------------------------------------------ */

static const char tiny_fmt[] =
	"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \" \": 3},"
	" \"merges\": [\"a b\"]}, %s}";

static enum cal_status load_tiny(const char *extra, struct cal_tokenizer **tok,
				 struct cal_error *err)
{
	char buf[2048];
	snprintf(buf, sizeof(buf), tiny_fmt, extra);
	return cal_tokenizer_load_buffer(buf, strlen(buf), "tokenizer.json", tok, err);
}

static void expect_refused(const char *extra, enum cal_status code, const char *needle)
{
	struct cal_tokenizer *tok = NULL;
	struct cal_error err = { 0 };
	enum cal_status st = load_tiny(extra, &tok, &err);
	cr_expect_eq(st, code, "%s: got %s (%s)", extra, cal_status_str(st), cal_error_msg(&err));
	cr_expect(err.msg && strstr(err.msg, needle), "message '%s' lacks '%s'",
		  cal_error_msg(&err), needle);
	cr_expect_null(tok);
	cal_error_clear(&err);
}

Test(tokenizer, refuses_unsupported)
{
	expect_refused("\"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}", CAL_ERR_UNSUPPORTED,
		       "tokenizer.json: pre_tokenizer type 'BertPreTokenizer' is not supported");
	expect_refused("\"normalizer\": {\"type\": \"Precompiled\"}", CAL_ERR_UNSUPPORTED,
		       "normalizer type 'Precompiled'");
	expect_refused("\"post_processor\": {\"type\": \"Foo\"}", CAL_ERR_UNSUPPORTED,
		       "post_processor type 'Foo'");
	expect_refused("\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": "
		       "[{\"type\": \"Split\", \"pattern\": {\"Regex\": \"x\"}, "
		       "\"behavior\": \"Sideways\", \"invert\": false}]}",
		       CAL_ERR_UNSUPPORTED, "behavior 'Sideways'");
	expect_refused("\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": "
		       "\"[a-z&&[^aeiou]]\"}, \"behavior\": \"Isolated\", \"invert\": false}",
		       CAL_ERR_UNSUPPORTED, "regex construct");
	expect_refused("\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": "
		       "\"(unclosed\"}, \"behavior\": \"Isolated\", \"invert\": false}",
		       CAL_ERR_FORMAT, "does not compile");

	struct cal_tokenizer *tok = NULL;
	struct cal_error err = { 0 };
	const char *uni = "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}";
	cr_expect_eq(cal_tokenizer_load_buffer(uni, strlen(uni), "t.json", &tok, &err),
		     CAL_ERR_UNSUPPORTED);
	cr_expect(strstr(cal_error_msg(&err), "model type 'Unigram'"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	const char *bad_merge = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0},"
				" \"merges\": [\"a c\"]}}";
	cr_expect_eq(cal_tokenizer_load_buffer(bad_merge, strlen(bad_merge), "t.json", &tok, &err),
		     CAL_ERR_FORMAT);
	cr_expect(strstr(cal_error_msg(&err), "merges[0]"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	const char *nojson = "{\"model\": ";
	cr_expect_eq(cal_tokenizer_load_buffer(nojson, strlen(nojson), "t.json", &tok, &err),
		     CAL_ERR_FORMAT);
	cal_error_clear(&err);
	cr_expect_eq(cal_tokenizer_load("/nonexistent/dir", &tok, &err), CAL_ERR_NOTFOUND);
	cal_error_clear(&err);
	cal_tokenizer_free(NULL);
}

Test(tokenizer, tiny_basics)
{
	struct cal_tokenizer *tok;
	struct cal_error err = { 0 };
	cr_assert_eq(load_tiny("\"added_tokens\": []", &tok, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	struct cal_tok_ids ids = { 0 };
	cr_assert_eq(cal_tokenizer_encode(tok, "ab a\xff" "b", 6, true, &ids, &err), CAL_OK);
	/* no pre-tokenizer: one word; U+FFFD is not in the vocabulary and
	 * there is no unk token, so it is dropped as tokenizers drops it,
	 * and the a and b around it merge */
	cr_assert_eq(ids.n, 3);
	cr_expect_eq(ids.v[0], 2);
	cr_expect_eq(ids.v[1], 3);
	cr_expect_eq(ids.v[2], 2);
	ids.n = 0;
	cr_assert_eq(cal_tokenizer_encode(tok, "", 0, true, &ids, &err), CAL_OK);
	cr_expect_eq(ids.n, 0);
	cr_expect_eq(cal_tokenizer_token_id(tok, "ab", 2), 2);
	size_t l;
	const char *s = cal_tokenizer_token_str(tok, 2, &l);
	cr_expect(s && l == 2 && !memcmp(s, "ab", 2));
	cr_expect_eq(cal_tokenizer_vocab_size(tok), 4);
	cal_tok_ids_free(&ids);
	cal_tokenizer_free(tok);
}

Test(tokenizer, lossy_utf8)
{
	/* lengths from the literals: the texts may hold NUL bytes */
#define LOSSY(in, out) {in, sizeof(in) - 1, out, sizeof(out) - 1}
	static const struct {
		const char *in;
		size_t n;
		const char *out;
		size_t out_n;
	} cases[] = {
		LOSSY("a\xff" "b", "a\xEF\xBF\xBD" "b"),
		LOSSY("\xe2\x82", "\xEF\xBF\xBD"),
		LOSSY("\xe2\x82" "a", "\xEF\xBF\xBD" "a"),
		LOSSY("\xc0\xaf", "\xEF\xBF\xBD\xEF\xBF\xBD"),
		LOSSY("\xed\xa0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
		LOSSY("\xf0\x9f\x98", "\xEF\xBF\xBD"),
		LOSSY("\xf4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"),
		LOSSY("ok\xc3\xa9", "ok\xc3\xa9"),
		LOSSY("\x00z", "\x00z"),
	};
#undef LOSSY
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tok_buf b = { 0 };
		cr_assert_eq(tok_utf8_lossy(cases[i].in, cases[i].n, &b), CAL_OK);
		cr_expect(b.n == cases[i].out_n && !memcmp(b.p, cases[i].out, b.n), "case %zu", i);
		tok_buf_free(&b);
	}
}

/* Long inputs: whitespace runs and a word far over the linear-scan size go
 * through without error, and the cache does not change results. */
Test(tokenizer, long_inputs)
{
	char *dir = shared_tokenizer("qwen3");
	if (!dir)
		cr_skip_test("qwen3 tokenizer not found under CAL_SHARED_DIR");
	struct cal_tokenizer *tok;
	struct cal_error err = { 0 };
	cr_assert_eq(cal_tokenizer_load(dir, &tok, &err), CAL_OK, "%s", cal_error_msg(&err));
	size_t n = 1 << 20;
	char *s = malloc(n);
	cr_assert(s);
	memset(s, ' ', n);
	struct cal_tok_ids a = { 0 }, b = { 0 };
	cr_assert_eq(cal_tokenizer_encode(tok, s, n, false, &a, &err), CAL_OK);
	cr_expect_gt(a.n, 0);
	for (size_t i = 0; i < n; i++)
		s[i] = (char)('a' + (i * 7 + i / 13) % 26);
	a.n = 0;
	cr_assert_eq(cal_tokenizer_encode(tok, s, 4096, false, &a, &err), CAL_OK);
	tok->bpe.force_heap = true;
	cal_tokenizer_set_cache(tok, false);
	cr_assert_eq(cal_tokenizer_encode(tok, s, 4096, false, &b, &err), CAL_OK);
	cr_assert_eq(a.n, b.n);
	cr_expect_eq(memcmp(a.v, b.v, a.n * sizeof(int32_t)), 0);
	cal_tok_ids_free(&a);
	cal_tok_ids_free(&b);
	free(s);
	cal_tokenizer_free(tok);
	free(dir);
}
