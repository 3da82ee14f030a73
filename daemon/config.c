/*
 * config.c — YAML configuration (libyaml event API: no aliases, bounded
 * depth and size) and command-line flags, validated into struct cal_config.
 */
#include "config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "api/jobspec.h"
#include "common/device.h"
#include "common/parse.h"
#include "common/sha256.h"
#include "common/util.h"
#include "common/fsutil.h"

#define CONFIG_MAX_BYTES (1024 * 1024)
#define CONFIG_MAX_LIST 256
#define TOKEN_FILE_MAX (64 * 1024)

/* K_CATALOG: a mapping NAME: PATH in the file, --dataset NAME=PATH flags,
 * kept as a list of "NAME=PATH" */
enum key_type { K_STR, K_INT, K_BOOL, K_DOUBLE, K_DURATION, K_STRLIST, K_DEVICES, K_LOGFMT, K_CATALOG };

struct key {
	const char *name;   /* YAML key */
	const char *flag;   /* command-line flag (without --) */
	enum key_type type;
	size_t off;         /* field offset */
	size_t count_off;   /* for lists: the count field */
	double lo, hi;      /* numeric range */
};

#define F(f) offsetof(struct cal_config, f)
static const struct key keys[] = {
	{"listen", "listen", K_STR, F(listen), 0, 0, 0},
	{"port", "port", K_INT, F(port), 0, 0, 65535},
	{"port_file", "port-file", K_STR, F(port_file), 0, 0, 0},
	{"admin_listen", "admin-listen", K_STR, F(admin_listen), 0, 0, 0},
	{"admin_port", "admin-port", K_INT, F(admin_port), 0, -1, 65535},
	{"admin_port_file", "admin-port-file", K_STR, F(admin_port_file), 0, 0, 0},
	{"state_dir", "state-dir", K_STR, F(state_dir), 0, 0, 0},
	{"model_roots", "model-root", K_STRLIST, F(model_roots), F(n_model_roots), 0, 0},
	{"data_roots", "data-root", K_STRLIST, F(data_roots), F(n_data_roots), 0, 0},
	{"output_roots", "output-root", K_STRLIST, F(output_roots), F(n_output_roots), 0, 0},
	{"recipes_dir", "recipes-dir", K_STR, F(recipes_dir), 0, 0, 0},
	{"devices", "devices", K_DEVICES, F(devices), F(n_devices), 0, 0},
	{"max_concurrent_jobs", "max-jobs", K_INT, F(max_concurrent_jobs), 0, 1, 1024},
	{"max_queue", "max-queue", K_INT, F(max_queue), 0, 1, 1000000},
	{"progress_timeout_s", "progress-timeout", K_DURATION, F(progress_timeout_s), 0, 0.1, 1e7},
	{"kill_grace_s", "kill-grace", K_DURATION, F(kill_grace_s), 0, 0, 3600},
	{"shutdown_grace_s", "shutdown-grace", K_DURATION, F(shutdown_grace_s), 0, 0, 3600},
	{"job_timeout_s", "job-timeout", K_DURATION, F(job_timeout_s), 0, 0, 1e8},
	{"resume_on_restart", "resume-on-restart", K_BOOL, F(resume_on_restart), 0, 0, 0},
	{"worker_command", "worker-command", K_STRLIST, F(worker_command), F(n_worker_command), 0, 0},
	{"token_file", "token-file", K_STR, F(token_file), 0, 0, 0},
	{"auth_read", "auth-read", K_BOOL, F(auth_read), 0, 0, 0},
	{"log_format", "log-format", K_LOGFMT, F(log_json), 0, 0, 0},
	{"max_connections", "max-connections", K_INT, F(max_connections), 0, 1, 65536},
	{"per_ip_connections", "per-ip-connections", K_INT, F(per_ip_connections), 0, 1, 65536},
	{"connection_timeout_s", "connection-timeout", K_INT, F(connection_timeout_s), 0, 1, 86400},
	{"request_timeout_s", "request-timeout", K_DURATION, F(request_timeout_s), 0, 0.1, 86400},
	{"retry_after_s", "retry-after", K_DURATION, F(retry_after_s), 0, 0, 86400},
	{"idempotency_ttl_s", "idempotency-ttl", K_DURATION, F(idempotency_ttl_s), 0, 1, 1e9},
	{"job_retention_s", "job-retention", K_DURATION, F(job_retention_s), 0, 0, 1e10},
	{"min_free_percent", "min-free-percent", K_DOUBLE, F(min_free_percent), 0, 0, 100},
	{"datasets", "dataset", K_CATALOG, F(datasets), F(n_datasets), 0, 0},
};
#undef F

