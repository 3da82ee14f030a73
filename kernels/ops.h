/*
 * ops.h — the op table: argument structs of every op in ops.def, the per
 * back-end vtable struct cal_ops, and the dispatchers cal_op_<name>().
 *
 * Calling convention: fill a struct cal_<name>_args with pointers into the
 * back end's memory (see backend.h) and sizes, call
 *     enum cal_status cal_op_<name>(be, &args, err);
 * The dispatcher validates the arguments (CAL_ERR_INVALID / CAL_ERR_RANGE
 * with a message naming the field) and runs the back end's implementation.
 * Results are byte-identical on every back end.  Weights are bf16 (raw
 * uint16_t bits), observers also take f32.  Matrices are row-major
 * [rows, cols]; blocks run along cols (the input / K dimension).  All sizes
 * are elements unless named *_bytes.
 *
 * Running statistics (amax, struct cal_nonfinite) are read-modify-write: the
 * caller initialises them once (amax 0, cal_nonfinite {0, CAL_NONFINITE_NONE})
 * and every call folds its batch in by max (exact, order independent).
 * Non-finite inputs (NaN, ±inf) never enter an amax: they are counted, and the
 * smallest flat element index (plus index_base) is kept, so the caller can
 * say where they came from.
 */
#ifndef CAL_KERNELS_OPS_H
#define CAL_KERNELS_OPS_H

#include <stdint.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/numfmt.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CAL_NONFINITE_NONE UINT64_MAX

/* Non-finite report of an observer; lives in back-end memory. */
struct cal_nonfinite {
	uint64_t count; /* number of NaN/inf elements seen */
	uint64_t first; /* smallest index_base + flat index, or CAL_NONFINITE_NONE */
};

/* ---- observers --------------------------------------------------------- */

/* amax[0] = max(amax[0], max|x[i]|) over finite x[i], i < n. */
struct cal_amax_args {
	enum cal_dtype dtype;   /* CAL_DTYPE_BF16 or CAL_DTYPE_F32 */
	const void *x;
	uint64_t n;             /* may be 0 (nothing happens) */
	uint64_t index_base;    /* added to reported indices */
	float *amax;            /* [1], in/out */
	struct cal_nonfinite *nonfinite; /* [1], in/out */
};

/* amax[0] over the rows x[index[k], :], k < n_index (routed tokens).
 * Indices >= rows are skipped (the caller's routing guarantees range). */
struct cal_amax_rows_args {
	enum cal_dtype dtype;
	const void *x;
	uint64_t rows, cols;    /* rows < 2^32 */
	const uint32_t *index;  /* [n_index] */
	uint64_t n_index;
	uint64_t index_base;
	float *amax;
	struct cal_nonfinite *nonfinite;
};

/* amax[s] over rows offsets[s] .. offsets[s+1]-1 of x (rows sorted by expert).
 * offsets is non-decreasing with offsets[n_seg] <= rows; rows outside
 * [offsets[0], offsets[n_seg]) are not read. */
struct cal_amax_segments_args {
	enum cal_dtype dtype;
	const void *x;
	uint64_t rows, cols;    /* rows < 2^32 */
	const uint32_t *offsets; /* [n_seg + 1] */
	uint32_t n_seg;         /* >= 1 */
	uint64_t index_base;
	float *amax;            /* [n_seg] */
	struct cal_nonfinite *nonfinite;
};

/* amax[r*(cols/block) + b] = max(that, max|x[r, b*block .. +block)|). */
struct cal_amax_blocks_args {
	enum cal_dtype dtype;
	const void *x;
	uint64_t rows, cols;    /* cols % block == 0 */
	uint32_t block;         /* 16, 32, 64 or 128 */
	uint64_t index_base;
	float *amax;            /* [rows * cols / block] */
	struct cal_nonfinite *nonfinite;
};

/* amax[c] = max(that, max_r |x[r, c]|) over bf16 rows: SmoothQuant's
 * per-input-channel activation amax (docs/smoothquant.md). */
struct cal_amax_cols_args {
	const uint16_t *x;      /* bf16 [rows, cols] */
	uint64_t rows, cols;
	uint64_t index_base;
	float *amax;            /* [cols] */
	struct cal_nonfinite *nonfinite;
};

/* Affine KV-cache observer (docs/numerics.md "Affine KV cache"), x bf16
 * [rows, cols] (cols = KV heads x head_dim).  Forward s is rows cu[s] ..
 * cu[s+1]-1 (rows past `rows` are not read; an empty forward is skipped);
 * the forwards are folded in order, k = n0 + the forwards before s:
 *   m[c]    = bf16(mean of x[r, c] over the forward's rows, summed in f64)
 *   bias[c] = m[c] when k == 0, else bf16(fl32(fl32(bias[c] * k) + m[c]) / (k + 1))
 *   amax    = max(amax, |bf16(fl32(x[r, c] - bias[c]))|) over the forward's rows,
 * so each forward is observed with the bias as of that forward.  bias is
 * read (n0 > 0) and written back.  Non-finite x are counted, never folded. */
struct cal_kv_affine_args {
	const uint16_t *x;       /* bf16 [rows, cols], rows < 2^32 */
	uint64_t rows, cols;
	const uint32_t *cu;      /* [n_seq + 1] forward boundaries (non-decreasing) */
	uint32_t n_seq;          /* >= 1 */
	uint64_t n0;             /* forwards already in bias */
	uint16_t *bias;          /* bf16 [cols], in/out */
	uint64_t index_base;
	float *amax;             /* [1], in/out */
	struct cal_nonfinite *nonfinite;
};

