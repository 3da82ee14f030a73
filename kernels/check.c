/*
 * check.c — argument checks shared by the op files (kernels/<op>.c).
 */
#include "kernels/internal.h"

#include <math.h>

enum cal_status cal_check_ptr(const void *p, const char *field, struct cal_error *err)
{
	if (!p)
		return cal_error_set(err, CAL_ERR_INVALID, "argument '%s' is NULL", field);
	return CAL_OK;
}

enum cal_status cal_check_ptrs(const struct cal_arg_ptr *v, size_t n, struct cal_error *err)
{
	for (size_t i = 0; i < n; i++)
		if (!v[i].p)
			return cal_check_ptr(NULL, v[i].field, err);
	return CAL_OK;
}

enum cal_status cal_check_shapes(const uint64_t (*v)[2], size_t n, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	for (size_t i = 0; i < n && st >= 0; i++)
		st = cal_check_shape(v[i][0], v[i][1], 1, err);
	return st;
}

enum cal_status cal_check_fp8_tiling(uint64_t n, int tiled, uint64_t cols,
				     struct cal_error *err)
{
	if (n && tiled && (!cols || n % cols))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'cols' = %llu does not divide "
				     "n = %llu", (unsigned long long)cols,
				     (unsigned long long)n);
	return CAL_OK;
}

enum cal_status cal_check_int4_shape(uint64_t rows, uint64_t cols, struct cal_error *err)
{
	enum cal_status st = cal_check_shape(rows, cols, 128, err);
	if (st >= 0 && rows % 2)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'rows' = %llu is odd (INT4 packs row pairs)",
				     (unsigned long long)rows);
	return st;
}

/* The dtype argument `field` is BF16 or F32. */
static enum cal_status check_bf16_f32(enum cal_dtype dt, const char *field, struct cal_error *err)
{
	if (dt != CAL_DTYPE_BF16 && dt != CAL_DTYPE_F32)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "argument '%s': %s is not supported (BF16 or F32)", field,
				     (unsigned)dt < CAL_DTYPE_COUNT ? cal_dtype_name(dt) : "?");
	return CAL_OK;
}

enum cal_status cal_check_obs_dtype(enum cal_dtype dt, struct cal_error *err)
{
	return check_bf16_f32(dt, "dtype", err);
}

enum cal_status cal_check_out_dtype(enum cal_dtype dt, struct cal_error *err)
{
	return check_bf16_f32(dt, "out_dtype", err);
}

enum cal_status cal_check_enum(int v, int last, const char *field, struct cal_error *err)
{
	if ((unsigned)v > (unsigned)last)
		return cal_error_set(err, CAL_ERR_INVALID, "argument '%s' = %d is unknown", field, v);
	return CAL_OK;
}

enum cal_status cal_check_topk(uint32_t e, uint32_t k, uint32_t k_total, struct cal_error *err)
{
	if (e == 0 || k == 0 || k > k_total || k_total > e)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "arguments e = %u, k = %u, k_total = %u: need 1 <= k <= k_total <= e",
				     e, k, k_total);
	return CAL_OK;
}

enum cal_status cal_check_row_sums(uint64_t rows, uint64_t cols, const void *x, const char *x_field,
				   const void *y, const char *y_field, const double *sums,
				   struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_shape(rows, cols, 1, err)) < 0)
		return st;
	if (rows && cols &&
	    (st = cal_check_ptrs((const struct cal_arg_ptr[]){{x, x_field}, {y, y_field}}, 2, err)) < 0)
		return st;
	if (rows && (st = cal_check_ptr(sums, "sums", err)) < 0)
		return st;
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

enum cal_status cal_check_nvfp4_static(uint64_t rows, uint64_t cols, float global_amax,
				       float norm_max, const void *w, const void *block_amax,
				       struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_shape(rows, cols, 16, err)) < 0)
		return st;
	if (!(global_amax > 0.0f) || global_amax > 3.4e38f)
		return cal_error_set(err, CAL_ERR_NUMERIC,
				     "argument 'global_amax' = %g is not finite and > 0",
				     (double)global_amax);
	if (norm_max != 448.0f && norm_max != 256.0f)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "argument 'norm_max' = %g is not 448 or 256", (double)norm_max);
	if (rows && cols && ((st = cal_check_ptr(w, "w", err)) < 0 ||
			     (st = cal_check_ptr(block_amax, "block_amax", err)) < 0))
		return st;
	return CAL_OK;
}

