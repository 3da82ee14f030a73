/*
 * calib_internal.h — state shared by the calibration engine's files
 * (calib.c: run loop; stats.c: observers, statistics, JSON; weights.c:
 * weight amax and upload; layer.c: layer weights in the
 * canonical layout and the decoder-layer steps).  Not for use outside
 * engine/calib/.
 */
#ifndef CAL_CALIB_INTERNAL_H
#define CAL_CALIB_INTERNAL_H

#include <stdint.h>

#include "engine/calib.h"
#include "kernels/comm.h"
#include "engine/model/catalog.h"
#include "engine/st/safetensors.h"

/* Observer slots of one layer (amax + non-finite report each). */
enum {
	S_QKV,        /* input of q/k/v_proj (input_layernorm output); GDN: of in_proj_* */
	S_O,          /* input of o_proj (gated attention: after the gate); GDN: of out_proj */
	S_K,          /* K after k_proj/k_norm/RoPE */
	S_V,          /* V after v_proj */
	S_MLP_GU,     /* dense MLP gate/up input */
	S_MLP_DOWN,   /* dense MLP down input */
	S_MOE_IN,     /* router / shared expert / shared gate input */
	S_SH_DOWN,    /* shared expert down input */
	S_OUT,        /* the residual stream after the layer */
	S_LMHEAD,     /* lm_head input (final norm output), after the last layer */
	S_QB,         /* MLA: q_b_proj input (q_a_layernorm output) */
	S_KVB,        /* MLA: kv_b_proj input (kv_a_layernorm output) */
	S_FIXED,      /* experts follow: gate_up [E], then down [E] */
};

/* The steps a decoder layer is made of (chosen from the model description;
 * new layer kinds add steps). */
enum cal_step {
	STEP_ATTN_GQA,    /* input norm, q/k/v, q/k norm, RoPE, attention, o_proj, residual */
	STEP_MLP_DENSE,   /* post norm, gate|up GEMM, SwiGLU, down, residual */
	STEP_MOE,         /* post norm, router, sorted grouped experts, shared expert, residual */
	STEP_GDN,         /* input norm, in_proj_*, conv, gated delta rule, gated norm, out_proj,
			   * residual (engine/calib/gdn.c) */
	STEP_ATTN_MLA,    /* DeepSeek MLA: input norm, low-rank q and kv, interleaved RoPE,
			   * attention, o_proj, residual (engine/calib/mla.c) */
};

#define CAL_MAX_STEPS 4

/* Evaluation (eval.c): where the quantized forward fake-quantizes a
 * module's input (docs/eval.md). */
enum cal_eval_site {
	EQ_QKV,       /* q/k/v_proj input; MLA: q_a / kv_a (q_proj); GDN: in_proj_* */
	EQ_O,         /* o_proj input; GDN: out_proj */
	EQ_K,         /* the K cache (after RoPE), k_scale */
	EQ_V,         /* the V cache, v_scale */
	EQ_MLP_GU,    /* dense gate/up input */
	EQ_MLP_DOWN,  /* dense down input */
	EQ_EXP_GU,    /* routed expert e: gate/up input */
	EQ_EXP_DOWN,  /* routed expert e: down input */
	EQ_SH_GU,     /* shared expert gate/up input */
	EQ_SH_DOWN,   /* shared expert down input */
	EQ_QB,        /* MLA q_b_proj input */
	EQ_KVB,       /* MLA kv_b_proj input */
	EQ_COUNT
};
struct cal_eval;

/* Phases of a run, timed with opts.profile (calib.c: cal_prof). */
enum cal_phase {
	PH_OTHER,
	PH_EMBED,
	PH_UPLOAD,     /* waiting for the layer's weights to arrive */
	PH_ATTN,       /* attention step (norm, q/k/v, RoPE, attention, o_proj) */
	PH_LINATTN,    /* Gated DeltaNet step (norm, projections, conv, delta rule, out_proj) */
	PH_ROUTER,     /* MoE: norm, router, sort, gather */
	PH_EXPERTS,    /* MoE: grouped expert GEMMs, SwiGLU, combine, shared expert */
	PH_DENSE,      /* dense MLP */
	PH_OBS,        /* observers (amax of activations and of expert weights) */
	PH_READBACK,   /* per-layer statistics read-back and checks */
	PH_HIDDEN_IO,  /* hidden states moved between pinned host memory and the device */
	PH_COUNT
};

/* Pinned staging ring for weight uploads. */
#define CAL_RING_SLOTS 4

/* Most FP8 linears of one layer outside the routed experts (MLA 5, dense or
 * shared gate/up/down 3). */
#define CAL_FP8_JOBS 12

