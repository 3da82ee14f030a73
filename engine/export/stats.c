/*
 * stats.c — the quantizer-name -> amax table (stats.h): an insertion-ordered
 * array indexed by an open-addressing hash, and the stats JSON reader/writer.
 */
#include "stats.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/hash.h"
#include "common/parse.h"
#include "common/util.h"

struct stat_entry {
	char *name;
	float amax;
	uint16_t *bias;  /* affine KV cache: bf16 [n_bias], or NULL */
	uint64_t n_bias;
};

struct tok_layer {
	int32_t layer;
	int64_t n;
	uint64_t *tokens;
};

struct cal_stats {
	struct stat_entry *v;
	size_t n, cap;
	struct cal_name_index names; /* the quantizers by name */
	struct tok_layer *tl;
	size_t n_tl;
	struct cal_stats_calib calib;
};

static const char *entry_name(const void *v, size_t i)
{
	return ((const struct stat_entry *)v)[i].name;
}

static size_t *find_slot(const struct cal_stats *s, const char *name)
{
	return cal_name_index_slot(&s->names, name, entry_name, s->v);
}

static int rehash(struct cal_stats *s, size_t n_slot)
{
	return cal_name_index_rebuild(&s->names, n_slot, s->n, entry_name, s->v);
}

enum cal_status cal_stats_init(struct cal_stats **ret, struct cal_error *err)
{
	struct cal_stats *s = calloc(1, sizeof(*s));
	if (!s || rehash(s, 64) < 0) {
		free(s);
		return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
	}
	*ret = s;
	return CAL_OK;
}

void cal_stats_free(struct cal_stats *s)
{
	if (!s)
		return;
	cal_name_index_free(&s->names); /* the index over v goes first */
	CAL_FREE_MEMBER(s->v, s->n, name);
	CAL_FREE_MEMBER(s->v, s->n, bias);
	CAL_FREE_MEMBER(s->tl, s->n_tl, tokens);
	CAL_FREE_ALL(s->tl, (char *)s->calib.sequence_hashes, s->v, s);
}

enum cal_status cal_stats_set(struct cal_stats *s, const char *name, float amax,
			      struct cal_error *err)
{
	if (!name || !*name)
		return cal_error_set(err, CAL_ERR_INVALID, "stats: empty quantizer name");
	if (!isfinite(amax) || amax < 0.0f)
		return cal_error_set(err, CAL_ERR_NUMERIC, "stats: amax of %s is %g (must be "
				     "finite and >= 0)", name, (double)amax);
	size_t *sl = find_slot(s, name);
	if (*sl) {
		s->v[*sl - 1].amax = amax;
		return CAL_OK;
	}
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 64;
		struct stat_entry *nv = realloc(s->v, nc * sizeof(*nv));
		if (!nv)
			return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
		s->v = nv;
		s->cap = nc;
	}
	char *dup = strdup(name);
	if (!dup)
		return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
	s->v[s->n] = (struct stat_entry){dup, amax, NULL, 0};
	*sl = ++s->n;
	if (s->n * 2 > s->names.cap && rehash(s, s->names.cap * 2) < 0) {
		/* the table still works at a higher load factor (< 1) */
		if (s->n + 1 >= s->names.cap)
			return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
	}
	return CAL_OK;
}

int cal_stats_get(const struct cal_stats *s, const char *name, float *ret)
{
	size_t *sl = find_slot(s, name);
	if (!*sl)
		return 0;
	*ret = s->v[*sl - 1].amax;
	return 1;
}

enum cal_status cal_stats_set_bias(struct cal_stats *s, const char *name, const uint16_t *bias,
				   uint64_t n, struct cal_error *err)
{
	size_t *sl = find_slot(s, name);
	if (!*sl || !n || n > (1u << 24))
		return cal_error_set(err, CAL_ERR_INVALID, "stats: bias of %s: %s", name,
				     *sl ? "bad length" : "the quantizer has no amax");
	struct stat_entry *e = &s->v[*sl - 1];
	uint16_t *b = malloc(n * 2);
	if (!b)
		return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
	memcpy(b, bias, n * 2);
	free(e->bias);
	e->bias = b;
	e->n_bias = n;
	return CAL_OK;
}

const uint16_t *cal_stats_bias(const struct cal_stats *s, const char *name, uint64_t *ret_n)
{
	size_t *sl = find_slot(s, name);
	if (!*sl || !s->v[*sl - 1].bias)
		return NULL;
	*ret_n = s->v[*sl - 1].n_bias;
	return s->v[*sl - 1].bias;
}

