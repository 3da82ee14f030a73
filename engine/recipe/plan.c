/*
 * plan.c — quantizer enumeration for a model description, recipe matching
 * exactly as modelopt's set_quantizer_by_cfg does it, and the checks that
 * turn the result into formats calibd implements (plan.h).
 */
#include "plan.h"
#include "plan_fmt.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/ops.h"


const char *cal_qrole_name(enum cal_qrole r)
{
	static const char *const n[] = {"weight", "input", "output", "q_bmm", "k_bmm", "v_bmm",
					"p_bmm"};
	return (unsigned)r < CAL_ARRAY_LEN(n) ? n[r] : "?";
}

const char *cal_mod_kind_name(enum cal_mod_kind k)
{
	static const char *const n[] = {"embed", "lm_head", "attention", "attention_proj",
					"linear_attn_proj", "linear_attn_conv", "mlp_proj",
					"router", "shared_expert_proj", "shared_expert_gate",
					"experts_gate_up", "experts_down"};
	return (unsigned)k < CAL_ARRAY_LEN(n) ? n[k] : "?";
}

/* ---- enumeration -------------------------------------------------------- */

struct builder {
	struct cal_plan *p;
	size_t cap_m, cap_q;
	char *hf;                 /* HF class prefix, e.g. "Qwen3Moe" */
	char *attn_class, *experts_class;
	struct cal_error *err;
};

static enum cal_status nomem(struct builder *b)
{
	return cal_error_set(b->err, CAL_ERR_NOMEM, "plan: out of memory");
}

/* arr (n elements of sz bytes in *cap) with room for one more: doubled
 * when full, `first` elements at first; NULL when out of memory (arr is
 * then untouched). */
static void *room_for_one(void *arr, size_t n, size_t *cap, size_t sz, size_t first)
{
	if (n < *cap)
		return arr;
	size_t nc = *cap ? *cap * 2 : first;
	void *na = realloc(arr, nc * sz);
	if (na)
		*cap = nc;
	return na;
}

static long add_module(struct builder *b, const char *name, enum cal_mod_kind kind,
		       const char *proj, const char *parent, int32_t layer, int64_t in,
		       int64_t out, int64_t count)
{
	struct cal_plan *p = b->p;
	struct cal_plan_module *nm = room_for_one(p->modules, p->n_modules, &b->cap_m,
						  sizeof(*nm), 64);
	if (!nm)
		return -1;
	p->modules = nm;
	struct cal_plan_module *m = &p->modules[p->n_modules];
	*m = (struct cal_plan_module){ .name = strdup(name), .kind = kind, .proj = proj,
				       .parent_class = parent, .layer = layer, .in = in, .out = out,
				       .count = count };
	if (!m->name)
		return -1;
	uint64_t pr = 0;
	if (cal_mul_u64((uint64_t)in, (uint64_t)out, &pr) || cal_mul_u64(pr, (uint64_t)count, &pr))
		pr = UINT64_MAX;
	m->params = pr;
	m->wq = m->iq = m->oq = m->qb = m->kb = m->vb = m->pb = -1;
	return (long)p->n_modules++;
}

