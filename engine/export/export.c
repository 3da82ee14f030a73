/*
 * export.c — the streaming exporter (export.h): the output tensor plan,
 * sibling unification, per-layer quantization through the op table, and
 * the whole-job helper cal_export_run().  Config files and the report are
 * in export_files.c.
 */
#include "export_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "kernels/ops.h"

#define GROW(arr, n, cap)                                                      \
	((n) < (cap) ? 0 : grow_array((void **)&(arr), &(cap), sizeof(*(arr))))

static int grow_array(void **arr, size_t *cap, size_t elem)
{
	size_t nc = *cap ? *cap * 2 : 64;
	void *na = realloc(*arr, nc * elem);
	if (!na)
		return -1;
	*arr = na;
	*cap = nc;
	return 0;
}

static enum cal_status nomem(struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
}

/* ---- names ----------------------------------------------------------------- */

static char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xprintf(const char *fmt, ...)
{
	char *s = NULL;
	va_list ap;
	va_start(ap, fmt);
	int r = vasprintf(&s, fmt, ap);
	va_end(ap);
	return r < 0 ? NULL : s;
}

/* Layer index of "<prefix>layers.<L>." in name, else -1. */
static int64_t name_layer(const char *name, const char *prefix)
{
	size_t pl = strlen(prefix);
	if (strncmp(name, prefix, pl) || strncmp(name + pl, "layers.", 7))
		return -1;
	const char *s = name + pl + 7;
	int64_t v = 0;
	if (*s < '0' || *s > '9')
		return -1;
	while (*s >= '0' && *s <= '9' && v < (1 << 30))
		v = v * 10 + (*s++ - '0');
	return *s == '.' ? v : -1;
}

/* Replaces `from` by `to` at the first occurrence after position `at`. */
static char *replace_at(const char *s, size_t at, const char *from, const char *to)
{
	const char *p = strstr(s + at, from);
	if (!p)
		return strdup(s);
	return xprintf("%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
}

/*
 * Output (hub) name of a name in plan naming (d->prefix, "mlp." MoE block):
 * the checkpoint's prefix, and the architecture's MoE block name in MoE
 * layers.
 */
static char *hub_name(const struct cal_exporter *ex, const char *plan_name)
{
	const char *dp = ex->d->prefix;
	char *a;
	if (strcmp(dp, ex->cprefix) && !strncmp(plan_name, dp, strlen(dp)))
		a = xprintf("%s%s", ex->cprefix, plan_name + strlen(dp));
	else
		a = strdup(plan_name);
	if (!a)
		return NULL;
	const char *blk = ex->d->arch->moe_block;
	int64_t L = name_layer(a, ex->cprefix);
	if (blk && strcmp(blk, "mlp") && L >= 0 && L < ex->d->num_layers &&
	    ex->d->layers[L].ffn == CAL_FFN_MOE) {
		char *from = xprintf(".layers.%lld.mlp", (long long)L);
		char *to = xprintf(".layers.%lld.%s", (long long)L, blk);
		char *b = NULL;
		if (from && to) {
			const char *p = strstr(a, from);
			size_t fl = strlen(from);
			if (p && (p[fl] == '.' || p[fl] == 0 || p[fl] == '*'))
				b = replace_at(a, 0, from, to);
			else
				b = strdup(a);
		}
		CAL_FREE_ALL(from, to, a);
		a = b;
	}
	return a;
}

/* Plan name of a checkpoint name (inverse of hub_name). */
static char *plan_name(const struct cal_exporter *ex, const char *src)
{
	const char *dp = ex->d->prefix, *cp = ex->cprefix;
	char *a;
	if (strcmp(dp, cp) && !strncmp(src, cp, strlen(cp)))
		a = xprintf("%s%s", dp, src + strlen(cp));
	else
		a = strdup(src);
	if (!a)
		return NULL;
	const char *blk = ex->d->arch->moe_block;
	int64_t L = name_layer(a, dp);
	if (blk && strcmp(blk, "mlp") && L >= 0) {
		char *from = xprintf(".layers.%lld.%s.", (long long)L, blk);
		char *to = xprintf(".layers.%lld.mlp.", (long long)L);
		char *b = from && to ? replace_at(a, 0, from, to) : NULL;
		CAL_FREE_ALL(from, to, a);
		a = b;
	}
	return a;
}

/* ---- the output plan -------------------------------------------------------- */

static const struct cal_plan_q *enabled_q(const struct cal_plan *p, long i)
{
	return i >= 0 && p->q[i].spec.enabled ? &p->q[i] : NULL;
}

/* Sibling group of a plan module (docs/export.md "Sibling groups"): linears
 * that read the same input tensor.  0: none. */
static int sibling_group(const struct cal_plan_module *m)
{
	const char *p = m->proj ? m->proj : "";
	switch (m->kind) {
	case CAL_MOD_ATTN_PROJ:
		if (!strcmp(p, "q_proj") || !strcmp(p, "k_proj") || !strcmp(p, "v_proj") ||
		    !strcmp(p, "q_a_proj") || !strcmp(p, "kv_a_proj_with_mqa"))
			return 1;
		return 0;
	case CAL_MOD_LINATTN_PROJ:
		return !strncmp(p, "in_proj", 7) ? 2 : 0;
	case CAL_MOD_MLP_PROJ:
		return !strcmp(p, "gate_proj") || !strcmp(p, "up_proj") ? 3 : 0;
	case CAL_MOD_SHARED_PROJ:
		return !strcmp(p, "gate_proj") || !strcmp(p, "up_proj") ? 4 : 0;
	case CAL_MOD_SHARED_GATE:
		return 4;
	default:
		return 0;
	}
}

/* Checks that the exporter can write quantizer q's format for a weight of
 * [out, in] in `dtype`. */
static enum cal_status check_fmt(struct cal_exporter *ex, const struct xlin *x,
				 struct cal_error *err)
{
	const struct cal_qspec *s = &x->wq->spec;
	if (x->dtype != CAL_DTYPE_BF16)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: quantizing %s weights is not "
				     "implemented (bf16 only)", x->name, cal_dtype_name(x->dtype));
	const struct cal_qfmt_info *f = cal_qfmt(s->fmt);
	int blk = (int)f->block;
	if (blk && s->block != blk)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: %s block size %d is not "
				     "implemented by the exporter (%d only; quantizer %s)",
				     x->name, f->title, s->block, blk, x->wq->name);
	if (blk && x->in % blk && !f->block2d) /* 2-D blocks: ragged, as modelopt pads */
		return cal_error_set(err, CAL_ERR_INVALID, "%s: input dimension %lld is not a "
				     "multiple of %d (quantizer %s)", x->name, (long long)x->in,
				     blk, x->wq->name);
	if (f->pack_rows && x->out % 2)
		return cal_error_set(err, CAL_ERR_INVALID, "%s: %s needs an even output "
				     "dimension, got %lld", x->name, f->title, (long long)x->out);
	if (f->mse && ex->plan->recipe->algo.method == CAL_CALIB_MSE &&
	    !ex->plan->recipe->algo.fp8_scale_sweep)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: the MSE multiplier search "
				     "(algorithm mse without fp8_scale_sweep) is not implemented",
				     x->wq->name);
	if (!f->mse && ex->plan->recipe->algo.method == CAL_CALIB_MSE)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: MSE calibration of %s weights "
				     "is not implemented (static NVFP4 only)", x->wq->name,
				     cal_qfmt_name(s->fmt));
	return CAL_OK;
}

