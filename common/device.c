/*
 * device.c — device strings (common/device.h).
 */
#include "common/device.h"

#include <stdio.h>
#include <string.h>

static enum cal_status bad(const char *s, const char *why, struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_INVALID, "device '%s': %s (expected cpu, cuda, "
			     "cuda:INDEX or cuda:I,J,...)", s, why);
}

enum cal_status cal_devices_parse(const char *s, struct cal_devices *ret, struct cal_error *err)
{
	struct cal_devices d = {CAL_DEVICE_AUTO, 0, {0}};
	*ret = d;
	if (!s || !*s || !strcmp(s, "auto"))
		return CAL_OK;
	if (!strcmp(s, "cpu")) {
		ret->kind = CAL_DEVICE_CPU;
		return CAL_OK;
	}
	if (strncmp(s, "cuda", 4) || (s[4] && s[4] != ':'))
		return bad(s, "unknown device", err);
	d.kind = CAL_DEVICE_CUDA;
	if (!s[4]) {
		d.n = 1;
		*ret = d;
		return CAL_OK;
	}
	for (const char *p = s + 5;; p++) {
		long v = 0;
		const char *q = p;
		while (*q >= '0' && *q <= '9' && v <= CAL_DEVICE_ID_MAX)
			v = v * 10 + (*q++ - '0');
		if (q == p || (*q && *q != ','))
			return bad(s, "a GPU index is not a decimal number", err);
		if (v > CAL_DEVICE_ID_MAX)
			return bad(s, "a GPU index is over 1023", err);
		if (d.n == CAL_DEVICES_MAX)
			return bad(s, "more than 64 GPUs", err);
		for (size_t i = 0; i < d.n; i++)
			if (d.ids[i] == (int)v)
				return bad(s, "a GPU is listed twice", err);
		d.ids[d.n++] = (int)v;
		p = q;
		if (!*q)
			break;
	}
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