/* One layer's weights (back-end pointers; bf16 unless noted). */
struct cal_layer_w {
	const void *in_norm, *post_norm, *q_norm, *k_norm;
	enum cal_dtype in_norm_dt, post_norm_dt, q_norm_dt, k_norm_dt;
	const uint16_t *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo;
	const uint16_t *w13, *w2;            /* dense: [2I, H] gate|up, [H, I] */
	const uint16_t *router;              /* [E, H] */
	const uint16_t *e13, *e2;            /* [E, 2I, H], [E, H, I] */
	const uint16_t *s13, *s2, *sgate;    /* shared: [2Is, H], [H, Is], [1, H] */
	/* gated attention (CAL_ATTN_GATED_GQA): wq holds [2 nh hd, H], the query
	 * rows of every head first, then the gate rows (de-interleaved at load);
	 * bq likewise */
	/* Gated DeltaNet (linear layers), the Qwen3.5 split layout for both
	 * checkpoint layouts (Qwen3-Next's grouped rows permuted at load) */
	const uint16_t *lqkv, *lz, *lb, *la;  /* [conv_dim, H], [nv dv, H], [nv, H], [nv, H] */
	const uint16_t *lconv;               /* [conv_dim, K] */
	const uint16_t *lnorm;               /* [dv] */
	const uint16_t *lout;                /* [H, nv dv] */
	const float *a_log, *dt_bias;        /* [nv] (bf16-rounded, as HF loads them) */
	/* gpt_oss (gpt_oss.c): attention sinks, router bias, expert biases in
	 * the canonical order (per expert: I gate biases, then I up biases) */
	const float *sinks;                  /* [nh] */
	const uint16_t *router_b;            /* [E] */
	const uint16_t *eb13, *eb2;          /* [E, 2I], [E, H] */
	/* DeepSeek MLA (mla.c): wq is q_b_proj [nh qk, q_lora] (q_proj [nh qk, H]
	 * without q_lora_rank), wo [H, nh dv] */
	const uint16_t *wqa;                 /* q_a_proj [q_lora, H] */
	const uint16_t *wkva;                /* kv_a_proj_with_mqa [kv_lora + dr, H] */
	const uint16_t *wkvb;                /* kv_b_proj [nh (dn + dv), kv_lora] */
	const void *qa_norm, *kva_norm;      /* [q_lora], [kv_lora] */
	enum cal_dtype qa_norm_dt, kva_norm_dt;
	/* DeepSeek router: weight and e_score_correction_bias in fp32 (HF keeps
	 * both fp32) */
	const float *router_f32;             /* [E, H] */
	const float *corr_bias;              /* [E] */
	/* FP8 block source experts decoded on the back end (calib.c:
	 * fp8_experts_decode into e13 / e2 when the layer starts): the E4M3
	 * codes of every expert matrix in order (gate, up of expert 0, ...;
	 * down of expert 0, ...) and their weight_scale_inv grids */
	const uint8_t *fq13, *fq2;
	const float *fs13, *fs2;
	/* the layer's other FP8 linears, decoded the same way */
	struct cal_fp8_job {
		const uint8_t *q;
		const float *s;
		uint16_t *out;
		uint64_t rows, cols;
	} fjob[CAL_FP8_JOBS];
	int n_fjob;
};

/* Host staging of one layer: canonical host pointers plus the buffers it
 * had to allocate (the rest point into the checkpoint mapping). */
struct cal_layer_host {
	struct cal_layer_w w;
	void *owned[64];
	int n_owned;
	/* sizes (elements) of each pointer above, for the upload */
	uint64_t n_e13, n_e2, n_w13, n_w2, n_s13, n_s2;
	uint64_t n_wq, n_wo;                 /* MLA: elements of wq / wo (0: GQA sizes) */
	/* Per-expert checkpoints staged for a device: the routed experts stay
	 * in the mapping, w.e13 / w.e2 are NULL and the upload copies expert
	 * by expert (no host W13/W2).  e13_seg[2e] / [2e+1]: gate / up rows of
	 * expert e ([I, H] each), e2_seg[e]: its down rows ([H, I]). */
	const uint16_t **e13_seg, **e2_seg;
	/* FP8 block source experts left for the back end to decode (streamed
	 * weights): codes and scale grids per expert matrix, as e13_seg / e2_seg */
	const uint8_t **q13_seg, **q2_seg;
	const float **s13_seg, **s2_seg;
	/* FP8 linears left for the back end to decode into the slot of the
	 * struct cal_layer_w field at byte offset `field` (NULL here), from
	 * element `at` on */
	struct {
		size_t field;
		uint64_t at;
		const struct cal_st_tensor *t, *si;
	} dfr[CAL_FP8_JOBS];
	int n_dfr;
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
	const struct cal_checkpoint *ck; /* borrowed from the job, or own_* */
	const struct cal_catalog *cat;
	struct cal_backend *be, *host;  /* host: CPU back end for host-side work */
	struct cal_checkpoint *own_ck;   /* what cal_calib_open() opened itself */
	struct cal_catalog *own_cat;
	struct cal_backend *own_be;
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
	/* gated attention / Gated DeltaNet scratch (gdn.c; NULL when unused) */
	uint16_t *agate, *lqkv, *lconv, *lz, *lba, *lo;
	/* MLA scratch (mla.c; NULL when unused) */
	uint16_t *mqa, *mq, *mckv, *mkpe, *mkvb, *mk, *mv, *matt;
	float *rlogits;                  /* [mb_tokens, E] fp32 router scores (deepseek) */
	uint32_t *idx, *offsets, *sorted, *ppos;
	float *rw;
	float *obs_amax;                 /* [n_slots] back end */
	uint64_t *obs_hist;              /* [n_slots][CAL_HIST_BINS] back end (headroom.c) */
	struct cal_nonfinite *obs_nf;    /* [n_slots] back end */
	uint32_t *h_offsets;             /* [E + 1] host copy */

	/* streaming (calib.c) */
	int stream_weights;              /* layer weights copied into back-end arenas */
	void *arena[2];                  /* back end: weights of even / odd layers */
	uint64_t arena_bytes[2];
	void *ring[CAL_RING_SLOTS];      /* pinned host staging slots (on device) */
	uint64_t ring_bytes;
	unsigned ring_next;
	uint8_t ring_used[CAL_RING_SLOTS];
	int hidden_on_host;              /* hidden states in pinned host memory */
	uint16_t *hidden_host;           /* [n_tok, H] pinned (hidden_on_host) */
	uint16_t *xmb;                   /* [mb_tokens, H] back end (hidden_on_host) */
	float *w_amax;                   /* [2E] back end: expert weight amax (device path) */
	struct cal_nonfinite *w_nf;      /* [2] back end */
	uint32_t *w_off;                 /* [2 (E + 1)] back end: expert row offsets */
	int fp8_dev;                     /* FP8 source weights decoded on the back end */
	float *fp8_wamax;                /* [plan->n_q] back end: amax of decoded FP8 weights */
	struct cal_nonfinite *fp8_wnf;   /* [1] back end */
	uint8_t *fp8_wpend;              /* [plan->n_q] host: quantizers measured there */

