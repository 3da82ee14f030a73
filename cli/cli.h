/*
 * cli.h — declarations of the subcommand handlers.  The process exit codes
 * every subcommand uses are in common/exit.h (documented in README.md).
 */
#ifndef CAL_CLI_H
#define CAL_CLI_H

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

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

/* Room for one command's long options, --help and the terminator. */
#define CAL_CLI_MAX_OPTS 32

/*
 * Fills lo with the long options named in names (space-separated keys of
 * cli_util.c's table, the one list of every option of the one-shot
 * commands with its letter), then --help ('h') and the terminator; returns
 * lo.  An unknown key or more options than fit is a programming error:
 * it aborts.
 */
/* Option groups: the calibration run's (calibrate, quantize); the
 * engine's memory and threads (calibrate, eval, bench calibrate). */
#define CAL_CLI_CALIB_OPTIONS                                                                     \
	"model recipe calib calib-tokens samples seq-len seed device "                            \
	"per-expert-input-amax moe-calib-experts-ratio ranks quiet datasets-file "
#define CAL_CLI_RESOURCE_OPTIONS "max-gpu-mem micro-batch threads "
const struct option *cal_cli_options(const char *names, struct option lo[CAL_CLI_MAX_OPTS]);
/* cal_cli_options into an array that lives as long as the calling block. */
#define CAL_CLI_OPTIONS(names) cal_cli_options(names, (struct option[CAL_CLI_MAX_OPTS]){{0}})

/* An option a command's parse stores without code of its own, by its key
 * in cli_util.c's table: CAL_CLI_STR keeps its argument in *str,
 * CAL_CLI_NEED too and the command needs it, CAL_CLI_FLAG sets *flag to 1,
 * CAL_CLI_JOB_NUMBERS(o) stores the engine's numbers (samples, seq-len,
 * seed, max-gpu-mem, micro-batch, threads, ranks) into *o with
 * cal_cli_job_number.  An entry whose option the command does not take is
 * never used. */
struct cal_cli_set {
	const char *key;
	const char **str;
	int *flag;
	struct cal_job_opts *job;
	int need;
};
#define CAL_CLI_STR(key, p) {key, p, NULL, NULL, 0}
#define CAL_CLI_NEED(key, p) {key, p, NULL, NULL, 1}
#define CAL_CLI_FLAG(key, p) {key, NULL, p, NULL, 0}
#define CAL_CLI_JOB_(key, o) {key, NULL, NULL, o, 0}
#define CAL_CLI_JOB_NUMBERS(o)                                                               \
	CAL_CLI_JOB_("samples", o), CAL_CLI_JOB_("seq-len", o), CAL_CLI_JOB_("seed", o),       \
		CAL_CLI_JOB_("max-gpu-mem", o), CAL_CLI_JOB_("micro-batch", o),                \
		CAL_CLI_JOB_("threads", o), CAL_CLI_JOB_("ranks", o)
/* The set of a command, terminated, as an array that lives as long as the
 * calling block. */
#define CAL_CLI_SETS(...) ((const struct cal_cli_set[]){__VA_ARGS__, {NULL, NULL, NULL, NULL, 0}})

/* One command's option parse: getopt_long over argv with short options
 * shorts ("h" where the command takes long ones only) and lo
 * (CAL_CLI_OPTIONS), the options of set (CAL_CLI_SETS; NULL for none)
 * stored on the way; cmd names the command in messages.  li is the lo
 * index of the long option last returned; started is 0 until the first
 * cal_cli_next. */
struct cal_cli_args {
	const char *cmd;
	int argc;
	char **argv;
	const char *shorts;
	const struct option *lo;
	const struct cal_cli_set *set;
	int li, started;
};
/* The cal_cli_args of command cmd's argc, argv with short options shorts,
 * long ones the keys names (CAL_CLI_OPTIONS) and set (CAL_CLI_SETS). */
#define CAL_CLI_ARGS(cmd, argc, argv, shorts, names, set) \
	{cmd, argc, argv, shorts, CAL_CLI_OPTIONS(names), set, 0, 0}

