/*
 * eval_internal.h — what the evaluation's files share (engine/calib/eval.c,
 * eval_weights.c, eval_kl.c): the state of one `calibd eval` run.
 */
#ifndef CAL_EVAL_INTERNAL_H
#define CAL_EVAL_INTERNAL_H

#include <stdio.h>

#include "engine/calib/calib_internal.h"

#define N_WORST 10

enum afmt {
	AQ_NONE,
	AQ_NVFP4,  /* per 16-block, global scale = input_scale */
	AQ_FP8,    /* per tensor, scale = input_scale */
	AQ_MXFP8,  /* per 32-block, E8M0 scales, dynamic (no scale) */
	AQ_INT8,   /* per tensor, scale = input_scale */
};

struct eq_site {
	enum afmt fmt;
	float scale;
	/* the affine KV cache's bias (k_bias / v_bias), or NULL: back end,
	 * [2, cols] bf16, -b then b (fake quantization of x - b, plus b) */
	const uint16_t *bias;
	/* the linears' pre_quant_scale (int8_sq, AWQ), multiplied into the
	 * input before its quantizer: the exported tensor (host, NULL: none)
	 * and its copy on the back end (bf16 [cols]); how many linears read
	 * the input (they must all have the same pre_quant_scale) */
	const struct cal_st_tensor *pqs_t;
	const uint16_t *pqs;
	int linears;
};

struct worst {
	double kl;
	uint64_t tok;
	uint32_t id, next, top_o, top_q;
};

struct cal_eval {
	const struct cal_checkpoint *q;
	const struct cal_calib_tokens *tk;
	FILE *logits_out, *logits_orig_out;
	float kv_default;                /* kv_cache_quant_algo FP8 / NVFP4 without scales: 1.0, else 0 */
	enum afmt kv_fmt;                /* the KV cache's: AQ_NVFP4 (NVFP4, NVFP4_AFFINE), else AQ_FP8 */
	uint32_t kv_rot[3];              /* calibd_report.json's kv_rotation: Q, K, V blocks (0: none) */
	struct eq_site site[EQ_COUNT];
	struct eq_site *exp_gu, *exp_dn; /* [E] */
	struct eq_site lm_site;
	int gdn_ba_raw;                  /* this layer's in_proj_b / a: cal_eval_gdn_ba_raw */
	/* back end */
	uint16_t *xq, *xtf, *logits_o, *logits_q;
	uint16_t *xin, *yref;            /* a step's input, the routed experts' outputs */
	double *b_sums;                  /* err_rows' sums [mb_tokens * kk, 2] */
	uint8_t *qbuf, *sbuf;
	uint64_t fq_elems;
	/* host */
	uint16_t *ha, *hb;               /* logits for --logits-out (else NULL) */
	double *r_sums;                  /* b_sums downloaded */
	uint32_t *offref;
	uint64_t *tok_save;
	uint32_t *next;                  /* [n_tok]: next token id, UINT32_MAX at a sequence end */
	uint32_t *seq;                   /* [n_tok]: sequence of the token */
	uint32_t *maps[3];               /* row maps (0 gated q_proj; GDN in_proj 1 qkvz, 2 ba), the
					  * same every layer: made once (eval_weights.c new_map) */
	/* results */
	json_t *layers;
	double *kl;
	uint64_t n_pred, top1;
	double nll_o, nll_q;
	struct worst worst[N_WORST];
	size_t n_worst;
	uint64_t n_qweights, n_qacts;
	double t0;
	/* per-layer KL (the logit lens, docs/eval.md): the final norm and the
	 * source lm_head on the back end, the sampled positions */
	void *norm_w, *lm_src;
	enum cal_dtype norm_dt;
	uint32_t *lens_idx, *lens_idx_h; /* [n_lens] back end, host */
	uint8_t *lens_at;                /* [n_tok] host: position sampled */
	uint64_t n_lens, lens_max;
	double lens_prev, lens_final;
	/* per-row results of kl_rows: the logit_kl op's out [mb_tokens, 3] and
	 * argmax [mb_tokens, 2], on the back end (b_) and downloaded (r_); the
	 * next tokens [n_tok] on the back end */
	double *r_out, *b_out;
	uint32_t *r_am, *b_am, *b_next;
};

#define MAX_OWNED 40 /* a layer's buffers: weights, row maps, the two KV biases, the
		      * pre_quant_scales */

/* eval_weights.c */
/* Fake-quantizes x [rows, cols] (back end) in place as site s. */
enum cal_status cal_eval_fake_quant(struct cal_calib *c, const struct eq_site *s, uint16_t *x,
				    uint64_t rows, uint64_t cols, struct cal_error *err);
/* The quantized weights of layer L (qw starts as the source's) and the
 * sites of its inputs; new back-end buffers go to owned[*n_owned++]. */
enum cal_status cal_eval_load_layer(struct cal_calib *c, int32_t L, enum cal_step mixer,
				    struct cal_layer_w *qw, void **owned, int *n_owned,
				    struct cal_error *err);
/* lm_head as the quantized model runs it, a new back-end buffer (*ret). */
enum cal_status cal_eval_load_lm_head(struct cal_calib *c, void **ret, struct cal_error *err);

#endif
