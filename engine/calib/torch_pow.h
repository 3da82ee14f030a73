/*
 * torch_pow.h — x^e for a tensor and a scalar exponent as PyTorch computes
 * it on the CPU: the exponents 0, 1, 0.5 and 2 are exact operations (1,
 * copy, sqrt, square), others powf.  The algorithms that follow modelopt
 * step by step (smoothquant.c, awq.c) use it.  Not for use outside
 * engine/calib/.
 */
#ifndef CAL_CALIB_TORCH_POW_H
#define CAL_CALIB_TORCH_POW_H

#include <math.h>

static inline float cal_torch_pow(float x, float e)
{
	if (e == 0.0f)
		return 1.0f;
	if (e == 1.0f)
		return x;
	if (e == 0.5f)
		return sqrtf(x);
	if (e == 2.0f)
		return x * x;
	return powf(x, e);
}

#endif