static const struct key *key_by_name(const char *name, int flag)
{
	for (size_t i = 0; i < CAL_ARRAY_LEN(keys); i++)
		if (!strcmp(flag ? keys[i].flag : keys[i].name, name))
			return &keys[i];
	return NULL;
}

static void strlist_free(char **l, size_t n)
{
	for (size_t i = 0; l && i < n; i++)
		free(l[i]);
	free(l);
}

/* Frees what key k holds in c (a string, or a list of strings) and leaves
 * it empty; other types hold no memory. */
static void key_clear(struct cal_config *c, const struct key *k)
{
	char *base = (char *)c;
	if (k->type == K_STR) {
		char **f = (char **)(base + k->off);
		free(*f);
		*f = NULL;
	} else if (k->type == K_STRLIST || k->type == K_CATALOG) {
		char ***l = (char ***)(base + k->off);
		size_t *n = (size_t *)(base + k->count_off);
		strlist_free(*l, *n);
		*l = NULL;
		*n = 0;
	}
}

_Static_assert(CAL_DEVICES_MAX <= CAL_MAX_DEVICES, "a parsed device list must fit devices[]");

enum cal_status cal_config_parse_devices(const char *s, int *out, size_t *n, struct cal_error *err)
{
	*n = 0;
	if (!strcmp(s, "auto")) {
		*n = cal_devices_discover(out, CAL_MAX_DEVICES);
		return CAL_OK;
	}
	if (!strcmp(s, "none") || !*s)
		return CAL_OK;
	struct cal_devices d;
	enum cal_status st = cal_device_ids_parse(s, &d, err);
	if (st < 0)
		return cal_error_wrap(err, st, "devices (a list of GPU ordinals, 'auto' or 'none')");
	for (size_t i = 0; i < d.n; i++)
		out[i] = d.ids[i];
	*n = d.n;
	return CAL_OK;
}

size_t cal_devices_discover(int *out, size_t max)
{
	DIR *d = opendir("/proc/driver/nvidia/gpus");
	if (!d)
		return 0;
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)) && n < max)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	for (size_t i = 0; i < n; i++)
		out[i] = (int)i;
	return n;
}

/* A bad value is a configuration error (CAL_ERR_INVALID), out of range
 * or not. */
static enum cal_status invalid(struct cal_error *err)
{
	if (err)
		err->code = CAL_ERR_INVALID;
	return CAL_ERR_INVALID;
}

/* Sets one scalar value (from YAML or a flag).  `append` adds to a list
 * instead of replacing it (YAML list items, repeated flags). */