	/* profile */
	int prof_phase;
	double prof_t, ph[PH_COUNT];
	double stage_s, stage_wait_s, total_s;
	uint64_t max_layer_bytes, model_weight_bytes, mem_budget;

	/* evaluation (eval.c): set by cal_eval_run for the length of its run */
	struct cal_eval *ev;
	int ev_quant;                    /* the forward being run is the quantized one */
	uint16_t *x_override;            /* cal_mb_x() returns this when set */

	/* expert parallelism (ranks.c): this engine is global rank `rank` of
	 * `nranks` (1: none) and holds experts e0 .. e0 + El - 1 of every MoE
	 * layer (one rank: 0 .. E - 1) */
	unsigned rank, nranks;
	int64_t e0, El;
	struct cal_ranks *rk;            /* the process's first engine: its ranks */
	struct cal_comm *comm;           /* during a run with ranks */
	struct cal_ep *ep;               /* dispatch buffers (during a run) */
	uint64_t *comm_bytes;            /* [num_layers + 1] bytes this engine's rank (the
					  * first engine: every local rank) sent per layer;
					  * last: the final norm */
	int fail_layer;                  /* tests: CALIBD_TEST_RANK_FAIL=RANK:LAYER[:stall] */
	int fail_stall;
	/* GPTQ, AWQ-lite, SmoothQuant (lin_run.c): set when the recipe's
	 * algorithm is one of them */
	struct cal_lin_run *lr;
	int lr_pass;                     /* the actq sites call the run's site hook */
	/* what the layer forward leaves out in the pass running (set by
	 * cal_lin_run_begin from the algorithm's obs_dropped and sites_only;
	 * all 0: nothing; docs/gptq.md "What a pass leaves out"):
	 * fwd_no_obs: the observers (their state is put back after the pass);
	 * fwd_sites: the pass's only product is the inputs of the actq sites
	 * in fwd_need (bit s: site s), its output is discarded: the forward
	 * ends once it has reached all of them (fwd_left, per micro-batch;
	 * cal_fwd_done) and runs the routed experts only when their own sites
	 * are needed (cal_fwd_routed) */
	int fwd_no_obs, fwd_sites;
	unsigned fwd_need, fwd_left;

	/* results */
	float *l_amax;                   /* [num_layers][S_FIXED] host; < 0: none */
	struct cal_moe_host *moe;        /* [num_layers] (tokens NULL for dense) */
	float lmhead_amax;
	float *q_amax;                   /* [plan->n_q] */
	uint8_t *q_has;
	float *hr_amax;                  /* [num_layers][n_slots] headroom amax; < 0: none */
	int done_layers;
	/* affine KV cache (kvcache.c): this layer's running K | V bias (back
	 * end, bf16 [K width + V width], cal_model_kv_dims), the forwards
	 * folded into it, every layer's final bias (host, bf16 [num_layers]
	 * [K width + V width]) */
	uint16_t *kv_bias;
	uint64_t kv_fwd;
	uint16_t *kv_bias_host;
};

/* The routed experts n_experts of this rank, first .. first + n - 1, on rows
 * x [rows, H] sorted by expert (offsets / h_offsets [n + 1] on the back end
 * and the host): observers S_FIXED + first.. (gate_up input) and
 * S_FIXED + E + first.. (down input), W13, SwiGLU, W2 into y [rows, H]
 * (may be x).  row_base: the rows' index base in non-finite reports. */
struct cal_experts_args {
	uint16_t *x;                     /* fake-quantized in place by the evaluation */
	uint64_t rows;
	const uint32_t *offsets, *h_offsets;
	uint64_t n_experts, first, row_base;
	uint16_t *gu, *act;              /* [rows, 2I], [rows, I] scratch */
	uint16_t *y;
};

/* ranks.c: expert parallelism (docs/expert_parallel.md) */
struct cal_ranks;
struct cal_ep;
struct cal_calib_src;
/* The rank layout of a new engine (every engine: one rank, all experts),
 * and for opts->ranks > 1 or a global world the engines of the other
 * local ranks. */
enum cal_status cal_ranks_open(struct cal_calib *c, const struct cal_calib_src *src,
			       struct cal_error *err);
void cal_ranks_free(struct cal_calib *c);
/* cal_calib_run over every local rank (threads), or NULL when c has none. */
enum cal_status cal_ranks_run(struct cal_calib *c, const struct cal_calib_tokens *tokens,
			      struct cal_error *err);
/* One rank's run (calib.c). */
enum cal_status cal_calib_run_rank(struct cal_calib *c, const struct cal_calib_tokens *tokens,
				   struct cal_error *err);
/* Tests: the failure CALIBD_TEST_RANK_FAIL injects when layer L starts. */
enum cal_status cal_ranks_test_fail(struct cal_calib *c, int32_t L, struct cal_error *err);
/* *v = the smallest *v over the ranks. */
enum cal_status cal_ranks_min(struct cal_calib *c, uint64_t *v, struct cal_error *err);
/* Micro-batch i is this rank's; rounds of micro-batches per layer. */
int cal_ranks_mine(const struct cal_calib *c, size_t i);
size_t cal_ranks_rounds(const struct cal_calib *c);
/* Dispatch buffers (alloc_run / free_run). */
enum cal_status cal_ep_alloc(struct cal_calib *c, struct cal_error *err);
void cal_ep_free(struct cal_calib *c);
/* The routed experts of a micro-batch over the ranks: c->xg [P, H] sorted
 * by expert (c->h_offsets) goes to the experts' owners, comes back into
 * c->yo in the same order.  P = 0: this rank has no micro-batch in this
 * round and only serves its experts. */
