/*
 * errors.c — lookups in the error table and the error body.
 */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

struct entry {
	enum cal_api_err e;
	unsigned http;
	const char *code, *msg;
};

static const struct entry table[] = {
#define CAL_API_ERR(en, num, http, code, msg) {CAL_API_ERR_##en, http, code, msg},
#include "errors.def"
#undef CAL_API_ERR
};

static const struct entry *find(enum cal_api_err e)
{
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (table[i].e == e)
			return &table[i];
	return &table[0];
}

unsigned cal_api_err_http(enum cal_api_err e) { return find(e)->http; }
const char *cal_api_err_code(enum cal_api_err e) { return find(e)->code; }
const char *cal_api_err_default(enum cal_api_err e) { return find(e)->msg; }
unsigned cal_api_err_count(void) { return sizeof(table) / sizeof(table[0]); }

enum cal_api_err cal_api_err_at(unsigned i)
{
	return i < cal_api_err_count() ? table[i].e : CAL_API_ERR_INTERNAL;
}

enum cal_api_err cal_api_problem_set(struct cal_api_problem *p, enum cal_api_err e,
				     const char *field, const char *fmt, ...)
{
	if (!p || p->err != CAL_API_OK)
		return e;
	p->err = e;
	p->field = field ? strdup(field) : NULL;
	if (fmt && CAL_VASPRINTF(&p->message, fmt) < 0)
		p->message = NULL;
	return e;
}

void cal_api_problem_clear(struct cal_api_problem *p)
{
	if (!p)
		return;
	CAL_FREE_ALL(p->field, p->message);
	*p = (struct cal_api_problem){ .err = CAL_API_OK };
}

json_t *cal_api_problem_json(const struct cal_api_problem *p)
{
	enum cal_api_err e = p->err ? p->err : CAL_API_ERR_INTERNAL;
	json_t *inner = json_pack("{s:s, s:i, s:s}", "code", cal_api_err_code(e), "number", (int)e,
				  "message", p->message ? p->message : cal_api_err_default(e));
	if (!inner) /* a message that is not UTF-8: fall back to the default */
		inner = json_pack("{s:s, s:i, s:s}", "code", cal_api_err_code(e), "number", (int)e,
				  "message", cal_api_err_default(e));
	json_t *field = p->field ? json_string(p->field) : NULL;
	if (inner)
		json_object_set_new(inner, "field", field ? field : json_null());
	else
		json_decref(field);
	return json_pack("{s:o}", "error", inner);
}
