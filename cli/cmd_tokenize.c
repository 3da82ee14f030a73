/*
 * cmd_tokenize.c — `calibd tokenize`: a debugging aid for the tokenizer and
 * the calibration datasets.
 *
 *   calibd tokenize --model DIR [--text STR | --file PATH] [--no-special]
 *                   [--tokens] [--bench]
 *   calibd tokenize --model DIR --calib FILE[:N],... [--samples N]
 *                   [--seq-len S] [--seed K] [--no-special] [--ids]
 *
 * The first form prints the ids of the text (from --text, --file or stdin)
 * on one line, or one "id<TAB>token" line per token with --tokens; --bench
 * encodes the input line by line and prints MB/s on one core instead.  The
 * second form builds the calibration dataset the other commands would and
 * prints its summary (and every sequence's ids with --ids).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/util.h"
#include "engine/tokenizer/dataset.h"
#include "engine/tokenizer/tokenizer.h"

#define STDIN_MAX ((size_t)1 << 30)

static void tokenize_usage(FILE *o)
{
	fprintf(o,
		"usage: calibd tokenize --model DIR [--text STR | --file PATH] [--no-special]\n"
		"                       [--tokens] [--bench]\n"
		"       calibd tokenize --model DIR --calib FILE[:N],... [--samples N]\n"
		"                       [--seq-len S] [--seed K] [--no-special] [--ids]\n"
		"Prints the token ids of a text (stdin when neither --text nor --file),\n"
		"or builds a calibration dataset and prints its summary.\n"
		"DIR is a checkpoint directory holding tokenizer.json, or the file itself.\n");
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]: 1 (value in *ret), 0 when
 * argv[*i] is another option, -1 when the value is missing. */
static int opt_value(int argc, char **argv, int *i, const char *name, const char **ret)
{
	size_t n = strlen(name);
	const char *a = argv[*i];
	if (strncmp(a, name, n))
		return 0;
	if (a[n] == '=') {
		*ret = a + n + 1;
		(*i)++;
		return 1;
	}
	if (a[n])
		return 0;
	if (*i + 1 >= argc)
		return -1;
	*ret = argv[*i + 1];
	*i += 2;
	return 1;
}

static void print_ids(const int32_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf(i ? " %d" : "%d", v[i]);
	printf("\n");
}

static void print_tokens(const struct cal_tokenizer *tok, const int32_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t l = 0;
		const char *s = cal_tokenizer_token_str(tok, v[i], &l);
		printf("%d\t%.*s\n", v[i], (int)l, s ? s : "?");
	}
}

/* Reads all of stdin (at most STDIN_MAX bytes) into *ret. */
static enum cal_status read_stdin(char **ret, size_t *ret_len, struct cal_error *err)
{
	size_t n = 0, cap = 1 << 16;
	char *b = malloc(cap + 1);
	if (!b)
		return CAL_ERR_NOMEM;
	for (;;) {
		if (n == cap) {
			if (cap >= STDIN_MAX) {
				free(b);
				return cal_error_set(err, CAL_ERR_RANGE, "stdin: more than %zu bytes",
						     STDIN_MAX);
			}
			char *nb = realloc(b, cap * 2 + 1);
			if (!nb) {
				free(b);
				return CAL_ERR_NOMEM;
			}
			b = nb;
			cap *= 2;
		}
		size_t r = fread(b + n, 1, cap - n, stdin);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(stdin)) {
		free(b);
		return cal_error_set(err, CAL_ERR_IO, "stdin: read error");
	}
	b[n] = 0;
	*ret = b;
	*ret_len = n;
	return CAL_OK;
}

/* Encodes buf line by line (the newline kept with its line) and prints the
 * throughput; returns a status. */
static enum cal_status bench(struct cal_tokenizer *tok, const char *buf, size_t len,
			     bool special, struct cal_error *err)
{
	struct cal_tok_ids ids = { 0 };
	size_t tokens = 0;
	enum cal_status st = CAL_OK;
	double t0 = cal_now();
	for (size_t i = 0; i < len && !st;) {
		const char *nl = memchr(buf + i, '\n', len - i);
		size_t e = nl ? (size_t)(nl - buf) + 1 : len;
		ids.n = 0;
		st = cal_tokenizer_encode(tok, buf + i, e - i, special, &ids, err);
		tokens += ids.n;
		i = e;
	}
	double dt = cal_now() - t0;
	if (!st)
		printf("%zu bytes, %zu tokens in %.3f s: %.2f MB/s, %.0f tokens/s (one core)\n",
		       len, tokens, dt, dt > 0 ? (double)len / dt / 1e6 : 0.0,
		       dt > 0 ? (double)tokens / dt : 0.0);
	cal_tok_ids_free(&ids);
	return st;
}

