/*
 * model.c — config.json → struct cal_model_desc, driven by the per-
 * architecture table (engine/model/arch.def; class defaults and naming
 * rules from docs/architectures.md).  Every key is read through a typed getter that
 * refuses a wrong JSON type by naming the key.
 */
#include "model.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonscan.h"
#include "common/util.h"

#define PX_MODEL "model."
#define PX_LM "model.language_model."
#define PROJ_QWEN {"gate_proj", "up_proj", "down_proj"}
#define PROJ_MIXTRAL {"w1", "w3", "w2"}

/* Qwen3.5-MoE: the multimodal wrapper and its text-only class share every
 * field but their names and weight prefix. */
#define QWEN3_5_MOE_FIELDS \
	.def_vocab = 248320, .def_hidden = 2048, .def_intermediate = 5632, \
	.def_layers = 40, .def_heads = 16, .def_kv_heads = 2, .def_head_dim = 256, \
	.def_max_pos = 262144, \
	.def_rope_theta = 10000, .def_eps = 1e-6, .def_partial_rotary = 0.25, \
	.def_norm_topk_prob = 1, \
	.experts_keys = {"num_experts"}, .topk_keys = {"num_experts_per_tok"}, \
	.mtp_keys = {"num_nextn_predict_layers"}, \
	.expert_i_key = "moe_intermediate_size", \
	.attn_bias_key = "attention_bias", .o_bias_follows = 1, \
	.norm = CAL_NORM_RMS_1P, .qk_norm = CAL_QK_NORM_HEAD, .attn = CAL_ATTN_GATED_GQA, \
	.router = CAL_ROUTER_SOFTMAX_TOPK, .renorm = CAL_RENORM_ALWAYS, .router_bf16_weights = 1, \
	.act = CAL_ACT_SWIGLU, .shared = CAL_SHARED_GATED, \
	.ffn_rule = CAL_FFN_RULE_ALL_MOE, .mixer_rule = CAL_MIXER_RULE_HYBRID, \
	.gdn = CAL_GDN_SPLIT, \
	.moe_block = "mlp", .router_name = "gate", .shared_name = "shared_expert", \
	.expert_proj = PROJ_QWEN, .hub_layout = CAL_LAYOUT_FUSED

static const struct cal_arch_info arch_table[CAL_ARCH_COUNT] = {
#define CAL_ARCH_UNPACK(...) __VA_ARGS__
#define CAL_ARCH(NAME, fields) [CAL_ARCH_##NAME] = {.id = CAL_ARCH_##NAME, CAL_ARCH_UNPACK fields},
#include "engine/model/arch.def"
#undef CAL_ARCH
#undef CAL_ARCH_UNPACK
};

const struct cal_arch_info *cal_arch_get(enum cal_arch id)
{
	if ((unsigned)id >= CAL_ARCH_COUNT)
		return NULL;
	return &arch_table[id];
}

const struct cal_arch_info *cal_arch_find(const char *model_type)
{
	if (!model_type)
		return NULL;
	for (size_t i = 0; i < CAL_ARCH_COUNT; i++)
		if (!strcmp(arch_table[i].model_type, model_type))
			return &arch_table[i];
	return NULL;
}

/* ---- names ---------------------------------------------------------------- */

const char *cal_arch_name(enum cal_arch a)
{
	return (unsigned)a < CAL_ARCH_COUNT ? arch_table[a].model_type : "unknown";
}

#define NAME_FN(fn, type, ...)                                                 \
	const char *fn(type v)                                                 \
	{                                                                      \
		static const char *const n[] = {__VA_ARGS__};                  \
		return (unsigned)v < CAL_ARRAY_LEN(n) ? n[v] : "unknown";      \
	}

NAME_FN(cal_norm_kind_name, enum cal_norm_kind, "rms", "rms_f32w", "rms_1p")
NAME_FN(cal_qk_norm_name, enum cal_qk_norm, "none", "head", "full")
NAME_FN(cal_attn_kind_name, enum cal_attn_kind, "gqa", "gated_gqa", "mla")
NAME_FN(cal_mixer_name, enum cal_mixer, "full", "sliding", "linear")
NAME_FN(cal_ffn_name, enum cal_ffn, "dense", "moe")
NAME_FN(cal_router_kind_name, enum cal_router_kind, "none", "softmax_topk",
	"sigmoid_group", "topk_softmax")
NAME_FN(cal_expert_layout_name, enum cal_expert_layout, "none", "per-expert", "mixtral",
	"fused", "fused-t", "fused-oai", "mxfp4")
NAME_FN(cal_rope_type_name, enum cal_rope_type, "default", "linear", "dynamic", "yarn",
	"llama3")
NAME_FN(cal_src_quant_name, enum cal_src_quant, "none", "fp8", "mxfp4")

/* ---- typed getters ----------------------------------------------------------
 * A key that is absent or null takes the default; any other type mismatch is
 * a CAL_ERR_FORMAT naming the key. */

struct reader {
	const char *name; /* file name for messages */
	struct cal_error *err;
};

static enum cal_status bad_type(struct reader *r, const char *key, const char *want)
{
	return cal_error_set(r->err, CAL_ERR_FORMAT, "%s: key '%s' must be %s", r->name,
			     key, want);
}

/* Key `key` of o, or NULL when o is NULL or the key is absent or null. */
static json_t *lookup(json_t *o, const char *key)
{
	json_t *v = o ? json_object_get(o, key) : NULL;
	return v && !json_is_null(v) ? v : NULL;
}

static enum cal_status get_int(struct reader *r, json_t *o, const char *key, int64_t def,
			       int64_t *ret)
{
	json_t *v = lookup(o, key);
	if (!v) {
		*ret = def;
		return CAL_OK;
	}
	if (json_is_integer(v)) {
		*ret = (int64_t)json_integer_value(v);
		return CAL_OK;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);
		if (d == floor(d) && fabs(d) < 9e15) {
			*ret = (int64_t)d;
			return CAL_OK;
		}
	}
	return bad_type(r, key, "an integer");
}