enum cal_status cal_ep_experts(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			       uint64_t P, struct cal_error *err);
/* A round without a micro-batch on this rank: serves its experts. */
enum cal_status cal_ep_idle(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			    struct cal_error *err);
/* Combines a layer's observers over the ranks, exactly: amax by max,
 * non-finite counts by sum and first index by min, expert token counts by
 * sum (am, nf: [n_slots] host; L < 0: the final norm). */
enum cal_status cal_ep_reduce_obs(struct cal_calib *c, int32_t L, float *am,
				  struct cal_nonfinite *nf, struct cal_error *err);
/* The expert weight amax of layer L from their owners. */
enum cal_status cal_ep_reduce_weights(struct cal_calib *c, int32_t L, struct cal_error *err);
/* Bytes this rank's endpoint sent since the last call, booked on layer L. */
void cal_ep_count_layer(struct cal_calib *c, int32_t L);

/* layer.c */
enum cal_status cal_layer_experts(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				  const struct cal_experts_args *a, struct cal_error *err);
enum cal_status cal_layer_steps(const struct cal_calib *c, int32_t L, enum cal_step *steps,
				int *n_steps, struct cal_error *err);
enum cal_status cal_layer_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
				struct cal_error *err);
void cal_layer_host_free(struct cal_layer_host *lh);
enum cal_status cal_layer_forward(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				  const struct cal_mb *mb, struct cal_error *err);
/* One step of layer L on the hidden states x of micro-batch mb (no S_OUT
 * observer). */
enum cal_status cal_layer_step_run(struct cal_calib *c, int32_t L, enum cal_step step,
				   const struct cal_layer_w *w, const struct cal_mb *mb, uint16_t *x,
				   struct cal_error *err);

/* eval.c: the evaluation's parts of the run loop (calib.c calls them when
 * c->ev is set) */
enum cal_status cal_eval_begin(struct cal_calib *c, struct cal_error *err);
/* Back-end bytes per micro-batch token the evaluation adds (calib.c sizes
 * micro-batches with it): teacher-forced copy, fake-quant scratch, logits. */
uint64_t cal_eval_token_bytes(const struct cal_calib *c);
enum cal_status cal_eval_layer(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			       struct cal_error *err);
enum cal_status cal_eval_end(struct cal_calib *c, struct cal_error *err);
/* Fake-quantizes x [rows, cols] (back end) in place as the input of `site`
 * of layer L (expert e for the routed-expert sites) when the forward being
 * run is the evaluation's quantized one (c->ev_quant); a no-op otherwise. */
enum cal_status cal_eval_actq(struct cal_calib *c, int32_t L, int site, int64_t expert,
			      uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err);
/* Whether the Gated DeltaNet in_proj_b / a GEMMs of the forward being run
 * read the input before the actq site EQ_QKV changes it: the evaluation's
 * quantized forward when they have no quantizer of their own (eval_weights.c
 * load_gdn). */
int cal_eval_gdn_ba_raw(const struct cal_calib *c);
/* The Hadamard blocks of Q, K and V (0: not rotated) of the forward being
 * run: a calibration's plan's; in an evaluation the evaluated checkpoint's
 * in its quantized forward, none in the original one (eval.c). */
const uint32_t *cal_eval_kv_rot(const struct cal_calib *c);
/* The input of a quantized module at actq site `site` of layer L (expert e
 * for the routed-expert sites): GPTQ's passes (gptq_run.c), AWQ's input
 * cache (awq_run.c), the evaluation's fake quantization (eval.c), or
 * nothing (layer.c). */
enum cal_status cal_layer_actq(struct cal_calib *c, int32_t L, int site, int64_t expert,
			       uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err);
/* Whether the rest of the layer's forward may be left out: a sites-only
 * pass (c->fwd_sites) that has reached every site it needs. */
static inline int cal_fwd_done(const struct cal_calib *c)
{
	return c->fwd_sites && !c->fwd_left;
}
/* Whether the forward runs the routed experts (router, expert GEMMs,
 * combine): their output feeds only the layer's output, so a sites-only
 * pass runs them only for their own sites (the same on every rank). */
static inline int cal_fwd_routed(const struct cal_calib *c)
{
	return !c->fwd_sites || (c->fwd_need & (1u << EQ_EXP_GU | 1u << EQ_EXP_DOWN));
}
/* Gated attention: row r of the engine's q_proj (query rows of every head,
 * then the gate rows) is row map[r] of the checkpoint's ([2 nh hd]). */
void cal_gated_q_map(const struct cal_calib *c, uint32_t *map);
/* gptq_run.c: GPTQ in the forward (docs/gptq.md "In the engine"), a
 * linear run of three passes per layer (cal_gptq_algo).  Its site hook
 * runs in passes 1 and 2 at every actq site; its round_end, after each round of
 * micro-batches of a pass: over several ranks, pass 1 gathers the round's
 * Hessian input rows from every rank and adds them in micro-batch order
 * (the bytes of one rank); a no-op otherwise. */
struct cal_gptq_run;
/* Fields of struct cal_layer_w holding a decoder layer's linears (GPTQ's
 * and AWQ's passes); cal_layer_field gives the field's address in w. */
enum { F_WQ, F_WK, F_WV, F_WO, F_W13, F_W2, F_S13, F_S2, F_E13, F_E2,
       F_WQA, F_WKVA, F_WKVB,                    /* MLA */
       F_LQKV, F_LZ, F_LB, F_LA, F_LOUT,         /* Gated DeltaNet */
       F_COUNT };