/* nvfp4_act_headroom observer (docs/numerics.md "Activation headroom"):
 * for each block of `block` consecutive elements of a row (the row's last
 * block zero-padded when cols % block != 0), m = max|x| over its finite
 * elements; a block with m > 0 adds 1 to hist[bin(m)], where bin(m) is the
 * number of cal_hist_edges() entries <= m, i.e. modelopt's
 * clamp(floor((log2(m) + 40) / 80 * 512), 0, 511) in fp32.  Counts are
 * integers, so every back end, micro-batch split and rank split gives the
 * same sums. */
#define CAL_HIST_BINS 512
struct cal_amax_hist_args {
	enum cal_dtype dtype;
	const void *x;
	uint64_t rows, cols;
	uint32_t block;         /* 16 or 32 */
	uint64_t *hist;         /* [CAL_HIST_BINS] running counts */
};

/* edges[k - 1]: the smallest positive fp32 m with bin(m) >= k (k = 1..511),
 * found once by bisection over fp32 bit patterns with the C library's
 * log2f; host memory, shared read-only. */
const float *cal_hist_edges(void);

/* GPTQ Hessian observer (docs/gptq.md): h[i, j] += s(i, j) with
 * s(i, j) = sum over the selected rows r of x[r, i] * x[r, j], summed in fp32
 * with one fused multiply-add per row in row order (index order when index
 * is given), so every back end gives the same bytes; h is written whole
 * (both triangles, equal).  Rows are all of x (index NULL) or the gathered
 * rows x[index[k], :], k < n_index (the tokens routed to an expert); indices
 * >= rows are skipped.  NaN results are the canonical NaN; the amax
 * observers report where non-finite inputs came from. */
struct cal_hessian_args {
	enum cal_dtype dtype;   /* CAL_DTYPE_BF16 or CAL_DTYPE_F32 */
	const void *x;
	uint64_t rows, cols;    /* rows < 2^32; cols <= 65536 */
	const uint32_t *index;  /* [n_index] or NULL */
	uint64_t n_index;
	float *h;               /* [cols, cols], in/out */
};

/* GPTQ's inverse factor (docs/gptq.md, "Building blocks"): the lower
 * Cholesky factor L of a (f64, symmetric positive definite; the lower
 * triangle is read and overwritten with L, the rest is left) and
 * y = L^-1 (row-major, lower triangular, the rest 0).  Every element is
 * computed with the textbook column algorithms' operations in their order
 * (L[i][j] = (a[i][j] - L[i][0] L[j][0] - L[i][1] L[j][1] - ...) / L[j][j],
 * one rounded multiply and one rounded subtraction per term, the diagonal
 * sqrt(a[j][j] - sum); L^-1 by forward substitution, column c from row c
 * on), however the back end blocks and threads it, so every back end gives
 * the same bytes.  *bad = 1 when a pivot is not positive and finite (a is
 * not positive definite; L and y are then undefined), else 0.  With batch
 * > 1, batch independent matrices back to back (matrix b at a + b n n,
 * y + b n n, its flag bad[b], its scratch work + b (n + 32) 32), each
 * with the same arithmetic as alone; 0 means 1. */
struct cal_chol_inv_args {
	double *a;              /* [batch, n, n] in/out */
	uint64_t n;             /* 1 .. 65536 */
	double *y;              /* [batch, n, n] out */
	int32_t *bad;           /* [batch] out */
	double *work;           /* [batch, (n + 32) 32] scratch */
	uint32_t batch;         /* 0 .. 65535 matrices (0: one) */
};

/* GPTQ's inverse factor U from Hessian sums (docs/gptq.md, "Building
 * blocks"), for batch matrices (0 means 1), matrix b at offset b n n:
 * H = scale[b] hsum[b] in f64; a dead column c (dead[b][c] != 0) gets
 * row and column 0 and H[c][c] = 1; damp[b] = perc_damp (sum of H's
 * diagonal, ascending) / n, added to the diagonal; u[b] = the upper
 * Cholesky factor of H^-1 (row-major f32, 0 below the diagonal), made as
 * U[i][j] = L^-1[n-1-i][n-1-j] with L the lower factor of the reversed H.
 * bad[b] = 1 when H is not positive definite or an element of U is not
 * finite or a diagonal one is not > 0 (u[b] then undefined), else 0.
 * H, damp and bad follow one arithmetic on every back end; the factor
 * does not: the CPU back end runs the chol_inv op's column algorithms,
 * CUDA cuSOLVER's blocked f64 potrf and trtri (their own order of terms:
 * U agrees to a few f32 ulps, not byte for byte; docs/numerics.md). */
struct cal_gptq_factor_args {
	const float *hsum;      /* [batch, n, n] symmetric sums of x^T x */
	const uint8_t *dead;    /* [batch, n] */
	const double *scale;    /* [batch] (GPTQ: 2 / rows seen) */
	uint64_t n;             /* 1 .. 65536 */
	double perc_damp;       /* (0, 1] */
	float *u;               /* [batch, n, n] out */
	double *damp;           /* [batch] out */
	int32_t *bad;           /* [batch] out */
	double *work;           /* cal_gptq_factor_work(n, device) doubles of scratch
				 * (the matrices are factored one after the other) */
	uint32_t batch;         /* 0 .. 65535 */
};

/* Doubles of scratch the gptq_factor op needs for matrices of n, any
 * batch: on the CPU the f64 H and its factor side by side plus a panel
 * (chol_inv); on a device (device != 0) H alone, factored in place by
 * cuSOLVER, whose own workspace the op allocates. */
static inline uint64_t cal_gptq_factor_work(uint64_t n, int device)
{
	return device ? n * n : 2 * n * n + (n + 32) * 32;
}

/* The gptq_factor op's H for one matrix, in a ([n, n] f64): scale hsum,
 * the dead columns zeroed with a unit diagonal, then *damp = perc_damp
 * (diagonal sum, ascending) / n added to the diagonal.  The arithmetic
 * every back end follows (kernels/gptq_factor.c). */
