/*
 * awq.c — AWQ-lite for one INT4 linear (engine/awq.h, docs/awq.md).  Each
 * step is in modelopt's dtypes: bf16 tensors round every element-wise
 * result to bf16, fp32 tensors stay fp32, GEMM outputs are bf16 (awq_lite's
 * and the NVFP4 clip's: the back end's gemm op, fp32 accumulation; the
 * INT4 clip's block products: summed in double here, rounded once), the
 * INT4 fake quantizer works in fp32.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/awq.h"
#include "engine/calib/torch_pow.h"
#include "kernels/numfmt.h"
#include "kernels/ops.h"

static inline float bf(uint16_t h)
{
	return cal_nf_bf16_to_f32(h);
}

static inline uint16_t tobf(float f)
{
	return cal_nf_f32_to_bf16(f);
}

/* modelopt's get_scale: s = clamp(act^a / (ws^(1-a) + tiny), 1e-4, 1e4),
 * then s / sqrt(max s * min s). */
static void awq_scale(const float *act, const float *ws, uint64_t cols, float a, float *s)
{
	float e = (float)(1.0 - (double)a), mx = 0.0f, mn = INFINITY;
	for (uint64_t c = 0; c < cols; c++) {
		float v = cal_torch_pow(act[c], a) / (cal_torch_pow(ws[c], e) + 1.17549435e-38f);
		v = v < 1e-4f ? 1e-4f : v > 1e4f ? 1e4f : v;
		s[c] = v;
		mx = v > mx ? v : mx;
		mn = v < mn ? v : mn;
	}
	float d = sqrtf(mx * mn);
	for (uint64_t c = 0; c < cols; c++)
		s[c] = s[c] / d;
}

/* amax[b] = max |w| over the b-th block of blk values (n a multiple of blk). */
static void block_amax(const uint16_t *w, uint64_t n, uint64_t blk, float *amax)
{
	for (uint64_t b = 0; b < n / blk; b++) {
		float m = 0.0f;
		for (uint64_t k = 0; k < blk; k++) {
			float a = fabsf(bf(w[b * blk + k]));
			m = a > m ? a : m;
		}
		amax[b] = m;
	}
}

/* INT4 fake quantization of one 128-block with amax `amax`, in place (bf16
 * in and out, fp32 inside): scale 7 / amax, codes clamped to [-8, 7]
 * (modelopt's default, narrow_range false; only a clipped amax, awq_clip's,
 * reaches -8). */
static void int4_block_at(uint16_t *v, float amax)
{
	float sc = 7.0f / amax;
	int zero = amax <= 1.0f / 16777216.0f;
	for (int k = 0; k < 128; k++) {
		float q = zero ? 0.0f : cal_rint(bf(v[k]) * sc);
		q = q < -8.0f ? -8.0f : q > 7.0f ? 7.0f : q;
		v[k] = tobf(q / (zero ? 1.0f : sc));
	}
}

/* The same with the block's own amax (awq_lite's dynamic search). */
static void int4_block(uint16_t *v)
{
	float amax = 0.0f;
	block_amax(v, 128, 128, &amax);
	int4_block_at(v, amax);
}

/* modelopt's dynamic NVFP4 fake quantization of one 16-block against the
 * tensor's global scale g = amax / (6 * 448) (docs/awq.md "NVFP4"): block
 * scale e4m3(min(bmax / (6 g), 448)) * g (1 when under 1e-5), values to the
 * nearest E2M1 magnitude of |v| / scale (ties to even), bf16 out. */
static void nvfp4_block(uint16_t *v, float g)
{
	float bmax = 0.0f;
	for (int k = 0; k < 16; k++) {
		float a = fabsf(bf(v[k]));
		bmax = a > bmax ? a : bmax;
	}
	float q = bmax / (6.0f * g);
	q = q > 448.0f ? 448.0f : q;
	float s = cal_e4m3_decode(cal_e4m3_encode(q)) * g;
	if (!(s >= 1e-5f))
		s = 1.0f;
	for (int k = 0; k < 16; k++) {
		float x = bf(v[k]);
		float r = cal_e2m1_magnitude(cal_e2m1_encode_nvfp4(fabsf(x) / s)) * s;
		v[k] = tobf(x >= 0.0f ? r : -r);
	}
}

/* NVFP4's global scale g = amax / (6 * 448), 1e-12 when 0. */
static float nvfp4_g(float amax)
{
	float g = amax / 2688.0f;
	return g > 0.0f ? g : 1e-12f;
}

/* ---- the searches on the back end (docs/awq.md "What runs where") -------------------------- */

