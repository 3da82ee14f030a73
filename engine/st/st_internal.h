/*
 * st_internal.h — helpers shared by the files of engine/st (not public).
 */
#ifndef CAL_ST_INTERNAL_H
#define CAL_ST_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Formats a shape as "[d0, d1, ...]" into buf (truncated to len). */
const char *cal_st_shape_str(const int64_t *shape, int ndim, char *buf, size_t len);

#endif