static long add_q(struct builder *b, long mod, enum cal_qrole role, int32_t expert,
		  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static long add_q(struct builder *b, long mod, enum cal_qrole role, int32_t expert,
		  const char *fmt, ...)
{
	struct cal_plan *p = b->p;
	struct cal_plan_q *nq = room_for_one(p->q, p->n_q, &b->cap_q, sizeof(*nq), 256);
	if (!nq)
		return -1;
	p->q = nq;
	struct cal_plan_q *q = &p->q[p->n_q];
	memset(q, 0, sizeof(*q));
	va_list ap;
	va_start(ap, fmt);
	int r = vasprintf(&q->name, fmt, ap);
	va_end(ap);
	if (r < 0) {
		q->name = NULL;
		return -1;
	}
	q->role = role;
	q->module = (size_t)mod;
	q->expert = expert;
	q->entry = -1;
	return (long)p->n_q++;
}

/* A Linear-like module with input/weight/output quantizers. */
static enum cal_status linear(struct builder *b, const char *name, enum cal_mod_kind kind,
			      const char *proj, const char *parent, int32_t layer, int64_t in,
			      int64_t out)
{
	long m = add_module(b, name, kind, proj, parent, layer, in, out, 1);
	if (m < 0)
		return nomem(b);
	long iq = add_q(b, m, CAL_QROLE_INPUT, -1, "%s.input_quantizer", name);
	long wq = iq < 0 ? -1 : add_q(b, m, CAL_QROLE_WEIGHT, -1, "%s.weight_quantizer", name);
	long oq = wq < 0 ? -1 : add_q(b, m, CAL_QROLE_OUTPUT, -1, "%s.output_quantizer", name);
	if (oq < 0)
		return nomem(b);
	b->p->modules[m].iq = iq;
	b->p->modules[m].wq = wq;
	b->p->modules[m].oq = oq;
	return CAL_OK;
}

static enum cal_status linear_at(struct builder *b, const char *prefix, const char *proj,
				 enum cal_mod_kind kind, const char *parent, int32_t layer,
				 int64_t in, int64_t out)
{
	char *name = NULL;
	if (asprintf(&name, "%s%s", prefix, proj) < 0)
		return nomem(b);
	enum cal_status st = linear(b, name, kind, proj, parent, layer, in, out);
	free(name);
	return st;
}

/* One quantizer of a module: its role, name after "<module>.", and the
 * module field (offsetof) that holds its index. */
struct qslot {
	enum cal_qrole role;
	const char *name;
	size_t field;
};

/* The quantizers qs[0..n) of module m named base, in order; -1 when out of
 * memory. */
static int add_slots(struct builder *b, long m, const char *base, const struct qslot *qs,
		     size_t n)
{
	for (size_t k = 0; k < n; k++) {
		long q = add_q(b, m, qs[k].role, -1, "%s.%s", base, qs[k].name);
		if (q < 0)
			return -1;
		*(long *)((char *)&b->p->modules[m] + qs[k].field) = q;
	}
	return 0;
}

/* The parts of layer L under module prefix pre ("<layer>.self_attn.", ...). */
typedef enum cal_status (*part_fn)(struct builder *b, const struct cal_model_desc *d,
				   const char *pre, int32_t L);

/* fn on the part of layer L named "<P><sub>". */
static enum cal_status layer_part(struct builder *b, const struct cal_model_desc *d,
				  const char *P, const char *sub, int32_t L, part_fn fn)
{
	char *pre = NULL;
	if (asprintf(&pre, "%s%s.", P, sub) < 0)
		return nomem(b);
	enum cal_status st = fn(b, d, pre, L);
	free(pre);
	return st;
}

/* gate_proj, up_proj and down_proj [H -> I -> H] of a dense or shared MLP. */
static enum cal_status gated_mlp(struct builder *b, const char *pre, enum cal_mod_kind K,
				 int32_t L, int64_t H, int64_t I)
{
	CAL_TRY_RET(linear_at(b, pre, "gate_proj", K, "nn.Linear", L, H, I));
	CAL_TRY_RET(linear_at(b, pre, "up_proj", K, "nn.Linear", L, H, I));
	return linear_at(b, pre, "down_proj", K, "nn.Linear", L, I, H);
}

static enum cal_status dense_mlp(struct builder *b, const struct cal_model_desc *d,
				 const char *pre, int32_t L)
{
	return gated_mlp(b, pre, CAL_MOD_MLP_PROJ, L, d->hidden_size, d->intermediate_size);
}

static enum cal_status attention(struct builder *b, const struct cal_model_desc *d,
				 const char *pre, int32_t L)
{
	enum cal_status st = CAL_OK;
	char *ap = strndup(pre, strlen(pre) - 1); /* without the '.' */
	if (!ap)
		return nomem(b);
	long m = add_module(b, ap, CAL_MOD_ATTN, "self_attn", b->attn_class, L, d->head_dim,
			    d->num_kv_heads * d->head_dim, 0);
	if (m < 0)
		goto nomem;
	static const struct qslot bmm[] = {
		{CAL_QROLE_Q_BMM, "q_bmm_quantizer", offsetof(struct cal_plan_module, qb)},
		{CAL_QROLE_K_BMM, "k_bmm_quantizer", offsetof(struct cal_plan_module, kb)},
		{CAL_QROLE_V_BMM, "v_bmm_quantizer", offsetof(struct cal_plan_module, vb)},
		{CAL_QROLE_P_BMM, "p_bmm_quantizer", offsetof(struct cal_plan_module, pb)},
	};
	if (add_slots(b, m, ap, bmm, CAL_ARRAY_LEN(bmm)) < 0)
		goto nomem;
	int64_t H = d->hidden_size, nh = d->num_heads, nkv = d->num_kv_heads, hd = d->head_dim;
	const enum cal_mod_kind K = CAL_MOD_ATTN_PROJ;
	if (d->attn == CAL_ATTN_MLA) {
		int64_t qk = d->qk_nope_head_dim + d->qk_rope_head_dim;
		if (d->q_lora_rank > 0) {
			CAL_TRY(linear_at(b, pre, "q_a_proj", K, "nn.Linear", L, H, d->q_lora_rank));
			CAL_TRY(linear_at(b, pre, "q_b_proj", K, "nn.Linear", L, d->q_lora_rank, nh * qk));
		} else {
			CAL_TRY(linear_at(b, pre, "q_proj", K, "nn.Linear", L, H, nh * qk));
		}
		CAL_TRY(linear_at(b, pre, "kv_a_proj_with_mqa", K, "nn.Linear", L, H,
				  d->kv_lora_rank + d->qk_rope_head_dim));
		CAL_TRY(linear_at(b, pre, "kv_b_proj", K, "nn.Linear", L, d->kv_lora_rank,
				  nh * (d->qk_nope_head_dim + d->v_head_dim)));
		CAL_TRY(linear_at(b, pre, "o_proj", K, "nn.Linear", L, nh * d->v_head_dim, H));
	} else {
		int64_t qo = nh * hd * (d->attn == CAL_ATTN_GATED_GQA ? 2 : 1);
		CAL_TRY(linear_at(b, pre, "q_proj", K, "nn.Linear", L, H, qo));
		CAL_TRY(linear_at(b, pre, "k_proj", K, "nn.Linear", L, H, nkv * hd));
		CAL_TRY(linear_at(b, pre, "v_proj", K, "nn.Linear", L, H, nkv * hd));
		CAL_TRY(linear_at(b, pre, "o_proj", K, "nn.Linear", L, nh * hd, H));
	}
fail:
	free(ap);
	return st;
nomem:
	free(ap);
	return nomem(b);
}

static enum cal_status linear_attention(struct builder *b, const struct cal_model_desc *d,
					const char *pre, int32_t L)
{
	enum cal_status st = CAL_OK;
	int64_t H = d->hidden_size;
	int64_t kd = d->linear_num_key_heads * d->linear_key_head_dim;
	int64_t vd = d->linear_num_value_heads * d->linear_value_head_dim;
	int64_t nv = d->linear_num_value_heads;
	const enum cal_mod_kind K = CAL_MOD_LINATTN_PROJ;
	if (d->gdn == CAL_GDN_FUSED) {
		CAL_TRY(linear_at(b, pre, "in_proj_qkvz", K, "nn.Linear", L, H, 2 * kd + 2 * vd));
		CAL_TRY(linear_at(b, pre, "in_proj_ba", K, "nn.Linear", L, H, 2 * nv));
	} else {
		CAL_TRY(linear_at(b, pre, "in_proj_qkv", K, "nn.Linear", L, H, 2 * kd + vd));
		CAL_TRY(linear_at(b, pre, "in_proj_z", K, "nn.Linear", L, H, vd));
		CAL_TRY(linear_at(b, pre, "in_proj_b", K, "nn.Linear", L, H, nv));
		CAL_TRY(linear_at(b, pre, "in_proj_a", K, "nn.Linear", L, H, nv));
	}
	CAL_TRY(linear_at(b, pre, "conv1d", CAL_MOD_LINATTN_CONV, "nn.Conv1d", L,
			  d->linear_conv_kernel_dim, 2 * kd + vd));
	CAL_TRY(linear_at(b, pre, "out_proj", K, "nn.Linear", L, vd, H));
fail:
	return st;
}

static enum cal_status shared_mlp(struct builder *b, const struct cal_model_desc *d,
				  const char *pre, int32_t L)
{
	return gated_mlp(b, pre, CAL_MOD_SHARED_PROJ, L, d->hidden_size,
			 d->shared_intermediate_size);
}

static enum cal_status moe(struct builder *b, const struct cal_model_desc *d, const char *pre,
			   int32_t L)
{
	enum cal_status st = CAL_OK;
	char *name = NULL;
	int64_t H = d->hidden_size, E = d->num_experts, I = d->moe_intermediate_size;
	/* transformers >= 5 routers are TopKRouter modules: no quantizers */
	if (asprintf(&name, "%s%s", pre, d->arch->router_name ? d->arch->router_name : "gate") < 0)
		goto nomem;
	if (add_module(b, name, CAL_MOD_ROUTER, "router", "TopKRouter", L, H, E, 1) < 0)
		goto nomem;
	free(name);
	if (asprintf(&name, "%sexperts", pre) < 0) {
		name = NULL;
		goto nomem;
	}
	static const char *const projs[2] = {"gate_up_proj", "down_proj"};
	for (int k = 0; k < 2; k++) {
		long m = add_module(b, name, k ? CAL_MOD_EXPERTS_DOWN : CAL_MOD_EXPERTS_GATE_UP,
				    projs[k], b->experts_class, L, k ? I : H, k ? H : 2 * I, E);
		if (m < 0)
			goto nomem;
		long iq = add_q(b, m, CAL_QROLE_INPUT, -1, "%s.%s_input_quantizer", name, projs[k]);
		if (iq < 0)
			goto nomem;
		b->p->modules[m].iq = iq;
		for (int64_t e = 0; e < E; e++) {
			long wq = add_q(b, m, CAL_QROLE_WEIGHT, (int32_t)e, "%s.%s_weight_quantizers.%lld",
					name, projs[k], (long long)e);
			if (wq < 0)
				goto nomem;
			if (e == 0)
				b->p->modules[m].wq = wq;
		}
	}
	if (d->shared != CAL_SHARED_NONE && d->arch->shared_name) {
		CAL_TRY(layer_part(b, d, pre, d->arch->shared_name, L, shared_mlp));
		if (d->shared == CAL_SHARED_GATED)
			CAL_TRY(linear_at(b, pre, "shared_expert_gate", CAL_MOD_SHARED_GATE, "nn.Linear",
					  L, H, 1));
	}
fail:
	free(name);
	return st;
nomem:
	free(name);
	return nomem(b);
}

static enum cal_status enumerate(struct builder *b, const struct cal_model_desc *d)
{
	enum cal_status st = CAL_OK;
	char *name = NULL, *P = NULL;
	int64_t H = d->hidden_size;
	if (asprintf(&name, "%sembed_tokens", d->prefix) < 0)
		return nomem(b);
	long m = add_module(b, name, CAL_MOD_EMBED, "embed_tokens", "nn.Embedding", -1, H,
			    d->vocab_size, 1);
	static const struct qslot embed[] = {
		{CAL_QROLE_INPUT, "input_quantizer", offsetof(struct cal_plan_module, iq)},
		{CAL_QROLE_WEIGHT, "weight_quantizer", offsetof(struct cal_plan_module, wq)},
		{CAL_QROLE_OUTPUT, "output_quantizer", offsetof(struct cal_plan_module, oq)},
	};
	if (m < 0 || add_slots(b, m, name, embed, CAL_ARRAY_LEN(embed)) < 0)
		goto nomem;
	for (int64_t L = 0; L < d->num_layers; L++) {
		free(P);
		if (asprintf(&P, "%slayers.%lld.", d->prefix, (long long)L) < 0) {
			P = NULL;
			goto nomem;
		}
		const struct cal_layer_desc *ld = &d->layers[L];
		if (ld->mixer == CAL_MIXER_LINEAR)
			CAL_TRY(layer_part(b, d, P, "linear_attn", (int32_t)L, linear_attention));
		else
			CAL_TRY(layer_part(b, d, P, "self_attn", (int32_t)L, attention));
		CAL_TRY(layer_part(b, d, P, "mlp", (int32_t)L,
				   ld->ffn == CAL_FFN_MOE ? moe : dense_mlp));
	}
	CAL_TRY(linear(b, "lm_head", CAL_MOD_LM_HEAD, "lm_head", "nn.Linear", -1, H, d->vocab_size));
	if (d->tie_word_embeddings)
		b->p->modules[b->p->n_modules - 1].params = 0;
fail:
	free(name);
	free(P);
	return st;
nomem:
	free(name);
	free(P);
	return nomem(b);
}

/* ---- matching ----------------------------------------------------------- */

/* modelopt's per-expert normalisation: "(weight|input)_quantizers?.<digits>"
 * followed by the end or '.' becomes the singular name without the index.
 * Returns a heap string, or NULL when nothing changes (or no memory: then
 * *oom is set). */
static char *normalize_name(const char *s, int *oom)
{
	static const char *const keys[] = {"weight_quantizer", "input_quantizer"};
	char *out = NULL;
	for (size_t k = 0; k < 2; k++) {
		const char *src = out ? out : s;
		const char *hit = strstr(src, keys[k]);
		while (hit) {
			size_t kl = strlen(keys[k]);
			const char *q = hit + kl;
			if (*q == 's')
				q++;
			if (*q == '.' && q[1] >= '0' && q[1] <= '9') {
				const char *r = q + 1;
				while (*r >= '0' && *r <= '9')
					r++;
				if (*r == 0 || *r == '.') {
					char *n = NULL;
					if (asprintf(&n, "%.*s%s", (int)(hit - src + (ptrdiff_t)kl), src,
						     r) < 0) {
						*oom = 1;
						free(out);
						return NULL;
					}
					free(out);
					out = n;
					src = out;
					hit = strstr(src + (hit - src) + kl, keys[k]);
					continue;
				}
			}
			hit = strstr(hit + 1, keys[k]);
		}
	}
	return out;
}

struct qstate {
	int enabled;
	int cfg_entry; /* -1: defaults */
	int last;      /* last matching entry */
};

static void apply(const struct cal_recipe *r, size_t i, struct qstate *s)
{
	const struct cal_qentry *e = &r->entries[i];
	if (e->has_cfg)
		s->cfg_entry = (int)i;
	s->enabled = e->enable;
	s->last = (int)i;
}

static int streq0(const char *a, const char *b)
{
	return (!a && !b) || (a && b && !strcmp(a, b));
}

static int qattr_eq(const struct cal_qattr *a, const struct cal_qattr *b)
{
	if (a->num_bits != b->num_bits || a->fp_e != b->fp_e || a->fp_m != b->fp_m ||
	    a->n_axis != b->n_axis || a->has_block != b->has_block || a->n_block != b->n_block ||
	    a->block_dynamic != b->block_dynamic || a->has_scale_bits != b->has_scale_bits ||
	    a->scale_num_bits != b->scale_num_bits || a->scale_fp_e != b->scale_fp_e ||
	    a->scale_fp_m != b->scale_fp_m || a->has_scale_block_sizes != b->has_scale_block_sizes ||
	    a->four_over_six != b->four_over_six || a->dynamic != b->dynamic ||
	    a->fake_quant != b->fake_quant || a->is_unsigned != b->is_unsigned ||
	    a->narrow_range != b->narrow_range || a->learn_amax != b->learn_amax ||
	    a->has_bias != b->has_bias || a->rotate != b->rotate ||
	    a->n_bias_axis != b->n_bias_axis || a->bias_dynamic != b->bias_dynamic ||
	    a->bias_max_min != b->bias_max_min || a->rotate_block != b->rotate_block ||
	    a->rotate_back != b->rotate_back ||
	    memcmp(a->bias_axis, b->bias_axis, sizeof(a->bias_axis)) ||
	    a->pass_through_bwd != b->pass_through_bwd ||
	    a->use_constant_amax != b->use_constant_amax ||
	    a->has_constant_amax != b->has_constant_amax ||
	    (a->has_constant_amax && a->constant_amax != b->constant_amax) ||
	    !streq0(a->calibrator, b->calibrator) ||
	    !streq0(a->trt_high_precision_dtype, b->trt_high_precision_dtype) ||
	    !streq0(a->backend, b->backend))
		return 0;
	for (int i = 0; i < a->n_axis; i++)
		if (a->axis[i] != b->axis[i])
			return 0;
	for (int i = 0; i < a->n_block; i++)
		if (a->block_axis[i] != b->block_axis[i] || a->block_size[i] != b->block_size[i])
			return 0;
	return 1;
}

static int state_eq(const struct cal_recipe *r, const struct qstate *a, const struct qstate *b)
{
	if (a->enabled != b->enabled)
		return 0;
	if (!a->enabled || a->cfg_entry == b->cfg_entry)
		return 1;
	if (a->cfg_entry < 0 || b->cfg_entry < 0)
		return 0;
	const struct cal_qentry *x = &r->entries[a->cfg_entry], *y = &r->entries[b->cfg_entry];
	if (x->n_cfg != y->n_cfg)
		return 0;
	for (size_t i = 0; i < x->n_cfg; i++)
		if (!qattr_eq(&x->cfg[i], &y->cfg[i]))
			return 0;
	return 1;
}

struct matcher {
	const struct cal_recipe *r;
	const struct cal_model_desc *d;
	unsigned char *idx_sensitive; /* per entry: pattern can tell expert indices apart */
	unsigned char *pm;            /* per entry: primary name matches */
	unsigned char *vm;            /* per entry: scratch for a view */
	unsigned char *v0;            /* per entry: view 0 matches (for messages) */
	unsigned char *cache[2];      /* per entry: index-insensitive alias results (gate, up) */
	char *alias;                  /* scratch */
	struct cal_error *err;
};

static int entry_match(const struct cal_qentry *e, const char *name, const char *norm,
		       const char *parent)
{
	if (e->parent_class && strcmp(e->parent_class, parent))
		return 0;
	return cal_fnmatch(e->quantizer_name, name) || (norm && cal_fnmatch(e->quantizer_name, norm));
}

/* Legacy per-expert name of fused-expert quantizer q for expert e and
 * projection side s (0: gate or down, 1: up). */
static int alias_name(struct matcher *M, const struct cal_plan *p, const struct cal_plan_q *q,
		      int64_t e, int s)
{
	const struct cal_plan_module *m = &p->modules[q->module];
	const struct cal_arch_info *a = M->d->arch;
	const char *proj = m->kind == CAL_MOD_EXPERTS_DOWN ? a->expert_proj[2] : a->expert_proj[s];
	free(M->alias);
	M->alias = NULL;
	if (asprintf(&M->alias, "%slayers.%d.%s.experts.%lld.%s.%s_quantizer", M->d->prefix,
		     m->layer, a->moe_block ? a->moe_block : "mlp", (long long)e,
		     proj ? proj : (s ? "up_proj" : "gate_proj"),
		     q->role == CAL_QROLE_WEIGHT ? "weight" : "input") < 0) {
		M->alias = NULL;
		return -1;
	}
	return 0;
}

static struct qstate fold(const struct cal_recipe *r, const unsigned char *mv)
{
	struct qstate s = {.enabled = 1, .cfg_entry = -1, .last = -1};
	for (size_t i = 0; i < r->n_entries; i++)
		if (mv[i])
			apply(r, i, &s);
	return s;
}

/* Resolves quantizer q (all its views must agree). */
static enum cal_status resolve_q(struct matcher *M, struct cal_plan *p, struct cal_plan_q *q)
{
	const struct cal_recipe *r = M->r;
	const struct cal_plan_module *m = &p->modules[q->module];
	size_t ne = r->n_entries;
	int oom = 0;
	char *norm = normalize_name(q->name, &oom);
	if (oom)
		return cal_error_set(M->err, CAL_ERR_NOMEM, "plan: out of memory");
	for (size_t i = 0; i < ne; i++)
		M->pm[i] = (unsigned char)entry_match(&r->entries[i], q->name, norm, m->parent_class);
	free(norm);
	struct qstate st0 = fold(r, M->pm);
	int experts = m->kind == CAL_MOD_EXPERTS_GATE_UP || m->kind == CAL_MOD_EXPERTS_DOWN;
	if (experts && (q->role == CAL_QROLE_WEIGHT || q->role == CAL_QROLE_INPUT)) {
		int sides = m->kind == CAL_MOD_EXPERTS_GATE_UP ? 2 : 1;
		int64_t e0 = q->role == CAL_QROLE_WEIGHT ? q->expert : 0;
		int64_t e1 = q->role == CAL_QROLE_WEIGHT ? q->expert + 1 : m->count;
		int have0 = 0;
		char *first_alias = NULL;
		/* index-insensitive entries: one evaluation per side */
		for (int s = 0; s < sides; s++) {
			if (alias_name(M, p, q, e0, s) < 0)
				return cal_error_set(M->err, CAL_ERR_NOMEM, "plan: out of memory");
			for (size_t i = 0; i < ne; i++)
				M->cache[s][i] = !M->idx_sensitive[i] &&
						 entry_match(&r->entries[i], M->alias, NULL, "nn.Linear");
		}
		for (int64_t e = e0; e < e1; e++) {
			for (int s = 0; s < sides; s++) {
				if (alias_name(M, p, q, e, s) < 0) {
					free(first_alias);
					return cal_error_set(M->err, CAL_ERR_NOMEM, "plan: out of memory");
				}
				for (size_t i = 0; i < ne; i++)
					M->vm[i] = M->pm[i] || M->cache[s][i] ||
						   (M->idx_sensitive[i] &&
						    entry_match(&r->entries[i], M->alias, NULL, "nn.Linear"));
				struct qstate sv = fold(r, M->vm);
				if (!have0) {
					st0 = sv;
					memcpy(M->v0, M->vm, ne);
					have0 = 1;
					first_alias = strdup(M->alias);
					if (!first_alias)
						return cal_error_set(M->err, CAL_ERR_NOMEM, "plan: out of memory");
					continue;
				}
				if (state_eq(r, &st0, &sv))
					continue;
				size_t diff = 0;
				for (size_t i = 0; i < ne; i++)
					if (M->vm[i] != M->v0[i])
						diff = i;
				const struct cal_qentry *en = &r->entries[diff];
				enum cal_status rs = cal_error_set(
					M->err, CAL_ERR_INVALID,
					"%s: quant_cfg entry %zu (%s, '%s') treats %s and %s differently, "
					"but with transformers >= 5 they share one quantizer (%s)%s",
					r->source, diff, en->where, en->quantizer_name, first_alias,
					M->alias, q->name,
					q->role == CAL_QROLE_WEIGHT
						? ": the gate and up projections of an expert are one "
						  "fused weight and must be quantized alike"
						: ": fused experts share one input quantizer per projection");
				free(first_alias);
				return rs;
			}
		}
		free(first_alias);
	}
	if (m->kind == CAL_MOD_EMBED && q->role == CAL_QROLE_INPUT)
		st0.enabled = 0; /* hard-disabled in modelopt (token ids) */
	q->spec.enabled = st0.enabled;
	q->entry = st0.last;
	if (st0.cfg_entry >= 0) {
		q->attr = r->entries[st0.cfg_entry].cfg;
		q->n_attr = r->entries[st0.cfg_entry].n_cfg;
	} else {
		q->attr = cal_qattr_default();
		q->n_attr = 1;
	}
	return CAL_OK;
}

/* ---- validation (a quantizer's own attributes: plan_fmt.c) --------------- */

/* Weight/input combinations of one module calibd exports. */
static int combo_ok(enum cal_qfmt w, enum cal_qfmt in)
{
	return in == CAL_QFMT_NONE || (cal_qfmt(w) && cal_qfmt(w)->act == in);
}

/* Mixed W4A8 formats (kernels/qfmt.h weight_of): weights whose attributes
 * select row W on a linear whose inputs are quantized in I take the row
 * with weight_of W and act I, as modelopt's export names the pair. */
static void pair_mixed(struct cal_plan *p, const struct cal_plan_module *m)
{
	const struct cal_plan_q *iq = m->iq >= 0 ? &p->q[m->iq] : NULL;
	enum cal_qfmt in = iq && iq->spec.enabled ? iq->spec.fmt : CAL_QFMT_NONE;
	int64_t n = m->wq >= 0 ? (m->count > 1 ? m->count : 1) : 0;
	for (int64_t e = 0; in != CAL_QFMT_NONE && e < n; e++) {
		struct cal_qspec *s = &p->q[m->wq + e].spec;
		if (!s->enabled || combo_ok(s->fmt, in))
			continue;
		for (int i = CAL_QFMT_NONE + 1; i < CAL_QFMT_COUNT; i++) {
			const struct cal_qfmt_info *f = cal_qfmt((enum cal_qfmt)i);
			/* W4A8 AWQ pairs only the sequential [INT4, FP8] weights */
			if (f->weight_of == s->fmt && f->act == in &&
			    (f->id == CAL_QFMT_W4A8_AWQ) == (s->seq_fp8 != 0)) {
				s->fmt = f->id;
				s->calibrate = f->calibrate;
				break;
			}
		}
	}
}

static const char *fmt_upper(enum cal_qfmt f)
{
	return cal_qfmt(f) ? cal_qfmt(f)->title : "none";
}

static enum cal_status check_module(struct cal_error *err, const struct cal_plan *p,
				    const struct cal_plan_module *m)
{
	char impl[640];
	cal_plan_implemented(impl, sizeof(impl));
	const struct cal_recipe *r = p->recipe;
	const struct cal_plan_q *iq = m->iq >= 0 ? &p->q[m->iq] : NULL;
	enum cal_qfmt ifmt = iq ? iq->spec.fmt : CAL_QFMT_NONE;
	int64_t n = m->wq >= 0 ? (m->count > 1 ? m->count : 1) : 0;
	int any_w = 0;
	for (int64_t e = 0; e < n; e++) {
		const struct cal_plan_q *wq = &p->q[m->wq + e];
		if (!wq->spec.enabled)
			continue;
		any_w = 1;
		if (m->kind == CAL_MOD_EMBED)
			return cal_plan_unsupported(err, r, wq, "quantizing embeddings is not implemented");
		if (m->kind == CAL_MOD_LINATTN_CONV)
			return cal_plan_unsupported(err, r, wq, "quantizing the Gated DeltaNet conv1d is not "
					   "implemented");
		if (!combo_ok(wq->spec.fmt, ifmt))
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "%s: %s weights with %s inputs are not implemented "
					     "(weights and inputs share a format, or inputs stay "
					     "unquantized); %s", m->name, fmt_upper(wq->spec.fmt),
					     fmt_upper(ifmt), impl);
		if (cal_qfmt(wq->spec.fmt)->mse && p->recipe->algo.method != CAL_CALIB_MAX &&
		    p->recipe->algo.method != CAL_CALIB_MSE && p->recipe->algo.method != CAL_CALIB_GPTQ) {
			char why[96];
			snprintf(why, sizeof(why), "%s needs algorithm max, mse or gptq",
				 cal_qfmt(wq->spec.fmt)->title);
			return cal_plan_unsupported(err, r, wq, why);
		}
		if (p->recipe->algo.method == CAL_CALIB_GPTQ && wq->spec.fmt != CAL_QFMT_NVFP4_STATIC)
			return cal_plan_unsupported(err, r, wq, "gptq is implemented for static NVFP4 weights "
					   "only (docs/gptq.md)");
		if (wq->spec.seq_fp8 && wq->spec.fmt != CAL_QFMT_W4A8_AWQ)
			return cal_plan_unsupported(err, r, wq, "sequential INT4-then-FP8 weights (W4A8 AWQ) "
					   "need FP8 per-tensor inputs on the linear");
		if (p->recipe->algo.method == CAL_CALIB_AWQ_LITE && wq->spec.fmt != CAL_QFMT_INT4_BLOCK &&
		    wq->spec.fmt != CAL_QFMT_NVFP4 && wq->spec.fmt != CAL_QFMT_W4A8_AWQ)
			return cal_plan_unsupported(err, r, wq, "awq_lite is implemented for INT4 block, W4A8 "
					   "AWQ and NVFP4 weights only (docs/awq.md)");
		if (p->recipe->algo.method == CAL_CALIB_AWQ_LITE && p->recipe->algo.awq_clip &&
		    wq->spec.fmt != CAL_QFMT_NVFP4 && wq->spec.block != 128)
			return cal_plan_unsupported(err, r, wq, "awq_full and awq_clip are implemented for "
					   "INT4 (and W4A8) weights in blocks of 128 and NVFP4 "
					   "weights only (docs/awq.md \"awq_clip\")");
		if (p->recipe->algo.method == CAL_CALIB_SMOOTHQUANT &&
		    (wq->spec.fmt != CAL_QFMT_INT8 || !iq || !iq->spec.enabled ||
		     ifmt != CAL_QFMT_INT8))
			return cal_plan_unsupported(err, r, wq, "smoothquant is implemented for INT8 weights "
					   "with INT8 inputs only (docs/smoothquant.md)");
		if (wq->spec.block && m->in % wq->spec.block && !cal_qfmt(wq->spec.fmt)->block2d)
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s%s: input dimension %lld is not a multiple of the %s "
					     "block size %d (quantizer %s); exclude this layer in the "
					     "recipe", m->name, m->count > 1 ? " (experts)" : "",
					     (long long)m->in, fmt_upper(wq->spec.fmt), wq->spec.block,
					     wq->name);
	}
	if (iq && iq->spec.enabled) {
		if (!any_w && m->kind != CAL_MOD_EMBED)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "%s: quantized inputs without quantized weights are not "
					     "implemented (input quantizer %s, entry %d); %s",
					     m->name, iq->name, iq->entry, impl);
		if (iq->spec.block && m->in % iq->spec.block)
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s: input dimension %lld is not a multiple of the %s "
					     "block size %d (quantizer %s)", m->name, (long long)m->in,
					     fmt_upper(iq->spec.fmt), iq->spec.block, iq->name);
	}
	return CAL_OK;
}