/* A search over n candidate weights of one linear, its GEMMs on the back end. */
struct awq_ctx {
	enum cal_awq_wq wq;
	const uint16_t *w, *x;
	const uint16_t *bias;   /* [rows] bf16 or NULL: inside each output's rounding */
	uint64_t rows, cols, tokens, batch;
	unsigned n;
	double *loss;           /* [n] out */
	/* candidate i: sets sb (and pin with scale_x) and, NVFP4, g */
	void (*cand)(struct awq_ctx *c, unsigned i);
	const void *arg;        /* cand's */
	int scale_x;            /* the candidates scale the input (pin) */
	uint16_t *sb;           /* [cols] the weight's column scale, bf16 */
	uint16_t *pin;          /* [cols] the input's, bf16 (scale_x) */
	float g;                /* NVFP4: the scaled weight's global scale */
	const float *cmax;      /* NVFP4: [cols] max |w| per column */
	uint16_t *qw;           /* [rows, cols]: the candidate's weight */
};

/* Rows [begin, end) of a candidate's weight: bf16(W * sb), fake-quantized
 * (INT4: each 128-block at its own amax; NVFP4: blocks of 16 at c->g). */
static void wq_rows(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct awq_ctx *c = p;
	uint64_t C = c->cols;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		uint16_t *o = c->qw + r * C;
		for (uint64_t k = 0; k < C; k++)
			o[k] = tobf(bf(c->w[r * C + k]) * bf(c->sb[k]));
		if (c->wq == CAL_AWQ_WQ_INT4)
			for (uint64_t b = 0; b < C / 128; b++)
				int4_block(o + b * 128);
		else
			for (uint64_t b = 0; b < C / 16; b++)
				nvfp4_block(o + b * 16, c->g);
	}
}

/* The tokens of one chunk of a search on the back end: x, xin [tc, cols]
 * and y, yq [tc, rows] bf16 plus tc row sums (f64 pairs) within max_bytes,
 * at least one, at most every token. */
static uint64_t chunk_tokens(uint64_t rows, uint64_t cols, uint64_t tokens, uint64_t max_bytes)
{
	uint64_t tc = max_bytes / CAL_AWQ_TOKEN_BYTES(rows, cols);
	return !tc ? 1 : tc < tokens ? tc : tokens;
}

/* Back-end buffers of a search. */
enum { D_X, D_XIN, D_Y, D_YQ, D_W, D_WQ, D_PIN, D_BIAS, D_SUMS, D_COUNT };

/* The loss of every candidate (c->loss).  Per chunk of tokens on the
 * back end: y = gemm(x, W) (+bias) once; per candidate its fake-quantized
 * weight (host threads) and input scale uploaded, xin = bf16(x * pin)
 * (ewise MUL_ROW; x without scale_x), yq = gemm(xin, Wq) (+bias),
 * bf16(yq - y) (ewise SUB) and its per-token sum of squares in f64
 * (err_rows); only those sums come back.  They add up in token order per
 * calibration batch (across chunks: the same bytes however the tokens are
 * cut), and each batch's mean over its tokens * rows outputs adds to the
 * candidate's fp32 loss in batch order. */
