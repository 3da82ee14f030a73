/*
 * gptq.c — GPTQ for one linear (engine/gptq.h, docs/gptq.md).
 *
 * Inverse factor: modelopt takes U = upper Cholesky factor of H^-1 (after
 * dead columns and damping) and falls back to the identity when a
 * factorisation fails.  We get the same U with one factorisation: with P
 * the reversal permutation and P H P = L L^T, H^-1 = (P L^-T P)(P L^-1 P)
 * and P L^-1 P is upper triangular with a positive diagonal, so
 * U[i][j] = L^-1[n-1-i][n-1-j].  It fails exactly when H is not positive
 * definite.  Double precision, blocked (below); the Cholesky's rows and
 * the inverse's column panels run on the CPU back end's threads.
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

/*
 * Blocked factorisation with the unblocked algorithm's arithmetic: every
 * element of L and of L^-1 is computed by the same operations in the same
 * order as the textbook column algorithms (L[i][j] = (a[i][j] - l_i0 l_j0 -
 * l_i1 l_j1 - ...) / L[j][j], one rounded multiply and one rounded
 * subtraction per k, k ascending; L^-1 likewise by forward substitution),
 * so the bytes do not depend on the block size or the thread count
 * (tests/calib/test_gptq_factor.c checks them against the column
 * algorithms).  Only the loop order changes: NB columns at a time, the
 * NB running sums of a row kept side by side (independent chains the
 * compiler can put in vector registers), the block's rows transposed into a
 * panel read sequentially.
 */
#define NB 32

struct chol_ctx {
	double *a;          /* [n, n] row-major; lower triangle becomes L */
	double *panel;      /* [j1][NB]: panel[k][j] = L[j0 + j][k] */
	uint64_t n, j0, j1;
};

/* s[j] -= x_k panel[k][j] for k in [k0, k1), k ascending. */
static void row_update(double *s, const double *x, const double *panel, uint64_t k0,
		       uint64_t k1)
{
	for (uint64_t k = k0; k < k1; k++) {
		const double xk = x[k], *pk = panel + k * NB;
		for (int j = 0; j < NB; j++)
			s[j] -= xk * pk[j];
	}
}

/* Rows i >= j1: the block's columns j0 .. j1-1 of row i, all k < j then
 * the division (the diagonal block is factored). */
static void chol_rows(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct chol_ctx *c = p;
	const uint64_t n = c->n, j0 = c->j0, w = c->j1 - j0;
	double s[NB];
	(void)slot;
	for (uint64_t i = c->j1 + begin; i < c->j1 + end; i++) {
		double *li = c->a + i * n;
		for (uint64_t j = 0; j < NB; j++)
			s[j] = j < w ? li[j0 + j] : 0.0;
		row_update(s, li, c->panel, 0, j0);
		/* inside the block: column j needs L[i][j0 .. j-1] */
		for (uint64_t j = 0; j < w; j++) {
			const double *lj = c->a + (j0 + j) * n;
			double v = s[j];
			for (uint64_t k = j0; k < j0 + j; k++)
				v -= li[k] * lj[k];
			li[j0 + j] = v / lj[j0 + j];
		}
	}
}

/* The panel of columns j0 .. j1-1 over k < kmax: panel[k][j] = L[j0+j][k]. */
static void fill_panel(struct chol_ctx *c, uint64_t kmax)
{
	const uint64_t n = c->n, w = c->j1 - c->j0;
	for (uint64_t k = 0; k < kmax; k++)
		for (uint64_t j = 0; j < NB; j++)
			c->panel[k * NB + j] = j < w ? c->a[(c->j0 + j) * n + k] : 0.0;
}

/* In place: lower Cholesky factor of a.  Returns 0, or -1 when a is not
 * positive definite (a non-positive or non-finite pivot). */
