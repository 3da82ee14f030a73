/*
 * jsonscan.h — bounds on JSON text checked before it is parsed.
 *
 * jansson builds the whole tree before anyone can look at it, so a text
 * that is too deep or holds too many values is refused first by a linear
 * scan of its bytes (strings skipped), which costs microseconds per KiB and
 * allocates nothing.  Every JSON document calibd reads from a client or
 * from a model directory goes through it (docs/api.md, "Limits").
 */
#ifndef CAL_COMMON_JSONSCAN_H
#define CAL_COMMON_JSONSCAN_H

#include <stddef.h>

#include "common/status.h"

struct cal_json_limits {
	unsigned max_depth; /* arrays and objects nested at most this deep */
	size_t max_values;  /* values (scalars, arrays, objects; keys not counted) */
};

/*
 * Scans `len` bytes of `text`.  CAL_OK when within `lim`; CAL_ERR_RANGE
 * naming `what`, the limit and the byte offset otherwise.  The count is an
 * upper bound (every '[', '{' and ',' outside strings starts a value), so
 * malformed text is never under-counted; syntax is left to the parser.
 * When `why` is not NULL it receives 0 (within limits), 1 (too deep) or
 * 2 (too many values).
 */
enum cal_status cal_json_prescan(const char *what, const char *text, size_t len,
				 const struct cal_json_limits *lim, int *why, struct cal_error *err);

#endif