static uint64_t src_bytes_per_param(const struct cal_model_desc *d)
{
	if (d->dtype && (!strcmp(d->dtype, "float32") || !strcmp(d->dtype, "fp32")))
		return 4;
	return 2;
}

/* Bytes of one module's weights (and scales) after quantization. */
static uint64_t module_bytes_after(const struct cal_plan *p, const struct cal_plan_module *m,
				   uint64_t src)
{
	if (m->wq < 0 || !m->params)
		return m->params * src;
	int64_t n = m->count > 1 ? m->count : 1;
	uint64_t per = (uint64_t)m->in * (uint64_t)m->out, total = 0;
	int in_on = m->iq >= 0 && p->q[m->iq].spec.enabled;
	for (int64_t e = 0; e < n; e++) {
		const struct cal_qspec *s = &p->q[m->wq + e].spec;
		const struct cal_qfmt_info *f = s->enabled ? cal_qfmt(s->fmt) : NULL;
		if (f)
			total += cal_qfmt_packed_bytes(f, (uint64_t)m->out, (uint64_t)m->in) +
				 cal_qfmt_scale_bytes(f, (uint64_t)m->out, (uint64_t)m->in,
						      (uint32_t)s->block) +
				 (f->tensor_scale ? 4 : 0);
		else
			total += per * src;
	}
	if (in_on && p->q[m->iq].spec.calibrate)
		total += 4 * (uint64_t)n; /* input_scale per exported Linear */
	return total;
}

