/*
 * catalog.h — the tensor catalog: every tensor of a checkpoint mapped to its
 * role in the model the description (model.h) says it is.
 *
 * cal_catalog_build() derives the tensors the description expects, matches
 * them against the checkpoint, and refuses — before any compute — a
 * checkpoint with missing, mis-shaped or unexpected tensors (CAL_ERR_FORMAT,
 * the message lists the first few names).  Tensors that are ignored by rule
 * (`model.visual.*`, `mtp.*`, `<prefix>layers.{L}` with L >= num_layers) are
 * catalogued with role CAL_ROLE_IGNORED and counted separately.
 *
 * Routed experts are found in any of the layouts of docs/architectures.md
 * "Expert layouts on disk" (detected per layer); cal_catalog_expert() answers
 * "layer L, expert e, projection gate|up|down" with a tensor and the element
 * selection inside it for every layout, so callers never special-case the
 * layout.
 *
 * Ownership: the catalog references the description and the checkpoint
 * (both must outlive it) and owns only its own arrays.
 */
#ifndef CAL_CATALOG_H
#define CAL_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"
#include "engine/model/model.h"
#include "engine/st/safetensors.h"

/* What a tensor is (the module it belongs to). */
enum cal_role {
	CAL_ROLE_IGNORED,          /* visual tower, MTP head, extra layers */
	CAL_ROLE_EMBED,            /* embed_tokens */
	CAL_ROLE_LM_HEAD,
	CAL_ROLE_FINAL_NORM,
	/* per layer */
	CAL_ROLE_INPUT_NORM,
	CAL_ROLE_POST_ATTN_NORM,
	CAL_ROLE_Q_PROJ, CAL_ROLE_K_PROJ, CAL_ROLE_V_PROJ, CAL_ROLE_O_PROJ,
	CAL_ROLE_Q_NORM, CAL_ROLE_K_NORM,
	CAL_ROLE_SINKS,
	/* MLA */
	CAL_ROLE_Q_A_PROJ, CAL_ROLE_Q_A_NORM, CAL_ROLE_Q_B_PROJ,
	CAL_ROLE_KV_A_PROJ, CAL_ROLE_KV_A_NORM, CAL_ROLE_KV_B_PROJ,
	/* Gated DeltaNet */
	CAL_ROLE_GDN_IN_QKVZ, CAL_ROLE_GDN_IN_BA,
	CAL_ROLE_GDN_IN_QKV, CAL_ROLE_GDN_IN_Z, CAL_ROLE_GDN_IN_B, CAL_ROLE_GDN_IN_A,
	CAL_ROLE_GDN_CONV, CAL_ROLE_GDN_A_LOG, CAL_ROLE_GDN_DT_BIAS,
	CAL_ROLE_GDN_NORM, CAL_ROLE_GDN_OUT,
	/* dense MLP */
	CAL_ROLE_MLP_GATE, CAL_ROLE_MLP_UP, CAL_ROLE_MLP_DOWN,
	/* MoE */
	CAL_ROLE_ROUTER,           /* mlp.gate / mlp.router (weight, bias) */
	CAL_ROLE_ROUTER_CORR_BIAS, /* mlp.gate.e_score_correction_bias */
	CAL_ROLE_SHARED_GATE, CAL_ROLE_SHARED_UP, CAL_ROLE_SHARED_DOWN,
	CAL_ROLE_SHARED_EXPERT_GATE, /* mlp.shared_expert_gate [1,H] */
	CAL_ROLE_EXPERT_GATE, CAL_ROLE_EXPERT_UP, CAL_ROLE_EXPERT_DOWN, /* per expert */
	CAL_ROLE_EXPERTS_GATE_UP,  /* fused, all experts */
	CAL_ROLE_EXPERTS_DOWN,     /* fused, all experts */
	CAL_ROLE_COUNT
};

