/*
 * plan.h — the quantization plan: every quantizer a model has, named as
 * modelopt names it with transformers >= 5, and what a recipe decides for
 * it (docs/recipes.md "Matching").
 *
 * cal_plan_build() enumerates the model's modules and quantizers from the
 * model description, applies the recipe's quant_cfg entries in order (later
 * entries win; a cfg entry replaces every attribute, an enable-only entry
 * toggles; fnmatch on the name and on the per-expert normalised name; legacy
 * per-expert names are matched too), then checks that calibd implements
 * every enabled quantizer and that block formats divide the layers' input
 * dimensions.  The plan is what the calibration engine and the exporter
 * consume: per module, the weight / input / KV quantizers with their format.
 *
 * Ownership: the plan references the model description and the recipe
 * (both must outlive it) and owns everything else; cal_plan_free().
 */
#ifndef CAL_PLAN_H
#define CAL_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "engine/model/model.h"
#include "engine/recipe/recipe.h"
#include "kernels/qfmt.h"

/* Formats calibd implements: enum cal_qfmt and its rows, kernels/qfmt.def. */

enum cal_qrole {
	CAL_QROLE_WEIGHT,
	CAL_QROLE_INPUT,
	CAL_QROLE_OUTPUT,
	CAL_QROLE_Q_BMM,
	CAL_QROLE_K_BMM,        /* KV cache: keys */
	CAL_QROLE_V_BMM,        /* KV cache: values */
	CAL_QROLE_P_BMM,
};
/* "weight", "input", "output", "q_bmm", "k_bmm", "v_bmm", "p_bmm". */
const char *cal_qrole_name(enum cal_qrole r);

/* What a module is (decides grouping in `calibd plan` and the checks). */
enum cal_mod_kind {
	CAL_MOD_EMBED,          /* nn.Embedding */
	CAL_MOD_LM_HEAD,        /* nn.Linear */
	CAL_MOD_ATTN,           /* the attention module itself (q/k/v/p bmm quantizers) */
	CAL_MOD_ATTN_PROJ,      /* q/k/v/o, MLA q_a/q_b/kv_a/kv_b projections */
	CAL_MOD_LINATTN_PROJ,   /* Gated DeltaNet in_proj_* / out_proj */
	CAL_MOD_LINATTN_CONV,   /* Gated DeltaNet conv1d (nn.Conv1d) */
	CAL_MOD_MLP_PROJ,       /* dense MLP gate/up/down */
	CAL_MOD_ROUTER,         /* MoE router: no quantizers with transformers >= 5 */
	CAL_MOD_SHARED_PROJ,    /* shared expert(s) gate/up/down */
	CAL_MOD_SHARED_GATE,    /* shared_expert_gate [1, H] */
	CAL_MOD_EXPERTS_GATE_UP,/* fused routed experts, gate|up: E x [2I, H] */
	CAL_MOD_EXPERTS_DOWN,   /* fused routed experts, down: E x [H, I] */
	CAL_MOD_COUNT
};
const char *cal_mod_kind_name(enum cal_mod_kind k);

/* The resolved, validated decision for one quantizer. */
struct cal_qspec {
	int enabled;
	enum cal_qfmt fmt;      /* CAL_QFMT_NONE when disabled */
	int block;              /* elements per block along the last (input) dim; 0 = per tensor */
	int calibrate;          /* needs an amax: from the weights (weight quantizers) or
				 * from the calibration forward (input / KV quantizers) */
	int use_constant_amax;  /* KV "cast": fixed amax, no scales exported */
	int has_constant_amax;  /* amax pinned by the recipe (no calibration) */
	double constant_amax;
	int affine;             /* KV: static mean bias per (KV head, channel) (docs/numerics.md
				 * "Affine KV cache") */
	int seq_fp8;            /* weights: a sequential cfg [INT4 blocks, FP8 per tensor]
				 * (modelopt's W4A8 AWQ; docs/awq.md "w4a8_awq") */
};

struct cal_plan_q {
	char *name;                   /* modelopt name, e.g.
				       * "model.layers.3.mlp.experts.gate_up_proj_weight_quantizers.7" */
	enum cal_qrole role;
	size_t module;                /* index into plan->modules */
	int32_t expert;               /* per-expert weight quantizers of fused experts: e; else -1 */
	struct cal_qspec spec;
	const struct cal_qattr *attr; /* resolved attributes: into the recipe, or the defaults */
	size_t n_attr;                /* > 1: sequential (cfg list) */
	int entry;                    /* last quant_cfg entry that matched, -1 none */
};

