/*
 * dataset.c — builds calibration datasets (see dataset.h and
 * docs/tokenizer.md): reads each source, picks its records in file order or
 * in a seeded permutation, turns them into token ids, drops empty ones,
 * truncates to seq_len and concatenates the sources in order.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/parse.h"
#include "common/util.h"
#include "dataset.h"

struct ds_build {
	struct cal_dataset *ds;
	struct cal_tok_ids ids;
	size_t *off;
	size_t n, cap;
};

static enum cal_status ds_push(struct ds_build *b, const int32_t *ids, size_t n)
{
	size_t *o = cal_grow(b->off, &b->cap, b->n + 2, sizeof(*o), 64);
	if (!o)
		return CAL_ERR_NOMEM;
	b->off = o;
	if (!b->n)
		b->off[0] = 0;
	if (cal_tok_ids_push(&b->ids, ids, n))
		return CAL_ERR_NOMEM;
	b->off[++b->n] = b->ids.n;
	return CAL_OK;
}

/* The order records are taken in: identity, or a Fisher-Yates permutation
 * from splitmix64 seeded with seed + golden * (source index + 1). */
static size_t *record_order(size_t n, const struct cal_dataset_opts *o, size_t src)
{
	size_t *ord = malloc((n ? n : 1) * sizeof(*ord));
	if (!ord)
		return NULL;
	for (size_t i = 0; i < n; i++)
		ord[i] = i;
	if (o->shuffle) {
		uint64_t s = o->seed + 0x9E3779B97F4A7C15ull * (src + 1);
		for (size_t i = n; i > 1; i--) {
			size_t j = (size_t)(cal_splitmix64(&s) % i);
			size_t t = ord[i - 1];
			ord[i - 1] = ord[j];
			ord[j] = t;
		}
	}
	return ord;
}

/* ---- sources ------------------------------------------------------------ */

void cal_calib_sources_free(struct cal_calib_source *src, size_t n)
{
	if (!src)
		return;
	for (size_t i = 0; i < n; i++)
		free(src[i].path);
	free(src);
}

enum cal_status cal_calib_sources_parse(const char *spec,
					struct cal_calib_source **ret,
					size_t *ret_n, struct cal_error *err)
{
	*ret = NULL;
	*ret_n = 0;
	if (!spec || !*spec)
		return cal_error_set(err, CAL_ERR_INVALID, "--calib: empty source list");
	struct cal_calib_source *v = NULL;
	size_t n = 0;
	enum cal_status st = CAL_OK;
	for (const char *p = spec; !st;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (!len) {
			st = cal_error_set(err, CAL_ERR_INVALID,
					   "--calib '%s': empty entry", spec);
			break;
		}
		if (n == CAL_DATASET_MAX_SOURCES) {
			st = cal_error_set(err, CAL_ERR_INVALID,
					   "--calib: more than %d sources", CAL_DATASET_MAX_SOURCES);
			break;
		}
		struct cal_calib_source *nv = realloc(v, (n + 1) * sizeof(*v));
		if (!nv) {
			st = CAL_ERR_NOMEM;
			break;
		}
		v = nv;
		struct cal_calib_source *s = &v[n++];
		memset(s, 0, sizeof(*s));
		/* FILE:N when what follows the last ':' is all digits */
		const char *colon = memrchr(p, ':', len);
		size_t plen = len;
		if (colon && colon + 1 < p + len &&
		    strspn(colon + 1, "0123456789") >= (size_t)(p + len - colon - 1)) {
			char num[32];
			size_t nl = (size_t)(p + len - colon - 1);
			if (nl >= sizeof(num)) {
				st = cal_error_set(err, CAL_ERR_INVALID,
						   "--calib '%.*s': count too large", (int)len, p);
				break;
			}
			memcpy(num, colon + 1, nl);
			num[nl] = 0;
			uint64_t x = 0;
			if (cal_parse_u64("--calib count", num, 1, CAL_DATASET_MAX_SAMPLES, &x,
					  NULL) < 0) {
				st = cal_error_set(err, CAL_ERR_INVALID,
						   "--calib '%.*s': count must be 1..%zu", (int)len,
						   p, CAL_DATASET_MAX_SAMPLES);
				break;
			}
			s->n = (size_t)x;
			s->has_n = true;
			plen = (size_t)(colon - p);
		}
		if (!plen || !(s->path = strndup(p, plen))) {
			st = plen ? CAL_ERR_NOMEM
				  : cal_error_set(err, CAL_ERR_INVALID,
						  "--calib '%.*s': no file name", (int)len, p);
			break;
		}
		if (!end)
			break;
		p = end + 1;
	}
	if (st) {
		cal_calib_sources_free(v, n);
		return st;
	}
	*ret = v;
	*ret_n = n;
	return CAL_OK;
}