static enum cal_status set_value(struct cal_config *c, const struct key *k, const char *v,
				 int append, struct cal_error *err)
{
	char *base = (char *)c;
	enum cal_status st;
	switch (k->type) {
	case K_STR: {
		char **f = (char **)(base + k->off);
		key_clear(c, k);
		*f = strdup(v);
		return *f ? CAL_OK : cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	}
	case K_INT: {
		int64_t x;
		if ((st = cal_parse_i64(k->name, v, (int64_t)k->lo, (int64_t)k->hi, &x, err)) < 0)
			return invalid(err);
		*(int *)(base + k->off) = (int)x;
		return CAL_OK;
	}
	case K_DOUBLE:
	case K_DURATION: {
		double x;
		st = k->type == K_DOUBLE ? cal_parse_f64(k->name, v, k->lo, k->hi, &x, err)
					 : cal_parse_duration(k->name, v, k->lo, k->hi, &x, err);
		if (st < 0)
			return invalid(err);
		*(double *)(base + k->off) = x;
		return CAL_OK;
	}
	case K_BOOL:
		if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1"))
			*(int *)(base + k->off) = 1;
		else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0"))
			*(int *)(base + k->off) = 0;
		else
			return cal_error_set(err, CAL_ERR_INVALID, "%s: '%s' is not true or false", k->name, v);
		return CAL_OK;
	case K_LOGFMT:
		if (strcmp(v, "text") && strcmp(v, "json"))
			return cal_error_set(err, CAL_ERR_INVALID, "log_format: '%s' is not text or json", v);
		c->log_json = !strcmp(v, "json");
		return CAL_OK;
	case K_DEVICES: {
		if (!append) {
			size_t n;
			st = cal_config_parse_devices(v, c->devices, &n, err);
			c->n_devices = n;
			return st;
		}
		int tmp[CAL_MAX_DEVICES];
		size_t n;
		st = cal_config_parse_devices(v, tmp, &n, err);
		if (st)
			return st;
		for (size_t i = 0; i < n; i++) {
			if (c->n_devices >= CAL_MAX_DEVICES)
				return cal_error_set(err, CAL_ERR_RANGE, "devices: more than %d", CAL_MAX_DEVICES);
			c->devices[c->n_devices++] = tmp[i];
		}
		return CAL_OK;
	}
	case K_CATALOG: {
		const char *eq = strchr(v, '=');
		size_t nl = eq ? (size_t)(eq - v) : 0;
		if (!eq || nl == 0 || nl > CAL_DATASET_NAME_MAX || strspn(v, CAL_DATASET_NAME_CHARS) != nl)
			return cal_error_set(err, CAL_ERR_INVALID,
					     "datasets: '%s' is not NAME=PATH with a NAME of 1 to %d of [A-Za-z0-9_-]", v,
					     CAL_DATASET_NAME_MAX);
		if (eq[1] != '/')
			return cal_error_set(err, CAL_ERR_INVALID, "datasets: %.*s: '%s' must be an absolute path",
					     (int)nl, v, eq + 1);
		for (size_t i = 0; append && i < c->n_datasets; i++)
			if (!strncmp(c->datasets[i], v, nl + 1))
				return cal_error_set(err, CAL_ERR_INVALID, "datasets: '%.*s' is named twice", (int)nl, v);
	}
	/* fall through */
	case K_STRLIST: {
		char ***l = (char ***)(base + k->off);
		size_t *n = (size_t *)(base + k->count_off);
		if (!append)
			key_clear(c, k);
		if (*n >= CONFIG_MAX_LIST)
			return cal_error_set(err, CAL_ERR_RANGE, "%s: more than %d entries", k->name, CONFIG_MAX_LIST);
		char **nl = realloc(*l, (*n + 1) * sizeof(char *));
		if (!nl)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		*l = nl;
		nl[*n] = strdup(v);
		if (!nl[*n])
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		(*n)++;
		return CAL_OK;
	}
	}
	return CAL_ERR_INTERNAL;
}

