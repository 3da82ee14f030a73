/*
 * export_files.c — the exporter's side files: hf_quant_config.json
 * (docs/export.md "exclude_modules"), config.json's quantization_config
 * ("quantization_config in config.json"), the source's generation / tokenizer
 * / chat-template files, and calibd_report.json (docs/export.md).
 */
#include "export_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/util.h"

const char *const cal_export_copy_files[] = {
	"generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
	"special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
	"chat_template.jinja", "chat_template.json", "preprocessor_config.json",
	"processor_config.json", "video_preprocessor_config.json", NULL,
};

#define MAX_SIDE_FILE (1024u * 1024u * 1024u)

const char *cal_export_algo(enum cal_qfmt w, int input_on, int block, int *group_size,
			    int *awq)
{
	const struct cal_qfmt_info *f = cal_qfmt(w);
	*group_size = f && f->hf_group ? (block ? block : (int)f->block) : 0;
	*awq = f && f->hf_awq;
	if (!f)
		return "none";
	return input_on && f->hf_wa ? f->hf_wa : f->hf_w;
}

static json_t *layer_cfg(const struct xmodcfg *c)
{
	json_t *o = json_object();
	if (!o)
		return NULL;
	json_object_set_new(o, "quant_algo", json_string(c->algo));
	if (c->group_size)
		json_object_set_new(o, "group_size", json_integer(c->group_size));
	if (c->awq_keys) {
		json_object_set_new(o, "has_zero_point", json_false());
		json_object_set_new(o, "pre_quant_scale", json_true());
	}
	return o;
}

/* modelopt appends "<prefix>*" for every MTP prefix hf_ptq found, after the
 * sorted summary, unless already listed (docs/export.md "MTP layers"). */
static enum cal_status add_mtp_exclusions(struct cal_exporter *ex, json_t *arr,
					  struct cal_error *err)
{
	size_t n = cal_catalog_count(ex->cat), n_p = 0;
	const char **names = calloc(n + 1, sizeof(char *));
	char **pre = NULL;
	if (!names)
		return cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
	for (size_t i = 0; i < n; i++)
		names[i] = cal_catalog_entry(ex->cat, i)->t->name;
	enum cal_status st = cal_mtp_prefixes(names, n, ex->d->num_layers,
					      ex->d->num_nextn_predict_layers, &pre, &n_p, err);
	for (size_t i = 0; st >= 0 && i < n_p; i++) {
		size_t l = strlen(pre[i]);
		char *pat = malloc(l + 2);
		int have = 0;
		if (pat) {
			memcpy(pat, pre[i], l);
			memcpy(pat + l, "*", 2);
		}
		size_t j;
		json_t *v;
		json_array_foreach(arr, j, v)
			have |= pat && !strcmp(json_string_value(v), pat);
		if (!pat || (!have && json_array_append_new(arr, json_string(pat)) < 0))
			st = cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
		free(pat);
	}
	cal_exclude_free(pre, n_p);
	free(names);
	return st;
}

