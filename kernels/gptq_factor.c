/*
 * gptq_factor.c — GPTQ's inverse factor U from Hessian sums (kernels/ops.h,
 * docs/gptq.md "Building blocks"), the C reference and CPU back end: per
 * matrix the damped H (cal_gptq_damped), reversed, the chol_inv op's
 * column-algorithm factor and inverse on the back end's threads, then
 * U[i][j] = L^-1[n-1-i][n-1-j] rounded to f32.  The CUDA back end
 * (kernels/cuda/gptq_factor.cu) makes the same H and the factor with
 * cuSOLVER.
 */
#include <math.h>
#include <string.h>

#include "kernels/internal.h"

void cal_gptq_damped(const float *hsum, const uint8_t *dead, double scale, uint64_t n,
		     double perc_damp, double *a, double *damp)
{
	for (uint64_t k = 0; k < n * n; k++)
		a[k] = scale * (double)hsum[k];
	for (uint64_t col = 0; col < n; col++) {
		if (!dead[col])
			continue;
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

CAL_CHECK_OP(gptq_factor)
{
	enum cal_status st;
	if ((st = cal_check_batch_n(a->batch, a->n, err)) < 0)
		return st;
	if (!(a->perc_damp > 0.0 && a->perc_damp <= 1.0))
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'perc_damp' = %g is not in (0, 1]",
				     a->perc_damp);
	if ((st = CAL_CHECK_PTRS(a, err, hsum, dead, scale, u, damp, bad, work)) < 0)
		return st;
	return CAL_OK;
}

CAL_CPU_OP(gptq_factor)
{
	const uint64_t n = a->n, nn = n * n;
	enum cal_status st = CAL_OK;
	for (uint64_t b = 0; b < (a->batch ? a->batch : 1) && st >= 0; b++) {
		double *h = a->work, *y = h + nn; /* reused by every matrix */
		float *u = a->u + b * nn;
		int32_t bad = 0;
		cal_gptq_damped(a->hsum + b * nn, a->dead + b * n, a->scale[b], n, a->perc_damp, h,
				&a->damp[b]);
		/* y := the reversed H; the op leaves L in y and L^-1 in h */
		for (uint64_t i = 0; i < n; i++)
			for (uint64_t j = 0; j < n; j++)
				y[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
		struct cal_chol_inv_args ca = {y, n, h, &bad, y + nn, 1};
		if ((st = cal_cpu_chol_inv(be, &ca, err)) < 0)
			break;
		for (uint64_t i = 0; i < n && !bad; i++)
			for (uint64_t j = 0; j < n; j++) {
				float v = j >= i ? (float)h[(n - 1 - i) * n + (n - 1 - j)] : 0.0f;
				u[i * n + j] = v;
				if (!isfinite(v) || (j == i && !(v > 0.0f)))
					bad = 1;
			}
		a->bad[b] = bad;
	}
	return st;
}