/* What cal_cli_next returns for a bad value of an option its set stores
 * (the message printed): the command ends with CAL_EXIT_USAGE, no usage
 * (cal_cli_usage). */
#define CAL_CLI_BAD 0

/* The next option that a's set does not store: its letter ('h' for --help,
 * '?' for an unknown option or a missing argument, and at the end when a
 * CAL_CLI_NEED option was not given), CAL_CLI_BAD, or -1 at the end of the
 * options (optind then indexes the first operand).  The first call
 * restarts getopt (optind 1). */
int cal_cli_next(struct cal_cli_args *a);

/* What cal_cli_parse returns when the command goes on. */
#define CAL_CLI_PARSED (-1)
/* The whole parse of a command whose options are all in a's set, with
 * `operands` operands after them: CAL_CLI_PARSED, or the exit code of
 * cal_cli_usage(usage, ...) for --help, a usage error or another count of
 * operands. */
int cal_cli_parse(struct cal_cli_args *a, void (*usage)(FILE *), int operands);
/* cal_cli_parse, returning its exit code from the calling function unless
 * the command goes on (as common/status.h's CAL_TRY_RET). */
#define CAL_CLI_PARSE_RET(a, usage, operands)                                  \
	do {                                                                   \
		int rc_parse_ = cal_cli_parse(a, usage, operands);             \
		if (rc_parse_ != CAL_CLI_PARSED)                               \
			return rc_parse_;                                      \
	} while (0)

/* How a command ends on --help or a usage error: c 'h' prints usage on
 * stdout and returns CAL_EXIT_OK; CAL_CLI_BAD (reported already) returns
 * CAL_EXIT_USAGE; anything else (getopt_long's '?', a caller's '?' for bad
 * arguments) prints usage on stderr and returns CAL_EXIT_USAGE. */
int cal_cli_usage(void (*usage)(FILE *), int c);

/* --kv-cache-qformat NAME of calibrate, export, plan and quantize: hf_ptq's
 * --kv_cache_qformat name, stored in cal_job_opts.kv_cache_qformat, whose
 * KV-cache unit cal_job_open appends over the recipe's (engine/recipe/
 * qformat.h, docs/recipes.md "KV-cache formats").  Its line of the usage
 * synopsis, and its paragraph of the help, which names the choices from
 * qformat.c's table (cli_util.c). */
#define CAL_CLI_KV_QFORMAT_SYNOPSIS "[--kv-cache-qformat NAME]"
void cal_cli_kv_qformat_help(FILE *o);

/* Prints "calibd CMD: <err's message>" on stderr, clears err and returns
 * exit_code (cli_util.c). */
int cal_cli_fail(const char *cmd, struct cal_error *err, int exit_code);

/* How a command ends: cal_cli_fail when st < 0, err cleared either way;
 * returns the exit code of st. */
int cal_cli_finish(const char *cmd, enum cal_status st, struct cal_error *err);

/* The CLI's --device (common/device.h; NULL as there) into *ret:
 * CAL_EXIT_OK, or CAL_EXIT_USAGE with "calibd CMD: --device: ..." printed. */
int cal_cli_devices(const char *cmd, const char *device, struct cal_devices *ret);

/* Of two options that exclude each other, whose values are a (option
 * --a_name) and b: 1 when exactly one is given; 0 when neither is, or
 * when both are, with "calibd CMD: --A and --B exclude each other"
 * printed. */
int cal_cli_one_of(const char *cmd, const char *a, const char *a_name, const char *b,
		   const char *b_name);

/* --recipe NAME|FILE (*recipe) or --qformat NAME (qformat: hf_ptq's name,
 * engine/recipe/qformat.h), exactly one, of calibrate, export, plan and
 * quantize: CAL_CLI_PARSED with *recipe the recipe to use (a qformat's
 * built-in recipe); CAL_EXIT_USAGE with usage printed on stderr when
 * neither or both are given; or, for a qformat that is unknown or
 * refused, its exit code with "calibd CMD: --qformat: ..." printed. */
int cal_cli_recipe_or_qformat(const char *cmd, void (*usage)(FILE *), const char **recipe,
			      const char *qformat);

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