/* ---- records ------------------------------------------------------------ */

/* Truncates content ids to what fits with the specials and appends the
 * sample (nothing when content is empty: counted as dropped). */
static enum cal_status add_sample(struct ds_build *b, struct cal_tokenizer *tok,
				  const struct cal_dataset_opts *o,
				  const int32_t *ids, size_t n, bool wrap,
				  size_t *got)
{
	if (!n) {
		b->ds->dropped_empty++;
		return CAL_OK;
	}
	size_t pre = 0, suf = 0;
	if (wrap)
		cal_tokenizer_special_counts(tok, &pre, &suf);
	size_t room = o->seq_len - pre - suf; /* > 0: checked by the caller */
	if (n > room) {
		n = room;
		b->ds->truncated++;
	}
	enum cal_status st;
	if (wrap) {
		struct cal_tok_ids w = { 0 };
		st = cal_tokenizer_wrap_special(tok, ids, n, &w);
		if (!st)
			st = ds_push(b, w.v, w.n);
		cal_tok_ids_free(&w);
	} else {
		st = ds_push(b, ids, n);
	}
	if (!st)
		(*got)++;
	return st;
}

/* Appends a string to a growable char buffer. */
static enum cal_status sb_put(char **p, size_t *n, size_t *cap, const char *s,
			      size_t len)
{
	if (*cap - *n < len + 1) {
		size_t c = *cap ? *cap : 256;
		while (c - *n < len + 1)
			c *= 2;
		char *q = realloc(*p, c);
		if (!q)
			return CAL_ERR_NOMEM;
		*p = q;
		*cap = c;
	}
	memcpy(*p + *n, s, len);
	*n += len;
	(*p)[*n] = 0;
	return CAL_OK;
}

/* One JSONL record → content ids appended to *out; *ret_wrap: whether the
 * specials are to be added (not for input_ids records). */
