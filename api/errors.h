/*
 * errors.h — the API error table (errors.def) and the one error body shape:
 *   {"error": {"code": "invalid_field", "number": 1031,
 *              "message": "...", "field": "calibration.samples"}}
 */
#ifndef CAL_API_ERRORS_H
#define CAL_API_ERRORS_H

#include <jansson.h>

enum cal_api_err {
	CAL_API_OK = 0,
#define CAL_API_ERR(e, num, http, code, msg) CAL_API_ERR_##e = num,
#include "errors.def"
#undef CAL_API_ERR
};

/* A client-visible failure: which error, which field (or NULL), and a
 * message naming the offending value.  field/message are heap (owned). */
struct cal_api_problem {
	enum cal_api_err err;
	char *field;
	char *message;
};

/* Records a problem (printf-style message; NULL fmt: the default message).
 * Keeps the first problem when one is already set.  Returns e. */
enum cal_api_err cal_api_problem_set(struct cal_api_problem *p, enum cal_api_err e,
				     const char *field, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

void cal_api_problem_clear(struct cal_api_problem *p);

/* HTTP status, stable code string, default message of e (INTERNAL's for an
 * unknown value).  Never NULL. */
unsigned cal_api_err_http(enum cal_api_err e);
const char *cal_api_err_code(enum cal_api_err e);
const char *cal_api_err_default(enum cal_api_err e);

/* Number of entries in the table and the i-th entry's enum value. */
unsigned cal_api_err_count(void);
enum cal_api_err cal_api_err_at(unsigned i);

/* The error body for p (new reference). */
json_t *cal_api_problem_json(const struct cal_api_problem *p);

#endif