static enum cal_status parse_yaml(struct cal_config *c, const char *path, struct cal_error *err)
{
	char *text = NULL;
	size_t len = 0;
	enum cal_status st = cal_read_file(path, CONFIG_MAX_BYTES, &text, &len, err);
	if (st)
		return cal_error_wrap(err, st, "config");
	yaml_parser_t p;
	yaml_event_t ev;
	int have_ev = 0;
	if (!yaml_parser_initialize(&p)) {
		free(text);
		return cal_error_set(err, CAL_ERR_NOMEM, "config: out of memory");
	}
	yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
	/* states: 0 before the root mapping, 1 expecting a key, 2 expecting a
	 * value, 3 inside a list value, 4 after the root mapping */
	int state = 0;
	const struct key *cur = NULL;
	char *curname = NULL, *catkey = NULL;
	for (;;) {
		if (!yaml_parser_parse(&p, &ev)) {
			st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu: %s", path,
					   p.problem_mark.line + 1, p.problem ? p.problem : "YAML error");
			goto fail;
		}
		have_ev = 1;
		size_t line = ev.start_mark.line + 1;
		if (ev.type == YAML_STREAM_END_EVENT)
			break;
		if (ev.type == YAML_ALIAS_EVENT ||
		    (ev.type == YAML_SCALAR_EVENT && ev.data.scalar.anchor) ||
		    (ev.type == YAML_MAPPING_START_EVENT && ev.data.mapping_start.anchor) ||
		    (ev.type == YAML_SEQUENCE_START_EVENT && ev.data.sequence_start.anchor)) {
			st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu: anchors and aliases are not allowed", path, line);
			goto fail;
		}
		switch (ev.type) {
		case YAML_STREAM_START_EVENT:
		case YAML_DOCUMENT_START_EVENT:
		case YAML_DOCUMENT_END_EVENT:
			break;
		case YAML_MAPPING_START_EVENT:
			if (state == 2 && cur->type == K_CATALOG) {
				/* a catalog in the file replaces the default: start empty */
				key_clear(c, cur);
				state = 5;
				break;
			}
			if (state != 0) {
				st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu: %s: nested mappings are not allowed",
						   path, line, curname ? curname : "config");
				goto fail;
			}
			state = 1;
			break;
		case YAML_MAPPING_END_EVENT:
			state = state == 5 ? 1 : 4;
			break;
		case YAML_SEQUENCE_START_EVENT:
			if (state != 2 || (cur->type != K_STRLIST && cur->type != K_DEVICES)) {
				st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu: %s: a list is not allowed here",
						   path, line, curname ? curname : "config");
				goto fail;
			}
			/* a list in the file replaces the default: start empty */
			if (cur->type == K_STRLIST)
				key_clear(c, cur);
			else
				c->n_devices = 0;
			state = 3;
			break;
		case YAML_SEQUENCE_END_EVENT:
			state = 1;
			break;
		case YAML_SCALAR_EVENT: {
			const char *v = (const char *)ev.data.scalar.value;
			if (state == 0) {
				/* an empty document is a scalar (null): defaults only */
				if (*v) {
					st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu: the configuration must be a mapping", path, line);
					goto fail;
				}
				state = 4;
			} else if (state == 1) {
				cur = key_by_name(v, 0);
				if (!cur) {
					st = cal_error_set(err, CAL_ERR_INVALID, "%s:%zu: unknown key '%s'", path, line, v);
					goto fail;
				}
				free(curname);
				curname = strdup(v);
				state = 2;
			} else if (state == 2) {
				CAL_TRY(set_value(c, cur, v, 0, err));
				state = 1;
			} else if (state == 3) {
				CAL_TRY(set_value(c, cur, v, 1, err));
			} else if (state == 5) {
				free(catkey);
				catkey = strdup(v);
				if (!catkey) {
					st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
					goto fail;
				}
				state = 6;
			} else if (state == 6) {
				char *pair = NULL;
				if (asprintf(&pair, "%s=%s", catkey, v) < 0) {
					st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
					goto fail;
				}
				st = set_value(c, cur, pair, 1, err);
				free(pair);
				if (st)
					goto fail;
				state = 5;
			} else {
				st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%zu: unexpected value", path, line);
				goto fail;
			}
			break;
		}
		default:
			break;
		}
		yaml_event_delete(&ev);
		have_ev = 0;
	}