static enum cal_status jsonl_record(struct cal_tokenizer *tok, const char *path,
				    size_t line, const char *s, size_t len,
				    struct cal_tok_ids *out, bool *ret_wrap,
				    struct cal_error *err)
{
	json_error_t je;
	json_t *j = json_loadb(s, len, JSON_ALLOW_NUL, &je);
	enum cal_status st = CAL_OK;
	char *text = NULL;
	size_t tn = 0, tcap = 0;
	*ret_wrap = true;
	if (!j || !json_is_object(j)) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu: %s", path, line,
				   j ? "not a JSON object" : je.text);
		goto out;
	}
	json_t *ids = json_object_get(j, "input_ids");
	json_t *txt = json_object_get(j, "text");
	json_t *msgs = json_object_get(j, "messages");
	/* the first field present, in this order, is the record's: its type */
	const char *bad = ids ? (json_is_array(ids) ? NULL : "'input_ids' must be an array of integers")
			: txt ? (json_is_string(txt) ? NULL : "'text' must be a string")
			: msgs && !json_is_array(msgs) ? "'messages' must be an array" : NULL;
	if (bad) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu: %s", path, line, bad);
		goto out;
	}
	if (ids) {
		size_t vs = cal_tokenizer_vocab_size(tok), i;
		json_t *v;
		json_array_foreach(ids, i, v) {
			json_int_t x = json_integer_value(v);
			if (!json_is_integer(v) || x < 0 || (uint64_t)x >= vs) {
				st = cal_error_set(err, CAL_ERR_FORMAT,
						   "%s:%zu: input_ids[%zu] is not a token id below the vocabulary size %zu",
						   path, line, i, vs);
				goto out;
			}
			int32_t id = (int32_t)x;
			if ((st = cal_tok_ids_push(out, &id, 1)))
				goto out;
		}
		*ret_wrap = false;
		goto out;
	}
	if (txt) {
		st = cal_tokenizer_encode(tok, json_string_value(txt), json_string_length(txt),
					  false, out, err);
		goto out;
	}
	if (msgs) {
		/* modelopt's rule: the turns' contents joined with newlines */
		size_t i, k = 0;
		json_t *m;
		json_array_foreach(msgs, i, m) {
			json_t *c = json_object_get(m, "content");
			if (!c || json_is_null(c))
				continue;
			if (!json_is_string(c)) {
				st = cal_error_set(err, CAL_ERR_FORMAT,
						   "%s:%zu: messages[%zu].content must be a string",
						   path, line, i);
				goto out;
			}
			if ((k++ && (st = sb_put(&text, &tn, &tcap, "\n", 1))) ||
			    (st = sb_put(&text, &tn, &tcap, json_string_value(c),
					 json_string_length(c))))
				goto out;
		}
		if (tn)
			st = cal_tokenizer_encode(tok, text, tn, false, out, err);
		goto out;
	}
	st = cal_error_set(err, CAL_ERR_FORMAT,
			   "%s:%zu: record has no 'text', 'messages' or 'input_ids' field", path, line);
out:
	free(text);
	json_decref(j);
	return st;
}

static bool is_jsonl(const char *path)
{
	size_t n = strlen(path);
	return (n > 6 && !strcmp(path + n - 6, ".jsonl")) ||
	       (n > 7 && !strcmp(path + n - 7, ".ndjson"));
}

struct line_ref {
	size_t off, len, line;
};