const uint16_t **cal_layer_field(struct cal_layer_w *w, int f);
/* The actq site (enum cal_eval_site) of linear module m's input, its field
 * *f and its first element *at in that field; -1 for a module that is not
 * one of the attention (GQA, gated, MLA, Gated DeltaNet) / dense MLP /
 * shared-expert linears with an enabled weight quantizer.  Fused GDN
 * in_proj_qkvz / in_proj_ba: the first of their two fields (cal_lin_layout
 * adds the second and the row order). */
int cal_linear_site(const struct cal_calib *c, const struct cal_plan_module *m, int *f,
		    uint64_t *at, const struct cal_layer_host *lh);

/* What AWQ and SmoothQuant do not run (their capability checks): the
 * model's (an attention kind other than plain GQA, gated GQA and MLA, which
 * are every kind model.h has, so none today) and a quantizer's (attention Q/P BMM, outputs, a quantized shared_expert_gate
 * or lm_head weight); NULL when none. */
const char *cal_linear_algo_model_why(const struct cal_model_desc *d);
const char *cal_linear_algo_q_why(const struct cal_plan *p, const struct cal_plan_q *q);
/* CAL_OK when why is NULL, else CAL_ERR_UNSUPPORTED "<model_type>:
 * algorithm <algo> with <why> is not implemented (<doc>)". */
enum cal_status cal_linear_algo_refuse(const struct cal_model_desc *d, const char *algo,
				       const char *why, const char *doc, struct cal_error *err);

/*
 * lin_run.c: a linear run, what GPTQ, AWQ-lite and SmoothQuant share
 * (docs/gptq.md, docs/awq.md, docs/smoothquant.md "In the engine").  Per
 * decoder layer: the list of linears the algorithm rewrites (their host
 * weights kept for the exporter until the next layer's list), the layer's
 * forward pass(es) with layer.c's actq sites feeding the algorithm while
 * c->lr_pass is set, the algorithm's solve, search or smoothing, and the
 * input amaxes it leaves; its statistics at the end.  calib.c opens one when
 * the recipe's algorithm has a struct cal_lin_algo (lin_algos.def) and
 * calls the cal_lin_run_* steps; the algorithm files fill in the hooks.
 */
/* A linear of the layer the run rewrites: plan module, weight field f at
 * element offset at, input site (cal_linear_site), [rows, cols]; what the
 * exporter gets (cal_calib_lin_weight); the algorithm's own fields follow
 * it in its elements. */
/* Rows of a linear in the engine's layer layout: `rows` rows of field f
 * from element `at` on. */
struct cal_lin_part {
	int f;
	uint64_t at, rows;
};
struct cal_lin {
	size_t mod;
	int f, site;
	uint64_t at, rows, cols;
	struct cal_lin_part part[2]; /* its rows in the engine's layout (Qwen3-Next's
				      * fused in_proj: two fields); part[0] is f, at */
	int n_part;
	uint32_t *map;     /* row r of the engine's layout is the checkpoint's row
			    * map[r] (gated q_proj, Qwen3-Next in_proj); NULL: same */
	uint16_t *w;       /* host bf16 [rows, cols], checkpoint row order; NULL: none */
	uint16_t *pqs;     /* host bf16 [cols]: its pre_quant_scale (AWQ, SmoothQuant) */
	int pqs_out;       /* the exporter writes pqs (not fused elsewhere) */
	float in_amax;     /* its input amax as the algorithm leaves it (AWQ, SmoothQuant) */
	int has_in_amax;   /* in_amax replaces the observed one of an enabled input
			    * quantizer (cal_lin_run_map) */
};

/* The start of every algorithm's run (c->lr). */
struct cal_lin_run {
	const struct cal_lin_algo *a;
	int32_t L;         /* the layer of lin; -1: none yet */
	int pass;          /* the pass running or last run */
	void *lin;         /* n_lin elements of a->lin_size bytes, each a struct
			    * cal_lin and the algorithm's own fields */
	size_t n_lin, cap_lin;
	uint64_t cols[EQ_COUNT]; /* columns of the input of site s's linears; 0: none */
	json_t *report;    /* its statistics' per-linear objects */
	double t;          /* seconds of the algorithm's own work */
	int full_passes;   /* tests: CALIBD_TEST_FULL_PASSES set, the forward leaves
			    * nothing out (obs_dropped, sites_only ignored) */
	const char *site_dump; /* CALIBD_TEST_SITE_DUMP (a diagnostic), or NULL */
	/* seconds of each pass over all layers, with the algorithm's end
	 * hook; the back end is synchronised at each pass's end when the run
	 * is profiled (CALIBD_PROFILE_PASSES set), else a pass's queued GPU
	 * work counts where it is next waited for */
	double pass_s[4], t_pass;
	int sync_passes;
};

