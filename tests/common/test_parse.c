/*
 * test_parse.c — common/parse.c: every form accepted, every malformed or
 * out-of-range input refused with a message naming the option.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "common/parse.h"

/* s must fail with code, the message naming "--opt". */
static void refused(enum cal_status st, struct cal_error *err, enum cal_status code,
		    const char *s)
{
	cr_expect_eq(st, code, "'%s': status %d, want %d (%s)", s, st, code, cal_error_msg(err));
	cr_expect(strstr(cal_error_msg(err), "--opt") != NULL, "'%s': %s", s, cal_error_msg(err));
	cal_error_clear(err);
}

Test(parse, counts)
{
	struct cal_error err = {0};
	uint64_t u = 7;
	int64_t i = 7;
	cr_expect_eq(cal_parse_u64("--opt", "0", 0, 10, &u, &err), CAL_OK);
	cr_expect_eq(u, 0);
	cr_expect_eq(cal_parse_u64("--opt", "18446744073709551615", 0, UINT64_MAX, &u, &err), CAL_OK);
	cr_expect_eq(u, UINT64_MAX);
	static const char *const bad[] = {"", " 1", "1 ", "+1", "-1", "0x10", "1k", "1.0", "abc"};
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++)
		refused(cal_parse_u64("--opt", bad[k], 0, 100, &u, &err), &err, CAL_ERR_INVALID, bad[k]);
	refused(cal_parse_u64("--opt", NULL, 0, 100, &u, &err), &err, CAL_ERR_INVALID, "(null)");
	refused(cal_parse_u64("--opt", "101", 0, 100, &u, &err), &err, CAL_ERR_RANGE, "101");
	refused(cal_parse_u64("--opt", "0", 1, 100, &u, &err), &err, CAL_ERR_RANGE, "0");
	refused(cal_parse_u64("--opt", "18446744073709551616", 0, UINT64_MAX, &u, &err), &err,
		CAL_ERR_RANGE, "2^64");
	cr_expect_eq(u, UINT64_MAX, "a failure leaves *ret alone");

	cr_expect_eq(cal_parse_i64("--opt", "-5", -10, 10, &i, &err), CAL_OK);
	cr_expect_eq(i, -5);
	cr_expect_eq(cal_parse_i64("--opt", "-9223372036854775808", INT64_MIN, 0, &i, &err), CAL_OK);
	cr_expect_eq(i, INT64_MIN);
	refused(cal_parse_i64("--opt", "9223372036854775808", INT64_MIN, INT64_MAX, &i, &err), &err,
		CAL_ERR_RANGE, "2^63");
	refused(cal_parse_i64("--opt", "-11", -10, 10, &i, &err), &err, CAL_ERR_RANGE, "-11");
	refused(cal_parse_i64("--opt", "--1", -10, 10, &i, &err), &err, CAL_ERR_INVALID, "--1");
	refused(cal_parse_i64("--opt", "-", -10, 10, &i, &err), &err, CAL_ERR_INVALID, "-");
}

Test(parse, numbers)
{
	struct cal_error err = {0};
	double d = 0;
	cr_expect_eq(cal_parse_f64("--opt", "0.25", 0, 1, &d, &err), CAL_OK);
	cr_expect_eq(d, 0.25);
	cr_expect_eq(cal_parse_f64("--opt", "-1e-3", -1, 1, &d, &err), CAL_OK);
	cr_expect_eq(d, -1e-3);
	cr_expect_eq(cal_parse_f64("--opt", ".5", 0, 1, &d, &err), CAL_OK);
	cr_expect_eq(cal_parse_f64("--opt", "1.", 0, 1, &d, &err), CAL_OK);
	static const char *const bad[] = {"", ".", "inf", "nan", "0x1p3", " 1", "1e", "1,5", "1e+"};
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++)
		refused(cal_parse_f64("--opt", bad[k], -10, 10, &d, &err), &err, CAL_ERR_INVALID, bad[k]);
	refused(cal_parse_f64("--opt", "1.5", 0, 1, &d, &err), &err, CAL_ERR_RANGE, "1.5");
	refused(cal_parse_f64("--opt", "1e999", 0, INFINITY, &d, &err), &err, CAL_ERR_INVALID, "1e999");
}

