/*
 * moe_sort.c — stable counting sort of (token, slot) pairs by expert id:
 * offsets per expert, the pair at every sorted position and the position of
 * every pair.  Reference and CPU back end (linear and memory-bound: it runs
 * on the caller's thread).
 */
#include <stdlib.h>

#include "kernels/internal.h"

CAL_CHECK_OP(moe_sort)
{
	enum cal_status st;
	if (a->n_pairs >= UINT32_MAX)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'n_pairs' = %llu exceeds 2^32-2",
				     (unsigned long long)a->n_pairs);
	if (a->n_experts == 0 || a->n_experts > (1u << 20))
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'n_experts' = %u not in [1, 2^20]",
				     a->n_experts);
	if ((st = cal_check_ptr(a->offsets, "offsets", err)) < 0)
		return st;
	if (a->n_pairs == 0)
		return CAL_OK;
	return CAL_CHECK_PTRS(a, err, idx, sorted_pair, pair_pos);
}

CAL_CPU_OP(moe_sort)
{
	uint32_t E = a->n_experts;
	uint32_t *next;
	(void)be;
	for (uint64_t p = 0; p < a->n_pairs; p++)
		if (a->idx[p] >= E)
			return cal_error_set(err, CAL_ERR_RANGE, "idx[%llu] = %u: only %u experts",
					     (unsigned long long)p, a->idx[p], E);
	next = calloc((size_t)E + 1, sizeof(uint32_t));
	if (!next)
		return cal_error_set(err, CAL_ERR_NOMEM, "moe_sort: out of memory");
	for (uint64_t p = 0; p < a->n_pairs; p++)
		next[a->idx[p] + 1]++;
	for (uint32_t e = 0; e < E; e++)
		next[e + 1] += next[e];
	for (uint32_t e = 0; e <= E; e++)
		a->offsets[e] = next[e];
	for (uint64_t p = 0; p < a->n_pairs; p++) {
		uint32_t pos = next[a->idx[p]]++;
		a->sorted_pair[pos] = (uint32_t)p;
		a->pair_pos[p] = pos;
	}
	free(next);
	return CAL_OK;
}
