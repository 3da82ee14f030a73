/*
 * mxfp8_quant.c — MXFP8 weight quantizer (docs/numerics.md "MX formats"): per
 * 32-block e = clamp(ceil(log2(amax/448)), -127, 127) (log2 exact from the
 * bits), scale byte e + 127, values e4m3(clamp(x * 2^-e, -448, 448)).
 * Reference and CPU back end; also the CPU back end of MXFP4 (mxfp4_quant.c),
 * items 32-blocks.
 */
#include "kernels/internal.h"

struct mx_quant_run {
	const uint16_t *w;
	int fp4;
	enum cal_div_mode div;
	uint8_t *out, *scales;
};

static void mx_quant_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct mx_quant_run *a = p;
	(void)slot;
	for (uint64_t b = begin; b < end; b++) {
		float x[32];
		cal_load_bf16(x, a->w + b * 32, 32);
		uint8_t e = cal_mx_block_scale(cal_block_absmax(x, 32), a->fp4, a->div);
		float mul = e == 0xff ? cal_nf_float(0x7fc00000u) : cal_pow2f(127 - (int)e);
		if (a->fp4) {
			for (int j = 0; j < 16; j++) {
				unsigned lo = cal_e2m1_encode_mxfp4(cal_fmul(x[2 * j], mul));
				unsigned hi = cal_e2m1_encode_mxfp4(cal_fmul(x[2 * j + 1], mul));
				a->out[b * 16 + j] = (uint8_t)(lo | hi << 4);
			}
		} else {
			for (int k = 0; k < 32; k++)
				a->out[b * 32 + k] = cal_e4m3_encode(
					cal_clamp_nan(cal_fmul(x[k], mul), -448.0f, 448.0f));
		}
		a->scales[b] = e;
	}
}

enum cal_status cal_cpu_mx_quant(struct cal_backend *be, uint64_t rows, uint64_t cols,
				 const uint16_t *w, int fp4, enum cal_div_mode div, uint8_t *out,
				 uint8_t *scales, struct cal_error *err)
{
	struct mx_quant_run r = {w, fp4, div, out, scales};
	return cal_cpu_parallel(be, rows * cols / 32, 1u << 13, mx_quant_range, &r, err);
}

CAL_CHECK_OP(mxfp8_quant)
{
	return cal_check_block_quant(a->rows, a->cols, 32, a->w, a->q, "q", a->scales, err);
}

CAL_CPU_OP(mxfp8_quant)
{
	return cal_cpu_mx_quant(be, a->rows, a->cols, a->w, 0, a->div, a->q, a->scales, err);
}
