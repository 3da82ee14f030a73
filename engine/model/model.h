/*
 * model.h — the model description: what a Hugging Face decoder checkpoint's
 * config.json says, normalised into one immutable struct that the tensor
 * catalog (catalog.h), the recipe resolver and the forward pass read.
 *
 * Everything architecture-specific is table-driven: one `struct cal_arch_info`
 * per supported `model_type` carries the transformers class defaults, the
 * numerics variants (norm kind, q/k norm, router, renormalisation, expert
 * activation) and the on-disk naming rules (MoE block name, router name,
 * shared-expert name, expert projection names).  The parser reads keys only
 * through that table, so adding an architecture is adding a row (plus its
 * config quirks, if any).  Facts come from docs/architectures.md.
 *
 * Ownership: cal_model_desc_load()/_parse() return a heap object owned by the
 * caller and released by cal_model_desc_free(); every pointer inside it
 * (strings, the layer array) is owned by it.  `arch` points into the static
 * table and lives forever.  The description is never modified after parsing,
 * so it may be shared between threads.
 */
#ifndef CAL_MODEL_H
#define CAL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Largest config.json accepted (real ones are a few KiB). */
#define CAL_MODEL_MAX_CONFIG_BYTES (4u * 1024u * 1024u)
/* ... nested at most this deep, with at most this many JSON values (checked
 * before parsing, common/jsonscan.h; real ones: depth < 6, < 10,000 values). */
#define CAL_MODEL_MAX_CONFIG_DEPTH 32
#define CAL_MODEL_MAX_CONFIG_VALUES 200000
/* Bounds on client-controlled sizes, checked before anything is allocated. */
#define CAL_MODEL_MAX_LAYERS 4096
#define CAL_MODEL_MAX_EXPERTS 65536

/* Supported architectures (one row of the table each). */
enum cal_arch {
	CAL_ARCH_QWEN3_MOE,
	CAL_ARCH_QWEN2_MOE,
	CAL_ARCH_MIXTRAL,
	CAL_ARCH_OLMOE,
	CAL_ARCH_QWEN3_NEXT,
	CAL_ARCH_QWEN3_5_MOE,      /* VLM: keys under text_config, model.language_model. */
	CAL_ARCH_QWEN3_5_MOE_TEXT, /* text-only re-export, flat config */
	CAL_ARCH_DEEPSEEK_V3,
	CAL_ARCH_GPT_OSS,
	CAL_ARCH_LLAMA,
	CAL_ARCH_QWEN2,
	CAL_ARCH_QWEN3,
	CAL_ARCH_COUNT
};

/* RMSNorm variants (docs/architectures.md "RMSNorm variants"). q/k norms and
 * MLA norms use the model's variant; the GDN gated norm is always plain w. */
enum cal_norm_kind {
	CAL_NORM_RMS,        /* y = w * bf16(n), w bf16 */
	CAL_NORM_RMS_F32W,   /* y = bf16(w_f32 * n), w stored fp32 (gpt_oss) */
	CAL_NORM_RMS_1P,     /* y = bf16(n * (1 + w_f32)), zero-centred w */
};

/* Per-head vs full-width q/k norm. */
enum cal_qk_norm {
	CAL_QK_NORM_NONE,
	CAL_QK_NORM_HEAD,    /* weight [hd], shared by heads (qwen3*, qwen3_next) */
	CAL_QK_NORM_FULL,    /* weight [nh*hd] / [nkv*hd] (olmoe) */
};

/* The attention flavour of the model's attention layers. */
enum cal_attn_kind {
	CAL_ATTN_GQA,        /* q/k/v/o projections, GQA (MHA when nkv == nh) */
	CAL_ATTN_GATED_GQA,  /* qwen3_next/3.5: q_proj 2x wide, sigmoid output gate */
	CAL_ATTN_MLA,        /* deepseek_v3 low-rank q / kv */
};