void cal_gptq_damped(const float *hsum, const uint8_t *dead, double scale, uint64_t n,
		     double perc_damp, double *a, double *damp);

/* GPTQ column-block update of a static-NVFP4 weight (docs/gptq.md): with
 * U the upper Cholesky factor of H^-1 ([cols, cols], fp32), every row of w
 * independently, per block of block_size columns, column by column:
 * q = the column fake-quantized with the fixed scales (modelopt's static
 * NVFP4 fake quantizer: block scale e4m3(fl32(amax_b / 6) c) / c with
 * c = fl32(448 / fl32(g' / 6)), g' = fl32(global_amax 448 / norm_max),
 * values to the nearest E2M1 magnitude), e = (w - q) / U[i, i], the block's
 * later columns get -e U[i, k]; after the block every later column gets
 * -sum_i e_i U[i, k] (i ascending).  Every operation is one fp32 IEEE
 * operation, so the back ends agree byte for byte.  w_out = bf16(q). */
struct cal_gptq_update_args {
	const uint16_t *w;       /* [rows, cols] bf16 */
	uint64_t rows, cols;     /* cols % 16 == 0, cols <= 65536 */
	const float *u;          /* [cols, cols] */
	const float *block_amax; /* [rows, cols / 16] */
	float global_amax;       /* > 0, finite */
	float norm_max;          /* 448 (or 256) */
	enum cal_div_mode div;
	uint32_t block_size;     /* >= 1 */
	float *work;             /* back end scratch of (cols + block_size) * rows floats */
	uint16_t *w_out;         /* [rows, cols] bf16 */
};

/* ---- weight quantizers (input bf16 [rows, cols]) ------------------------ */

/* NVFP4 dynamic (docs/numerics.md "NVFP4 weights"): scale2 =
 * cal_nvfp4_scale2(amax_w, mode). */
struct cal_nvfp4_quant_args {
	const uint16_t *w;
	uint64_t rows, cols;    /* cols % block == 0 */
	float scale2;           /* weight_scale_2 */
	uint8_t *packed;        /* [rows, cols/2]  weight (U8) */
	uint8_t *scales;        /* [rows, cols/block] weight_scale (F8_E4M3) */
	uint32_t block;         /* 16 (or 0) or 32 (NVFP4 block 32, `nvfp4_bs32`) */
};

/* NVFP4 static (docs/numerics.md "NVFP4 static and MSE"): block scales from
 * the calibrated per-block amax and the global amax; values as NVFP4 dynamic
 * with scale2 = cal_nvfp4_static_scale2(global_amax, norm_max, div). */
struct cal_nvfp4_static_quant_args {
	const uint16_t *w;
	uint64_t rows, cols;    /* cols % 16 == 0 */
	const float *block_amax; /* [rows, cols/16] */
	float global_amax;      /* > 0, finite */
	float norm_max;         /* 448, or 256 for four-over-six */
	enum cal_div_mode div;
	uint8_t *packed;
	uint8_t *scales;
};

/* MSE FP8-scale sweep (docs/numerics.md "NVFP4 static and MSE"): for every
 * 16-block the candidate amax_c = fl32(global_amax * fl32(v/448)) (v: the 126
 * finite positive E4M3 values, ascending) whose static-NVFP4 fake-quant
 * minimises sum((x - fq(x))^2) (fp32, element order; first minimum wins). */
struct cal_nvfp4_mse_sweep_args {
	const uint16_t *w;
	uint64_t rows, cols;    /* cols % 16 == 0 */
	float global_amax;
	float norm_max;
	enum cal_div_mode div;
	float *block_amax;      /* [rows, cols/16] out */
};

/* FP8 E4M3 per-tensor (docs/numerics.md "FP8 per tensor"): scale =
 * weight_scale (cal_fp8_scale); div selects the CUDA (bf16(scale)) or CPU
 * (scale) divisor. */
struct cal_fp8_quant_args {
	const uint16_t *w;
	uint64_t n;
	float scale;
	enum cal_div_mode div;
	uint8_t *q;             /* [n] F8_E4M3 */
	/* 1: q = e4m3(fl32(x / scale)), one rounding, whatever div: modelopt's
	 * stacked 3-D expert weights (gpt_oss), whose scale tensor promotes the
	 * quotient to fp32 (docs/gpt_oss.md) */
	int single_round;
	/* non-NULL: a scale per tile (cal_fp8_tile_of) of the n / cols rows:
	 * tile 0: one per row (FP8 per channel, docs/numerics.md "FP8 per
	 * channel, per token"); tile > 0: tile x tile blocks, the last ones
	 * ragged (FP8 2-D blocks, "FP8 2-D blocks").  Each tile's scale
	 * cal_fp8_row_scale(max |x| of the tile) goes to row_scale[t] and its
	 * elements are e4m3(fl32(x / row_scale[t])); scale and single_round
	 * are not read */
	float *row_scale;
	uint64_t cols;
	uint32_t tile;
};

/* MXFP8 (docs/numerics.md "MX formats"), block 32. */
struct cal_mxfp8_quant_args {
	const uint16_t *w;
	uint64_t rows, cols;    /* cols % 32 == 0 */
	enum cal_div_mode div;
	uint8_t *q;             /* [rows, cols] F8_E4M3 */
	uint8_t *scales;        /* [rows, cols/32] E8M0 (U8) */
};

/* MXFP4 (docs/numerics.md "MX formats"), block 32. */
struct cal_mxfp4_quant_args {
	const uint16_t *w;
	uint64_t rows, cols;    /* cols % 32 == 0 */
	enum cal_div_mode div;
	uint8_t *packed;        /* [rows, cols/2] */
	uint8_t *scales;        /* [rows, cols/32] E8M0 */
};