struct cal_plan_module {
	char *name;                   /* "model.layers.3.self_attn.q_proj"; fused experts:
				       * "model.layers.3.mlp.experts" (both kinds) */
	enum cal_mod_kind kind;
	const char *proj;             /* "q_proj", "gate_up_proj", "conv1d", "gate", ... */
	const char *parent_class;     /* "nn.Linear", "nn.Embedding", "nn.Conv1d", or the HF
				       * class name for attention / experts */
	int32_t layer;                /* -1 for embed_tokens and lm_head */
	int64_t in, out;              /* one weight's [out, in] (per expert for experts) */
	int64_t count;                /* number of such weights: E for experts, else 1 */
	uint64_t params;              /* in * out * count; 0 for lm_head when tied */
	/* indices into plan->q, -1 when the module has no such quantizer */
	long wq;                      /* weight quantizer; experts: first of `count` */
	long iq, oq;                  /* input, output */
	long qb, kb, vb, pb;          /* attention bmm quantizers (CAL_MOD_ATTN) */
};

struct cal_plan_summary {
	uint64_t params;              /* language-model parameters counted by the plan */
	uint64_t quantized_params;    /* parameters whose weight quantizer is enabled */
	uint64_t bytes_before, bytes_after;
	double bits_per_param;        /* bytes_after * 8 / params */
	size_t n_enabled;             /* enabled quantizers */
	enum cal_qfmt kv_fmt;         /* format of all enabled k/v quantizers (NONE if off) */
	int kv_cast;                  /* KV with use_constant_amax */
	int kv_affine;                /* KV with a static bias (k_bias / v_bias) */
	/* Hadamard rotation block of Q, K, V along head_dim (docs/numerics.md
	 * "KV-cache rotation"); 0: not rotated.  Q may rotate with its
	 * quantizer disabled, as modelopt's rotated NVFP4 KV unit does. */
	uint32_t rot_block[3];
};

struct cal_plan {
	const struct cal_model_desc *model;
	const struct cal_recipe *recipe;
	struct cal_plan_module *modules;
	size_t n_modules;
	struct cal_plan_q *q;
	size_t n_q;
	struct cal_plan_summary sum;
	size_t *by_name;              /* q indices sorted by name (cal_plan_find) */
	char *attn_class_, *experts_class_; /* storage of parent_class strings */
};

/*
 * Builds the plan of recipe `r` for model `d`.
 * Errors: CAL_ERR_UNSUPPORTED (an enabled quantizer in a format or with an
 * attribute calibd does not implement, an unsupported algorithm; the message
 * names the quantizer, the entry (file:line:col) and lists what calibd
 * implements), CAL_ERR_INVALID (a block format on a layer whose input
 * dimension is not a multiple of the block — naming the layer; gate and up
 * of an expert treated differently; mixed KV formats), CAL_ERR_NOMEM.
 */
enum cal_status cal_plan_build(const struct cal_model_desc *d, const struct cal_recipe *r,
			       struct cal_plan **ret, struct cal_error *err);
void cal_plan_free(struct cal_plan *p);

/* The quantizer named `name` (a modelopt name), or NULL. */
const struct cal_plan_q *cal_plan_find(const struct cal_plan *p, const char *name);

/* Convenience for the engine: the spec of module m's weight quantizer for
 * expert e (e ignored unless the module has count > 1), its input quantizer,
 * and the k/v quantizers of layer L's attention (NULL when absent). */
const struct cal_qspec *cal_plan_weight_spec(const struct cal_plan *p, size_t m, int64_t e);
const struct cal_qspec *cal_plan_input_spec(const struct cal_plan *p, size_t m);
const struct cal_qspec *cal_plan_kv_spec(const struct cal_plan *p, int32_t layer, int v);
/* The index of the first module from mi on that holds layer L's routed
 * experts (gate_up or down) with weight quantizers, or p->n_modules: loops
 * over a layer's expert weight quantizers step with it. */
size_t cal_plan_next_experts(const struct cal_plan *p, int32_t L, size_t mi);

/* nvfp4_awq's export (docs/awq.md "Export" step 1): whether module m's
 * pre_quant_scale is folded into the previous linear's output rows instead
 * of being exported: an awq_lite recipe with NVFP4 weights, a model whose
 * attention / MLP classes modelopt lists (llama, qwen3, qwen3_moe), and
 * o_proj without GQA (its input as wide as v_proj's output) or a dense
 * MLP's down_proj. */
int cal_plan_awq_fuses_prev(const struct cal_plan *p, size_t m);
/* AWQ's export (docs/awq.md "Export" step 4): whether module m's
 * pre_quant_scale is fused into the norm whose output it reads: attention
 * q/k/v (input_layernorm), a dense MLP's gate/up (post_attention_layernorm)
 * or a Gated DeltaNet in_proj (input_layernorm), when two or more linears
 * of that group have an enabled weight quantizer (modelopt fuses only a
 * group of linears sharing the norm's output tensor). */
int cal_plan_awq_fuses_norm(const struct cal_plan *p, size_t m);

/* Human summary (`calibd plan`): a heap string owned by the caller. */
char *cal_plan_text(const struct cal_plan *p, const char *recipe_name);

/* JSON (`calibd plan --json`): a heap string owned by the caller, or NULL
 * on allocation failure. */
char *cal_plan_json(const struct cal_plan *p, const char *recipe_name);

#endif
