/*
 * plan_out.c — the plan as text (`calibd plan`) and as JSON (`--json`).
 *
 * The text groups consecutive decoder layers whose modules have the same
 * formats into one line ("layers 0-47  experts 128x(gate,up,down) NVFP4
 * W4A4 | attention BF16 | router BF16 | KV FP8"); the JSON lists every
 * quantizer with its resolved attributes.  Also the plan's lookups
 * (cal_plan_find, the weight / input / KV spec of a module).
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "plan.h"
#include "ytree.h"

struct sbuf {
	char *s;
	size_t len, cap;
	int bad;
};

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char *t = NULL;
	va_list ap;
	va_start(ap, fmt);
	int r = vasprintf(&t, fmt, ap);
	va_end(ap);
	if (r < 0) {
		b->bad = 1;
		return;
	}
	if (cal_ybuf_puts(&b->s, &b->len, &b->cap, t) < 0)
		b->bad = 1;
	free(t);
}

static const char *src_name(const struct cal_model_desc *d)
{
	if (d->dtype && (!strcmp(d->dtype, "float32") || !strcmp(d->dtype, "fp32")))
		return "F32";
	if (d->dtype && (!strcmp(d->dtype, "float16") || !strcmp(d->dtype, "fp16")))
		return "F16";
	return "BF16";
}

static const char *fmt_label(enum cal_qfmt f)
{
	return cal_qfmt(f) ? cal_qfmt(f)->label : "-";
}

static int fmt_bits(enum cal_qfmt f)
{
	return cal_qfmt(f) ? cal_qfmt(f)->elem_bits : 16;
}

/* "NVFP4 W4A4", "INT4 W4A16 (block 128)", "BF16", into a static-size buffer
 * (the text is bounded: no user strings). */
static void pair_label(const struct cal_plan *p, const struct cal_qspec *w,
		       const struct cal_qspec *in, char *out, size_t n)
{
	enum cal_qfmt wf = w && w->enabled ? w->fmt : CAL_QFMT_NONE;
	enum cal_qfmt inf = in && in->enabled ? in->fmt : CAL_QFMT_NONE;
	if (wf == CAL_QFMT_NONE && inf == CAL_QFMT_NONE) {
		snprintf(out, n, "%s", src_name(p->model));
		return;
	}
	char blk[32] = "";
	if (wf != CAL_QFMT_NONE && cal_qfmt(wf)->blocks[1]) /* a choice of blocks */
		snprintf(blk, sizeof(blk), " (block %d)", w->block);
	if (wf != CAL_QFMT_NONE && inf != CAL_QFMT_NONE && inf != cal_qfmt(wf)->act)
		snprintf(out, n, "%s/%s W%dA%d", fmt_label(wf), fmt_label(inf), fmt_bits(wf),
			 fmt_bits(inf));
	else
		snprintf(out, n, "%s W%dA%d%s", fmt_label(wf != CAL_QFMT_NONE ? wf : inf),
			 fmt_bits(wf), fmt_bits(inf), blk);
}

static void module_label(const struct cal_plan *p, const struct cal_plan_module *m, int64_t e,
			 char *out, size_t n)
{
	const struct cal_qspec *w = cal_plan_weight_spec(p, (size_t)(m - p->modules), e);
	const struct cal_qspec *in = cal_plan_input_spec(p, (size_t)(m - p->modules));
	pair_label(p, w, in, out, n);
}

static const char *short_proj(const char *proj)
{
	static const struct {
		const char *a, *b;
	} t[] = {{"q_proj", "q"}, {"k_proj", "k"}, {"v_proj", "v"}, {"o_proj", "o"},
		 {"gate_proj", "gate"}, {"up_proj", "up"}, {"down_proj", "down"}};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (!strcmp(proj, t[i].a))
			return t[i].b;
	return proj;
}

