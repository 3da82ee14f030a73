/*
 * cli.h — declarations of the subcommand handlers.  The process exit codes
 * every subcommand uses are in common/exit.h (documented in README.md).
 */
#ifndef CAL_CLI_H
#define CAL_CLI_H

#include <stdint.h>

#include "common/device.h"
#include "common/exit.h"
#include "common/status.h"
#include "engine/job.h"

/* `calibd bench quantize` (bench_quantize.c). */
int cal_bench_quantize(int argc, char **argv);

/* An unsigned decimal number with an optional K, M or G suffix (memory
 * sizes; common/parse.h's sizes); 0, or -1 for anything else.  The caller
 * names the option in its message. */
int cal_cli_parse_u64(const char *s, uint64_t *ret);

/* Prints "calibd CMD: <err's message>" on stderr, clears err and returns
 * exit_code (cli_util.c). */
int cal_cli_fail(const char *cmd, struct cal_error *err, int exit_code);

/* How a command ends: cal_cli_fail when st < 0, err cleared either way;
 * returns the exit code of st. */
int cal_cli_finish(const char *cmd, enum cal_status st, struct cal_error *err);

/* The CLI's --device (common/device.h; NULL as there) into *ret:
 * CAL_EXIT_OK, or CAL_EXIT_USAGE with "calibd CMD: --device: ..." printed. */
int cal_cli_devices(const char *cmd, const char *device, struct cal_devices *ret);

/* The number s of the engine's option --name (samples, seq-len, seed,
 * max-gpu-mem, micro-batch, threads, ranks; common/parse.h's sizes) into
 * its field of o, range-checked: 0, or -1 with "calibd CMD: bad value 'S'
 * for --NAME" printed. */
int cal_cli_job_number(const char *cmd, const char *name, const char *s, struct cal_job_opts *o);

/* What a command that runs the engine on calibration data owns besides
 * the job (job_data.c); cal_cli_data_free() releases it. */
struct cal_cli_data {
	char *calib_owned;          /* the data list, dataset names expanded */
	struct cal_job_dataset *ds; /* what o->datasets points at */
};

/*
 * --device `device` into o->devices and the data list `calib` (--calib or
 * --data; NULL when the command reads a token file) into o->datasets,
 * dataset names expanded through datasets_file or $CALIBD_DATASETS_FILE
 * (daemon/config.h cal_config_calib_arg).  A bad --device or catalog is
 * printed as "calibd CMD: ..." and its exit code returned; otherwise
 * returns CAL_EXIT_OK with *ret_st the status of parsing the list (its
 * error in err, for the command to report with its others).
 */
int cal_cli_job_data(const char *cmd, const char *device, const char *calib, const char *datasets_file,
		     struct cal_job_opts *o, struct cal_cli_data *d, enum cal_status *ret_st,
		     struct cal_error *err);
void cal_cli_data_free(struct cal_cli_data *d, const struct cal_job_opts *o);

#define CAL_CMD(name, desc) int cal_cmd_##name(int argc, char **argv);
#include "commands.def"
#undef CAL_CMD

#endif
