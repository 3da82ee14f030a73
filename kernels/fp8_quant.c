/*
 * fp8_quant.c — FP8 E4M3 per-tensor weight quantizer (docs/numerics.md "FP8
 * per tensor"):
 *   CAL_DIV_RECIP (CUDA run): q = e4m3(bf16(fl32(x / bf16(S))))
 *   CAL_DIV_EXACT (CPU run):  q = e4m3(bf16(fl32(x / S)))
 *   single_round (stacked 3-D expert weights, both runs): q = e4m3(fl32(x / S))
 *   row_scale (FP8 per channel, both runs): S_r = cal_fp8_row_scale(max |x|
 *   of row r), q = e4m3(fl32(x / S_r))
 * Reference and CPU back end; items are elements (rows with row_scale).
 */
#include "kernels/internal.h"

struct fp8_ctx {
	const struct cal_fp8_quant_args *a;
	float divisor;
};

static void fp8_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct fp8_ctx *c = p;
	(void)slot;
	if (c->a->single_round) {
		for (uint64_t i = begin; i < end; i++)
			c->a->q[i] = cal_fp8_weight_encode_single(cal_nf_bf16_to_f32(c->a->w[i]),
								  c->a->scale);
		return;
	}
	for (uint64_t i = begin; i < end; i++)
		c->a->q[i] = cal_fp8_weight_encode(cal_nf_bf16_to_f32(c->a->w[i]), c->divisor);
}

/* Rows [begin, end) of the per-channel mode. */
static void fp8_rows_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_fp8_quant_args *a = p;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		const uint16_t *w = a->w + r * a->cols;
		uint32_t m = 0;
		for (uint64_t c = 0; c < a->cols; c++)
			m = (w[c] & 0x7FFFu) > m ? w[c] & 0x7FFFu : m;
		float s = cal_fp8_row_scale(m, a->div);
		a->row_scale[r] = s;
		for (uint64_t c = 0; c < a->cols; c++)
			a->q[r * a->cols + c] = cal_fp8_weight_encode_single(cal_nf_bf16_to_f32(w[c]),
									      s);
	}
}

enum cal_status cal_check_fp8_quant(const struct cal_fp8_quant_args *a, struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_shape(1, a->n, 1, err)) < 0)
		return st;
	if (a->div != CAL_DIV_RECIP && a->div != CAL_DIV_EXACT)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'div' = %d is unknown",
				     (int)a->div);
	if (a->n && ((st = cal_check_ptr(a->w, "w", err)) < 0 ||
		     (st = cal_check_ptr(a->q, "q", err)) < 0))
		return st;
	if (a->n && a->row_scale && (!a->cols || a->n % a->cols))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'cols' = %llu does not divide "
				     "n = %llu", (unsigned long long)a->cols,
				     (unsigned long long)a->n);
	return CAL_OK;
}

enum cal_status cal_cpu_fp8_quant(struct cal_backend *be, const struct cal_fp8_quant_args *a,
				  struct cal_error *err)
{
	if (a->row_scale)
		return cal_cpu_parallel(be, a->n / a->cols, (1u << 18) / a->cols + 1, fp8_rows_range,
					(void *)a, err);
	struct fp8_ctx c = {a, cal_fp8_weight_divisor(a->scale, a->div)};
	return cal_cpu_parallel(be, a->n, 1u << 18, fp8_range, &c, err);
}
