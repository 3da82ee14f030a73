/*
 * chol_inv.c — GPTQ's f64 Cholesky factor and its inverse (kernels/ops.h,
 * docs/gptq.md), the C reference and CPU back end.
 *
 * Blocked with the column algorithms' arithmetic: NB = 32 columns at a time.
 * Cholesky: the block's diagonal rows column by column (every term from
 * k = 0, as the column algorithm), then every row below the block on the
 * back end's threads: its NB running sums side by side over k < j0 (the
 * block's rows transposed into a panel in `work`, read sequentially), then
 * the block's own columns in order, then the divisions.  Inverse: panels of
 * NB columns of L^-1 on the threads (panel p paired with the last - p so
 * the ranges balance), each row i of the panel from its rows c0 .. i-1
 * (rows above a column are 0, which leaves the running sum +0 as the
 * column algorithm that starts at that column).  Products and sums are
 * separate statements, which C11 does not contract, so the bytes are the
 * column algorithms' (tests/calib/test_gptq_factor.c) and the CUDA
 * kernels' (kernels/cuda/chol_inv.cu).  A batch is factored one matrix
 * after the other, each with all the threads.
 */
#include <math.h>
#include <string.h>

#include "kernels/internal.h"

#define NB 32

enum cal_status cal_check_chol_inv(const struct cal_chol_inv_args *a, struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_batch_n(a->batch, a->n, err)) < 0)
		return st;
	if ((st = cal_check_ptr(a->a, "a", err)) < 0 || (st = cal_check_ptr(a->y, "y", err)) < 0 ||
	    (st = cal_check_ptr(a->bad, "bad", err)) < 0 ||
	    (st = cal_check_ptr(a->work, "work", err)) < 0)
		return st;
	return CAL_OK;
}

struct chol_ctx {
	double *a, *panel;  /* panel[k][j] = L[j0 + j][k], k < j0 */
	uint64_t n, j0, j1;
};

/* Rows i >= j1: the block's columns of row i, all k < j then the division. */
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
		for (uint64_t k = 0; k < j0; k++) {
			const double xk = li[k], *pk = c->panel + k * NB;
			for (int j = 0; j < NB; j++) {
				double t = xk * pk[j];
				s[j] = s[j] - t;
			}
		}
		for (uint64_t j = 0; j < w; j++) {
			const double *lj = c->a + (j0 + j) * n;
			double v = s[j];
			for (uint64_t k = j0; k < j0 + j; k++) {
				double t = li[k] * lj[k];
				v = v - t;
			}
			li[j0 + j] = v / lj[j0 + j];
		}
	}
}

/* The block's diagonal rows j0 .. j1-1, column by column; 0, or -1 at a
 * pivot that is not positive and finite. */
static int chol_diag(double *a, uint64_t n, uint64_t j0, uint64_t j1)
{
	for (uint64_t j = j0; j < j1; j++) {
		double *lj = a + j * n, d = lj[j];
		for (uint64_t k = 0; k < j; k++) {
			double t = lj[k] * lj[k];
			d = d - t;
		}
		if (!(d > 0.0) || !isfinite(d))
			return -1;
		lj[j] = sqrt(d);
		for (uint64_t i = j + 1; i < j1; i++) {
			double *li = a + i * n, v = li[j];
			for (uint64_t k = 0; k < j; k++) {
				double t = li[k] * lj[k];
				v = v - t;
			}
			li[j] = v / lj[j];
		}
	}
	return 0;
}

struct inv_ctx {
	const double *l;
	double *y;
	uint64_t n, n_panels;
};

/* Columns c0 .. c0+NB-1 of y = L^-1. */
static void inv_panel(const struct inv_ctx *c, uint64_t c0)
{
	const uint64_t n = c->n, w = c0 + NB < n ? NB : n - c0;
	for (uint64_t i = 0; i < c0; i++)
		memset(c->y + i * n + c0, 0, w * sizeof(double));
	for (uint64_t i = c0; i < n; i++) {
		const double *li = c->l + i * n;
		double s[NB] = {0}, *yi = c->y + i * n + c0;
		for (uint64_t k = c0; k < i && w == NB; k++) {
			const double xk = li[k], *yk = c->y + k * n + c0;
			for (int j = 0; j < NB; j++) {
				double t = xk * yk[j];
				s[j] = s[j] + t;
			}
		}
		for (uint64_t k = c0; k < i && w < NB; k++) { /* the last, narrower panel */
			const double xk = li[k], *yk = c->y + k * n + c0;
			for (uint64_t j = 0; j < w; j++) {
				double t = xk * yk[j];
				s[j] = s[j] + t;
			}
		}
		for (uint64_t j = 0; j < w; j++) {
			uint64_t col = c0 + j;
			yi[j] = i < col ? 0.0 : i == col ? 1.0 / li[i] : -s[j] / li[i];
		}
	}
}

static void inv_cols(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct inv_ctx *c = p;
	(void)slot;
	for (uint64_t k = begin; k < end; k++) {
		inv_panel(c, k * NB);
		if (c->n_panels - 1 - k != k)
			inv_panel(c, (c->n_panels - 1 - k) * NB);
	}
}

/* One matrix of the batch. */
static enum cal_status chol_inv_one(struct cal_backend *be, const struct cal_chol_inv_args *a,
				    struct cal_error *err)
{
	const uint64_t n = a->n;
	struct chol_ctx c = {a->a, a->work, n, 0, 0};
	enum cal_status st;
	*a->bad = 0;
	for (uint64_t j0 = 0; j0 < n; j0 += NB) {
		uint64_t j1 = j0 + NB < n ? j0 + NB : n;
		if (chol_diag(a->a, n, j0, j1) < 0) {
			*a->bad = 1;
			return CAL_OK;
		}
		if (j1 == n)
			break;
		c.j0 = j0;
		c.j1 = j1;
		for (uint64_t k = 0; k < j0; k++)
			for (uint64_t j = 0; j < NB; j++)
				c.panel[k * NB + j] = j < j1 - j0 ? a->a[(j0 + j) * n + k] : 0.0;
		if ((st = cal_cpu_parallel(be, n - j1, 8, chol_rows, &c, err)) < 0)
			return st;
	}
	uint64_t np = (n + NB - 1) / NB;
	struct inv_ctx ic = {a->a, a->y, n, np};
	return cal_cpu_parallel(be, (np + 1) / 2, 1, inv_cols, &ic, err);
}

enum cal_status cal_cpu_chol_inv(struct cal_backend *be, const struct cal_chol_inv_args *a,
				 struct cal_error *err)
{
	const uint64_t n = a->n, nn = n * n, nw = (n + NB) * NB;
	enum cal_status st = CAL_OK;
	for (uint64_t b = 0; b < (a->batch ? a->batch : 1) && st >= 0; b++) {
		struct cal_chol_inv_args one = {a->a + b * nn, n, a->y + b * nn, a->bad + b,
						a->work + b * nw, 1};
		st = chol_inv_one(be, &one, err);
	}
	return st;
}