/* Token mixer of one layer. */
enum cal_mixer {
	CAL_MIXER_FULL,      /* causal attention over the whole sequence */
	CAL_MIXER_SLIDING,   /* causal attention over the last sliding_window keys */
	CAL_MIXER_LINEAR,    /* Gated DeltaNet (linear_attn.*) */
};

/* Feed-forward of one layer. */
enum cal_ffn {
	CAL_FFN_DENSE,       /* mlp.{gate,up,down}_proj, intermediate_size */
	CAL_FFN_MOE,         /* router + routed experts (+ shared expert) */
};

/* How router scores become expert weights (docs/architectures.md, each model's
 * router). */
enum cal_router_kind {
	CAL_ROUTER_NONE,           /* dense model */
	CAL_ROUTER_SOFTMAX_TOPK,   /* softmax(fp32) over E, then top-k */
	CAL_ROUTER_SIGMOID_GROUP,  /* deepseek: sigmoid + bias, group top-k */
	CAL_ROUTER_TOPK_SOFTMAX,   /* gpt_oss: top-k of logits (+bias), softmax over k */
};

/* Renormalisation of the top-k weights. */
enum cal_renorm {
	CAL_RENORM_FLAG,     /* per config norm_topk_prob */
	CAL_RENORM_ALWAYS,   /* mixtral, qwen3_5_moe */
	CAL_RENORM_IMPLICIT, /* gpt_oss (softmax over k) / dense models */
};

enum cal_expert_act {
	CAL_ACT_SWIGLU,      /* down(silu(gate x) * up x) */
	CAL_ACT_SWIGLU_OAI,  /* gpt_oss clamped, biased, alpha 1.702, (up+1) */
};

/* The shared expert of MoE layers. */
enum cal_shared_kind {
	CAL_SHARED_NONE,
	CAL_SHARED_GATED,    /* qwen2_moe / qwen3_next / qwen3_5: shared_expert + sigmoid gate */
	CAL_SHARED_UNGATED,  /* deepseek: shared_experts, no gate */
};

/* How routed experts are stored on disk (docs/architectures.md "Expert layouts
 * on disk"), detected per layer by the catalog; `cal_arch_info.hub_layout` is
 * the original release's layout. */
enum cal_expert_layout {
	CAL_LAYOUT_NONE,       /* dense layer */
	CAL_LAYOUT_PER_EXPERT, /* mlp.experts.{e}.{gate,up,down}_proj.weight */
	CAL_LAYOUT_MIXTRAL,    /* block_sparse_moe.experts.{e}.w1/w3/w2.weight */
	CAL_LAYOUT_FUSED,      /* mlp.experts.gate_up_proj [E,2I,H] (gate|up), down_proj [E,H,I] */
	CAL_LAYOUT_FUSED_T,    /* fused, stored [E,H,2I] / [E,I,H] (Qwen3-VL style), gate|up */
	CAL_LAYOUT_FUSED_OAI,  /* gpt_oss bf16: [E,H,2I] interleaved + biases, down [E,I,H] */
	CAL_LAYOUT_MXFP4,      /* gpt_oss: *_blocks U8 [E,R,C/32,16] + *_scales + biases */
};

/* Rule deciding MoE vs dense per layer. */
enum cal_ffn_rule {
	CAL_FFN_RULE_DENSE,        /* every layer dense */
	CAL_FFN_RULE_ALL_MOE,      /* every layer MoE */
	CAL_FFN_RULE_SPARSE_STEP,  /* MoE iff L not in mlp_only_layers, E>0, (L+1)%step==0 */
	CAL_FFN_RULE_FIRST_K,      /* MoE iff L >= first_k_dense_replace (deepseek) */
};

/* Rule deciding the token mixer per layer when `layer_types` is absent. */
enum cal_mixer_rule {
	CAL_MIXER_RULE_FULL,         /* full, or sliding on every layer if sliding_window set (mixtral) */
	CAL_MIXER_RULE_QWEN_WINDOW,  /* sliding iff use_sliding_window && L >= max_window_layers */
	CAL_MIXER_RULE_HYBRID,       /* full iff (L+1) % full_attention_interval == 0, else GDN */
	CAL_MIXER_RULE_ALTERNATE,    /* gpt_oss: even L sliding, odd L full */
};