static enum cal_status get_num(struct reader *r, json_t *o, const char *key, double def,
			       double *ret)
{
	json_t *v = lookup(o, key);
	if (v && !json_is_number(v))
		return bad_type(r, key, "a number");
	*ret = v ? json_number_value(v) : def;
	if (v && !isfinite(*ret))
		return bad_type(r, key, "a finite number");
	return CAL_OK;
}

static enum cal_status get_bool(struct reader *r, json_t *o, const char *key, int def,
				int *ret)
{
	json_t *v = lookup(o, key);
	if (v && !json_is_boolean(v))
		return bad_type(r, key, "true or false");
	*ret = v ? json_is_true(v) : def;
	return CAL_OK;
}

/* String or NULL when absent/null. */
static enum cal_status get_str(struct reader *r, json_t *o, const char *key,
			       const char **ret)
{
	json_t *v = lookup(o, key);
	*ret = NULL;
	if (v && !json_is_string(v))
		return bad_type(r, key, "a string");
	*ret = v ? json_string_value(v) : NULL;
	return CAL_OK;
}

static int key_set(json_t *o, const char *key)
{
	return lookup(o, key) != NULL;
}

/* Two spellings of one key that are both set must agree (numbers compare
 * by value: 8 == 8.0); the error names both keys and values. */
static enum cal_status check_same(struct reader *r, json_t *a, const char *an, json_t *b,
				  const char *bn)
{
	if (!a || json_is_null(a) || !b || json_is_null(b))
		return CAL_OK;
	int same = json_is_number(a) && json_is_number(b)
			   ? json_number_value(a) == json_number_value(b)
			   : json_equal(a, b);
	if (same)
		return CAL_OK;
	char *av = json_dumps(a, JSON_ENCODE_ANY | JSON_COMPACT);
	char *bv = json_dumps(b, JSON_ENCODE_ANY | JSON_COMPACT);
	enum cal_status st = cal_error_set(r->err, CAL_ERR_FORMAT,
					   "%s: '%s' (%s) contradicts '%s' (%s)", r->name, an,
					   av ? av : "?", bn, bv ? bv : "?");
	free(av);
	free(bv);
	return st;
}

/* The first set spelling among `keys` (NULL-terminated) in `o`, after
 * checking that every other set spelling agrees with it; *which gets its
 * name (NULL: none set). */
static enum cal_status find_any(struct reader *r, json_t *o, const char *const *keys,
				const char **which)
{
	enum cal_status st = CAL_OK;
	*which = NULL;
	json_t *first = NULL;
	for (size_t i = 0; i < 3 && keys[i]; i++) {
		json_t *v = lookup(o, keys[i]);
		if (!v)
			continue;
		if (!first) {
			first = v;
			*which = keys[i];
		} else {
			CAL_TRY(check_same(r, first, *which, v, keys[i]));
		}
	}
fail:
	return st;
}

/* A required integer spelled as any of `keys`: absent under every name is
 * a CAL_ERR_FORMAT listing them (no class default: a wrong guess would
 * go unnoticed). */
static enum cal_status get_int_required(struct reader *r, json_t *o, const char *const *keys,
					int64_t *ret)
{
	const char *k;
	enum cal_status st = find_any(r, o, keys, &k);
	if (st < 0)
		return st;
	if (!k)
		return cal_error_set(r->err, CAL_ERR_FORMAT, "%s: required key '%s'%s%s%s%s is "
				     "missing", r->name, keys[0], keys[1] ? " (or '" : "",
				     keys[1] ? keys[1] : "", keys[1] ? "'" : "",
				     keys[1] ? ")" : "");
	return get_int(r, o, k, 0, ret);
}

static enum cal_status check_range(struct reader *r, const char *key, int64_t v,
				   int64_t lo, int64_t hi)
{
	if (v < lo || v > hi)
		return cal_error_set(r->err, CAL_ERR_RANGE,
				     "%s: '%s' = %lld is outside [%lld, %lld]", r->name, key,
				     (long long)v, (long long)lo, (long long)hi);
	return CAL_OK;
}

/* v (key `key`) is a multiple of m (key `mkey`, m >= 1). */
static enum cal_status check_multiple(struct reader *r, const char *key, int64_t v,
				      const char *mkey, int64_t m)
{
	if (v % m)
		return cal_error_set(r->err, CAL_ERR_FORMAT,
				     "%s: %s (%lld) is not a multiple of %s (%lld)", r->name, key,
				     (long long)v, mkey, (long long)m);
	return CAL_OK;
}

/* ---- RoPE --------------------------------------------------------------- */

static double yarn_m(double s, double a)
{
	return s <= 1.0 ? 1.0 : 0.1 * a * log(s) + 1.0;
}

/* Reads RoPE from the merged parameter object p (pkey names it in
 * messages). */