/* Parameters that have no quantizer (norms, biases, routers' extras). */
static uint64_t other_params(const struct cal_model_desc *d)
{
	uint64_t H = (uint64_t)d->hidden_size, t = H; /* final norm */
	for (int64_t L = 0; L < d->num_layers; L++) {
		const struct cal_layer_desc *ld = &d->layers[L];
		t += 2 * H;
		if (ld->mixer == CAL_MIXER_LINEAR) {
			t += 2 * (uint64_t)d->linear_num_value_heads + (uint64_t)d->linear_value_head_dim;
		} else if (d->attn == CAL_ATTN_MLA) {
			t += (uint64_t)d->q_lora_rank + (uint64_t)d->kv_lora_rank;
		} else {
			uint64_t hd = (uint64_t)d->head_dim, nh = (uint64_t)d->num_heads,
				 nkv = (uint64_t)d->num_kv_heads;
			if (d->qk_norm == CAL_QK_NORM_HEAD)
				t += 2 * hd;
			else if (d->qk_norm == CAL_QK_NORM_FULL)
				t += (nh + nkv) * hd;
			if (d->qkv_bias)
				t += (nh * (d->attn == CAL_ATTN_GATED_GQA ? 2 : 1) + 2 * nkv) * hd;
			if (d->o_bias)
				t += H;
			if (d->has_sinks)
				t += nh;
		}
		if (ld->ffn == CAL_FFN_MOE) {
			uint64_t E = (uint64_t)d->num_experts, I = (uint64_t)d->moe_intermediate_size;
			if (d->arch->router_bias)
				t += E;
			if (d->arch->router_corr_bias)
				t += E;
			if (d->act == CAL_ACT_SWIGLU_OAI)
				t += E * (2 * I + H);
		}
	}
	return t;
}

