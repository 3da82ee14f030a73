/*
 * status.h — the error contract shared by every layer of calibd.
 *
 * Every fallible function returns an enum cal_status (CAL_OK == 0, errors are
 * negative) and, when the caller passes a non-NULL struct cal_error, a
 * human-readable message that names the offending thing (file, tensor, key,
 * rule).  The message is heap-allocated and owned by the struct cal_error;
 * cal_error_clear() frees it.  A second cal_error_set() on an error that is
 * already set keeps the first (innermost) message unless cal_error_wrap() is
 * used to add context in front of it.
 */
#ifndef CAL_STATUS_H
#define CAL_STATUS_H

#include <stdarg.h>

/* CAL_OK, and the errors of status.def: CAL_ERR_NOMEM, CAL_ERR_IO, ... */
enum cal_status {
	CAL_OK = 0,
#define CAL_STATUS(name, value, phrase, code, exit) CAL_ERR_##name = (value),
#include "status.def"
#undef CAL_STATUS
};

/* Short human-readable phrase for a status ("ok", "malformed input", ...).
 * Never NULL.  Machine-readable codes live with the API (api/errors.def). */
const char *cal_status_str(enum cal_status s);

struct cal_error {
	enum cal_status code;
	char *msg; /* owned; NULL when no error has been set */
};

/*
 * Records an error (printf-style message).  Accepts err == NULL (then only
 * the code is returned).  If err already holds a message it is kept: the
 * innermost failure explains best.  Returns code so callers can write
 * `return cal_error_set(err, CAL_ERR_FORMAT, "...")`.
 */
enum cal_status cal_error_set(struct cal_error *err, enum cal_status code,
			      const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefixes context to an existing message ("ctx: old message"). */
enum cal_status cal_error_wrap(struct cal_error *err, enum cal_status code,
			       const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Message of err, or the status string when no message was set. */
const char *cal_error_msg(const struct cal_error *err);

/* Frees the message and resets err to CAL_OK.  err may be NULL. */
void cal_error_clear(struct cal_error *err);

/*
 * Check helpers (NCCL's NCCLCHECKGOTO(call, res, label) is the model): the
 * call site names the status variable and the cleanup label.
 *   CAL_TRY_GOTO(expr, st, label)  st = expr; an error jumps to label
 *   CAL_TRY(expr)                  CAL_TRY_GOTO(expr, st, fail), the
 *                                  convention of most functions
 *   CAL_TRY_RET(expr)              an error of expr is returned at once
 *                                  (functions with nothing to clean up)
 */
#define CAL_TRY_GOTO(expr, st, label)                                          \
	do {                                                                   \
		(st) = (expr);                                                 \
		if ((st) < 0)                                                  \
			goto label;                                            \
	} while (0)

#define CAL_TRY(expr) CAL_TRY_GOTO(expr, st, fail)

#define CAL_TRY_RET(expr)                                                      \
	do {                                                                   \
		enum cal_status st_ret_ = (expr);                              \
		if (st_ret_ < 0)                                               \
			return st_ret_;                                        \
	} while (0)

#endif
