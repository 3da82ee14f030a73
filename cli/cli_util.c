/*
 * cli_util.c — what the one-shot commands do the same way: report a
 * failure as "calibd CMD: message", parse --device, end with the exit code
 * of a status (cli.h; exit codes: common/exit.h).
 */
#include <stdio.h>

#include "cli.h"

int cal_cli_fail(const char *cmd, struct cal_error *err, int exit_code)
{
	fprintf(stderr, "calibd %s: %s\n", cmd, cal_error_msg(err));
	cal_error_clear(err);
	return exit_code;
}

int cal_cli_finish(const char *cmd, enum cal_status st, struct cal_error *err)
{
	if (st < 0)
		return cal_cli_fail(cmd, err, cal_exit_from_status(st));
	cal_error_clear(err);
	return cal_exit_from_status(st);
}

int cal_cli_devices(const char *cmd, const char *device, struct cal_devices *ret)
{
	struct cal_error err = {0};
	if (cal_devices_parse(device, ret, &err) >= 0)
		return CAL_EXIT_OK;
	fprintf(stderr, "calibd %s: --device: %s\n", cmd, cal_error_msg(&err));
	cal_error_clear(&err);
	return CAL_EXIT_USAGE;
}