struct cal_lin_algo {
	enum cal_calib_method method;
	const char *name;            /* in messages ("gptq: out of memory") */
	const char *key, *time_key;  /* its statistics object's key, its seconds' key */
	int passes;                  /* forward passes of each layer */
	int site_pass;               /* the first pass whose actq sites call site */
	int all_sites;               /* site sees every actq site (else the sites of its
				      * linears, their column count checked) */
	int site_writes;             /* site fake-quantizes its input in place (GPTQ): a
				      * site whose input is read again gets a copy */
	/* bit p: pass p's observer state is put back after it (the forward
	 * skips the observers); bit p: pass p's only product is the inputs of
	 * the sites of its linears, its output discarded (the forward ends
	 * after the last of them: c->fwd_sites) */
	unsigned obs_dropped, sites_only;
	size_t size, lin_size;       /* its run, its linear elements */
	/* the plan's capability check (engine/calib.h) */
	enum cal_status (*check)(const struct cal_plan *p, struct cal_error *err);
	/* its own fields of the zeroed run c->lr (NULL: none) */
	enum cal_status (*init)(struct cal_calib *c, struct cal_error *err);
	/* whether plan module m of the layer is one of its linears: fills the
	 * element lin (zeroed, its struct cal_lin's mod, rows and cols set) and
	 * gives its input site; -1 not one, -2 out of memory (lin left owning
	 * nothing).  NULL: cal_lin_layout */
	int (*linear)(const struct cal_calib *c, const struct cal_plan_module *m,
		      const struct cal_layer_host *lh, void *lin);
	/* frees what the layer's linears and state own beyond w and pqs; the
	 * run's back-end buffers (calib.c's free_run); the rest of the run
	 * (NULL: nothing) */
	void (*drop_layer)(struct cal_calib *c);
	void (*release)(struct cal_calib *c);
	void (*free)(struct cal_calib *c);
	/* pass `pass` of layer L (r->pass): begin (NULL: nothing) may set *use,
	 * the weights the pass runs with; round_end after each round of
	 * micro-batches (NULL: nothing) */
	enum cal_status (*begin)(struct cal_calib *c, int32_t L, int pass,
				 const struct cal_layer_host *lh, const struct cal_layer_w *w,
				 const struct cal_layer_w **use, struct cal_error *err);
	enum cal_status (*site)(struct cal_calib *c, int32_t L, int site, int64_t expert,
				uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err);
	enum cal_status (*round_end)(struct cal_calib *c, struct cal_error *err);
	enum cal_status (*end)(struct cal_calib *c, int32_t L, int pass, const struct cal_layer_w *w,
			       struct cal_error *err);
	/* its statistics before "linears" and the seconds (new reference) */
	json_t *(*params)(const struct cal_calib *c);
};
#define CAL_LIN_ALGO(var) extern const struct cal_lin_algo var;
#include "engine/calib/lin_algos.def"
#undef CAL_LIN_ALGO

/* Opens c->lr when the plan's algorithm runs in the forward (after its
 * check), else leaves it NULL. */
enum cal_status cal_lin_run_open(struct cal_calib *c, struct cal_error *err);
void cal_lin_run_release(struct cal_calib *c);
void cal_lin_run_free(struct cal_calib *c);
/* The steps calib.c and layer.c run (see struct cal_lin_algo). */
enum cal_status cal_lin_run_begin(struct cal_calib *c, int32_t L, int pass,
				  const struct cal_layer_host *lh, const struct cal_layer_w *w,
				  const struct cal_layer_w **use, struct cal_error *err);
enum cal_status cal_lin_run_site(struct cal_calib *c, int32_t L, int site, int64_t expert,
				 uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err);
enum cal_status cal_lin_run_round_end(struct cal_calib *c, struct cal_error *err);
enum cal_status cal_lin_run_end(struct cal_calib *c, int32_t L, int pass,
				const struct cal_layer_w *w, struct cal_error *err);
/* After the layer's statistics are mapped (cal_obs_map_layer): the
 * in_amax of the linears that have one replace the observed input amax. */
void cal_lin_run_map(struct cal_calib *c, int32_t L);
/* The run's statistics object (new reference). */
json_t *cal_lin_run_stats(const struct cal_calib *c);
/* Linear i of the run. */
struct cal_lin *cal_lin_at(const struct cal_lin_run *r, size_t i);
/* The default linear hook: l's input site (cal_linear_site), field, rows
 * in the engine's layout and their checkpoint order (l->part, l->map,
 * allocated when the orders differ); -1 for a module the run does not
 * rewrite, -2 out of memory. */
int cal_lin_layout(const struct cal_calib *c, const struct cal_plan_module *m,
		   const struct cal_layer_host *lh, struct cal_lin *l);
/* l's weight from the layer's fields dw into host out [rows, cols]: in the
 * engine's row order, or the checkpoint's when ckpt is set (what AWQ and
 * SmoothQuant search on and hand the exporter). */
enum cal_status cal_lin_load(struct cal_calib *c, const struct cal_layer_w *dw,
			     const struct cal_lin *l, uint16_t *out, int ckpt,
			     struct cal_error *err);
/* Rows of linear l from the engine's order (src) to the checkpoint's
 * (dst, row map[r] <- row r), width bf16 values a row. */
void cal_lin_to_ckpt(const struct cal_lin *l, uint16_t *dst, const uint16_t *src,
		     uint64_t width);
/* The export's resmoothing of the layer's linears reading `site` (at most
 * 8; docs/awq.md, docs/smoothquant.md "Export"): one pre_quant_scale for
 * all, each weight re-folded (cal_resmooth_group with blocks of blk along a
 * row; with_amax: the group's input amax into each in_amax).  Does nothing
 * for fewer than min_n linears. */
enum cal_status cal_lin_resmooth(struct cal_calib *c, int site, uint64_t blk, int with_amax,
				 size_t min_n, struct cal_error *err);

/* awq_run.c: AWQ-lite in the forward (docs/awq.md "In the engine"), a
 * linear run of one pass (cal_awq_algo) whose site hook caches the
 * linears' inputs; its search leaves the searched linears' NVFP4 input
 * amax (nvfp4_awq) for cal_lin_run_map. */
struct cal_awq_run;

/* sq_run.c: SmoothQuant in the forward (docs/smoothquant.md "In the
 * engine"), as awq_run.c (cal_sq_algo); every smoothed linear's input amax
 * goes to cal_lin_run_map. */
struct cal_sq_run;

/* A layer tensor as bf16 (the mapping when already bf16, else a converted
 * copy owned by lh); numel is checked.  Missing: CAL_ERR_FORMAT. */
