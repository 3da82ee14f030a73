/*
 * cli.h — declarations of the subcommand handlers and the process exit codes
 * every subcommand uses (documented in README.md and docs/cli.md).
 */
#ifndef CAL_CLI_H
#define CAL_CLI_H

#include <stdint.h>

#include "common/status.h"

enum cal_exit {
	CAL_EXIT_OK = 0,
	CAL_EXIT_FAILURE = 1,      /* generic / internal failure */
	CAL_EXIT_USAGE = 2,        /* bad command line */
	CAL_EXIT_BAD_INPUT = 3,    /* bad model, recipe, data or path */
	CAL_EXIT_NOSPACE = 4,      /* out of disk space */
	CAL_EXIT_DEVICE = 5,       /* GPU failure */
	CAL_EXIT_INTERRUPTED = 6,  /* interrupted or cancelled */
	CAL_EXIT_UNREACHABLE = 7,  /* daemon unreachable or 5xx (client commands) */
};

/* Maps an error status to the exit code scripts see. */
int cal_exit_from_status(enum cal_status st);
/* `calibd bench quantize` (bench_quantize.c). */
int cal_bench_quantize(int argc, char **argv);

/* An unsigned decimal number with an optional K, M or G suffix (memory
 * sizes; common/parse.h's sizes); 0, or -1 for anything else.  The caller
 * names the option in its message. */
int cal_cli_parse_u64(const char *s, uint64_t *ret);

#define CAL_CMD(name, desc) int cal_cmd_##name(int argc, char **argv);
#include "commands.def"
#undef CAL_CMD

#endif