enum cal_status cal_stats_need_bias(const struct cal_stats *s, const char *name, uint64_t n,
				    const uint16_t **ret, struct cal_error *err)
{
	uint64_t have = 0;
	*ret = cal_stats_bias(s, name, &have);
	if (!*ret || have != n)
		return cal_error_set(err, CAL_ERR_INVALID, "statistics have no bias of %llu values "
				     "for affine KV quantizer %s", (unsigned long long)n, name);
	return CAL_OK;
}

size_t cal_stats_count(const struct cal_stats *s)
{
	return s->n;
}

enum cal_status cal_stats_set_expert_tokens(struct cal_stats *s, int32_t layer,
					    int64_t n_experts, const uint64_t *tokens,
					    struct cal_error *err)
{
	if (layer < 0 || n_experts <= 0 || n_experts > 1 << 20)
		return cal_error_set(err, CAL_ERR_INVALID, "stats: bad expert token counts for "
				     "layer %d (%lld experts)", (int)layer, (long long)n_experts);
	uint64_t *copy = malloc((size_t)n_experts * sizeof(*copy));
	if (!copy)
		return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
	memcpy(copy, tokens, (size_t)n_experts * sizeof(*copy));
	for (size_t k = 0; k < s->n_tl; k++) {
		if (s->tl[k].layer == layer) {
			free(s->tl[k].tokens);
			s->tl[k].tokens = copy;
			s->tl[k].n = n_experts;
			return CAL_OK;
		}
	}
	struct tok_layer *nt = realloc(s->tl, (s->n_tl + 1) * sizeof(*nt));
	if (!nt) {
		free(copy);
		return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
	}
	s->tl = nt;
	s->tl[s->n_tl++] = (struct tok_layer){layer, n_experts, copy};
	return CAL_OK;
}

const uint64_t *cal_stats_expert_tokens(const struct cal_stats *s, int32_t layer,
					int64_t *ret_n)
{
	for (size_t k = 0; k < s->n_tl; k++) {
		if (s->tl[k].layer == layer) {
			*ret_n = s->tl[k].n;
			return s->tl[k].tokens;
		}
	}
	*ret_n = 0;
	return NULL;
}

void cal_stats_set_calib(struct cal_stats *s, const struct cal_stats_calib *c)
{
	free((char *)s->calib.sequence_hashes);
	s->calib = *c;
	s->calib.sequence_hashes = c->sequence_hashes ? strdup(c->sequence_hashes) : NULL;
}

const struct cal_stats_calib *cal_stats_calib(const struct cal_stats *s)
{
	return &s->calib;
}

/* ---- JSON ---------------------------------------------------------------- */

/* An affine KV quantizer's bias: an array of bf16 values. */
static enum cal_status load_bias(struct cal_stats *s, const char *k, json_t *arr,
				 const char *path, struct cal_error *err)
{
	size_t n = json_array_size(arr), i;
	json_t *x;
	if (!json_is_array(arr) || !n || n > (1u << 24))
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: bias of %s: expected a non-empty "
				     "array of numbers", path, k);
	uint16_t *b = malloc(n * 2);
	if (!b)
		return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
	json_array_foreach(arr, i, x) {
		double d = json_is_number(x) ? json_number_value(x) : NAN;
		b[i] = cal_f32_to_bf16((float)d);
		if (!isfinite(d) || cal_bf16_to_f32(b[i]) != (float)d) {
			free(b);
			return cal_error_set(err, CAL_ERR_FORMAT, "%s: bias of %s[%zu]: expected a "
					     "finite bf16 value", path, k, i);
		}
	}
	enum cal_status st = cal_stats_set_bias(s, k, b, n, err);
	free(b);
	return st < 0 ? cal_error_wrap(err, st, "%s", path) : CAL_OK;
}

static enum cal_status load_amax(struct cal_stats *s, json_t *obj, const char *path,
				 struct cal_error *err)
{
	const char *k;
	json_t *v;
	json_object_foreach(obj, k, v) {
		json_t *bias = json_is_object(v) ? json_object_get(v, "bias") : NULL;
		if (json_is_object(v))
			v = json_object_get(v, "amax");
		/* `calibd calibrate` writes null for a quantizer without an amax
		 * (a constant KV cast, or no data): the exporter names it if needed */
		if (json_is_null(v))
			continue;
		if (!json_is_number(v))
			return cal_error_set(err, CAL_ERR_FORMAT, "%s: amax.%s: expected a number",
					     path, k);
		enum cal_status st = cal_stats_set(s, k, (float)json_number_value(v), err);
		if (st < 0)
			return cal_error_wrap(err, st, "%s", path);
		if (bias)
			CAL_TRY_RET(load_bias(s, k, bias, path, err));
	}
	return CAL_OK;
}

