/*
 * headroom.c — the nvfp4_act_headroom observer (docs/calibration.md
 * "nvfp4_act_headroom"; the rule: docs/numerics.md "Activation headroom").
 * When the recipe's algorithm is nvfp4_act_headroom, every quantized-input
 * observer slot also counts its per-16-block amax into a log2 histogram
 * (kernels/amax_hist.c); the histograms of micro-batches and ranks are
 * summed (exact), and each slot's global amax is derived from its histogram
 * and the slot's max at read-back; the routed experts' slots are summed
 * first (modelopt's experts share one input quantizer per projection).  cal_obs_map_layer() gives NVFP4 input
 * quantizers that amax instead of the max.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/calib/calib_internal.h"
#include "engine/headroom.h"

int cal_hr_on(const struct cal_calib *c)
{
	return c->plan->recipe->algo.method == CAL_CALIB_HEADROOM;
}

enum cal_status cal_hr_alloc(struct cal_calib *c, struct cal_error *err)
{
	size_t n = (size_t)c->d->num_layers * c->n_slots;
	if (!cal_hr_on(c))
		return CAL_OK;
	enum cal_status st = cal_be_alloc(c, c->n_slots * CAL_HIST_BINS * 8, &c->obs_hist, err);
	if (st < 0)
		return st;
	free(c->hr_amax);
	if (!(c->hr_amax = malloc(n * sizeof(float))))
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		c->hr_amax[i] = -1.0f;
	return CAL_OK;
}

enum cal_status cal_hr_reset(struct cal_calib *c, struct cal_error *err)
{
	if (!c->obs_hist)
		return CAL_OK;
	return cal_backend_memset(c->be, c->obs_hist, 0, c->n_slots * CAL_HIST_BINS * 8, err);
}

enum cal_status cal_hr_observe(struct cal_calib *c, const uint16_t *x, uint64_t rows,
			       uint64_t cols, int slot, struct cal_error *err)
{
	if (!c->obs_hist || slot == S_K || slot == S_V || slot == S_OUT || slot == S_LMHEAD)
		return CAL_OK;
	struct cal_amax_hist_args a = {CAL_DTYPE_BF16, x, rows, cols, 16,
				       c->obs_hist + (uint64_t)slot * CAL_HIST_BINS};
	return cal_op_amax_hist(c->be, &a, err);
}

enum cal_status cal_hr_observe_segments(struct cal_calib *c, const uint16_t *x, uint64_t cols,
					const uint32_t *h_offsets, uint64_t n, uint64_t slot0,
					struct cal_error *err)
{
	for (uint64_t e = 0; c->obs_hist && e < n; e++) {
		struct cal_amax_hist_args a = {CAL_DTYPE_BF16, x + (uint64_t)h_offsets[e] * cols,
					       h_offsets[e + 1] - h_offsets[e], cols, 16,
					       c->obs_hist + (slot0 + e) * CAL_HIST_BINS};
		enum cal_status st = cal_op_amax_hist(c->be, &a, err);
		if (st < 0)
			return st;
	}
	return CAL_OK;
}

/* modelopt's bin of fp32 v > 0: the number of edges <= v */
static unsigned bin_of(float v)
{
	const float *ed = cal_hist_edges();
	unsigned k = 0;
	while (k < CAL_HIST_BINS - 1 && ed[k] <= v)
		k++;
	return k;
}

/* The value at `pct` percent of the histogram, bins below floor_value
 * dropped, in modelopt's fp32 arithmetic (counts, their sum and cumulative
 * sum in fp32, target fl32(fl32(pct / 100) * total), the first bin whose
 * cumulative count reaches it, reported at the bin's log2 centre); 0: none. */