static enum cal_status add_lin(struct cal_exporter *ex, struct xlin *x, struct cal_error *err)
{
	if (x->wq) {
		x->fmt = x->wq->spec.fmt;
		enum cal_status st = check_fmt(ex, x, err);
		if (st < 0) {
			free(x->name);
			return st;
		}
	}
	if (GROW(ex->lin, ex->n_lin, ex->cap_lin) < 0) {
		free(x->name);
		return nomem(err);
	}
	ex->lin[ex->n_lin++] = *x;
	return CAL_OK;
}

static enum cal_status add_copy(struct cal_exporter *ex, char *name,
				const struct cal_st_tensor *t, int32_t layer,
				struct cal_error *err)
{
	if (!name)
		return nomem(err);
	if (GROW(ex->cp, ex->n_cp, ex->cap_cp) < 0) {
		free(name);
		return nomem(err);
	}
	ex->cp[ex->n_cp++] = (struct xcopy){name, t, layer, 0, 0, CAL_ROLE_IGNORED, NULL};
	return CAL_OK;
}

static enum cal_status add_modcfg(struct cal_exporter *ex, const char *plan_mod, int quantized,
				  enum cal_qfmt wf, int input_on, int block,
				  struct cal_error *err)
{
	char *name = hub_name(ex, plan_mod);
	if (!name)
		return nomem(err);
	for (size_t i = 0; i < ex->n_mc; i++) {
		if (!strcmp(ex->mc[i].name, name)) { /* experts: gate_up and down */
			if (!ex->mc[i].quantized && quantized) {
				free(ex->mc[i].name);
				ex->n_mc--;
				memmove(&ex->mc[i], &ex->mc[i + 1], (ex->n_mc - i) * sizeof(*ex->mc));
				break;
			}
			free(name);
			return CAL_OK;
		}
	}
	if (GROW(ex->mc, ex->n_mc, ex->cap_mc) < 0) {
		free(name);
		return nomem(err);
	}
	struct xmodcfg *c = &ex->mc[ex->n_mc++];
	memset(c, 0, sizeof(*c));
	c->name = name;
	c->quantized = quantized;
	if (quantized) {
		const char *a = cal_export_algo(wf, input_on, block, &c->group_size, &c->awq_keys);
		if (!(c->algo = strdup(a)))
			return nomem(err);
	}
	return CAL_OK;
}

/* Source weight entries: non-expert linears, copies, ignored tensors. */
static enum cal_status plan_catalog(struct cal_exporter *ex, unsigned char *seen,
				    struct cal_error *err)
{
	const struct cal_plan *p = ex->plan;
	size_t n = cal_catalog_count(ex->cat);
	for (size_t i = 0; i < n; i++) {
		const struct cal_cat_entry *e = cal_catalog_entry(ex->cat, i);
		const char *tn = e->t->name;
		if (e->role == CAL_ROLE_IGNORED) {
			CAL_TRY_RET(add_copy(ex, strdup(tn), e->t, -1, err));
			size_t l = strlen(tn);
			/* MTP layers are excluded by prefix (cal_mtp_prefixes) */
			if (e->t->ndim == 2 &&
			    !cal_is_mtp_tensor(tn, ex->d->num_layers, ex->d->num_nextn_predict_layers) && l > 7 && !strcmp(tn + l - 7, ".weight")) {
				char **nm = realloc(ex->ignored_mods,
						    (ex->n_ignored_mods + 1) * sizeof(char *));
				if (!nm)
					return nomem(err);
				ex->ignored_mods = nm;
				if (!(nm[ex->n_ignored_mods] = strndup(tn, l - 7)))
					return nomem(err);
				ex->n_ignored_mods++;
			}
			continue;
		}
		if (cal_role_is_routed_expert(e->role) || e->part == CAL_PART_SCALE_INV)
			continue; /* FP8 sources: scales are consumed by the decode */
		char *pn = plan_name(ex, tn);
		if (!pn)
			return nomem(err);
		if (e->part == CAL_PART_WEIGHT && cal_role_is_linear(e->role) && e->t->ndim == 2) {
			size_t l = strlen(pn);
			const struct cal_plan_q *wq = NULL;
			if (l > 7 && !strcmp(pn + l - 7, ".weight")) {
				char *qn = xprintf("%.*s.weight_quantizer", (int)(l - 7), pn);
				if (!qn) {
					free(pn);
					return nomem(err);
				}
				wq = cal_plan_find(p, qn);
				free(qn);
			}
			const struct cal_st_tensor *si = NULL;
			if (e->t->dtype == CAL_DTYPE_F8_E4M3) {
				si = cal_catalog_find(ex->cat, e->role, CAL_PART_SCALE_INV, e->layer, -1);
				CAL_TRY_RET(cal_fp8_block_check(ex->d, e->t, si, err));
			}
			if (wq) {
				seen[wq->module] = 1;
				const struct cal_plan_module *m = &p->modules[wq->module];
				if (wq->spec.enabled || si) {
					struct xlin x = {0};
					x.name = hub_name(ex, m->name);
					if (!x.name) {
						free(pn);
						return nomem(err);
					}
					x.layer = m->layer;
					x.mod = (long)wq->module;
					x.expert = -1;
					x.w = e->t;
					x.out = e->t->shape[0];
					x.in = e->t->shape[1];
					x.dtype = si ? CAL_DTYPE_BF16 : e->t->dtype;
					x.si = si;
					x.wq = wq->spec.enabled ? wq : NULL;
					x.iq = x.wq ? enabled_q(p, m->iq) : NULL;
					x.group = sibling_group(m);
					free(pn);
					CAL_TRY_RET(add_lin(ex, &x, err));
					continue;
				}
			}
		}
		char *hn = hub_name(ex, pn);
		free(pn);
		CAL_TRY_RET(add_copy(ex, hn, e->t, e->layer, err));
		ex->cp[ex->n_cp - 1].role = e->role;
		/* gpt_oss: transformers runs the fp32 norm weights in the model's bf16
		 * and modelopt saves them so (docs/gpt_oss.md) */
		ex->cp[ex->n_cp - 1].to_bf16 = ex->d->norm == CAL_NORM_RMS_F32W &&
					       e->t->dtype == CAL_DTYPE_F32 &&
					       (e->role == CAL_ROLE_INPUT_NORM ||
						e->role == CAL_ROLE_POST_ATTN_NORM ||
						e->role == CAL_ROLE_FINAL_NORM);
		/* DeepSeek: transformers keeps mlp.gate.weight in fp32 (as modelopt exports it) */
		ex->cp[ex->n_cp - 1].to_f32 = ex->d->arch->router_corr_bias &&
					      e->role == CAL_ROLE_ROUTER &&
					      e->part == CAL_PART_WEIGHT && e->t->dtype != CAL_DTYPE_F32;
	}
	return CAL_OK;
}