int cal_cmd_tokenize(int argc, char **argv)
{
	const char *model = NULL, *text = NULL, *file = NULL;
	bool special = true, tokens = false, do_bench = false, show_ids = false;
	struct cal_calib_args ca;
	struct cal_error err = { 0 };
	cal_calib_args_init(&ca);
	bool calib_opt = false;
	for (int i = 1; i < argc;) {
		int r = cal_calib_args_option(&ca, argc, argv, &i, &err);
		if (r < 0)
			return cal_cli_fail("tokenize", &err, CAL_EXIT_USAGE);
		if (r) {
			calib_opt = true;
			continue;
		}
		const char *a = argv[i];
		if ((r = opt_value(argc, argv, &i, "--model", &model)) ||
		    (r = opt_value(argc, argv, &i, "--text", &text)) ||
		    (r = opt_value(argc, argv, &i, "--file", &file))) {
			if (r < 0) {
				fprintf(stderr, "calibd tokenize: %s needs a value\n", a);
				return CAL_EXIT_USAGE;
			}
			continue;
		}
		i++;
		if (!strcmp(a, "--no-special")) {
			special = false;
		} else if (!strcmp(a, "--tokens")) {
			tokens = true;
		} else if (!strcmp(a, "--bench")) {
			do_bench = true;
		} else if (!strcmp(a, "--ids")) {
			show_ids = true;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			tokenize_usage(stdout);
			return CAL_EXIT_OK;
		} else {
			fprintf(stderr, "calibd tokenize: unknown argument '%s'\n", a);
			tokenize_usage(stderr);
			return CAL_EXIT_USAGE;
		}
	}
	if (!model || (text && file) || (calib_opt && !ca.calib) ||
	    (ca.calib && (text || file || do_bench || tokens))) {
		tokenize_usage(stderr);
		return CAL_EXIT_USAGE;
	}

	struct cal_tokenizer *tok = NULL;
	struct cal_dataset *ds = NULL;
	char *buf = NULL;
	size_t len = 0;
	struct cal_tok_ids ids = { 0 };
	enum cal_status st = cal_tokenizer_load(model, &tok, &err);
	if (st)
		goto out;
	if (ca.calib) {
		struct cal_calib_source *src = NULL;
		size_t n_src = 0;
		struct cal_dataset_opts o = { .samples = ca.samples, .seq_len = ca.seq_len,
					      .shuffle = ca.seed_set, .seed = ca.seed,
					      .no_special = !special };
		st = cal_calib_sources_parse(ca.calib, &src, &n_src, &err);
		if (!st)
			st = cal_dataset_build(tok, src, n_src, &o, &ds, &err);
		cal_calib_sources_free(src, n_src);
		if (st)
			goto out;
		size_t longest = 0;
		for (size_t i = 0; i < ds->n; i++)
			if (ds->off[i + 1] - ds->off[i] > longest)
				longest = ds->off[i + 1] - ds->off[i];
		printf("%zu sequences, %zu tokens (longest %zu, seq-len %zu); "
		       "dropped empty %zu, truncated %zu, missing %zu\n",
		       ds->n, ds->n_tokens, longest, ca.seq_len, ds->dropped_empty,
		       ds->truncated, ds->shortfall);
		for (size_t i = 0; show_ids && i < ds->n; i++)
			print_ids(ds->ids + ds->off[i], ds->off[i + 1] - ds->off[i]);
		goto out;
	}
	if (text) {
		buf = strdup(text);
		len = strlen(text);
		if (!buf)
			st = CAL_ERR_NOMEM;
	} else if (file) {
		st = cal_read_file(file, STDIN_MAX, &buf, &len, &err);
	} else {
		st = read_stdin(&buf, &len, &err);
	}
	if (st)
		goto out;
	if (do_bench) {
		st = bench(tok, buf, len, special, &err);
		goto out;
	}
	if ((st = cal_tokenizer_encode(tok, buf, len, special, &ids, &err)))
		goto out;
	if (tokens)
		print_tokens(tok, ids.v, ids.n);
	else
		print_ids(ids.v, ids.n);
out:
	cal_tok_ids_free(&ids);
	free(buf);
	cal_dataset_free(ds);
	cal_tokenizer_free(tok);
	return cal_cli_finish("tokenize", st, &err);
}
