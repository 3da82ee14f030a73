/*
 * moe_combine.c — weighted un-permute and reduce of the expert outputs
 * (docs/architectures.md "Experts and the MoE sum"): per token, the k weighted
 * outputs of its experts summed either as HF's eager experts do (bf16(w*y)
 * added to a bf16 accumulator in ascending expert order) or as grouped_mm does
 * (fp32 sum in slot order, one cast).  Reference and CPU back end; items are
 * tokens.
 */
#include "kernels/internal.h"

struct comb_ctx {
	const struct cal_moe_combine_args *a;
};

static inline float bf(float v)
{
	return cal_nf_float((uint32_t)cal_nf_f32_to_bf16(v) << 16);
}

static void comb_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_moe_combine_args *a = ((struct comb_ctx *)p)->a;
	uint32_t order[64];
	(void)slot;
	for (uint64_t t = begin; t < end; t++) {
		const uint32_t *pp = a->pair_pos + t * a->k_total;
		const uint32_t *ex = a->idx + t * a->k_total;
		const float *w = a->weight + t * a->k;
		uint16_t *o = a->out + t * a->h;
		/* slot order: ascending expert id (eager) or slot order */
		for (uint32_t s = 0; s < a->k; s++) {
			uint32_t j = s;
			if (a->mode == CAL_COMBINE_EAGER)
				while (j > 0 && ex[order[j - 1]] > ex[s]) {
					order[j] = order[j - 1];
					j--;
				}
			order[j] = s;
		}
		for (uint64_t c = 0; c < a->h; c++) {
			float acc = 0.0f;
			for (uint32_t i = 0; i < a->k; i++) {
				uint32_t s = order[i];
				float y = cal_nf_float((uint32_t)a->y[(uint64_t)pp[s] * a->h + c] << 16);
				if (a->mode == CAL_COMBINE_EAGER)
					acc = bf(acc + bf(y * w[s]));
				else
					acc += y * w[s];
			}
			o[c] = cal_nf_f32_to_bf16(acc);
		}
	}
}

CAL_CHECK_OP(moe_combine)
{
	enum cal_status st;
	if ((st = cal_check_enum((int)a->mode, CAL_COMBINE_F32, "mode", err)) < 0)
		return st;
	if (a->k == 0 || a->k > 64 || a->k > a->k_total)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments k = %u, k_total = %u: need 1 <= k <= min(64, k_total)",
				     a->k, a->k_total);
	if ((st = cal_check_shape(a->t, a->h, 1, err)) < 0 ||
	    (st = cal_check_shape(a->rows, a->h, 1, err)) < 0 ||
	    (st = cal_check_shape(a->t, a->k_total, 1, err)) < 0)
		return st;
	if (a->t == 0 || a->h == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, y, pair_pos, idx, weight, out);
}

CAL_CPU_OP(moe_combine)
{
	struct comb_ctx c = {a};
	if (a->t == 0 || a->h == 0)
		return CAL_OK;
	for (uint64_t p = 0; p < a->t * a->k_total; p++)
		if (p % a->k_total < a->k && a->pair_pos[p] >= a->rows)
			return cal_error_set(err, CAL_ERR_RANGE,
					     "pair_pos[%llu] = %u: only %llu rows",
					     (unsigned long long)p, a->pair_pos[p],
					     (unsigned long long)a->rows);
	return cal_cpu_parallel(be, a->t, (1u << 14) / a->h + 1, comb_range, &c, err);
}