static enum cal_status search(const struct cal_awq_dev *dev, struct awq_ctx *c,
			      struct cal_error *err)
{
	struct cal_backend *be = dev->be;
	const uint64_t R = c->rows, C = c->cols, T = c->tokens;
	uint64_t tc = chunk_tokens(R, C, T, dev->max_bytes ? dev->max_bytes : CAL_AWQ_CHUNK_BYTES);
	size_t sz[D_COUNT] = {tc * C * 2, tc * C * 2, tc * R * 2, tc * R * 2, R * C * 2, R * C * 2,
			      C * 2, R * 2, tc * 2 * sizeof(double)};
	void *d[D_COUNT] = {0};
	float *cmax = calloc(C, sizeof(float)), *total = calloc(c->n, sizeof(float));
	double *part = calloc(c->n, sizeof(double)); /* each candidate's open batch */
	uint16_t *sb = malloc(C * 2), *pin = malloc(C * 2), *qw = malloc(R * C * 2);
	double *sums = malloc(tc * 2 * sizeof(double));
	enum cal_status st = CAL_OK;
	if (!cmax || !total || !part || !sb || !pin || !qw || !sums)
		st = cal_error_set(err, CAL_ERR_NOMEM, "awq: search scratch for [%llu, %llu]",
				   (unsigned long long)R, (unsigned long long)C);
	for (int i = 0; st >= 0 && i < D_COUNT; i++)
		if ((i != D_BIAS || c->bias) && ((i != D_XIN && i != D_PIN) || c->scale_x))
			st = cal_backend_alloc(be, sz[i], &d[i], err);
	if (st >= 0)
		st = cal_backend_upload(be, d[D_W], c->w, R * C * 2, err);
	if (st >= 0 && c->bias)
		st = cal_backend_upload(be, d[D_BIAS], c->bias, R * 2, err);
	if (st < 0)
		goto out;
	for (uint64_t i = 0; c->wq == CAL_AWQ_WQ_NVFP4 && i < R * C; i++)
		cmax[i % C] = fmaxf(cmax[i % C], fabsf(bf(c->w[i])));
	c->cmax = cmax;
	c->sb = sb;
	c->pin = pin;
	c->qw = qw;
	for (uint64_t t0 = 0; t0 < T && st >= 0; t0 += tc) {
		uint64_t m = t0 + tc < T ? tc : T - t0;
		struct cal_gemm_args y = {.x = d[D_X], .w = d[D_W], .bias = d[D_BIAS], .y = d[D_Y],
					  .m = m, .n = R, .k = C};
		struct cal_gemm_args yq = y;
		struct cal_ewise_args xin = {.mode = CAL_EWISE_MUL_ROW, .a = d[D_X], .b = d[D_PIN],
					     .out = d[D_XIN], .rows = m, .cols = C};
		struct cal_ewise_args dif = {.mode = CAL_EWISE_SUB, .a = d[D_YQ], .b = d[D_Y],
					     .out = d[D_YQ], .rows = m, .cols = R};
		struct cal_err_rows_args sq = {NULL, d[D_YQ], d[D_YQ], m, R, d[D_SUMS]};
		yq.x = c->scale_x ? d[D_XIN] : d[D_X];
		yq.w = d[D_WQ];
		yq.y = d[D_YQ];
		if ((st = cal_backend_upload(be, d[D_X], c->x + t0 * C, m * C * 2, err)) < 0 ||
		    (st = cal_op_gemm(be, &y, err)) < 0)
			break;
		for (unsigned i = 0; i < c->n && st >= 0; i++) {
			c->cand(c, i);
			if ((st = cal_cpu_parallel(dev->host, R, 1 + 65536 / C, wq_rows, c, err)) < 0 ||
			    (st = cal_backend_upload(be, d[D_WQ], qw, R * C * 2, err)) < 0 ||
			    (c->scale_x && ((st = cal_backend_upload(be, d[D_PIN], pin, C * 2, err)) < 0 ||
					(st = cal_op_ewise(be, &xin, err)) < 0)) ||
			    (st = cal_op_gemm(be, &yq, err)) < 0 ||
			    (st = cal_op_ewise(be, &dif, err)) < 0 ||
			    (st = cal_op_err_rows(be, &sq, err)) < 0 ||
			    (st = cal_backend_download(be, sums, d[D_SUMS], m * 2 * sizeof(double),
						       err)) < 0)
				break;
			for (uint64_t j = 0, t = t0; j < m; j++, t++) {
				part[i] += sums[2 * j + 1];
				if ((t + 1) % c->batch == 0 || t + 1 == T) { /* its batch ends */
					total[i] += (float)(part[i] / (double)((t % c->batch + 1) * R));
					part[i] = 0.0;
				}
			}
		}
	}
	for (unsigned i = 0; st >= 0 && i < c->n; i++)
		c->loss[i] = total[i];
out:
	for (int i = 0; i < D_COUNT; i++)
		cal_backend_dealloc(be, d[i]);
	free(cmax), free(total), free(part), free(sb), free(pin), free(qw), free(sums);
	return st;
}

/* awq_lite's candidates: the alphas. */
struct lite_arg {
	const float *act, *ws, *alphas;
	float *s;               /* [cols] scratch */
};

/* Alpha i: s from act and ws, the weight times bf16(s), the input times
 * bf16(1/s); NVFP4's global amax, that of the scaled weight, is
 * max_c bf16(cmax[c] * bf16(s[c])) (bf16(|w| * s) grows with |w|). */
static void lite_cand(struct awq_ctx *c, unsigned i)
{
	const struct lite_arg *a = c->arg;
	float amax = 0.0f;
	awq_scale(a->act, a->ws, c->cols, a->alphas[i], a->s);
	for (uint64_t k = 0; k < c->cols; k++) {
		c->sb[k] = tobf(a->s[k]);
		c->pin[k] = tobf(1.0f / a->s[k]);
		amax = fmaxf(amax, bf(tobf(c->cmax[k] * bf(c->sb[k]))));
	}
	c->g = nvfp4_g(amax);
}

