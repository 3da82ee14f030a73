/*
 * config.h — the daemon's configuration: one YAML file plus command-line
 * flags (a flag overrides the file).  A loaded configuration is immutable;
 * SIGHUP builds a new one and swaps it in only when it is valid (nginx
 * style).  Readers hold a reference (cal_config_ref / cal_config_unref).
 */
#ifndef CAL_CONFIG_H
#define CAL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define CAL_MAX_DEVICES 64
#define CAL_MAX_BODY_BYTES (1024 * 1024)

struct cal_config {
	int refs;                   /* atomic; see cal_config_ref */
	char *config_path;          /* file it came from, or NULL */
	char *listen;               /* bind address, IPv4 or IPv6 literal */
	int port;                   /* 0: ephemeral */
	char *port_file;            /* where the bound port is written, or NULL */
	char *admin_listen;         /* the admin listener (/livez, /readyz, /metrics) */
	int admin_port;             /* 0: ephemeral; -1: no admin listener */
	char *admin_port_file;      /* where its bound port is written, or NULL */
	char *state_dir;            /* realpath after load */
	char **model_roots, **data_roots, **output_roots; /* realpaths */
	size_t n_model_roots, n_data_roots, n_output_roots;
	char *recipes_dir;          /* recipe tree names resolve in (realpath); NULL: the built-in one */
	int devices[CAL_MAX_DEVICES]; /* GPU ordinals the scheduler may hand out */
	size_t n_devices;
	int max_concurrent_jobs;
	int max_queue;              /* queued jobs beyond which POST answers 503 */
	double progress_timeout_s;  /* worker silent this long: job fails */
	double kill_grace_s;        /* SIGTERM → SIGKILL delay */
	double shutdown_grace_s;    /* SIGTERM of the daemon: how long jobs may finish */
	double job_timeout_s;       /* 0: none */
	int resume_on_restart;      /* running jobs found at start are re-queued */
	char **worker_command;      /* argv prefix; the job dir is appended */
	size_t n_worker_command;
	char *token_file;
	uint8_t (*tokens)[32];      /* SHA-256 digests of the accepted tokens */
	size_t n_tokens;
	int auth_read;              /* tokens required on read routes too */
	int log_json;
	int max_connections, per_ip_connections, connection_timeout_s;
	double request_timeout_s;   /* a request's headers and body must arrive within this */
	double retry_after_s;       /* Retry-After on 503 */
	double idempotency_ttl_s;   /* an Idempotency-Key is honoured this long after its job's creation */
	double job_retention_s;     /* finished jobs (and their directories) are removed after this; 0: never */
	double min_free_percent;    /* new jobs get 507 below this much free space; 0: no check */
	int loopback;               /* listen is a loopback address */
	char **datasets;            /* the dataset catalog: "NAME=PATH" (absolute; api/jobspec.h) */
	size_t n_datasets;
};

/* The dataset catalog (`datasets:`) of a YAML file in the configuration's
 * format (any other key of the configuration may be there too; none needs
 * to): the CLI's --datasets-file.  *ret: "NAME=PATH" strings (heap). */
enum cal_status cal_config_read_datasets(const char *path, char ***ret, size_t *n, struct cal_error *err);

/* A --calib list ("FILE[:N],...") with its catalog references ("NAME[:N]":
 * [A-Za-z0-9_-] names that are no file here) replaced by the catalog's
 * paths.  The catalog comes from datasets_file, else $CALIBD_DATASETS_FILE;
 * with neither, the list is copied unchanged.  An unknown name is
 * CAL_ERR_NOTFOUND, naming the names the catalog knows. */
enum cal_status cal_config_expand_calib(const char *calib, const char *datasets_file, char **ret,
				       struct cal_error *err);

/* The CLI's use of it: *calib (when set) becomes the expanded list, owned
 * by *owned (free it); an error is printed as "calibd CMD: ...". */
enum cal_status cal_config_calib_arg(const char *cmd, const char **calib, const char *datasets_file, char **owned);

/* Checks the flags alone (names, values' syntax and ranges): a failure is
 * a usage error (exit 2), before any file is read. */
enum cal_status cal_config_check_flags(int argc, char **argv, struct cal_error *err);

/*
 * Builds a configuration from the YAML file `path` (NULL: defaults only),
 * then the flags in argv[0..argc) (`--state-dir DIR`, ..., see docs/api.md),
 * then validates it: roots and the state dir are resolved, the token file
 * read and hashed, the devices discovered when set to "auto".  Unknown keys
 * and flags are errors naming them.  *ret (refcount 1) is owned by the
 * caller.  With check_only, directories are not created.
 */
enum cal_status cal_config_load(const char *path, int argc, char **argv, int check_only,
				struct cal_config **ret, struct cal_error *err);

struct cal_config *cal_config_ref(struct cal_config *c);
/* Drops a reference; frees at zero.  NULL is a no-op. */
void cal_config_unref(struct cal_config *c);

/* Parses a device list "0,1,3" | "auto" | "none" into out (see config.c). */
enum cal_status cal_config_parse_devices(const char *s, int *out, size_t *n, struct cal_error *err);

/* GPUs visible without CUDA: /proc/driver/nvidia/gpus entries, numbered in
 * order.  Returns how many (0 when the driver is absent). */
size_t cal_devices_discover(int *out, size_t max);

#endif
