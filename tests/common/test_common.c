/* test_common.c — status/error plumbing, dtype table, fp16/bf16 rounding. */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "common/dtype.h"
#include "common/fp.h"
#include "common/status.h"
#include "common/util.h"

Test(status, innermost_message_is_kept_and_wrap_prefixes)
{
	struct cal_error err = {0};
	cr_assert_eq(cal_error_set(&err, CAL_ERR_FORMAT, "tensor %s: bad", "a.weight"), CAL_ERR_FORMAT);
	cal_error_set(&err, CAL_ERR_IO, "outer");
	cr_assert_str_eq(cal_error_msg(&err), "tensor a.weight: bad");
	cal_error_wrap(&err, CAL_ERR_FORMAT, "model.safetensors");
	cr_assert_str_eq(cal_error_msg(&err), "model.safetensors: tensor a.weight: bad");
	cal_error_clear(&err);
	cr_assert_null(err.msg);
	cr_assert_eq(err.code, CAL_OK);
	cr_assert_eq(cal_error_set(NULL, CAL_ERR_NOMEM, "x"), CAL_ERR_NOMEM);
}

Test(dtype, names_roundtrip)
{
	for (int i = 0; i < CAL_DTYPE_COUNT; i++) {
		enum cal_dtype t;
		cr_assert_eq(cal_dtype_from_name(cal_dtype_name((enum cal_dtype)i), &t), 0);
		cr_assert_eq((int)t, i);
		cr_assert_gt(cal_dtype_size(t), 0);
	}
	enum cal_dtype t;
	cr_assert_eq(cal_dtype_from_name("bf16", &t), -1, "names are case sensitive");
	cr_assert_eq(cal_dtype_size(CAL_DTYPE_BF16), 2);
	cr_assert_eq(cal_dtype_size(CAL_DTYPE_I64), 8);
}

Test(fp, bf16_round_half_even)
{
	cr_assert_eq(cal_f32_to_bf16(1.0f), 0x3f80);
	/* 1 + 2^-8 is exactly halfway between 1 and 1+2^-7: ties to even (1.0) */
	cr_assert_eq(cal_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
	/* 1 + 3*2^-8 ties between 1+2^-7 (odd) and 1+2^-6: goes up */
	cr_assert_eq(cal_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
	cr_assert(isnan(cal_bf16_to_f32(cal_f32_to_bf16(NAN))));
	cr_assert_eq(cal_f32_to_bf16(-0.0f), 0x8000);
}

Test(fp, f16_matches_ieee)
{
	cr_assert_eq(cal_f32_to_f16(1.0f), 0x3c00);
	cr_assert_eq(cal_f32_to_f16(65504.0f), 0x7bff);
	cr_assert_eq(cal_f32_to_f16(65520.0f), 0x7c00, "ties to even round to inf");
	cr_assert_eq(cal_f32_to_f16(0x1p-24f), 0x0001);
	cr_assert_eq(cal_f32_to_f16(0x1p-25f), 0x0000, "half of the smallest subnormal ties to 0");
	cr_assert_eq(cal_f32_to_f16(1.5f * 0x1p-24f), 0x0002, "1.5 ulp ties to even 2");
	for (uint32_t h = 0; h < 0x7c00; h++)
		cr_assert_eq(cal_f32_to_f16(cal_f16_to_f32((uint16_t)h)), h, "roundtrip %#x", h);
}

Test(util, overflow_checks)
{
	uint64_t r;
	cr_assert_eq(cal_mul_u64(UINT64_MAX, 2, &r), -1);
	cr_assert_eq(cal_mul_u64(1u << 20, 1u << 20, &r), 0);
	cr_assert_eq(r, 1ull << 40);
	cr_assert_eq(cal_add_u64(UINT64_MAX, 1, &r), -1);
	char *p = cal_path_join("a/", "b");
	cr_assert_str_eq(p, "a/b");
	free(p);
}

Test(util, path_join_checks_the_length)
{
	struct cal_error err = {0};
	char *p = NULL, dir[PATH_MAX];
	cr_assert_eq(cal_path_join_checked("/x", "y.json", &p, &err), CAL_OK);
	cr_expect_str_eq(p, "/x/y.json");
	free(p);
	cr_assert_eq(cal_path_join_checked("", "y", &p, &err), CAL_OK);
	cr_expect_str_eq(p, "/y");
	free(p);
	memset(dir, 'd', sizeof(dir));
	dir[PATH_MAX - 3] = '\0'; /* dir + '/' + "y" fills PATH_MAX - 1 bytes: fits */
	cr_assert_eq(cal_path_join_checked(dir, "y", &p, &err), CAL_OK);
	cr_expect_eq(strlen(p), PATH_MAX - 1);
	free(p);
	cr_expect_eq(cal_path_join_checked(dir, "yz", &p, &err), CAL_ERR_RANGE);
	cr_expect_null(p);
	cr_expect(strstr(cal_error_msg(&err), "path too long"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_null(cal_path_join(dir, "yz"));
}
