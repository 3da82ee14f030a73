/* fp.c — IEEE binary16 conversions (RNE), bit-exact with PyTorch. */
#include "fp.h"

float cal_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;
	if (exp == 0x1f) /* inf / nan */
		return cal_bits_f32(sign | 0x7f800000u | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return cal_bits_f32(sign);
		/* subnormal: value = man * 2^-24 */
		float v = (float)man * 0x1p-24f;
		return sign ? -v : v;
	}
	return cal_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t cal_f32_to_f16(float f)
{
	uint32_t u = cal_f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t a = u & 0x7fffffffu;
	if (a > 0x7f800000u)
		return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu);
	if (a >= 0x477ff000u) /* rounds to >= 65520 -> inf */
		return sign | 0x7c00u;
	if (a < 0x38800000u) { /* below smallest normal 2^-14: subnormal */
		if (a < 0x33000000u) /* < 2^-25: rounds to zero (2^-25 ties to 0) */
			return sign;
		uint32_t e = a >> 23;
		uint32_t m = (a & 0x7fffffu) | 0x800000u;
		uint32_t shift = 126u - e; /* 14..24 */
		uint32_t q = m >> shift;
		uint32_t rem = m & ((1u << shift) - 1u);
		uint32_t half = 1u << (shift - 1u);
		if (rem > half || (rem == half && (q & 1u)))
			q++;
		return sign | (uint16_t)q;
	}
	uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
	return sign | (uint16_t)(((r >> 13) - (112u << 10)) & 0xffffu);
}
