/*
 * device.h — the one parser of device strings ("cpu", "cuda", "cuda:0",
 * "cuda:0,1", "auto"), shared by the commands (--device), the worker and
 * the API (a job's "devices" given as a string).  No CUDA here: "auto" is
 * resolved by whoever opens a back end (engine/job.c).  docs/engine.md.
 */
#ifndef CAL_DEVICE_H
#define CAL_DEVICE_H

#include <stddef.h>

#include "common/status.h"

#define CAL_DEVICES_MAX 64
#define CAL_DEVICE_ID_MAX 1023

enum cal_device_kind {
	CAL_DEVICE_AUTO = 0,   /* CUDA when a GPU is present, else the CPU */
	CAL_DEVICE_CPU,
	CAL_DEVICE_CUDA,
};

/* Parsed devices.  CUDA: n >= 1 distinct ordinals, ids[0] the one the
 * engine runs on ("cuda" alone is ordinal 0).  CPU and AUTO: n == 0. */
struct cal_devices {
	enum cal_device_kind kind;
	size_t n;
	int ids[CAL_DEVICES_MAX];
};

/*
 * Parses s: NULL, "" or "auto"; "cpu"; "cuda"; "cuda:I[,J...]" with
 * decimal ordinals in [0, CAL_DEVICE_ID_MAX], at most CAL_DEVICES_MAX,
 * none repeated.  Errors: CAL_ERR_INVALID naming the string and what was
 * expected.
 */
enum cal_status cal_devices_parse(const char *s, struct cal_devices *ret, struct cal_error *err);

/*
 * Parses a bare list of GPU ordinals "I[,J...]" (what follows "cuda:"; the
 * daemon's configured GPU list) with the rules of cal_devices_parse; ret
 * gets kind CUDA.  Errors: CAL_ERR_INVALID naming the list.
 */
enum cal_status cal_device_ids_parse(const char *list, struct cal_devices *ret,
				     struct cal_error *err);

/* The canonical string of d ("auto", "cpu", "cuda:0", "cuda:0,1") into buf
 * (truncated to n - 1 bytes).  Returns buf. */
char *cal_devices_format(const struct cal_devices *d, char *buf, size_t n);

#endif
