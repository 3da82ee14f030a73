/*
 * hist_edges.h — the bin edges of the amax_hist op (kernels/ops.h,
 * docs/numerics.md "Activation headroom"), computed once per including
 * translation unit: the C op (kernels/amax_hist.c, which exports them as
 * cal_hist_edges()) and the CUDA module (kernels/cuda/amax_hist.cu), which
 * links no kernels/ C code.  Both compute the same table with the same
 * C library log2f.
 */
#ifndef CAL_KERNELS_HIST_EDGES_H
#define CAL_KERNELS_HIST_EDGES_H

#include <math.h>
#include <pthread.h>

#include "kernels/numfmt.h"
#include "kernels/ops.h"

static float cal_hist_edge_tab[CAL_HIST_BINS - 1];
static pthread_once_t cal_hist_edge_once = PTHREAD_ONCE_INIT;

/* modelopt's bin of a positive finite fp32 m, in fp32 as torch computes it */
static int cal_hist_log2_bin(float m)
{
	float f = floorf((log2f(m) + 40.0f) / 80.0f * (float)CAL_HIST_BINS);
	return f < 0 ? 0 : f > CAL_HIST_BINS - 1 ? CAL_HIST_BINS - 1 : (int)f;
}

/* edge k - 1: the smallest positive fp32 with bin >= k, by bisection over
 * the bit patterns (bin() is monotone) */
static void cal_hist_edge_init(void)
{
	for (int k = 1; k < CAL_HIST_BINS; k++) {
		uint32_t lo = 1, hi = 0x7f7fffffu; /* bin(lo) < k <= bin(hi) */
		while (lo < hi) {
			uint32_t mid = lo + (hi - lo) / 2;
			if (cal_hist_log2_bin(cal_nf_float(mid)) >= k)
				hi = mid;
			else
				lo = mid + 1;
		}
		cal_hist_edge_tab[k - 1] = cal_nf_float(lo);
	}
}

static inline const float *cal_hist_edges_here(void)
{
	pthread_once(&cal_hist_edge_once, cal_hist_edge_init);
	return cal_hist_edge_tab;
}

#endif
