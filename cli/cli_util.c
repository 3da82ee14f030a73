/*
 * cli_util.c — what the one-shot commands do the same way: report a
 * failure as "calibd CMD: message", parse --device and the numbers of a
 * job, end with the exit code of a status (cli.h; exit codes:
 * common/exit.h).
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common/util.h"
#include "engine/calib.h"

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