/* A weight the search cannot take: empty, or its input dim not a multiple
 * of wq's block. */
static enum cal_status shape_error(const char *who, uint64_t rows, uint64_t cols,
				   enum cal_awq_wq wq, struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_INVALID, "%s: weight [%llu, %llu]: the input dim is "
			     "not a multiple of the %s block (%d)", who, (unsigned long long)rows,
			     (unsigned long long)cols, wq == CAL_AWQ_WQ_NVFP4 ? "NVFP4" : "INT4",
			     wq == CAL_AWQ_WQ_NVFP4 ? 16 : 128);
}

enum cal_status cal_awq_lite_int4(struct cal_backend *host, const uint16_t *w, uint64_t rows,
				  uint64_t cols, const uint16_t *x, uint64_t tokens,
				  uint64_t batch, double alpha_step, struct cal_awq_out *out,
				  struct cal_error *err)
{
	return cal_awq_lite(host, CAL_AWQ_WQ_INT4, w, rows, cols, x, tokens, batch, alpha_step,
			    out, NULL, err);
}

enum cal_status cal_awq_lite(struct cal_backend *host, enum cal_awq_wq wq, const uint16_t *w,
			     uint64_t rows, uint64_t cols, const uint16_t *x, uint64_t tokens,
			     uint64_t batch, double alpha_step, struct cal_awq_out *out,
			     float *in_amax, struct cal_error *err)
{
	struct cal_awq_dev dev = {host, host, 0};
	return cal_awq_lite_bias(&dev, wq, w, NULL, rows, cols, x, tokens, batch, alpha_step, out,
				 in_amax, err);
}

enum cal_status cal_awq_lite_bias(const struct cal_awq_dev *dev, enum cal_awq_wq wq,
				  const uint16_t *w, const uint16_t *bias, uint64_t rows,
				  uint64_t cols, const uint16_t *x, uint64_t tokens, uint64_t batch,
				  double alpha_step, struct cal_awq_out *out, float *in_amax,
				  struct cal_error *err)
{
	const uint64_t BLK = wq == CAL_AWQ_WQ_NVFP4 ? 16 : 128;
	if (!dev || !dev->be || !dev->host || !w || !x || !out || !out->pre_quant_scale ||
	    !out->w || !out->w_amax)
		return cal_error_set(err, CAL_ERR_INVALID, "awq_lite: a NULL argument");
	if (!rows || !cols || cols % BLK)
		return shape_error("awq_lite", rows, cols, wq, err);
	if (!tokens || !batch)
		return cal_error_set(err, CAL_ERR_INVALID, "awq_lite: no calibration tokens");
	if (!(alpha_step > 0.0 && alpha_step <= 1.0))
		return cal_error_set(err, CAL_ERR_INVALID, "awq_lite: alpha_step = %g is not in (0, 1]",
				     (double)alpha_step);
	/* alphas as torch.arange(0, 1 + step, step) in fp32 gives them */
	double st = alpha_step;
	unsigned n = (unsigned)ceil((1.0 + st) / st);
	if (n > CAL_AWQ_MAX_ALPHAS)
		return cal_error_set(err, CAL_ERR_INVALID, "awq_lite: alpha_step = %g gives over %d alphas",
				     (double)alpha_step, CAL_AWQ_MAX_ALPHAS);
	float alphas[CAL_AWQ_MAX_ALPHAS];
	double loss[CAL_AWQ_MAX_ALPHAS];
	for (unsigned i = 0; i < n; i++)
		alphas[i] = (float)((double)i * st);

