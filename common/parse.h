/*
 * parse.h — the one parser of numbers that come from outside: command-line
 * options, configuration keys, environment variables, query parameters,
 * names inside checkpoints.  Every function reads the whole string (no
 * leading blanks, no sign where none is allowed, no trailing junk), checks
 * the range and, on failure, returns an error whose message names the
 * option or field (`what`) and the text it was given.
 *
 * Accepted forms:
 *   counts     decimal digits ("12"); integers may carry a leading '-'
 *              where the range allows negatives
 *   numbers    decimal with optional fraction and exponent ("0.5", "1e-3");
 *              never hex, inf or nan
 *   sizes      a count with an optional unit, case-insensitive: B; K, M,
 *              G, T and KiB, MiB, GiB, TiB (powers of 1024); KB, MB, GB,
 *              TB (powers of 1000) — "512MiB", "10GB", "4096"
 *   durations  a number with an optional unit: ms, s (the default), m or
 *              min, h — "250ms", "30s", "5m", "1.5"
 * Errors: CAL_ERR_INVALID (not of the form), CAL_ERR_RANGE (outside the
 * range, or overflow).  *ret is only written on success.
 */
#ifndef CAL_PARSE_H
#define CAL_PARSE_H

#include <stdint.h>

#include "common/status.h"

enum cal_status cal_parse_u64(const char *what, const char *s, uint64_t min, uint64_t max,
			      uint64_t *ret, struct cal_error *err);
enum cal_status cal_parse_i64(const char *what, const char *s, int64_t min, int64_t max,
			      int64_t *ret, struct cal_error *err);
/* A finite number in [min, max]. */
enum cal_status cal_parse_f64(const char *what, const char *s, double min, double max,
			      double *ret, struct cal_error *err);
/* Bytes in [min, max]. */
enum cal_status cal_parse_size(const char *what, const char *s, uint64_t min, uint64_t max,
			       uint64_t *ret, struct cal_error *err);
/* Seconds in [min_s, max_s]. */
enum cal_status cal_parse_duration(const char *what, const char *s, double min_s, double max_s,
				   double *ret_s, struct cal_error *err);

/*
 * Scans the decimal digits at the start of s (for numbers inside names,
 * "layers.12.mlp"): *ret the value, *ret_end the first byte after them.
 * Returns 0, or -1 when s does not start with a digit or the value
 * overflows (then nothing is written).
 */
int cal_scan_u64(const char *s, const char **ret_end, uint64_t *ret);

#endif