static enum cal_status parse_rope_params(struct reader *r, json_t *cfg, json_t *p,
					 const char *pkey, struct cal_model_desc *d)
{
	enum cal_status st = CAL_OK;
	struct cal_rope *rp = &d->rope;
	const char *type = NULL;
	CAL_TRY(get_str(r, p, "rope_type", &type));
	if (!type)
		CAL_TRY(get_str(r, p, "type", &type));
	static const struct cal_name_val types[] = {
		{"default", CAL_ROPE_DEFAULT}, {"mrope", CAL_ROPE_DEFAULT},
		{"linear", CAL_ROPE_LINEAR},   {"dynamic", CAL_ROPE_DYNAMIC},
		{"yarn", CAL_ROPE_YARN},       {"llama3", CAL_ROPE_LLAMA3},
	};
	int t = CAL_ROPE_DEFAULT;
	if (type && cal_name_val_find(types, CAL_ARRAY_LEN(types), type, &t) < 0)
		return cal_error_set(r->err, CAL_ERR_UNSUPPORTED,
				     "%s: %s.rope_type '%s' is not supported (default, "
				     "linear, dynamic, yarn, llama3)", r->name, pkey, type);
	rp->type = (enum cal_rope_type)t;

	double top;
	CAL_TRY(get_num(r, cfg, "rope_theta", d->arch->def_rope_theta, &top));
	CAL_TRY(get_num(r, p, "rope_theta", top, &rp->theta));
	CAL_TRY(get_num(r, cfg, "partial_rotary_factor", d->arch->def_partial_rotary, &top));
	CAL_TRY(get_num(r, p, "partial_rotary_factor", top, &rp->partial_rotary_factor));
	if (!(rp->theta > 0))
		return cal_error_set(r->err, CAL_ERR_RANGE, "%s: rope_theta must be > 0",
				     r->name);
	if (!(rp->partial_rotary_factor > 0 && rp->partial_rotary_factor <= 1))
		return cal_error_set(r->err, CAL_ERR_RANGE,
				     "%s: partial_rotary_factor must be in (0, 1]", r->name);

	int64_t omax_top;
	CAL_TRY(get_int(r, cfg, "original_max_position_embeddings", d->max_position_embeddings,
			&omax_top));
	CAL_TRY(get_int(r, p, "original_max_position_embeddings", omax_top,
			&rp->original_max_pos));
	int has_factor = key_set(p, "factor");
	CAL_TRY(get_num(r, p, "factor", 1.0, &rp->factor));
	if (rp->type == CAL_ROPE_YARN && !has_factor && rp->original_max_pos > 0)
		rp->factor = (double)d->max_position_embeddings / (double)rp->original_max_pos;
	CAL_TRY(get_num(r, p, "beta_fast", 32.0, &rp->beta_fast));
	CAL_TRY(get_num(r, p, "beta_slow", 1.0, &rp->beta_slow));
	CAL_TRY(get_num(r, p, "mscale", 0.0, &rp->mscale));
	CAL_TRY(get_num(r, p, "mscale_all_dim", 0.0, &rp->mscale_all_dim));
	CAL_TRY(get_bool(r, p, "truncate", 1, &rp->truncate));
	CAL_TRY(get_num(r, p, "low_freq_factor", 1.0, &rp->low_freq_factor));
	CAL_TRY(get_num(r, p, "high_freq_factor", 4.0, &rp->high_freq_factor));
	rp->attention_factor = 1.0;
	if (rp->type == CAL_ROPE_YARN) {
		if (key_set(p, "attention_factor"))
			CAL_TRY(get_num(r, p, "attention_factor", 1.0, &rp->attention_factor));
		else if (rp->mscale != 0 && rp->mscale_all_dim != 0)
			rp->attention_factor = yarn_m(rp->factor, rp->mscale) /
					       yarn_m(rp->factor, rp->mscale_all_dim);
		else
			rp->attention_factor = yarn_m(rp->factor, 1.0);
	}
	if (rp->type != CAL_ROPE_DEFAULT && !(rp->factor > 0))
		return cal_error_set(r->err, CAL_ERR_RANGE, "%s: %s.factor must be > 0",
				     r->name, pkey);

	json_t *ms = p ? json_object_get(p, "mrope_section") : NULL;
	if (ms && !json_is_null(ms)) {
		if (!json_is_array(ms) || json_array_size(ms) != 3)
			return bad_type(r, "mrope_section", "an array of 3 integers");
		for (size_t i = 0; i < 3; i++) {
			json_t *e = json_array_get(ms, i);
			if (!json_is_integer(e) || json_integer_value(e) < 0 ||
			    json_integer_value(e) > 65536)
				return bad_type(r, "mrope_section", "an array of 3 integers");
			rp->mrope_section[i] = (int)json_integer_value(e);
		}
		rp->has_mrope = 1;
	}
	CAL_TRY(get_bool(r, p, "mrope_interleaved", 0, &rp->mrope_interleaved));
	CAL_TRY(get_bool(r, cfg, "rope_interleave", d->arch->rope_interleave, &rp->interleave));

	if (d->attn == CAL_ATTN_MLA)
		rp->rotary_dim = d->qk_rope_head_dim;
	else
		rp->rotary_dim = (int64_t)((double)d->head_dim * rp->partial_rotary_factor);
	if (rp->rotary_dim < 2 || rp->rotary_dim % 2)
		return cal_error_set(r->err, CAL_ERR_RANGE,
				     "%s: rotary dimension %lld (head_dim x "
				     "partial_rotary_factor) must be even and >= 2",
				     r->name, (long long)rp->rotary_dim);
fail:
	return st;
}

/* transformers 5 writes rope_parameters (rope_theta and
 * partial_rotary_factor inside), 4.x rope_scaling ("type" or "rope_type")
 * with rope_theta / partial_rotary_factor at the top level.  Any mix is
 * read; a field given twice must agree (docs/config_compat.md). */
static enum cal_status parse_rope(struct reader *r, json_t *cfg, struct cal_model_desc *d)
{
	enum cal_status st = CAL_OK;
	json_t *obj[2] = {json_object_get(cfg, "rope_scaling"),
			  json_object_get(cfg, "rope_parameters")};
	static const char *const oname[2] = {"rope_scaling", "rope_parameters"};
	json_t *p = NULL;
	char an[96], bn[96];
	for (int i = 0; i < 2; i++) {
		if (obj[i] && json_is_null(obj[i]))
			obj[i] = NULL;
		if (obj[i] && !json_is_object(obj[i]))
			return bad_type(r, oname[i], "an object or null");
		if (!obj[i])
			continue;
		snprintf(an, sizeof(an), "%s.type", oname[i]);
		snprintf(bn, sizeof(bn), "%s.rope_type", oname[i]);
		CAL_TRY(check_same(r, json_object_get(obj[i], "type"), an,
				   json_object_get(obj[i], "rope_type"), bn));
	}
	if (obj[0] && obj[1]) {
		const char *k;
		json_t *v;
		json_object_foreach(obj[0], k, v) {
			const char *kn = strcmp(k, "type") ? k : "rope_type";
			json_t *w = json_object_get(obj[1], kn);
			if ((!w || json_is_null(w)) && !strcmp(kn, "rope_type"))
				w = json_object_get(obj[1], "type");
			snprintf(an, sizeof(an), "rope_scaling.%s", k);
			snprintf(bn, sizeof(bn), "rope_parameters.%s", kn);
			CAL_TRY(check_same(r, v, an, w, bn));
		}
	}
	p = obj[0] ? json_copy(obj[0]) : json_object();
	if (!p || (obj[1] && json_object_update(p, obj[1]) < 0)) {
		st = cal_error_set(r->err, CAL_ERR_NOMEM, "%s: out of memory", r->name);
		goto fail;
	}
	const char *top[] = {"rope_theta", "partial_rotary_factor"};
	for (size_t i = 0; i < CAL_ARRAY_LEN(top); i++) {
		snprintf(bn, sizeof(bn), "%s.%s", obj[1] ? oname[1] : oname[0], top[i]);
		CAL_TRY(check_same(r, json_object_get(cfg, top[i]), top[i],
				   json_object_get(p, top[i]), bn));
	}
	st = parse_rope_params(r, cfg, p, obj[1] ? oname[1] : oname[0], d);
fail:
	json_decref(p);
	return st;
}