/* gpt_oss experts (docs/gpt_oss.md): modelopt 0.47 quantizes GptOssExperts'
 * gate_up_proj [E, H, 2I] and down_proj [E, I, H] as one BMM weight each
 * (one weight and one input quantizer per projection, not per expert) and
 * writes them fused under the parameter names; the biases are copied. */
static enum cal_status plan_bmm(struct cal_exporter *ex, int32_t L, const struct cal_plan_module *m,
				struct cal_error *err)
{
	const struct cal_plan *p = ex->plan;
	const struct cal_model_desc *d = ex->d;
	int down = m->kind == CAL_MOD_EXPERTS_DOWN;
	enum cal_role role = down ? CAL_ROLE_EXPERTS_DOWN : CAL_ROLE_EXPERTS_GATE_UP;
	struct xlin x = {0};
	CAL_TRY_RET(cal_catalog_expert(ex->cat, L, 0, down ? CAL_PROJ_DOWN : CAL_PROJ_GATE, &x.sl,
				       err));
	if (!x.sl.scales && x.sl.t->dtype != CAL_DTYPE_BF16)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: %s experts are not exported "
				     "(bf16 or MXFP4 only)", x.sl.t->name, cal_dtype_name(x.sl.t->dtype));
	x.name = xprintf("%slayers.%d.%s.experts.%s", ex->cprefix, (int)L, d->arch->moe_block,
			 down ? "down_proj" : "gate_up_proj");
	const struct cal_st_tensor *b = cal_catalog_find(ex->cat, role, CAL_PART_BIAS, L, -1);
	char *bn = x.name ? xprintf("%s_bias", x.name) : NULL;
	if (!bn || !b) {
		free(x.name);
		free(bn);
		return bn ? cal_error_set(err, CAL_ERR_FORMAT, "layer %d: %s bias missing", (int)L,
					  down ? "down_proj" : "gate_up_proj") : nomem(err);
	}
	CAL_TRY_RET(add_copy(ex, bn, b, L, err));
	x.layer = L;
	x.mod = (long)(m - p->modules);
	x.expert = -1;
	x.proj = down ? CAL_PROJ_DOWN : CAL_PROJ_GATE;
	x.bmm = 1;
	x.bmm_rows = down ? d->hidden_size : 2 * d->moe_intermediate_size;
	x.out = d->num_experts * x.bmm_rows;
	x.in = down ? d->moe_intermediate_size : d->hidden_size;
	x.dtype = CAL_DTYPE_BF16; /* gathered (and decoded) as bf16 */
	x.wq = enabled_q(p, m->wq);
	for (int64_t e = 1; e < d->num_experts; e++)
		if (!enabled_q(p, m->wq + e) != !x.wq ||
		    (x.wq && p->q[m->wq + e].spec.fmt != x.wq->spec.fmt)) {
			free(x.name);
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: the recipe treats the "
					     "experts differently (modelopt has one quantizer for "
					     "all of GPT-OSS's experts)", p->q[m->wq + e].name);
		}
	x.iq = x.wq ? enabled_q(p, m->iq) : NULL;
	if (x.wq && !cal_qfmt(x.wq->spec.fmt)->bmm) {
		enum cal_qfmt f = x.wq->spec.fmt;
		free(x.name);
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "layer %d: GPT-OSS experts in %s are "
				     "not exported (NVFP4 and FP8 only)", (int)L, cal_qfmt_name(f));
	}
	return add_lin(ex, &x, err);
}

/* Routed experts: per expert under hub names (gpt_oss: plan_bmm). */
static enum cal_status plan_experts(struct cal_exporter *ex, struct cal_error *err)
{
	const struct cal_plan *p = ex->plan;
	const struct cal_model_desc *d = ex->d;
	for (int32_t L = 0; L < (int32_t)d->num_layers; L++) {
		if (d->layers[L].ffn != CAL_FFN_MOE)
			continue;
		const struct cal_plan_module *mgu = NULL, *mdn = NULL;
		for (size_t m = 0; m < p->n_modules; m++) {
			if (p->modules[m].layer != L)
				continue;
			if (p->modules[m].kind == CAL_MOD_EXPERTS_GATE_UP)
				mgu = &p->modules[m];
			else if (p->modules[m].kind == CAL_MOD_EXPERTS_DOWN)
				mdn = &p->modules[m];
		}
		if (!mgu || !mdn)
			return cal_error_set(err, CAL_ERR_INTERNAL, "layer %d: the plan has no experts",
					     (int)L);
		if (d->act == CAL_ACT_SWIGLU_OAI) { /* gpt_oss: modelopt's BMM experts */
			CAL_TRY_RET(plan_bmm(ex, L, mgu, err));
			CAL_TRY_RET(plan_bmm(ex, L, mdn, err));
			continue;
		}
		for (int64_t e = 0; e < d->num_experts; e++) {
			for (int k = 0; k < 3; k++) {
				const struct cal_plan_module *m = k == 2 ? mdn : mgu;
				struct xlin x = {0};
				CAL_TRY_RET(cal_catalog_expert(ex->cat, L, (int32_t)e, (enum cal_proj)k,
							       &x.sl, err));
				x.name = xprintf("%slayers.%d.%s.experts.%lld.%s", ex->cprefix, (int)L,
						 d->arch->moe_block, (long long)e,
						 d->arch->expert_proj[k]);
				if (!x.name)
					return nomem(err);
				x.layer = L;
				x.mod = (long)(m - p->modules);
				x.expert = e;
				x.proj = (enum cal_proj)k;
				x.out = x.sl.out;
				x.in = x.sl.in;
				x.dtype = x.sl.t->dtype;
				if (x.dtype == CAL_DTYPE_F8_E4M3 && x.sl.expert_index < 0) {
					static const enum cal_role roles[] = {
						CAL_ROLE_EXPERT_GATE, CAL_ROLE_EXPERT_UP, CAL_ROLE_EXPERT_DOWN};
					x.si = cal_catalog_find(ex->cat, roles[k], CAL_PART_SCALE_INV, L,
								(int32_t)e);
					CAL_TRY_RET(cal_fp8_block_check(ex->d, x.sl.t, x.si, err));
					x.dtype = CAL_DTYPE_BF16;
				}
				x.wq = enabled_q(p, m->wq + e);
				x.iq = x.wq ? enabled_q(p, m->iq) : NULL;
				CAL_TRY_RET(add_lin(ex, &x, err));
			}
		}
	}
	return CAL_OK;
}