/* INT4 per-block (docs/numerics.md "INT4 blocks"), block 128 along cols,
 * packed along rows: packed[i, k] = q[2i, k] | q[2i+1, k] << 4. */
struct cal_int4_quant_args {
	const uint16_t *w;
	uint64_t rows, cols;    /* rows % 2 == 0, cols % 128 == 0 */
	const float *block_amax; /* [rows, cols/128] (amax_blocks, block 128) */
	enum cal_div_mode div;
	uint8_t *packed;        /* [rows/2, cols] */
	float *scales;          /* [rows, cols/128] weight_scale (F32) */
};

/* INT8 per output channel (docs/numerics.md "INT8"): scale[r] = amax_r/127
 * with amax_r = max|w[r, :]| (a NaN in the row: NaN, so scale 1), codes
 * clamp(rint(w / scale[r]), -128, 127) as int8 bytes.  With `scale` > 0
 * instead: one static scale for every row (an input's input_scale in
 * `calibd eval`, docs/eval.md), codes clamp(rint(fl32(w / scale)), -128,
 * 127) whatever div says; no amax is taken and scales is not written (may
 * be NULL). */
struct cal_int8_quant_args {
	const uint16_t *w;
	uint64_t rows, cols;
	enum cal_div_mode div;
	uint8_t *q;             /* [rows, cols] int8 */
	float *scales;          /* [rows] weight_scale (F32) */
	float scale;            /* > 0: the static per-tensor scale */
};

/* ---- dequantize (fake-quant); out is F32 or BF16 ------------------------ */

/* out = fl32(fl32(e2m1 * e4m3(scale)) * scale2). */
struct cal_nvfp4_dequant_args {
	const uint8_t *packed, *scales;
	uint64_t rows, cols;    /* cols % block == 0 */
	float scale2;
	enum cal_dtype out_dtype;
	void *out;              /* [rows, cols] */
	uint32_t block;         /* 16 (or 0) or 32 */
};

/* out = fl32(e4m3 * scale). */
struct cal_fp8_dequant_args {
	const uint8_t *q;
	uint64_t n;
	float scale;
	enum cal_dtype out_dtype;
	void *out;
	/* non-NULL: per-tile scales as cal_fp8_quant_args (tile 0: per row),
	 * used instead of scale */
	const float *row_scale;
	uint64_t cols;
	uint32_t tile;
};

/* out = fl32(e4m3 * 2^(e8m0-127)). */
struct cal_mxfp8_dequant_args {
	const uint8_t *q, *scales;
	uint64_t rows, cols;    /* cols % 32 == 0 */
	enum cal_dtype out_dtype;
	void *out;
};

/* out = fl32(e2m1 * 2^(e8m0-127)). */
struct cal_mxfp4_dequant_args {
	const uint8_t *packed, *scales;
	uint64_t rows, cols;    /* cols % 32 == 0 */
	enum cal_dtype out_dtype;
	void *out;
};

/* out = fl32(int4 * scale). */
struct cal_int4_dequant_args {
	const uint8_t *packed;
	const float *scales;    /* [rows, cols/128] */
	uint64_t rows, cols;    /* rows % 2 == 0, cols % 128 == 0 */
	enum cal_dtype out_dtype;
	void *out;
};

/* out = fl32(int8 * scale[row]); scales NULL: fl32(int8 * scale). */
struct cal_int8_dequant_args {
	const uint8_t *q;       /* [rows, cols] int8 */
	const float *scales;    /* [rows], or NULL */
	uint64_t rows, cols;
	enum cal_dtype out_dtype;
	void *out;
	float scale;            /* scales NULL: one finite scale > 0 for every row */
};

/* ---- export statistics ---------------------------------------------------- */

/*
 * The sums of a weight's SQNR (docs/export.md), one pair per row, so that
 * the dequantized tensor never leaves the back end:
 *   sums[2r] = sum_c x[r,c]^2,  sums[2r+1] = sum_c (x[r,c] - y[r,c])^2
 * with x bf16 and y f32, in f64 and in one fixed order on every back end
 * (byte-identical): 32 lanes, lane l adds the columns l, l+32, ... in turn,
 * then the lanes fold as v[l] += v[l+k] for k = 16, 8, 4, 2, 1; no fused
 * multiply-add.
 */
struct cal_sqnr_rows_args {
	const uint16_t *x;      /* bf16 [rows, cols] */
	const float *y;         /* f32 [rows, cols] */
	uint64_t rows, cols;
	double *sums;           /* [rows, 2], written */
};

/* ---- evaluation (calibd eval, docs/eval.md) ------------------------------ */

/*
 * Per row r of the two models' bf16 logits lo, lq [rows, vocab]: with
 * z = log sum_i exp(x_i) (in f64, from the row's maximum),
 *   out[3r]     = max(0, sum_i exp(lo_i - zo) ((lo_i - zo) - (lq_i - zq)))
 *                 = KL(P_o || P_q) of the softmaxes (natural log),
 *   out[3r + 1] = zo - lo[next[r]],  out[3r + 2] = zq - lq[next[r]]
 *                 (the negative log-likelihoods of the next token; 0 when
 *                 next is NULL, next[r] is UINT32_MAX or not < vocab),
 *   argmax[2r], argmax[2r + 1] = the first index of each row's maximum.
 * Only these small results leave the back end.  f64 throughout; the
 * summation order differs between back ends (the CPU adds in index order),
 * so results agree to f64 rounding, the argmaxes exactly.
 */
struct cal_logit_kl_args {
	const uint16_t *lo, *lq;  /* bf16 [rows, vocab] */
	uint64_t rows, vocab;
	const uint32_t *next;     /* [rows] or NULL */
	double *out;              /* [rows, 3], written */
	uint32_t *argmax;         /* [rows, 2], written */
};

