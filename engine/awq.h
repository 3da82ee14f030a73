/*
 * awq.h — AWQ-lite for one linear with INT4 block weights (docs/awq.md),
 * modelopt's `awq_lite`: a per-input-channel scale
 * s = act^a / wscale^(1-a) (normalised) is searched over a = 0, step, .., 1
 * by the calibration batches' output error with the weight quantized as
 * W s and the input as x / s; the best scale is folded into the weight and
 * exported as the input's pre_quant_scale.  Host memory in and out; the
 * search's GEMMs run as back-end ops (cal_awq_dev).
 */
#ifndef CAL_ENGINE_AWQ_H
#define CAL_ENGINE_AWQ_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CAL_AWQ_MAX_ALPHAS 1024

/* The search's weight fake quantizer: INT4 blocks of 128 (int4_awq) or
 * modelopt's dynamic NVFP4, blocks of 16 (nvfp4_awq). */
enum cal_awq_wq { CAL_AWQ_WQ_INT4, CAL_AWQ_WQ_NVFP4 };

struct cal_awq_out {
	uint16_t *pre_quant_scale; /* [cols] bf16 */
	uint16_t *w;               /* [rows, cols] bf16: the folded weight */
	float *w_amax;             /* [rows * cols / 128]: its block amax */
	double *loss;              /* [CAL_AWQ_MAX_ALPHAS] or NULL: loss per alpha */
	unsigned n_alpha;          /* alphas searched */
	float best_alpha;
};

/*
 * w: bf16 [rows, cols], cols % 128 == 0; x: bf16 [tokens, cols] the
 * linear's calibration inputs, taken in batches of `batch` rows (modelopt's
 * forward-loop steps: the statistics are per batch); alpha_step in (0, 1].
 * Errors: CAL_ERR_INVALID, CAL_ERR_NOMEM.
 */
enum cal_status cal_awq_lite_int4(struct cal_backend *host, const uint16_t *w, uint64_t rows,
				  uint64_t cols, const uint16_t *x, uint64_t tokens,
				  uint64_t batch, double alpha_step, struct cal_awq_out *out,
				  struct cal_error *err);

/*
 * The same search with the weight fake quantizer wq (w_amax then holds the
 * amax per block of wq: 128 or 16 input values; cols a multiple of it).
 * in_amax: NULL, or the input quantizer's per-tensor amax after the fold,
 * as modelopt sets it for a quantized input: bf16 of the max over channels
 * of (the channel's amax over all tokens) * (its fp32 pre_quant_scale).
 */
enum cal_status cal_awq_lite(struct cal_backend *host, enum cal_awq_wq wq, const uint16_t *w,
			     uint64_t rows, uint64_t cols, const uint16_t *x, uint64_t tokens,
			     uint64_t batch, double alpha_step, struct cal_awq_out *out,
			     float *in_amax, struct cal_error *err);

/* Where the search runs (docs/awq.md "What runs where"): be, the back end
 * of its GEMMs, input scaling and loss sums (the engine's, CPU or CUDA);
 * host, a CPU back end whose threads make each alpha's fake-quantized
 * weight; max_bytes, be's memory for one chunk of tokens (x, the scaled x,
 * both outputs; at least one token; 0: CAL_AWQ_CHUNK_BYTES).  On the CPU
 * the result does not depend on the chunks; cuBLAS's kernels depend on the
 * chunk's token count. */
struct cal_awq_dev {
	struct cal_backend *be, *host;
	uint64_t max_bytes;
};

#define CAL_AWQ_CHUNK_BYTES ((uint64_t)1 << 30)
/* The fewest tokens a search's chunk takes under a memory cap (all of them
 * when there are fewer): a cap that leaves less fails the search's
 * allocation, naming the bytes, rather than running a GEMM per token. */
#define CAL_AWQ_MIN_CHUNK_TOKENS 256
/* A chunk's back-end bytes per token: x and its scaled copy, both outputs
 * (bf16), a row sum (an f64 pair). */
#define CAL_AWQ_TOKEN_BYTES(rows, cols) (4 * ((uint64_t)(rows) + (cols)) + 16)

/*
 * The same for a linear with a bias (GPT-OSS's attention; docs/awq.md
 * "GPT-OSS"): bias bf16 [rows] or NULL.  modelopt's search runs the whole
 * linear, so the bias is inside both outputs' bf16 rounding, y = bf16(x W^T
 * + b); the statistics, the fold and the bias itself are as without it.
 * w, bias and x are host memory; the search's GEMMs run on dev->be (the
 * other two forms: on host, a CPU back end, which also gives the threads).
 */
enum cal_status cal_awq_lite_bias(const struct cal_awq_dev *dev, enum cal_awq_wq wq,
				  const uint16_t *w, const uint16_t *bias, uint64_t rows,
				  uint64_t cols, const uint16_t *x, uint64_t tokens, uint64_t batch,
				  double alpha_step, struct cal_awq_out *out, float *in_amax,
				  struct cal_error *err);