/* GDN input projections. */
enum cal_gdn_proj {
	CAL_GDN_NONE,
	CAL_GDN_FUSED,       /* qwen3_next: in_proj_qkvz + in_proj_ba (grouped by key head) */
	CAL_GDN_SPLIT,       /* qwen3_5: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a */
};

/* One architecture: class defaults, numerics variants and naming rules. */
struct cal_arch_info {
	enum cal_arch id;
	const char *model_type;        /* config.json model_type */
	const char *hf_class;          /* usual architectures[0] */
	const char *text_model_type;   /* VLM: text_config.model_type, else NULL */
	const char *prefix;            /* decoder tensor prefix: "model." or
					* "model.language_model." */
	int is_moe;
	/* transformers class defaults (used when the key is absent) */
	int64_t def_vocab, def_hidden, def_intermediate, def_layers;
	int64_t def_heads, def_kv_heads;   /* def_kv_heads 0: = heads */
	int64_t def_head_dim;              /* 0: hidden / heads */
	int64_t def_max_pos;
	double def_rope_theta, def_eps, def_partial_rotary;
	int def_norm_topk_prob;
	int def_attn_bias;                 /* q/k/v bias when the key is absent */
	int def_tie;                       /* tie_word_embeddings default */
	/* Names config.json may use for one key: the hub's spelling first,
	 * then the others transformers accepts through the config class's
	 * attribute_map (docs/config_compat.md).  NULL-terminated. */
	const char *experts_keys[3];       /* routed expert count */
	const char *topk_keys[3];          /* experts per token */
	const char *mtp_keys[3];           /* inlined MTP layers (num_nextn_predict_layers) */
	const char *expert_i_key;          /* "moe_intermediate_size" or
					    * "intermediate_size" (mixtral, olmoe, gpt_oss) */
	int64_t def_max_window_layers;     /* CAL_MIXER_RULE_QWEN_WINDOW */
	const char *attn_bias_key;         /* "attention_bias" / "qkv_bias" / NULL */
	/* numerics variants */
	enum cal_norm_kind norm;
	enum cal_qk_norm qk_norm;
	enum cal_attn_kind attn;
	int o_bias_follows;                /* o_proj has a bias when attention_bias */
	int has_sinks;                     /* self_attn.sinks (gpt_oss) */
	enum cal_router_kind router;
	int router_bias;                   /* mlp.router.bias (gpt_oss) */
	int router_corr_bias;              /* mlp.gate.e_score_correction_bias (deepseek) */
	int router_bf16_weights;           /* the top-k weights rounded to bf16 (transformers'
					    * qwen2/qwen3 MoE, olmoe, qwen3_next, qwen3_5_moe) */
	enum cal_renorm renorm;
	enum cal_expert_act act;
	enum cal_shared_kind shared;
	enum cal_ffn_rule ffn_rule;
	enum cal_mixer_rule mixer_rule;
	enum cal_gdn_proj gdn;
	int rope_interleave;               /* deepseek pairs (2j,2j+1) */
	/* naming rules (relative to "<prefix>layers.{L}.") */
	const char *moe_block;             /* "mlp" or "block_sparse_moe" */
	const char *router_name;           /* "gate" or "router" */
	const char *shared_name;           /* "shared_expert" / "shared_experts" / NULL */
	const char *expert_proj[3];        /* names of gate, up, down per expert:
					    * gate_proj/up_proj/down_proj or w1/w3/w2 */
	enum cal_expert_layout hub_layout; /* layout of the original hub release */
};

/* The table (CAL_ARCH_COUNT rows, in enum order). */
const struct cal_arch_info *cal_arch_get(enum cal_arch id);
/* Row whose model_type (or text_model_type) is `model_type`; NULL if none. */
const struct cal_arch_info *cal_arch_find(const char *model_type);

enum cal_rope_type {
	CAL_ROPE_DEFAULT,
	CAL_ROPE_LINEAR,
	CAL_ROPE_DYNAMIC,
	CAL_ROPE_YARN,
	CAL_ROPE_LLAMA3,
};