/*
 * The error sums of the evaluation's per-layer attribution, one pair per
 * row, so that no hidden state leaves the back end:
 *   sums[2r] = sum_c (b[r,c] - a[r,c])^2,  sums[2r+1] = sum_c (a[r,c] - in[r,c])^2
 * (in NULL: sum_c a[r,c]^2), a, b and in bf16, in f64 in sqnr_rows' fixed
 * order (byte-identical on every back end).
 */
struct cal_err_rows_args {
	const uint16_t *in;     /* bf16 [rows, cols] or NULL */
	const uint16_t *a, *b;  /* bf16 [rows, cols] */
	uint64_t rows, cols;
	double *sums;           /* [rows, 2], written */
};

/* ---- forward pass (calibration engine) ----------------------------------
 * Activations are bf16 [rows, cols] row-major.  These ops follow the rounding
 * points of Hugging Face transformers (docs/architectures.md "Common
 * structure"): every op's fp32 intermediate is rounded to bf16 where HF's bf16
 * tensors are.  The 1-thread reference and the threaded CPU back end are
 * byte-identical (each output element is computed in a fixed order,
 * independent of the thread split).  The CUDA versions compute the same
 * formulas but with cuBLAS / a different summation order, so they agree with
 * the reference only to within bf16 rounding: tests compare them with a
 * tolerance. */

/* y[m, n] = bf16( sum_k x[m, k] * w[n, k] (+ bias[n]) ), fp32 accumulation
 * (nn.Linear: y = x W^T + b).  Grouped (n_groups > 1, experts): rows
 * offsets[g] .. offsets[g+1]-1 of x and y use weight w + g*w_stride and
 * bias + g*bias_stride; rows outside [offsets[0], offsets[n_groups]) are not
 * written. */
struct cal_gemm_args {
	const uint16_t *x;       /* [m, k] */
	const uint16_t *w;       /* [n, k] (per group) */
	const uint16_t *bias;    /* [n] or NULL */
	uint16_t *y;             /* [m, n] */
	uint64_t m, n, k;
	uint32_t n_groups;       /* 0 or 1: one plain GEMM */
	const uint32_t *offsets; /* [n_groups + 1], non-decreasing, <= m (n_groups > 1) */
	uint64_t w_stride, bias_stride; /* elements between group weights / biases */
	/* Optional host (not back-end) copy of offsets, equal to it: the CUDA
	 * back end then issues the per-group GEMMs without reading offsets back
	 * (no stream sync).  Ignored by the CPU back end. */
	const uint32_t *host_offsets;
	/* bias added after the product is rounded: y = bf16(bf16(x W^T) + b),
	 * as `x @ W + b` in two bf16 ops (gpt_oss experts); 0: rounded once */
	int bias_after_round;
};

/* out[i, :] = src[index[i] / div, :] (div 0 or 1: index[i]).  Embedding
 * lookup (src = table) and the gather of tokens sorted by expert
 * (index = sorted pair, div = slots per token).  index[i] / div must be
 * < src_rows (the CPU checks and reports the first bad one). */
struct cal_gather_rows_args {
	const uint16_t *src;     /* [src_rows, cols] bf16 */
	uint64_t src_rows, cols;
	const uint32_t *index;   /* [n] */
	uint64_t n;
	uint32_t div;
	uint16_t *out;           /* [n, cols] */
};

/* RMSNorm variants (docs/architectures.md "RMSNorm variants"); n = x *
 * rsqrt(mean(x^2) + eps) in fp32 over each row. */
enum cal_rms_kind {
	CAL_RMS_PLAIN = 0,       /* y = bf16(w * bf16(n)), w bf16 */
	CAL_RMS_F32W = 1,        /* y = bf16(w_f32 * n), w f32 */
	CAL_RMS_1P = 2,          /* y = bf16(n * (1 + w_f32)), w bf16 or f32 */
};

/* y = rmsnorm(x) row by row; y may equal x.  Per-head q/k norm is the same
 * op over rows = tokens * heads, cols = head_dim. */
struct cal_rmsnorm_args {
	enum cal_rms_kind kind;
	const uint16_t *x;       /* [rows, cols] */
	uint16_t *y;
	uint64_t rows, cols;
	const void *w;           /* [cols] */
	enum cal_dtype w_dtype;  /* BF16 or F32 (F32W: F32) */
	float eps;
};

#define CAL_ROPE_MAX_INTERLEAVED 1024u

/* Rotary embedding in place, NeoX rotate-half on the first rotary_dim
 * channels of each head (the rest pass through).  For channel j < r/2,
 * angle = fl32(pos * inv_freq[j]); c = bf16(fl32(cos(angle) * factor)),
 * s likewise; x'[j] = bf16(bf16(x[j] c) - bf16(x[j+r/2] s)),
 * x'[j+r/2] = bf16(bf16(x[j+r/2] c) + bf16(x[j] s)) (HF applies it in bf16). */
struct cal_rope_args {
	uint16_t *x;             /* [rows, heads, head_dim] */
	uint64_t rows;
	uint32_t heads, head_dim, rotary_dim; /* rotary_dim even, <= head_dim */
	const uint32_t *pos;     /* [rows] position of each row */
	const float *inv_freq;   /* [rotary_dim / 2] */
	float factor;            /* attention factor multiplying cos and sin (1 unless yarn) */
	/* DeepSeek MLA (docs/deepseek.md): the rotary channels start at
	 * `offset` within each head (q: after the qk_nope channels); with
	 * `interleave` pair j is (x[2j], x[2j+1]) and the result is stored
	 * de-interleaved: x'[j] = bf16(bf16(x[2j] c) - bf16(x[2j+1] s)),
	 * x'[j+r/2] = bf16(bf16(x[2j+1] c) + bf16(x[2j] s)) (r <= 1024). */
	uint32_t offset;         /* offset + rotary_dim <= head_dim */
	int interleave;
};

