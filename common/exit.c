/*
 * exit.c — error statuses, the codes jobs report them under, and exit codes
 * (exit.h): one table.
 */
#include "exit.h"

#include <string.h>

#include "common/util.h"

/* every error status (status.def): the code a worker reports it under, and
 * the exit code */
static const struct {
	enum cal_status st;
	const char *code;
	int exit;
} status_codes[] = {
#define CAL_STATUS(name, value, phrase, code, exit) {CAL_ERR_##name, code, exit},
#include "status.def"
#undef CAL_STATUS
};

const char *cal_status_code(enum cal_status st)
{
	for (size_t i = 0; i < CAL_ARRAY_LEN(status_codes); i++)
		if (status_codes[i].st == st)
			return status_codes[i].code;
	return st == CAL_OK ? "ok" : "internal";
}

int cal_exit_from_job_error(const char *code)
{
	if (!code)
		return CAL_EXIT_FAILURE;
	for (size_t i = 0; i < CAL_ARRAY_LEN(status_codes); i++)
		if (!strcmp(status_codes[i].code, code))
			return status_codes[i].exit;
	/* failures of the worker process, not of the input: worth a retry */
	static const char *const retriable[] = {"worker_crashed", "progress_timeout", "daemon_restarted",
						"daemon_shutdown", "spawn_failed"};
	for (size_t i = 0; i < CAL_ARRAY_LEN(retriable); i++)
		if (!strcmp(retriable[i], code))
			return CAL_EXIT_DEVICE;
	if (!strcmp(code, "cancelled") || !strcmp(code, "job_timeout"))
		return CAL_EXIT_INTERRUPTED;
	if (!strcmp(code, "devices_unavailable"))
		return CAL_EXIT_BAD_INPUT;
	return CAL_EXIT_FAILURE;
}

int cal_exit_from_status(enum cal_status st)
{
	if (st == CAL_OK)
		return CAL_EXIT_OK;
	for (size_t i = 0; i < CAL_ARRAY_LEN(status_codes); i++)
		if (status_codes[i].st == st)
			return status_codes[i].exit;
	return CAL_EXIT_FAILURE;
}