static int cholesky(struct cal_backend *host, double *a, uint64_t n, enum cal_status *st,
		    struct cal_error *err)
{
	struct chol_ctx c = {a, malloc((n + NB) * NB * sizeof(double)), n, 0, 0};
	int bad = 0;
	if (!c.panel) {
		*st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
		return -1;
	}
	for (uint64_t j0 = 0; j0 < n && !bad; j0 += NB) {
		uint64_t j1 = j0 + NB < n ? j0 + NB : n;
		c.j0 = j0;
		c.j1 = j1;
		/* the diagonal block, column by column (its rows' k < j0 part
		 * first, in order, then k in the block) */
		for (uint64_t j = j0; j < j1 && !bad; j++) {
			double *lj = a + j * n, d = lj[j];
			for (uint64_t k = 0; k < j; k++)
				d -= lj[k] * lj[k];
			if (!(d > 0.0) || !isfinite(d)) {
				bad = 1;
				break;
			}
			lj[j] = sqrt(d);
			for (uint64_t i = j + 1; i < j1; i++) {
				double *li = a + i * n, v = li[j];
				for (uint64_t k = 0; k < j; k++)
					v -= li[k] * lj[k];
				li[j] = v / lj[j];
			}
		}
		if (bad || j1 == n)
			break;
		fill_panel(&c, j0);
		if ((*st = cal_cpu_parallel(host, n - j1, 8, chol_rows, &c, err)) < 0)
			bad = 1;
	}
	free(c.panel);
	return bad ? -1 : 0;
}

struct inv_ctx {
	const double *l;
	double *y;    /* [n][n]: column c of L^-1 stored as row c */
	uint64_t n, n_panels;
	double *buf;  /* per slot: [n][NB] */
};

/* Columns c0 .. c0+NB-1 of L^-1 (forward substitution, side by side),
 * stored as rows of y. */
static void inv_panel(const struct inv_ctx *c, uint64_t c0, double *b)
{
	const uint64_t n = c->n, w = c0 + NB < n ? NB : n - c0;
	for (uint64_t i = c0; i < n; i++) {
		const double *li = c->l + i * n;
		double s[NB] = {0}, *bi = b + (i - c0) * NB;
		/* rows k < column: y = 0, which leaves s = +0 as the column
		 * algorithm that starts at k = column */
		for (uint64_t k = c0; k < i; k++) {
			const double xk = li[k], *bk = b + (k - c0) * NB;
			for (int j = 0; j < NB; j++)
				s[j] += xk * bk[j];
		}
		for (uint64_t j = 0; j < NB; j++) {
			uint64_t col = c0 + j;
			bi[j] = j >= w || i < col ? 0.0 : i == col ? 1.0 / li[i] : -s[j] / li[i];
		}
	}
	for (uint64_t j = 0; j < w; j++) {
		double *y = c->y + (c0 + j) * n;
		memset(y, 0, c0 * sizeof(double));
		for (uint64_t i = c0; i < n; i++)
			y[i] = b[(i - c0) * NB + j];
	}
}

/* Item k: panels k and n_panels-1-k (panel p costs ~(n - p NB)^2 NB / 2, so
 * the pairs cost about the same and the threads' ranges balance). */
static void inv_cols(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	struct inv_ctx *c = p;
	double *b = c->buf + (uint64_t)slot * c->n * NB;
	for (uint64_t k = begin; k < end; k++) {
		inv_panel(c, k * NB, b);
		if (c->n_panels - 1 - k != k)
			inv_panel(c, (c->n_panels - 1 - k) * NB, b);
	}
}

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