/* Normalized Walsh-Hadamard transform in place (docs/numerics.md
 * "KV-cache rotation"): every block of `block` consecutive values of a row
 * (block a power of two <= CAL_HADAMARD_MAX_BLOCK dividing cols) is widened
 * to fp32, transformed by the butterfly in Sylvester order (stride h = 1,
 * 2, 4, ...: v[j], v[j+h] = v[j] + v[j+h], v[j] - v[j+h], fp32), then
 * y = bf16(fl32(v * fl32(block^-0.5))). */
#define CAL_HADAMARD_MAX_BLOCK 512u
struct cal_hadamard_args {
	uint16_t *x;             /* bf16 [rows, cols] */
	uint64_t rows, cols;
	uint32_t block;
};

/* Causal attention over packed sequences: sequence s is rows
 * cu_seqlens[s] .. cu_seqlens[s+1]-1; query row i of it sees key rows j of
 * the same sequence with j <= i, j > i - window (window 0: no limit) and
 * j >= cu_seqlens[s] + key_start[s] (left padding masked; key_start NULL:
 * 0).  GQA: query head h uses kv head h / (nh / nkv).  Scores fp32
 * (q.k * scale), softmax fp32, P rounded to bf16, out = bf16(sum P v) with
 * fp32 accumulation.  A query with no visible key outputs zeros (PyTorch
 * SDPA's fully-masked rows).  No [S, S] matrix is ever stored. */
struct cal_attention_args {
	const uint16_t *q;       /* [t, nh, hd] */
	const uint16_t *k, *v;   /* [t, nkv, hd] */
	uint16_t *out;           /* [t, nh, hd] */
	uint64_t t;
	uint32_t nh, nkv, hd;    /* nh % nkv == 0 */
	const uint32_t *cu_seqlens; /* [n_seq + 1], cu_seqlens[0] == 0, [n_seq] == t */
	uint32_t n_seq;
	const uint32_t *key_start; /* [n_seq] or NULL */
	uint32_t window;
	float scale;
	/* gpt_oss: one learned logit per query head [nh] (fp32, back-end
	 * memory) joining each row's softmax denominator (no value row); NULL:
	 * none.  docs/gpt_oss.md */
	const float *sinks;
	/* transformers' eager attention in bf16 (gpt_oss, which has no SDPA
	 * path): each score rounded to bf16 after q.k and again after the
	 * scaling, and score - max (sink included) rounded to bf16 before the
	 * exponential; 0: fp32 scores (SDPA) */
	int eager_bf16;
	/* Head dim of v and out when it differs from q/k's (DeepSeek MLA: q/k
	 * 192, v 128): v is [t, nkv, vd], out [t, nh, vd]; 0 means hd. */
	uint32_t vd;
};

/* MoE router (qwen/mixtral/olmoe, docs/architectures.md "Qwen3-MoE"): p =
 * softmax(fp32(logits)) over e experts; idx = the k_total largest p (ties:
 * lower expert index first, as torch.topk), descending; weight = the first k
 * of them, divided by their fp32 sum when renorm.  Slots k .. k_total-1 carry
 * extra experts for statistics only (moe_calib_experts_ratio) and have no
 * weight. */
enum cal_router_mode {
	CAL_ROUTER_MODE_SOFTMAX_TOPK = 0, /* fp32 softmax over e, top-k, optional renorm */
	/* gpt_oss: top-k of the bf16 logits, softmax over the k picked, each
	 * weight rounded to bf16 (renorm ignored) */
	CAL_ROUTER_MODE_TOPK_SOFTMAX = 1,
};

struct cal_router_args {
	const uint16_t *logits;  /* [t, e] bf16 */
	uint64_t t;
	uint32_t e, k, k_total;  /* 1 <= k <= k_total <= e */
	int renorm;
	uint32_t *idx;           /* [t, k_total] */
	float *weight;           /* [t, k] */
	enum cal_router_mode mode;
	/* softmax-then-top-k: round the k weights (after any renormalisation)
	 * to bf16, as transformers' Qwen2/Qwen3 MoE, OLMoE, Qwen3-Next and
	 * Qwen3.5 routers return them (docs/architectures.md) */
	int bf16_weights;
};

/* Sorts the (token, slot) pairs p = t*k_total + s by expert id idx[p]
 * (stable: equal experts keep pair order): sorted_pair[i] = the pair at
 * sorted position i, pair_pos[p] = its position, offsets[e] = first
 * position of expert e, offsets[n_experts] = n_pairs. */
struct cal_moe_sort_args {
	const uint32_t *idx;     /* [n_pairs], each < n_experts */
	uint64_t n_pairs;        /* < 2^32 */
	uint32_t n_experts;
	uint32_t *offsets;       /* [n_experts + 1] */
	uint32_t *sorted_pair;   /* [n_pairs] */
	uint32_t *pair_pos;      /* [n_pairs] */
};

/* How weighted expert outputs are summed (docs/architectures.md "Experts and
 * the MoE sum"). */
enum cal_combine_mode {
	/* HF eager experts (what modelopt forces): each weighted output
	 * bf16(w * y) is added to a bf16 accumulator in ascending expert order. */
	CAL_COMBINE_EAGER = 0,
	/* HF grouped_mm: fp32 sum over slots in slot order, one cast to bf16. */
	CAL_COMBINE_F32 = 1,
};

/* out[t, :] = combination over slots s < k of weight[t, s] * y[pair_pos[t*k_total+s], :]. */
struct cal_moe_combine_args {
	const uint16_t *y;       /* [rows, h] expert outputs in sorted order */
	uint64_t rows;
	const uint32_t *pair_pos; /* [t * k_total] */
	const uint32_t *idx;     /* [t * k_total] (expert order for EAGER) */
	const float *weight;     /* [t, k] */
	uint64_t t, h;
	uint32_t k, k_total;
	enum cal_combine_mode mode;
	uint16_t *out;           /* [t, h] */
};

