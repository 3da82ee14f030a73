/*
 * parse.c — checked parsing of counts, numbers, sizes and durations
 * (parse.h).  The form is checked here, digit by digit, before any
 * conversion, so that blanks, hex, inf/nan and locale never slip through.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/parse.h"

#define DIGITS "0123456789"

int cal_scan_u64(const char *s, const char **ret_end, uint64_t *ret)
{
	uint64_t v = 0;
	const char *p = s;
	if (!s || *p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*ret = v;
	*ret_end = p;
	return 0;
}

/* Length of the decimal number at the start of s: [-]D+[.D*][eE[+-]D+] or
 * [-].D+..., the sign only with `sign`, fraction and exponent only with
 * `frac`; 0 when s does not start with one. */
static size_t number_len(const char *s, int sign, int frac)
{
	const char *p = s;
	size_t d;
	if (sign && *p == '-')
		p++;
	d = strspn(p, DIGITS);
	p += d;
	if (frac && *p == '.') {
		size_t f = strspn(p + 1, DIGITS);
		if (d + f == 0)
			return 0;
		p += 1 + f;
		d += f;
	}
	if (d == 0)
		return 0;
	if (frac && (*p == 'e' || *p == 'E')) {
		const char *q = p + 1;
		if (*q == '+' || *q == '-')
			q++;
		if (strspn(q, DIGITS) > 0)
			p = q + strspn(q, DIGITS);
	}
	return (size_t)(p - s);
}

static enum cal_status not_a(const char *what, const char *s, const char *expected,
			     struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_INVALID, "%s: '%s' is not %s", what, s ? s : "(missing)",
			     expected);
}

enum cal_status cal_parse_u64(const char *what, const char *s, uint64_t min, uint64_t max,
			      uint64_t *ret, struct cal_error *err)
{
	const char *end;
	uint64_t v;
	if (!s || !*s || s[strspn(s, DIGITS)])
		return cal_error_set(err, CAL_ERR_INVALID, "%s: '%s' is not an integer in %llu..%llu",
				     what, s ? s : "(missing)", (unsigned long long)min,
				     (unsigned long long)max);
	if (cal_scan_u64(s, &end, &v) < 0 || v < min || v > max)
		return cal_error_set(err, CAL_ERR_RANGE, "%s: %s is outside %llu..%llu", what, s,
				     (unsigned long long)min, (unsigned long long)max);
	*ret = v;
	return CAL_OK;
}

enum cal_status cal_parse_i64(const char *what, const char *s, int64_t min, int64_t max,
			      int64_t *ret, struct cal_error *err)
{
	const char *end;
	uint64_t mag;
	int neg = s && *s == '-';
	if (!s || number_len(s, 1, 0) != strlen(s) || !*s)
		return cal_error_set(err, CAL_ERR_INVALID, "%s: '%s' is not an integer in %lld..%lld",
				     what, s ? s : "(missing)", (long long)min, (long long)max);
	if (cal_scan_u64(s + neg, &end, &mag) < 0 ||
	    mag > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
		goto range;
	int64_t v = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag)
			: (int64_t)mag;
	if (v < min || v > max)
		goto range;
	*ret = v;
	return CAL_OK;
range:
	return cal_error_set(err, CAL_ERR_RANGE, "%s: %s is outside %lld..%lld", what, s,
			     (long long)min, (long long)max);
}

/* A finite decimal number spanning s exactly; 0, or -1. */
static int to_double(const char *s, int sign, double *ret)
{
	if (!s || !*s || number_len(s, sign, 1) != strlen(s))
		return -1;
	*ret = strtod(s, NULL); /* the form is checked: strtod only converts */
	return isfinite(*ret) ? 0 : -1;
}

enum cal_status cal_parse_f64(const char *what, const char *s, double min, double max,
			      double *ret, struct cal_error *err)
{
	double v;
	if (to_double(s, 1, &v) < 0)
		return cal_error_set(err, CAL_ERR_INVALID, "%s: '%s' is not a number in [%g, %g]",
				     what, s ? s : "(missing)", min, max);
	if (!(v >= min && v <= max))
		return cal_error_set(err, CAL_ERR_RANGE, "%s: %s is outside [%g, %g]", what, s, min,
				     max);
	*ret = v;
	return CAL_OK;
}

/* A unit suffix and what it multiplies by (exact in a double). */
struct unit {
	const char *name;
	double mul;
};

/* The unit named suffix (case-insensitive) in u[n], or NULL. */
static const struct unit *unit_find(const struct unit *u, size_t n, const char *suffix)
{
	for (size_t i = 0; i < n; i++)
		if (!strcasecmp(suffix, u[i].name))
			return &u[i];
	return NULL;
}

enum cal_status cal_parse_size(const char *what, const char *s, uint64_t min, uint64_t max,
			       uint64_t *ret, struct cal_error *err)
{
	static const struct unit units[] = {
		{"", 1}, {"b", 1},
		{"k", 0x1p10}, {"m", 0x1p20}, {"g", 0x1p30}, {"t", 0x1p40},
		{"kib", 0x1p10}, {"mib", 0x1p20}, {"gib", 0x1p30}, {"tib", 0x1p40},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	};
	static const char expected[] = "a size (bytes, or a number with K/M/G/T, KiB/MiB/GiB/TiB "
				       "or KB/MB/GB/TB)";
	const char *end;
	uint64_t v;
	if (!s || cal_scan_u64(s, &end, &v) < 0) {
		if (s && *s >= '0' && *s <= '9')
			goto range; /* digits that overflow */
		return not_a(what, s, expected, err);
	}
	const struct unit *u = unit_find(units, sizeof(units) / sizeof(units[0]), end);
	if (!u)
		return not_a(what, s, expected, err);
	uint64_t mul = (uint64_t)u->mul;
	if (v > UINT64_MAX / mul || (v *= mul) < min || v > max)
		goto range;
	*ret = v;
	return CAL_OK;
range:
	return cal_error_set(err, CAL_ERR_RANGE, "%s: %s is outside %llu..%llu bytes", what, s,
			     (unsigned long long)min, (unsigned long long)max);
}

enum cal_status cal_parse_duration(const char *what, const char *s, double min_s, double max_s,
				   double *ret_s, struct cal_error *err)
{
	static const struct unit units[] = {
		{"", 1}, {"s", 1}, {"ms", 1e-3}, {"m", 60}, {"min", 60}, {"h", 3600},
	};
	static const char expected[] = "a duration (a number of seconds, or with ms, s, m or h)";
	size_t n = s ? number_len(s, 0, 1) : 0;
	const struct unit *u = n ? unit_find(units, sizeof(units) / sizeof(units[0]), s + n) : NULL;
	char num[64];
	double v;
	if (!u || n >= sizeof(num))
		return not_a(what, s, expected, err);
	memcpy(num, s, n);
	num[n] = '\0';
	if (to_double(num, 0, &v) < 0 || !((v *= u->mul) >= min_s && v <= max_s))
		return cal_error_set(err, CAL_ERR_RANGE, "%s: %s is outside %g..%g s", what, s, min_s,
				     max_s);
	*ret_s = v;
	return CAL_OK;
}
