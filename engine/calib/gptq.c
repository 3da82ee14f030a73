/*
 * gptq.c — GPTQ for one linear (engine/gptq.h, docs/gptq.md).
 *
 * Inverse factor: modelopt takes U = upper Cholesky factor of H^-1 (after
 * dead columns and damping) and falls back to the identity when a
 * factorisation fails.  We get the same U with one factorisation: with P
 * the reversal permutation and P H P = L L^T, H^-1 = (P L^-T P)(P L^-1 P)
 * and P L^-1 P is upper triangular with a positive diagonal, so
 * U[i][j] = L^-1[n-1-i][n-1-j].  It fails exactly when H is not positive
 * definite.  Double precision; the damped H, the factor and U are the
 * `gptq_factor` op (kernels/ops.h) on the back end the caller names, with
 * the sums and U in its memory: on the CPU back end the chol_inv op's
 * column algorithms on its threads, on a device cuSOLVER (U equal to a few
 * f32 ulps, not byte for byte: docs/gptq.md "Building blocks").
 *
 * Update (float, as modelopt's; every operation rounded on its own, never
 * contracted into a fused multiply-add, so compilers agree): rows are independent, so each thread
 * sweeps whole rows: per block of block_size columns, column i is rounded
 * to its 16-block's fixed NVFP4 grid, e = (w_i - q_i) / U[i][i] updates the
 * block's later columns by -e U[i][k]; after the block, the columns past it
 * get -sum_i e_i U[i][k].
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gptq.h"

/* h-weighted square v^T H v (f64). */
static double hquad(const double *h, const float *v, uint64_t n)
{
	double s = 0.0;
	for (uint64_t i = 0; i < n; i++) {
		if (v[i] == 0.0f)
			continue;
		double t = 0.0;
		for (uint64_t j = 0; j < n; j++)
			t += h[i * n + j] * v[j];
		s += t * v[i];
	}
	return s;
}

struct err_ctx {
	const uint16_t *w, *w_out;
	const double *h;
	uint64_t n;
	float *scratch;     /* per slot: 2 n floats */
	double *num, *den;  /* [rows] */
};

/* modelopt's logged error, per row: dW H dW and W H W. */
static void err_rows(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct err_ctx *c = p;
	uint64_t n = c->n;
	float *d = c->scratch + (uint64_t)slot * 2 * n, *w0 = d + n;
	for (uint64_t r = begin; r < end; r++) {
		for (uint64_t k = 0; k < n; k++) {
			w0[k] = cal_nf_bf16_to_f32(c->w[r * n + k]);
			d[k] = cal_nf_bf16_to_f32(c->w_out[r * n + k]) - w0[k];
		}
		c->num[r] = hquad(c->h, d, n);
		c->den[r] = hquad(c->h, w0, n);
	}
}

uint64_t cal_gptq_scratch_bytes(uint64_t rows, uint64_t cols)
{
	/* H, the factor / its inverse (f64), U (f32), the update's rows, stats */
	return cols * cols * (3 * sizeof(double) + sizeof(float)) +
	       rows * (cols + CAL_GPTQ_BLOCK) * sizeof(float) + 256 * 2 * cols * sizeof(float) +
	       rows * 16;
}

static enum cal_status check_args(const uint16_t *w, uint64_t rows, uint64_t cols,
				  const float *hsum, uint64_t n_samples,
				  const struct cal_gptq_opts *o, struct cal_error *err)
{
	if (!w || !hsum || !o)
		return cal_error_set(err, CAL_ERR_INVALID, "gptq: a NULL argument");
	if (!rows || !cols || cols % 16)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "gptq: weight [%llu, %llu] is empty or its input dim is "
				     "not a multiple of 16",
				     (unsigned long long)rows, (unsigned long long)cols);
	if (!n_samples)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "gptq: the Hessian saw no input rows (n_samples 0)");
	if (!(o->perc_damp > 0.0 && o->perc_damp <= 1.0))
		return cal_error_set(err, CAL_ERR_INVALID, "gptq: perc_damp = %g is not in (0, 1]",
				     o->perc_damp);
	if (!o->block_size || o->block_size % 16 || o->block_size > 65536)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "gptq: block_size = %u is not a positive multiple of the "
				     "NVFP4 block (16)",
				     o->block_size);
	return CAL_OK;
}

/* Column col of w is all zero (either sign). */
static int col_dead(const uint16_t *w, uint64_t rows, uint64_t n, uint64_t col)
{
	for (uint64_t r = 0; r < rows; r++)
		if (w[r * n + col] & 0x7fffu)
			return 0;
	return 1;
}

