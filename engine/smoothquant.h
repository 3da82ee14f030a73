/*
 * smoothquant.h — SmoothQuant for one INT8 linear (docs/smoothquant.md),
 * modelopt's `smoothquant` algorithm: per-input-channel smoothing scale
 * s = max|W|^(1-alpha) / act_amax^alpha, folded into the weight (W / s)
 * and exported as the input's pre_quant_scale; the weight's per-channel
 * amax and the input's per-tensor amax are then taken after smoothing.
 * Host memory.
 */
#ifndef CAL_ENGINE_SMOOTHQUANT_H
#define CAL_ENGINE_SMOOTHQUANT_H

#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cal_sq_out {
	uint16_t *pre_quant_scale; /* [cols] bf16, as exported */
	uint16_t *w;               /* [rows, cols] bf16: the smoothed weight */
	float *w_amax;             /* [rows]: max |smoothed row| (a bf16 value) */
	float in_amax;             /* input amax after smoothing (a bf16 value) */
};

/*
 * w: bf16 [rows, cols]; act_amax: [cols] per-channel max |x| over the
 * calibration tokens; alpha in [0, 1] (modelopt's default 1.0).  Every
 * output array is the caller's.  Errors: CAL_ERR_INVALID (arguments),
 * CAL_ERR_NUMERIC (a non-finite or negative activation amax).
 */
enum cal_status cal_smoothquant(const uint16_t *w, uint64_t rows, uint64_t cols,
				const float *act_amax, float alpha, struct cal_sq_out *out,
				struct cal_error *err);

#ifdef __cplusplus
}
#endif

#endif