fail:
	if (st < 0 && err && err->msg && !strstr(err->msg, path))
		cal_error_wrap(err, st, "%s", path);
	if (have_ev)
		yaml_event_delete(&ev);
	yaml_parser_delete(&p);
	free(curname);
	free(catkey);
	free(text);
	return st;
}

enum cal_status cal_config_expand_calib(const char *calib, const char *datasets_file, char **ret,
				       struct cal_error *err)
{
	*ret = NULL;
	if (!datasets_file || !*datasets_file)
		datasets_file = getenv("CALIBD_DATASETS_FILE");
	if (!datasets_file || !*datasets_file) {
		*ret = strdup(calib);
		return *ret ? CAL_OK : cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	}
	char **cat = NULL, *out = NULL, *list = strdup(calib);
	size_t ncat = 0, olen = 0;
	enum cal_status st = list ? cal_config_read_datasets(datasets_file, &cat, &ncat, err)
				  : cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	if (st)
		goto fail;
	FILE *f = open_memstream(&out, &olen);
	if (!f) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	int first = 1;
	for (char *save = NULL, *e = strtok_r(list, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
		size_t nl = strcspn(e, ":");
		/* a NAME[:N] of [A-Za-z0-9_-] that is no file here is a catalog reference */
		const char *path;
		long n;
		char msg[512];
		if (nl > 0 && strspn(e, CAL_DATASET_NAME_CHARS) == nl && access(e, F_OK) != 0) {
			if (cal_dataset_resolve(cat, ncat, e, &path, &n, msg, sizeof(msg))) {
				fclose(f);
				st = cal_error_set(err, CAL_ERR_NOTFOUND, "--calib: %s (catalog %s)", msg, datasets_file);
				goto fail;
			}
			fprintf(f, "%s%s", first ? "" : ",", path);
			if (n)
				fprintf(f, ":%ld", n);
		} else {
			fprintf(f, "%s%s", first ? "" : ",", e);
		}
		first = 0;
	}
	if (fclose(f) != 0 || !out) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	*ret = out;
	out = NULL;
fail:
	free(out);
	free(list);
	strlist_free(cat, ncat);
	return st;
}

enum cal_status cal_config_calib_arg(const char *cmd, const char **calib, const char *datasets_file, char **owned)
{
	*owned = NULL;
	if (!*calib)
		return CAL_OK;
	struct cal_error err = {0};
	enum cal_status st = cal_config_expand_calib(*calib, datasets_file, owned, &err);
	if (st)
		fprintf(stderr, "calibd %s: %s\n", cmd, cal_error_msg(&err));
	else
		*calib = *owned;
	cal_error_clear(&err);
	return st;
}

enum cal_status cal_config_read_datasets(const char *path, char ***ret, size_t *n, struct cal_error *err)
{
	*ret = NULL;
	*n = 0;
	struct cal_config *c = calloc(1, sizeof(*c));
	if (!c)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	c->refs = 1;
	enum cal_status st = parse_yaml(c, path, err);
	if (!st) {
		*ret = c->datasets;
		*n = c->n_datasets;
		c->datasets = NULL;
		c->n_datasets = 0;
	}
	cal_config_unref(c);
	return st;
}

static enum cal_status load_tokens(struct cal_config *c, struct cal_error *err)
{
	char *text = NULL;
	enum cal_status st = cal_read_file(c->token_file, TOKEN_FILE_MAX, &text, NULL, err);
	if (st)
		return cal_error_wrap(err, st, "token_file");
	size_t cap = 0;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		size_t l = strlen(line);
		while (l > 0 && (line[l - 1] == '\r' || line[l - 1] == ' ' || line[l - 1] == '\t'))
			line[--l] = '\0';
		while (*line == ' ' || *line == '\t')
			line++, l--;
		if (l == 0 || line[0] == '#')
			continue;
		if (c->n_tokens == cap) {
			cap = cap ? 2 * cap : 4;
			void *nt = realloc(c->tokens, cap * sizeof(*c->tokens));
			if (!nt) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
				break;
			}
			c->tokens = nt;
		}
		cal_sha256(line, l, c->tokens[c->n_tokens++]);
	}
	/* the plain tokens do not outlive this function */
	explicit_bzero(text, strlen(text));
	free(text);
	if (!st && c->n_tokens == 0)
		st = cal_error_set(err, CAL_ERR_INVALID, "token_file %s: no token in it", c->token_file);
	return st;
}