	float *act = calloc(cols, sizeof(float)), *ws = calloc(cols, sizeof(float));
	float *s = malloc(cols * sizeof(float));
	double *acc = malloc(cols * sizeof(double));
	enum cal_status rc = CAL_OK;
	if (!act || !ws || !s || !acc) {
		rc = cal_error_set(err, CAL_ERR_NOMEM, "awq_lite: %llu channels", (unsigned long long)cols);
		goto done;
	}
	/* act: mean over steps of the per-batch channel mean |x| (bf16) */
	uint64_t steps = 0;
	for (uint64_t t0 = 0; t0 < tokens; t0 += batch, steps++) {
		uint64_t t1 = t0 + batch < tokens ? t0 + batch : tokens;
		memset(acc, 0, cols * sizeof(double));
		for (uint64_t t = t0; t < t1; t++)
			for (uint64_t k = 0; k < cols; k++)
				acc[k] += fabsf(bf(x[t * cols + k]));
		for (uint64_t k = 0; k < cols; k++)
			act[k] += bf(tobf((float)(acc[k] / (double)(t1 - t0))));
	}
	for (uint64_t k = 0; k < cols; k++)
		act[k] = act[k] / (float)steps;
	/* wscale: column mean (bf16) of |w| / (block amax + tiny) (bf16) */
	memset(acc, 0, cols * sizeof(double));
	for (uint64_t b = 0; b < rows * cols / BLK; b++) {
		float amax = 0.0f;
		for (uint64_t k = 0; k < BLK; k++) {
			float a = fabsf(bf(w[b * BLK + k]));
			amax = a > amax ? a : amax;
		}
		float den = bf(tobf(amax + 1.17549435e-38f));
		for (uint64_t k = 0; k < BLK; k++)
			acc[(b * BLK + k) % cols] += bf(tobf(fabsf(bf(w[b * BLK + k])) / den));
	}
	for (uint64_t k = 0; k < cols; k++)
		ws[k] = bf(tobf((float)(acc[k] / (double)rows)));

	struct lite_arg la = {act, ws, alphas, s};
	struct awq_ctx c = {.wq = wq, .w = w, .x = x, .bias = bias, .rows = rows, .cols = cols,
			    .tokens = tokens, .batch = batch, .n = n, .loss = loss,
			    .cand = lite_cand, .arg = &la, .scale_x = 1};
	if ((rc = search(dev, &c, err)) < 0)
		goto done;
	unsigned best = 0;
	for (unsigned i = 1; i < n; i++)
		if (loss[i] < loss[best])
			best = i;
	out->n_alpha = n;
	out->best_alpha = alphas[best];
	if (out->loss)
		memcpy(out->loss, loss, n * sizeof(double));
	/* fold: pre_quant_scale p = 1/s, W' = W * (1/p), block amax of W' */
	awq_scale(act, ws, cols, alphas[best], s);
	for (uint64_t k = 0; k < cols; k++) {
		float pq = 1.0f / s[k];
		out->pre_quant_scale[k] = tobf(pq);
		s[k] = 1.0f / pq;
		act[k] = pq; /* fp32, for the input amax */
	}
	for (uint64_t i = 0; i < rows * cols; i++)
		out->w[i] = tobf(bf(w[i]) * s[i % cols]);
	block_amax(out->w, rows * cols, BLK, out->w_amax);
	if (in_amax) { /* max over channels of channel amax * fp32 pre_quant_scale, bf16 */
		float m = 0.0f;
		memset(ws, 0, cols * sizeof(float));
		for (uint64_t t = 0; t < tokens; t++)
			for (uint64_t k = 0; k < cols; k++) {
				float v = fabsf(bf(x[t * cols + k]));
				ws[k] = v > ws[k] ? v : ws[k];
			}
		for (uint64_t k = 0; k < cols; k++) {
			float v = ws[k] * act[k];
			m = v > m ? v : m;
		}
		*in_amax = bf(tobf(m));
	}
done:
	free(act), free(ws), free(s), free(acc);
	return rc;
}

/* ---- export fold (docs/awq.md "Export", docs/smoothquant.md "Export") ------------------------------------------- */

enum cal_status cal_resmooth_group(uint16_t *const *w, const uint64_t *rows, size_t n,
				   uint64_t cols, uint64_t block, const uint16_t *const *pqs,
				   uint16_t *avg, float *const *w_amax, float *in_amax,
				   struct cal_error *err)
{
	if (!w || !rows || !pqs || !avg || !w_amax || !n)
		return cal_error_set(err, CAL_ERR_INVALID, "resmooth: a NULL argument or no linear");
	if (!cols || !block || cols % block)
		return cal_error_set(err, CAL_ERR_INVALID, "resmooth: input dim %llu is not a "
				     "multiple of the weight amax block (%llu)",
				     (unsigned long long)cols, (unsigned long long)block);
	/* torch's CPU mean of bf16: fp32 sum in order, divided by n, rounded */
	for (uint64_t c = 0; c < cols; c++) {
		float sum = 0.0f;
		for (size_t i = 0; i < n; i++)
			sum += bf(pqs[i][c]);
		avg[c] = tobf(sum / (float)n);
	}
	for (size_t i = 0; i < n; i++) {
		int same = 1;
		for (uint64_t c = 0; same && c < cols; c++)
			same = bf(pqs[i][c]) == bf(avg[c]);
		if (!same) /* W * old / new in fp32, rounded to bf16 */
			for (uint64_t j = 0; j < rows[i] * cols; j++)
				w[i][j] = tobf(bf(w[i][j]) * bf(pqs[i][j % cols]) / bf(avg[j % cols]));
		block_amax(w[i], rows[i] * cols, block, w_amax[i]);
	}
	float m = 0.0f; /* the group's per-tensor input amax: their max */
	for (size_t i = 0; in_amax && i < n; i++)
		m = in_amax[i] > m ? in_amax[i] : m;
	for (size_t i = 0; in_amax && i < n; i++)
		in_amax[i] = m;
	return CAL_OK;
}