/* Which part of the module the tensor is. */
enum cal_part {
	CAL_PART_WEIGHT,
	CAL_PART_BIAS,
	CAL_PART_SCALE_INV,        /* fp8 weight_scale_inv */
	CAL_PART_BLOCKS,           /* mxfp4 *_blocks */
	CAL_PART_SCALES,           /* mxfp4 *_scales */
	CAL_PART_PARAM,            /* other (A_log, dt_bias, sinks, corr. bias) */
	CAL_PART_COUNT
};

struct cal_cat_entry {
	const struct cal_st_tensor *t;
	enum cal_role role;
	enum cal_part part;
	int32_t layer;             /* -1 for model-level tensors and ignored ones */
	int32_t expert;            /* per-expert tensors: e, else -1 */
};

struct cal_catalog;

/*
 * Builds the catalog of `ck` for `d`.  Errors: CAL_ERR_FORMAT when tensors
 * are missing, mis-shaped (message: name, expected and found shape),
 * unexpected, or when a layer mixes expert layouts; CAL_ERR_NOMEM.
 * On success *ret is owned by the caller (cal_catalog_free).
 */
enum cal_status cal_catalog_build(const struct cal_model_desc *d,
				  const struct cal_checkpoint *ck,
				  struct cal_catalog **ret, struct cal_error *err);
void cal_catalog_free(struct cal_catalog *c);

/* All catalogued tensors (including ignored ones), in checkpoint name order. */
size_t cal_catalog_count(const struct cal_catalog *c);
const struct cal_cat_entry *cal_catalog_entry(const struct cal_catalog *c, size_t i);

/* The tensor with this role/part/layer/expert (layer -1 for model-level,
 * expert -1 unless per-expert), or NULL. */
const struct cal_st_tensor *cal_catalog_find(const struct cal_catalog *c, enum cal_role role,
					     enum cal_part part, int32_t layer, int32_t expert);

/* Decoder tensor prefix found in the checkpoint ("model." or
 * "model.language_model."). */
const char *cal_catalog_prefix(const struct cal_catalog *c);

/* Detected routed-expert layout of layer L (CAL_LAYOUT_NONE for dense layers
 * and out-of-range L). */
enum cal_expert_layout cal_catalog_layout(const struct cal_catalog *c, int32_t layer);
/* The model's layout: the one shared by all MoE layers, CAL_LAYOUT_NONE for
 * a dense model; layers must agree or the build fails. */
enum cal_expert_layout cal_catalog_model_layout(const struct cal_catalog *c);

enum cal_proj { CAL_PROJ_GATE, CAL_PROJ_UP, CAL_PROJ_DOWN };

/*
 * Where one expert projection W [out, in] (nn.Linear orientation) lives.
 * Element W[o][i] is element
 *     base + (out_start + o*out_stride) * ostride + i * istride
 * of `t` (row-major over t's shape), where base = expert_index * per_expert
 * for fused tensors (expert_index >= 0) and 0 for per-expert tensors.  ostride/istride encode the orientation: [out,in]
 * storage has ostride = in_dim_of_t, istride = 1; transposed [in,out]
 * storage has ostride = 1, istride = out_dim_of_t.  For CAL_LAYOUT_MXFP4,
 * `t` is the *_blocks tensor and `scales` its scales; element indices refer
 * to the unpacked [out, in] values (two per byte).
 * `bias`, when not NULL, is [E, out_total]: element
 * expert_index * bias->shape[1] + out_start + o*out_stride.
 */
struct cal_expert_slice {
	const struct cal_st_tensor *t;
	const struct cal_st_tensor *bias;   /* NULL when the layout has none */
	const struct cal_st_tensor *scales; /* mxfp4 only */
	int64_t expert_index;               /* index along dim 0, -1 if per-expert */
	uint64_t per_expert;                /* elements per expert (logical, fused) */
	int64_t out, in;                    /* logical shape of W */
	int64_t out_start, out_stride;      /* selection along the output dim */
	int64_t ostride, istride;           /* element strides (see above) */
	int transposed;                     /* storage is [in, out] */
};

