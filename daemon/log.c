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

void cal_log(enum cal_log_level lvl, const char *event, ...)
{
	if ((int)lvl < atomic_load(&log_min))
		return;
	char ts[40];
	timestamp(ts);
	char *line = NULL;
	size_t len = 0;
	va_list ap;
	va_start(ap, event);
	if (atomic_load(&log_json)) {
		json_t *o = json_object();
		json_object_set_new(o, "ts", json_string(ts));
		json_object_set_new(o, "level", json_string(level_names[lvl]));
		json_object_set_new(o, "event", json_string(event));
		for (const char *k; (k = va_arg(ap, const char *));) {
			const char *v = va_arg(ap, const char *);
			json_object_set_new(o, k, v ? json_string(v) : json_null());
		}
		char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
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
			for (const char *k; (k = va_arg(ap, const char *));) {
				const char *v = va_arg(ap, const char *);
				fprintf(f, " %s=", k);
				text_value(f, v);
			}
			fputc('\n', f);
			fclose(f);
		}
	}
	va_end(ap);
	if (line) {
		ssize_t r = write(STDERR_FILENO, line, len);
		(void)r;
	}
	free(line);
}
