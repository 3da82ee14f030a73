/*
 * catalog.c — matches a checkpoint's tensors against the tensors the model
 * description expects.
 *
 * Method: detect the prefix and each MoE layer's expert layout by probing a
 * few names (docs/architectures.md "Expert layouts on disk"); generate the
 * full list of expected tensors (name, role, shape) from the description and
 * those layouts; sort it by name and merge it with the checkpoint's
 * name-sorted tensor list.  Everything that does not line up is collected and
 * reported at once.
 */
#include "catalog.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/numfmt.h"

#define REPORT_MAX 5

struct expect {
	char *name;
	enum cal_role role;
	enum cal_part part;
	int32_t layer, expert;
	int ndim;
	int64_t shape[4];
	int optional;
};

struct layer_info {
	enum cal_expert_layout layout;
	const char *block;               /* "mlp" or "block_sparse_moe" */
	const struct cal_st_tensor **ex; /* per-expert: E*3 (gate, up, down) */
	struct fused_tensors {
		const struct cal_st_tensor *w, *bias, *scales;
	} fused[2]; /* the experts' fused gate_up [0] and down [1] */
};

struct cal_catalog {
	const struct cal_model_desc *d;
	const struct cal_checkpoint *ck;
	const char *prefix;
	struct cal_cat_entry *entries;
	size_t n_entries;
	size_t *by_key;              /* entry indices sorted by (layer, role, part, expert) */
	size_t n_keyed;
	struct layer_info *layers;
	enum cal_expert_layout model_layout;
};

/* ---- expected-list builder --------------------------------------------- */

struct exp_list {
	struct expect *v;
	size_t n, cap;
	int oom;
};

