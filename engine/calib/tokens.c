/*
 * tokens.c — calibration token files for `calibd calibrate`: JSONL lines
 * {"input_ids": [...]} or one JSON object {"input_ids": [[...], ...]}.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "engine/calib.h"

void cal_calib_tokens_free(struct cal_calib_tokens *t)
{
	if (!t)
		return;
	CAL_FREE_ALL(t->off, t->ids, t);
}

/* Appends one sequence (a JSON array of ids). */
static enum cal_status add_seq(struct cal_calib_tokens *t, size_t *cap_seq, size_t *cap_ids,
			       const json_t *arr, uint64_t vocab, const char *name, size_t where,
			       struct cal_error *err)
{
	size_t n = json_array_size(arr);
	if (!json_is_array(arr))
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: sequence %zu: input_ids is not an array",
				     name, where);
	if (n == 0)
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: sequence %zu is empty", name, where);
	if (n > CAL_CALIB_MAX_SEQ_LEN)
		return cal_error_set(err, CAL_ERR_RANGE, "%s: sequence %zu has %zu tokens (max %zu)",
				     name, where, n, CAL_CALIB_MAX_SEQ_LEN);
	if (t->n + 1 > CAL_CALIB_MAX_SEQS || t->n_tokens + n > CAL_CALIB_MAX_TOKENS)
		return cal_error_set(err, CAL_ERR_RANGE, "%s: more than %zu sequences or %zu tokens",
				     name, CAL_CALIB_MAX_SEQS, CAL_CALIB_MAX_TOKENS);
	if (t->n + 2 > *cap_seq) {
		size_t nc = *cap_seq ? *cap_seq * 2 : 64;
		size_t *no = realloc(t->off, nc * sizeof(*no));
		if (!no)
			return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", name);
		t->off = no;
		*cap_seq = nc;
	}
	if (t->n_tokens + n > *cap_ids) {
		size_t nc = *cap_ids ? *cap_ids : 1024;
		while (nc < t->n_tokens + n)
			nc *= 2;
		uint32_t *ni = realloc(t->ids, nc * sizeof(*ni));
		if (!ni)
			return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", name);
		t->ids = ni;
		*cap_ids = nc;
	}
	for (size_t i = 0; i < n; i++) {
		const json_t *v = json_array_get(arr, i);
		json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
		if (!json_is_integer(v) || id < 0 || id > UINT32_MAX || (vocab && (uint64_t)id >= vocab))
			return cal_error_set(err, CAL_ERR_FORMAT,
					     "%s: sequence %zu, position %zu: token id is not an "
					     "integer in [0, %llu)", name, where, i,
					     (unsigned long long)(vocab ? vocab : UINT32_MAX));
		t->ids[t->n_tokens + i] = (uint32_t)id;
	}
	t->off[0] = 0;
	t->n_tokens += n;
	t->n++;
	t->off[t->n] = t->n_tokens;
	return CAL_OK;
}

enum cal_status cal_calib_tokens_parse(const char *name, const char *text, size_t len,
				       uint64_t vocab, struct cal_calib_tokens **ret,
				       struct cal_error *err)
{
	struct cal_calib_tokens *t = calloc(1, sizeof(*t));
	size_t cap_seq = 0, cap_ids = 0;
	enum cal_status st = CAL_OK;
	json_t *doc = NULL;
	json_error_t je;

	*ret = NULL;
	if (!t)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", name);
	/* one object whose input_ids is a list of lists? */
	doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (doc && json_is_object(doc) && json_is_array(json_object_get(doc, "input_ids")) &&
	    json_is_array(json_array_get(json_object_get(doc, "input_ids"), 0))) {
		json_t *all = json_object_get(doc, "input_ids");
		for (size_t i = 0; i < json_array_size(all); i++)
			CAL_TRY(add_seq(t, &cap_seq, &cap_ids, json_array_get(all, i), vocab, name, i, err));
	} else {
		size_t line = 0;
		const char *p = text, *end = text + len;
		while (p < end) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			const char *le = nl ? nl : end;
			line++;
			const char *q = p;
			while (q < le && (*q == ' ' || *q == '\t' || *q == '\r'))
				q++;
			if (q < le) {
				json_t *o = json_loadb(p, (size_t)(le - p), JSON_REJECT_DUPLICATES, &je);
				if (!o || !json_is_object(o) || !json_object_get(o, "input_ids")) {
					json_decref(o);
					st = cal_error_set(err, CAL_ERR_FORMAT,
							   "%s:%zu: not a JSON object with \"input_ids\"%s%s",
							   name, line, o ? "" : ": ", o ? "" : je.text);
					goto fail;
				}
				st = add_seq(t, &cap_seq, &cap_ids, json_object_get(o, "input_ids"), vocab,
					     name, line, err);
				json_decref(o);
				if (st < 0)
					goto fail;
			}
			p = le + 1;
		}
	}
	if (t->n == 0) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: no token sequences", name);
		goto fail;
	}
	json_decref(doc);
	*ret = t;
	return CAL_OK;
fail:
	json_decref(doc);
	cal_calib_tokens_free(t);
	return st;
}

enum cal_status cal_calib_tokens_load(const char *path, uint64_t vocab,
				      struct cal_calib_tokens **ret, struct cal_error *err)
{
	char *text = NULL;
	size_t len = 0;
	enum cal_status st = cal_read_file(path, CAL_CALIB_MAX_TOKEN_FILE, &text, &len, err);
	*ret = NULL;
	if (st < 0)
		return cal_error_wrap(err, st, "calibration tokens");
	st = cal_calib_tokens_parse(path, text, len, vocab, ret, err);
	free(text);
	return st;
}

uint64_t cal_calib_tokens_hash(const struct cal_calib_tokens *t, size_t s)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = t->off[s]; i < t->off[s + 1]; i++)
		for (int b = 0; b < 4; b++)
			h = (h ^ ((t->ids[i] >> (8 * b)) & 0xff)) * 1099511628211ull;
	return h;
}

char *cal_calib_tokens_hashes(const struct cal_calib_tokens *t)
{
	char *out = malloc(t->n * 16 + 1);
	if (!out)
		return NULL;
	for (size_t s = 0; s < t->n; s++)
		snprintf(out + s * 16, 17, "%016llx", (unsigned long long)cal_calib_tokens_hash(t, s));
	out[t->n * 16] = 0;
	return out;
}
