/*
 * log.h — structured logging for the daemon: one line per event on stderr,
 * either text (`ts level event key="value" ...`) or JSON objects.
 * Secrets (bearer tokens) are never passed to these functions.
 */
#ifndef CAL_LOG_H
#define CAL_LOG_H

#include <jansson.h>

enum cal_log_level { CAL_LOG_DEBUG, CAL_LOG_INFO, CAL_LOG_WARN, CAL_LOG_ERROR };

/* Selects JSON (json != 0) or text lines.  Thread-safe. */
void cal_log_set_json(int json);

/* Minimum level printed (default CAL_LOG_INFO). */
void cal_log_set_level(enum cal_log_level lvl);

/*
 * Logs `event` with key/value string pairs, terminated by a NULL key:
 *   cal_log(CAL_LOG_INFO, "job_started", "job", id, "pid", pidstr, NULL);
 * A NULL value prints as null.  Lines are written with one write(2) each.
 */
void cal_log(enum cal_log_level lvl, const char *event, ...) __attribute__((sentinel));

/*
 * Logs `event` with the members of `fields` (a JSON object, reference
 * stolen; NULL: none) in their order: numbers stay numbers in JSON lines
 * and print bare in text lines.
 *   cal_logj(CAL_LOG_INFO, "job_started", json_pack("{s:s, s:i}", "job", id, "pid", pid));
 */
void cal_logj(enum cal_log_level lvl, const char *event, json_t *fields);

/* 1 when lines of level lvl are printed. */
int cal_log_enabled(enum cal_log_level lvl);

#endif