uint64_t cal_gptq_dead_mask(const uint16_t *w, uint64_t rows, uint64_t cols, uint8_t *dead)
{
	uint64_t cnt = 0;
	for (uint64_t col = 0; col < cols; col++)
		cnt += dead[col] = (uint8_t)col_dead(w, rows, cols, col);
	return cnt;
}

uint64_t cal_gptq_factor_dev_bytes(const struct cal_backend *be, uint64_t n, size_t count)
{
	/* the op's f64 scratch, then scale and damp (f64), bad (i32), dead */
	return cal_gptq_factor_work(n, be->kind != CAL_BACKEND_CPU) * sizeof(double) +
	       count * (2 * sizeof(double) + sizeof(int32_t) + n);
}

enum cal_status cal_gptq_factor_dev(struct cal_backend *be, uint64_t n, size_t count,
				    const float *hs, const uint8_t *dead, const uint64_t *n_samples,
				    const struct cal_gptq_opts *o, float *u, void *scratch,
				    struct cal_gptq_stats *stats, struct cal_error *err)
{
	uint64_t nn = n * n, wb = cal_gptq_factor_work(n, be->kind != CAL_BACKEND_CPU) * sizeof(double);
	double *sc = malloc(count * sizeof(double)), *dp = malloc(count * sizeof(double));
	int32_t *bad = malloc(count * sizeof(int32_t));
	float *eye = NULL;
	char *dw = scratch, *dsc = dw + wb, *ddp = dsc + count * sizeof(double),
	     *dbad = ddp + count * sizeof(double), *dd = dbad + count * sizeof(int32_t);
	enum cal_status st = CAL_OK;
	if (!sc || !dp || !bad) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
		goto out;
	}
	for (size_t k = 0; k < count; k++)
		sc[k] = 2.0 / (double)n_samples[k];
	if ((st = cal_backend_upload(be, dd, dead, count * n, err)) < 0 ||
	    (st = cal_backend_upload(be, dsc, sc, count * sizeof(double), err)) < 0)
		goto out;
	struct cal_gptq_factor_args fa = {hs,		  (const uint8_t *)dd,
					  (const double *)dsc, n,
					  o->perc_damp,	  u,
					  (double *)ddp,   (int32_t *)dbad,
					  (double *)dw,	  (uint32_t)count};
	if ((st = cal_op_gptq_factor(be, &fa, err)) < 0 ||
	    (st = cal_backend_download(be, dp, ddp, count * sizeof(double), err)) < 0 ||
	    (st = cal_backend_download(be, bad, dbad, count * sizeof(int32_t), err)) < 0)
		goto out;
	for (size_t k = 0; k < count; k++) {
		memset(&stats[k], 0, sizeof(stats[k]));
		for (uint64_t col = 0; col < n; col++)
			stats[k].dead_cols += dead[k * n + col] != 0;
		stats[k].damp = dp[k];
		stats[k].rel_err = NAN;
		if (!bad[k])
			continue;
		/* not positive definite after damping: modelopt's identity */
		stats[k].fallback = 1;
		if (!eye) {
			if (!(eye = calloc(nn, sizeof(float)))) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
				goto out;
			}
			for (uint64_t i = 0; i < n; i++)
				eye[i * n + i] = 1.0f;
		}
		if ((st = cal_backend_upload(be, u + k * nn, eye, nn * sizeof(float), err)) < 0)
			goto out;
	}
out:
	free(sc);
	free(dp);
	free(bad);
	free(eye);
	return st;
}

enum cal_status cal_gptq_factor_many(struct cal_backend *be, uint64_t cols, size_t count,
				     const struct cal_gptq_factor_in *in,
				     const struct cal_gptq_opts *o, float *const *u,
				     struct cal_gptq_stats *stats, struct cal_error *err)
{
	enum cal_status st;
	if (!in || !u || !stats || !count || count > 65535)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "gptq: a NULL argument or %zu factors (1 .. 65535)", count);
	for (size_t m = 0; m < count; m++) {
		if ((st = check_args(in[m].w, in[m].rows, cols, in[m].hsum, in[m].n_samples, o,
				     err)) < 0)
			return st;
		if (!u[m])
			return cal_error_set(err, CAL_ERR_INVALID, "gptq: a NULL argument");
	}
	/* the sums and U in back-end memory, the dead columns on the host */
	uint64_t nn = cols * cols;
	uint8_t *dead = malloc(count * cols);
	uint64_t *ns = malloc(count * sizeof(uint64_t));
	void *hs = NULL, *du = NULL, *scr = NULL;
	if (!dead || !ns) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
		goto out;
	}
	if ((st = cal_backend_alloc(be, count * nn * sizeof(float), &hs, err)) < 0 ||
	    (st = cal_backend_alloc(be, count * nn * sizeof(float), &du, err)) < 0 ||
	    (st = cal_backend_alloc(be, cal_gptq_factor_dev_bytes(be, cols, count), &scr, err)) < 0)
		goto out;
	for (size_t m = 0; m < count; m++) {
		cal_gptq_dead_mask(in[m].w, in[m].rows, cols, dead + m * cols);
		ns[m] = in[m].n_samples;
		if ((st = cal_backend_upload(be, (float *)hs + m * nn, in[m].hsum,
					     nn * sizeof(float), err)) < 0)
			goto out;
	}
	if ((st = cal_gptq_factor_dev(be, cols, count, hs, dead, ns, o, du, scr, stats, err)) < 0)
		goto out;
	for (size_t m = 0; m < count && st >= 0; m++)
		st = cal_backend_download(be, u[m], (float *)du + m * nn, nn * sizeof(float), err);