/* H = 2 hsum / n in h (f64), and U into u; h may be NULL. */
static enum cal_status factor(struct cal_backend *host, const uint16_t *w, uint64_t rows,
			      uint64_t n, const float *hsum, uint64_t n_samples,
			      const struct cal_gptq_opts *o, float *u, double *h,
			      struct cal_gptq_stats *stats, struct cal_error *err)
{
	double *a = malloc(n * n * sizeof(double)), *y = malloc(n * n * sizeof(double));
	enum cal_status st = CAL_OK;
	if (!a || !y) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: %llu bytes for a [%llu, %llu] linear",
				   (unsigned long long)cal_gptq_scratch_bytes(rows, n),
				   (unsigned long long)rows, (unsigned long long)n);
		goto out;
	}
	memset(stats, 0, sizeof(*stats));
	/* H = 2 hsum / n; dead columns (all-zero weight) get a unit diagonal */
	double f = 2.0 / (double)n_samples;
	for (uint64_t k = 0; k < n * n; k++)
		a[k] = f * hsum[k];
	if (h)
		memcpy(h, a, n * n * sizeof(double));
	for (uint64_t col = 0; col < n; col++) {
		int dead = 1;
		for (uint64_t r = 0; r < rows && dead; r++)
			dead = (w[r * n + col] & 0x7fffu) == 0;
		if (!dead)
			continue;
		stats->dead_cols++;
		for (uint64_t k = 0; k < n; k++)
			a[col * n + k] = a[k * n + col] = 0.0;
		a[col * n + col] = 1.0;
	}
	double tr = 0.0;
	for (uint64_t k = 0; k < n; k++)
		tr += a[k * n + k];
	stats->damp = o->perc_damp * tr / (double)n;
	for (uint64_t k = 0; k < n; k++)
		a[k * n + k] += stats->damp;

	/* reversed order: y := P a P, factor it, invert the factor */
	for (uint64_t i = 0; i < n; i++)
		for (uint64_t j = 0; j < n; j++)
			y[i * n + j] = a[(n - 1 - i) * n + (n - 1 - j)];
	int bad = cholesky(host, y, n, &st, err);
	if (st < 0)
		goto out;
	if (!bad) {
		uint64_t np = (n + NB - 1) / NB;
		unsigned slots = cal_cpu_slots(host, (np + 1) / 2, 1);
		struct inv_ctx ic = {y, a, n, np, malloc((uint64_t)slots * n * NB * sizeof(double))};
		if (!ic.buf) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
			goto out;
		}
		st = cal_cpu_parallel(host, (np + 1) / 2, 1, inv_cols, &ic, err);
		free(ic.buf);
		if (st < 0)
			goto out;
		/* a row c = column c of L^-1: L^-1[r][c] = a[c n + r];
		 * U[i][j] = L^-1[n-1-i][n-1-j] = a[(n-1-j) n + (n-1-i)] */
		for (uint64_t i = 0; i < n; i++)
			for (uint64_t j = 0; j < n; j++) {
				double v = j >= i ? a[(n - 1 - j) * n + (n - 1 - i)] : 0.0;
				u[i * n + j] = (float)v;
				if (j == i && !(u[i * n + j] > 0.0f && isfinite(u[i * n + j])))
					bad = 1;
			}
	}
	if (bad) {
		stats->fallback = 1;
		memset(u, 0, n * n * sizeof(float));
		for (uint64_t k = 0; k < n; k++)
			u[k * n + k] = 1.0f;
	}
out:
	free(a);
	free(y);
	return st;
}

enum cal_status cal_gptq_factor(struct cal_backend *host, const uint16_t *w, uint64_t rows,
				uint64_t cols, const float *hsum, uint64_t n_samples,
				const struct cal_gptq_opts *o, float *u,
				struct cal_gptq_stats *stats, struct cal_error *err)
{
	enum cal_status st = check_args(w, rows, cols, hsum, n_samples, o, err);
	if (st < 0)
		return st;
	if (!u || !stats)
		return cal_error_set(err, CAL_ERR_INVALID, "gptq: a NULL argument");
	st = factor(host, w, rows, cols, hsum, n_samples, o, u, NULL, stats, err);
	stats->rel_err = NAN;
	return st;
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
	if ((st = factor(host, w, rows, n, hsum, n_samples, o, u, h, stats, err)) < 0)
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
