/*
 * jsonscan.c — see jsonscan.h.
 */
#include "jsonscan.h"

enum cal_status cal_json_prescan(const char *what, const char *text, size_t len,
				 const struct cal_json_limits *lim, int *why, struct cal_error *err)
{
	unsigned depth = 0;
	size_t values = 0;
	int in_str = 0, esc = 0, any = 0;
	if (why)
		*why = 0;
	for (size_t i = 0; i < len; i++) {
		char c = text[i];
		if (in_str) {
			if (esc)
				esc = 0;
			else if (c == '\\')
				esc = 1;
			else if (c == '"')
				in_str = 0;
			continue;
		}
		if (c == '"') {
			in_str = 1;
		} else if (c == '[' || c == '{') {
			values++;
			if (++depth > lim->max_depth) {
				if (why)
					*why = 1;
				return cal_error_set(err, CAL_ERR_RANGE, "%s: nested deeper than %u levels (byte %zu)",
						     what, lim->max_depth, i);
			}
		} else if (c == ']' || c == '}') {
			if (depth)
				depth--;
		} else if (c == ',') {
			values++;
		}
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			any = 1;
		if (values + any > lim->max_values) {
			if (why)
				*why = 2;
			return cal_error_set(err, CAL_ERR_RANGE, "%s: more than %zu values (byte %zu)", what,
					     lim->max_values, i);
		}
	}
	return CAL_OK;
}