enum cal_status cal_export_hf_quant_config(struct cal_exporter *ex, json_t **ret,
					   struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	const char **unq = NULL, **q = NULL;
	size_t n_unq = 0, n_q = 0, n_ex = 0;
	char **exl = NULL;
	json_t *root = json_object(), *quant = json_object(), *ql = json_object();
	char *first = NULL;
	int mixed = 0;
	size_t total = ex->n_mc + ex->n_ignored_mods;
	unq = calloc(total + 1, sizeof(char *));
	q = calloc(total + 1, sizeof(char *));
	if (!root || !quant || !ql || !unq || !q)
		goto nomem;
	const struct xmodcfg *one = NULL;
	for (size_t i = 0; i < ex->n_mc; i++) {
		const struct xmodcfg *c = &ex->mc[i];
		if (!c->quantized) {
			unq[n_unq++] = c->name;
			continue;
		}
		q[n_q++] = c->name;
		json_t *lc = layer_cfg(c);
		char *s = lc ? json_dumps(lc, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
		if (!lc || !s) {
			json_decref(lc);
			free(s);
			goto nomem;
		}
		if (!first) {
			first = s;
			one = c;
		} else {
			mixed |= strcmp(first, s) != 0;
			free(s);
		}
		json_object_set_new(ql, c->name, lc);
	}
	for (size_t i = 0; i < ex->n_ignored_mods; i++)
		unq[n_unq++] = ex->ignored_mods[i];
	const struct cal_plan_summary *sum = &ex->plan->sum;
	const struct cal_qfmt_info *kvf = cal_qfmt(sum->kv_fmt);
	/* modelopt names an affine NVFP4 cache apart, an affine FP8 one not */
	int aff = kvf && kvf->hf_kv && sum->kv_affine && !strcmp(kvf->hf_kv, "NVFP4");
	json_t *kv = aff ? json_string("NVFP4_AFFINE")
		   : kvf && kvf->hf_kv ? json_string(kvf->hf_kv) : json_null();
	json_t *prod = json_pack("{s:s, s:s}", "name", "calibd", "version", CAL_VERSION);
	json_object_set_new(root, "producer", prod);
	json_object_set(root, "quantization", quant);
	if (mixed) {
		json_object_set_new(quant, "quant_algo", json_string("MIXED_PRECISION"));
		json_object_set_new(quant, "kv_cache_quant_algo", kv);
		json_object_set(quant, "quantized_layers", ql);
	} else if (one) {
		json_t *lc = layer_cfg(one);
		if (!lc) {
			json_decref(kv);
			goto nomem;
		}
		json_object_set(quant, "quant_algo", json_object_get(lc, "quant_algo"));
		json_object_set_new(quant, "kv_cache_quant_algo", kv);
		const char *k;
		json_t *v;
		json_object_foreach(lc, k, v)
			if (strcmp(k, "quant_algo"))
				json_object_set(quant, k, v);
		json_decref(lc);
		st = cal_exclude_summarize(unq, n_unq, q, n_q, &exl, &n_ex, err);
		if (st < 0)
			goto fail;
		json_t *arr = json_array();
		if (!arr)
			goto nomem;
		for (size_t i = 0; i < n_ex; i++)
			json_array_append_new(arr, json_string(exl[i]));
		json_object_set_new(quant, "exclude_modules", arr);
		st = add_mtp_exclusions(ex, arr, err);
		if (st < 0)
			goto fail;
	} else {
		json_object_set_new(quant, "quant_algo", json_null());
		json_object_set_new(quant, "kv_cache_quant_algo", kv);
		json_object_set(quant, "quantized_layers", ql);
	}
	*ret = root;
	root = NULL;
	goto fail;
nomem:
	st = cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
fail:
	cal_exclude_free(exl, n_ex);
	free(first);
	free(unq);
	free(q);
	json_decref(ql);
	json_decref(quant);
	json_decref(root);
	return st;
}

/* config.json's config group of one quant_algo (kernels/qfmt.def hf_config). */
static json_t *group_for(const char *algo, json_t *gs)
{
	int g = json_is_integer(gs) ? (int)json_integer_value(gs) : 0, act;
	const struct cal_qfmt_info *f = cal_qfmt_by_algo(algo, g, &act);
	if (algo && (!strcmp(algo, "NVFP4_AWQ") || !strcmp(algo, "W4A8_AWQ"))) {
		/* modelopt's group for these names (docs/awq.md "Export"): 8-bit
		 * float inputs, 4-bit float weights, both with the group size */
		g = g ? g : 128;
		return json_pack("{s:{s:b,s:i,s:s,s:i},s:{s:b,s:i,s:s,s:i}}", "input_activations",
				 "dynamic", 0, "num_bits", 8, "type", "float", "group_size", g,
				 "weights", "dynamic", 0, "num_bits", 4, "type", "float",
				 "group_size", g);
	}
	if (!f || !f->hf_config)
		return json_pack("{s:s}", "quant_algo", algo);
	json_t *o = json_object();
	for (int k = act ? 0 : 1; k < 2; k++) {
		json_t *e = json_pack("{s:b,s:i,s:s}", "dynamic", 0, "num_bits", f->elem_bits,
				      "type", f->elem_e < 0 ? "int" : "float");
		if (f->block)
			json_object_set_new(e, "group_size", json_integer(g ? g : (int)f->block));
		if (f->per_channel && k)
			json_object_set_new(e, "strategy", json_string("channel"));
		json_object_set_new(o, k ? "weights" : "input_activations", e);
	}
	return o;
}

json_t *cal_export_hf_to_config(json_t *hfq)
{
	json_t *q = json_object_get(hfq, "quantization");
	json_t *out = json_object();
	if (!out)
		return NULL;
	json_t *qa = json_object_get(q, "quant_algo");
	const char *algo = json_string_value(qa);
	int act;
	const struct cal_qfmt_info *f = cal_qfmt_by_algo(algo,
		(int)json_integer_value(json_object_get(q, "group_size")), &act);
	if (f && f->hf_config == 2 && strcmp(algo, "NVFP4_AWQ")) { /* modelopt: none for it */
		json_t *g = group_for(algo, json_object_get(q, "group_size"));
		json_object_set_new(g, "targets", json_pack("[s]", "Linear"));
		json_object_set_new(out, "config_groups", json_pack("{s:o}", "group_0", g));
	} else if (algo && !strcmp(algo, "MIXED_PRECISION")) {
		json_t *ql = json_object_get(q, "quantized_layers");
		json_t *groups = json_object(), *keys = json_array(), *targets = json_array();
		const char *k;
		json_t *v;
		json_object_foreach(ql, k, v) {
			char *key = json_dumps(v, JSON_SORT_KEYS | JSON_COMPACT);
			size_t gi = 0;
			for (; gi < json_array_size(keys); gi++)
				if (key && !strcmp(json_string_value(json_array_get(keys, gi)), key))
					break;
			if (gi == json_array_size(keys)) {
				json_array_append_new(keys, json_string(key ? key : ""));
				json_array_append_new(targets, json_array());
			}
			json_array_append_new(json_array_get(targets, gi), json_string(k));
			free(key);
		}
		for (size_t gi = 0; gi < json_array_size(keys); gi++) {
			json_t *first = NULL;
			json_object_foreach(ql, k, v) {
				char *key = json_dumps(v, JSON_SORT_KEYS | JSON_COMPACT);
				int same = key && !strcmp(key, json_string_value(json_array_get(keys, gi)));
				free(key);
				if (same) {
					first = v;
					break;
				}
			}
			json_t *g = group_for(json_string_value(json_object_get(first, "quant_algo")),
					      json_object_get(first, "group_size"));
			json_t *t = json_array_get(targets, gi);
			/* sorted(layer_names) */
			size_t nt = json_array_size(t);
			const char **names = calloc(nt + 1, sizeof(char *));
			for (size_t a = 0; names && a < nt; a++)
				names[a] = json_string_value(json_array_get(t, a));
			for (size_t a = 1; names && a < nt; a++)
				for (size_t b = a; b > 0 && strcmp(names[b - 1], names[b]) > 0; b--) {
					const char *tmp = names[b];
					names[b] = names[b - 1];
					names[b - 1] = tmp;
				}
			json_t *st = json_array();
			for (size_t a = 0; names && a < nt; a++)
				json_array_append_new(st, json_string(names[a]));
			free(names);
			json_object_set_new(g, "targets", st);
			char gname[32];
			snprintf(gname, sizeof(gname), "group_%zu", gi);
			json_object_set_new(groups, gname, g);
		}
		json_decref(keys);
		json_decref(targets);
		json_object_set_new(out, "config_groups", groups);
		json_object_set(out, "quantized_layers", ql);
	}
	json_t *exm = json_object_get(q, "exclude_modules");
	json_object_set_new(out, "ignore", exm ? json_deep_copy(exm) : json_array());
	if (algo)
		json_object_set(out, "quant_algo", qa);
	const char *kv = json_string_value(json_object_get(q, "kv_cache_quant_algo"));
	if (kv && *kv) {
		if (!strcmp(kv, "FP8"))
			json_object_set_new(out, "kv_cache_scheme",
					    json_pack("{s:b,s:i,s:s}", "dynamic", 0, "num_bits", 8,
						      "type", "float"));
		else
			json_object_set_new(out, "kv_cache_scheme", json_string(kv));
	}
	json_object_set(out, "producer", json_object_get(hfq, "producer"));
	json_object_set_new(out, "quant_method", json_string("modelopt"));
	return out;
}

static enum cal_status add_json(struct cal_exporter *ex, const char *name, json_t *j,
				char **ret_text, struct cal_error *err)
{
	char *s = json_dumps(j, JSON_INDENT(4) | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII |
				   JSON_REAL_PRECISION(17));
	if (!s)
		return cal_error_set(err, CAL_ERR_NOMEM, "export: cannot serialise %s", name);
	enum cal_status st = cal_st_writer_add_file(ex->w, name, s, strlen(s), err);
	if (st >= 0 && ret_text)
		*ret_text = s;
	else
		free(s);
	return st;
}

static json_t *report(struct cal_exporter *ex, const struct cal_stats *stats, json_t *hfq)
{
	const struct cal_recipe *r = ex->plan->recipe;
	json_t *rep = json_object();
	if (!rep)
		return NULL;
	json_object_set_new(rep, "producer", json_pack("{s:s, s:s}", "name", "calibd", "version",
							CAL_VERSION));
	json_object_set_new(rep, "source", json_string(ex->model_dir));
	char fp[17];
	if (cal_checkpoint_fingerprint(ex->model_dir, ex->ck, fp, NULL) >= 0) /* for calibd eval */
		json_object_set_new(rep, "source_fingerprint", json_string(fp));
	json_object_set_new(rep, "model_type", json_string(ex->d->model_type));
	json_t *rc = json_pack("{s:s, s:s, s:s, s:s, s:b}", "name", ex->recipe_name,
			       "file", r->source ? r->source : "",
			       "description", r->description ? r->description : "",
			       "algorithm", r->algo.name ? r->algo.name : "max",
			       "layerwise", r->algo.layerwise);
	json_object_set_new(rep, "recipe", rc);
	json_t *q = json_object_get(hfq, "quantization");
	json_object_set_new(rep, "resolved", json_pack("{s:O, s:O, s:s, s:b, s:i}",
		"quant_algo", json_object_get(q, "quant_algo"),
		"kv_cache_quant_algo", json_object_get(q, "kv_cache_quant_algo"),
		"scale_division", ex->opts.div == CAL_DIV_EXACT ? "exact" : "reciprocal",
		"per_expert_input_amax", ex->opts.per_expert_input_amax,
		"quantized_weights", (int)json_array_size(ex->weights)));
	const uint32_t *rb = ex->plan->sum.rot_block;
	if (rb[0] || rb[1] || rb[2]) /* the KV rotation, for calibd eval (docs/eval.md) */
		json_object_set_new(json_object_get(rep, "resolved"), "kv_rotation",
				    json_pack("{s:i, s:i, s:i}", "q", (int)rb[0], "k", (int)rb[1],
					      "v", (int)rb[2]));
	const struct cal_stats_calib *c = stats ? cal_stats_calib(stats) : NULL;
	json_t *cj = json_pack("{s:I, s:I, s:I}",
		"samples", (json_int_t)(c ? c->samples : 0), "seq_len",
		(json_int_t)(c ? c->seq_len : 0), "tokens", (json_int_t)(c ? c->tokens : 0));
	if (cj && c && c->sequence_hashes) /* calibd eval's overlap check (docs/eval.md) */
		json_object_set_new(cj, "sequence_hashes", json_string(c->sequence_hashes));
	json_object_set_new(rep, "calibration", cj);
	json_t *sq = json_object();
	json_object_set_new(sq, "min_db", ex->sqnr_n ? json_real(ex->sqnr_min) : json_null());
	json_object_set_new(sq, "mean_db", ex->sqnr_n ? json_real(ex->sqnr_sum / (double)ex->sqnr_n) :
			    json_null());
	json_object_set(sq, "weights", ex->weights);
	json_object_set_new(rep, "weight_sqnr", sq);
	json_t *experts = json_array();
	for (int32_t L = 0; stats && L < (int32_t)ex->d->num_layers; L++) {
		if (ex->d->layers[L].ffn != CAL_FFN_MOE)
			continue;
		int64_t n = 0;
		const uint64_t *t = cal_stats_expert_tokens(stats, L, &n);
		json_t *o = json_pack("{s:i}", "layer", (int)L);
		json_t *ta = json_array(), *none = json_array();
		for (int64_t e = 0; t && e < n; e++) {
			json_array_append_new(ta, json_integer((json_int_t)t[e]));
			if (!t[e])
				json_array_append_new(none, json_integer(e));
		}
		json_object_set_new(o, "tokens", t ? ta : json_null());
		if (!t)
			json_decref(ta);
		json_object_set_new(o, "experts_without_tokens", none);
		json_array_append_new(experts, o);
	}
	json_object_set_new(rep, "experts", experts);
	json_object_set(rep, "fallbacks", ex->fallbacks);
	json_object_set(rep, "phases_s", ex->phases);
	if (ex->timeline)
		json_object_set(rep, "calibration_timeline", ex->timeline);
	if (ex->ranks)
		json_object_set(rep, "ranks", ex->ranks);
	if (ex->algorithm) /* docs/gptq.md, docs/awq.md: under "gptq" / "awq_lite" */
		json_object_set(rep, ex->plan->recipe->algo.name, ex->algorithm);
	struct rusage ru;
	long long rss = getrusage(RUSAGE_SELF, &ru) ? 0 : (long long)ru.ru_maxrss * 1024;
	json_object_set_new(rep, "peak_rss_bytes", json_integer(rss));
	/* the export pipeline's own memory (pipeline.c) */
	struct cal_backend_mem bm = {0};
	const struct cal_backend *pbe = ex->pipe.be ? ex->pipe.be : ex->be;
	if (ex->pipe.be)
		cal_backend_mem_stats(ex->pipe.be, &bm);
	json_object_set_new(rep, "pipeline", json_pack("{s:I, s:I, s:I, s:s}",
		"host_staging_bytes", (json_int_t)(2 * ex->pipe.stage_bytes),
		"host_ring_bytes", (json_int_t)(XSLOTS * ex->pipe.slot_bytes),
		"backend_peak_bytes", (json_int_t)bm.peak, "backend", pbe->name));
	json_object_set_new(rep, "output", json_pack("{s:I, s:I}", "tensor_bytes",
						      (json_int_t)ex->bytes_total, "tensors",
						      (json_int_t)(ex->n_cp)));
	return rep;
}

enum cal_status cal_export_side_files(struct cal_exporter *ex, const struct cal_stats *stats,
				      char **ret_report, struct cal_error *err)
{
	enum cal_status st;
	json_t *hfq = NULL, *cfg = NULL, *rep = NULL;
	char *text = NULL, *path = NULL;
	size_t len;
	CAL_TRY(cal_export_hf_quant_config(ex, &hfq, err));
	json_t *q = json_object_get(hfq, "quantization");
	if (!json_is_null(json_object_get(q, "quant_algo")) ||
	    !json_is_null(json_object_get(q, "kv_cache_quant_algo")))
		CAL_TRY(add_json(ex, "hf_quant_config.json", hfq, NULL, err));
	/* config.json: original keys in order, quantization_config last */
	if (!(path = cal_path_join(ex->model_dir, "config.json"))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
		goto fail;
	}
	CAL_TRY(cal_read_file(path, 64u << 20, &text, &len, err));
	json_error_t je;
	cfg = json_loadb(text, len, 0, &je);
	if (!json_is_object(cfg)) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%d: %s", path, je.line, je.text);
		goto fail;
	}
	json_object_del(cfg, "quantization_config");
	json_object_set_new(cfg, "quantization_config", cal_export_hf_to_config(hfq));
	CAL_TRY(add_json(ex, "config.json", cfg, NULL, err));
	for (size_t i = 0; cal_export_copy_files[i]; i++) {
		free(path);
		free(text);
		text = NULL;
		if (!(path = cal_path_join(ex->model_dir, cal_export_copy_files[i]))) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
			goto fail;
		}
		FILE *f = fopen(path, "rb");
		if (!f)
			continue;
		fclose(f);
		CAL_TRY(cal_read_file(path, MAX_SIDE_FILE, &text, &len, err));
		CAL_TRY(cal_st_writer_add_file(ex->w, cal_export_copy_files[i], text, len, err));
	}
	if (!(rep = report(ex, stats, hfq))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
		goto fail;
	}
	CAL_TRY(add_json(ex, "calibd_report.json", rep, ret_report, err));
	st = CAL_OK;
fail:
	free(path);
	free(text);
	json_decref(rep);
	json_decref(cfg);
	json_decref(hfq);
	return st;
}
