/*
 * hessian.c — GPTQ Hessian observer (docs/gptq.md): h += X^T X over all rows
 * of x or the gathered rows x[index[k]], fp32, one fused multiply-add per
 * row in order for each element (the order the CUDA version uses too).
 * Reference and CPU back end: the selected rows are widened once into a
 * row-major fp32 copy padded to whole tiles; a tile is HT_I x HT_J
 * elements of the upper triangle whose sums run together over the rows
 * (each its own chain of fused multiply-adds in row order, so the bytes are
 * those of one element at a time); an item is a pair of tile rows (k,
 * last - k) so the triangle's work splits evenly; each element (i, j >= i)
 * is written to both triangles.  On x86-64 CPUs with FMA the tiles run in a
 * clone compiled for it (the fused multiply-add an instruction, the tile's
 * columns in vector registers); elsewhere fmaf() gives the same values.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/internal.h"

#define HT_I 4  /* rows of a tile */
#define HT_J 16 /* columns of a tile */

struct hess_ctx {
	const struct cal_hessian_args *a;
	const float *x; /* [n][cp] */
	uint64_t n, cp; /* selected rows, padded columns (a multiple of HT_J) */
	uint64_t nti;   /* tile rows */
	int fma;        /* the FMA clone */
};

/* Tile (i0, j0): element (i0 + a, j0 + b) is acc[a][b]. */
static inline __attribute__((always_inline)) void
hess_tile_body(const struct hess_ctx *c, uint64_t i0, uint64_t j0)
{
	const struct cal_hessian_args *a = c->a;
	float acc[HT_I][HT_J];
	memset(acc, 0, sizeof(acc));
	for (uint64_t t = 0; t < c->n; t++) {
		const float *r = c->x + t * c->cp;
		for (int u = 0; u < HT_I; u++) {
			float xu = r[i0 + u];
			for (int b = 0; b < HT_J; b++)
				acc[u][b] = fmaf(xu, r[j0 + b], acc[u][b]);
		}
	}
	for (int u = 0; u < HT_I; u++) {
		uint64_t i = i0 + (uint64_t)u;
		for (int b = 0; b < HT_J && i < a->cols; b++) {
			uint64_t j = j0 + (uint64_t)b;
			if (j < i || j >= a->cols)
				continue;
			float v = cal_nan_canon(a->h[i * a->cols + j] + acc[u][b]);
			a->h[i * a->cols + j] = v;
			a->h[j * a->cols + i] = v;
		}
	}
}

static void hess_tile(const struct hess_ctx *c, uint64_t i0, uint64_t j0)
{
	hess_tile_body(c, i0, j0);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HESS_FMA 1
__attribute__((target("avx2,fma"))) static void hess_tile_fma(const struct hess_ctx *c,
								uint64_t i0, uint64_t j0)
{
	hess_tile_body(c, i0, j0);
}
#endif

/* Tile row k: the tiles from the diagonal's to the last column. */
static void hess_tile_row(const struct hess_ctx *c, uint64_t k)
{
	uint64_t i0 = k * HT_I;
	for (uint64_t j0 = i0 / HT_J * HT_J; j0 < c->cp; j0 += HT_J) {
#ifdef HESS_FMA
		if (c->fma) {
			hess_tile_fma(c, i0, j0);
			continue;
		}
#endif
		hess_tile(c, i0, j0);
	}
}

static void hess_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct hess_ctx *c = p;
	(void)slot;
	for (uint64_t k = begin; k < end; k++) {
		hess_tile_row(c, k);
		if (c->nti - 1 - k != k)
			hess_tile_row(c, c->nti - 1 - k);
	}
}

CAL_CHECK_OP(hessian)
{
	enum cal_status st;
	if ((st = cal_check_obs_dtype(a->dtype, err)) < 0 ||
	    (st = cal_check_shape(a->rows, a->cols, 1, err)) < 0)
		return st;
	if (a->rows >= (UINT64_C(1) << 32))
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'rows' = %llu is not < 2^32",
				     (unsigned long long)a->rows);
	if (a->cols > 65536)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'cols' = %llu is over 65536",
				     (unsigned long long)a->cols);
	if (a->index && a->n_index >= (UINT64_C(1) << 32))
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'n_index' = %llu is not < 2^32",
				     (unsigned long long)a->n_index);
	if (a->cols && (st = cal_check_ptr(a->h, "h", err)) < 0)
		return st;
	if (a->rows && a->cols && (st = cal_check_ptr(a->x, "x", err)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(hessian)
{
	uint64_t n = 0, want = a->index ? a->n_index : a->rows;
	if (!a->cols || !a->rows || !want)
		return CAL_OK;
	/* padded to whole tiles in both directions (zeros: their sums are
	 * never written) */
	uint64_t cp = (a->cols + HT_J - 1) / HT_J * HT_J;
	float *x = calloc(want * cp, sizeof(float));
	if (!x)
		return cal_error_set(err, CAL_ERR_NOMEM, "hessian: %llu x %llu fp32 staging copy",
				     (unsigned long long)want, (unsigned long long)a->cols);
	/* n counts the rows kept (out-of-range indices skipped) */
	for (uint64_t k = 0; k < want; k++) {
		uint64_t r = a->index ? a->index[k] : k;
		if (r >= a->rows)
			continue;
		for (uint64_t c = 0; c < a->cols; c++)
			x[n * cp + c] = a->dtype == CAL_DTYPE_BF16
						? cal_nf_bf16_to_f32(((const uint16_t *)a->x)[r * a->cols + c])
						: ((const float *)a->x)[r * a->cols + c];
		n++;
	}
	/* even with every index out of range (n == 0) the upper triangle is
	 * written to both halves, as the CUDA kernel does */
	uint64_t nti = (a->cols + HT_I - 1) / HT_I;
	struct hess_ctx c = {a, x, n, cp, nti, 0};
#ifdef HESS_FMA
	c.fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
	enum cal_status st = cal_cpu_parallel(be, (nti + 1) / 2, 1, hess_range, &c, err);
	free(x);
	return st;
}