/* KV-cache scales and the per-module config list (plan order). */
static enum cal_status plan_modules(struct cal_exporter *ex, const unsigned char *seen,
				    struct cal_error *err)
{
	const struct cal_plan *p = ex->plan;
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct cal_plan_module *m = &p->modules[i];
		if (m->kind == CAL_MOD_ATTN) {
			const struct cal_plan_q *k = enabled_q(p, m->kb), *v = enabled_q(p, m->vb);
			if ((k && !k->spec.use_constant_amax) || (v && !v->spec.use_constant_amax)) {
				if (GROW(ex->kv, ex->n_kv, ex->cap_kv) < 0)
					return nomem(err);
				char *an = hub_name(ex, m->name);
				if (!an)
					return nomem(err);
				ex->kv[ex->n_kv++] = (struct xkv){an, m->layer,
					k && !k->spec.use_constant_amax ? k : NULL,
					v && !v->spec.use_constant_amax ? v : NULL, 0.0f, 0.0f,
					{NULL, NULL}};
			}
			continue;
		}
		if (m->kind == CAL_MOD_ROUTER) {
			CAL_TRY_RET(add_modcfg(ex, m->name, 0, CAL_QFMT_NONE, 0, 0, err));
			continue;
		}
		if (m->wq < 0)
			continue;
		const struct cal_plan_q *wq = NULL;
		int64_t n = m->count > 1 ? m->count : 1;
		for (int64_t e = 0; e < n && !wq; e++)
			wq = enabled_q(p, m->wq + e);
		if (wq && m->kind != CAL_MOD_EXPERTS_GATE_UP && m->kind != CAL_MOD_EXPERTS_DOWN &&
		    !seen[m - p->modules])
			return cal_error_set(err, CAL_ERR_FORMAT, "%s: the recipe quantizes it (%s) but "
					     "the checkpoint has no weight %s.weight%s", m->name,
					     wq->name, m->name,
					     m->kind == CAL_MOD_LM_HEAD && ex->d->tie_word_embeddings ?
					     " (tied to the embedding)" : "");
		const struct cal_plan_q *iq = enabled_q(p, m->iq);
		CAL_TRY_RET(add_modcfg(ex, m->name, wq != NULL, wq ? wq->spec.fmt : CAL_QFMT_NONE,
				       iq != NULL, wq ? wq->spec.block : 0, err));
	}
	return CAL_OK;
}

/* ---- declarations ----------------------------------------------------------- */

static enum cal_status decl_shape(struct cal_exporter *ex, const char *name, const char *suffix,
				  enum cal_dtype dt, int ndim, const int64_t *shape,
				  struct cal_error *err)
{
	char *full = suffix ? xprintf("%s.%s", name, suffix) : strdup(name);
	if (!full)
		return nomem(err);
	enum cal_status st = cal_st_writer_declare(ex->w, full, dt, ndim, shape, err);
	free(full);
	uint64_t n = cal_dtype_size(dt);
	for (int i = 0; i < ndim; i++)
		n *= (uint64_t)shape[i];
	ex->bytes_total += n;
	return st;
}

static enum cal_status decl(struct cal_exporter *ex, const char *name, const char *suffix,
			    enum cal_dtype dt, int ndim, int64_t d0, int64_t d1, struct cal_error *err)
{
	return decl_shape(ex, name, suffix, dt, ndim, (const int64_t[2]){d0, d1}, err);
}

/* gpt_oss BMM experts: "<name>" for the weight, "<name>_<suffix>" for the rest. */
char *cal_export_bmm_name(const struct xlin *x, const char *suffix)
{
	return !strcmp(suffix, "weight") ? strdup(x->name) : xprintf("%s_%s", x->name, suffix);
}

/* Declares a BMM tensor [E, cols, rows] (cols 0: a scalar). */
static enum cal_status decl_bmm(struct cal_exporter *ex, const struct xlin *x, const char *suffix,
				enum cal_dtype dt, int64_t cols, struct cal_error *err)
{
	int64_t shape[3] = {x->out / x->bmm_rows, cols, x->bmm_rows};
	char *full = cal_export_bmm_name(x, suffix);
	if (!full)
		return nomem(err);
	enum cal_status st = cal_st_writer_declare(ex->w, full, dt, cols ? 3 : 0, shape, err);
	free(full);
	ex->bytes_total += cal_dtype_size(dt) * (cols ? (uint64_t)(x->out * cols) : 1);
	return st;
}

static enum cal_status decl_bmm_lin(struct cal_exporter *ex, struct xlin *x, struct cal_error *err)
{
	int64_t i = x->in;
	const struct cal_qfmt_info *f = cal_qfmt(x->fmt);
	x->has_input_scale = 0;
	if (!f)
		return decl_bmm(ex, x, "weight", CAL_DTYPE_BF16, i, err);
	CAL_TRY_RET(decl_bmm(ex, x, "weight", f->elem_dtype, i * f->elem_bits / 8, err));
	if (f->block)
		CAL_TRY_RET(decl_bmm(ex, x, "weight_scale", f->scale_dtype, i / f->block, err));
	if (f->per_channel) { /* modelopt's axis 0 of [E, in, out]: one scale per expert */
		int64_t shape[1] = {x->out / x->bmm_rows};
		char *full = cal_export_bmm_name(x, "weight_scale");
		if (!full)
			return nomem(err);
		enum cal_status st = cal_st_writer_declare(ex->w, full, f->scale_dtype, 1, shape,
							   err);
		free(full);
		ex->bytes_total += (uint64_t)shape[0] * f->scale_bytes;
		CAL_TRY_RET(st);
	}
	if (f->tensor_scale)
		CAL_TRY_RET(decl_bmm(ex, x, f->tensor_scale, CAL_DTYPE_F32, 0, err));
	x->has_input_scale = x->iq != NULL && f->input_scale_of != NULL;
	if (x->has_input_scale)
		CAL_TRY_RET(decl_bmm(ex, x, "input_scale", CAL_DTYPE_F32, 0, err));
	return CAL_OK;
}

/* The weight_scale of 2-D blocks (kernels/qfmt.h block2d). */
static enum cal_status decl_2d_scale(struct cal_exporter *ex, const struct xlin *x,
				     const struct cal_qfmt_info *f, struct cal_error *err)
{
	int64_t b = f->block, shape[4] = {(x->out + b - 1) / b, 1, (x->in + b - 1) / b, 1};
	int one = shape[0] * shape[2] == 1;
	char *full = xprintf("%s.weight_scale", x->name);
	if (!full)
		return nomem(err);
	enum cal_status st = cal_st_writer_declare(ex->w, full, f->scale_dtype, one ? 0 : 4,
						   shape, err);
	free(full);
	ex->bytes_total += (uint64_t)(shape[0] * shape[2]) * f->scale_bytes;
	return st;
}

