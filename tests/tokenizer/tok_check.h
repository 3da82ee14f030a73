/*
 * tok_check.h — shared by the tokenizer test programs: locate the test
 * data, load the corpus, and compare a tokenizer with a reference file.
 */
#ifndef CAL_TOK_CHECK_H
#define CAL_TOK_CHECK_H

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/tokenizer/tokenizer.h"
#include "tok_corpus.h"

static inline const char *testdir(void)
{
	const char *d = getenv("CAL_TOK_TESTDIR");
	cr_assert(d, "CAL_TOK_TESTDIR is not set (run through meson test)");
	return d;
}

static inline char *path2(const char *a, const char *b)
{
	char *p = cal_path_join(a, b);
	cr_assert(p);
	return p;
}

static inline void load_corpus(struct tok_corpus *c)
{
	char *dir = path2(testdir(), "corpus");
	cr_assert_eq(tc_load(c, dir), 0, "cannot read corpus %s", dir);
	free(dir);
}

static inline int ids_equal(const struct cal_tok_ids *got, json_t *want)
{
	if (json_array_size(want) != got->n)
		return 0;
	for (size_t i = 0; i < got->n; i++)
		if (json_integer_value(json_array_get(want, i)) != got->v[i])
			return 0;
	return 1;
}

static inline void print_diff(const char *name, const char *key, const struct cal_tok_ids *got,
		       json_t *want)
{
	char *w = json_dumps(want, JSON_COMPACT);
	fprintf(stderr, "%s %s:\n  want %s\n  got  [", name, key, w);
	for (size_t i = 0; i < got->n; i++)
		fprintf(stderr, "%s%d", i ? "," : "", got->v[i]);
	fprintf(stderr, "]\n");
	free(w);
}

/* Compares tok with reference/NAME.jsonl; returns the number of
 * mismatching encodings (two per sample: plain and with specials). */
static inline size_t check_reference(struct cal_tokenizer *tok, const char *name,
			      const struct tok_corpus *c, size_t *ret_compared)
{
	char file[256];
	snprintf(file, sizeof(file), "reference/%s.jsonl", name);
	char *path = path2(testdir(), file), *buf = NULL;
	size_t len = 0, bad = 0, compared = 0;
	cr_assert_eq(cal_read_file(path, 1 << 24, &buf, &len, NULL), CAL_OK, "%s", path);
	struct cal_error err = { 0 };
	for (char *line = buf; line < buf + len;) {
		char *nl = memchr(line, '\n', (size_t)(buf + len - line));
		size_t ll = nl ? (size_t)(nl - line) : (size_t)(buf + len - line);
		json_error_t je;
		json_t *rec = json_loadb(line, ll, 0, &je);
		cr_assert(rec, "%s: bad line: %s", path, je.text);
		const char *key = json_string_value(json_object_get(rec, "s"));
		const struct tok_sample *s = tc_find(c, key);
		cr_assert(s, "%s: sample %s is not in the corpus (regenerate?)", name, key);
		json_t *plain = json_object_get(rec, "ids");
		json_t *special = json_object_get(rec, "special");
		if (!special)
			special = plain;
		for (int sp = 0; sp < 2; sp++) {
			struct cal_tok_ids ids = { 0 };
			enum cal_status st = cal_tokenizer_encode(tok, s->text, s->len, sp, &ids, &err);
			cr_assert_eq(st, CAL_OK, "%s %s: %s", name, key, cal_error_msg(&err));
			json_t *want = sp ? special : plain;
			compared++;
			if (!ids_equal(&ids, want)) {
				if (bad < 3)
					print_diff(name, key, &ids, want);
				bad++;
			}
			cal_tok_ids_free(&ids);
		}
		json_decref(rec);
		line += ll + 1;
	}
	free(buf);
	free(path);
	*ret_compared = compared;
	return bad;
}

static inline char *shared_tokenizer(const char *name)
{
	const char *shared = getenv("CAL_SHARED_DIR");
	char sub[128];
	snprintf(sub, sizeof(sub), "fixtures/tokenizers/%s", name);
	char *dir = shared ? cal_path_join(shared, sub) : NULL;
	struct stat sb;
	if (!dir || stat(dir, &sb) != 0) {
		free(dir);
		return NULL;
	}
	return dir;
}

#endif