/* ---- layer kinds ---------------------------------------------------------- */

static enum cal_status parse_int_list(struct reader *r, json_t *cfg, const char *key,
				      int64_t n, unsigned char *mark)
{
	json_t *a = json_object_get(cfg, key);
	if (!a || json_is_null(a))
		return CAL_OK;
	if (!json_is_array(a))
		return bad_type(r, key, "an array of layer indices");
	size_t i;
	json_t *e;
	json_array_foreach(a, i, e) {
		if (!json_is_integer(e))
			return bad_type(r, key, "an array of layer indices");
		json_int_t v = json_integer_value(e);
		if (v < 0 || v >= n)
			return cal_error_set(r->err, CAL_ERR_RANGE,
					     "%s: %s[%zu] = %lld is not a layer index "
					     "(num_hidden_layers %lld)", r->name, key, i,
					     (long long)v, (long long)n);
		mark[v] = 1;
	}
	return CAL_OK;
}

static enum cal_status parse_layers(struct reader *r, json_t *cfg, struct cal_model_desc *d)
{
	enum cal_status st = CAL_OK;
	const struct cal_arch_info *a = d->arch;
	int64_t n = d->num_layers;
	unsigned char *dense_mark = calloc((size_t)n, 1);
	d->layers = calloc((size_t)n, sizeof(*d->layers));
	if (!dense_mark || !d->layers) {
		st = cal_error_set(r->err, CAL_ERR_NOMEM, "%s: out of memory", r->name);
		goto fail;
	}

	/* feed-forward */
	int64_t step = 1, first_k = 0;
	if (a->ffn_rule == CAL_FFN_RULE_SPARSE_STEP) {
		CAL_TRY(parse_int_list(r, cfg, "mlp_only_layers", n, dense_mark));
		CAL_TRY(get_int(r, cfg, "decoder_sparse_step", 1, &step));
		CAL_TRY(check_range(r, "decoder_sparse_step", step, 1, n > 0 ? n : 1));
	} else if (a->ffn_rule == CAL_FFN_RULE_FIRST_K) {
		CAL_TRY(get_int(r, cfg, "first_k_dense_replace", 3, &first_k));
		CAL_TRY(check_range(r, "first_k_dense_replace", first_k, 0, n));
	}
	for (int64_t L = 0; L < n; L++) {
		int moe;
		switch (a->ffn_rule) {
		case CAL_FFN_RULE_ALL_MOE: moe = 1; break;
		case CAL_FFN_RULE_SPARSE_STEP:
			moe = !dense_mark[L] && d->num_experts > 0 && (L + 1) % step == 0;
			break;
		case CAL_FFN_RULE_FIRST_K: moe = L >= first_k; break;
		default: moe = 0; break;
		}
		d->layers[L].ffn = moe ? CAL_FFN_MOE : CAL_FFN_DENSE;
	}

	/* token mixer */
	json_t *lt = json_object_get(cfg, "layer_types");
	if (lt && !json_is_null(lt)) {
		if (!json_is_array(lt) || (int64_t)json_array_size(lt) != n) {
			st = cal_error_set(r->err, CAL_ERR_FORMAT,
					   "%s: 'layer_types' must be an array of "
					   "num_hidden_layers (%lld) strings", r->name,
					   (long long)n);
			goto fail;
		}
		for (int64_t L = 0; L < n; L++) {
			const char *s = json_string_value(json_array_get(lt, (size_t)L));
			if (s && !strcmp(s, "full_attention"))
				d->layers[L].mixer = CAL_MIXER_FULL;
			else if (s && !strcmp(s, "sliding_attention"))
				d->layers[L].mixer = CAL_MIXER_SLIDING;
			else if (s && !strcmp(s, "linear_attention") && a->gdn != CAL_GDN_NONE)
				d->layers[L].mixer = CAL_MIXER_LINEAR;
			else {
				st = cal_error_set(r->err, CAL_ERR_UNSUPPORTED,
						   "%s: layer_types[%lld] = '%s' is not "
						   "supported by %s", r->name, (long long)L,
						   s ? s : "(not a string)", a->model_type);
				goto fail;
			}
		}
	} else {
		int use_sw = 0;
		int64_t mwl = 0, interval = 4;
		if (a->mixer_rule == CAL_MIXER_RULE_QWEN_WINDOW) {
			CAL_TRY(get_bool(r, cfg, "use_sliding_window", 0, &use_sw));
			CAL_TRY(get_int(r, cfg, "max_window_layers", a->def_max_window_layers,
					&mwl));
		} else if (a->mixer_rule == CAL_MIXER_RULE_HYBRID) {
			CAL_TRY(get_int(r, cfg, "full_attention_interval", 4, &interval));
			CAL_TRY(check_range(r, "full_attention_interval", interval, 1,
					    CAL_MODEL_MAX_LAYERS));
		}
		for (int64_t L = 0; L < n; L++) {
			enum cal_mixer m = CAL_MIXER_FULL;
			switch (a->mixer_rule) {
			case CAL_MIXER_RULE_FULL:
				if (d->sliding_window > 0)
					m = CAL_MIXER_SLIDING;
				break;
			case CAL_MIXER_RULE_QWEN_WINDOW:
				if (use_sw && L >= mwl)
					m = CAL_MIXER_SLIDING;
				break;
			case CAL_MIXER_RULE_HYBRID:
				m = (L + 1) % interval == 0 ? CAL_MIXER_FULL : CAL_MIXER_LINEAR;
				break;
			case CAL_MIXER_RULE_ALTERNATE:
				m = L % 2 == 0 ? CAL_MIXER_SLIDING : CAL_MIXER_FULL;
				break;
			}
			d->layers[L].mixer = m;
		}
	}
	for (int64_t L = 0; L < n; L++) {
		if (d->layers[L].mixer == CAL_MIXER_SLIDING && d->sliding_window <= 0) {
			st = cal_error_set(r->err, CAL_ERR_FORMAT,
					   "%s: layer %lld uses sliding attention but "
					   "'sliding_window' is not set", r->name, (long long)L);
			goto fail;
		}
		if (d->layers[L].ffn == CAL_FFN_MOE)
			d->n_moe_layers++;
		else
			d->n_dense_layers++;
		if (d->layers[L].mixer == CAL_MIXER_FULL)
			d->n_full_layers++;
		else if (d->layers[L].mixer == CAL_MIXER_SLIDING)
			d->n_sliding_layers++;
		else
			d->n_linear_layers++;
	}
fail:
	free(dense_mark);
	return st;
}