/* Segment of modules [lo, hi) of one layer with kinds in `kinds`. */
static void segment(struct sbuf *b, const struct cal_plan *p, size_t lo, size_t hi,
		    const enum cal_mod_kind *kinds, size_t nk, const char *title, int *first)
{
	char labels[16][64];
	const char *names[16][16];
	size_t cnt[16] = {0}, nl = 0;
	for (size_t i = lo; i < hi; i++) {
		const struct cal_plan_module *m = &p->modules[i];
		int want = 0;
		for (size_t k = 0; k < nk; k++)
			want |= m->kind == kinds[k];
		if (!want)
			continue;
		char l[64];
		module_label(p, m, 0, l, sizeof(l));
		size_t j = 0;
		while (j < nl && strcmp(labels[j], l))
			j++;
		if (j == nl) {
			if (nl == 16)
				continue;
			snprintf(labels[nl++], sizeof(labels[0]), "%s", l);
		}
		if (cnt[j] < 16)
			names[j][cnt[j]++] = short_proj(m->proj);
	}
	if (!nl)
		return;
	sb_printf(b, "%s%s", *first ? "" : " | ", title);
	*first = 0;
	if (nl == 1) {
		sb_printf(b, " %s", labels[0]);
		return;
	}
	for (size_t j = 0; j < nl; j++) {
		sb_printf(b, "%s ", j ? "," : "");
		for (size_t k = 0; k < cnt[j]; k++)
			sb_printf(b, "%s%s", k ? "," : "", names[j][k]);
		sb_printf(b, " %s", labels[j]);
	}
}

/* Routed experts: "128x(gate,up,down) NVFP4 W4A4" or per-projection counts. */
static void experts_segment(struct sbuf *b, const struct cal_plan *p, size_t lo, size_t hi,
			    int *first)
{
	char lab[2][8][64];
	int64_t cnt[2][8] = {{0}};
	size_t nl[2] = {0, 0};
	int64_t E = 0;
	int found = 0;
	for (size_t i = lo; i < hi; i++) {
		const struct cal_plan_module *m = &p->modules[i];
		int k = m->kind == CAL_MOD_EXPERTS_DOWN ? 1 : m->kind == CAL_MOD_EXPERTS_GATE_UP ? 0 : -1;
		if (k < 0)
			continue;
		found = 1;
		E = m->count;
		for (int64_t e = 0; e < m->count; e++) {
			char l[64];
			module_label(p, m, e, l, sizeof(l));
			size_t j = 0;
			while (j < nl[k] && strcmp(lab[k][j], l))
				j++;
			if (j == nl[k]) {
				if (nl[k] == 8)
					continue;
				snprintf(lab[k][nl[k]++], sizeof(lab[0][0]), "%s", l);
			}
			cnt[k][j]++;
		}
	}
	if (!found)
		return;
	sb_printf(b, "%sexperts ", *first ? "" : " | ");
	*first = 0;
	if (nl[0] == 1 && nl[1] == 1 && !strcmp(lab[0][0], lab[1][0])) {
		sb_printf(b, "%lldx(gate,up,down) %s", (long long)E, lab[0][0]);
		return;
	}
	for (int k = 0; k < 2; k++)
		for (size_t j = 0; j < nl[k]; j++)
			sb_printf(b, "%s%lldx(%s) %s", k || j ? ", " : "", (long long)cnt[k][j],
				  k ? "down" : "gate,up", lab[k][j]);
}

static void kv_segment(struct sbuf *b, const struct cal_plan *p, size_t lo, size_t hi,
		       int *first)
{
	for (size_t i = lo; i < hi; i++) {
		const struct cal_plan_module *m = &p->modules[i];
		if (m->kind != CAL_MOD_ATTN)
			continue;
		const struct cal_qspec *k = &p->q[m->kb].spec, *v = &p->q[m->vb].spec;
		const char *kf = k->enabled ? fmt_label(k->fmt) : src_name(p->model);
		const char *vf = v->enabled ? fmt_label(v->fmt) : src_name(p->model);
		sb_printf(b, "%sKV ", *first ? "" : " | ");
		*first = 0;
		if (!strcmp(kf, vf))
			sb_printf(b, "%s", kf);
		else
			sb_printf(b, "K %s, V %s", kf, vf);
		if ((k->enabled && k->use_constant_amax) || (v->enabled && v->use_constant_amax))
			sb_printf(b, " (cast)");
		if ((k->enabled && k->affine) || (v->enabled && v->affine))
			sb_printf(b, " (affine)");
		if (p->sum.rot_block[1])
			sb_printf(b, " (rotated K)");
		return;
	}
}

