/*
 * kv_affine.c — observer of an affine (static bias) KV-cache quantizer
 * (docs/numerics.md "Affine KV cache"): per forward, the bf16 mean of each
 * column (KV head x channel) over the forward's rows, folded into the
 * running bias, then the running max of |bf16(x - bias)| over those rows.
 * Reference and CPU back end; items are columns (each column's forwards run
 * in order; columns are independent).
 */
#include "kernels/internal.h"

static float bfr(float v)
{
	return cal_nf_bf16_to_f32(cal_nf_f32_to_bf16(v));
}

static void kv_affine_range(const void *p, uint64_t begin, uint64_t end, uint32_t *max_bits,
			    struct cal_nf_part *nf)
{
	const struct cal_kv_affine_args *a = p;
	for (uint64_t c = begin; c < end; c++) {
		float b = cal_nf_bf16_to_f32(a->bias[c]);
		uint64_t k = a->n0;
		for (uint32_t s = 0; s < a->n_seq; s++) {
			uint64_t r0 = a->cu[s], r1 = a->cu[s + 1];
			r1 = r1 < a->rows ? r1 : a->rows;
			if (r1 <= r0)
				continue;
			double sum = 0.0;
			for (uint64_t r = r0; r < r1; r++)
				sum += (double)cal_nf_bf16_to_f32(a->x[r * a->cols + c]);
			float m = bfr((float)(sum / (double)(r1 - r0)));
			if (k == 0) {
				b = m;
			} else {
				float t = b * (float)k;
				t = t + m;
				b = bfr(t / (float)(k + 1));
			}
			k++;
			for (uint64_t r = r0; r < r1; r++) {
				uint64_t i = r * a->cols + c;
				float x = cal_nf_bf16_to_f32(a->x[i]);
				if (cal_abs_bits(CAL_DTYPE_BF16, a->x, i) >= 0x7f800000u) {
					cal_obs_elem(0x7f800000u, a->index_base + i, max_bits, nf);
					continue;
				}
				uint32_t d = cal_nf_bits(bfr(x - b)) & 0x7fffffffu;
				if (d < 0x7f800000u && d > *max_bits)
					*max_bits = d;
			}
		}
		a->bias[c] = cal_nf_f32_to_bf16_canon(b); /* NaN from a non-finite input */
	}
}

CAL_CHECK_OP(kv_affine)
{
	enum cal_status st;
	if ((st = cal_check_obs(CAL_DTYPE_BF16, a->rows, a->cols, a->amax, a->nonfinite, err)) < 0)
		return st;
	if (a->n_seq == 0 || a->n_seq > (1u << 24))
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'n_seq' = %u not in [1, 2^24]",
				     a->n_seq);
	return a->rows && a->cols ? CAL_CHECK_PTRS(a, err, x, cu, bias) : CAL_OK;
}

CAL_CPU_OP(kv_affine)
{
	/* items are columns: each runs its forwards in order */
	return a->rows && a->cols ? cal_cpu_observe(be, a->cols, (1u << 16) / a->rows + 1,
						    kv_affine_range, a, a->amax, a->nonfinite, err)
				  : CAL_OK;
}