/* ---- quantization_config --------------------------------------------------- */

static enum cal_status parse_quant(struct reader *r, json_t *q, struct cal_model_desc *d)
{
	enum cal_status st = CAL_OK;
	if (!q || json_is_null(q))
		return CAL_OK;
	if (!json_is_object(q))
		return bad_type(r, "quantization_config", "an object");
	const char *m = NULL;
	CAL_TRY(get_str(r, q, "quant_method", &m));
	if (!m)
		return cal_error_set(r->err, CAL_ERR_FORMAT,
				     "%s: quantization_config has no 'quant_method'", r->name);
	if (!strcmp(m, "fp8")) {
		d->src_quant = CAL_SRC_QUANT_FP8_BLOCK;
		d->quant_block[0] = d->quant_block[1] = 128;
		json_t *bs = json_object_get(q, "weight_block_size");
		if (bs && !json_is_null(bs)) {
			if (!json_is_array(bs) || json_array_size(bs) != 2 ||
			    !json_is_integer(json_array_get(bs, 0)) ||
			    !json_is_integer(json_array_get(bs, 1)))
				return bad_type(r, "quantization_config.weight_block_size",
						"an array of 2 integers");
			for (size_t i = 0; i < 2; i++) {
				d->quant_block[i] = json_integer_value(json_array_get(bs, i));
				CAL_TRY(check_range(r, "quantization_config.weight_block_size",
						    d->quant_block[i], 1, 1 << 20));
			}
		} else {
			return cal_error_set(r->err, CAL_ERR_UNSUPPORTED,
					     "%s: fp8 quantization_config without "
					     "weight_block_size (per-tensor FP8) is not "
					     "supported", r->name);
		}
	} else if (!strcmp(m, "mxfp4") && d->arch->id == CAL_ARCH_GPT_OSS) {
		d->src_quant = CAL_SRC_QUANT_MXFP4;
	} else {
		return cal_error_set(r->err, CAL_ERR_UNSUPPORTED,
				     "%s: quantization_config.quant_method '%s' is not "
				     "supported for %s (supported: fp8 block%s)", r->name, m,
				     d->arch->model_type,
				     d->arch->id == CAL_ARCH_GPT_OSS ? ", mxfp4" : "");
	}
	json_t *nc = json_object_get(q, "modules_to_not_convert");
	if (nc && !json_is_null(nc)) {
		if (!json_is_array(nc) || json_array_size(nc) > 100000)
			return bad_type(r, "quantization_config.modules_to_not_convert",
					"an array of strings");
		d->not_convert = calloc(json_array_size(nc) + 1, sizeof(char *));
		if (!d->not_convert)
			return cal_error_set(r->err, CAL_ERR_NOMEM, "out of memory");
		size_t i;
		json_t *e;
		json_array_foreach(nc, i, e) {
			if (!json_is_string(e))
				return bad_type(r, "quantization_config.modules_to_not_convert",
						"an array of strings");
			if (!(d->not_convert[i] = strdup(json_string_value(e))))
				return cal_error_set(r->err, CAL_ERR_NOMEM, "out of memory");
			d->n_not_convert = i + 1;
		}
	}
fail:
	return st;
}

/* ---- the description ----------------------------------------------------- */

#define DIM_MAX (1ll << 24)

static enum cal_status parse_desc(struct reader *r, json_t *root, struct cal_model_desc *d)
{
	enum cal_status st = CAL_OK;
	if (!json_is_object(root))
		return cal_error_set(r->err, CAL_ERR_FORMAT, "%s: not a JSON object", r->name);
	const char *mt = NULL;
	CAL_TRY(get_str(r, root, "model_type", &mt));
	if (!mt)
		return cal_error_set(r->err, CAL_ERR_FORMAT, "%s: no 'model_type'", r->name);
	const struct cal_arch_info *a = cal_arch_find(mt);
	if (!a) {
		size_t len = 0;
		for (size_t i = 0; i < CAL_ARCH_COUNT; i++)
			len += strlen(arch_table[i].model_type) + 2;
		char *list = calloc(len + 1, 1);
		for (size_t i = 0; list && i < CAL_ARCH_COUNT; i++) {
			if (i)
				strcat(list, ", ");
			strcat(list, arch_table[i].model_type);
		}
		st = cal_error_set(r->err, CAL_ERR_UNSUPPORTED,
				   "%s: model_type '%s' is not supported (supported: %s)",
				   r->name, mt, list ? list : "?");
		free(list);
		return st;
	}
	d->arch = a;
	d->prefix = a->prefix;
	if (!(d->model_type = strdup(mt)))
		goto nomem;

