/*
 * fp.h — scalar conversions between fp32 and the 16-bit float formats.
 *
 * Round-to-nearest-even, NaN preserved (quiet), as PyTorch's .to() does.
 * The 8-bit formats (E4M3, E2M1, E8M0) live with the quantizers in kernels/.
 */
#ifndef CAL_FP_H
#define CAL_FP_H

#include <stdint.h>
#include <string.h>

static inline uint32_t cal_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float cal_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline float cal_bf16_to_f32(uint16_t h)
{
	return cal_bits_f32((uint32_t)h << 16);
}

static inline uint16_t cal_f32_to_bf16(float f)
{
	uint32_t u = cal_f32_bits(f);
	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet */
		return (uint16_t)((u >> 16) | 0x40u);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* Rounds an fp32 value to the nearest bf16 and back. */
static inline float cal_round_bf16(float f)
{
	return cal_bf16_to_f32(cal_f32_to_bf16(f));
}

float cal_f16_to_f32(uint16_t h);
uint16_t cal_f32_to_f16(float f);

#endif
