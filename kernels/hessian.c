/*
 * hessian.c — GPTQ Hessian observer (docs/gptq.md): h += X^T X over all rows
 * of x or the gathered rows x[index[k]], fp32, one fused multiply-add per
 * row in order for each element (the order the CUDA version uses too).
 * Reference and CPU back end: the selected rows are widened once into a
 * column-major fp32 copy, items are pairs of output rows (i, cols-1-i) so
 * the upper-triangle work splits evenly; each element (i, j >= i) is
 * written to both triangles.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/internal.h"

struct hess_ctx {
	const struct cal_hessian_args *a;
	const float *xt; /* [cols][n] */
	uint64_t n;      /* selected rows */
};

static void hess_row(const struct hess_ctx *c, uint64_t i)
{
	const struct cal_hessian_args *a = c->a;
	const float *xi = c->xt + i * c->n;
	for (uint64_t j = i; j < a->cols; j++) {
		const float *xj = c->xt + j * c->n;
		float s = 0.0f;
		for (uint64_t t = 0; t < c->n; t++)
			s = fmaf(xi[t], xj[t], s);
		float v = cal_nan_canon(a->h[i * a->cols + j] + s);
		a->h[i * a->cols + j] = v;
		a->h[j * a->cols + i] = v;
	}
}

static void hess_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct hess_ctx *c = p;
	uint64_t cols = c->a->cols;
	(void)slot;
	for (uint64_t k = begin; k < end; k++) {
		hess_row(c, k);
		if (cols - 1 - k != k)
			hess_row(c, cols - 1 - k);
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
	float *xt = malloc(want * a->cols * sizeof(float));
	if (!xt)
		return cal_error_set(err, CAL_ERR_NOMEM, "hessian: %llu x %llu fp32 staging copy",
				     (unsigned long long)want, (unsigned long long)a->cols);
	/* n counts the rows kept (out-of-range indices skipped); column c of
	 * the copy starts at c * want, filled up to n */
	for (uint64_t k = 0; k < want; k++) {
		uint64_t r = a->index ? a->index[k] : k;
		if (r >= a->rows)
			continue;
		for (uint64_t c = 0; c < a->cols; c++)
			xt[c * want + n] = a->dtype == CAL_DTYPE_BF16
						   ? cal_nf_bf16_to_f32(((const uint16_t *)a->x)[r * a->cols + c])
						   : ((const float *)a->x)[r * a->cols + c];
		n++;
	}
	/* even with every index out of range (n == 0) the upper triangle is
	 * written to both halves, as the CUDA kernel does */
	if (n < want) /* compact the columns to stride n */
		for (uint64_t c = 1; c < a->cols; c++)
			for (uint64_t t = 0; t < n; t++)
				xt[c * n + t] = xt[c * want + t];
	struct hess_ctx c = {a, xt, n};
	enum cal_status st = cal_cpu_parallel(be, (a->cols + 1) / 2, 1, hess_range, &c, err);
	free(xt);
	return st;
}