/* RoPE, normalised from legacy (rope_theta / rope_scaling /
 * partial_rotary_factor) or v5 (rope_parameters) keys (docs/config_compat.md).
 */
struct cal_rope {
	enum cal_rope_type type;
	double theta;
	double partial_rotary_factor;   /* 1.0 when absent (0.25 qwen3_next/3.5) */
	int64_t rotary_dim;             /* int(head_dim * factor); MLA: qk_rope_head_dim */
	double factor;                  /* scaling factor; 1.0 when absent */
	int64_t original_max_pos;       /* yarn/llama3: resolved as in "RoPE" */
	double beta_fast, beta_slow;    /* yarn: 32 / 1 when absent */
	double mscale, mscale_all_dim;  /* yarn: 0 when absent */
	double attention_factor;        /* resolved multiplier of cos and sin (1 unless yarn) */
	int truncate;                   /* yarn: default 1 */
	double low_freq_factor, high_freq_factor; /* llama3 */
	int interleave;                 /* deepseek interleaved pairs */
	int has_mrope;                  /* mrope_section given (text-only: plain RoPE) */
	int mrope_section[3];
	int mrope_interleaved;
};

/* Source-checkpoint quantization (quantization_config). */
enum cal_src_quant {
	CAL_SRC_QUANT_NONE,
	CAL_SRC_QUANT_FP8_BLOCK,        /* quant_method fp8, weight_scale_inv */
	CAL_SRC_QUANT_MXFP4,            /* quant_method mxfp4 (gpt_oss experts) */
};

struct cal_layer_desc {
	enum cal_mixer mixer;
	enum cal_ffn ffn;
};

struct cal_model_desc {
	const struct cal_arch_info *arch;
	char *model_type;               /* top-level model_type as written */
	char *architecture;             /* architectures[0], NULL when absent */
	char *dtype;                    /* "dtype" or "torch_dtype", NULL when absent */
	int is_vlm;                     /* decoder keys came from text_config */
	const char *prefix;             /* expected tensor prefix (= arch->prefix); the
					 * catalog probes the checkpoint (cal_catalog_prefix) */

	/* dims */
	int64_t vocab_size;
	int64_t hidden_size;
	int64_t num_layers;             /* num_hidden_layers */
	int64_t num_heads;
	int64_t num_kv_heads;
	int64_t head_dim;               /* explicit head_dim, else hidden/heads */
	int64_t intermediate_size;      /* dense MLP layers (gpt_oss/mixtral: = expert I) */
	int64_t max_position_embeddings;
	int tie_word_embeddings;

	/* norms */
	enum cal_norm_kind norm;
	double rms_norm_eps;

	/* attention */
	enum cal_attn_kind attn;
	int qkv_bias;                   /* q/k/v projections carry biases */
	int o_bias;                     /* o_proj carries a bias */
	enum cal_qk_norm qk_norm;
	int has_sinks;
	int64_t sliding_window;         /* 0: none */
	double clip_qkv;                /* 0: none (olmoe) */
	double attn_scaling;            /* softmax scale, resolved (MLA: qk^-0.5 * mscale^2) */
	/* MLA (attn == CAL_ATTN_MLA) */
	int64_t q_lora_rank;            /* 0: plain q_proj */
	int64_t kv_lora_rank;
	int64_t qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
	/* Gated DeltaNet (layers with CAL_MIXER_LINEAR) */
	enum cal_gdn_proj gdn;
	int64_t linear_num_key_heads, linear_num_value_heads;
	int64_t linear_key_head_dim, linear_value_head_dim;
	int64_t linear_conv_kernel_dim;

	struct cal_rope rope;