static char *layer_line(const struct cal_plan *p, size_t lo, size_t hi)
{
	struct sbuf b = {0};
	int first = 1;
	static const enum cal_mod_kind shared[] = {CAL_MOD_SHARED_PROJ, CAL_MOD_SHARED_GATE};
	static const enum cal_mod_kind mlp[] = {CAL_MOD_MLP_PROJ};
	static const enum cal_mod_kind attn[] = {CAL_MOD_ATTN_PROJ};
	static const enum cal_mod_kind lin[] = {CAL_MOD_LINATTN_PROJ, CAL_MOD_LINATTN_CONV};
	static const enum cal_mod_kind router[] = {CAL_MOD_ROUTER};
	experts_segment(&b, p, lo, hi, &first);
	segment(&b, p, lo, hi, shared, 2, "shared expert", &first);
	segment(&b, p, lo, hi, mlp, 1, "mlp", &first);
	segment(&b, p, lo, hi, attn, 1, "attention", &first);
	segment(&b, p, lo, hi, lin, 2, "linear-attention", &first);
	segment(&b, p, lo, hi, router, 1, "router", &first);
	kv_segment(&b, p, lo, hi, &first);
	if (b.bad) {
		free(b.s);
		return NULL;
	}
	return b.s ? b.s : strdup("");
}

char *cal_plan_text(const struct cal_plan *p, const char *recipe_name)
{
	const struct cal_model_desc *d = p->model;
	const struct cal_recipe *r = p->recipe;
	struct sbuf b = {0};
	sb_printf(&b, "model     %s (%s), %lld layers", d->model_type,
		  d->architecture ? d->architecture : d->arch->hf_class, (long long)d->num_layers);
	if (d->num_experts)
		sb_printf(&b, ", %lld experts (top-%lld)", (long long)d->num_experts,
			  (long long)d->top_k);
	sb_printf(&b, "\nrecipe    %s", recipe_name ? recipe_name : r->source);
	if (r->description && *r->description)
		sb_printf(&b, " - %s", r->description);
	sb_printf(&b, "\nalgorithm %s%s\n", r->algo.name,
		  r->algo.layerwise ? " (layerwise)" : "");
	/* model-level modules */
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct cal_plan_module *m = &p->modules[i];
		if (m->layer >= 0)
			continue;
		char l[64];
		module_label(p, m, 0, l, sizeof(l));
		sb_printf(&b, "%-16s %s%s\n", m->proj, l,
			  m->kind == CAL_MOD_LM_HEAD && d->tie_word_embeddings ? " (tied)" : "");
	}
	/* layer ranges */
	size_t i = 0;
	char *prev = NULL;
	int64_t start = 0;
	for (int64_t L = 0; L <= d->num_layers; L++) {
		char *line = NULL;
		if (L < d->num_layers) {
			while (i < p->n_modules && p->modules[i].layer < L)
				i++;
			size_t lo = i;
			while (i < p->n_modules && p->modules[i].layer == L)
				i++;
			line = layer_line(p, lo, i);
			if (!line) {
				b.bad = 1;
				break;
			}
		}
		if (prev && (!line || strcmp(prev, line))) {
			char range[48];
			if (start == L - 1)
				snprintf(range, sizeof(range), "layer %lld", (long long)start);
			else
				snprintf(range, sizeof(range), "layers %lld-%lld", (long long)start,
					 (long long)(L - 1));
			sb_printf(&b, "%-16s %s\n", range, prev);
			free(prev);
			prev = NULL;
		}
		if (line && !prev) {
			prev = line;
			start = L;
		} else {
			free(line);
		}
	}
	free(prev);
	char bb[32], ba[32];
	cal_fmt_scaled(bb, sizeof(bb), (double)p->sum.bytes_before, 1000, 2, "B");
	cal_fmt_scaled(ba, sizeof(ba), (double)p->sum.bytes_after, 1000, 2, "B");
	double pq = p->sum.params ? 100.0 * (double)p->sum.quantized_params / (double)p->sum.params : 0;
	if (p->sum.params >= 1000000000u)
		sb_printf(&b, "parameters %.2f B, %.1f%% quantized\n", (double)p->sum.params / 1e9, pq);
	else if (p->sum.params >= 1000000u)
		sb_printf(&b, "parameters %.2f M, %.1f%% quantized\n", (double)p->sum.params / 1e6, pq);
	else
		sb_printf(&b, "parameters %llu, %.1f%% quantized\n",
			  (unsigned long long)p->sum.params, pq);
	sb_printf(&b, "bytes     %s -> %s, %.2f bits/parameter\n", bb, ba, p->sum.bits_per_param);
	sb_printf(&b, "quantizers %zu enabled of %zu\n", p->sum.n_enabled, p->n_q);
	if (b.bad) {
		free(b.s);
		return NULL;
	}
	return b.s;
}

/* ---- JSON --------------------------------------------------------------- */

