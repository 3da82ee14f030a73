/*
 * check.c — argument checks shared by the op files (kernels/<op>.c).
 */
#include "kernels/internal.h"

enum cal_status cal_check_ptr(const void *p, const char *field, struct cal_error *err)
{
	if (!p)
		return cal_error_set(err, CAL_ERR_INVALID, "argument '%s' is NULL", field);
	return CAL_OK;
}

enum cal_status cal_check_obs_dtype(enum cal_dtype dt, struct cal_error *err)
{
	if (dt != CAL_DTYPE_BF16 && dt != CAL_DTYPE_F32)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "argument 'dtype': %s is not supported (BF16 or F32)",
				     (unsigned)dt < CAL_DTYPE_COUNT ? cal_dtype_name(dt) : "?");
	return CAL_OK;
}

enum cal_status cal_check_out_dtype(enum cal_dtype dt, struct cal_error *err)
{
	if (dt != CAL_DTYPE_BF16 && dt != CAL_DTYPE_F32)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "argument 'out_dtype': %s is not supported (BF16 or F32)",
				     (unsigned)dt < CAL_DTYPE_COUNT ? cal_dtype_name(dt) : "?");
	return CAL_OK;
}

enum cal_status cal_check_shape(uint64_t rows, uint64_t cols, uint64_t multiple,
				struct cal_error *err)
{
	uint64_t n;
	if (__builtin_mul_overflow(rows, cols, &n) || n > CAL_MAX_ELEMS)
		return cal_error_set(err, CAL_ERR_RANGE,
				     "shape [%llu, %llu] has more than 2^48 elements",
				     (unsigned long long)rows, (unsigned long long)cols);
	if (multiple > 1 && cols % multiple)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'cols' = %llu is not a multiple of %llu",
				     (unsigned long long)cols, (unsigned long long)multiple);
	return CAL_OK;
}
