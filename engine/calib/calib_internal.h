/*
 * calib_internal.h — state shared by the calibration engine's files
 * (calib.c: run loop, statistics, JSON; layer.c: layer weights in the
 * canonical layout and the decoder-layer steps).  Not for use outside
 * engine/calib/.
 */
#ifndef CAL_CALIB_INTERNAL_H
#define CAL_CALIB_INTERNAL_H

#include <stdint.h>

#include "engine/calib.h"
#include "engine/model/catalog.h"
#include "engine/st/safetensors.h"

/* Observer slots of one layer (amax + non-finite report each). */
enum {
	S_QKV,        /* input of q/k/v_proj (input_layernorm output) */
	S_O,          /* input of o_proj */
	S_K,          /* K after k_proj/k_norm/RoPE */
	S_V,          /* V after v_proj */
	S_MLP_GU,     /* dense MLP gate/up input */
	S_MLP_DOWN,   /* dense MLP down input */
	S_MOE_IN,     /* router / shared expert / shared gate input */
	S_SH_DOWN,    /* shared expert down input */
	S_OUT,        /* the residual stream after the layer */
	S_LMHEAD,     /* lm_head input (final norm output), after the last layer */
	S_FIXED,      /* experts follow: gate_up [E], then down [E] */
};

/* The steps a decoder layer is made of (chosen from the model description;
 * new layer kinds add steps). */
enum cal_step {
	STEP_ATTN_GQA,    /* input norm, q/k/v, q/k norm, RoPE, attention, o_proj, residual */
	STEP_MLP_DENSE,   /* post norm, gate|up GEMM, SwiGLU, down, residual */
	STEP_MOE,         /* post norm, router, sorted grouped experts, shared expert, residual */
};

#define CAL_MAX_STEPS 4

/* One layer's weights (back-end pointers; bf16 unless noted). */
struct cal_layer_w {
	const void *in_norm, *post_norm, *q_norm, *k_norm;
	enum cal_dtype in_norm_dt, post_norm_dt, q_norm_dt, k_norm_dt;
	const uint16_t *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo;
	const uint16_t *w13, *w2;            /* dense: [2I, H] gate|up, [H, I] */
	const uint16_t *router;              /* [E, H] */
	const uint16_t *e13, *e2;            /* [E, 2I, H], [E, H, I] */
	const uint16_t *s13, *s2, *sgate;    /* shared: [2Is, H], [H, Is], [1, H] */
};

/* Host staging of one layer: canonical host pointers plus the buffers it
 * had to allocate (the rest point into the checkpoint mapping). */
struct cal_layer_host {
	struct cal_layer_w w;
	void *owned[64];
	int n_owned;
	/* sizes (elements) of each pointer above, for the upload */
	uint64_t n_e13, n_e2, n_w13, n_w2, n_s13, n_s2;
};

/* Per micro-batch metadata. */
struct cal_mb {
	uint64_t tok0, n_tok;     /* token range */
	uint32_t n_seq;
	uint64_t meta_off;        /* index into the meta buffer: cu[n_seq+1], key_start[n_seq] */
};

struct cal_moe_host {
	struct cal_calib_moe_stats pub;
	uint64_t *tokens;
	float *gu, *down;
};

struct cal_calib {
	struct cal_calib_opts o;
	const struct cal_plan *plan;
	const struct cal_model_desc *d;
	struct cal_checkpoint *ck;
	struct cal_catalog *cat;
	struct cal_backend *be, *host;  /* host: CPU back end for host-side work */
	int on_device;                   /* be is not host memory */

	/* model constants */
	int64_t H, nh, nkv, hd, E, k, kk, I, Id, Is, rd;
	uint64_t n_slots;
	float *inv_freq;                 /* [rd / 2], host */

	/* run state */
	uint64_t n_tok;                  /* tokens processed (padded layout) */
	uint64_t mb_tokens;
	struct cal_mb *mbs;
	size_t n_mb;
	uint16_t *hidden;                /* [n_tok, H] back end */
	uint32_t *pos;                   /* [n_tok] back end */
	uint32_t *meta;                  /* back end */
	float *d_inv_freq;
	/* scratch (back end) */
	uint16_t *h, *q, *kb, *vb, *att, *tmp, *gu, *act, *logits, *xg, *yo, *sgu, *sact, *sy, *sgl;
	uint32_t *idx, *offsets, *sorted, *ppos;
	float *rw;
	float *obs_amax;                 /* [n_slots] back end */
	struct cal_nonfinite *obs_nf;    /* [n_slots] back end */
	uint32_t *h_offsets;             /* [E + 1] host copy */

	/* results */
	float *l_amax;                   /* [num_layers][S_FIXED] host; < 0: none */
	struct cal_moe_host *moe;        /* [num_layers] (tokens NULL for dense) */
	float lmhead_amax;
	float *q_amax;                   /* [plan->n_q] */
	uint8_t *q_has;
	int done_layers;
};

/* layer.c */
enum cal_status cal_layer_steps(const struct cal_calib *c, int32_t L, enum cal_step *steps,
				int *n_steps, struct cal_error *err);
enum cal_status cal_layer_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
				struct cal_error *err);
void cal_layer_host_free(struct cal_layer_host *lh);
enum cal_status cal_layer_forward(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				  const struct cal_mb *mb, struct cal_error *err);
/* RoPE frequencies of the model (fp32, as HF computes them). */
enum cal_status cal_rope_inv_freq(const struct cal_model_desc *d, float *inv, int64_t rd,
				  struct cal_error *err);

#endif
