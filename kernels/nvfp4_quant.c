/*
 * nvfp4_quant.c — NVFP4 weight quantizer (docs/numerics.md "NVFP4 weights"),
 * reference and CPU back end.  Per 16-element block b of W (bf16):
 *   a = max|block|; s = a / fl32(6*S2) (true division); s == 0 -> 1;
 *   clamp [2^-9, 448] (NaN passes); E = e4m3(s); T = fl32(E * S2);
 *   code_k = E2M1(fl32(x_k / T)); packed byte j = code_2j | code_2j+1 << 4.
 * Items are blocks: block b covers elements 16b.., bytes 8b.., scale b.
 * Block 32 (`nvfp4_bs32`): the same rules over 32 elements, a scale per 32.
 */
#include <string.h>

#include "kernels/internal.h"

struct nvfp4_ctx {
	const struct cal_nvfp4_quant_args *a;
	float d; /* fl32(6 * S2) */
	unsigned bs; /* 16 or 32 */
};

static void nvfp4_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct nvfp4_ctx *c = p;
	const struct cal_nvfp4_quant_args *a = c->a;
	(void)slot;

	unsigned bs = c->bs;
	for (uint64_t b = begin; b < end; b++) {
		float x[32];
		for (unsigned k = 0; k < bs; k++)
			x[k] = cal_nf_bf16_to_f32(a->w[b * bs + k]);
		uint8_t e = cal_nvfp4_block_scale(cal_block_absmax(x, (int)bs), c->d);
		float t = cal_fmul(cal_e4m3_decode(e), a->scale2);
		for (unsigned h = 0; h < bs; h += 16) {
			uint64_t packed = cal_nvfp4_pack16(x + h, t);
			for (int j = 0; j < 8; j++)
				a->packed[(b * bs + h) / 2 + j] = (uint8_t)(packed >> (8 * j));
		}
		a->scales[b] = e;
	}
}

CAL_CHECK_OP(nvfp4_quant)
{
	if (a->block && a->block != 16 && a->block != 32)
		return cal_error_set(err, CAL_ERR_INVALID, "block: %u (NVFP4 blocks are 16 or 32)",
				     a->block);
	return cal_check_block_quant(a->rows, a->cols, a->block ? a->block : 16, a->w, a->packed,
				     "packed", a->scales, err);
}

CAL_CPU_OP(nvfp4_quant)
{
	struct nvfp4_ctx c = {a, cal_fmul(6.0f, a->scale2), a->block ? a->block : 16};
	return cal_cpu_parallel(be, a->rows * a->cols / c.bs, 1u << 14, nvfp4_range, &c, err);
}