static enum cal_status source_jsonl(struct ds_build *b, struct cal_tokenizer *tok,
				    const struct cal_dataset_opts *o, size_t src_i,
				    const char *path, const char *buf, size_t len,
				    size_t want, size_t *got, struct cal_error *err)
{
	struct line_ref *lines = NULL;
	size_t n = 0, cap = 0, *ord = NULL, line = 0;
	struct cal_tok_ids ids = { 0 };
	enum cal_status st = CAL_OK;
	for (size_t i = 0; i < len;) {
		const char *nl = memchr(buf + i, '\n', len - i);
		size_t e = nl ? (size_t)(nl - buf) : len;
		line++;
		size_t a = i, z = e;
		while (a < z && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\r'))
			a++;
		if (a < z) {
			if (n == cap) {
				cap = cap ? cap * 2 : 1024;
				struct line_ref *nv = realloc(lines, cap * sizeof(*nv));
				if (!nv) {
					st = CAL_ERR_NOMEM;
					goto out;
				}
				lines = nv;
			}
			lines[n++] = (struct line_ref){ i, e - i, line };
		}
		i = e + 1;
	}
	if (!(ord = record_order(n, o, src_i))) {
		st = CAL_ERR_NOMEM;
		goto out;
	}
	for (size_t k = 0; k < n && *got < want; k++) {
		const struct line_ref *r = &lines[ord[k]];
		bool wrap;
		ids.n = 0;
		if ((st = jsonl_record(tok, path, r->line, buf + r->off, r->len, &ids, &wrap, err)))
			goto out;
		if ((st = add_sample(b, tok, o, ids.v, ids.n, wrap && !o->no_special, got)))
			goto out;
	}
out:
	cal_tok_ids_free(&ids);
	free(ord);
	free(lines);
	return st;
}

static enum cal_status source_text(struct ds_build *b, struct cal_tokenizer *tok,
				   const struct cal_dataset_opts *o, size_t src_i,
				   const char *buf, size_t len, size_t want,
				   size_t *got, struct cal_error *err)
{
	struct cal_tok_ids ids = { 0 };
	size_t *ord = NULL, pre = 0, suf = 0;
	enum cal_status st = cal_tokenizer_encode(tok, buf, len, false, &ids, err);
	if (st)
		goto out;
	if (!o->no_special)
		cal_tokenizer_special_counts(tok, &pre, &suf);
	size_t chunk = o->seq_len - pre - suf;
	size_t n = (ids.n + chunk - 1) / chunk;
	if (!(ord = record_order(n, o, src_i))) {
		st = CAL_ERR_NOMEM;
		goto out;
	}
	for (size_t k = 0; k < n && *got < want && !st; k++) {
		size_t a = ord[k] * chunk, z = a + chunk < ids.n ? a + chunk : ids.n;
		st = add_sample(b, tok, o, ids.v + a, z - a, !o->no_special, got);
	}
out:
	free(ord);
	cal_tok_ids_free(&ids);
	return st;
}

/* ---- building ----------------------------------------------------------- */

void cal_dataset_free(struct cal_dataset *ds)
{
	if (!ds)
		return;
	free(ds->off);
	free(ds->ids);
	free(ds);
}

enum cal_status cal_dataset_build(struct cal_tokenizer *tok,
				  const struct cal_calib_source *src, size_t n_src,
				  const struct cal_dataset_opts *opts,
				  struct cal_dataset **ret, struct cal_error *err)
{
	*ret = NULL;
	size_t pre = 0, suf = 0, explicit_sum = 0, n_implicit = 0;
	if (!opts->no_special)
		cal_tokenizer_special_counts(tok, &pre, &suf);
	if (opts->seq_len <= pre + suf || opts->seq_len > ((size_t)1 << 30))
		return cal_error_set(err, CAL_ERR_RANGE,
				     "sequence length %zu leaves no room for text (the tokenizer adds %zu special tokens)",
				     opts->seq_len, pre + suf);
	if (!n_src)
		return cal_error_set(err, CAL_ERR_INVALID, "no calibration source");
	for (size_t i = 0; i < n_src; i++) {
		if (src[i].has_n)
			explicit_sum += src[i].n;
		else
			n_implicit++;
	}
	if (opts->samples > CAL_DATASET_MAX_SAMPLES || explicit_sum > CAL_DATASET_MAX_SAMPLES)
		return cal_error_set(err, CAL_ERR_RANGE, "more than %zu calibration samples",
				     CAL_DATASET_MAX_SAMPLES);
	if (n_implicit && !opts->samples)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "give a count for every source (FILE:N) or a total (--samples)");
	if (opts->samples && explicit_sum > opts->samples)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "the sources' counts (%zu) exceed --samples %zu",
				     explicit_sum, opts->samples);
	if (opts->samples && !n_implicit && explicit_sum != opts->samples)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "the sources' counts add up to %zu, not --samples %zu",
				     explicit_sum, opts->samples);
	size_t rest = opts->samples - (opts->samples ? explicit_sum : 0);

	struct ds_build b = { 0 };
	enum cal_status st = CAL_OK;
	char *buf = NULL;
	if (!(b.ds = calloc(1, sizeof(*b.ds))))
		return CAL_ERR_NOMEM;
	for (size_t i = 0, k = 0; i < n_src; i++) {
		size_t want = src[i].n;
		if (!src[i].has_n) {
			want = rest / n_implicit + (k < rest % n_implicit ? 1 : 0);
			k++;
		}
		size_t len, got = 0;
		if ((st = cal_read_file(src[i].path, CAL_DATASET_MAX_FILE, &buf, &len, err)))
			goto fail;
		if (is_jsonl(src[i].path))
			st = source_jsonl(&b, tok, opts, i, src[i].path, buf, len, want, &got, err);
		else
			st = source_text(&b, tok, opts, i, buf, len, want, &got, err);
		free(buf);
		buf = NULL;
		if (st) {
			if (!(err && err->msg))
				cal_error_set(err, st, "%s: %s", src[i].path, cal_status_str(st));
			else if (!strstr(err->msg, src[i].path))
				cal_error_wrap(err, st, "%s", src[i].path);
			goto fail;
		}
		b.ds->shortfall += want - got;
	}
	if (!b.n && (st = ds_push(&b, NULL, 0)) == CAL_OK)
		b.n = 0; /* off[0] = 0 for an empty dataset */
	if (st)
		goto fail;
	b.ds->n = b.n;
	b.ds->off = b.off;
	b.ds->ids = b.ids.v;
	b.ds->n_tokens = b.ids.n;
	*ret = b.ds;
	return CAL_OK;