static enum cal_status load_tokens(struct cal_stats *s, const char *key, json_t *arr,
				   const char *path, struct cal_error *err)
{
	uint64_t layer;
	if (cal_parse_u64("expert_tokens key", key, 0, 1 << 20, &layer, NULL) < 0)
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: expert_tokens.%s: the key must be a "
				     "layer index", path, key);
	if (!json_is_array(arr) || !json_array_size(arr) || json_array_size(arr) > 1 << 20)
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: expert_tokens.%s: expected a "
				     "non-empty array of counts", path, key);
	size_t n = json_array_size(arr);
	uint64_t *t = malloc(n * sizeof(*t));
	if (!t)
		return cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
	for (size_t i = 0; i < n; i++) {
		json_t *x = json_array_get(arr, i);
		if (!json_is_integer(x) || json_integer_value(x) < 0) {
			free(t);
			return cal_error_set(err, CAL_ERR_FORMAT, "%s: expert_tokens.%s[%zu]: "
					     "expected a count >= 0", path, key, i);
		}
		t[i] = (uint64_t)json_integer_value(x);
	}
	enum cal_status st = cal_stats_set_expert_tokens(s, (int32_t)layer, (int64_t)n, t, err);
	free(t);
	return st;
}

/*
 * The "moe" section of `calibd calibrate --stats-out` (engine/calib.h):
 * "<prefix>layers.L.mlp.experts" -> {"tokens": [...], "gate_up_input_amax":
 * [...], "down_input_amax": [...]} (null for experts without tokens).  Fills
 * the token counts of layers "expert_tokens" did not give and the per-expert
 * input amax ("<key>.<proj>_input_quantizers.<e>") "amax" did not give.
 */
static enum cal_status load_moe(struct cal_stats *s, json_t *moe, const char *path,
				struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	static const char *const arr[2] = {"gate_up_input_amax", "down_input_amax"};
	static const char *const proj[2] = {"gate_up_proj", "down_proj"};
	const char *k;
	json_t *v;
	char *name = NULL;
	if (!json_is_object(moe))
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: moe: expected an object", path);
	json_object_foreach(moe, k, v) {
		const char *p = strstr(k, "layers.");
		const char *end = NULL;
		uint64_t layer = 0;
		if (!p || cal_scan_u64(p + 7, &end, &layer) < 0 || *end != '.' || layer > 1 << 20 ||
		    !json_is_object(v))
			return cal_error_set(err, CAL_ERR_FORMAT, "%s: moe.%s: expected "
					     "\"<prefix>layers.<L>.mlp.experts\" -> object", path, k);
		int64_t n = 0;
		json_t *tok = json_object_get(v, "tokens");
		if (tok && !cal_stats_expert_tokens(s, (int32_t)layer, &n)) {
			char key[24];
			snprintf(key, sizeof(key), "%llu", (unsigned long long)layer);
			CAL_TRY(load_tokens(s, key, tok, path, err));
		}
		for (int a = 0; a < 2; a++) {
			json_t *am = json_object_get(v, arr[a]), *x;
			size_t e;
			if (am && !json_is_array(am))
				return cal_error_set(err, CAL_ERR_FORMAT, "%s: moe.%s.%s: expected an "
						     "array", path, k, arr[a]);
			json_array_foreach(am, e, x) {
				float have;
				if (json_is_null(x))
					continue;
				if (!json_is_number(x))
					return cal_error_set(err, CAL_ERR_FORMAT, "%s: moe.%s.%s[%zu]: "
							     "expected a number or null", path, k,
							     arr[a], e);
				free(name);
				if (asprintf(&name, "%s.%s_input_quantizers.%zu", k, proj[a], e) < 0) {
					name = NULL;
					st = cal_error_set(err, CAL_ERR_NOMEM, "stats: out of memory");
					goto fail;
				}
				if (!cal_stats_get(s, name, &have) &&
				    (st = cal_stats_set(s, name, (float)json_number_value(x), err)) < 0) {
					cal_error_wrap(err, st, "%s", path);
					goto fail;
				}
			}
		}
	}
fail:
	free(name);
	return st;
}