	json_t *archs = json_object_get(root, "architectures");
	if (archs && !json_is_null(archs)) {
		if (!json_is_array(archs))
			return bad_type(r, "architectures", "an array of strings");
		json_t *a0 = json_array_get(archs, 0);
		if (a0 && !json_is_string(a0))
			return bad_type(r, "architectures", "an array of strings");
		if (a0 && !(d->architecture = strdup(json_string_value(a0))))
			goto nomem;
	}

	json_t *cfg = root;
	json_t *tc = json_object_get(root, "text_config");
	if (tc && !json_is_null(tc)) {
		if (!json_is_object(tc))
			return bad_type(r, "text_config", "an object");
		cfg = tc;
		d->is_vlm = 1;
		const char *tmt = NULL;
		CAL_TRY(get_str(r, tc, "model_type", &tmt));
		if (tmt && a->text_model_type && strcmp(tmt, a->text_model_type))
			return cal_error_set(r->err, CAL_ERR_UNSUPPORTED,
					     "%s: text_config.model_type '%s' is not supported "
					     "for %s (expected %s)", r->name, tmt, mt,
					     a->text_model_type);
	}

	/* transformers 5 writes "dtype", 4.x "torch_dtype" */
	static const char *const dt_keys[] = {"dtype", "torch_dtype", NULL};
	const char *dt = NULL, *dk = NULL;
	CAL_TRY(find_any(r, cfg, dt_keys, &dk));
	if (!dk && cfg != root)
		CAL_TRY(find_any(r, root, dt_keys, &dk));
	if (dk)
		CAL_TRY(get_str(r, json_object_get(cfg, dk) ? cfg : root, dk, &dt));
	if (dt && !(d->dtype = strdup(dt)))
		goto nomem;

	const char *act = NULL;
	CAL_TRY(get_str(r, cfg, "hidden_act", &act));
	if (act && strcmp(act, "silu") && a->act == CAL_ACT_SWIGLU)
		return cal_error_set(r->err, CAL_ERR_UNSUPPORTED,
				     "%s: hidden_act '%s' is not supported (silu only)",
				     r->name, act);
	int mlp_bias = 0;
	CAL_TRY(get_bool(r, cfg, "mlp_bias", 0, &mlp_bias));
	if (mlp_bias)
		return cal_error_set(r->err, CAL_ERR_UNSUPPORTED,
				     "%s: 'mlp_bias': true is not supported", r->name);

	/* dims */
	CAL_TRY(get_int(r, cfg, "vocab_size", a->def_vocab, &d->vocab_size));
	CAL_TRY(check_range(r, "vocab_size", d->vocab_size, 1, DIM_MAX));
	CAL_TRY(get_int(r, cfg, "hidden_size", a->def_hidden, &d->hidden_size));
	CAL_TRY(check_range(r, "hidden_size", d->hidden_size, 1, DIM_MAX));
	CAL_TRY(get_int(r, cfg, "num_hidden_layers", a->def_layers, &d->num_layers));
	CAL_TRY(check_range(r, "num_hidden_layers", d->num_layers, 1, CAL_MODEL_MAX_LAYERS));
	CAL_TRY(get_int(r, cfg, "num_attention_heads", a->def_heads, &d->num_heads));
	CAL_TRY(check_range(r, "num_attention_heads", d->num_heads, 1, 65536));
	CAL_TRY(get_int(r, cfg, "num_key_value_heads",
			a->def_kv_heads ? a->def_kv_heads : d->num_heads, &d->num_kv_heads));
	CAL_TRY(check_range(r, "num_key_value_heads", d->num_kv_heads, 1, d->num_heads));
	CAL_TRY(check_multiple(r, "num_attention_heads", d->num_heads, "num_key_value_heads",
			       d->num_kv_heads));
	int64_t hd_def = a->def_head_dim;
	if (!hd_def) {
		if (d->hidden_size % d->num_heads && !key_set(cfg, "head_dim"))
			return cal_error_set(r->err, CAL_ERR_FORMAT,
					     "%s: hidden_size %lld is not a multiple of "
					     "num_attention_heads %lld and head_dim is not set",
					     r->name, (long long)d->hidden_size,
					     (long long)d->num_heads);
		hd_def = d->hidden_size / d->num_heads;
	}
	CAL_TRY(get_int(r, cfg, "head_dim", hd_def, &d->head_dim));
	CAL_TRY(get_int(r, cfg, "intermediate_size", a->def_intermediate,
			&d->intermediate_size));
	CAL_TRY(get_int(r, cfg, "max_position_embeddings", a->def_max_pos,
			&d->max_position_embeddings));
	CAL_TRY(check_range(r, "max_position_embeddings", d->max_position_embeddings, 1,
			    1ll << 40));
	{
		int tie_cfg;
		CAL_TRY(get_bool(r, cfg, "tie_word_embeddings", a->def_tie, &tie_cfg));
		CAL_TRY(get_bool(r, root, "tie_word_embeddings", tie_cfg,
				 &d->tie_word_embeddings));
	}

	/* norms */
	d->norm = a->norm;
	CAL_TRY(get_num(r, cfg, "rms_norm_eps", a->def_eps, &d->rms_norm_eps));
	if (!(d->rms_norm_eps > 0 && d->rms_norm_eps < 1))
		return cal_error_set(r->err, CAL_ERR_RANGE, "%s: rms_norm_eps must be in (0, 1)",
				     r->name);