/* Element-wise steps of the decoder, bf16 in and out (computed in fp32,
 * rounded once per HF op). */
enum cal_ewise_mode {
	CAL_EWISE_ADD = 0,       /* out = bf16(a + b) (residual add) */
	CAL_EWISE_SWIGLU = 1,    /* out = bf16(bf16(silu(a)) * b) */
	CAL_EWISE_GATE_ADD = 2,  /* out = bf16(a + bf16(bf16(sigmoid(g[r])) * b)) (shared expert) */
	CAL_EWISE_CLAMP = 3,     /* out = min(max(a, -clamp), clamp) (olmoe clip_qkv) */
	CAL_EWISE_SIGMOID_MUL = 4, /* out = bf16(a * bf16(sigmoid(b))) (gated attention output) */
	/* gpt_oss experts, a = gate, b = up, clamp = limit:
	 * g = min(a, clamp), u = min(max(b, -clamp), clamp),
	 * glu = bf16(g * bf16(sigmoid(bf16(g * alpha)))),
	 * out = bf16(bf16(u + 1) * glu) */
	CAL_EWISE_SWIGLU_OAI = 5,
	/* out = bf16(a + b[j]): b is one row, added to every row (ldb unused;
	 * the affine KV cache's bias in `calibd eval`) */
	CAL_EWISE_ADD_ROW = 6,
	/* out = bf16(a * b[j]): every row times one row (ldb unused; an input
	 * times its pre_quant_scale in `calibd eval`) */
	CAL_EWISE_MUL_ROW = 7,
	/* out = bf16(a - b) (AWQ's search: the output error, docs/awq.md) */
	CAL_EWISE_SUB = 8,
};

/* Row r, column j: a[r*lda + j], b[r*ldb + j] (ADD_ROW, MUL_ROW: b[j]), g[r*ldg],
 * out[r*ldo + j]; a row stride of 0 means cols.  out may alias a. */
struct cal_ewise_args {
	enum cal_ewise_mode mode;
	const uint16_t *a, *b, *g; /* b: every mode but CLAMP; g: GATE_ADD */
	uint16_t *out;
	uint64_t rows, cols;
	uint64_t lda, ldb, ldg, ldo;
	float clamp;
	float alpha;             /* SWIGLU_OAI */
};

/* ---- Gated DeltaNet (docs/architectures.md "Gated DeltaNet") ------------ */

#define CAL_GDN_CONV_MAX_KERNEL 64u
#define CAL_GDN_MAX_HEAD_DIM 256u
#define CAL_GDN_CHUNK 64u        /* tokens per chunk of the chunked algorithm */

/* Causal depthwise conv1d + SiLU over packed sequences (sequence s is rows
 * cu_seqlens[s] .. cu_seqlens[s+1]-1; rows before its start count as 0):
 * y[t, c] = bf16(silu(bf16(sum_{j<kernel} w[c, j] * x[t - kernel + 1 + j, c]))),
 * fp32 sum in j order. */
struct cal_gdn_conv_args {
	const uint16_t *x;       /* [t, channels] */
	const uint16_t *w;       /* [channels, kernel] (conv1d.weight [C, 1, K]) */
	uint16_t *y;             /* [t, channels], must not alias x */
	uint64_t t;
	uint32_t channels, kernel; /* 1 <= kernel <= CAL_GDN_CONV_MAX_KERNEL */
	const uint32_t *cu_seqlens; /* [n_seq + 1], 0 .. t, no empty sequence */
	uint32_t n_seq;
};

/* The Gated DeltaNet output norm (docs/architectures.md "Gated output norm"),
 * row by row: n = x * rsqrt(mean(x^2) + eps) in fp32 (as rmsnorm), y =
 * bf16(bf16(w * bf16(n)) * silu(z)), silu(u) = u / (1 + exp(-u)) in fp32. Rows
 * are (token, value head) pairs, cols = head_v_dim; w is shared. */
struct cal_rmsnorm_gated_args {
	const uint16_t *x;       /* [rows, cols] */
	const uint16_t *z;       /* [rows, cols] the gate (in_proj_z output) */
	uint16_t *y;             /* [rows, cols], may equal x */
	uint64_t rows, cols;
	const uint16_t *w;       /* [cols] bf16 */
	float eps;
};

/* Gated delta rule over packed sequences, state reset per sequence
 * (kernels/gated_delta.c states the formulas): gates from b, a, a_log,
 * dt_bias; q/k of key head h / (nv / nk) L2-normalised (q also scaled by
 * dk^-0.5); out = bf16(S^T q) per token and value head.  The CPU back end
 * runs the token-by-token recurrence (chunked = 0, the reference) or the
 * chunked algorithm (chunked = 1); CUDA always runs the chunked one.  Both
 * keep the state in fp32 and agree to fp32 rounding. */
struct cal_gated_delta_args {
	const uint16_t *qkv;     /* [t, 2*nk*dk + nv*dv]: q | k | v, head-major (conv output) */
	const uint16_t *b, *a;   /* [t, nv] in_proj_b / in_proj_a outputs */
	const float *a_log, *dt_bias; /* [nv] */
	uint16_t *out;           /* [t, nv*dv] */
	uint64_t t;
	uint32_t nk, nv, dk, dv; /* nv % nk == 0; dk, dv <= CAL_GDN_MAX_HEAD_DIM */
	const uint32_t *cu_seqlens; /* [n_seq + 1] */
	uint32_t n_seq;
	int chunked;             /* CPU: 0 token by token, 1 chunked (CAL_GDN_CHUNK) */
};

/* ---- DeepSeek-V3 (docs/deepseek.md) -------------------------------------- */

