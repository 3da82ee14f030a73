/*
 * cli.h — declarations of the subcommand handlers.  The process exit codes
 * every subcommand uses are in common/exit.h (documented in README.md).
 */
#ifndef CAL_CLI_H
#define CAL_CLI_H

#include <stdint.h>

#include "common/exit.h"
#include "common/status.h"

/* `calibd bench quantize` (bench_quantize.c). */
int cal_bench_quantize(int argc, char **argv);

/* An unsigned decimal / 0x number with an optional K, M or G suffix
 * (memory sizes); 0, or -1 for anything else. */
int cal_cli_parse_u64(const char *s, uint64_t *ret);

#define CAL_CMD(name, desc) int cal_cmd_##name(int argc, char **argv);
#include "commands.def"
#undef CAL_CMD

#endif
