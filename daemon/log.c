/*
 * log.c — structured log lines (text or JSON) on stderr.
 */
#include "log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_json;
static atomic_int log_min = CAL_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void cal_log_set_json(int json)
{
	atomic_store(&log_json, json != 0);
}

void cal_log_set_level(enum cal_log_level lvl)
{
	atomic_store(&log_min, (int)lvl);
}

static void timestamp(char out[40])
{
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, 40 - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* Appends s to the text line, quoting and escaping when needed. */
static void text_value(FILE *f, const char *s)
{
	if (!s) {
		fputs("null", f);
		return;
	}
	int plain = *s != '\0';
	for (const char *p = s; *p; p++)
		if (*p <= ' ' || *p == '"' || *p == '\\' || *p == '=' || (unsigned char)*p >= 0x7f)
			plain = 0;
	if (plain) {
		fputs(s, f);
		return;
	}
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\x%02x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* Appends a JSON value to the text line: numbers, booleans and null bare,
 * strings through text_value, anything else as compact JSON. */
static void text_json(FILE *f, const json_t *v)
{
	if (json_is_string(v)) {
		text_value(f, json_string_value(v));
		return;
	}
	char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(6));
	fputs(s ? s : "null", f);
	free(s);
}

int cal_log_enabled(enum cal_log_level lvl)
{
	return (int)lvl >= atomic_load(&log_min);
}

void cal_logj(enum cal_log_level lvl, const char *event, json_t *fields)
{
	if (!cal_log_enabled(lvl)) {
		json_decref(fields);
		return;
	}
	char ts[40];
	timestamp(ts);
	char *line = NULL;
	size_t len = 0;
	const char *k;
	json_t *v;
	if (atomic_load(&log_json)) {
		json_t *o = json_object();
		json_object_set_new(o, "ts", json_string(ts));
		json_object_set_new(o, "level", json_string(level_names[lvl]));
		json_object_set_new(o, "event", json_string(event));
		json_object_foreach(fields, k, v)
			json_object_set(o, k, v);
		char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(6));
		json_decref(o);
		if (s) {
			len = strlen(s);
			line = malloc(len + 2);
			if (line) {
				memcpy(line, s, len);
				line[len++] = '\n';
			}
			free(s);
		}
	} else {
		FILE *f = open_memstream(&line, &len);
		if (f) {
			fprintf(f, "%s %s %s", ts, level_names[lvl], event);
			json_object_foreach(fields, k, v) {
				fprintf(f, " %s=", k);
				text_json(f, v);
			}
			fputc('\n', f);
			fclose(f);
		}
	}
	json_decref(fields);
	if (line) {
		ssize_t r = write(STDERR_FILENO, line, len);
		(void)r;
	}
	free(line);
}

void cal_log(enum cal_log_level lvl, const char *event, ...)
{
	if (!cal_log_enabled(lvl))
		return;
	json_t *o = json_object();
	va_list ap;
	va_start(ap, event);
	for (const char *k; (k = va_arg(ap, const char *));) {
		const char *v = va_arg(ap, const char *);
		json_t *s = v ? json_string(v) : json_null();
		if (v && !s) {
			/* not UTF-8 (a path): kept, its other bytes as '?' */
			char *c = strdup(v);
			for (char *p = c; p && *p; p++)
				if ((unsigned char)*p >= 0x80)
					*p = '?';
			s = json_string(c ? c : "?");
			free(c);
		}
		json_object_set_new(o, k, s);
	}
	va_end(ap);
	cal_logj(lvl, event, o);
}