enum cal_status cal_check_norm_shape(uint64_t rows, uint64_t cols, float eps,
				     struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_shape(rows, cols, 1, err)) < 0)
		return st;
	if (rows == 0)
		return CAL_OK;
	if (cols == 0)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'cols' is 0");
	if (!(eps >= 0.0f) || !isfinite(eps))
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'eps' must be finite and >= 0");
	return CAL_OK;
}

enum cal_status cal_check_block_dequant(uint64_t rows, uint64_t cols, uint64_t block,
					enum cal_dtype out_dtype, const void *data,
					const char *data_field, const void *scales, const void *out,
					struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_shape(rows, cols, block, err)) < 0 ||
	    (st = cal_check_out_dtype(out_dtype, err)) < 0)
		return st;
	if (rows && cols && ((st = cal_check_ptr(data, data_field, err)) < 0 ||
			     (st = cal_check_ptr(scales, "scales", err)) < 0 ||
			     (st = cal_check_ptr(out, "out", err)) < 0))
		return st;
	return CAL_OK;
}

enum cal_status cal_check_block_quant(uint64_t rows, uint64_t cols, uint64_t block,
				      const void *w, const void *data, const char *data_field,
				      const void *scales, struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_shape(rows, cols, block, err)) < 0)
		return st;
	if (rows && cols && ((st = cal_check_ptr(w, "w", err)) < 0 ||
			     (st = cal_check_ptr(data, data_field, err)) < 0 ||
			     (st = cal_check_ptr(scales, "scales", err)) < 0))
		return st;
	return CAL_OK;
}

enum cal_status cal_check_obs_items(uint64_t rows, uint64_t cols, uint64_t multiple,
				    const void *x, const float *amax,
				    const struct cal_nonfinite *nonfinite, struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_shape(rows, cols, multiple, err)) < 0 ||
	    (st = cal_check_ptr(nonfinite, "nonfinite", err)) < 0)
		return st;
	if (rows && cols && ((st = cal_check_ptr(x, "x", err)) < 0 ||
			     (st = cal_check_ptr(amax, "amax", err)) < 0))
		return st;
	return CAL_OK;
}

enum cal_status cal_check_tokens(uint64_t t, uint32_t n_seq, struct cal_error *err)
{
	if (t > UINT32_MAX)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 't' = %llu exceeds 2^32-1",
				     (unsigned long long)t);
	if (t && n_seq == 0)
		return cal_error_set(err, CAL_ERR_INVALID, "argument 'n_seq' is 0");
	return CAL_OK;
}

enum cal_status cal_check_obs(enum cal_dtype dtype, uint64_t rows, uint64_t cols,
			      const float *amax, const struct cal_nonfinite *nonfinite,
			      struct cal_error *err)
{
	enum cal_status st;
	if ((st = cal_check_obs_dtype(dtype, err)) < 0 ||
	    (st = cal_check_shape(rows, cols, 1, err)) < 0 ||
	    (st = cal_check_ptr(amax, "amax", err)) < 0 ||
	    (st = cal_check_ptr(nonfinite, "nonfinite", err)) < 0)
		return st;
	if (rows > UINT32_MAX)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'rows' = %llu exceeds 2^32-1",
				     (unsigned long long)rows);
	return CAL_OK;
}

enum cal_status cal_check_batch_n(uint32_t batch, uint64_t n, struct cal_error *err)
{
	if (batch > 65535)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'batch' = %u is not in [0, 65535]",
				     (unsigned)batch);
	if (!n || n > 65536)
		return cal_error_set(err, CAL_ERR_RANGE, "argument 'n' = %llu is not in [1, 65536]",
				     (unsigned long long)n);
	return CAL_OK;
}