Test(parse, sizes)
{
	static const struct { const char *s; uint64_t v; } ok[] = {
		{"4096", 4096}, {"1b", 1}, {"2K", 2048}, {"512MiB", 512ull << 20}, {"512mib", 512ull << 20},
		{"10GB", 10000000000ull}, {"3g", 3ull << 30}, {"1TiB", 1ull << 40}, {"5kb", 5000},
	};
	struct cal_error err = {0};
	uint64_t v = 0;
	for (size_t k = 0; k < sizeof(ok) / sizeof(ok[0]); k++) {
		cr_expect_eq(cal_parse_size("--opt", ok[k].s, 0, UINT64_MAX, &v, &err), CAL_OK, "%s: %s",
			     ok[k].s, cal_error_msg(&err));
		cr_expect_eq(v, ok[k].v, "%s", ok[k].s);
	}
	static const char *const bad[] = {"", "GB", "1.5G", "-1", "1 GB", "1GBs", "1e3", "0x10"};
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++)
		refused(cal_parse_size("--opt", bad[k], 0, UINT64_MAX, &v, &err), &err, CAL_ERR_INVALID,
			bad[k]);
	refused(cal_parse_size("--opt", "0", 1, UINT64_MAX, &v, &err), &err, CAL_ERR_RANGE, "0");
	refused(cal_parse_size("--opt", "16777216TiB", 0, UINT64_MAX, &v, &err), &err, CAL_ERR_RANGE,
		"2^64 bytes");
	refused(cal_parse_size("--opt", "99999999999999999999", 0, UINT64_MAX, &v, &err), &err,
		CAL_ERR_RANGE, "20 digits");
}

Test(parse, durations)
{
	static const struct { const char *s; double v; } ok[] = {
		{"30", 30}, {"30s", 30}, {"250ms", 0.25}, {"5m", 300}, {"5min", 300}, {"1.5h", 5400},
		{"0.5", 0.5},
	};
	struct cal_error err = {0};
	double v = 0;
	for (size_t k = 0; k < sizeof(ok) / sizeof(ok[0]); k++) {
		cr_expect_eq(cal_parse_duration("--opt", ok[k].s, 0, 1e6, &v, &err), CAL_OK, "%s: %s",
			     ok[k].s, cal_error_msg(&err));
		cr_expect(fabs(v - ok[k].v) < 1e-12, "%s: %g", ok[k].s, v);
	}
	static const char *const bad[] = {"", "s", "-1s", "5 m", "5d", "1e", "inf"};
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++)
		refused(cal_parse_duration("--opt", bad[k], 0, 1e6, &v, &err), &err, CAL_ERR_INVALID,
			bad[k]);
	refused(cal_parse_duration("--opt", "2h", 0, 3600, &v, &err), &err, CAL_ERR_RANGE, "2h");
	refused(cal_parse_duration("--opt", "0", 0.001, 3600, &v, &err), &err, CAL_ERR_RANGE, "0");
}

Test(parse, scan_inside_names)
{
	const char *end = NULL;
	uint64_t v = 0;
	const char *name = "model.layers.12.mlp";
	cr_expect_eq(cal_scan_u64(name + 13, &end, &v), 0);
	cr_expect_eq(v, 12);
	cr_expect_str_eq(end, ".mlp");
	cr_expect_eq(cal_scan_u64("x1", &end, &v), -1);
	cr_expect_eq(cal_scan_u64("-1", &end, &v), -1);
	cr_expect_eq(cal_scan_u64("99999999999999999999", &end, &v), -1);
	cr_expect_eq(cal_scan_u64(NULL, &end, &v), -1);
}
