/*
 * cli_util.c — what the one-shot commands do the same way: parse their
 * options (storing the plain ones), report a failure as "calibd CMD:
 * message", parse --device and the numbers of a job, end with the exit
 * code of a status (cli.h; exit codes: common/exit.h); and the one table
 * of their long options.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/util.h"
#include "engine/calib.h"
#include "engine/recipe/qformat.h"

/*
 * Every long option of the one-shot commands, once: the key a command
 * names it by, and the option with the letter getopt_long returns for it
 * (the short option too, where a command takes short ones: export, verify,
 * plan, recipes).  A command's options have distinct letters; a long name
 * with two meanings has a key for each (json-file: bench's --json FILE).
 */
#define ARG(key, c) {key, {key, required_argument, NULL, c}}
#define FLAG(key, c) {key, {key, no_argument, NULL, c}}
static const struct {
	const char *key;
	struct option opt;
} cli_options[] = {
	/* shared by several commands */
	ARG("model", 'm'),
	ARG("recipe", 'r'),
	ARG("recipes-dir", 'd'),
	ARG("device", 'D'),
	ARG("out", 'o'),
	FLAG("json", 'j'),
	{"json-file", {"json", required_argument, NULL, 'j'}},
	FLAG("quiet", 'q'),
	ARG("calib", 'C'),
	ARG("calib-tokens", 't'),
	ARG("tokens", 't'),
	ARG("datasets-file", 'F'),
	ARG("samples", 'n'),
	ARG("seq-len", 'S'),
	ARG("seed", 's'),
	ARG("max-gpu-mem", 'M'),
	ARG("micro-batch", 'b'),
	ARG("threads", 'T'),
	ARG("ranks", 'N'),
	FLAG("per-expert-input-amax", 'p'),
	ARG("moe-calib-experts-ratio", 'R'),
	ARG("div", 'v'),
	ARG("max-shard-size", 'z'),
	ARG("kv-cache-qformat", 'K'),
	/* calibrate */
	ARG("stats-out", 'o'),
	FLAG("pad-like-modelopt", 'A'),
	ARG("pad-id", 'P'),
	ARG("combine", 'c'),
	/* eval */
	ARG("quantized", 'Q'),
	ARG("data", 'C'),
	ARG("data-tokens", 't'),
	ARG("logits-out", 'L'),
	ARG("logits-orig-out", 'O'),
	ARG("layer-kl-positions", 'K'),
	/* quantize */
	ARG("qformat", 'Q'),
	ARG("world", 'W'),
	ARG("rank-first", 'f'),
	ARG("rendezvous", 'Z'),
	ARG("nodes", 'O'),
	ARG("node-rank", 'I'),
	ARG("comm-timeout", 'T'),
	ARG("progress-fd", 'P'),
	/* export, verify, report */
	ARG("stats", 's'),
	ARG("shard-bytes", 'b'),
	ARG("source", 's'),
	ARG("html", 'o'),
	ARG("eval", 'e'),
	/* bench */
	ARG("seqs", 'n'),
	ARG("repeat", 'k'),
	FLAG("no-profile", 'P'),
	ARG("mib", 'm'),
	ARG("iters", 'i'),
	ARG("out-parent", 'o'),
	ARG("write-bytes", 'w'),
	FLAG("keep", 'k'),
	FLAG("warm", 'W'),
	FLAG("no-disk", 'N'),
};
#undef ARG
#undef FLAG

/* The index in cli_options of the key of len bytes at key (the count when
 * none). */
static size_t key_index(const char *key, size_t len)
{
	size_t i = 0;
	while (i < CAL_ARRAY_LEN(cli_options) &&
	       (strlen(cli_options[i].key) != len || strncmp(cli_options[i].key, key, len)))
		i++;
	return i;
}

const struct option *cal_cli_options(const char *names, struct option lo[CAL_CLI_MAX_OPTS])
{
	size_t n = 0;
	while (*names) {
		size_t len = strcspn(names, " "), i = key_index(names, len);
		if (i == CAL_ARRAY_LEN(cli_options) || n + 2 >= CAL_CLI_MAX_OPTS) {
			fprintf(stderr, "calibd: option '%.*s' not in the table or too many\n", (int)len, names);
			abort();
		}
		lo[n++] = cli_options[i].opt;
		names += len + strspn(names + len, " ");
	}
	lo[n++] = (struct option){"help", no_argument, NULL, 'h'};
	lo[n] = (struct option){NULL, 0, NULL, 0};
	return lo;
}

/* Whether option c of a command (long options lo) is the table's key. */
static int is_key(const struct option *lo, int c, const char *key)
{
	size_t i = key_index(key, strlen(key));
	if (i == CAL_ARRAY_LEN(cli_options) || cli_options[i].opt.val != c)
		return 0;
	for (; lo->name; lo++)
		if (lo->val == c)
			return !strcmp(lo->name, cli_options[i].opt.name);
	return 0;
}

/* Stores option c's argument as a's set says: 1 when it does, 0 when c is
 * not in the set, -1 for a bad value (reported). */
