/*
 * main.c — the `calibd` binary: dispatches to one subcommand per
 * commands.def entry.  Each handler owns its own option parsing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/parse.h"

struct cal_cmd {
	const char *name;
	const char *desc;
	int (*fn)(int argc, char **argv);
};

static const struct cal_cmd commands[] = {
#define CAL_CMD(name, desc) {#name, desc, cal_cmd_##name},
#include "commands.def"
#undef CAL_CMD
};

int cal_cli_parse_u64(const char *s, uint64_t *ret)
{
	return cal_parse_size("value", s, 0, UINT64_MAX, ret, NULL) < 0 ? -1 : 0;
}

static void usage(FILE *out)
{
	fprintf(out, "usage: calibd COMMAND [ARGS...]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].desc);
	fprintf(out, "\n`calibd COMMAND --help` describes one command.\n");
}

int cal_cmd_version(int argc, char **argv)
{
	if (argc > 1) {
		fprintf(stderr, "calibd version: unexpected argument '%s'\nusage: calibd version\n", argv[1]);
		return CAL_EXIT_USAGE;
	}
	printf("calibd %s\n", CAL_VERSION);
#ifdef CAL_HAVE_CUDA
	printf("back ends: cpu cuda\n");
#else
	printf("back ends: cpu\n");
#endif
#ifdef CAL_HAVE_NCCL
	printf("nccl: yes\n");
#else
	printf("nccl: no\n");
#endif
	return CAL_EXIT_OK;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return cal_cli_usage(usage, '?');
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))
		return cal_cli_usage(usage, 'h');
	if (!strcmp(argv[1], "--version"))
		return cal_cmd_version(0, NULL);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	}
	fprintf(stderr, "calibd: unknown command '%s'\n", argv[1]);
	return cal_cli_usage(usage, '?');
}
