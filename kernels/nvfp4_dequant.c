/*
 * nvfp4_dequant.c — NVFP4 dequantize (fake-quant):
 * out = fl32(fl32(e2m1 * e4m3(scale)) * scale2).  Reference and CPU back end;
 * items are blocks of 16 (or 32).  An output element depends only on its
 * scale byte and its code (scale2 and the output dtype are the op's), so
 * a large op first makes the 256 x 16 outputs once and then looks each
 * element up: the same bytes as computing it (GPTQ's fake-quantized
 * experts, docs/gptq.md).
 */
#include <stdlib.h>

#include "kernels/internal.h"

/* Elements from which the table pays for itself. */
#define DQ_TABLE_MIN (UINT64_C(1) << 16)

struct dq_ctx {
	const struct cal_nvfp4_dequant_args *a;
	int table;
	uint32_t tab[256 * 16]; /* [scale byte][code]: bf16 or f32 bits */
};

static float dq_value(const struct cal_nvfp4_dequant_args *a, float s, unsigned code)
{
	return cal_fmul(cal_fmul(cal_e2m1_decode(code), s), a->scale2);
}

static void nvfp4_dq_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct dq_ctx *c = p;
	const struct cal_nvfp4_dequant_args *a = c->a;
	(void)slot;
	uint64_t bs = a->block ? a->block : 16;
	for (uint64_t b = begin; b < end; b++) {
		if (c->table) {
			const uint32_t *t = c->tab + (uint64_t)a->scales[b] * 16;
			const uint8_t *pk = a->packed + b * bs / 2;
			if (a->out_dtype == CAL_DTYPE_BF16) {
				uint16_t *o = (uint16_t *)a->out + b * bs;
				for (uint64_t k = 0; k < bs; k += 2) {
					o[k] = (uint16_t)t[pk[k / 2] & 0xfu];
					o[k + 1] = (uint16_t)t[pk[k / 2] >> 4];
				}
			} else {
				uint32_t *o = (uint32_t *)a->out + b * bs;
				for (uint64_t k = 0; k < bs; k += 2) {
					o[k] = t[pk[k / 2] & 0xfu];
					o[k + 1] = t[pk[k / 2] >> 4];
				}
			}
			continue;
		}
		float s = cal_e4m3_decode(a->scales[b]);
		for (uint64_t k = 0; k < bs; k++) {
			uint64_t i = b * bs + k;
			unsigned code = (a->packed[i / 2] >> (4 * (i & 1))) & 0xfu;
			cal_store_out(a->out_dtype, a->out, i, dq_value(a, s, code));
		}
	}
}

CAL_CHECK_OP(nvfp4_dequant)
{
	if (a->block && a->block != 16 && a->block != 32)
		return cal_error_set(err, CAL_ERR_INVALID, "block: %u (NVFP4 blocks are 16 or 32)",
				     a->block);
	return cal_check_block_dequant(a->rows, a->cols, a->block ? a->block : 16, a->out_dtype,
				       a->packed, "packed", a->scales, a->out, err);
}

CAL_CPU_OP(nvfp4_dequant)
{
	struct dq_ctx *c = malloc(sizeof(*c));
	if (!c)
		return cal_error_set(err, CAL_ERR_NOMEM, "nvfp4_dequant: out of memory");
	c->a = a;
	c->table = a->rows * a->cols >= DQ_TABLE_MIN;
	for (unsigned sb = 0; c->table && sb < 256; sb++) {
		float s = cal_e4m3_decode((uint8_t)sb);
		for (unsigned code = 0; code < 16; code++) {
			float v = dq_value(a, s, code); /* stored as cal_store_out does */
			c->tab[sb * 16 + code] = a->out_dtype == CAL_DTYPE_BF16 ? cal_nf_f32_to_bf16(v)
										 : cal_nf_bits(v);
		}
	}
	enum cal_status st = cal_cpu_parallel(be, a->rows * a->cols / (a->block ? a->block : 16),
					      1u << 14, nvfp4_dq_range, c, err);
	free(c);
	return st;
}
