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

enum cal_status {
	CAL_OK = 0,
	CAL_ERR_NOMEM = -1,       /* allocation failed */
	CAL_ERR_IO = -2,          /* read/write/open failed (errno-level) */
	CAL_ERR_FORMAT = -3,      /* malformed file or data */
	CAL_ERR_INVALID = -4,     /* invalid argument / request / configuration */
	CAL_ERR_UNSUPPORTED = -5, /* valid but not implemented by calibd */
	CAL_ERR_NOSPACE = -6,     /* not enough disk space */
	CAL_ERR_EXISTS = -7,      /* target already exists */
	CAL_ERR_NOTFOUND = -8,    /* a named thing does not exist */
	CAL_ERR_DEVICE = -9,      /* GPU / device failure */
	CAL_ERR_RANGE = -10,      /* a size or value outside its allowed range */
	CAL_ERR_INTERRUPTED = -11,/* cancelled or interrupted by a signal */
	CAL_ERR_NUMERIC = -12,    /* NaN/Inf where a finite value is required */
	CAL_ERR_INTERNAL = -13,   /* a bug in calibd */
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

/* Jump-to-cleanup helpers (NCCL style): `CAL_TRY(expr)` stores the status
 * in `st` and jumps to `fail` when it is an error. */
#define CAL_TRY(expr)                                                          \
	do {                                                                   \
		st = (expr);                                                   \
		if (st < 0)                                                    \
			goto fail;                                             \
	} while (0)

/* `CAL_TRY_RET(expr)` returns the status of expr when it is an error. */
#define CAL_TRY_RET(expr)                                                      \
	do {                                                                   \
		enum cal_status st_ = (expr);                                  \
		if (st_ < 0)                                                   \
			return st_;                                            \
	} while (0)

#endif