static enum cal_status decl_lin(struct cal_exporter *ex, struct xlin *x, struct cal_error *err)
{
	int64_t o = x->out, i = x->in;
	const char *nm = x->name;
	const struct cal_qfmt_info *f = cal_qfmt(x->fmt);
	if (x->bmm)
		return decl_bmm_lin(ex, x, err);
	x->has_input_scale = 0;
	if (!f) {
		CAL_TRY_RET(decl(ex, nm, "weight", x->dtype, 2, o, i, err));
	} else {
		int64_t per = 8 / f->elem_bits; /* values per byte */
		CAL_TRY_RET(decl(ex, nm, "weight", f->elem_dtype, 2, f->pack_rows ? o / per : o,
				 f->pack_rows ? i : i / per, err));
		if (f->block2d) /* modelopt's [o/b, 1, i/b, 1]; [] for one tile */
			CAL_TRY_RET(decl_2d_scale(ex, x, f, err));
		else if (f->block)
			CAL_TRY_RET(decl(ex, nm, "weight_scale", f->scale_dtype, 2, o,
					 i / f->block, err));
		else if (f->per_channel) /* one scale per output row */
			CAL_TRY_RET(decl(ex, nm, "weight_scale", f->scale_dtype, 1, o, 0, err));
		if (f->tensor_scale)
			CAL_TRY_RET(decl(ex, nm, f->tensor_scale, CAL_DTYPE_F32, 0, 0, 0, err));
		x->has_input_scale = x->iq != NULL && f->input_scale_of != NULL;
		if (x->awq_pqs) /* AWQ: docs/awq.md */
			CAL_TRY_RET(decl(ex, nm, "pre_quant_scale", CAL_DTYPE_BF16, 1, i, 0, err));
	}
	if (x->has_input_scale)
		CAL_TRY_RET(decl(ex, nm, "input_scale", CAL_DTYPE_F32, 0, 0, 0, err));
	if (x->expert >= 0 && x->sl.bias)
		CAL_TRY_RET(decl(ex, nm, "bias", x->sl.bias->dtype, 1, o, 0, err));
	return CAL_OK;
}

static enum cal_status declare_all(struct cal_exporter *ex, struct cal_error *err)
{
	/* layer by layer, the model-level tensors (layer -1) last */
	for (int32_t pass = 0; pass <= (int32_t)ex->d->num_layers; pass++) {
		int32_t L = pass < ex->d->num_layers ? pass : -1;
		for (size_t i = 0; i < ex->n_lin; i++)
			if (ex->lin[i].layer == L)
				CAL_TRY_RET(decl_lin(ex, &ex->lin[i], err));
		for (size_t i = 0; i < ex->n_kv; i++) {
			if (ex->kv[i].layer != L)
				continue;
			if (ex->kv[i].k)
				CAL_TRY_RET(decl(ex, ex->kv[i].attn, "k_proj.k_scale", CAL_DTYPE_F32, 0,
						 0, 0, err));
			if (ex->kv[i].v)
				CAL_TRY_RET(decl(ex, ex->kv[i].attn, "v_proj.v_scale", CAL_DTYPE_F32, 0,
						 0, 0, err));
			/* affine: k_bias / v_bias BF16 [1, heads, 1, dim] (cal_model_kv_dims) */
			for (int v = 0; v < 2; v++) {
				const struct cal_plan_q *q = v ? ex->kv[i].v : ex->kv[i].k;
				int64_t bs[4] = {1, 0, 1, 0}, w = cal_model_kv_dims(ex->d, v, &bs[1], &bs[3]);
				if (q && q->spec.affine && w > 0)
					CAL_TRY_RET(decl_shape(ex, ex->kv[i].attn, v ? "v_proj.v_bias" :
							       "k_proj.k_bias", CAL_DTYPE_BF16, 4, bs, err));
			}
		}
		for (size_t i = 0; i < ex->n_cp; i++) {
			const struct xcopy *c = &ex->cp[i];
			if (c->layer != L)
				continue;
			enum cal_status st = cal_st_writer_declare(ex->w, c->name,
								   c->to_bf16 ? CAL_DTYPE_BF16 :
								   c->to_f32 ? CAL_DTYPE_F32 : c->t->dtype,
								   c->t->ndim, c->t->shape, err);
			if (st < 0)
				return cal_error_wrap(err, st, "declaring %s", c->name);
			ex->bytes_total += c->to_bf16 ? c->t->numel * 2 : c->to_f32 ? c->t->numel * 4 : c->t->nbytes;
		}
	}
	return CAL_OK;
}

/* AWQ (docs/awq.md "Export"): which searched linears keep a pre_quant_scale.
 * q/k/v (MLA: q_a_proj or q_proj, and kv_a_proj_with_mqa), a dense MLP's
 * gate/up and Qwen3.5's in_proj_qkv/z read a norm's output, into which
 * their shared scale is fused (cal_plan_awq_fuses_norm); nvfp4_awq folds
 * o_proj's and a dense down_proj's into the previous linear where modelopt
 * does (cal_plan_awq_fuses_prev); every other searched linear (o_proj,
 * down_proj, out_proj, Qwen3-Next's in_proj_qkvz, MLA's q_b_proj and
 * kv_b_proj, the shared expert's) exports it.  Routed experts are not
 * searched.  With NVFP4 weights the searched linears' quant_algo is
 * NVFP4_AWQ (modelopt's, fused or not). */
static enum cal_status awq_mark(struct cal_exporter *ex, struct cal_error *err)
{
	int sq = ex->plan->recipe->algo.method == CAL_CALIB_SMOOTHQUANT;
	if (ex->plan->recipe->algo.awq_no_search) /* awq_clip alone: no pre_quant_scale */
		return CAL_OK;
	for (size_t i = 0; i < ex->n_lin; i++) {
		struct xlin *x = &ex->lin[i];
		if (x->mod < 0 || x->expert >= 0 || x->bmm ||
		    (sq ? x->fmt != CAL_QFMT_INT8
			: x->fmt != CAL_QFMT_INT4_BLOCK && x->fmt != CAL_QFMT_NVFP4 &&
			  x->fmt != CAL_QFMT_W4A8_AWQ))
			continue;
		const struct cal_plan_module *m = &ex->plan->modules[x->mod];
		int searched = m->kind == CAL_MOD_ATTN_PROJ || m->kind == CAL_MOD_MLP_PROJ ||
			       m->kind == CAL_MOD_SHARED_PROJ || m->kind == CAL_MOD_LINATTN_PROJ;
		/* AWQ fuses the scale of a group reading a norm into it; SmoothQuant
		 * keeps every linear's (docs/smoothquant.md "Export") */
		int fused = !sq && (cal_plan_awq_fuses_norm(ex->plan, (size_t)x->mod) ||
				    cal_plan_awq_fuses_prev(ex->plan, (size_t)x->mod));
		x->awq_pqs = searched && !fused;
		for (size_t k = 0; searched && x->fmt == CAL_QFMT_NVFP4 && k < ex->n_mc; k++) {
			struct xmodcfg *c = &ex->mc[k];
			if (!c->quantized || strcmp(c->name, x->name))
				continue;
			free(c->algo);
			if (!(c->algo = strdup("NVFP4_AWQ")))
				return nomem(err);
			c->awq_keys = 1;
		}
	}
	return CAL_OK;
}

