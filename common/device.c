/*
 * device.c — device strings (common/device.h).
 */
#include "common/device.h"

#include <stdio.h>
#include <string.h>

#define EXPECT_DEVICE "expected cpu, cuda, cuda:INDEX or cuda:I,J,..."
#define EXPECT_IDS "expected GPU ordinals I,J,..."

static enum cal_status bad(const char *s, const char *why, const char *expected,
			   struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_INVALID, "device '%s': %s (%s)", s, why, expected);
}

/* The ordinals "I[,J...]" at list into d (appended); s and expected for
 * the message. */
static enum cal_status parse_ids(const char *s, const char *list, const char *expected,
				 struct cal_devices *d, struct cal_error *err)
{
	for (const char *p = list;; p++) {
		long v = 0;
		const char *q = p;
		while (*q >= '0' && *q <= '9' && v <= CAL_DEVICE_ID_MAX)
			v = v * 10 + (*q++ - '0');
		if (q == p || (*q && *q != ','))
			return bad(s, "a GPU index is not a decimal number", expected, err);
		if (v > CAL_DEVICE_ID_MAX)
			return bad(s, "a GPU index is over 1023", expected, err);
		if (d->n == CAL_DEVICES_MAX)
			return bad(s, "more than 64 GPUs", expected, err);
		for (size_t i = 0; i < d->n; i++)
			if (d->ids[i] == (int)v)
				return bad(s, "a GPU is listed twice", expected, err);
		d->ids[d->n++] = (int)v;
		p = q;
		if (!*q)
			return CAL_OK;
	}
}

enum cal_status cal_devices_parse(const char *s, struct cal_devices *ret, struct cal_error *err)
{
	struct cal_devices d = {CAL_DEVICE_AUTO, 0, {0}};
	enum cal_status st;
	*ret = d;
	if (!s || !*s || !strcmp(s, "auto"))
		return CAL_OK;
	if (!strcmp(s, "cpu")) {
		ret->kind = CAL_DEVICE_CPU;
		return CAL_OK;
	}
	if (strncmp(s, "cuda", 4) || (s[4] && s[4] != ':'))
		return bad(s, "unknown device", EXPECT_DEVICE, err);
	d.kind = CAL_DEVICE_CUDA;
	if (!s[4]) {
		d.n = 1;
		*ret = d;
		return CAL_OK;
	}
	if ((st = parse_ids(s, s + 5, EXPECT_DEVICE, &d, err)) < 0)
		return st;
	*ret = d;
	return CAL_OK;
}

enum cal_status cal_device_ids_parse(const char *list, struct cal_devices *ret,
				     struct cal_error *err)
{
	struct cal_devices d = {CAL_DEVICE_CUDA, 0, {0}};
	enum cal_status st = parse_ids(list, list, EXPECT_IDS, &d, err);
	if (st < 0)
		return st;
	*ret = d;
	return CAL_OK;
}

char *cal_devices_format(const struct cal_devices *d, char *buf, size_t n)
{
	size_t off;
	if (!n)
		return buf;
	if (d->kind != CAL_DEVICE_CUDA) {
		snprintf(buf, n, "%s", d->kind == CAL_DEVICE_CPU ? "cpu" : "auto");
		return buf;
	}
	off = (size_t)snprintf(buf, n, "cuda:%d", d->n ? d->ids[0] : 0);
	for (size_t i = 1; i < d->n && off < n; i++)
		off += (size_t)snprintf(buf + off, n - off, ",%d", d->ids[i]);
	return buf;
}