static int qname_cmp(const void *a, const void *b, void *ctx)
{
	const struct cal_plan *p = ctx;
	return strcmp(p->q[*(const size_t *)a].name, p->q[*(const size_t *)b].name);
}

/* The GPTQ options calibd runs (docs/gptq.md); any other is refused by name. */
static enum cal_status gptq_options(const struct cal_recipe *r, struct cal_error *err)
{
	const struct cal_algorithm *a = &r->algo;
	const char *bad = NULL;
	if (a->gptq_fused)
		bad = "fused: true (the Triton kernel of the update)";
	else if (!a->layerwise)
		bad = "layerwise.enable: false (whole-model GPTQ from the unquantized activations)";
	else if (!a->layerwise_qdq_from_prev)
		bad = "layerwise.get_qdq_activations_from_prev_layer: false";
	else if (a->gptq_block_size % 16)
		bad = "block_size not a multiple of the NVFP4 block (16)";
	else if (a->has_moe_calib_experts_ratio)
		bad = "moe_calib_experts_ratio";
	if (!bad)
		return CAL_OK;
	return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: algorithm gptq: option %s is not "
			     "implemented (docs/gptq.md)", r->source, bad);
}

enum cal_status cal_plan_build(const struct cal_model_desc *d, const struct cal_recipe *r,
			       struct cal_plan **ret, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	struct matcher M = {.r = r, .d = d, .err = err};
	struct builder b = {.err = err};
	struct cal_plan *p = calloc(1, sizeof(*p));
	*ret = NULL;
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "plan: out of memory");
	p->model = d;
	p->recipe = r;
	b.p = p;

	/* algorithm */
	if (r->algo.method == CAL_CALIB_OTHER) {
		st = cal_error_set(err, CAL_ERR_UNSUPPORTED,
				   "%s: algorithm '%s' is not implemented (calibd runs max, mse, "
				   "nvfp4_act_headroom, gptq, awq_lite, awq_full, awq_clip, smoothquant and "
				   "none)", r->source,
				   r->algo.name);
		goto fail;
	}
	if (r->algo.method == CAL_CALIB_GPTQ && (st = gptq_options(r, err)) < 0)
		goto fail;
	int sq = r->algo.method == CAL_CALIB_SMOOTHQUANT;
	if ((sq || r->algo.method == CAL_CALIB_AWQ_LITE) &&
	    (r->algo.layerwise || r->algo.has_moe_calib_experts_ratio)) {
		st = cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: algorithm %s: option %s is not "
				   "implemented (docs/%s.md)", r->source, sq ? "smoothquant" : r->algo.name,
				   r->algo.layerwise ? "layerwise" : "moe_calib_experts_ratio",
				   sq ? "smoothquant" : "awq");
		goto fail;
	}

	/* class names for parent_class */
	const char *hf = d->architecture ? d->architecture : d->arch->hf_class;
	size_t hl = strlen(hf);
	static const char *const sfx[] = {"ForCausalLM", "ForConditionalGeneration"};
	for (size_t i = 0; i < CAL_ARRAY_LEN(sfx); i++) {
		size_t sl = strlen(sfx[i]);
		if (hl > sl && !strcmp(hf + hl - sl, sfx[i]))
			hl -= sl;
	}
	if (asprintf(&b.attn_class, "%.*sAttention", (int)hl, hf) < 0)
		b.attn_class = NULL;
	if (asprintf(&b.experts_class, "%.*sExperts", (int)hl, hf) < 0)
		b.experts_class = NULL;
	if (!b.attn_class || !b.experts_class) {
		st = nomem(&b);
		goto fail;
	}
	CAL_TRY(enumerate(&b, d));
	/* module parent_class strings live in the plan: re-point them */
	{
		char *ac = b.attn_class, *ec = b.experts_class;
		b.attn_class = b.experts_class = NULL;
		p->attn_class_ = ac;
		p->experts_class_ = ec;
	}

	/* matching */
	size_t ne = r->n_entries ? r->n_entries : 1;
	M.idx_sensitive = calloc(ne, 1);
	M.pm = calloc(ne, 1);
	M.vm = calloc(ne, 1);
	M.v0 = calloc(ne, 1);
	M.cache[0] = calloc(ne, 1);
	M.cache[1] = calloc(ne, 1);
	if (!M.idx_sensitive || !M.pm || !M.vm || !M.v0 || !M.cache[0] || !M.cache[1]) {
		st = nomem(&b);
		goto fail;
	}
	for (size_t i = 0; i < r->n_entries; i++)
		M.idx_sensitive[i] = strpbrk(r->entries[i].quantizer_name, "0123456789?[") != NULL;
	for (size_t i = 0; i < p->n_q; i++)
		CAL_TRY(resolve_q(&M, p, &p->q[i]));

	/* formats */
	for (size_t i = 0; i < p->n_q; i++) {
		struct cal_plan_q *q = &p->q[i];
		if (!q->spec.enabled)
			continue;
		CAL_TRY(cal_plan_classify(err, r, q, &q->spec));
		p->sum.n_enabled++;
	}
	for (size_t i = 0; i < p->n_modules; i++) {
		pair_mixed(p, &p->modules[i]);
		CAL_TRY(check_module(err, p, &p->modules[i]));
	}

	/* KV: one format for the model (the exporter writes one kv_cache_quant_algo) */
	int kv_seen = 0;
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		if (q->role != CAL_QROLE_K_BMM && q->role != CAL_QROLE_V_BMM)
			continue;
		enum cal_qfmt f = q->spec.enabled ? q->spec.fmt : CAL_QFMT_NONE;
		int cast = q->spec.enabled && q->spec.use_constant_amax;
		if (!kv_seen) {
			p->sum.kv_fmt = f;
			p->sum.kv_cast = cast;
			kv_seen = 1;
			p->sum.kv_affine = q->spec.enabled && q->spec.affine;
		} else if (f != p->sum.kv_fmt || cast != p->sum.kv_cast ||
			   (q->spec.enabled && q->spec.affine) != p->sum.kv_affine) {
			st = cal_error_set(err, CAL_ERR_INVALID,
					   "%s: KV-cache quantizers disagree (%s is %s%s%s, others %s%s%s); "
					   "the checkpoint declares one KV-cache format",
					   r->source, q->name, cal_qfmt_name(f), cast ? " cast" : "",
					   q->spec.affine ? " affine" : "", cal_qfmt_name(p->sum.kv_fmt),
					   p->sum.kv_cast ? " cast" : "", p->sum.kv_affine ? " affine" : "");
			goto fail;
		}
	}

	CAL_TRY(cal_plan_kv_rotation(err, p));

	/* algorithm vs formats */
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		if (!q->spec.enabled)
			continue;
		if (r->algo.method == CAL_CALIB_NONE && q->spec.calibrate) {
			st = cal_error_set(err, CAL_ERR_INVALID,
					   "%s: algorithm is null (no calibration) but %s (%s) needs an "
					   "amax; use algorithm: max", r->source, q->name,
					   cal_qfmt_name(q->spec.fmt));
			goto fail;
		}
		int mse_bad = r->algo.method == CAL_CALIB_MSE && q->role == CAL_QROLE_WEIGHT &&
			      !cal_qfmt(q->spec.fmt)->mse;
		if (mse_bad || (r->algo.method == CAL_CALIB_HEADROOM && q->role == CAL_QROLE_INPUT &&
				q->spec.fmt == CAL_QFMT_NVFP4_BS32)) { /* headroom.c: blocks of 16 */
			st = cal_plan_unsupported(err, r, q, mse_bad ? "mse calibration is implemented for "
					 "static NVFP4 weights only" : "nvfp4_act_headroom over NVFP4 "
					 "block-32 inputs is not implemented");
			goto fail;
		}
	}

	/* summary */
	uint64_t src = src_bytes_per_param(d);
	uint64_t other = other_params(d);
	p->sum.params = other;
	p->sum.bytes_before = other * src;
	p->sum.bytes_after = other * src;
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct cal_plan_module *m = &p->modules[i];
		if (m->kind == CAL_MOD_ATTN)
			continue;
		p->sum.params += m->params;
		p->sum.bytes_before += m->params * src;
		p->sum.bytes_after += module_bytes_after(p, m, src);
		if (m->wq >= 0) {
			int64_t n = m->count > 1 ? m->count : 1;
			uint64_t per = (uint64_t)m->in * (uint64_t)m->out;
			for (int64_t e = 0; e < n && m->params; e++)
				if (p->q[m->wq + e].spec.enabled)
					p->sum.quantized_params += per;
		}
	}
	if (p->sum.kv_fmt != CAL_QFMT_NONE && !p->sum.kv_cast)
		p->sum.bytes_after += 8 * (uint64_t)(d->num_layers - d->n_linear_layers);
	p->sum.bits_per_param = p->sum.params ? (double)p->sum.bytes_after * 8.0 /
							(double)p->sum.params : 0;

	p->by_name = malloc((p->n_q ? p->n_q : 1) * sizeof(*p->by_name));
	if (!p->by_name) {
		st = nomem(&b);
		goto fail;
	}
	for (size_t i = 0; i < p->n_q; i++)
		p->by_name[i] = i;
	qsort_r(p->by_name, p->n_q, sizeof(*p->by_name), qname_cmp, p);
	*ret = p;
	p = NULL;
fail:
	CAL_FREE_ALL(M.idx_sensitive, M.pm, M.vm, M.v0, M.cache[0], M.cache[1], M.alias,
		     b.attn_class, b.experts_class);
	cal_plan_free(p);
	return st;
}

void cal_plan_free(struct cal_plan *p)
{
	if (!p)
		return;
	CAL_FREE_MEMBER(p->modules, p->n_modules, name);
	CAL_FREE_MEMBER(p->q, p->n_q, name);
	CAL_FREE_ALL(p->modules, p->q, p->by_name, p->attn_class_, p->experts_class_, p);
}
