/*
 * tok_corpus.h — the conformance corpus as the tests and the benchmark see
 * it: every line of tests/tokenizer/corpus/NAME.txt with its escapes expanded
 * ("FILE:LINE") plus each whole file ("FILE:0"), exactly as
 * make_reference.py builds it.  Header-only helpers for test programs.
 */
#ifndef CAL_TOK_CORPUS_H
#define CAL_TOK_CORPUS_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

struct tok_sample {
	char key[300];
	char *text;
	size_t len;
};

struct tok_corpus {
	struct tok_sample *v;
	size_t n;
};

static inline int tc_hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Expands \n \r \t \\ \xHH \u{HEX} in s[0..n) into out (n bytes room
 * suffice: every escape is at least as long as what it stands for). */
static inline size_t tc_unescape(const char *s, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\\' && i + 1 < n) {
			char e = s[i + 1];
			if (e == 'n' || e == 'r' || e == 't' || e == '\\') {
				out[o++] = e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : '\\';
				i++;
				continue;
			}
			if (e == 'x' && i + 3 < n && tc_hex(s[i + 2]) >= 0 && tc_hex(s[i + 3]) >= 0) {
				out[o++] = (char)(tc_hex(s[i + 2]) * 16 + tc_hex(s[i + 3]));
				i += 3;
				continue;
			}
			if (e == 'u' && i + 3 < n && s[i + 2] == '{') {
				size_t k = i + 3;
				unsigned cp = 0;
				while (k < n && k < i + 9 && tc_hex(s[k]) >= 0)
					cp = cp * 16 + (unsigned)tc_hex(s[k++]);
				if (k < n && s[k] == '}' && k > i + 3) {
					if (cp < 0x80) {
						out[o++] = (char)cp;
					} else if (cp < 0x800) {
						out[o++] = (char)(0xC0 | (cp >> 6));
						out[o++] = (char)(0x80 | (cp & 0x3F));
					} else if (cp < 0x10000) {
						out[o++] = (char)(0xE0 | (cp >> 12));
						out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
						out[o++] = (char)(0x80 | (cp & 0x3F));
					} else {
						out[o++] = (char)(0xF0 | (cp >> 18));
						out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
						out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
						out[o++] = (char)(0x80 | (cp & 0x3F));
					}
					i = k;
					continue;
				}
			}
		}
		out[o++] = s[i];
	}
	return o;
}

static inline int tc_add(struct tok_corpus *c, const char *key, const char *s,
			 size_t n, int unescape)
{
	struct tok_sample *v = realloc(c->v, (c->n + 1) * sizeof(*v));
	if (!v)
		return -1;
	c->v = v;
	struct tok_sample *t = &v[c->n];
	snprintf(t->key, sizeof(t->key), "%s", key);
	t->text = malloc(n + 1);
	if (!t->text)
		return -1;
	t->len = unescape ? tc_unescape(s, n, t->text) : (memcpy(t->text, s, n), n);
	t->text[t->len] = 0;
	c->n++;
	return 0;
}

static inline void tc_free(struct tok_corpus *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->v[i].text);
	free(c->v);
	c->v = NULL;
	c->n = 0;
}

static inline int tc_name_cmp(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static inline int tc_txt(const struct dirent *d)
{
	size_t n = strlen(d->d_name);
	return n > 4 && !strcmp(d->d_name + n - 4, ".txt");
}

/* Loads every dir/NAME.txt (sorted by name); 0 or -1. */
static inline int tc_load(struct tok_corpus *c, const char *dir)
{
	struct dirent **names;
	int nn = scandir(dir, &names, tc_txt, tc_name_cmp);
	if (nn < 0)
		return -1;
	int rc = 0;
	for (int f = 0; f < nn; f++) {
		char *path = cal_path_join(dir, names[f]->d_name), *buf = NULL;
		size_t len = 0;
		if (!path || cal_read_file(path, 1 << 24, &buf, &len, NULL)) {
			rc = -1;
		} else {
			size_t line = 0, start = 0;
			char key[300];
			for (size_t i = 0; i <= len && !rc; i++) {
				if (i < len && buf[i] != '\n')
					continue;
				if (i == len && start == len)
					break; /* the file's final newline */
				snprintf(key, sizeof(key), "%s:%zu", names[f]->d_name, ++line);
				rc = tc_add(c, key, buf + start, i - start, 1);
				start = i + 1;
			}
			snprintf(key, sizeof(key), "%s:0", names[f]->d_name);
			if (!rc)
				rc = tc_add(c, key, buf, len, 0);
		}
		free(buf);
		free(path);
		free(names[f]);
	}
	free(names);
	return rc;
}

static inline const struct tok_sample *tc_find(const struct tok_corpus *c,
					       const char *key)
{
	for (size_t i = 0; i < c->n; i++)
		if (!strcmp(c->v[i].key, key))
			return &c->v[i];
	return NULL;
}

#endif
