/*
 * headroom.h — modelopt's nvfp4_act_headroom rule (docs/numerics.md
 * "Activation headroom"): the NVFP4 input global amax from the log2
 * histogram of per-block amaxes that the amax_hist op counts
 * (kernels/ops.h).  The calibration engine's observer is
 * engine/calib/headroom.c.
 */
#ifndef CAL_ENGINE_HEADROOM_H
#define CAL_ENGINE_HEADROOM_H

#include <stdint.h>

/* h [CAL_HIST_BINS] counts, running_max the tensor's max|x|: returns
 * max(rho x P(anchor_pct), P(upper_pct)) (P(100) = running_max), the
 * percentiles over bins at or above bin(upper / 1e6) for the anchor; the
 * running max when the histogram is empty or a percentile is 0. */
float cal_hr_amax(const uint64_t *h, float running_max, double anchor_pct, double upper_pct,
		  double rho);

#endif
