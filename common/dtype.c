/* dtype.c — safetensors element type table. */
#include "dtype.h"

#include <string.h>

static const struct {
	const char *name;
	size_t size;
	int is_float;
} dtypes[CAL_DTYPE_COUNT] = {
	[CAL_DTYPE_BOOL] = {"BOOL", 1, 0},
	[CAL_DTYPE_U8] = {"U8", 1, 0},
	[CAL_DTYPE_I8] = {"I8", 1, 0},
	[CAL_DTYPE_F8_E5M2] = {"F8_E5M2", 1, 1},
	[CAL_DTYPE_F8_E4M3] = {"F8_E4M3", 1, 1},
	[CAL_DTYPE_F8_E8M0] = {"F8_E8M0", 1, 1},
	[CAL_DTYPE_I16] = {"I16", 2, 0},
	[CAL_DTYPE_U16] = {"U16", 2, 0},
	[CAL_DTYPE_F16] = {"F16", 2, 1},
	[CAL_DTYPE_BF16] = {"BF16", 2, 1},
	[CAL_DTYPE_I32] = {"I32", 4, 0},
	[CAL_DTYPE_U32] = {"U32", 4, 0},
	[CAL_DTYPE_F32] = {"F32", 4, 1},
	[CAL_DTYPE_F64] = {"F64", 8, 1},
	[CAL_DTYPE_I64] = {"I64", 8, 0},
	[CAL_DTYPE_U64] = {"U64", 8, 0},
};

size_t cal_dtype_size(enum cal_dtype t)
{
	return (unsigned)t < CAL_DTYPE_COUNT ? dtypes[t].size : 0;
}

const char *cal_dtype_name(enum cal_dtype t)
{
	return (unsigned)t < CAL_DTYPE_COUNT ? dtypes[t].name : "?";
}

int cal_dtype_from_name(const char *name, enum cal_dtype *ret)
{
	for (int i = 0; i < CAL_DTYPE_COUNT; i++) {
		if (strcmp(name, dtypes[i].name) == 0) {
			*ret = (enum cal_dtype)i;
			return 0;
		}
	}
	return -1;
}

int cal_dtype_is_float(enum cal_dtype t)
{
	return (unsigned)t < CAL_DTYPE_COUNT ? dtypes[t].is_float : 0;
}
