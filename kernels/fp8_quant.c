/*
 * fp8_quant.c — FP8 E4M3 per-tensor weight quantizer (docs/numerics.md "FP8
 * per tensor"):
 *   CAL_DIV_RECIP (CUDA run): q = e4m3(bf16(fl32(x / bf16(S))))
 *   CAL_DIV_EXACT (CPU run):  q = e4m3(bf16(fl32(x / S)))
 *   single_round (stacked 3-D expert weights, both runs): q = e4m3(fl32(x / S))
 * Reference and CPU back end; items are elements.
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
	return CAL_OK;
}

CAL_CPU_OP(fp8_quant)
{
	struct fp8_ctx c = {a, cal_fp8_weight_divisor(a->scale, a->div)};
	return cal_cpu_parallel(be, a->n, 1u << 18, fp8_range, &c, err);
}
