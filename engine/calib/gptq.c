/*
 * gptq.c — GPTQ for one linear (engine/gptq.h, docs/gptq.md).
 *
 * Inverse factor: modelopt takes U = upper Cholesky factor of H^-1 (after
 * dead columns and damping) and falls back to the identity when a
 * factorisation fails.  We get the same U with one factorisation: with P
 * the reversal permutation and P H P = L L^T, H^-1 = (P L^-T P)(P L^-1 P)
 * and P L^-1 P is upper triangular with a positive diagonal, so
 * U[i][j] = L^-1[n-1-i][n-1-j].  It fails exactly when H is not positive
 * definite.  Double precision; the factor and its inverse are the
 * `chol_inv` op (kernels/ops.h) on the back end the caller names (the CPU
 * back end's threads, or a device), the same bytes on every back end.
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

/* The chol_inv op on be for nb matrices back to back: l (host, [nb, n, n])
 * becomes L, y (host) L^-1; bad[k] the op's flag of matrix k.  A back end
 * without host memory works on device copies. */
static enum cal_status chol_inv(struct cal_backend *be, double *l, double *y, uint64_t n,
				size_t nb, int32_t *bad, struct cal_error *err)
{
	uint64_t mb = nb * n * n * sizeof(double), wb = nb * (n + 32) * 32 * sizeof(double);
	enum cal_status st = CAL_OK;
	for (size_t k = 0; k < nb; k++)
		bad[k] = 0;
	if (cal_backend_supports(be, CAL_BACKEND_FEATURE_HOST_MEMORY)) {
		double *work = malloc(wb);
		if (!work)
			return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
		struct cal_chol_inv_args ca = {l, n, y, bad, work, (uint32_t)nb};
		st = cal_op_chol_inv(be, &ca, err);
		free(work);
		return st;
	}
	void *dl = NULL, *dy = NULL, *dw = NULL, *db = NULL;
	if ((st = cal_backend_alloc(be, mb, &dl, err)) >= 0 &&
	    (st = cal_backend_alloc(be, mb, &dy, err)) >= 0 &&
	    (st = cal_backend_alloc(be, wb, &dw, err)) >= 0 &&
	    (st = cal_backend_alloc(be, nb * sizeof(int32_t), &db, err)) >= 0 &&
	    (st = cal_backend_upload(be, dl, l, mb, err)) >= 0) {
		struct cal_chol_inv_args ca = {dl, n, dy, db, dw, (uint32_t)nb};
		if ((st = cal_op_chol_inv(be, &ca, err)) >= 0 &&
		    (st = cal_backend_download(be, bad, db, nb * sizeof(int32_t), err)) >= 0)
			st = cal_backend_download(be, y, dy, mb, err);
	}
	cal_backend_dealloc(be, dl);
	cal_backend_dealloc(be, dy);
	cal_backend_dealloc(be, dw);
	cal_backend_dealloc(be, db);
	return st;
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

void cal_gptq_damped_hessian(const uint16_t *w, uint64_t rows, uint64_t n, const float *hsum,
			     uint64_t n_samples, double perc_damp, double *a, double *h,
			     uint64_t *dead_cols, double *damp)
{
	/* H = 2 hsum / n; dead columns (all-zero weight) get a unit diagonal */
	double f = 2.0 / (double)n_samples;
	for (uint64_t k = 0; k < n * n; k++)
		a[k] = f * hsum[k];
	if (h)
		memcpy(h, a, n * n * sizeof(double));
	*dead_cols = 0;
	for (uint64_t col = 0; col < n; col++) {
		if (!col_dead(w, rows, n, col))
			continue;
		(*dead_cols)++;
		for (uint64_t k = 0; k < n; k++)
			a[col * n + k] = a[k * n + col] = 0.0;
		a[col * n + col] = 1.0;
	}
	double tr = 0.0;
	for (uint64_t k = 0; k < n; k++)
		tr += a[k * n + k];
	*damp = perc_damp * tr / (double)n;
	for (uint64_t k = 0; k < n; k++)
		a[k * n + k] += *damp;
}

/* U of count linears of input dim n into u[k] (stats[k]), one batched
 * chol_inv; H = 2 hsum / n of linear 0 in h (may be NULL). */
static enum cal_status factor(struct cal_backend *be, uint64_t n, size_t count,
			      const struct cal_gptq_factor_in *in, const struct cal_gptq_opts *o,
			      float *const *u, double *h, struct cal_gptq_stats *stats,
			      struct cal_error *err)
{
	uint64_t nn = n * n;
	double *a = malloc(count * nn * sizeof(double)), *y = malloc(count * nn * sizeof(double));
	int32_t *bad = malloc(count * sizeof(int32_t));
	enum cal_status st = CAL_OK;
	if (!a || !y || !bad) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: %llu bytes for %zu [%llu, %llu] factors",
				   (unsigned long long)(count * nn * 2 * sizeof(double)), count,
				   (unsigned long long)n, (unsigned long long)n);
		goto out;
	}
	for (size_t m = 0; m < count; m++) {
		double *am = a + m * nn, *ym = y + m * nn;
		memset(&stats[m], 0, sizeof(stats[m]));
		cal_gptq_damped_hessian(in[m].w, in[m].rows, n, in[m].hsum, in[m].n_samples,
					o->perc_damp, am, m ? NULL : h, &stats[m].dead_cols,
					&stats[m].damp);
		/* reversed order: y := P a P, factor it, invert the factor */
		for (uint64_t i = 0; i < n; i++)
			for (uint64_t j = 0; j < n; j++)
				ym[i * n + j] = am[(n - 1 - i) * n + (n - 1 - j)];
	}
	if ((st = chol_inv(be, y, a, n, count, bad, err)) < 0)
		goto out;
	for (size_t m = 0; m < count; m++) {
		const double *am = a + m * nn;
		float *um = u[m];
		int b = bad[m] != 0;
		/* a = L^-1; U[i][j] = L^-1[n-1-i][n-1-j] */
		for (uint64_t i = 0; i < n && !b; i++)
			for (uint64_t j = 0; j < n; j++) {
				double v = j >= i ? am[(n - 1 - i) * n + (n - 1 - j)] : 0.0;
				um[i * n + j] = (float)v;
				if (j == i && !(um[i * n + j] > 0.0f && isfinite(um[i * n + j])))
					b = 1;
			}
		stats[m].rel_err = NAN;
		if (b) {
			stats[m].fallback = 1;
			memset(um, 0, nn * sizeof(float));
			for (uint64_t k = 0; k < n; k++)
				um[k * n + k] = 1.0f;
		}
	}
out:
	free(a);
	free(y);
	free(bad);
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
	return factor(be, cols, count, in, o, u, NULL, stats, err);
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
	struct cal_gptq_factor_in in = {w, rows, hsum, n_samples};
	if ((st = factor(host, n, 1, &in, o, &u, h, stats, err)) < 0)
		goto out;
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
