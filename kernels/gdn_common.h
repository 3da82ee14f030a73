/*
 * gdn_common.h — helpers shared by the op files over packed sequences
 * (kernels/gdn_conv.c, kernels/gated_delta.c, kernels/attention.c):
 * the host-side check of cu_seqlens (the sequence of a row is
 * cal_segment_of in numfmt.h).  Not for use outside kernels/.
 */
#ifndef CAL_KERNELS_GDN_COMMON_H
#define CAL_KERNELS_GDN_COMMON_H

#include <stdint.h>

#include "common/status.h"

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