static enum cal_status resolve_roots(char **roots, size_t n, const char *what, struct cal_error *err)
{
	for (size_t i = 0; i < n; i++) {
		char *r = realpath(roots[i], NULL);
		if (!r)
			return cal_error_set(err, CAL_ERR_NOTFOUND, "%s: %s: %s", what, roots[i], strerror(errno));
		free(roots[i]);
		roots[i] = r;
	}
	return CAL_OK;
}

static int is_loopback(const char *addr)
{
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, addr, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, addr, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return 0;
}

static enum cal_status validate(struct cal_config *c, int check_only, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, c->listen, &a4) != 1 && inet_pton(AF_INET6, c->listen, &a6) != 1)
		return cal_error_set(err, CAL_ERR_INVALID, "listen: '%s' is not an IPv4 or IPv6 address", c->listen);
	c->loopback = is_loopback(c->listen);
	if (inet_pton(AF_INET, c->admin_listen, &a4) != 1 && inet_pton(AF_INET6, c->admin_listen, &a6) != 1)
		return cal_error_set(err, CAL_ERR_INVALID, "admin_listen: '%s' is not an IPv4 or IPv6 address",
				     c->admin_listen);
	if (c->admin_port > 0 && c->admin_port == c->port && !strcmp(c->admin_listen, c->listen))
		return cal_error_set(err, CAL_ERR_INVALID, "admin_port: %d is the API's port", c->admin_port);
	if (c->token_file)
		CAL_TRY(load_tokens(c, err));
	if (!c->loopback && c->n_tokens == 0)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "listen: refusing the non-loopback address %s without token_file", c->listen);
	if (c->state_dir[0] != '/')
		return cal_error_set(err, CAL_ERR_INVALID, "state_dir: '%s' must be an absolute path", c->state_dir);
	if (!check_only) {
		CAL_TRY(cal_mkdir_p(c->state_dir, err));
		char *r = realpath(c->state_dir, NULL);
		if (!r)
			return cal_error_set(err, CAL_ERR_IO, "state_dir: %s: %s", c->state_dir, strerror(errno));
		free(c->state_dir);
		c->state_dir = r;
	}
	CAL_TRY(resolve_roots(c->model_roots, c->n_model_roots, "model_roots", err));
	CAL_TRY(resolve_roots(c->data_roots, c->n_data_roots, "data_roots", err));
	CAL_TRY(resolve_roots(c->output_roots, c->n_output_roots, "output_roots", err));
	if (c->recipes_dir) {
		char *r = realpath(c->recipes_dir, NULL);
		if (!r || access(r, R_OK | X_OK) < 0) {
			st = cal_error_set(err, CAL_ERR_NOTFOUND, "recipes_dir: %s: %s", c->recipes_dir, strerror(errno));
			free(r);
			return st;
		}
		free(c->recipes_dir);
		c->recipes_dir = r;
	}
	if (c->n_worker_command == 0) {
		char *self = realpath("/proc/self/exe", NULL);
		if (!self)
			return cal_error_set(err, CAL_ERR_IO, "cannot resolve /proc/self/exe: %s", strerror(errno));
		c->worker_command = calloc(2, sizeof(char *));
		if (!c->worker_command) {
			free(self);
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		}
		c->worker_command[0] = self;
		c->worker_command[1] = strdup("worker");
		c->n_worker_command = 2;
		if (!c->worker_command[1])
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	} else if (c->worker_command[0][0] != '/') {
		return cal_error_set(err, CAL_ERR_INVALID, "worker_command: '%s' must be an absolute path",
				     c->worker_command[0]);
	}