/* Bytes of the source side files (for the disk-space reserve). */
static uint64_t side_bytes(const char *dir)
{
	uint64_t t = 0;
	const char *extra[] = {"config.json", NULL};
	for (int k = 0; k < 2; k++) {
		const char *const *list = k ? extra : cal_export_copy_files;
		for (size_t i = 0; list[i]; i++) {
			char *p = cal_path_join(dir, list[i]);
			FILE *f = p ? fopen(p, "rb") : NULL;
			if (f && !fseek(f, 0, SEEK_END)) {
				long sz = ftell(f);
				t += sz > 0 ? (uint64_t)sz : 0;
			}
			if (f)
				fclose(f);
			free(p);
		}
	}
	return t;
}

enum cal_status cal_export_check_source(const struct cal_model_desc *d, struct cal_error *err)
{
	/* gpt_oss MXFP4 experts are decoded by plan_bmm / cal_export_bmm_source,
	 * FP8 block sources (DeepSeek) by gather (cal_fp8_block_decode) */
	if (d->src_quant == CAL_SRC_QUANT_NONE || d->src_quant == CAL_SRC_QUANT_FP8_BLOCK ||
	    (d->src_quant == CAL_SRC_QUANT_MXFP4 && d->act == CAL_ACT_SWIGLU_OAI))
		return CAL_OK;
	return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: exporting from a %s-quantized source "
			     "checkpoint is not implemented", d->model_type,
			     cal_src_quant_name(d->src_quant));
}

enum cal_status cal_exporter_open(const struct cal_model_desc *d,
				  const struct cal_checkpoint *ck,
				  const struct cal_catalog *cat, const struct cal_plan *plan,
				  struct cal_backend *be, const struct cal_export_opts *opts,
				  struct cal_exporter **ret, struct cal_error *err)
{
	enum cal_status st;
	unsigned char *seen = NULL;
	struct cal_exporter *ex = calloc(1, sizeof(*ex));
	*ret = NULL;
	if (!ex)
		return nomem(err);
	double t0 = cal_now();
	ex->d = d;
	ex->ck = ck;
	ex->cat = cat;
	ex->plan = plan;
	ex->be = be;
	ex->opts = *opts;
	ex->sqnr_min = INFINITY;
	if (!opts->model_dir || (!opts->out_dir && !opts->check_only)) {
		st = cal_error_set(err, CAL_ERR_INVALID, "export: model_dir and out_dir are required");
		goto fail;
	}
	ex->model_dir = strdup(opts->model_dir);
	ex->out_dir = strdup(opts->out_dir ? opts->out_dir : "");
	ex->recipe_name = strdup(opts->recipe_name ? opts->recipe_name :
				 plan->recipe->source ? plan->recipe->source : "?");
	ex->weights = json_array();
	ex->fallbacks = json_array();
	ex->phases = json_object();
	ex->layer_done = calloc((size_t)d->num_layers + 1, 1);
	seen = calloc(plan->n_modules + 1, 1);
	if (!ex->model_dir || !ex->out_dir || !ex->recipe_name || !ex->weights ||
	    !ex->fallbacks || !ex->phases || !ex->layer_done || !seen) {
		st = nomem(err);
		goto fail;
	}
	ex->opts.model_dir = ex->model_dir;
	ex->opts.out_dir = ex->out_dir;
	ex->opts.recipe_name = ex->recipe_name;
	ex->cprefix = cal_catalog_prefix(cat);
	ex->mse_sweep = plan->recipe->algo.method == CAL_CALIB_MSE &&
			plan->recipe->algo.fp8_scale_sweep;
	CAL_TRY(cal_export_check_source(d, err));
	CAL_TRY(cal_export_pipe_init(ex, err));
	CAL_TRY(cal_export_parts_init(ex, err));
	CAL_TRY(plan_catalog(ex, seen, err));
	CAL_TRY(plan_experts(ex, err));
	CAL_TRY(plan_modules(ex, seen, err));
	if (plan->recipe->algo.method == CAL_CALIB_AWQ_LITE ||
	    plan->recipe->algo.method == CAL_CALIB_SMOOTHQUANT)
		CAL_TRY(awq_mark(ex, err));
	if (opts->check_only)
		goto fail; /* st == CAL_OK: planned and checked, nothing opened */

	struct cal_st_writer_opts wo = {.max_shard_bytes = opts->max_shard_bytes, .publish = opts->publish};
	wo.reserve_bytes = side_bytes(opts->model_dir) + (1u << 20) + 512 * (uint64_t)ex->n_lin;
	if (ex->xp.rank) /* a part of an export over ranks: attaches later */
		CAL_TRY(cal_st_writer_open_part(opts->out_dir, &wo, &ex->w, err));
	else
		CAL_TRY(cal_st_writer_open(opts->out_dir, &wo, &ex->w, err));
	CAL_TRY(declare_all(ex, err));
	if (!ex->xp.rank)
		CAL_TRY(cal_st_writer_begin(ex->w, err));
	json_object_set_new(ex->phases, "export_plan", json_real(cal_now() - t0));
	*ret = ex;
	ex = NULL; /* st == CAL_OK: success shares the cleanup */
fail:
	free(seen);
	cal_exporter_free(ex);
	return st;
}

void cal_exporter_free(struct cal_exporter *ex)
{
	if (!ex)
		return;
	cal_export_pipe_free(ex); /* joins the threads before the writer goes */
	cal_st_writer_free(ex->w);
	for (size_t i = 0; i < ex->n_lin; i++)
		CAL_FREE_ALL(ex->lin[i].name, ex->lin[i].gw, ex->lin[i].pqs, ex->lin[i].bamax);
	for (size_t i = 0; i < ex->n_cp; i++)
		CAL_FREE_ALL(ex->cp[i].name, ex->cp[i].data);
	for (size_t i = 0; i < ex->n_kv; i++)
		free(ex->kv[i].attn);
	for (size_t i = 0; i < ex->n_mc; i++)
		CAL_FREE_ALL(ex->mc[i].name, ex->mc[i].algo);
	for (size_t i = 0; i < ex->n_ignored_mods; i++)
		free(ex->ignored_mods[i]);
	for (int i = 0; i < 4; i++)
		free(ex->hbuf[i]);
	for (int i = 0; i < XDBUF; i++)
		cal_backend_dealloc(ex->be, ex->dbuf[i]);
	json_decref(ex->algorithm);
	CAL_FREE_ALL(ex->ignored_mods, ex->lin, ex->cp, ex->kv, ex->mc, ex->layer_done,
		     ex->model_dir, ex->out_dir, ex->recipe_name);
	CAL_EACH(json_decref, json_t, ex->weights, ex->fallbacks, ex->phases, ex->timeline,
		 ex->ranks);
	free(ex);
}

uint64_t cal_exporter_bytes_written(const struct cal_exporter *ex)
{
	return cal_export_pipe_written(ex);
}

uint64_t cal_exporter_bytes_total(const struct cal_exporter *ex)
{
	return ex->bytes_total;
}