out:
	cal_backend_dealloc(be, hs);
	cal_backend_dealloc(be, du);
	cal_backend_dealloc(be, scr);
	free(dead);
	free(ns);
	return st;
}

enum cal_status cal_gptq_factor(struct cal_backend *be, const uint16_t *w, uint64_t rows,
				uint64_t cols, const float *hsum, uint64_t n_samples,
				const struct cal_gptq_opts *o, float *u,
				struct cal_gptq_stats *stats, struct cal_error *err)
{
	struct cal_gptq_factor_in in = {w, rows, hsum, n_samples};
	return cal_gptq_factor_many(be, cols, 1, &in, o, &u, stats, err);
}

enum cal_status cal_gptq_nvfp4(struct cal_backend *host, const uint16_t *w, uint64_t rows,
			       uint64_t cols, const float *hsum, uint64_t n_samples,
			       const struct cal_gptq_opts *o, const struct cal_gptq_nvfp4 *q,
			       uint16_t *w_out, struct cal_gptq_stats *stats,
			       struct cal_error *err)
{
	enum cal_status st = check_args(w, rows, cols, hsum, n_samples, o, err);
	if (st < 0)
		return st;
	if (!q || !q->block_amax || !w_out || !stats)
		return cal_error_set(err, CAL_ERR_INVALID, "gptq: a NULL argument");
	if (!(q->global_amax > 0.0f) || !isfinite(q->global_amax))
		return cal_error_set(err, CAL_ERR_NUMERIC, "gptq: global_amax = %g is not finite and > 0",
				     (double)q->global_amax);

	uint64_t n = cols;
	unsigned slots = cal_cpu_slots(host, rows, 1);
	double *h = o->no_rel_err ? NULL : malloc(n * n * sizeof(double));
	double *num = malloc(rows * 2 * sizeof(double));
	float *u = malloc(n * n * sizeof(float));
	float *work = malloc(rows * (n + o->block_size) * sizeof(float));
	float *scratch = malloc((uint64_t)slots * 2 * n * sizeof(float));
	if ((!o->no_rel_err && !h) || !num || !u || !work || !scratch) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: %llu bytes for a [%llu, %llu] linear",
				   (unsigned long long)cal_gptq_scratch_bytes(rows, cols),
				   (unsigned long long)rows, (unsigned long long)cols);
		goto out;
	}
	if ((st = cal_gptq_factor(host, w, rows, n, hsum, n_samples, o, u, stats, err)) < 0)
		goto out;
	for (uint64_t k = 0; h && k < n * n; k++) /* H (before the dead columns) */
		h[k] = 2.0 / (double)n_samples * hsum[k];
	struct cal_gptq_update_args ua = {w, rows, n, u, q->block_amax, q->global_amax,
					  q->norm_max, q->div, o->block_size, work, w_out};
	if ((st = cal_op_gptq_update(host, &ua, err)) < 0)
		goto out;
	stats->rel_err = NAN;
	if (h) {
		struct err_ctx ec = {w, w_out, h, n, scratch, num, num + rows};
		if ((st = cal_cpu_parallel(host, rows, 1, err_rows, &ec, err)) < 0)
			goto out;
		double sn = 0.0, sd = 0.0;
		for (uint64_t r = 0; r < rows; r++)
			sn += num[r], sd += num[rows + r];
		double cnt = (double)rows * (double)n;
		stats->rel_err = (sn / cnt) / (sd / cnt + 1e-6);
	}
out:
	free(h);
	free(num);
	free(u);
	free(work);
	free(scratch);
	return st;
}