enum cal_status cal_layer_tensor(struct cal_calib *c, struct cal_layer_host *lh,
				 enum cal_role role, enum cal_part part, int32_t L, uint64_t numel,
				 const uint16_t **ret, struct cal_error *err);
/* A buffer owned by lh (freed with it); NULL when out of memory. */
void *cal_layer_own(struct cal_layer_host *lh, size_t bytes);

/* Elements of the weight_scale_inv grid of an [out, in] FP8 weight. */
uint64_t cal_fp8_grid(const struct cal_model_desc *d, uint64_t out, uint64_t in);

/*
 * The mixers beyond grouped-query attention, each in its own file with the
 * same entry points cal_<k>_*: mla.c (k = mla, DeepSeek-V3 multi-head
 * latent attention) and gdn.c (k = gdn, Gated DeltaNet layers and the
 * gated-attention scratch).  _check: the model's settings against what the
 * engine runs; _token_bytes: scratch bytes per micro-batch token; _alloc,
 * _free: that scratch (back end); _stage: the mixer weights of layer L
 * into lh (GDN: canonical layout); _step: the mixer's forward of mb.
 */
#define CAL_MIXER_ENTRY_POINTS(k)                                                                 \
	enum cal_status cal_##k##_check(const struct cal_model_desc *d, struct cal_error *err);   \
	uint64_t cal_##k##_token_bytes(const struct cal_calib *c);                                \
	enum cal_status cal_##k##_alloc(struct cal_calib *c, struct cal_error *err);              \
	void cal_##k##_free(struct cal_calib *c);                                                 \
	enum cal_status cal_##k##_stage(struct cal_calib *c, int32_t L,                           \
					struct cal_layer_host *lh, struct cal_error *err);        \
	enum cal_status cal_##k##_step(struct cal_calib *c, int32_t L, const struct cal_layer_w *w, \
				       const struct cal_mb *mb, uint16_t *x, struct cal_error *err);
CAL_MIXER_ENTRY_POINTS(mla)
CAL_MIXER_ENTRY_POINTS(gdn)
#undef CAL_MIXER_ENTRY_POINTS

/* mla.c */
uint64_t cal_mla_layer_bytes(const struct cal_calib *c);
/* Host source of MLA weight quantizer `proj` ("q_a_proj", ...), or NULL. */
void cal_mla_weight(const struct cal_calib *c, const struct cal_layer_host *lh, const char *proj,
		    const uint16_t **ret, uint64_t *ret_n);
/* The observer slot of MLA projection `proj`'s input. */
int cal_mla_input_slot(const char *proj);
/* A norm weight of layer L as stored (f16 widened to f32); layer.c. */
enum cal_status cal_layer_norm_tensor(struct cal_calib *c, struct cal_layer_host *lh,
				      enum cal_role role, int32_t L, uint64_t numel,
				      const void **ret, enum cal_dtype *ret_dt, struct cal_error *err);
/* Observer slot `slot` folds in max|x| of rows x cols (layer.c). */
enum cal_status cal_layer_observe(struct cal_calib *c, const uint16_t *x, uint64_t rows,
				  uint64_t cols, uint64_t row0, int slot, struct cal_error *err);
/* y[m, n] = x[m, k] W^T (+ b) (layer.c). */
enum cal_status cal_layer_gemm(struct cal_calib *c, const uint16_t *x, const uint16_t *w,
			       const uint16_t *b, uint16_t *y, uint64_t m, uint64_t n, uint64_t k,
			       struct cal_error *err);
/* RMSNorm of the model's kind with weight w (layer.c). */
enum cal_status cal_layer_rmsnorm(struct cal_calib *c, const uint16_t *x, uint16_t *y,
				  uint64_t rows, uint64_t cols, const void *w, enum cal_dtype wdt,
				  float eps, struct cal_error *err);

/* gdn.c */
struct cal_gdn_dims {
	uint64_t nk, nv, dk, dv, kern, cd, vd; /* cd = conv_dim = 2 nk dk + nv dv, vd = nv dv */
};
void cal_gdn_dims(const struct cal_model_desc *d, struct cal_gdn_dims *ret);
/* Qwen3-Next: row r of the split layout qkv | z (m1, cd + vd rows) and b | a
 * (m2, 2 nv rows) is row m1[r] / m2[r] of in_proj_qkvz / in_proj_ba. */
void cal_gdn_fused_maps(const struct cal_gdn_dims *g, uint32_t *m1, uint32_t *m2);
/* Host source of weight quantizer `proj` ("in_proj_qkvz", "out_proj", ...)
 * of a staged linear layer: *ret and *ret_n (elements), or NULL. */
void cal_gdn_weight(const struct cal_calib *c, const struct cal_layer_w *w, const char *proj,
		    const uint16_t **ret, uint64_t *ret_n);

/* gpt_oss.c: GPT-OSS (docs/gpt_oss.md) */
/* Checks what the engine runs of a gpt_oss description. */
enum cal_status cal_oai_check(const struct cal_model_desc *d, struct cal_error *err);
/* Stages layer L's sinks, router bias, expert biases and, from an MXFP4
 * source, the experts decoded into w.e13 / w.e2 (canonical layout). */
enum cal_status cal_oai_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
			      struct cal_error *err);
/* fp32 norm weights as transformers 5 runs them: loaded in the model's
 * bf16 (so rounded to bf16), the product with the fp32 normalised input
 * then taken in fp32 and rounded once (CAL_RMS_F32W). */
void cal_oai_norm_weight(const float *w, uint64_t n, float *ret);
/* YaRN inverse frequencies (HF's yarn init, truncate honoured). */

/* The hidden states of micro-batch mb in back-end memory (the resident
 * buffer, or the micro-batch buffer filled from pinned host memory). */