static json_t *bits_json(int bits, int e, int m)
{
	if (e < 0)
		return json_integer(bits);
	char s[32];
	snprintf(s, sizeof(s), "e%dm%d", e, m);
	return json_string(s);
}

static json_t *attr_json(const struct cal_qattr *a)
{
	json_t *o = json_object();
	if (!o)
		return NULL;
	json_object_set_new(o, "num_bits", bits_json(a->num_bits, a->fp_e, a->fp_m));
	if (a->n_axis == 0) {
		json_object_set_new(o, "axis", json_null());
	} else if (a->n_axis == 1) {
		json_object_set_new(o, "axis", json_integer(a->axis[0]));
	} else {
		json_t *ax = json_array();
		for (int i = 0; i < a->n_axis; i++)
			json_array_append_new(ax, json_integer(a->axis[i]));
		json_object_set_new(o, "axis", ax);
	}
	if (a->has_block) {
		json_t *bs = json_object();
		for (int i = 0; i < a->n_block; i++) {
			char k[32];
			snprintf(k, sizeof(k), "%lld", (long long)a->block_axis[i]);
			json_object_set_new(bs, k, a->block_size[i] ? json_integer(a->block_size[i])
								    : json_null());
		}
		json_object_set_new(bs, "type", json_string(a->block_dynamic ? "dynamic" : "static"));
		if (a->has_scale_bits)
			json_object_set_new(bs, "scale_bits",
					    bits_json(a->scale_num_bits, a->scale_fp_e, a->scale_fp_m));
		if (a->four_over_six)
			json_object_set_new(bs, "four_over_six", json_true());
		json_object_set_new(o, "block_sizes", bs);
	} else {
		json_object_set_new(o, "block_sizes", json_null());
	}
	json_object_set_new(o, "type", json_string(a->dynamic ? "dynamic" : "static"));
	json_object_set_new(o, "fake_quant", json_boolean(a->fake_quant));
	json_object_set_new(o, "unsigned", json_boolean(a->is_unsigned));
	json_object_set_new(o, "narrow_range", json_boolean(a->narrow_range));
	json_object_set_new(o, "calibrator", json_string(a->calibrator ? a->calibrator : "max"));
	json_object_set_new(o, "bias", json_boolean(a->has_bias));
	json_object_set_new(o, "rotate", json_boolean(a->rotate));
	json_object_set_new(o, "pass_through_bwd", json_boolean(a->pass_through_bwd));
	json_object_set_new(o, "trt_high_precision_dtype",
			    json_string(a->trt_high_precision_dtype ? a->trt_high_precision_dtype
								    : "Float"));
	json_object_set_new(o, "backend", a->backend ? json_string(a->backend) : json_null());
	json_object_set_new(o, "use_constant_amax", json_boolean(a->use_constant_amax));
	json_object_set_new(o, "constant_amax",
			    a->has_constant_amax ? json_real(a->constant_amax) : json_null());
	json_object_set_new(o, "effective_bits",
			    a->has_effective_bits ? json_real(a->effective_bits) : json_null());
	return o;
}

