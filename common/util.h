/*
 * util.h — small helpers with no policy: overflow-checked arithmetic,
 * whole-file reading, string duplication.
 */
#ifndef CAL_UTIL_H
#define CAL_UTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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
 * vasprintf of the enclosing variadic function's arguments after its last
 * named parameter fmt into *ret (heap, caller frees): the length, or -1 on
 * failure (*ret undefined).  A macro because va_start can only run in the
 * variadic function itself.
 */
#define CAL_VASPRINTF(ret, fmt)                                                                   \
	__extension__({                                                                           \
		va_list ap_;                                                                      \
		va_start(ap_, fmt);                                                               \
		int r_ = vasprintf((ret), (fmt), ap_);                                            \
		va_end(ap_);                                                                      \
		r_;                                                                               \
	})

/* The next value of the splitmix64 stream whose state is *s (Steele, Lea
 * and Flood's SplitMix64: adds the golden-ratio increment, then mixes):
 * the project's one pseudo-random generator, for shuffles and test data. */
static inline uint64_t cal_splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* A row of a table that turns a configuration word into an enum value. */
struct cal_name_val {
	const char *name;
	int val;
};

/* The value of name in t[0..n) into *ret: 0, or -1 when name is NULL or
 * not in the table (*ret unchanged). */
int cal_name_val_find(const struct cal_name_val *t, size_t n, const char *name, int *ret);

/*
 * The one growable-array step: when need elements of elem_size bytes do not
 * fit the capacity *cap of v, reallocates v to twice *cap (min_cap the
 * first time, or need if larger) and updates *cap.  Returns the array to
 * use (v itself when it fits), or NULL on allocation failure or overflow,
 * v and *cap then unchanged and still the caller's.
 */
void *cal_grow(void *v, size_t *cap, size_t need, size_t elem_size, size_t min_cap);

/*
 * Opens path read-only through common/confine.h and checks that it is a
 * regular file: *ret_fd (the caller closes it) and its size in *ret_size.
 * Errors: CAL_ERR_NOTFOUND when it does not exist, else CAL_ERR_IO, as
 * "PATH: <open_what><reason>" or "PATH: not a regular file".
 */
enum cal_status cal_open_regular(const char *path, const char *open_what, int *ret_fd,
				 uint64_t *ret_size, struct cal_error *err);

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

/*
 * v for humans into buf, returned: divided by base (1000 or 1024) while it
 * is at least base, at most 4 times, printed with prec decimals once
 * divided (none otherwise), then " ", the prefix (K M G T, or Ki Mi Gi Ti
 * for 1024) and unit, unless both are empty: (1234567, 1000, 2, "B") gives
 * "1.23 MB", (999, 1000, 2, "") "999", (1536, 1024, 1, "B") "1.5 KiB".
 */
const char *cal_fmt_scaled(char *buf, size_t cap, double v, double base, int prec,
			   const char *unit);

/* Monotonic time in seconds. */
double cal_now(void);

/* Initializes *cv so that its timed waits take CLOCK_MONOTONIC deadlines
 * (those of cal_now() and clock_gettime(CLOCK_MONOTONIC)). */
void cal_cond_init_monotonic(pthread_cond_t *cv);

#endif
