/*
 * gdn_common.h — helpers shared by the op files over packed sequences
 * (kernels/gdn_conv.c, kernels/gated_delta.c, kernels/attention.c):
 * packed-sequence lookups and the host-side check of cu_seqlens.  Not for
 * use outside kernels/.
 */
#ifndef CAL_KERNELS_GDN_COMMON_H
#define CAL_KERNELS_GDN_COMMON_H

#include <stdint.h>

#include "common/status.h"

/* Index s of the sequence holding row i: cu[s] <= i < cu[s + 1]
 * (cu strictly increasing from 0, checked by gdn_check_cu). */
static inline uint32_t gdn_seq_of(const uint32_t *cu, uint32_t n_seq, uint64_t i)
{
	uint32_t lo = 0, hi = n_seq;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (cu[mid] <= i)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* cu_seqlens in host memory: cu[0] == 0, cu[n_seq] == t, no empty sequence. */
static inline enum cal_status gdn_check_cu(const uint32_t *cu, uint32_t n_seq, uint64_t t,
					   struct cal_error *err)
{
	if (cu[0] != 0 || cu[n_seq] != t)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "cu_seqlens: first must be 0 and last (%u) must equal t = %llu",
				     cu[n_seq], (unsigned long long)t);
	for (uint32_t s = 0; s < n_seq; s++)
		if (cu[s + 1] <= cu[s])
			return cal_error_set(err, CAL_ERR_INVALID,
					     "cu_seqlens[%u..%u] = %u, %u: empty or decreasing sequence",
					     s, s + 1, cu[s], cu[s + 1]);
	return CAL_OK;
}

#endif
