/*
 * util.h — small helpers with no policy: overflow-checked arithmetic,
 * whole-file reading, string duplication.
 */
#ifndef CAL_UTIL_H
#define CAL_UTIL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* a*b into *ret; returns 0, or -1 on overflow. */
static inline int cal_mul_u64(uint64_t a, uint64_t b, uint64_t *ret)
{
	return __builtin_mul_overflow(a, b, ret) ? -1 : 0;
}

static inline int cal_add_u64(uint64_t a, uint64_t b, uint64_t *ret)
{
	return __builtin_add_overflow(a, b, ret) ? -1 : 0;
}

#define CAL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Reads a whole regular file of at most max_bytes into a NUL-terminated heap
 * buffer (*ret, owned by the caller; *ret_len excludes the NUL).
 */
enum cal_status cal_read_file(const char *path, size_t max_bytes, char **ret,
			      size_t *ret_len, struct cal_error *err);

/*
 * The one path join: "dir/name" (no second '/' when dir ends with one) into
 * *ret (heap, caller frees).  Errors: CAL_ERR_RANGE "path too long" when
 * the result would not fit PATH_MAX (the API reports it as path_too_long),
 * CAL_ERR_NOMEM.
 */
enum cal_status cal_path_join_checked(const char *dir, const char *name, char **ret,
				      struct cal_error *err);
/* cal_path_join_checked for callers that report a failure as one: NULL on
 * allocation failure or a path over PATH_MAX. */
char *cal_path_join(const char *dir, const char *name);

/* msg with every "dir/" removed: error messages that must not show where
 * a tree lives (heap, caller frees; NULL on allocation failure). */
char *cal_str_scrub_dir(const char *msg, const char *dir);

/* Monotonic time in seconds. */
double cal_now(void);

/* Initializes *cv so that its timed waits take CLOCK_MONOTONIC deadlines
 * (those of cal_now() and clock_gettime(CLOCK_MONOTONIC)). */
void cal_cond_init_monotonic(pthread_cond_t *cv);

#endif