static double percentile(const uint64_t *h, double pct, double floor_value)
{
	unsigned fb = floor_value > 0 ? bin_of((float)floor_value) : 0;
	float total = 0;
	double cdf = 0; /* torch's CPU cumsum accumulates in double */
	for (unsigned j = fb; j < CAL_HIST_BINS; j++)
		total += (float)h[j];
	if (!(total > 0))
		return 0;
	float target = (float)(pct / 100.0) * total;
	unsigned b = 0;
	for (b = 0; b < CAL_HIST_BINS - 1; b++) {
		cdf += b < fb ? 0.0 : (double)(float)h[b];
		if ((float)cdf >= target)
			break;
	}
	return pow(2.0, -40.0 + (b + 0.5) / CAL_HIST_BINS * 80.0);
}

float cal_hr_amax(const uint64_t *h, float running_max, double anchor_pct, double upper_pct,
		  double rho)
{
	int any = 0;
	for (unsigned j = 0; j < CAL_HIST_BINS; j++)
		any |= h[j] != 0;
	if (!any)
		return running_max; /* modelopt: no nonzero block, no headroom amax */
	double upper = upper_pct >= 100.0 ? (double)running_max : percentile(h, upper_pct, 0);
	double anchor = upper > 0 ? percentile(h, anchor_pct, upper / 1e6) : 0;
	if (!(upper > 0) || !(anchor > 0))
		return running_max;
	double a = rho * anchor;
	return (float)(a <= upper ? upper : a);
}

enum cal_status cal_hr_read_back(struct cal_calib *c, int32_t L, const float *am,
				 const uint64_t *tokens, struct cal_error *err)
{
	uint64_t n = c->n_slots, cnt = n * CAL_HIST_BINS, E = (uint64_t)c->E;
	const struct cal_algorithm *al = &c->plan->recipe->algo;
	enum cal_status st = CAL_OK;
	uint64_t *h;
	if (!c->obs_hist || L < 0)
		return CAL_OK;
	if (!(h = malloc(cnt * 8)))
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	CAL_TRY(cal_backend_download(c->be, h, c->obs_hist, cnt * 8, err));
	if (c->nranks > 1) /* every rank's counts, summed in chunks of the scratch */
		CAL_TRY(cal_ep_sum_u64(c, h, cnt, err));
	for (uint64_t s = 0; s < S_FIXED; s++) {
		if (s == S_K || s == S_V || s == S_OUT || s == S_LMHEAD || am[s] < 0)
			continue;
		c->hr_amax[(uint64_t)L * n + s] =
			cal_hr_amax(h + s * CAL_HIST_BINS, am[s], al->hr_anchor_percentile,
				    al->hr_upper_percentile, al->hr_rho);
	}
	/* routed experts: modelopt's one input quantizer per projection sees
	 * the rows of every expert, so their counts are summed (into expert
	 * 0's bins) and every expert with tokens gets the one amax */
	for (uint64_t d = 0; tokens && d < 2; d++) {
		uint64_t *h0 = h + (S_FIXED + d * E) * CAL_HIST_BINS;
		float mx = -1.0f;
		for (uint64_t e = 0; e < E; e++) {
			const uint64_t *he = h + (S_FIXED + d * E + e) * CAL_HIST_BINS;
			for (unsigned j = 0; e && j < CAL_HIST_BINS; j++)
				h0[j] += he[j]; /* an expert without tokens counted nothing */
			if (tokens[e] && am[S_FIXED + d * E + e] > mx)
				mx = am[S_FIXED + d * E + e];
		}
		float a = mx < 0 ? -1.0f : cal_hr_amax(h0, mx, al->hr_anchor_percentile,
							 al->hr_upper_percentile, al->hr_rho);
		for (uint64_t e = 0; e < E; e++)
			c->hr_amax[(uint64_t)L * n + S_FIXED + d * E + e] = tokens[e] ? a : -1.0f;
	}
fail:
	free(h);
	return st;
}

int cal_hr_quantizer(const struct cal_calib *c, const struct cal_qspec *sp)
{
	return c->hr_amax && sp->fmt == CAL_QFMT_NVFP4;
}
