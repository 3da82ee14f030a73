/*
 * gdn_conv.c — the Gated DeltaNet short convolution (docs/architectures.md
 * "Convolution"): a causal depthwise conv1d over time, per channel, followed by
 * SiLU, over packed sequences (the window never reaches into the previous
 * sequence: rows before a sequence's start count as zero, as HF's left zero
 * padding of every sequence).  HF runs F.conv1d in bf16 (fp32 accumulation,
 * one rounding) and SiLU on the bf16 result:
 *   y[t, c] = bf16(silu(bf16(sum_j w[c, j] * x[t - K + 1 + j, c]))),
 * the sum in fp32 with j ascending, silu(u) = u / (1 + exp(-u)).
 * Reference and CPU back end; items are rows.
 */
#include <math.h>

#include "kernels/gdn_common.h"
#include "kernels/internal.h"

struct conv_ctx {
	const struct cal_gdn_conv_args *a;
};

static inline float ld(const uint16_t *p, uint64_t i)
{
	return cal_nf_float((uint32_t)p[i] << 16);
}

static void conv_range(void *p, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct cal_gdn_conv_args *a = ((struct conv_ctx *)p)->a;
	const uint64_t C = a->channels, K = a->kernel;
	(void)slot;
	for (uint64_t r = begin; r < end; r++) {
		uint64_t s0 = a->cu_seqlens[cal_segment_of(a->cu_seqlens, a->n_seq, r)];
		/* taps j with r - K + 1 + j >= s0 */
		uint64_t j0 = r - s0 + 1 >= K ? 0 : K - (r - s0 + 1);
		uint16_t *y = a->y + r * C;
		for (uint64_t c = 0; c < C; c++) {
			const uint16_t *w = a->w + c * K;
			float acc = 0.0f;
			for (uint64_t j = j0; j < K; j++)
				acc += ld(w, j) * ld(a->x, (r + 1 + j - K) * C + c);
			float u = cal_nf_float((uint32_t)cal_nf_f32_to_bf16(acc) << 16);
			y[c] = cal_nf_f32_to_bf16(u / (1.0f + expf(-u)));
		}
	}
}

CAL_CHECK_OP(gdn_conv)
{
	enum cal_status st;
	if (a->channels == 0)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'channels' is 0");
	if (a->kernel == 0 || a->kernel > CAL_GDN_CONV_MAX_KERNEL)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'kernel' = %u not in [1, %u]",
				     a->kernel, CAL_GDN_CONV_MAX_KERNEL);
	if ((st = cal_check_shape(a->t, a->channels, 1, err)) < 0)
		return st;
	if ((st = cal_check_tokens(a->t, a->n_seq, err)) < 0 || a->t == 0)
		return st;
	if ((st = CAL_CHECK_PTRS(a, err, x, w, y, cu_seqlens)) < 0)
		return st;
	if (a->x == a->y)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'y' must not alias 'x'");
	return CAL_OK;
}

CAL_CPU_OP(gdn_conv)
{
	struct conv_ctx c = {a};
	enum cal_status st;
	if (a->t == 0)
		return CAL_OK;
	if ((st = gdn_check_cu(a->cu_seqlens, a->n_seq, a->t, err)) < 0)
		return st;
	return cal_cpu_parallel(be, a->t, (1u << 15) / a->channels + 1, conv_range, &c, err);
}
