/*
 * gptq.h — GPTQ weight update for one linear (docs/gptq.md), modelopt's
 * `gptq` algorithm: Hessian H = 2/n sum x x^T of the linear's inputs (the
 * `hessian` op accumulates the sum), dead columns, damping by perc_damp x
 * mean diag, upper Cholesky factor of H^-1, and the column-block update
 * that quantizes column by column with the weight format's fixed scales
 * and spreads each column's rounding error over the columns not yet
 * quantized.  Host memory, threaded on the CPU back end.
 */
#ifndef CAL_ENGINE_GPTQ_H
#define CAL_ENGINE_GPTQ_H

#include <stdint.h>

#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/numfmt.h"
#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* modelopt GPTQCalibConfig defaults: perc_damp 0.01, block_size 128. */
#define CAL_GPTQ_PERC_DAMP 0.01
#define CAL_GPTQ_BLOCK 128u

struct cal_gptq_opts {
	double perc_damp;     /* (0, 1] */
	uint32_t block_size;  /* > 0, a multiple of the quantizer's block (16) */
	int no_rel_err;       /* skip stats->rel_err (two more W H W^T products; NAN) */
};

/* The static NVFP4 weight quantizer of the layer: per-16-block amax and the
 * global amax, both from the original weight (modelopt's max calibration
 * runs before the update and fixes them). */
struct cal_gptq_nvfp4 {
	const float *block_amax; /* [rows, cols / 16] */
	float global_amax;
	float norm_max;          /* 448 (or 256 for the 4/6 variant) */
	enum cal_div_mode div;
};

struct cal_gptq_stats {
	int fallback;         /* H not positive definite after damping: identity
			       * used (plain rounding with the fixed scales) */
	uint64_t dead_cols;   /* all-zero weight columns */
	double damp;          /* damping added to the diagonal */
	double rel_err;       /* Hessian-weighted relative error, as modelopt
			       * logs it: mean(dW H . dW) / (mean(W H . W) + 1e-6) */
};

/*
 * GPTQ on one linear with the static NVFP4 weight format.  w: bf16
 * [rows, cols]; hsum: [cols, cols] the `hessian` op's sum over n_samples
 * input rows (H = 2 hsum / n_samples; n_samples > 0).  w_out (bf16, may not
 * alias w) receives the updated weight, each value on the NVFP4 grid of its
 * block; exporting it with nvfp4_static_quant and the same amaxes gives the
 * codes.  Errors: CAL_ERR_INVALID (arguments), CAL_ERR_NOMEM.
 */
enum cal_status cal_gptq_nvfp4(struct cal_backend *host, const uint16_t *w, uint64_t rows,
			       uint64_t cols, const float *hsum, uint64_t n_samples,
			       const struct cal_gptq_opts *o, const struct cal_gptq_nvfp4 *q,
			       uint16_t *w_out, struct cal_gptq_stats *stats,
			       struct cal_error *err);

/*
 * Steps 3 of docs/gptq.md alone: u (host, [cols, cols] fp32) receives the
 * upper Cholesky factor of the damped H^-1, or the identity when H is not
 * positive definite after damping (stats->fallback); dead columns and the
 * damping in stats (rel_err NAN).  The factorisation is the `gptq_factor` op
 * on `be` (cal_gptq_factor_dev); w, hsum and u are host memory.  The update is then the `gptq_update` op on any back end
 * (kernels/ops.h).  Errors as cal_gptq_nvfp4.
 */
enum cal_status cal_gptq_factor(struct cal_backend *be, const uint16_t *w, uint64_t rows,
				uint64_t cols, const float *hsum, uint64_t n_samples,
				const struct cal_gptq_opts *o, float *u,
				struct cal_gptq_stats *stats, struct cal_error *err);

/* One linear of cal_gptq_factor_many (host memory). */
struct cal_gptq_factor_in {
	const uint16_t *w;      /* [rows, cols] bf16 */
	uint64_t rows;
	const float *hsum;      /* [cols, cols] */
	uint64_t n_samples;     /* > 0 */
};

/*
 * cal_gptq_factor for count (1 .. 65535) linears of one input dim at once:
 * u[k] and stats[k] are linear k's, byte for byte what cal_gptq_factor
 * gives it; their factorisations are one batched `gptq_factor` op
 * (cal_gptq_factor_dev).  Memory on be: 8 count cols^2 bytes besides its
 * scratch.  Errors as cal_gptq_factor.
 */
enum cal_status cal_gptq_factor_many(struct cal_backend *be, uint64_t cols, size_t count,
				     const struct cal_gptq_factor_in *in,
				     const struct cal_gptq_opts *o, float *const *u,
				     struct cal_gptq_stats *stats, struct cal_error *err);

/* dead[c] = 1 where column c of w ([rows, cols] bf16) is all zero (the
 * columns the gptq_factor op treats as dead), else 0; their count.
 * U depends on w only through these: linears with the same hsum, n_samples
 * and mask share U. */
uint64_t cal_gptq_dead_mask(const uint16_t *w, uint64_t rows, uint64_t cols, uint8_t *dead);

/*
 * The factors of count (1 .. 65535) linears of input dim n on be, in its
 * memory: hs ([count, n, n] f32) the Hessian sums, u ([count, n, n] f32)
 * receives each U (the identity where H is not positive definite after
 * damping: stats[k].fallback); dead ([count, n], host) the dead-column
 * masks (cal_gptq_dead_mask), n_samples[k] > 0 the rows each sum saw.  One
 * `gptq_factor` op (kernels/ops.h: the CPU back end's bytes are the column
 * algorithms'; a device's U agrees to a few f32 ulps).  scratch: the
 * caller's cal_gptq_factor_dev_bytes(be, n, count) bytes on be (8-aligned).
 */
enum cal_status cal_gptq_factor_dev(struct cal_backend *be, uint64_t n, size_t count,
				    const float *hs, const uint8_t *dead, const uint64_t *n_samples,
				    const struct cal_gptq_opts *o, float *u, void *scratch,
				    struct cal_gptq_stats *stats, struct cal_error *err);

/* Bytes of back-end scratch cal_gptq_factor_dev needs. */
uint64_t cal_gptq_factor_dev_bytes(const struct cal_backend *be, uint64_t n, size_t count);

/* Bytes of host memory cal_gptq_nvfp4 allocates for a [rows, cols] linear. */
uint64_t cal_gptq_scratch_bytes(uint64_t rows, uint64_t cols);

#ifdef __cplusplus
}
#endif

#endif