	/* attention */
	d->attn = a->attn;
	d->qk_norm = a->qk_norm;
	d->has_sinks = a->has_sinks;
	d->qkv_bias = a->def_attn_bias;
	if (a->attn_bias_key)
		CAL_TRY(get_bool(r, cfg, a->attn_bias_key, a->def_attn_bias, &d->qkv_bias));
	d->o_bias = a->o_bias_follows && d->qkv_bias;
	if (a->id == CAL_ARCH_GPT_OSS)
		d->qkv_bias = d->o_bias = 1; /* forced by the class */
	CAL_TRY(get_int(r, cfg, "sliding_window", 0, &d->sliding_window));
	CAL_TRY(check_range(r, "sliding_window", d->sliding_window, 0, 1ll << 40));
	if (a->id == CAL_ARCH_GPT_OSS && !key_set(cfg, "sliding_window"))
		d->sliding_window = 128;
	CAL_TRY(get_num(r, cfg, "clip_qkv", 0.0, &d->clip_qkv));
	if (d->clip_qkv < 0)
		return cal_error_set(r->err, CAL_ERR_RANGE, "%s: clip_qkv must be >= 0",
				     r->name);
	if (d->attn == CAL_ATTN_MLA) {
		/* absent: class default 1536; an explicit null: plain q_proj */
		CAL_TRY(get_int(r, cfg, "q_lora_rank", json_object_get(cfg, "q_lora_rank") ? 0 : 1536,
				&d->q_lora_rank));
		CAL_TRY(check_range(r, "q_lora_rank", d->q_lora_rank, 0, DIM_MAX));
		CAL_TRY(get_int(r, cfg, "kv_lora_rank", 512, &d->kv_lora_rank));
		CAL_TRY(check_range(r, "kv_lora_rank", d->kv_lora_rank, 1, DIM_MAX));
		CAL_TRY(get_int(r, cfg, "qk_nope_head_dim", 128, &d->qk_nope_head_dim));
		CAL_TRY(check_range(r, "qk_nope_head_dim", d->qk_nope_head_dim, 1, 65536));
		CAL_TRY(get_int(r, cfg, "qk_rope_head_dim", 64, &d->qk_rope_head_dim));
		CAL_TRY(check_range(r, "qk_rope_head_dim", d->qk_rope_head_dim, 2, 65536));
		CAL_TRY(get_int(r, cfg, "v_head_dim", 128, &d->v_head_dim));
		CAL_TRY(check_range(r, "v_head_dim", d->v_head_dim, 1, 65536));
		/* HF uses qk_rope_head_dim as the rotary module's head_dim */
		d->head_dim = d->qk_rope_head_dim;
	}
	CAL_TRY(check_range(r, "head_dim", d->head_dim, 1, 65536));
	if (a->gdn != CAL_GDN_NONE) {
		d->gdn = a->gdn;
		CAL_TRY(get_int(r, cfg, "linear_num_key_heads", 16, &d->linear_num_key_heads));
		CAL_TRY(check_range(r, "linear_num_key_heads", d->linear_num_key_heads, 1, 65536));
		CAL_TRY(get_int(r, cfg, "linear_num_value_heads", 32,
				&d->linear_num_value_heads));
		CAL_TRY(check_range(r, "linear_num_value_heads", d->linear_num_value_heads, 1,
				    65536));
		CAL_TRY(get_int(r, cfg, "linear_key_head_dim", 128, &d->linear_key_head_dim));
		CAL_TRY(check_range(r, "linear_key_head_dim", d->linear_key_head_dim, 1, 65536));
		CAL_TRY(get_int(r, cfg, "linear_value_head_dim", 128, &d->linear_value_head_dim));
		CAL_TRY(check_range(r, "linear_value_head_dim", d->linear_value_head_dim, 1,
				    65536));
		CAL_TRY(get_int(r, cfg, "linear_conv_kernel_dim", 4, &d->linear_conv_kernel_dim));
		CAL_TRY(check_range(r, "linear_conv_kernel_dim", d->linear_conv_kernel_dim, 1,
				    1024));
		CAL_TRY(check_multiple(r, "linear_num_value_heads", d->linear_num_value_heads,
				       "linear_num_key_heads", d->linear_num_key_heads));
	}