void cal_awq_fuse_rows(uint16_t *w, uint64_t rows, uint64_t cols, const uint16_t *pqs)
{
	for (uint64_t r = 0; r < rows; r++)
		for (uint64_t c = 0; c < cols; c++)
			w[r * cols + c] = tobf(bf(w[r * cols + c]) * bf(pqs[r]));
}

void cal_awq_fuse_norm(uint16_t *norm, const uint16_t *pqs, uint64_t cols, int plus_one)
{
	for (uint64_t c = 0; c < cols; c++)
		norm[c] = plus_one ? tobf(bf(tobf(bf(tobf(bf(norm[c]) + 1.0f)) * bf(pqs[c]))) - 1.0f)
				   : tobf(bf(norm[c]) * bf(pqs[c]));
}

/* ---- awq_clip (docs/awq.md "awq_full") ---------------------------------------------------- */

/* The amax a clip ratio gives: ratio * amax (fp32), rounded to bf16 when
 * modelopt's amax tensor is bf16. */
static float clip_amax(const struct cal_awq_clip_opts *o, float ratio, float amax)
{
	float v = ratio * amax;
	return o->amax_bf16 ? bf(tobf(v)) : v;
}

struct clip_ctx {
	const struct cal_awq_clip_opts *o;
	const uint16_t *w, *xs;      /* xs: the selected rows of bf16(x * pqs) [n_sel, cols] */
	uint64_t rows, cols;
	const uint64_t *step_end;    /* [n_steps]: each step's end row in xs */
	uint64_t n_steps, n_sel;
	const float *ratios;
	unsigned n_ratio;
	float *amax;                 /* [rows, cols / 128]: in the block amax, out the clip */
	int nomem;
};

/* bf16 of sum_k bf16(a[k] * b[k]) over one 128-block (torch's bf16 product,
 * then its sum, rounded once). */
static float block_dot(const uint16_t *a, const uint16_t *b)
{
	double s = 0.0;
	for (int k = 0; k < 128; k++)
		s += bf(tobf(bf(a[k]) * bf(b[k])));
	return bf(tobf((float)s));
}

/* The clip search for rows [begin, end): per 128-block, every ratio's
 * loss summed over the steps, the first least one wins. */
static void clip_rows(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct clip_ctx *c = p;
	uint64_t nb = c->cols / 128;
	float *org = malloc((c->n_sel ? c->n_sel : 1) * sizeof(float));
	float *loss = malloc(c->n_ratio * sizeof(float));
	uint16_t q[128];
	(void)slot;
	if (!org || !loss) {
		c->nomem = 1;
		goto out;
	}
	for (uint64_t r = begin; r < end; r++)
		for (uint64_t b = 0; b < nb; b++) {
			const uint16_t *wb = c->w + r * c->cols + b * 128;
			float wa = c->amax[r * nb + b];
			for (uint64_t t = 0; t < c->n_sel; t++)
				org[t] = block_dot(c->xs + t * c->cols + b * 128, wb);
			for (unsigned j = 0; j < c->n_ratio; j++)
				loss[j] = 0.0f;
			for (unsigned j = 0; j < c->n_ratio; j++) {
				memcpy(q, wb, sizeof(q));
				int4_block_at(q, clip_amax(c->o, c->ratios[j], wa));
				for (uint64_t s = 0, t = 0; s < c->n_steps; s++) {
					uint64_t t0 = t;
					double sum = 0.0;
					for (; t < c->step_end[s]; t++) {
						float d = bf(tobf(block_dot(c->xs + t * c->cols + b * 128,
									    q) - org[t]));
						sum += (double)d * d;
					}
					if (t > t0) /* the step's mean over its rows, fp32 */
						loss[j] += (float)sum / (float)(t - t0);
				}
			}
			float best_loss = INFINITY, best = 0.0f;
			for (unsigned j = 0; j < c->n_ratio; j++)
				if (loss[j] < best_loss) {
					best_loss = loss[j];
					best = clip_amax(c->o, c->ratios[j], wa);
				}
			c->amax[r * nb + b] = best;
		}
out:
	free(org);
	free(loss);
}