fail:
	free(b.off);
	cal_tok_ids_free(&b.ids);
	cal_dataset_free(b.ds);
	return st;
}

enum cal_status cal_dataset_load(struct cal_tokenizer *tok, const char *spec,
				 const struct cal_dataset_opts *opts,
				 struct cal_dataset **ret, struct cal_error *err)
{
	struct cal_calib_source *src;
	size_t n;
	enum cal_status st = cal_calib_sources_parse(spec, &src, &n, err);
	if (st)
		return st;
	st = cal_dataset_build(tok, src, n, opts, ret, err);
	cal_calib_sources_free(src, n);
	return st;
}

/* ---- command-line options ----------------------------------------------- */

void cal_calib_args_init(struct cal_calib_args *a)
{
	memset(a, 0, sizeof(*a));
	a->seq_len = 512;
}

static int parse_size(const char *opt, const char *v, uint64_t max, uint64_t *ret,
		      struct cal_error *err)
{
	enum cal_status st = cal_parse_u64(opt, v, 0, max, ret, err);
	return st < 0 ? st : 1;
}

int cal_calib_args_option(struct cal_calib_args *a, int argc, char **argv,
			  int *i, struct cal_error *err)
{
	static const char *const names[] = { "--calib", "--samples", "--seq-len", "--seed" };
	const char *arg = argv[*i];
	for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
		size_t nl = strlen(names[k]);
		if (strncmp(arg, names[k], nl) || (arg[nl] && arg[nl] != '='))
			continue;
		const char *v = arg[nl] == '=' ? arg + nl + 1
			      : (*i + 1 < argc ? argv[*i + 1] : NULL);
		if (!arg[nl])
			(*i)++;
		(*i)++;
		uint64_t x = 0;
		int r = 1;
		switch (k) {
		case 0:
			if (!v || !*v)
				return cal_error_set(err, CAL_ERR_INVALID, "--calib needs FILE[:N],...");
			a->calib = v;
			break;
		case 1:
			if ((r = parse_size("--samples", v, CAL_DATASET_MAX_SAMPLES, &x, err)) == 1)
				a->samples = (size_t)x;
			break;
		case 2:
			if ((r = parse_size("--seq-len", v, (uint64_t)1 << 30, &x, err)) == 1)
				a->seq_len = (size_t)x;
			break;
		case 3:
			if ((r = parse_size("--seed", v, UINT64_MAX, &x, err)) == 1) {
				a->seed = x;
				a->seed_set = true;
			}
			break;
		}
		return r;
	}
	return 0;
}

enum cal_status cal_calib_args_load(const struct cal_calib_args *a,
				    struct cal_tokenizer *tok,
				    struct cal_dataset **ret,
				    struct cal_error *err)
{
	*ret = NULL;
	if (!a->calib)
		return cal_error_set(err, CAL_ERR_INVALID, "--calib FILE[:N],... is required");
	struct cal_dataset_opts o = {
		.samples = a->samples,
		.seq_len = a->seq_len,
		.shuffle = a->seed_set,
		.seed = a->seed,
	};
	return cal_dataset_load(tok, a->calib, &o, ret, err);
}
