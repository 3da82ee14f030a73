/*
 * bench_tokenizer.c — tokenizer throughput on one core.
 *
 *   bench_tokenizer [--model DIR]... [--mb N] [--out FILE]
 *
 * Builds a text of about N MB (default 8) from the conformance corpus:
 * documents of 48 corpus lines drawn with a fixed, printed seed, and encodes
 * every document with each tokenizer (default: the Qwen3 and DeepSeek-V3
 * tokenizers under $CAL_SHARED_DIR), with the word cache on and off.
 * Prints MB/s and tokens/s.  --out writes the documents (each as its length
 * in bytes, a newline, and its bytes) for
 * bench_hf.py to time Hugging Face `tokenizers` on the very same text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer/tokenizer.h"
#include "tok_corpus.h"

#define DOC_LINES 48
#define SEED 42ull

static uint64_t rng(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static void run(const char *model, const char *text, const size_t *doc, size_t n_docs)
{
	struct cal_tokenizer *tok;
	struct cal_error err = { 0 };
	double t0 = cal_now();
	if (cal_tokenizer_load(model, &tok, &err)) {
		fprintf(stderr, "%s\n", cal_error_msg(&err));
		exit(1);
	}
	printf("%s: loaded in %.2f s\n", model, cal_now() - t0);
	for (int cache = 1; cache >= 0; cache--) {
		cal_tokenizer_set_cache(tok, cache);
		struct cal_tok_ids ids = { 0 };
		size_t tokens = 0;
		t0 = cal_now();
		for (size_t d = 0; d < n_docs; d++) {
			ids.n = 0;
			if (cal_tokenizer_encode(tok, text + doc[d], doc[d + 1] - doc[d] - 1, true,
						 &ids, &err)) {
				fprintf(stderr, "%s\n", cal_error_msg(&err));
				exit(1);
			}
			tokens += ids.n;
		}
		double dt = cal_now() - t0;
		double mb = (double)(doc[n_docs] - n_docs) / 1e6;
		printf("  word cache %-3s: %.2f MB in %.3f s = %.2f MB/s, %.2f M tokens/s (%zu tokens)\n",
		       cache ? "on" : "off", mb, dt, mb / dt, (double)tokens / dt / 1e6, tokens);
		cal_tok_ids_free(&ids);
	}
	cal_tokenizer_free(tok);
}

int main(int argc, char **argv)
{
	const char *models[8], *out = NULL, *dir = getenv("CAL_TOK_TESTDIR");
	size_t n_models = 0, mb = 8;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--model") && i + 1 < argc && n_models < 8)
			models[n_models++] = argv[++i];
		else if (!strcmp(argv[i], "--mb") && i + 1 < argc)
			mb = (size_t)atol(argv[++i]);
		else if (!strcmp(argv[i], "--out") && i + 1 < argc)
			out = argv[++i];
		else {
			fprintf(stderr, "usage: bench_tokenizer [--model DIR]... [--mb N] [--out FILE]\n");
			return 2;
		}
	}
	static char shared_models[2][4096];
	if (!n_models) {
		const char *sh = getenv("CAL_SHARED_DIR");
		const char *names[2] = { "qwen3", "deepseek_v3" };
		for (int k = 0; sh && k < 2; k++) {
			snprintf(shared_models[k], sizeof(shared_models[k]),
				 "%s/fixtures/tokenizers/%s", sh, names[k]);
			models[n_models++] = shared_models[k];
		}
		if (!n_models) {
			fprintf(stderr, "no --model and no CAL_SHARED_DIR: nothing to measure\n");
			return 77;
		}
	}
	char cdir[4096];
	snprintf(cdir, sizeof(cdir), "%s/corpus", dir ? dir : "tests/tokenizer");
	struct tok_corpus c = { 0 };
	if (tc_load(&c, cdir) || !c.n) {
		fprintf(stderr, "cannot read the corpus in %s (set CAL_TOK_TESTDIR)\n", cdir);
		return 1;
	}
	/* documents of DOC_LINES random corpus lines (not whole files) */
	size_t target = mb << 20, len = 0, cap = target + (1 << 20), n_docs = 0;
	char *text = malloc(cap);
	size_t *doc = malloc((target / 64 + 2) * sizeof(*doc));
	uint64_t s = SEED;
	doc[0] = 0;
	while (len < target && text && doc) {
		for (int l = 0; l < DOC_LINES; l++) {
			const struct tok_sample *t;
			do
				t = &c.v[rng(&s) % c.n];
			while (!strcmp(t->key + strlen(t->key) - 2, ":0"));
			if (len + t->len + 2 > cap)
				break;
			memcpy(text + len, t->text, t->len);
			len += t->len;
			text[len++] = '\n';
		}
		text[len++] = 0; /* ends the document (not encoded) */
		doc[++n_docs] = len;
	}
	printf("text: %zu documents, %.2f MB, seed %llu\n", n_docs, (double)len / 1e6,
	       (unsigned long long)SEED);
	if (out) { /* each document as "<bytes>\n" then its bytes */
		FILE *f = fopen(out, "wb");
		for (size_t d = 0; f && d < n_docs; d++) {
			size_t dl = doc[d + 1] - doc[d] - 1;
			if (fprintf(f, "%zu\n", dl) < 0 || fwrite(text + doc[d], 1, dl, f) != dl)
				break;
		}
		if (!f || ferror(f) || fclose(f)) {
			perror(out);
			return 1;
		}
	}
	for (size_t m = 0; m < n_models; m++)
		run(models[m], text, doc, n_docs);
	free(text);
	free(doc);
	tc_free(&c);
	return 0;
}