unsigned cal_awq_clip_ratios(double min_ratio, double step, float *ratios)
{
	/* torch.arange(min, 1.0, step) in fp32 (sized and stepped in double),
	 * each rounded to 2 decimals, then 1.0 */
	double nd = ceil((1.0 - min_ratio) / step);
	unsigned n = nd > 0.0 ? (unsigned)nd : 0;
	if (n + 1 > CAL_AWQ_MAX_RATIOS)
		return 0;
	for (unsigned i = 0; i < n; i++) {
		float v = (float)(min_ratio + step * (double)i);
		ratios[i] = (float)(nearbyint((double)v * 100.0) / 100.0);
	}
	ratios[n] = 1.0f;
	return n + 1;
}

static enum cal_status clip_nomem(uint64_t rows, uint64_t cols, uint64_t tokens,
				  struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_NOMEM, "awq_clip: scratch for [%llu, %llu] and %llu "
			     "tokens", (unsigned long long)rows, (unsigned long long)cols,
			     (unsigned long long)tokens);
}

/* What both clip searches start from: the clip ratios, and the search's
 * input rows: per step of `batch` rows, the rows 0, s, 2s, .. (s = max(1,
 * n / max_tokens); every row when max_tokens is 0), times pqs (bf16) when
 * given, xs [n_sel, cols], step_end [n_steps] each step's end row in xs. */
struct clip_prep {
	float ratios[CAL_AWQ_MAX_RATIOS];
	unsigned nr;
	uint16_t *xs;
	uint64_t *step_end, n_steps, n_sel;
};

/* The argument checks, then p (freed with clip_prep_free, also on error). */
static enum cal_status clip_prepare(const uint16_t *w, uint64_t rows, uint64_t cols,
				    const uint16_t *x, uint64_t tokens, uint64_t batch,
				    const uint16_t *pqs, const struct cal_awq_clip_opts *o,
				    const float *amax, enum cal_awq_wq wq, uint64_t max_tokens,
				    struct clip_prep *p, struct cal_error *err)
{
	p->xs = NULL;
	p->step_end = NULL;
	if (!w || !x || !o || !amax)
		return cal_error_set(err, CAL_ERR_INVALID, "awq_clip: a NULL argument");
	if (!rows || !cols || cols % (wq == CAL_AWQ_WQ_NVFP4 ? 16 : 128))
		return shape_error("awq_clip", rows, cols, wq, err);
	if (!tokens || !batch || !o->max_tokens)
		return cal_error_set(err, CAL_ERR_INVALID, "awq_clip: no calibration tokens");
	if (!(o->min_ratio > 0.0 && o->min_ratio <= 1.0 && o->step > 0.0 && o->step <= 1.0))
		return cal_error_set(err, CAL_ERR_INVALID, "awq_clip: min_clip_ratio = %g, "
				     "shrink_step = %g: both must be in (0, 1]", o->min_ratio,
				     o->step);
	if (!(p->nr = cal_awq_clip_ratios(o->min_ratio, o->step, p->ratios)))
		return cal_error_set(err, CAL_ERR_INVALID, "awq_clip: min_clip_ratio = %g, "
				     "shrink_step = %g give over %d clip ratios", o->min_ratio,
				     o->step, CAL_AWQ_MAX_RATIOS);
	uint64_t ns = (tokens + batch - 1) / batch, sel = 0;
	if (!(p->step_end = malloc(ns * sizeof(uint64_t))))
		return clip_nomem(rows, cols, tokens, err);
	for (uint64_t s = 0, t0 = 0; s < ns; s++, t0 += batch) {
		uint64_t n = t0 + batch < tokens ? batch : tokens - t0;
		uint64_t st = max_tokens && n / max_tokens ? n / max_tokens : 1;
		sel += (n + st - 1) / st;
		p->step_end[s] = sel;
	}
	if (!(p->xs = malloc(sel * cols * 2)))
		return clip_nomem(rows, cols, tokens, err);
	for (uint64_t s = 0, t0 = 0, i = 0; s < ns; s++, t0 += batch) {
		uint64_t n = t0 + batch < tokens ? batch : tokens - t0;
		uint64_t st = max_tokens && n / max_tokens ? n / max_tokens : 1;
		for (uint64_t t = t0; t < t0 + n; t += st, i++)
			for (uint64_t k = 0; k < cols; k++)
				p->xs[i * cols + k] = pqs ? tobf(bf(x[t * cols + k]) * bf(pqs[k]))
							  : x[t * cols + k];
	}
	p->n_steps = ns;
	p->n_sel = sel;
	return CAL_OK;
}