uint16_t *cal_mb_x(const struct cal_calib *c, const struct cal_mb *mb);
/* Profiling: the time since the last call goes to the current phase, then
 * `phase` is current (syncs the back end only with opts.profile). */
void cal_prof(struct cal_calib *c, int phase);
/* RoPE frequencies of the model (fp32, as HF computes them). */
enum cal_status cal_rope_inv_freq(const struct cal_model_desc *d, float *inv, int64_t rd,
				  struct cal_error *err);

/* ---- shared helpers (calib.c, stats.c, weights.c, ranks.c) ---------------------- */

static inline uint64_t cal_al256(uint64_t b)
{
	return (b + 255) & ~(uint64_t)255;
}

static inline enum cal_status cal_be_alloc(struct cal_calib *c, size_t bytes, void *ret,
					   struct cal_error *err)
{
	void **r = ret;
	return cal_backend_alloc(c->be, bytes ? bytes : 1, r, err);
}

static inline void cal_be_free(struct cal_calib *c, void *p)
{
	cal_backend_dealloc(c->be, p);
}

/* kvcache.c: Q/K/V rotation and the KV observers (affine: running bias) */
enum cal_status cal_kv_alloc(struct cal_calib *c, struct cal_error *err);
void cal_kv_free(struct cal_calib *c);
/* Rotates Q, K, V of micro-batch mb as the plan says, then observes K and V
 * (S_K / S_V: max|x|, or max|x - bias| for an affine cache); GQA's q / kb /
 * vb, MLA's per-head mq / mk / mv. */
enum cal_status cal_kv_observe(struct cal_calib *c, const struct cal_mb *mb,
			       struct cal_error *err);
/* After layer L: the affine bias to the host. */
enum cal_status cal_kv_read_back(struct cal_calib *c, int32_t L, struct cal_error *err);

/* stats.c: the observers of one layer (L < 0: the final norm) */
enum cal_status cal_obs_reset(struct cal_calib *c, struct cal_error *err);
/* Reads the observers back (non-finite values are an error naming the
 * module) into c->l_amax / the MoE statistics (every rank's, combined). */
enum cal_status cal_obs_read_back(struct cal_calib *c, int32_t L, struct cal_error *err);
/* The amax of plan quantizers that come from the forward pass of layer L. */
void cal_obs_map_layer(struct cal_calib *c, int32_t L);

/* headroom.c: the nvfp4_act_headroom observer (no-ops for other algorithms) */
int cal_hr_on(const struct cal_calib *c);
enum cal_status cal_hr_alloc(struct cal_calib *c, struct cal_error *err);
enum cal_status cal_hr_reset(struct cal_calib *c, struct cal_error *err);
/* Counts x [rows, cols] into slot's histogram (input slots only). */
enum cal_status cal_hr_observe(struct cal_calib *c, const uint16_t *x, uint64_t rows,
			       uint64_t cols, int slot, struct cal_error *err);
/* Routed experts: segment e of x (host offsets) into slot slot0 + e. */
enum cal_status cal_hr_observe_segments(struct cal_calib *c, const uint16_t *x, uint64_t cols,
					const uint32_t *h_offsets, uint64_t n, uint64_t slot0,
					struct cal_error *err);
/* Layer L's histograms (every rank's, summed) into c->hr_amax; am: the
 * slots' combined max, tokens: the experts' token counts (NULL: dense). */
enum cal_status cal_hr_read_back(struct cal_calib *c, int32_t L, const float *am,
				 const uint64_t *tokens, struct cal_error *err);
/* Whether quantizer spec sp takes the headroom amax (NVFP4 dynamic input). */
int cal_hr_quantizer(const struct cal_calib *c, const struct cal_qspec *sp);
/* ranks.c: v[0..n) summed over the ranks (u64, exact). */
enum cal_status cal_ep_sum_u64(struct cal_calib *c, uint64_t *v, uint64_t n,
			       struct cal_error *err);

/* weights.c: weight amax, layer bounds, staging and upload */
void cal_w_lm_head_amax(struct cal_calib *c);
uint64_t cal_w_layer_bytes(const struct cal_calib *c, int32_t L);
/* host -> back end, n bytes (through the pinned ring on a device) */
enum cal_status cal_w_copy_in(struct cal_calib *c, char *dst, const char *src, uint64_t n,
			      struct cal_error *err);
/* Starts reading layer L's source tensors (this rank's experts) into the
 * page cache ahead of its staging (cal_st_tensor_willneed); nothing for L
 * outside the model. */
void cal_w_prefetch(const struct cal_calib *c, int32_t L);
/* Stages layer L into arena `slot`: canonical layout, weight amax, copy. */
enum cal_status cal_w_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
			    struct cal_layer_w *dw, int slot, struct cal_error *err);
/* cal_w_stage on a thread */
struct stage_job {
	struct cal_calib *c;
	int32_t L;
	struct cal_layer_host *lh;
	struct cal_layer_w *dw;
	int slot;
	enum cal_status st;
	struct cal_error err;
};
void *cal_w_stage_main(void *p);
enum cal_status cal_w_fp8_decode(struct cal_calib *c, const struct cal_layer_w *w,
				 struct cal_error *err);
enum cal_status cal_w_fp8_amax_enqueue(struct cal_calib *c, int32_t L,
				       const struct cal_layer_host *lh, const struct cal_layer_w *dw,
				       struct cal_error *err);
enum cal_status cal_w_fp8_amax_finish(struct cal_calib *c, struct cal_error *err);
enum cal_status cal_w_expert_amax_enqueue(struct cal_calib *c, int32_t L,
					  const struct cal_layer_w *w, struct cal_error *err);
enum cal_status cal_w_expert_amax_finish(struct cal_calib *c, int32_t L, struct cal_error *err);

#endif