	/* MoE (num_experts == 0 for dense models) */
	int64_t num_experts;
	int64_t top_k;
	int64_t moe_intermediate_size;  /* expert I */
	enum cal_router_kind router;
	int norm_topk_prob;             /* resolved: 1 when the weights are renormalised */
	double routed_scaling_factor;   /* 1.0 unless deepseek */
	int64_t n_group, topk_group;    /* deepseek group routing (1/1 otherwise) */
	enum cal_expert_act act;
	double swiglu_limit, swiglu_alpha; /* gpt_oss: 7.0 / 1.702 */
	enum cal_shared_kind shared;
	int64_t n_shared_experts;       /* deepseek count; 1 for qwen gated; 0 none */
	/* MTP layers stored inline after the decoder layers
	 * (model.layers.{num_layers ...}), num_nextn_predict_layers; 0 none */
	int64_t num_nextn_predict_layers;
	int64_t shared_intermediate_size; /* total (deepseek: moe_I * n_shared) */

	/* source quantization */
	enum cal_src_quant src_quant;
	int64_t quant_block[2];         /* fp8 weight_block_size */
	char **not_convert;             /* modules_to_not_convert patterns */
	size_t n_not_convert;

	/* per layer, num_layers entries */
	struct cal_layer_desc *layers;
	int64_t n_moe_layers, n_dense_layers;
	int64_t n_full_layers, n_sliding_layers, n_linear_layers;
};

/*
 * Parses config.json text (`len` bytes; `name` is used in messages).
 * Errors: CAL_ERR_FORMAT (not JSON, wrong key type, inconsistent dims —
 * message names the key), CAL_ERR_UNSUPPORTED (unknown model_type, naming
 * it; unsupported quantization_config method or rope type), CAL_ERR_RANGE
 * (a dimension outside its bounds; the text larger, deeper or with more
 * values than the CAL_MODEL_MAX_CONFIG_* limits, refused before parsing),
 * CAL_ERR_NOMEM.
 * On success *ret is owned by the caller (cal_model_desc_free).
 */
enum cal_status cal_model_desc_parse(const char *name, const char *json, size_t len,
				     struct cal_model_desc **ret, struct cal_error *err);

/* Reads `dir`/config.json and parses it (errors as above, plus
 * CAL_ERR_NOTFOUND / CAL_ERR_IO for the file). */
enum cal_status cal_model_desc_load(const char *dir, struct cal_model_desc **ret,
				    struct cal_error *err);

void cal_model_desc_free(struct cal_model_desc *d);

/* The K (v 0) or V (v 1) cache an attention layer reads per token, heads x
 * dim: GQA num_kv_heads x head_dim; MLA num_heads x (qk_nope_head_dim +
 * qk_rope_head_dim) for K, num_heads x v_head_dim for V (the per-head K / V
 * of docs/deepseek.md, where modelopt's k/v_bmm_quantizers sit).  The
 * affine KV bias is [1, heads, 1, dim].  Returns heads * dim; heads and dim
 * may be NULL. */
int64_t cal_model_kv_dims(const struct cal_model_desc *d, int v, int64_t *heads, int64_t *dim);

/* Stable lower-case names, for messages and JSON. Never NULL. */
const char *cal_arch_name(enum cal_arch a);          /* = model_type */
const char *cal_norm_kind_name(enum cal_norm_kind k); /* "rms", "rms_f32w", "rms_1p" */
const char *cal_qk_norm_name(enum cal_qk_norm k);     /* "none", "head", "full" */
const char *cal_attn_kind_name(enum cal_attn_kind k); /* "gqa", "gated_gqa", "mla" */
const char *cal_mixer_name(enum cal_mixer m);         /* "full", "sliding", "linear" */
const char *cal_ffn_name(enum cal_ffn f);             /* "dense", "moe" */
const char *cal_router_kind_name(enum cal_router_kind k); /* "none", "softmax_topk", ... */
const char *cal_expert_layout_name(enum cal_expert_layout l); /* "per-expert", "mixtral",
							      * "fused", "fused-t",
							      * "fused-oai", "mxfp4", "none" */
const char *cal_rope_type_name(enum cal_rope_type t); /* "default", "yarn", ... */
const char *cal_src_quant_name(enum cal_src_quant q); /* "none", "fp8", "mxfp4" */

#endif
