/*
 * exit.h — the process exit codes of every calibd command, the worker
 * included (the supervisor reads a worker's code), documented in README.md.
 */
#ifndef CAL_EXIT_H
#define CAL_EXIT_H

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

/* Stable lower-case code of a status ("format", "nospace", ...): what a
 * worker reports as the job's error code. */
const char *cal_status_code(enum cal_status st);

/* Exit code for a job that ended with error code `code`. */
int cal_exit_from_job_error(const char *code);

#endif