void cal_exporter_add_phase(struct cal_exporter *ex, const char *name, double seconds)
{
	json_t *old = json_object_get(ex->phases, name);
	double v = old ? json_number_value(old) : 0.0;
	json_object_set_new(ex->phases, name, json_real(v + seconds));
}

void cal_exporter_set_algorithm_report(struct cal_exporter *ex, json_t *report)
{
	json_decref(ex->algorithm);
	ex->algorithm = json_incref(report);
}

void cal_exporter_add_timeline(struct cal_exporter *ex, double t, int32_t layer,
			       double tokens_per_s)
{
	if (!ex->timeline)
		ex->timeline = json_array();
	json_array_append_new(ex->timeline, json_pack("{s:f, s:i, s:f}", "t", t, "layer", (int)layer,
						      "tokens_per_s", tokens_per_s));
}

void cal_exporter_set_ranks(struct cal_exporter *ex, json_t *value)
{
	json_decref(ex->ranks);
	ex->ranks = value;
}

/* ---- per-layer statistics (the quantizing is in pipeline.c) ----------------- */

/* gpt_oss BMM experts as bf16 [E * rows, in]: MXFP4 blocks decoded as HF
 * does (low nibble = even column, E2M1 * 2^(scale - 127), rounded to bf16),
 * or the bf16 [E, in, rows] parameter transposed per expert.  sl: expert
 * 0's slice of the projection. */
void cal_export_bmm_source(const struct cal_expert_slice *sl, uint64_t E, uint64_t R, uint64_t C,
			   uint16_t *dst)
{
	if (sl->scales) {
		const uint8_t *pk = sl->t->data, *sc = sl->scales->data;
		for (uint64_t b = 0; b < E * R * C / 32; b++) {
			float s = cal_e8m0_decode(sc[b]);
			for (unsigned k = 0; k < 32; k++) {
				unsigned code = (pk[b * 16 + k / 2] >> (4 * (k & 1))) & 0xfu;
				dst[b * 32 + k] = cal_f32_to_bf16(cal_fmul(cal_e2m1_decode(code), s));
			}
		}
		return;
	}
	cal_export_bmm_transpose(dst, sl->t->data, E, C, R, 2);
}

void cal_export_bmm_transpose(void *dst, const void *src, uint64_t E, uint64_t R, uint64_t cols,
			      uint64_t es)
{
	const unsigned char *s = src;
	unsigned char *d = dst;
	for (uint64_t e = 0; e < E; e++)
		for (uint64_t r = 0; r < R; r++)
			for (uint64_t j = 0; j < cols; j++)
				memcpy(d + ((e * cols + j) * R + r) * es, s + ((e * R + r) * cols + j) * es,
				       es);
}


static void add_fallback(struct cal_exporter *ex, const char *q, const char *why, float v)
{
	json_t *o = json_pack("{s:s, s:s, s:f}", "quantizer", q, "reason", why, "amax", (double)v);
	if (o)
		json_array_append_new(ex->fallbacks, o);
}

/* Input amax of x (see export.h / docs/export.md "Experts that saw no tokens"
 * for experts). */
static enum cal_status input_amax(struct cal_exporter *ex, const struct xlin *x,
				  const struct cal_stats *stats, float *ret, int *ret_const,
				  struct cal_error *err)
{
	const struct cal_plan_q *iq = x->iq;
	*ret_const = 0;
	if (iq->spec.has_constant_amax) {
		*ret = (float)iq->spec.constant_amax;
		*ret_const = 1;
		return CAL_OK;
	}
	float a = 0.0f;
	int have = cal_stats_get(stats, iq->name, &a) && a > 0.0f;
	if (x->expert < 0) {
		if (!have)
			return cal_error_set(err, CAL_ERR_INVALID, "statistics have no amax for input "
					     "quantizer %s (%s)", iq->name,
					     cal_stats_get(stats, iq->name, &a) ? "it is 0" : "missing");
		*ret = a;
		return CAL_OK;
	}
	if (ex->opts.per_expert_input_amax) {
		char *pn = xprintf("%ss.%lld", iq->name, (long long)x->expert);
		if (!pn)
			return nomem(err);
		float pe = 0.0f;
		int ok = cal_stats_get(stats, pn, &pe) && pe > 0.0f;
		if (!ok) {
			/* max over the layer's experts that have one
			 * (docs/export.md "Experts that saw no tokens") */
			float mx = 0.0f;
			for (int64_t e = 0; e < ex->d->num_experts; e++) {
				char *qn = xprintf("%ss.%lld", iq->name, (long long)e);
				float v;
				if (qn && cal_stats_get(stats, qn, &v) && v > mx)
					mx = v;
				free(qn);
			}
			pe = mx > 0.0f ? mx : have ? a : 0.5f;
			if (x->proj != CAL_PROJ_UP) /* gate and up share one quantizer */
				add_fallback(ex, pn, mx > 0.0f ? "no amax: max over the layer's experts" :
					     have ? "no amax: the shared input amax" :
					     "no amax in the layer: constant 0.5", pe);
		}
		free(pn);
		*ret = pe;
		return CAL_OK;
	}
	if (!have) {
		a = 0.5f;
		if (x->expert == 0 && x->proj != CAL_PROJ_UP)
			add_fallback(ex, iq->name, "no amax (the layer's experts saw no token): "
				     "constant 0.5", a);
	}
	*ret = a;
	return CAL_OK;
}

static int in_group(const struct xlin *x, int32_t L, int g)
{
	return x->layer == L && x->expert < 0 && x->group == g && x->fmt != CAL_QFMT_NONE;
}

/* Sibling unification (docs/export.md "Sibling groups") of the non-expert
 * groups of layer L. */
void cal_export_unify_groups(struct cal_exporter *ex, int32_t L)
{
	for (int g = 1; g <= 4; g++) {
		int count = 0, nvfp4 = 1;
		float wm = 0.0f, im = 0.0f;
		for (size_t i = 0; i < ex->n_lin; i++) {
			const struct xlin *x = &ex->lin[i];
			if (!in_group(x, L, g))
				continue;
			count++;
			if (!cal_qfmt(x->fmt)->shared_amax)
				nvfp4 = 0;
			wm = x->wamax > wm ? x->wamax : wm;
			if (x->has_input_scale)
				im = x->iamax > im ? x->iamax : im;
		}
		if (count < 2 || !nvfp4)
			continue;
		for (size_t i = 0; i < ex->n_lin; i++) {
			struct xlin *x = &ex->lin[i];
			if (!in_group(x, L, g))
				continue;
			x->wamax = wm;
			if (x->has_input_scale && !x->iq->spec.has_constant_amax)
				x->iamax = im;
		}
	}
}

/* The statistics of layer L (-1: model-level) turned into scales: input
 * amax / input_scale of every linear, KV-cache scales.  Runs on the
 * caller's thread (the statistics table belongs to it). */