static int cli_store(const struct cal_cli_args *a, int c)
{
	const struct cal_cli_set *s = a->set;
	while (s && s->key && !is_key(a->lo, c, s->key))
		s++;
	if (!s || !s->key)
		return 0;
	if (s->job)
		return cal_cli_job_number(a->cmd, s->key, optarg, s->job) < 0 ? -1 : 1;
	if (s->str)
		*s->str = optarg;
	else
		*s->flag = 1;
	return 1;
}

int cal_cli_next(struct cal_cli_args *a)
{
	int c, r;
	if (!a->started) {
		optind = 1;
		a->started = 1;
	}
	while ((c = getopt_long(a->argc, a->argv, a->shorts, a->lo, &a->li)) != -1) {
		if ((r = cli_store(a, c)) <= 0)
			return r < 0 ? CAL_CLI_BAD : c;
	}
	for (const struct cal_cli_set *s = a->set; s && s->key; s++)
		if (s->need && !*s->str)
			return '?';
	return -1;
}

int cal_cli_parse(struct cal_cli_args *a, void (*usage)(FILE *), int operands)
{
	int c = cal_cli_next(a);
	if (c != -1 || a->argc - optind != operands)
		return cal_cli_usage(usage, c == -1 ? '?' : c);
	return CAL_CLI_PARSED;
}

int cal_cli_usage(void (*usage)(FILE *), int c)
{
	if (c == CAL_CLI_BAD)
		return CAL_EXIT_USAGE;
	usage(c == 'h' ? stdout : stderr);
	return c == 'h' ? CAL_EXIT_OK : CAL_EXIT_USAGE;
}

void cal_cli_kv_qformat_help(FILE *o)
{
	size_t n;
	const struct cal_kv_qformat *k = cal_kv_qformat_list(&n);
	fprintf(o, "--kv-cache-qformat takes hf_ptq.py's --kv_cache_qformat names:\n ");
	for (size_t i = 0; i < n; i++)
		fprintf(o, " %s%s", k[i].name, i + 1 < n ? "," : "\n");
	fprintf(o, "The name's KV-cache unit is appended to the recipe's entries, so it replaces\n"
		   "the recipe's KV cache (docs/recipes.md \"KV-cache formats\").\n");
}

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

int cal_cli_one_of(const char *cmd, const char *a, const char *a_name, const char *b,
		   const char *b_name)
{
	if (a && b)
		fprintf(stderr, "calibd %s: --%s and --%s exclude each other\n", cmd, a_name, b_name);
	return !a != !b;
}

int cal_cli_recipe_or_qformat(const char *cmd, void (*usage)(FILE *), const char **recipe,
			      const char *qformat)
{
	if (!cal_cli_one_of(cmd, *recipe, "recipe", qformat, "qformat"))
		return cal_cli_usage(usage, '?');
	if (!qformat)
		return CAL_CLI_PARSED;
	struct cal_error err = {0};
	enum cal_status st = cal_qformat_recipe(qformat, recipe, &err);
	if (st >= 0)
		return CAL_CLI_PARSED;
	fprintf(stderr, "calibd %s: --qformat: %s\n", cmd, cal_error_msg(&err));
	cal_error_clear(&err);
	return cal_exit_from_status(st);
}

/* The numeric options of the commands that run the engine, their ranges. */
enum job_number { JN_SAMPLES, JN_SEQ_LEN, JN_SEED, JN_MAX_GPU_MEM, JN_MICRO_BATCH, JN_THREADS, JN_RANKS };
static const struct {
	const char *name;
	uint64_t min, max;
} job_numbers[] = {
	[JN_SAMPLES] = {"samples", 1, CAL_CALIB_MAX_SEQS},
	[JN_SEQ_LEN] = {"seq-len", 1, CAL_CALIB_MAX_SEQ_LEN},
	[JN_SEED] = {"seed", 0, UINT64_MAX},
	[JN_MAX_GPU_MEM] = {"max-gpu-mem", 0, UINT64_MAX},
	[JN_MICRO_BATCH] = {"micro-batch", 0, UINT64_MAX},
	[JN_THREADS] = {"threads", 0, 256},
	[JN_RANKS] = {"ranks", 1, CAL_CALIB_MAX_RANKS},
};

int cal_cli_job_number(const char *cmd, const char *name, const char *s, struct cal_job_opts *o)
{
	size_t i = 0;
	uint64_t v;
	while (i < CAL_ARRAY_LEN(job_numbers) && strcmp(job_numbers[i].name, name))
		i++;
	if (i == CAL_ARRAY_LEN(job_numbers) || cal_cli_parse_u64(s, &v) < 0 ||
	    v < job_numbers[i].min || v > job_numbers[i].max) {
		fprintf(stderr, "calibd %s: bad value '%s' for --%s\n", cmd, s, name);
		return -1;
	}
	switch ((enum job_number)i) {
	case JN_SAMPLES: o->samples = (size_t)v; break;
	case JN_SEQ_LEN: o->seq_len = (size_t)v; break;
	case JN_SEED: o->seed = v; break;
	case JN_MAX_GPU_MEM: o->max_mem = v; break;
	case JN_MICRO_BATCH: o->micro_batch_tokens = v; break;
	case JN_THREADS: o->cpu_threads = (unsigned)v; break;
	case JN_RANKS: o->ranks.local = (unsigned)v; break;
	}
	return 0;
}
