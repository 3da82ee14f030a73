/*
 * goldens.h — the device-verified golden vectors of docs/numerics.md
 * ("Golden vectors": NVFP4 and FP8), run through the op table of any back end.
 * Shared by the unit suite (CPU) and the gpu suite (CUDA).
 */
#ifndef CAL_TEST_GOLDENS_H
#define CAL_TEST_GOLDENS_H

#include <stdint.h>

#include "kernels/ops.h"

extern const char *const golden_input_hex[4];

struct golden_result {
	float amax;
	float s2;                 /* NVFP4 weight_scale_2 (reciprocal semantics) */
	uint8_t nvfp4_packed[4 * 16];
	uint8_t nvfp4_scales[4 * 2];
	float fp8_scale_cuda, fp8_scale_cpu;
	uint8_t fp8_cuda[4 * 32], fp8_cpu[4 * 32];
};

/* The W[4,32] of "Golden vectors" as bf16 bits. */
void golden_input(uint16_t w[4 * 32]);

/* Runs amax, nvfp4_quant and fp8_quant (both division modes) on be. */
enum cal_status golden_run(struct cal_backend *be, struct golden_result *r,
			   struct cal_error *err);

/* Compares with the goldens; prints every difference to stderr and returns
 * the number of differences. */
int golden_check(const struct golden_result *r, const char *who);

#endif
