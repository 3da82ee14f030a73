/* hash.c — the name index of hash.h. */
#include "hash.h"

#include <stdlib.h>
#include <string.h>

size_t *cal_name_index_slot(const struct cal_name_index *ix, const char *name,
			    cal_name_at_fn name_at, const void *items)
{
	size_t mask = ix->cap - 1;
	for (size_t i = (size_t)cal_fnv1a(CAL_FNV_SEED, name, strlen(name)) & mask;;
	     i = (i + 1) & mask) {
		size_t v = ix->slot[i];
		if (v == 0 || strcmp(name_at(items, v - 1), name) == 0)
			return &ix->slot[i];
	}
}

int cal_name_index_rebuild(struct cal_name_index *ix, size_t cap, size_t n,
			   cal_name_at_fn name_at, const void *items)
{
	struct cal_name_index fresh = {calloc(cap, sizeof(size_t)), cap};
	if (!fresh.slot)
		return -1;
	for (size_t i = 0; i < n; i++)
		*cal_name_index_slot(&fresh, name_at(items, i), name_at, items) = i + 1;
	cal_name_index_free(ix);
	*ix = fresh;
	return 0;
}

void cal_name_index_free(struct cal_name_index *ix)
{
	free(ix->slot);
	ix->slot = NULL;
	ix->cap = 0;
}