/*
 * modelopt's export fold for n linears that read one input (q/k/v, gate/up;
 * docs/awq.md "Export", docs/smoothquant.md "Export"), AWQ's and
 * SmoothQuant's alike: avg = the mean of their bf16 pre_quant_scales;
 * every weight w[i] ([rows[i], cols] bf16, folded with pqs[i]) whose scale
 * differs from avg is re-folded in place, W * pqs[i] / avg; w_amax[i]
 * ([rows[i] * cols / block]) gets its weight amax per `block` input
 * values (128: INT4 blocks; cols: per output channel).  in_amax: NULL, or
 * the n per-tensor input amax, all set to their max.  avg: [cols] bf16.
 * Errors: CAL_ERR_INVALID.
 */
enum cal_status cal_resmooth_group(uint16_t *const *w, const uint64_t *rows, size_t n,
				   uint64_t cols, uint64_t block, const uint16_t *const *pqs,
				   uint16_t *avg, float *const *w_amax, float *in_amax,
				   struct cal_error *err);

/* awq_clip (modelopt's second AWQ step, run by awq_full after awq_lite;
 * docs/awq.md "awq_full"): AWQClipCalibConfig's options. */
struct cal_awq_clip_opts {
	uint64_t max_tokens;       /* max_tokens_per_batch: 64 */
	double min_ratio;          /* min_clip_ratio: 0.5 */
	double step;               /* shrink_step: 0.05 */
	int amax_bf16;             /* the clip amax, ratio * weight amax, is rounded
				    * to bf16 (modelopt's weight amax is a bf16
				    * tensor except after an INT4 awq_lite fold) */
};

#define CAL_AWQ_MAX_RATIOS 1024

/* The clip ratios searched, in order (min_clip_ratio, +step, .. below 1,
 * rounded to 2 decimals, then 1.0) into ratios[CAL_AWQ_MAX_RATIOS]; their
 * count, 0 when over CAL_AWQ_MAX_RATIOS. */
unsigned cal_awq_clip_ratios(double min_ratio, double step, float *ratios);

/*
 * modelopt's awq_clip for one INT4 linear in blocks of 128: w bf16 [rows,
 * cols] (after awq_lite's fold), x bf16 [tokens, cols] its raw calibration
 * inputs in steps of `batch` rows, pqs NULL or the bf16 pre_quant_scale
 * [cols] the inputs are multiplied by (bf16) before the linear.  Per step
 * the rows 0, s, 2s, .. (s = max(1, rows / max_tokens)); per 128-block of
 * w and clip ratio, the mean over those rows of the squared bf16 error of
 * the block's partial dot product with the block fake-quantized at amax =
 * ratio * block amax, summed over the steps; the first least wins.
 * amax [rows * cols / 128] out: the chosen clip amax (the exported block
 * amax).  Host threads (one row per item).
 * Errors: CAL_ERR_INVALID, CAL_ERR_NOMEM.
 */
enum cal_status cal_awq_clip_int4(struct cal_backend *host, const uint16_t *w, uint64_t rows,
				  uint64_t cols, const uint16_t *x, uint64_t tokens,
				  uint64_t batch, const uint16_t *pqs,
				  const struct cal_awq_clip_opts *o, float *amax,
				  struct cal_error *err);

/*
 * awq_clip's per-tensor form (NVFP4 weights, modelopt's NVFP4_AWQ_FULL_CFG /
 * _CLIP_CFG; docs/awq.md "awq_clip with NVFP4"): w bf16 [rows, cols], x and
 * pqs as above but every input row is used.  Per clip ratio the whole
 * linear runs with its weight fake-quantized as NVFP4 at global amax ratio
 * * max|w|; the loss is the step's mean of the squared bf16 output error,
 * summed over the steps; the first least wins.  *amax out: ratio * max|w|
 * (fp32); loss: NULL or [CAL_AWQ_MAX_RATIOS] each ratio's loss.  The
 * GEMMs run on dev->be as awq_lite's (cal_awq_lite_bias), the inputs times
 * pqs and the fake-quantized weights on the host.  Errors: CAL_ERR_INVALID,
 * CAL_ERR_NOMEM.
 */
enum cal_status cal_awq_clip_nvfp4(const struct cal_awq_dev *dev, const uint16_t *w,
				   uint64_t rows, uint64_t cols, const uint16_t *x,
				   uint64_t tokens, uint64_t batch, const uint16_t *pqs,
				   const struct cal_awq_clip_opts *o, float *amax, double *loss,
				   struct cal_error *err);

/* The input amax modelopt's clip pass leaves on a quantized input (awq_full
 * with NVFP4 or W4A8 weights): max over x [tokens, cols] of |bf16(x *
 * pqs)| (pqs NULL: of |x|, awq_clip alone). */
float cal_awq_in_amax(const uint16_t *x, uint64_t tokens, uint64_t cols, const uint16_t *pqs);

/* nvfp4_awq's export fold into the previous linear (docs/awq.md "Export"
 * step 1): the next linear's pre_quant_scale pqs ([rows] bf16) scales the
 * output rows of w ([rows, cols] bf16, in place), bf16(w[r][c] * pqs[r]). */
void cal_awq_fuse_rows(uint16_t *w, uint64_t rows, uint64_t cols, const uint16_t *pqs);

/* The shared pre_quant_scale folded into the norm that produces the input
 * (bf16 [cols], in place): norm * pqs, or (1 + norm) * pqs - 1 for the
 * norms that scale by 1 + weight (plus_one; Gemma's). */
void cal_awq_fuse_norm(uint16_t *norm, const uint16_t *pqs, uint64_t cols, int plus_one);

#ifdef __cplusplus
}
#endif

#endif
