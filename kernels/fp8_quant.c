/*
 * fp8_quant.c — FP8 E4M3 per-tensor weight quantizer (docs/numerics.md "FP8
 * per tensor"):
 *   CAL_DIV_RECIP (CUDA run): q = e4m3(bf16(fl32(x / bf16(S))))
 *   CAL_DIV_EXACT (CPU run):  q = e4m3(bf16(fl32(x / S)))
 *   single_round (stacked 3-D expert weights, both runs): q = e4m3(fl32(x / S))
 *   row_scale (FP8 per channel / 2-D blocks, both runs): per tile t (a row,
 *   or tile x tile) S_t = cal_fp8_row_scale(max |x| of the tile),
 *   q = e4m3(fl32(x / S_t))
 * Reference and CPU back end; items are elements (tiles with row_scale).
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

/* Tiles [begin, end) of the per-tile mode (row_scale). */
static void fp8_tiles_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_fp8_quant_args *a = p;
	uint64_t rows = a->n / a->cols, tc = a->tile ? (a->cols + a->tile - 1) / a->tile : 1;
	uint64_t th = a->tile ? a->tile : 1, tw = a->tile ? a->tile : a->cols;
	(void)slot;
	for (uint64_t t = begin; t < end; t++) {
		uint64_t r0 = t / tc * th, c0 = t % tc * tw;
		uint64_t r1 = r0 + th < rows ? r0 + th : rows;
		uint64_t c1 = c0 + tw < a->cols ? c0 + tw : a->cols;
		uint32_t m = 0;
		for (uint64_t r = r0; r < r1; r++)
			for (uint64_t c = c0; c < c1; c++) {
				uint32_t h = a->w[r * a->cols + c] & 0x7FFFu;
				m = h > m ? h : m;
			}
		float s = cal_fp8_row_scale(m, a->div);
		a->row_scale[t] = s;
		for (uint64_t r = r0; r < r1; r++)
			for (uint64_t c = c0; c < c1; c++)
				a->q[r * a->cols + c] = cal_fp8_weight_encode_single(
					cal_nf_bf16_to_f32(a->w[r * a->cols + c]), s);
	}
}

CAL_CHECK_OP(fp8_quant)
{
	enum cal_status st;
	if ((st = cal_check_shape(1, a->n, 1, err)) < 0)
		return st;
	if (a->div != CAL_DIV_RECIP && a->div != CAL_DIV_EXACT)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'div' = %d is unknown",
				     (int)a->div);
	if (a->n && (st = CAL_CHECK_PTRS(a, err, w, q)) < 0)
		return st;
	if (a->n && a->row_scale && (!a->cols || a->n % a->cols))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'cols' = %llu does not divide "
				     "n = %llu", (unsigned long long)a->cols,
				     (unsigned long long)a->n);
	return CAL_OK;
}

CAL_CPU_OP(fp8_quant)
{
	if (a->row_scale) {
		uint64_t nt = cal_fp8_tiles(a->n / a->cols, a->cols, a->tile);
		return cal_cpu_parallel(be, nt, (1u << 18) / (a->n / nt) + 1, fp8_tiles_range,
					(void *)a, err);
	}
	struct fp8_ctx c = {a, cal_fp8_weight_divisor(a->scale, a->div)};
	return cal_cpu_parallel(be, a->n, 1u << 18, fp8_range, &c, err);
}