static enum cal_status prep_layer(struct cal_exporter *ex, int32_t L,
				  const struct cal_stats *stats, struct cal_error *err)
{
	int cst;
	for (size_t i = 0; i < ex->n_lin; i++) {
		struct xlin *x = &ex->lin[i];
		if (x->layer != L || !x->has_input_scale)
			continue;
		CAL_TRY_RET(input_amax(ex, x, stats, &x->iamax, &cst, err));
	}
	/* sibling groups share one input amax (docs/export.md "Sibling
	 * groups"): unify before the scales; the quantize stage unifies the
	 * weight amax the same way */
	cal_export_unify_groups(ex, L);
	for (size_t i = 0; i < ex->n_lin; i++) {
		struct xlin *x = &ex->lin[i];
		if (x->layer != L || !x->has_input_scale)
			continue;
		enum cal_div_mode m = x->iq->spec.has_constant_amax ? CAL_DIV_EXACT : ex->opts.div;
		CAL_TRY_RET(cal_qfmt(x->fmt)->input_scale_of(x->iamax, m, &x->iscale, err));
		CAL_TRY_RET(cal_export_check_scale(x->name, "input_scale", x->iscale, err));
	}
	for (size_t i = 0; i < ex->n_kv; i++) {
		struct xkv *k = &ex->kv[i];
		if (k->layer != L)
			continue;
		for (int v = 0; v < 2; v++) {
			const struct cal_plan_q *q = v ? k->v : k->k;
			float a;
			if (!q)
				continue;
			if (!cal_stats_get(stats, q->name, &a) || !(a > 0.0f))
				return cal_error_set(err, CAL_ERR_INVALID, "statistics have no positive "
						     "amax for KV quantizer %s", q->name);
			float sc = cal_qfmt(q->spec.fmt)->kv_scale_of(a, ex->opts.div);
			CAL_TRY_RET(cal_export_check_scale(k->attn, v ? "v_proj.v_scale" :
							   "k_proj.k_scale", sc, err));
			if (v)
				k->vscale = sc;
			else
				k->kscale = sc;
			k->bias[v] = NULL;
			if (q->spec.affine)
				CAL_TRY_RET(cal_stats_need_bias(stats, q->name, (uint64_t)
						cal_model_kv_dims(ex->d, v, NULL, NULL), &k->bias[v], err));
		}
	}
	return CAL_OK;
}

enum cal_status cal_exporter_layer(struct cal_exporter *ex, int32_t L,
				   const struct cal_stats *stats, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	if (ex->dead || ex->published)
		return cal_error_set(err, CAL_ERR_INVALID, "export: the exporter is %s",
				     ex->dead ? "dead after an earlier error" : "finished");
	if (L < 0 || L >= ex->d->num_layers || ex->layer_done[L])
		return cal_error_set(err, CAL_ERR_INVALID, "export: layer %d %s", (int)L,
				     L < 0 || L >= ex->d->num_layers ? "out of range" :
				     "already exported");
	/* an earlier layer's failure in the quantize or write stage */
	CAL_TRY(cal_export_pipe_check(ex, err));
	st = prep_layer(ex, L, stats, err);
	if (st < 0) {
		ex->dead = 1;
		return cal_error_wrap(err, st, "export of layer %d", (int)L);
	}
	CAL_TRY(cal_export_pipe_push(ex, L, err));
	ex->layer_done[L] = 1;
	return CAL_OK;
fail:
	ex->dead = 1;
	return st;
}

enum cal_status cal_exporter_finish(struct cal_exporter *ex, const struct cal_stats *stats,
				    char **ret_report, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	if (ex->dead || ex->published || ex->xp.rank)
		return cal_error_set(err, CAL_ERR_INVALID, "export: the exporter is %s",
				     ex->dead ? "dead after an earlier error" :
				     ex->xp.rank ? "a part (cal_exporter_part_done)" : "finished");
	for (int64_t L = 0; L < ex->d->num_layers; L++) {
		if (!ex->layer_done[L]) {
			st = cal_error_set(err, CAL_ERR_INVALID, "export: layer %lld was never "
					   "exported", (long long)L);
			goto fail;
		}
	}
	/* every layer written: the threads end */
	CAL_TRY(cal_export_pipe_drain(ex, err));
	double t0 = cal_now();
	if (!ex->pipe.static_queued) /* no layer was ever queued */
		CAL_TRY(cal_export_stage_layer(ex, CAL_XSTATIC, err));
	st = prep_layer(ex, -1, stats, err);
	if (st >= 0)
		st = cal_export_stage_layer(ex, -1, err);
	if (st >= 0) /* the other ranks' experts (expert parallelism) */
		st = cal_export_parts_merge(ex, err);
	if (st >= 0)
		st = cal_export_pipe_report(ex, err);
	if (st < 0)
		goto fail;
	const struct xpipe *p = &ex->pipe;
	cal_exporter_add_phase(ex, "export_layers", p->t_quant);
	cal_exporter_add_phase(ex, "export_write", p->t_write);
	cal_exporter_add_phase(ex, "export_wait", p->t_wait);
	cal_exporter_add_phase(ex, "export_drain", p->t_drain);
	cal_exporter_add_phase(ex, "export_finish", cal_now() - t0);
	CAL_TRY(cal_export_side_files(ex, stats, ret_report, err));
	CAL_TRY(cal_st_writer_commit(ex->w, err));
	ex->published = 1;
	return CAL_OK;
fail:
	ex->dead = 1;
	return st;
}

/* ---- whole job from a statistics table --------------------------------------- */

enum cal_status cal_export_run(const char *recipe, const struct cal_stats *stats,
			       struct cal_backend *be, const struct cal_export_opts *opts,
			       char **ret_report, struct cal_error *err)
{
	enum cal_status st;
	struct cal_model_desc *d = NULL;
	struct cal_checkpoint *ck = NULL;
	struct cal_catalog *cat = NULL;
	struct cal_recipe *r = NULL;
	struct cal_plan *p = NULL;
	struct cal_exporter *ex = NULL;
	struct cal_export_opts o = *opts;
	if (!o.recipe_name)
		o.recipe_name = recipe;
	CAL_TRY(cal_model_desc_load(opts->model_dir, &d, err));
	CAL_TRY(cal_checkpoint_open(opts->model_dir, &ck, err));
	CAL_TRY(cal_catalog_build(d, ck, &cat, err));
	CAL_TRY(cal_recipe_load(recipe, NULL, &r, err));
	CAL_TRY(cal_plan_build(d, r, &p, err));
	CAL_TRY(cal_exporter_open(d, ck, cat, p, be, &o, &ex, err));
	for (int32_t L = 0; L < (int32_t)d->num_layers; L++)
		CAL_TRY(cal_exporter_layer(ex, L, stats, err));
	CAL_TRY(cal_exporter_finish(ex, stats, ret_report, err));
fail:
	cal_exporter_free(ex);
	cal_plan_free(p);
	cal_recipe_free(r);
	cal_catalog_free(cat);
	cal_checkpoint_free(ck);
	cal_model_desc_free(d);
	return st;
}