enum cal_status cal_stats_load(const char *path, struct cal_stats **ret, struct cal_error *err)
{
	enum cal_status st;
	char *text = NULL;
	size_t len = 0;
	json_t *root = NULL;
	struct cal_stats *s = NULL;
	CAL_TRY(cal_read_file(path, CAL_STATS_MAX_FILE, &text, &len, err));
	json_error_t je;
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!root || !json_is_object(root)) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%d:%d: %s", path, je.line, je.column,
				   root ? "expected a JSON object" : je.text);
		goto fail;
	}
	CAL_TRY(cal_stats_init(&s, err));
	json_t *amax = json_object_get(root, "amax");
	if (!amax)
		amax = json_object_get(root, "quantizers");
	if (!json_is_object(amax)) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: expected an object \"amax\" "
				   "(quantizer name -> amax)", path);
		goto fail;
	}
	CAL_TRY(load_amax(s, amax, path, err));
	json_t *bias = json_object_get(root, "bias"), *bv;
	const char *bk;
	if (bias && !json_is_object(bias)) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: bias: expected an object (quantizer "
				   "name -> bf16 values)", path);
		goto fail;
	}
	json_object_foreach(bias, bk, bv)
		CAL_TRY(load_bias(s, bk, bv, path, err));
	json_t *tok = json_object_get(root, "expert_tokens");
	if (tok) {
		if (!json_is_object(tok)) {
			st = cal_error_set(err, CAL_ERR_FORMAT, "%s: expert_tokens: expected an "
					   "object (layer -> counts)", path);
			goto fail;
		}
		const char *k;
		json_t *v;
		json_object_foreach(tok, k, v)
			CAL_TRY(load_tokens(s, k, v, path, err));
	}
	json_t *moe = json_object_get(root, "moe");
	if (moe)
		CAL_TRY(load_moe(s, moe, path, err));
	json_t *cal = json_object_get(root, "calibration");
	if (json_is_object(cal)) {
		json_t *x;
		if (json_is_integer(x = json_object_get(cal, "samples")))
			s->calib.samples = json_integer_value(x);
		if (json_is_integer(x = json_object_get(cal, "seq_len")))
			s->calib.seq_len = json_integer_value(x);
		if (json_is_integer(x = json_object_get(cal, "tokens")) && json_integer_value(x) >= 0)
			s->calib.tokens = (uint64_t)json_integer_value(x);
		if (json_is_string(x = json_object_get(cal, "sequence_hashes")) &&
		    json_string_length(x) % 16 == 0)
			s->calib.sequence_hashes = strdup(json_string_value(x));
	}
	*ret = s;
	s = NULL;
	st = CAL_OK;
fail:
	cal_stats_free(s);
	json_decref(root);
	free(text);
	return st;
}

char *cal_stats_json(const struct cal_stats *s)
{
	json_t *root = json_object(), *am = json_object(), *tok = json_object(),
	       *cal = json_object(), *bias = json_object();
	char *out = NULL;
	if (!root || !am || !tok || !cal || !bias)
		goto done;
	json_object_set_new(root, "format", json_string("calibd-stats"));
	json_object_set_new(root, "version", json_integer(1));
	json_object_set_new(cal, "samples", json_integer(s->calib.samples));
	json_object_set_new(cal, "seq_len", json_integer(s->calib.seq_len));
	json_object_set_new(cal, "tokens", json_integer((json_int_t)s->calib.tokens));
	if (s->calib.sequence_hashes)
		json_object_set_new(cal, "sequence_hashes", json_string(s->calib.sequence_hashes));
	for (size_t k = 0; k < s->n; k++) {
		json_object_set_new(am, s->v[k].name, json_real(s->v[k].amax));
		json_t *b = s->v[k].bias ? json_array() : NULL;
		for (uint64_t i = 0; b && i < s->v[k].n_bias; i++)
			json_array_append_new(b, json_real(cal_bf16_to_f32(s->v[k].bias[i])));
		if (b)
			json_object_set_new(bias, s->v[k].name, b);
	}
	for (size_t k = 0; k < s->n_tl; k++) {
		json_t *a = json_array();
		char key[24];
		if (!a)
			goto done;
		for (int64_t e = 0; e < s->tl[k].n; e++)
			json_array_append_new(a, json_integer((json_int_t)s->tl[k].tokens[e]));
		snprintf(key, sizeof(key), "%d", (int)s->tl[k].layer);
		json_object_set_new(tok, key, a);
	}
	json_object_set(root, "calibration", cal);
	json_object_set(root, "amax", am);
	json_object_set(root, "expert_tokens", tok);
	if (json_object_size(bias))
		json_object_set(root, "bias", bias);
	out = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
done:
	CAL_EACH(json_decref, json_t, cal, am, tok, bias, root);
	return out;
}