fail:
	return st;
}

/* Command-line flags onto c.  A list flag given once replaces the file's
 * list; repeated, it appends. */
static enum cal_status apply_flags(struct cal_config *c, int argc, char **argv, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	const struct key *seen[CAL_ARRAY_LEN(keys)] = {0};
	size_t nseen = 0;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (strncmp(a, "--", 2))
			return cal_error_set(err, CAL_ERR_INVALID, "unexpected argument '%s'", a);
		const struct key *k = key_by_name(a + 2, 1);
		if (!k)
			return cal_error_set(err, CAL_ERR_INVALID, "unknown option '%s'", a);
		const char *v;
		if (k->type == K_BOOL) {
			v = "true";
		} else {
			if (i + 1 >= argc)
				return cal_error_set(err, CAL_ERR_INVALID, "option '%s' needs a value", a);
			v = argv[++i];
		}
		int again = 0;
		for (size_t j = 0; j < nseen; j++)
			again |= seen[j] == k;
		if (!again)
			seen[nseen++] = k;
		if ((st = set_value(c, k, v, again, err)))
			return st;
	}
	return CAL_OK;
}

enum cal_status cal_config_check_flags(int argc, char **argv, struct cal_error *err)
{
	struct cal_config *c = calloc(1, sizeof(*c));
	if (!c)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	c->refs = 1;
	enum cal_status st = apply_flags(c, argc, argv, err);
	cal_config_unref(c);
	return st;
}

enum cal_status cal_config_load(const char *path, int argc, char **argv, int check_only,
				struct cal_config **ret, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	*ret = NULL;
	struct cal_config *c = calloc(1, sizeof(*c));
	if (!c)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	c->refs = 1;
	c->listen = strdup("127.0.0.1");
	c->port = 8080;
	c->admin_listen = strdup("127.0.0.1");
	c->admin_port = 8081;
	c->state_dir = strdup("/var/lib/calibd");
	c->n_devices = cal_devices_discover(c->devices, CAL_MAX_DEVICES);
	c->max_concurrent_jobs = 1;
	c->max_queue = 64;
	c->progress_timeout_s = 600;
	c->kill_grace_s = 10;
	c->shutdown_grace_s = 20;
	c->max_connections = 512;
	c->per_ip_connections = 32;
	c->connection_timeout_s = 30;
	c->request_timeout_s = 30;
	c->retry_after_s = 30;
	c->idempotency_ttl_s = 86400;
	c->job_retention_s = 7 * 86400;
	c->min_free_percent = 10;
	if (!c->listen || !c->admin_listen || !c->state_dir) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	if (path) {
		c->config_path = realpath(path, NULL);
		if (!c->config_path) {
			st = cal_error_set(err, CAL_ERR_NOTFOUND, "config %s: %s", path, strerror(errno));
			goto fail;
		}
		CAL_TRY(parse_yaml(c, c->config_path, err));
	}
	CAL_TRY(apply_flags(c, argc, argv, err));
	CAL_TRY(validate(c, check_only, err));
	*ret = c;
	return CAL_OK;
fail:
	cal_config_unref(c);
	return st;
}

struct cal_config *cal_config_ref(struct cal_config *c)
{
	if (c)
		__atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
	return c;
}

void cal_config_unref(struct cal_config *c)
{
	if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	for (size_t i = 0; i < CAL_ARRAY_LEN(keys); i++)
		key_clear(c, &keys[i]);
	free(c->config_path);
	if (c->tokens)
		explicit_bzero(c->tokens, c->n_tokens * sizeof(*c->tokens));
	free(c->tokens);
	free(c);
}