static struct expect *exp_add(struct exp_list *l, enum cal_role role, enum cal_part part,
			      int32_t layer, int32_t expert, int ndim, const int64_t *shape,
			      const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static struct expect *exp_add(struct exp_list *l, enum cal_role role, enum cal_part part,
			      int32_t layer, int32_t expert, int ndim, const int64_t *shape,
			      const char *fmt, ...)
{
	if (l->oom)
		return NULL;
	struct expect *nv = cal_grow(l->v, &l->cap, l->n + 1, sizeof(*nv), 256);
	if (!nv) {
		l->oom = 1;
		return NULL;
	}
	l->v = nv;
	struct expect *e = &l->v[l->n];
	memset(e, 0, sizeof(*e));
	if (CAL_VASPRINTF(&e->name, fmt) < 0) {
		l->oom = 1;
		return NULL;
	}
	e->role = role;
	e->part = part;
	e->layer = layer;
	e->expert = expert;
	e->ndim = ndim;
	for (int i = 0; i < ndim; i++)
		e->shape[i] = shape[i];
	l->n++;
	return e;
}

#define SH(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
/* an expected tensor named "<lp><suffix>" */
#define ADD(role, part, L, E, suffix, ...)                                      \
	exp_add(l, role, part, L, E, NDIM(__VA_ARGS__), SH(__VA_ARGS__), "%s%s", lp, suffix)

static int64_t ceil_div(int64_t a, int64_t b)
{
	return (a + b - 1) / b;
}

/* A linear weight [out, in] named "<lp><mod>.weight", with its bias and,
 * for FP8 sources, an optional weight_scale_inv. */
static void add_linear(struct exp_list *l, const struct cal_model_desc *d, const char *lp,
		       const char *mod, enum cal_role role, int32_t L, int32_t E, int64_t out,
		       int64_t in, int bias, int scalable)
{
	exp_add(l, role, CAL_PART_WEIGHT, L, E, 2, SH(out, in), "%s%s.weight", lp, mod);
	if (bias)
		exp_add(l, role, CAL_PART_BIAS, L, E, 1, SH(out), "%s%s.bias", lp, mod);
	if (scalable && d->src_quant == CAL_SRC_QUANT_FP8_BLOCK) {
		struct expect *e = exp_add(l, role, CAL_PART_SCALE_INV, L, E, 2,
					   SH(ceil_div(out, d->quant_block[0]),
					      ceil_div(in, d->quant_block[1])),
					   "%s%s.weight_scale_inv", lp, mod);
		if (e)
			e->optional = 1;
	}
}

static void add_layer(struct exp_list *l, const struct cal_model_desc *d,
		      const struct layer_info *li, const char *prefix, int32_t L)
{
	char lp[512];
	const int64_t H = d->hidden_size, nh = d->num_heads, nkv = d->num_kv_heads,
		      hd = d->head_dim;
	snprintf(lp, sizeof(lp), "%slayers.%d.", prefix, (int)L);

	ADD(CAL_ROLE_INPUT_NORM, CAL_PART_WEIGHT, L, -1, "input_layernorm.weight", H);
	ADD(CAL_ROLE_POST_ATTN_NORM, CAL_PART_WEIGHT, L, -1, "post_attention_layernorm.weight",
	    H);

	const struct cal_layer_desc *ld = &d->layers[L];
	if (ld->mixer == CAL_MIXER_LINEAR) {
		int64_t nk = d->linear_num_key_heads, nv = d->linear_num_value_heads;
		int64_t kd = nk * d->linear_key_head_dim, vd = nv * d->linear_value_head_dim;
		int64_t conv = 2 * kd + vd;
		if (d->gdn == CAL_GDN_FUSED) {
			add_linear(l, d, lp, "linear_attn.in_proj_qkvz", CAL_ROLE_GDN_IN_QKVZ, L,
				   -1, 2 * kd + 2 * vd, H, 0, 1);
			add_linear(l, d, lp, "linear_attn.in_proj_ba", CAL_ROLE_GDN_IN_BA, L, -1,
				   2 * nv, H, 0, 1);
		} else {
			add_linear(l, d, lp, "linear_attn.in_proj_qkv", CAL_ROLE_GDN_IN_QKV, L,
				   -1, conv, H, 0, 1);
			add_linear(l, d, lp, "linear_attn.in_proj_z", CAL_ROLE_GDN_IN_Z, L, -1,
				   vd, H, 0, 1);
			add_linear(l, d, lp, "linear_attn.in_proj_b", CAL_ROLE_GDN_IN_B, L, -1,
				   nv, H, 0, 1);
			add_linear(l, d, lp, "linear_attn.in_proj_a", CAL_ROLE_GDN_IN_A, L, -1,
				   nv, H, 0, 1);
		}
		ADD(CAL_ROLE_GDN_CONV, CAL_PART_WEIGHT, L, -1, "linear_attn.conv1d.weight", conv,
		    1, d->linear_conv_kernel_dim);
		ADD(CAL_ROLE_GDN_A_LOG, CAL_PART_PARAM, L, -1, "linear_attn.A_log", nv);
		ADD(CAL_ROLE_GDN_DT_BIAS, CAL_PART_PARAM, L, -1, "linear_attn.dt_bias", nv);
		ADD(CAL_ROLE_GDN_NORM, CAL_PART_WEIGHT, L, -1, "linear_attn.norm.weight",
		    d->linear_value_head_dim);
		add_linear(l, d, lp, "linear_attn.out_proj", CAL_ROLE_GDN_OUT, L, -1, H, vd, 0,
			   1);
	} else if (d->attn == CAL_ATTN_MLA) {
		int64_t qk = d->qk_nope_head_dim + d->qk_rope_head_dim;
		if (d->q_lora_rank > 0) {
			add_linear(l, d, lp, "self_attn.q_a_proj", CAL_ROLE_Q_A_PROJ, L, -1,
				   d->q_lora_rank, H, d->qkv_bias, 1);
			ADD(CAL_ROLE_Q_A_NORM, CAL_PART_WEIGHT, L, -1,
			    "self_attn.q_a_layernorm.weight", d->q_lora_rank);
			add_linear(l, d, lp, "self_attn.q_b_proj", CAL_ROLE_Q_B_PROJ, L, -1,
				   nh * qk, d->q_lora_rank, 0, 1);
		} else {
			add_linear(l, d, lp, "self_attn.q_proj", CAL_ROLE_Q_PROJ, L, -1, nh * qk,
				   H, 0, 1);
		}
		add_linear(l, d, lp, "self_attn.kv_a_proj_with_mqa", CAL_ROLE_KV_A_PROJ, L, -1,
			   d->kv_lora_rank + d->qk_rope_head_dim, H, d->qkv_bias, 1);
		ADD(CAL_ROLE_KV_A_NORM, CAL_PART_WEIGHT, L, -1, "self_attn.kv_a_layernorm.weight",
		    d->kv_lora_rank);
		add_linear(l, d, lp, "self_attn.kv_b_proj", CAL_ROLE_KV_B_PROJ, L, -1,
			   nh * (d->qk_nope_head_dim + d->v_head_dim), d->kv_lora_rank, 0, 1);
		add_linear(l, d, lp, "self_attn.o_proj", CAL_ROLE_O_PROJ, L, -1, H,
			   nh * d->v_head_dim, d->o_bias, 1);
	} else {
		int64_t qout = nh * hd * (d->attn == CAL_ATTN_GATED_GQA ? 2 : 1);
		add_linear(l, d, lp, "self_attn.q_proj", CAL_ROLE_Q_PROJ, L, -1, qout, H,
			   d->qkv_bias, 1);
		add_linear(l, d, lp, "self_attn.k_proj", CAL_ROLE_K_PROJ, L, -1, nkv * hd, H,
			   d->qkv_bias, 1);
		add_linear(l, d, lp, "self_attn.v_proj", CAL_ROLE_V_PROJ, L, -1, nkv * hd, H,
			   d->qkv_bias, 1);
		add_linear(l, d, lp, "self_attn.o_proj", CAL_ROLE_O_PROJ, L, -1, H, nh * hd,
			   d->o_bias, 1);
		if (d->qk_norm == CAL_QK_NORM_HEAD) {
			ADD(CAL_ROLE_Q_NORM, CAL_PART_WEIGHT, L, -1, "self_attn.q_norm.weight", hd);
			ADD(CAL_ROLE_K_NORM, CAL_PART_WEIGHT, L, -1, "self_attn.k_norm.weight", hd);
		} else if (d->qk_norm == CAL_QK_NORM_FULL) {
			ADD(CAL_ROLE_Q_NORM, CAL_PART_WEIGHT, L, -1, "self_attn.q_norm.weight",
			    nh * hd);
			ADD(CAL_ROLE_K_NORM, CAL_PART_WEIGHT, L, -1, "self_attn.k_norm.weight",
			    nkv * hd);
		}
		if (d->has_sinks)
			ADD(CAL_ROLE_SINKS, CAL_PART_PARAM, L, -1, "self_attn.sinks", nh);
	}

	if (ld->ffn == CAL_FFN_DENSE) {
		int64_t I = d->intermediate_size;
		add_linear(l, d, lp, "mlp.gate_proj", CAL_ROLE_MLP_GATE, L, -1, I, H, 0, 1);
		add_linear(l, d, lp, "mlp.up_proj", CAL_ROLE_MLP_UP, L, -1, I, H, 0, 1);
		add_linear(l, d, lp, "mlp.down_proj", CAL_ROLE_MLP_DOWN, L, -1, H, I, 0, 1);
		return;
	}

	/* MoE: router, shared expert(s), routed experts */
	const struct cal_arch_info *a = d->arch;
	const int64_t E = d->num_experts, I = d->moe_intermediate_size;
	char mod[320];
	snprintf(mod, sizeof(mod), "%s.%s", li->block, a->router_name);
	add_linear(l, d, lp, mod, CAL_ROLE_ROUTER, L, -1, E, H, a->router_bias, 0);
	if (a->router_corr_bias)
		exp_add(l, CAL_ROLE_ROUTER_CORR_BIAS, CAL_PART_PARAM, L, -1, 1, SH(E),
			"%s%s.%s.e_score_correction_bias", lp, li->block, a->router_name);
	if (d->shared != CAL_SHARED_NONE) {
		int64_t Is = d->shared_intermediate_size;
		static const enum cal_role sr[3] = {CAL_ROLE_SHARED_GATE, CAL_ROLE_SHARED_UP,
						    CAL_ROLE_SHARED_DOWN};
		static const char *const sp[3] = {"gate_proj", "up_proj", "down_proj"};
		for (int p = 0; p < 3; p++) {
			snprintf(mod, sizeof(mod), "%s.%s.%s", li->block, a->shared_name, sp[p]);
			add_linear(l, d, lp, mod, sr[p], L, -1, p == 2 ? H : Is, p == 2 ? Is : H,
				   0, 1);
		}
		if (d->shared == CAL_SHARED_GATED) {
			snprintf(mod, sizeof(mod), "%s.shared_expert_gate", li->block);
			add_linear(l, d, lp, mod, CAL_ROLE_SHARED_EXPERT_GATE, L, -1, 1, H, 0, 0);
		}
	}
	char ep[800];
	snprintf(ep, sizeof(ep), "%s%s.experts.", lp, li->block);
	switch (li->layout) {
	case CAL_LAYOUT_PER_EXPERT:
	case CAL_LAYOUT_MIXTRAL: {
		static const enum cal_role er[3] = {CAL_ROLE_EXPERT_GATE, CAL_ROLE_EXPERT_UP,
						    CAL_ROLE_EXPERT_DOWN};
		static const char *const qn[3] = {"gate_proj", "up_proj", "down_proj"};
		static const char *const mn[3] = {"w1", "w3", "w2"};
		const char *const *names = li->layout == CAL_LAYOUT_MIXTRAL ? mn : qn;
		for (int64_t e = 0; e < E; e++)
			for (int p = 0; p < 3; p++) {
				snprintf(mod, sizeof(mod), "%lld.%s", (long long)e, names[p]);
				add_linear(l, d, ep, mod, er[p], L, (int32_t)e, p == 2 ? H : I,
					   p == 2 ? I : H, 0, 1);
			}
		break;
	}
	case CAL_LAYOUT_FUSED:
		exp_add(l, CAL_ROLE_EXPERTS_GATE_UP, CAL_PART_WEIGHT, L, -1, 3, SH(E, 2 * I, H),
			"%sgate_up_proj", ep);
		exp_add(l, CAL_ROLE_EXPERTS_DOWN, CAL_PART_WEIGHT, L, -1, 3, SH(E, H, I),
			"%sdown_proj", ep);
		break;
	case CAL_LAYOUT_FUSED_T:
	case CAL_LAYOUT_FUSED_OAI:
		exp_add(l, CAL_ROLE_EXPERTS_GATE_UP, CAL_PART_WEIGHT, L, -1, 3, SH(E, H, 2 * I),
			"%sgate_up_proj", ep);
		exp_add(l, CAL_ROLE_EXPERTS_DOWN, CAL_PART_WEIGHT, L, -1, 3, SH(E, I, H),
			"%sdown_proj", ep);
		if (li->layout == CAL_LAYOUT_FUSED_OAI) {
			exp_add(l, CAL_ROLE_EXPERTS_GATE_UP, CAL_PART_BIAS, L, -1, 2, SH(E, 2 * I),
				"%sgate_up_proj_bias", ep);
			exp_add(l, CAL_ROLE_EXPERTS_DOWN, CAL_PART_BIAS, L, -1, 2, SH(E, H),
				"%sdown_proj_bias", ep);
		}
		break;
	case CAL_LAYOUT_MXFP4:
		exp_add(l, CAL_ROLE_EXPERTS_GATE_UP, CAL_PART_BLOCKS, L, -1, 4,
			SH(E, 2 * I, H / 32, 16), "%sgate_up_proj_blocks", ep);
		exp_add(l, CAL_ROLE_EXPERTS_GATE_UP, CAL_PART_SCALES, L, -1, 3,
			SH(E, 2 * I, H / 32), "%sgate_up_proj_scales", ep);
		exp_add(l, CAL_ROLE_EXPERTS_GATE_UP, CAL_PART_BIAS, L, -1, 2, SH(E, 2 * I),
			"%sgate_up_proj_bias", ep);
		exp_add(l, CAL_ROLE_EXPERTS_DOWN, CAL_PART_BLOCKS, L, -1, 4, SH(E, H, I / 32, 16),
			"%sdown_proj_blocks", ep);
		exp_add(l, CAL_ROLE_EXPERTS_DOWN, CAL_PART_SCALES, L, -1, 3, SH(E, H, I / 32),
			"%sdown_proj_scales", ep);
		exp_add(l, CAL_ROLE_EXPERTS_DOWN, CAL_PART_BIAS, L, -1, 2, SH(E, H),
			"%sdown_proj_bias", ep);
		break;
	case CAL_LAYOUT_NONE:
		break;
	}
}

/* ---- layout detection ---------------------------------------------------- */

static const struct cal_st_tensor *probe(const struct cal_checkpoint *ck, const char *fmt,
					 ...) __attribute__((format(printf, 2, 3)));

static const struct cal_st_tensor *probe(const struct cal_checkpoint *ck, const char *fmt,
					 ...)
{
	char name[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	return cal_checkpoint_find(ck, name);
}

static void detect_layout(const struct cal_model_desc *d, const struct cal_checkpoint *ck,
			  const char *prefix, int32_t L, struct layer_info *li)
{
	const struct cal_arch_info *a = d->arch;
	const char *blocks[2] = {a->moe_block, "mlp"};
	for (int b = 0; b < 2; b++) {
		const char *blk = blocks[b];
		const struct cal_st_tensor *gu =
			probe(ck, "%slayers.%d.%s.experts.gate_up_proj", prefix, (int)L, blk);
		li->block = blk;
		if (gu) {
			if (a->id == CAL_ARCH_GPT_OSS ||
			    probe(ck, "%slayers.%d.%s.experts.gate_up_proj_bias", prefix, (int)L,
				  blk))
				li->layout = CAL_LAYOUT_FUSED_OAI;
			else if (gu->ndim == 3 && gu->shape[1] == d->hidden_size &&
				 gu->shape[2] == 2 * d->moe_intermediate_size &&
				 d->hidden_size != 2 * d->moe_intermediate_size)
				li->layout = CAL_LAYOUT_FUSED_T;
			else
				li->layout = CAL_LAYOUT_FUSED;
			return;
		}
		if (probe(ck, "%slayers.%d.%s.experts.gate_up_proj_blocks", prefix, (int)L, blk)) {
			li->layout = CAL_LAYOUT_MXFP4;
			return;
		}
		if (probe(ck, "%slayers.%d.%s.experts.0.gate_proj.weight", prefix, (int)L, blk)) {
			li->layout = CAL_LAYOUT_PER_EXPERT;
			return;
		}
		if (probe(ck, "%slayers.%d.%s.experts.0.w1.weight", prefix, (int)L, blk)) {
			li->layout = CAL_LAYOUT_MIXTRAL;
			return;
		}
	}
	/* nothing found: expect the release layout so the report names it */
	li->block = a->moe_block;
	li->layout = a->hub_layout;
	if (a->id == CAL_ARCH_GPT_OSS && d->src_quant != CAL_SRC_QUANT_MXFP4)
		li->layout = CAL_LAYOUT_FUSED_OAI;
}

/* ---- matching ---------------------------------------------------------- */

static int cmp_expect(const void *x, const void *y)
{
	return strcmp(((const struct expect *)x)->name, ((const struct expect *)y)->name);
}

/* Layer index of "<prefix>layers.<L>." names, else -1. */
static int64_t layer_of(const char *name, const char *prefix)
{
	size_t pl = strlen(prefix);
	if (strncmp(name, prefix, pl) || strncmp(name + pl, "layers.", 7))
		return -1;
	const char *s = name + pl + 7;
	if (*s < '0' || *s > '9')
		return -1;
	int64_t v = 0;
	while (*s >= '0' && *s <= '9') {
		v = v * 10 + (*s++ - '0');
		if (v > (1ll << 40))
			return -1;
	}
	return *s == '.' ? v : -1;
}

static int ignored_by_rule(const struct cal_model_desc *d, const char *prefix,
			   const char *name)
{
	if (!strncmp(name, "mtp.", 4) || !strncmp(name, "model.visual.", 13))
		return 1;
	int64_t L = layer_of(name, prefix);
	return L >= d->num_layers;
}

/* Growing "a, b, c" list of at most REPORT_MAX items plus a count. */
struct report {
	char *text;
	size_t len, count;
};

static void report_add(struct report *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void report_add(struct report *r, const char *fmt, ...)
{
	if (r->count++ >= REPORT_MAX)
		return;
	char *item = NULL;
	int n = CAL_VASPRINTF(&item, fmt);
	if (n < 0)
		return;
	char *nt = realloc(r->text, r->len + (size_t)n + 3);
	if (nt) {
		r->text = nt;
		r->len += (size_t)sprintf(r->text + r->len, "%s%s", r->len ? ", " : "", item);
	}
	free(item);
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
	size_t o = (size_t)snprintf(buf, cap, "[");
	for (int i = 0; i < ndim && o < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "",
				      (long long)shape[i]);
	if (o < cap)
		snprintf(buf + o, cap - o, "]");
}

static int cmp_key(const struct cal_cat_entry *x, int32_t layer, enum cal_role role,
		   enum cal_part part, int32_t expert)
{
	if (x->layer != layer)
		return x->layer < layer ? -1 : 1;
	if (x->role != role)
		return x->role < role ? -1 : 1;
	if (x->part != part)
		return x->part < part ? -1 : 1;
	if (x->expert != expert)
		return x->expert < expert ? -1 : 1;
	return 0;
}

static int cmp_index(const void *x, const void *y, void *ctx)
{
	const struct cal_cat_entry *ents = ctx;
	const struct cal_cat_entry *a = &ents[*(const size_t *)x];
	const struct cal_cat_entry *b = &ents[*(const size_t *)y];
	return cmp_key(a, b->layer, b->role, b->part, b->expert);
}

static void fill_layer_tensors(struct cal_catalog *c)
{
	for (size_t i = 0; i < c->n_entries; i++) {
		const struct cal_cat_entry *e = &c->entries[i];
		if (e->layer < 0 || e->role == CAL_ROLE_IGNORED)
			continue;
		struct layer_info *li = &c->layers[e->layer];
		switch (e->role) {
		case CAL_ROLE_EXPERT_GATE:
		case CAL_ROLE_EXPERT_UP:
		case CAL_ROLE_EXPERT_DOWN:
			if (e->part == CAL_PART_WEIGHT && li->ex)
				li->ex[(size_t)e->expert * 3 +
				       (size_t)(e->role - CAL_ROLE_EXPERT_GATE)] = e->t;
			break;
		case CAL_ROLE_EXPERTS_GATE_UP:
		case CAL_ROLE_EXPERTS_DOWN: {
			struct fused_tensors *f = &li->fused[e->role == CAL_ROLE_EXPERTS_DOWN];
			if (e->part == CAL_PART_WEIGHT || e->part == CAL_PART_BLOCKS)
				f->w = e->t;
			else if (e->part == CAL_PART_BIAS)
				f->bias = e->t;
			else if (e->part == CAL_PART_SCALES)
				f->scales = e->t;
			break;
		}
		default:
			break;
		}
	}
}

enum cal_status cal_catalog_build(const struct cal_model_desc *d,
				  const struct cal_checkpoint *ck,
				  struct cal_catalog **ret, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	struct exp_list exps = {0}, *l = &exps;
	struct report missing = {0}, shaped = {0}, unexpected = {0};
	*ret = NULL;
	struct cal_catalog *c = calloc(1, sizeof(*c));
	if (!c)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	c->d = d;
	c->ck = ck;
	const char *ckdir = cal_checkpoint_dir(ck);

	/* prefix: probe the VLM form first (docs/architectures.md "Qwen3-Next
	 * and Qwen3.5-MoE") */
	c->prefix = d->prefix;
	if (cal_checkpoint_find(ck, "model.language_model.embed_tokens.weight"))
		c->prefix = "model.language_model.";
	else if (cal_checkpoint_find(ck, "model.embed_tokens.weight"))
		c->prefix = "model.";

	size_t n = (size_t)d->num_layers;
	c->layers = calloc(n, sizeof(*c->layers));
	if (!c->layers)
		goto nomem;
	for (size_t L = 0; L < n; L++) {
		struct layer_info *li = &c->layers[L];
		if (d->layers[L].ffn != CAL_FFN_MOE)
			continue;
		detect_layout(d, ck, c->prefix, (int32_t)L, li);
		if (li->layout == CAL_LAYOUT_PER_EXPERT || li->layout == CAL_LAYOUT_MIXTRAL) {
			li->ex = calloc((size_t)d->num_experts * 3, sizeof(*li->ex));
			if (!li->ex)
				goto nomem;
		}
		if (li->layout == CAL_LAYOUT_MXFP4 &&
		    (d->hidden_size % 32 || d->moe_intermediate_size % 32)) {
			st = cal_error_set(err, CAL_ERR_FORMAT,
					   "%s: layer %zu: MXFP4 experts need hidden_size and "
					   "intermediate_size divisible by 32", ckdir, L);
			goto fail;
		}
		if (c->model_layout == CAL_LAYOUT_NONE) {
			c->model_layout = li->layout;
		} else if (c->model_layout != li->layout) {
			st = cal_error_set(err, CAL_ERR_FORMAT,
					   "%s: layer %zu stores experts as %s but earlier "
					   "layers as %s; mixed layouts are not supported",
					   ckdir, L, cal_expert_layout_name(li->layout),
					   cal_expert_layout_name(c->model_layout));
			goto fail;
		}
	}

	/* expected tensors */
	const char *lp = c->prefix;
	ADD(CAL_ROLE_EMBED, CAL_PART_WEIGHT, -1, -1, "embed_tokens.weight", d->vocab_size,
	    d->hidden_size);
	ADD(CAL_ROLE_FINAL_NORM, CAL_PART_WEIGHT, -1, -1, "norm.weight", d->hidden_size);
	{
		struct expect *e = exp_add(l, CAL_ROLE_LM_HEAD, CAL_PART_WEIGHT, -1, -1, 2,
					   SH(d->vocab_size, d->hidden_size), "lm_head.weight");
		if (e)
			e->optional = d->tie_word_embeddings;
	}
	for (size_t L = 0; L < n; L++)
		add_layer(l, d, &c->layers[L], c->prefix, (int32_t)L);
	if (l->oom)
		goto nomem;
	qsort(l->v, l->n, sizeof(*l->v), cmp_expect);
	for (size_t i = 1; i < l->n; i++)
		if (!strcmp(l->v[i - 1].name, l->v[i].name)) {
			st = cal_error_set(err, CAL_ERR_INTERNAL, "catalog: '%s' expected twice",
					   l->v[i].name);
			goto fail;
		}

	/* merge */
	size_t nt = cal_checkpoint_count(ck);
	c->entries = calloc(nt ? nt : 1, sizeof(*c->entries));
	if (!c->entries)
		goto nomem;
	size_t i = 0, j = 0;
	while (i < nt || j < l->n) {
		const struct cal_st_tensor *t = i < nt ? cal_checkpoint_tensor(ck, i) : NULL;
		const struct expect *x = j < l->n ? &l->v[j] : NULL;
		int c0 = !t ? 1 : !x ? -1 : strcmp(t->name, x->name);
		if (c0 < 0) {
			if (ignored_by_rule(d, c->prefix, t->name)) {
				c->entries[c->n_entries++] = (struct cal_cat_entry){
					.t = t, .role = CAL_ROLE_IGNORED, .part = CAL_PART_PARAM,
					.layer = -1, .expert = -1};
			} else {
				report_add(&unexpected, "%s", t->name);
			}
			i++;
		} else if (c0 > 0) {
			if (!x->optional)
				report_add(&missing, "%s", x->name);
			j++;
		} else {
			int ok = t->ndim == x->ndim;
			for (int k = 0; ok && k < x->ndim; k++)
				ok = t->shape[k] == x->shape[k];
			if (!ok) {
				char want[128], got[128];
				shape_str(want, sizeof(want), x->ndim, x->shape);
				shape_str(got, sizeof(got), t->ndim, t->shape);
				report_add(&shaped, "%s is %s, expected %s", t->name, got, want);
			} else {
				c->entries[c->n_entries++] = (struct cal_cat_entry){
					.t = t, .role = x->role, .part = x->part,
					.layer = x->layer, .expert = x->expert};
			}
			i++;
			j++;
		}
	}
	if (missing.count || shaped.count || unexpected.count) {
		char more[3][48] = {"", "", ""};
		struct report *rs[3] = {&missing, &shaped, &unexpected};
		for (int k = 0; k < 3; k++)
			if (rs[k]->count > REPORT_MAX)
				snprintf(more[k], sizeof(more[k]), " (+%zu more)",
					 rs[k]->count - REPORT_MAX);
		st = cal_error_set(err, CAL_ERR_FORMAT,
				   "%s: checkpoint does not match its %s config.json:"
				   "%s%zu missing%s%s%s;%s%zu mis-shaped%s%s%s;%s%zu unexpected%s%s%s",
				   ckdir, d->model_type,
				   " ", missing.count, missing.count ? ": " : "",
				   missing.text ? missing.text : "", more[0],
				   " ", shaped.count, shaped.count ? ": " : "",
				   shaped.text ? shaped.text : "", more[1],
				   " ", unexpected.count, unexpected.count ? ": " : "",
				   unexpected.text ? unexpected.text : "", more[2]);
		goto fail;
	}

	/* lookup index */
	c->by_key = malloc((c->n_entries ? c->n_entries : 1) * sizeof(size_t));
	if (!c->by_key)
		goto nomem;
	for (size_t k = 0; k < c->n_entries; k++)
		if (c->entries[k].role != CAL_ROLE_IGNORED)
			c->by_key[c->n_keyed++] = k;
	qsort_r(c->by_key, c->n_keyed, sizeof(size_t), cmp_index, c->entries);
	fill_layer_tensors(c);
	*ret = c;
	goto out;
nomem:
	st = cal_error_set(err, CAL_ERR_NOMEM, "catalog: out of memory");
fail:
	cal_catalog_free(c);
out:
	for (size_t k = 0; k < l->n; k++)
		free(l->v[k].name);
	free(l->v);
	free(missing.text);
	free(shaped.text);
	free(unexpected.text);
	return st;
}

void cal_catalog_free(struct cal_catalog *c)
{
	if (!c)
		return;
	if (c->layers)
		for (int64_t L = 0; L < c->d->num_layers; L++)
			free(c->layers[L].ex);
	free(c->layers);
	free(c->entries);
	free(c->by_key);
	free(c);
}

size_t cal_catalog_count(const struct cal_catalog *c)
{
	return c->n_entries;
}

const struct cal_cat_entry *cal_catalog_entry(const struct cal_catalog *c, size_t i)
{
	return i < c->n_entries ? &c->entries[i] : NULL;
}

const char *cal_catalog_prefix(const struct cal_catalog *c)
{
	return c->prefix;
}

const struct cal_st_tensor *cal_catalog_find(const struct cal_catalog *c, enum cal_role role,
					     enum cal_part part, int32_t layer, int32_t expert)
{
	size_t lo = 0, hi = c->n_keyed;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int r = cmp_key(&c->entries[c->by_key[mid]], layer, role, part, expert);
		if (r == 0)
			return c->entries[c->by_key[mid]].t;
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

enum cal_expert_layout cal_catalog_layout(const struct cal_catalog *c, int32_t layer)
{
	if (layer < 0 || layer >= c->d->num_layers)
		return CAL_LAYOUT_NONE;
	return c->layers[layer].layout;
}

enum cal_expert_layout cal_catalog_model_layout(const struct cal_catalog *c)
{
	return c->model_layout;
}

enum cal_status cal_catalog_expert(const struct cal_catalog *c, int32_t layer,
				   int32_t expert, enum cal_proj proj,
				   struct cal_expert_slice *ret, struct cal_error *err)
{
	const struct cal_model_desc *d = c->d;
	memset(ret, 0, sizeof(*ret));
	if (layer < 0 || layer >= d->num_layers || c->layers[layer].layout == CAL_LAYOUT_NONE)
		return cal_error_set(err, CAL_ERR_INVALID, "layer %d is not a MoE layer",
				     (int)layer);
	if (expert < 0 || expert >= d->num_experts || (unsigned)proj > CAL_PROJ_DOWN)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "layer %d: expert %d / projection %d out of range",
				     (int)layer, (int)expert, (int)proj);
	const struct layer_info *li = &c->layers[layer];
	const int64_t H = d->hidden_size, I = d->moe_intermediate_size;
	int down = proj == CAL_PROJ_DOWN;
	const struct fused_tensors *f = &li->fused[down];
	ret->out = down ? H : I;
	ret->in = down ? I : H;
	ret->out_stride = 1;
	switch (li->layout) {
	case CAL_LAYOUT_PER_EXPERT:
	case CAL_LAYOUT_MIXTRAL:
		ret->t = li->ex[(size_t)expert * 3 + (size_t)proj];
		ret->expert_index = -1;
		ret->ostride = ret->in;
		ret->istride = 1;
		break;
	case CAL_LAYOUT_FUSED:
		ret->t = f->w;
		ret->expert_index = expert;
		ret->per_expert = (uint64_t)(down ? H * I : 2 * I * H);
		ret->out_start = proj == CAL_PROJ_UP ? I : 0;
		ret->ostride = ret->in;
		ret->istride = 1;
		break;
	case CAL_LAYOUT_FUSED_T:
	case CAL_LAYOUT_FUSED_OAI: {
		int oai = li->layout == CAL_LAYOUT_FUSED_OAI;
		ret->t = f->w;
		ret->bias = oai ? f->bias : NULL;
		ret->expert_index = expert;
		ret->per_expert = (uint64_t)(down ? H * I : 2 * I * H);
		ret->transposed = 1;
		if (down) {
			ret->ostride = 1;
			ret->istride = H;
		} else if (oai) {
			ret->out_start = proj == CAL_PROJ_UP ? 1 : 0;
			ret->out_stride = 2;
			ret->ostride = 1;
			ret->istride = 2 * I;
		} else {
			ret->out_start = proj == CAL_PROJ_UP ? I : 0;
			ret->ostride = 1;
			ret->istride = 2 * I;
		}
		break;
	}
	case CAL_LAYOUT_MXFP4:
		ret->t = f->w;
		ret->bias = f->bias;
		ret->scales = f->scales;
		ret->expert_index = expert;
		ret->per_expert = (uint64_t)(down ? H * I : 2 * I * H);
		if (!down) {
			ret->out_start = proj == CAL_PROJ_UP ? 1 : 0;
			ret->out_stride = 2;
		}
		ret->ostride = ret->in;
		ret->istride = 1;
		break;
	case CAL_LAYOUT_NONE:
		break;
	}
	if (!ret->t)
		return cal_error_set(err, CAL_ERR_INTERNAL, "layer %d expert %d: no tensor",
				     (int)layer, (int)expert);
	return CAL_OK;
}

/* ---- counts -------------------------------------------------------------- */

int cal_role_is_routed_expert(enum cal_role r)
{
	return r >= CAL_ROLE_EXPERT_GATE && r <= CAL_ROLE_EXPERTS_DOWN;
}

int cal_role_is_linear(enum cal_role r)
{
	switch (r) {
	case CAL_ROLE_LM_HEAD:
	case CAL_ROLE_Q_PROJ: case CAL_ROLE_K_PROJ: case CAL_ROLE_V_PROJ: case CAL_ROLE_O_PROJ:
	case CAL_ROLE_Q_A_PROJ: case CAL_ROLE_Q_B_PROJ:
	case CAL_ROLE_KV_A_PROJ: case CAL_ROLE_KV_B_PROJ:
	case CAL_ROLE_GDN_IN_QKVZ: case CAL_ROLE_GDN_IN_BA: case CAL_ROLE_GDN_IN_QKV:
	case CAL_ROLE_GDN_IN_Z: case CAL_ROLE_GDN_IN_B: case CAL_ROLE_GDN_IN_A:
	case CAL_ROLE_GDN_OUT:
	case CAL_ROLE_MLP_GATE: case CAL_ROLE_MLP_UP: case CAL_ROLE_MLP_DOWN:
	case CAL_ROLE_ROUTER:
	case CAL_ROLE_SHARED_GATE: case CAL_ROLE_SHARED_UP: case CAL_ROLE_SHARED_DOWN:
	case CAL_ROLE_SHARED_EXPERT_GATE:
	case CAL_ROLE_EXPERT_GATE: case CAL_ROLE_EXPERT_UP: case CAL_ROLE_EXPERT_DOWN:
		return 1;
	default:
		return 0;
	}
}

void cal_catalog_counts(const struct cal_catalog *c, struct cal_param_counts *ret)
{
	const struct cal_model_desc *d = c->d;
	memset(ret, 0, sizeof(*ret));
	for (size_t i = 0; i < c->n_entries; i++) {
		const struct cal_cat_entry *e = &c->entries[i];
		uint64_t p = e->t->numel;
		ret->tensor_bytes += e->t->nbytes;
		ret->dtype_tensors[e->t->dtype]++;
		ret->dtype_bytes[e->t->dtype] += e->t->nbytes;
		if (e->role == CAL_ROLE_IGNORED) {
			ret->ignored += p;
			ret->ignored_tensors++;
			continue;
		}
		ret->tensors++;
		if (e->part == CAL_PART_SCALE_INV || e->part == CAL_PART_SCALES) {
			ret->scale_elems += p;
			continue;
		}
		if (e->part == CAL_PART_BLOCKS)
			p *= 2;
		ret->total += p;
		if (cal_role_is_routed_expert(e->role)) {
			ret->routed_experts += p;
		} else if (e->role >= CAL_ROLE_SHARED_GATE &&
			   e->role <= CAL_ROLE_SHARED_EXPERT_GATE) {
			ret->shared_experts += p;
		} else if (e->role == CAL_ROLE_EMBED) {
			ret->embedding += p;
		} else if (e->role == CAL_ROLE_LM_HEAD) {
			ret->lm_head += p;
		}
	}
	/* Shapes were checked, so every MoE layer holds E equal-sized experts:
	 * routed / E is the parameter count of one expert in each MoE layer. */
	ret->active = ret->total - ret->routed_experts;
	if (d->num_experts > 0)
		ret->active += ret->routed_experts / (uint64_t)d->num_experts *
			       (uint64_t)d->top_k;
	ret->disk_bytes = cal_checkpoint_disk_bytes(c->ck);
}

const char *cal_role_name(enum cal_role r)
{
	static const char *const n[CAL_ROLE_COUNT] = {
		"ignored", "embed", "lm_head", "final_norm", "input_norm", "post_attn_norm",
		"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "sinks",
		"q_a_proj", "q_a_norm", "q_b_proj", "kv_a_proj", "kv_a_norm", "kv_b_proj",
		"gdn_in_qkvz", "gdn_in_ba", "gdn_in_qkv", "gdn_in_z", "gdn_in_b", "gdn_in_a",
		"gdn_conv", "gdn_a_log", "gdn_dt_bias", "gdn_norm", "gdn_out",
		"mlp_gate", "mlp_up", "mlp_down",
		"router", "router_corr_bias", "shared_gate", "shared_up", "shared_down",
		"shared_expert_gate", "expert_gate", "expert_up", "expert_down",
		"experts_gate_up", "experts_down",
	};
	return (unsigned)r < CAL_ROLE_COUNT ? n[r] : "unknown";
}

const char *cal_part_name(enum cal_part p)
{
	static const char *const n[CAL_PART_COUNT] = {"weight", "bias", "scale_inv",
						      "blocks", "scales", "param"};
	return (unsigned)p < CAL_PART_COUNT ? n[p] : "unknown";
}

/* ---- FP8 block source weights ------------------------------------------------ */

enum cal_status cal_fp8_block_check(const struct cal_model_desc *d, const struct cal_st_tensor *t,
				    const struct cal_st_tensor *si, struct cal_error *err)
{
	int64_t br = d->quant_block[0], bc = d->quant_block[1];
	if (d->src_quant != CAL_SRC_QUANT_FP8_BLOCK || t->dtype != CAL_DTYPE_F8_E4M3 ||
	    t->ndim != 2 || br < 1 || bc < 1)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "tensor %s: F8_E4M3 weights need quantization_config fp8 with a "
				     "2-D weight_block_size", t->name);
	uint64_t sr = (uint64_t)((t->shape[0] + br - 1) / br);
	uint64_t sc = (uint64_t)((t->shape[1] + bc - 1) / bc);
	if (!si || si->dtype != CAL_DTYPE_F32 || si->numel != sr * sc)
		return cal_error_set(err, CAL_ERR_FORMAT,
				     "tensor %s: weight_scale_inv %s (expected F32 [%llu, %llu], the "
				     "ceil-div %lldx%lld block grid)", t->name,
				     si ? "has the wrong dtype or shape" : "is missing",
				     (unsigned long long)sr, (unsigned long long)sc, (long long)br,
				     (long long)bc);
	return CAL_OK;
}

enum cal_status cal_fp8_block_decode(const struct cal_model_desc *d, const struct cal_st_tensor *t,
				     const struct cal_st_tensor *si, uint16_t *dst,
				     struct cal_error *err)
{
	enum cal_status st = cal_fp8_block_check(d, t, si, err);
	if (st < 0)
		return st;
	uint64_t rows = (uint64_t)t->shape[0], cols = (uint64_t)t->shape[1];
	uint64_t br = (uint64_t)d->quant_block[0], bc = (uint64_t)d->quant_block[1];
	uint64_t sc = (cols + bc - 1) / bc;
	const uint8_t *q = t->data;
	const float *s = si->data;
	for (uint64_t r = 0; r < rows; r++)
		for (uint64_t c = 0; c < cols; c++)
			dst[r * cols + c] = cal_fp8_block_value(q[r * cols + c], s[(r / br) * sc + c / bc]);
	return CAL_OK;
}