char *cal_plan_json(const struct cal_plan *p, const char *recipe_name)
{
	const struct cal_model_desc *d = p->model;
	const struct cal_recipe *r = p->recipe;
	json_t *root = json_object(), *qs = json_array(), *ents = json_array();
	char *out = NULL;
	if (!root || !qs || !ents)
		goto done;
	json_object_set_new(root, "model",
			    json_pack("{s:s, s:s?, s:I, s:I, s:I}", "model_type", d->model_type,
				      "architecture", d->architecture, "layers",
				      (json_int_t)d->num_layers, "experts",
				      (json_int_t)d->num_experts, "hidden_size",
				      (json_int_t)d->hidden_size));
	json_object_set_new(root, "recipe",
			    json_pack("{s:s, s:s, s:s}", "name", recipe_name ? recipe_name : r->source,
				      "source", r->source, "description",
				      r->description ? r->description : ""));
	const struct cal_algorithm *a = &r->algo;
	json_t *algo = json_pack("{s:s, s:b, s:b, s:b, s:b}", "method", a->name, "layerwise",
				 a->layerwise, "sync_expert_weight_amax", a->sync_expert_weight_amax,
				 "skip_forward_without_activation_calib",
				 a->skip_forward_without_activation_calib, "distributed_sync",
				 a->distributed_sync);
	if (algo) {
		json_object_set_new(algo, "moe_calib_experts_ratio",
				    a->has_moe_calib_experts_ratio ? json_real(a->moe_calib_experts_ratio)
								   : json_null());
		if (a->method == CAL_CALIB_MSE) {
			json_object_set_new(algo, "fp8_scale_sweep", json_boolean(a->fp8_scale_sweep));
			json_object_set_new(algo, "step_size", json_real(a->step_size));
			json_object_set_new(algo, "start_multiplier", json_real(a->start_multiplier));
			json_object_set_new(algo, "stop_multiplier", json_real(a->stop_multiplier));
		}
		if (a->method == CAL_CALIB_HEADROOM) {
			json_object_set_new(algo, "anchor_percentile",
					    json_real(a->hr_anchor_percentile));
			json_object_set_new(algo, "upper_percentile", json_real(a->hr_upper_percentile));
			json_object_set_new(algo, "rho", json_real(a->hr_rho));
		}
		if (a->method == CAL_CALIB_GPTQ) {
			json_object_set_new(algo, "perc_damp", json_real(a->perc_damp));
			json_object_set_new(algo, "block_size", json_integer(a->gptq_block_size));
		}
		if (a->method == CAL_CALIB_AWQ_LITE && !a->awq_no_search)
			json_object_set_new(algo, "alpha_step", json_real(a->alpha_step));
		if (a->method == CAL_CALIB_AWQ_LITE && a->awq_clip) {
			json_object_set_new(algo, "max_tokens_per_batch",
					    json_integer(a->clip_max_tokens));
			json_object_set_new(algo, "min_clip_ratio", json_real(a->clip_min_ratio));
			json_object_set_new(algo, "shrink_step", json_real(a->clip_shrink_step));
		}
		if (a->method == CAL_CALIB_SMOOTHQUANT)
			json_object_set_new(algo, "alpha", json_real(a->sq_alpha));
	}
	json_object_set_new(root, "algorithm", algo);
	for (size_t i = 0; i < r->n_entries; i++)
		json_array_append_new(ents, json_string(r->entries[i].text));
	json_object_set_new(root, "entries", ents);
	ents = NULL;
	char kv[32];
	snprintf(kv, sizeof(kv), "%s%s%s%s", cal_qfmt_name(p->sum.kv_fmt),
		 p->sum.kv_cast ? "_cast" : "", p->sum.kv_affine ? "_affine" : "",
		 p->sum.rot_block[1] ? "_rotate" : "");
	json_object_set_new(root, "summary",
			    json_pack("{s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:s}", "params",
				      (json_int_t)p->sum.params, "quantized_params",
				      (json_int_t)p->sum.quantized_params, "bytes_before",
				      (json_int_t)p->sum.bytes_before, "bytes_after",
				      (json_int_t)p->sum.bytes_after, "bits_per_param",
				      p->sum.bits_per_param, "quantizers", (json_int_t)p->n_q,
				      "enabled", (json_int_t)p->sum.n_enabled, "kv_cache", kv));
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		const struct cal_plan_module *m = &p->modules[q->module];
		json_t *o = json_pack("{s:s, s:b, s:s, s:s, s:s, s:s, s:I}", "name", q->name,
				      "enabled", q->spec.enabled, "module", m->name, "kind",
				      cal_qrole_name(q->role), "module_kind", cal_mod_kind_name(m->kind),
				      "parent_class", m->parent_class, "layer", (json_int_t)m->layer);
		if (!o)
			goto done;
		if (q->expert >= 0)
			json_object_set_new(o, "expert", json_integer(q->expert));
		json_object_set_new(o, "format", json_string(cal_qfmt_name(q->spec.enabled
									   ? q->spec.fmt
									   : CAL_QFMT_NONE)));
		if (q->spec.enabled) {
			json_object_set_new(o, "block", json_integer(q->spec.block));
			json_object_set_new(o, "calibrate", json_boolean(q->spec.calibrate));
		}
		json_object_set_new(o, "entry", q->entry >= 0 ? json_integer(q->entry) : json_null());
		if (q->n_attr == 1) {
			json_object_set_new(o, "cfg", attr_json(q->attr));
		} else {
			json_t *l = json_array();
			for (size_t j = 0; j < q->n_attr; j++)
				json_array_append_new(l, attr_json(&q->attr[j]));
			json_object_set_new(o, "cfg", l);
		}
		json_array_append_new(qs, o);
	}
	json_object_set_new(root, "quantizers", qs);
	qs = NULL;
	out = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
