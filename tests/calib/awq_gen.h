/*
 * awq_gen.h — the random linear of bench_awq and test_awq_cuda: bf16
 * weights uniform in ±0.05 (w [nw]) then inputs uniform in ±1, every 11th
 * channel of cols ±4 (x [nx]), from one LCG seeded with seed.
 */
#ifndef CAL_TESTS_AWQ_GEN_H
#define CAL_TESTS_AWQ_GEN_H

#include <stdint.h>

#include "kernels/numfmt.h"

static inline void awq_gen(uint64_t seed, uint16_t *w, uint64_t nw, uint16_t *x, uint64_t nx,
			   uint64_t cols)
{
	uint64_t s = seed;
	for (uint64_t i = 0; i < nw + nx; i++) {
		s = s * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
		float u = (float)(s >> 40) / 16777216.0f * 2.0f - 1.0f;
		uint64_t j = i - nw;
		if (i < nw)
			w[i] = cal_nf_f32_to_bf16(u * 0.05f);
		else
			x[j] = cal_nf_f32_to_bf16(u * (j % cols % 11 == 0 ? 4.0f : 1.0f));
	}
}

#endif