	/* MoE */
	d->router = a->router;
	d->act = a->act;
	d->routed_scaling_factor = 1.0;
	d->n_group = d->topk_group = 1;
	if (a->is_moe) {
		const char *i_key[] = {a->expert_i_key, NULL};
		CAL_TRY(get_int_required(r, cfg, a->experts_keys, &d->num_experts));
		CAL_TRY(check_range(r, a->experts_keys[0], d->num_experts,
				    a->ffn_rule == CAL_FFN_RULE_SPARSE_STEP ? 0 : 1,
				    CAL_MODEL_MAX_EXPERTS));
		if (d->num_experts > 0) {
			CAL_TRY(get_int_required(r, cfg, a->topk_keys, &d->top_k));
			CAL_TRY(check_range(r, a->topk_keys[0], d->top_k, 1, d->num_experts));
			CAL_TRY(get_int_required(r, cfg, i_key, &d->moe_intermediate_size));
			CAL_TRY(check_range(r, a->expert_i_key, d->moe_intermediate_size, 1,
					    DIM_MAX));
		}
		switch (a->renorm) {
		case CAL_RENORM_FLAG:
			CAL_TRY(get_bool(r, cfg, "norm_topk_prob", a->def_norm_topk_prob,
					 &d->norm_topk_prob));
			break;
		case CAL_RENORM_ALWAYS:
		case CAL_RENORM_IMPLICIT: d->norm_topk_prob = 1; break;
		}
		if (a->id == CAL_ARCH_GPT_OSS) {
			/* transformers 5 reads both from the config (GptOssConfig
			 * swiglu_limit / swiglu_alpha, defaults 7.0 / 1.702) */
			CAL_TRY(get_num(r, cfg, "swiglu_limit", 7.0, &d->swiglu_limit));
			CAL_TRY(get_num(r, cfg, "swiglu_alpha", 1.702, &d->swiglu_alpha));
		}
		if (a->router == CAL_ROUTER_SIGMOID_GROUP) {
			CAL_TRY(get_num(r, cfg, "routed_scaling_factor", 2.5,
					&d->routed_scaling_factor));
			CAL_TRY(get_int(r, cfg, "n_group", 8, &d->n_group));
			CAL_TRY(check_range(r, "n_group", d->n_group, 1, d->num_experts));
			CAL_TRY(get_int(r, cfg, "topk_group", 4, &d->topk_group));
			CAL_TRY(check_range(r, "topk_group", d->topk_group, 1, d->n_group));
			CAL_TRY(check_multiple(r, "n_routed_experts", d->num_experts, "n_group",
					       d->n_group));
		}
		d->shared = a->shared;
		if (a->shared == CAL_SHARED_GATED) {
			d->n_shared_experts = 1;
			static const char *const sk[] = {"shared_expert_intermediate_size", NULL};
			CAL_TRY(get_int_required(r, cfg, sk, &d->shared_intermediate_size));
			CAL_TRY(check_range(r, "shared_expert_intermediate_size",
					    d->shared_intermediate_size, 0, DIM_MAX));
		} else if (a->shared == CAL_SHARED_UNGATED) {
			CAL_TRY(get_int(r, cfg, "n_shared_experts", 1, &d->n_shared_experts));
			CAL_TRY(check_range(r, "n_shared_experts", d->n_shared_experts, 0, 1024));
			d->shared_intermediate_size = d->moe_intermediate_size * d->n_shared_experts;
		}
		if (d->shared != CAL_SHARED_NONE &&
		    (d->n_shared_experts == 0 || d->shared_intermediate_size == 0)) {
			d->shared = CAL_SHARED_NONE;
			d->n_shared_experts = d->shared_intermediate_size = 0;
		}
	}
	{
		/* hf_ptq reads it from the top-level config */
		const char *mk = NULL;
		CAL_TRY(find_any(r, root, a->mtp_keys, &mk));
		if (mk)
			CAL_TRY(get_int(r, root, mk, 0, &d->num_nextn_predict_layers));
		CAL_TRY(check_range(r, a->mtp_keys[0], d->num_nextn_predict_layers, 0,
				    CAL_MODEL_MAX_LAYERS));
	}
	CAL_TRY(parse_layers(r, cfg, d));
	if (d->n_sliding_layers == 0)
		d->sliding_window = 0; /* configured but unused */
	if (d->n_dense_layers > 0)
		CAL_TRY(check_range(r, "intermediate_size", d->intermediate_size, 1, DIM_MAX));
	CAL_TRY(parse_rope(r, cfg, d));

	d->attn_scaling = 1.0 / sqrt((double)d->head_dim);
	if (d->attn == CAL_ATTN_MLA) {
		d->attn_scaling = 1.0 / sqrt((double)(d->qk_nope_head_dim + d->qk_rope_head_dim));
		if (d->rope.type != CAL_ROPE_DEFAULT && d->rope.mscale_all_dim != 0) {
			double m = yarn_m(d->rope.factor, d->rope.mscale_all_dim);
			d->attn_scaling *= m * m;
		}
	}

	json_t *q = json_object_get(root, "quantization_config");
	if (!q || json_is_null(q))
		q = json_object_get(cfg, "quantization_config");
	CAL_TRY(parse_quant(r, q, d));
fail:
	return st;
nomem:
	return cal_error_set(r->err, CAL_ERR_NOMEM, "%s: out of memory", r->name);
}

enum cal_status cal_model_desc_parse(const char *name, const char *json, size_t len,
				     struct cal_model_desc **ret, struct cal_error *err)
{
	*ret = NULL;
	struct reader r = {.name = name ? name : "config.json", .err = err};
	if (len > CAL_MODEL_MAX_CONFIG_BYTES)
		return cal_error_set(err, CAL_ERR_RANGE, "%s: %zu bytes exceeds the limit of %u",
				     r.name, len, CAL_MODEL_MAX_CONFIG_BYTES);
	static const struct cal_json_limits lim = {CAL_MODEL_MAX_CONFIG_DEPTH, CAL_MODEL_MAX_CONFIG_VALUES};
	if (cal_json_prescan(r.name, json, len, &lim, NULL, err))
		return CAL_ERR_RANGE;
	json_error_t je;
	json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return cal_error_set(err, CAL_ERR_FORMAT, "%s: line %d: %s", r.name, je.line,
				     je.text);
	struct cal_model_desc *d = calloc(1, sizeof(*d));
	enum cal_status st = d ? parse_desc(&r, root, d)
			       : cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	json_decref(root);
	if (st < 0) {
		cal_model_desc_free(d);
		return st;
	}
	*ret = d;
	return CAL_OK;
}

enum cal_status cal_model_desc_load(const char *dir, struct cal_model_desc **ret,
				    struct cal_error *err)
{
	*ret = NULL;
	char *path = cal_path_join(dir, "config.json");
	if (!path)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	char *buf = NULL;
	size_t len = 0;
	enum cal_status st = cal_read_file(path, CAL_MODEL_MAX_CONFIG_BYTES, &buf, &len, err);
	if (st == CAL_OK)
		st = cal_model_desc_parse(path, buf, len, ret, err);
	CAL_FREE_ALL(buf, path);
	return st;
}

void cal_model_desc_free(struct cal_model_desc *d)
{
	if (!d)
		return;
	CAL_FREE_ALL(d->model_type, d->architecture, d->dtype);
	for (size_t i = 0; i < d->n_not_convert; i++)
		free(d->not_convert[i]);
	CAL_FREE_ALL(d->not_convert, d->layers, d);
}

int64_t cal_model_kv_dims(const struct cal_model_desc *d, int v, int64_t *heads, int64_t *dim)
{
	int64_t h = d->num_kv_heads, n = d->head_dim;
	if (d->attn == CAL_ATTN_MLA)
		h = d->num_heads, n = v ? d->v_head_dim : d->qk_nope_head_dim + d->qk_rope_head_dim;
	if (heads)
		*heads = h;
	if (dim)
		*dim = n;
	return h * n;
}