static void clip_prep_free(struct clip_prep *p)
{
	free(p->xs);
	free(p->step_end);
}

enum cal_status cal_awq_clip_int4(struct cal_backend *host, const uint16_t *w, uint64_t rows,
				  uint64_t cols, const uint16_t *x, uint64_t tokens,
				  uint64_t batch, const uint16_t *pqs,
				  const struct cal_awq_clip_opts *o, float *amax,
				  struct cal_error *err)
{
	struct clip_prep p;
	enum cal_status rc = clip_prepare(w, rows, cols, x, tokens, batch, pqs, o, amax,
					  CAL_AWQ_WQ_INT4, o ? o->max_tokens : 0, &p, err);
	if (rc >= 0) {
		block_amax(w, rows * cols, 128, amax);
		struct clip_ctx c = {o, w, p.xs, rows, cols, p.step_end, p.n_steps, p.n_sel,
				     p.ratios, p.nr, amax, 0};
		rc = cal_cpu_parallel(host, rows, 1, clip_rows, &c, err);
		if (rc >= 0 && c.nomem)
			rc = clip_nomem(rows, cols, tokens, err);
	}
	clip_prep_free(&p);
	return rc;
}

/* ---- awq_clip per tensor (NVFP4 weights; docs/awq.md "awq_clip with NVFP4") ---------------- */

/* The per-tensor clip's candidates: the clip ratios. */
struct tclip_arg {
	const struct cal_awq_clip_opts *o;
	const float *ratios;
	float w_amax;
};

/* Ratio j: the weight as it is (sb 1), fake-quantized at the global amax
 * ratio * w_amax. */
static void tclip_cand(struct awq_ctx *c, unsigned j)
{
	const struct tclip_arg *a = c->arg;
	for (uint64_t k = 0; k < c->cols; k++)
		c->sb[k] = tobf(1.0f);
	c->g = nvfp4_g(clip_amax(a->o, a->ratios[j], a->w_amax));
}

enum cal_status cal_awq_clip_nvfp4(const struct cal_awq_dev *dev, const uint16_t *w,
				   uint64_t rows, uint64_t cols, const uint16_t *x,
				   uint64_t tokens, uint64_t batch, const uint16_t *pqs,
				   const struct cal_awq_clip_opts *o, float *amax, double *loss,
				   struct cal_error *err)
{
	double ls[CAL_AWQ_MAX_RATIOS];
	struct clip_prep p;
	if (!dev || !dev->be || !dev->host)
		return cal_error_set(err, CAL_ERR_INVALID, "awq_clip: a NULL argument");
	enum cal_status rc = clip_prepare(w, rows, cols, x, tokens, batch, pqs, o, amax,
					  CAL_AWQ_WQ_NVFP4, 0, &p, err);
	float wa = 0.0f;
	for (uint64_t i = 0; rc >= 0 && i < rows * cols; i++)
		wa = fmaxf(wa, fabsf(bf(w[i])));
	/* every row of every step (no subsampling): xs is [tokens, cols] in
	 * steps of batch, the search's batches */
	struct tclip_arg ta = {o, p.ratios, wa};
	struct awq_ctx c = {.wq = CAL_AWQ_WQ_NVFP4, .w = w, .x = p.xs, .rows = rows, .cols = cols,
			    .tokens = tokens, .batch = batch, .n = p.nr, .loss = ls,
			    .cand = tclip_cand, .arg = &ta};
	if (rc >= 0 && (rc = search(dev, &c, err)) >= 0) {
		unsigned best = 0;
		for (unsigned j = 1; j < p.nr; j++)
			if ((float)ls[j] < (float)ls[best])
				best = j;
		*amax = clip_amax(o, p.ratios[best], wa);
		if (loss)
			memcpy(loss, ls, p.nr * sizeof(double));
	}
	clip_prep_free(&p);
	return rc;
}

float cal_awq_in_amax(const uint16_t *x, uint64_t tokens, uint64_t cols, const uint16_t *pqs)
{
	float m = 0.0f;
	for (uint64_t t = 0; t < tokens; t++)
		for (uint64_t k = 0; k < cols; k++) {
			float v = fabsf(pqs ? bf(tobf(bf(x[t * cols + k]) * bf(pqs[k])))
					    : bf(x[t * cols + k]));
			m = v > m ? v : m;
		}
	return m;
}
