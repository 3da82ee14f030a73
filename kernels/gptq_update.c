/*
 * gptq_update.c — GPTQ column-block update (kernels/ops.h, docs/gptq.md),
 * the C reference and CPU back end: rows are independent, each thread
 * sweeps whole rows in the op's order (its row's scratch in `work`).
 */
#include <math.h>
#include <string.h>

#include "kernels/gptq_qdq.h"
#include "kernels/internal.h"

CAL_CHECK_OP(gptq_update)
{
	enum cal_status st;
	if ((st = cal_check_shape(a->rows, a->cols, 16, err)) < 0)
		return st;
	if (a->cols > 65536)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'cols' = %llu is over 65536",
				     (unsigned long long)a->cols);
	if (!a->block_size || a->block_size > 65536)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'block_size' = %u is not in "
				     "[1, 65536]", a->block_size);
	if (!(a->global_amax > 0.0f) || !isfinite(a->global_amax) || !(a->norm_max > 0.0f))
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'global_amax' = %g or "
				     "'norm_max' = %g is not finite and > 0",
				     (double)a->global_amax, (double)a->norm_max);
	if (a->rows && a->cols)
		return CAL_CHECK_PTRS(a, err, w, u, block_amax, work, w_out);
	return CAL_OK;
}

struct upd_ctx {
	const struct cal_gptq_update_args *a;
	float sc, sinv;
};

static void upd_rows(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct upd_ctx *c = p;
	const struct cal_gptq_update_args *a = c->a;
	uint64_t n = a->cols, bs = a->block_size < n ? a->block_size : n;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		float *w = a->work + r * (n + bs), *e = w + n;
		const float *am = a->block_amax + r * (n / 16);
		uint16_t *out = a->w_out + r * n;
		for (uint64_t k = 0; k < n; k++)
			w[k] = cal_nf_bf16_to_f32(a->w[r * n + k]);
		for (uint64_t b0 = 0; b0 < n; b0 += bs) {
			uint64_t b1 = b0 + bs < n ? b0 + bs : n;
			for (uint64_t i = b0; i < b1; i++) {
				const float *ui = a->u + i * n;
				float q = cal_gptq_qdq(w[i], am[i / 16], c->sc, c->sinv, a->div);
				float ei = cal_fdiv(cal_fsub(w[i], q), ui[i]);
				out[i] = cal_nf_f32_to_bf16(q);
				e[i - b0] = ei;
				for (uint64_t k = i + 1; k < b1; k++)
					w[k] = cal_fsub(w[k], cal_fmul(ei, ui[k]));
			}
			for (uint64_t k = b1; k < n; k++) {
				float s = 0.0f;
				for (uint64_t i = b0; i < b1; i++)
					s = cal_fadd(s, cal_fmul(e[i - b0], a->u[i * n + k]));
				w[k] = cal_fsub(w[k], s);
			}
		}
	}
}

CAL_CPU_OP(gptq_update)
{
	if (!a->rows || !a->cols)
		return CAL_OK;
	struct upd_ctx c = {a, 0.0f, 0.0f};
	cal_gptq_scales(a->global_amax, a->norm_max, a->div, &c.sc, &c.sinv);
	return cal_cpu_parallel(be, a->rows, 1, upd_rows, &c, err);
}