/* MLA keys and values per head from the kv_b_proj output and the shared
 * (roped) rope key, copies only:
 * k[t, n, :] = [kv[t, n, 0:dn] | kpe[t, 0:dr]], v[t, n, :] = kv[t, n, dn:dn+dv]. */
struct cal_mla_kv_args {
	const uint16_t *kv;      /* [t, nh, dn + dv] */
	const uint16_t *kpe;     /* [t, dr] */
	uint16_t *k;             /* [t, nh, dn + dr] */
	uint16_t *v;             /* [t, nh, dv] */
	uint64_t t;
	uint32_t nh, dn, dr, dv;
};

/* DeepSeek router (noaux_tc, HF DeepseekV3TopkRouter): logits[t, i] =
 * fl32 dot(x[t], w[i]) (fp32, k order; HF upcasts input and weight);
 * s = sigmoid(logits); c = s + bias (selection only); group score = the sum
 * of the two largest c of each of n_group consecutive groups; the topk_group
 * best groups are kept (ties: lower index); idx = the k_total largest c of
 * the kept experts (descending, ties: lower index; slots beyond the kept
 * experts take masked ones in index order); weight[s] = s[idx[s]] for
 * s < k, divided by (their fp32 sum + 1e-20) when renorm, then times
 * scaling.  Slots k .. k_total-1 are for statistics only. */
#define CAL_ROUTER_GROUP_MAX_GROUPS 64u
struct cal_router_group_args {
	const uint16_t *x;       /* [t, h] bf16 */
	const float *w;          /* [e, h] fp32 */
	const float *bias;       /* [e] e_score_correction_bias, or NULL (0) */
	float *logits;           /* [t, e] out (scratch: the fp32 logits) */
	uint64_t t, h;
	uint32_t e, k, k_total;  /* 1 <= k <= k_total <= e */
	uint32_t n_group, topk_group; /* e % n_group == 0, e / n_group >= 2 (or n_group 1),
				       * 1 <= topk_group <= n_group <= 64,
				       * k <= topk_group * e / n_group */
	int renorm;
	float scaling;           /* routed_scaling_factor */
	uint32_t *idx;           /* [t, k_total] */
	float *weight;           /* [t, k] */
};

/* Block-scaled FP8 source weights (DeepSeek-V3 checkpoints, quant_method
 * fp8): out[r, c] = bf16(fl32(e4m3(q[r, c]) * scale_inv[r / br, c / bc]))
 * with a ceil-div scale grid (partial edge blocks allowed). */
struct cal_fp8_block_dequant_args {
	const uint8_t *q;        /* [rows, cols] F8_E4M3 */
	const float *scale_inv;  /* [ceil(rows / br), ceil(cols / bc)] */
	uint64_t rows, cols;
	uint32_t block_rows, block_cols; /* >= 1 (128, 128) */
	uint16_t *out;           /* [rows, cols] bf16 */
};

/* ---- the table ---------------------------------------------------------- */

enum cal_op_id {
#define CAL_OP(name, NAME, desc) CAL_OPID_##NAME,
#include "kernels/ops.def"
#undef CAL_OP
	CAL_OP_COUNT
};

/* Keeps the tables that are not generated from ops.def honest (the tests'
 * case lists, docs/numerics.md): update them when this fails. */
#define CAL_OP_COUNT_EXPECTED 44

struct cal_ops {
#define CAL_OP(name, NAME, desc)                                               \
	enum cal_status (*name)(struct cal_backend *be,                        \
				const struct cal_##name##_args *a, struct cal_error *err);
#include "kernels/ops.def"
#undef CAL_OP
};

/* Name ("nvfp4_quant") and description of an op; NULL if out of range. */
const char *cal_op_name(enum cal_op_id id);
const char *cal_op_desc(enum cal_op_id id);

/* 1 when be runs op, else 0 (also for an op out of range).  The
 * dispatchers ask it first and answer CAL_ERR_UNSUPPORTED naming the op and
 * the back end. */
int cal_backend_supports_op(const struct cal_backend *be, enum cal_op_id op);

/* Dispatchers and argument checks (a check is also run by the dispatcher). */
#define CAL_OP(name, NAME, desc)                                               \
	enum cal_status cal_op_##name(struct cal_backend *be,                  \
				      const struct cal_##name##_args *a,       \
				      struct cal_error *err);                  \
	enum cal_status cal_check_##name(const struct cal_##name##_args *a,    \
					 struct cal_error *err);
#include "kernels/ops.def"
#undef CAL_OP

/* Back-end implementations (cal_cpu_* in kernels/<op>.c, cal_cuda_* in
 * kernels/cuda/<op>.cu); called through the table, after the check. */
#define CAL_OP(name, NAME, desc)                                               \
	enum cal_status cal_cpu_##name(struct cal_backend *be,                 \
				       const struct cal_##name##_args *a,      \
				       struct cal_error *err);                 \
	enum cal_status cal_cuda_##name(struct cal_backend *be,                \
					const struct cal_##name##_args *a,     \
					struct cal_error *err);
#include "kernels/ops.def"
#undef CAL_OP

/* Writes {0, CAL_NONFINITE_NONE} into a cal_nonfinite in back-end memory. */
enum cal_status cal_nonfinite_reset(struct cal_backend *be, struct cal_nonfinite *nf,
				    struct cal_error *err);

/* ---- export-side scalars (host) ----------------------------------------- */

/* NVFP4 input_scale = amax/2688 (docs/numerics.md "NVFP4 activations"). amax
 * must be finite and > 0 (modelopt asserts scale > 0 at export): else
 * CAL_ERR_NUMERIC. */
enum cal_status cal_nvfp4_input_scale(float amax, enum cal_div_mode mode, float *ret,
				      struct cal_error *err);

#ifdef __cplusplus
}
#endif

#endif
