/*
 * dtype.h — element types as safetensors names them.
 *
 * The enum order is stable (it appears in JSON output only by name, never by
 * number).  cal_dtype_from_name() accepts exactly the safetensors spellings.
 */
#ifndef CAL_DTYPE_H
#define CAL_DTYPE_H

#include <stddef.h>
#include <stdint.h>

enum cal_dtype {
	CAL_DTYPE_BOOL,
	CAL_DTYPE_U8,
	CAL_DTYPE_I8,
	CAL_DTYPE_F8_E5M2,
	CAL_DTYPE_F8_E4M3,
	CAL_DTYPE_F8_E8M0,
	CAL_DTYPE_I16,
	CAL_DTYPE_U16,
	CAL_DTYPE_F16,
	CAL_DTYPE_BF16,
	CAL_DTYPE_I32,
	CAL_DTYPE_U32,
	CAL_DTYPE_F32,
	CAL_DTYPE_F64,
	CAL_DTYPE_I64,
	CAL_DTYPE_U64,
	CAL_DTYPE_COUNT
};

/* Size in bytes of one element. */
size_t cal_dtype_size(enum cal_dtype t);
/* Safetensors name ("BF16", "F8_E4M3", ...). */
const char *cal_dtype_name(enum cal_dtype t);
/* Parses a safetensors name; returns 0 and sets *ret, or -1 if unknown. */
int cal_dtype_from_name(const char *name, enum cal_dtype *ret);
/* True for the floating-point types (F8_*, F16, BF16, F32, F64). */
int cal_dtype_is_float(enum cal_dtype t);

#endif