/*
 * Fills *ret for (layer, expert, proj).  Errors: CAL_ERR_INVALID (layer
 * not MoE, expert out of range).
 */
enum cal_status cal_catalog_expert(const struct cal_catalog *c, int32_t layer,
				   int32_t expert, enum cal_proj proj,
				   struct cal_expert_slice *ret, struct cal_error *err);

/*
 * FP8 block source weights (quantization_config quant_method fp8,
 * docs/deepseek.md): t is F8_E4M3 [out, in], si its weight_scale_inv, F32
 * on the ceil-div grid [ceil(out / b0), ceil(in / b1)] of
 * d->quant_block.  cal_fp8_block_check validates the pair (errors name t);
 * cal_fp8_block_decode also writes bf16(fl32(e4m3 * scale_inv)) into dst
 * (out * in elements, the kernels' fp8_block_dequant formula).
 */
enum cal_status cal_fp8_block_check(const struct cal_model_desc *d, const struct cal_st_tensor *t,
				    const struct cal_st_tensor *si, struct cal_error *err);
enum cal_status cal_fp8_block_decode(const struct cal_model_desc *d, const struct cal_st_tensor *t,
				     const struct cal_st_tensor *si, uint16_t *dst,
				     struct cal_error *err);

/* Element index of W[o][i] inside slice->t (see struct cal_expert_slice). */
static inline uint64_t cal_expert_slice_index(const struct cal_expert_slice *s,
					      int64_t o, int64_t i)
{
	return (uint64_t)(s->expert_index >= 0 ? s->expert_index : 0) * s->per_expert +
	       (uint64_t)(s->out_start + o * s->out_stride) * (uint64_t)s->ostride +
	       (uint64_t)i * (uint64_t)s->istride;
}

/*
 * Parameter and byte counts (elements, not bytes, unless named *_bytes).
 * "total" counts every language-model tensor (embedding, lm_head when not
 * tied, norms, biases, routers, experts).  Ignored tensors (visual tower,
 * MTP, extra layers) are NOT in total; they are reported in ignored_*.
 * Quantization side tensors (fp8 weight_scale_inv, mxfp4 scales) are not
 * parameters: they are in scale_elems; mxfp4 blocks count 2 parameters per
 * byte.  "active" = total - routed_experts + sum over MoE layers of
 * top_k * (routed-expert parameters of the layer / E).
 */
struct cal_param_counts {
	uint64_t total;
	uint64_t active;
	uint64_t routed_experts;     /* all routed-expert parameters (incl. biases) */
	uint64_t shared_experts;     /* shared expert(s) + their gate */
	uint64_t embedding;          /* embed_tokens */
	uint64_t lm_head;            /* 0 when tied */
	uint64_t scale_elems;        /* quantization scales, not parameters */
	uint64_t ignored;            /* elements of ignored tensors */
	uint64_t ignored_tensors;
	uint64_t tensors;            /* catalogued language-model tensors */
	uint64_t tensor_bytes;       /* sum of nbytes of all tensors (incl. ignored) */
	uint64_t disk_bytes;         /* size of the safetensors files */
	/* histogram over all tensors (incl. ignored) */
	uint64_t dtype_tensors[CAL_DTYPE_COUNT];
	uint64_t dtype_bytes[CAL_DTYPE_COUNT];
};

void cal_catalog_counts(const struct cal_catalog *c, struct cal_param_counts *ret);

/* True for the roles whose weight is an nn.Linear [out, in] (attention and
 * GDN projections, MLPs, routers, shared experts and their gate, per-expert
 * projections, lm_head); false for fused expert tensors, norms, embeddings
 * and parameters. */
int cal_role_is_linear(enum cal_role r);
/* True for routed-expert roles (per-expert and fused). */
int cal_role_is_routed_expert(enum cal_role r);

/* Stable names: "embed", "q_proj", "expert_gate", ... and "weight", "bias", ... */
const char *cal_role_name(enum cal_role r);
const char *cal_part_name(enum cal_part p);

#endif
