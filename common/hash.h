/*
 * hash.h — FNV-1a over bytes, and the open-addressing index from names to
 * positions in an array that the safetensors writer and the stats table
 * look tensors and quantizers up with.
 */
#ifndef CAL_HASH_H
#define CAL_HASH_H

#include <stddef.h>
#include <stdint.h>

/* The seed calibd's FNV-1a hashes start from (one digit short of FNV's
 * offset basis 14695981039346656037; kept, since hashes from it are in
 * outputs: tokens' sequence hashes, the writer's layout hash). */
#define CAL_FNV_SEED 1469598103934665603ull

/* h with the n bytes at p mixed in (FNV-1a, 64-bit prime). */
static inline uint64_t cal_fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 1099511628211ull;
	return h;
}

/* The name of the caller's item i (items: its array). */
typedef const char *(*cal_name_at_fn)(const void *items, size_t i);

/* Slots holding position + 1 of an item, 0 when empty; linear probing on
 * the FNV-1a of the name.  Zeroed: empty, cap 0 (no lookups before the
 * first cal_name_index_rebuild). */
struct cal_name_index {
	size_t *slot;
	size_t cap; /* a power of two */
};

/* The slot of name: it holds the position + 1 of the item so named, or 0
 * where such an item would be stored.  ix->cap must not be 0. */
size_t *cal_name_index_slot(const struct cal_name_index *ix, const char *name,
			    cal_name_at_fn name_at, const void *items);

/* Indexes the n items afresh in cap slots (a power of two, above n):
 * 0, or -1 on allocation failure with ix unchanged. */
int cal_name_index_rebuild(struct cal_name_index *ix, size_t cap, size_t n,
			   cal_name_at_fn name_at, const void *items);

void cal_name_index_free(struct cal_name_index *ix);

#endif
