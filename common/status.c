/* status.c — status names and heap-allocated error messages. */
#include "status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cal_status_str(enum cal_status s)
{
	switch (s) {
	case CAL_OK: return "ok";
#define CAL_STATUS(name, value, phrase, code, exit) case CAL_ERR_##name: return phrase;
#include "status.def"
#undef CAL_STATUS
	}
	return "unknown status";
}

static char *vformat(const char *fmt, va_list ap)
{
	char *s = NULL;
	if (vasprintf(&s, fmt, ap) < 0)
		return NULL;
	return s;
}

enum cal_status cal_error_set(struct cal_error *err, enum cal_status code,
			      const char *fmt, ...)
{
	if (!err)
		return code;
	if (err->msg) { /* keep the innermost message */
		err->code = code;
		return code;
	}
	va_list ap;
	va_start(ap, fmt);
	err->msg = vformat(fmt, ap);
	va_end(ap);
	err->code = code;
	return code;
}

enum cal_status cal_error_wrap(struct cal_error *err, enum cal_status code,
			       const char *fmt, ...)
{
	if (!err)
		return code;
	va_list ap;
	va_start(ap, fmt);
	char *ctx = vformat(fmt, ap);
	va_end(ap);
	if (!ctx)
		return err->code = code;
	char *joined = NULL;
	if (err->msg) {
		if (asprintf(&joined, "%s: %s", ctx, err->msg) < 0)
			joined = NULL;
		free(ctx);
	} else {
		joined = ctx;
	}
	if (joined) {
		free(err->msg);
		err->msg = joined;
	}
	err->code = code;
	return code;
}

const char *cal_error_msg(const struct cal_error *err)
{
	if (!err)
		return "";
	return err->msg ? err->msg : cal_status_str(err->code);
}

void cal_error_clear(struct cal_error *err)
{
	if (!err)
		return;
	free(err->msg);
	err->msg = NULL;
	err->code = CAL_OK;
}