done:
	json_decref(qs);
	json_decref(ents);
	json_decref(root);
	return out;
}

/* ---- lookups -------------------------------------------------------------- */

const struct cal_plan_q *cal_plan_find(const struct cal_plan *p, const char *name)
{
	size_t lo = 0, hi = p->n_q;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(p->q[p->by_name[mid]].name, name);
		if (!c)
			return &p->q[p->by_name[mid]];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

const struct cal_qspec *cal_plan_weight_spec(const struct cal_plan *p, size_t m, int64_t e)
{
	if (m >= p->n_modules || p->modules[m].wq < 0)
		return NULL;
	const struct cal_plan_module *mod = &p->modules[m];
	if (mod->count > 1) {
		if (e < 0 || e >= mod->count)
			return NULL;
		return &p->q[mod->wq + e].spec;
	}
	return &p->q[mod->wq].spec;
}

const struct cal_qspec *cal_plan_input_spec(const struct cal_plan *p, size_t m)
{
	if (m >= p->n_modules || p->modules[m].iq < 0)
		return NULL;
	return &p->q[p->modules[m].iq].spec;
}

int cal_plan_awq_fuses_prev(const struct cal_plan *p, size_t m)
{
	static const char *const types[] = {"llama", "qwen3", "qwen3_moe"};
	const struct cal_model_desc *d = p->model;
	const struct cal_plan_module *pm = m < p->n_modules ? &p->modules[m] : NULL;
	const struct cal_qspec *w = pm ? cal_plan_weight_spec(p, m, 0) : NULL;
	int listed = 0;
	if (!w || !w->enabled || w->fmt != CAL_QFMT_NVFP4 ||
	    p->recipe->algo.method != CAL_CALIB_AWQ_LITE || !pm->proj)
		return 0;
	for (size_t i = 0; i < sizeof(types) / sizeof(*types); i++)
		listed |= d->model_type && !strcmp(d->model_type, types[i]);
	if (!listed)
		return 0;
	if (pm->kind == CAL_MOD_ATTN_PROJ)
		return !strcmp(pm->proj, "o_proj") && d->num_heads == d->num_kv_heads;
	return pm->kind == CAL_MOD_MLP_PROJ && !strcmp(pm->proj, "down_proj");
}

/* Which norm-fed group module pm belongs to: 1 attention q/k/v (MLA:
 * q_a_proj or q_proj, and kv_a_proj_with_mqa), 2 dense MLP gate/up, 3
 * Gated DeltaNet in_proj; 0 none (MLA's q_b_proj and kv_b_proj each read
 * their own norm alone: docs/awq.md "MLA"). */
static int norm_group(const struct cal_plan_module *pm)
{
	const char *pr = pm->proj ? pm->proj : "";
	if (pm->kind == CAL_MOD_ATTN_PROJ)
		return strcmp(pr, "o_proj") && strcmp(pr, "q_b_proj") && strcmp(pr, "kv_b_proj");
	if (pm->kind == CAL_MOD_MLP_PROJ)
		return strcmp(pr, "down_proj") ? 2 : 0;
	if (pm->kind == CAL_MOD_LINATTN_PROJ)
		return strcmp(pr, "out_proj") ? 3 : 0;
	return 0;
}

int cal_plan_awq_fuses_norm(const struct cal_plan *p, size_t m)
{
	int grp = m < p->n_modules ? norm_group(&p->modules[m]) : 0;
	size_t n = 0;
	for (size_t i = 0; grp && i < p->n_modules; i++) {
		const struct cal_plan_module *pi = &p->modules[i];
		const struct cal_qspec *w = cal_plan_weight_spec(p, i, 0);
		n += pi->layer == p->modules[m].layer && norm_group(pi) == grp && w && w->enabled;
	}
	return n >= 2;
}

size_t cal_plan_next_experts(const struct cal_plan *p, int32_t L, size_t mi)
{
	for (; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer == L && m->wq >= 0 &&
		    (m->kind == CAL_MOD_EXPERTS_GATE_UP || m->kind == CAL_MOD_EXPERTS_DOWN))
			break;
	}
	return mi;
}

const struct cal_qspec *cal_plan_kv_spec(const struct cal_plan *p, int32_t layer, int v)
{
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct cal_plan_module *m = &p->modules[i];
		if (m->kind == CAL_MOD_ATTN && m->layer == layer) {
			long k = v ? m->vb : m->kb;
			return k >= 0 ? &p->q[k].spec : NULL;
		}
	}
	return NULL;
}
