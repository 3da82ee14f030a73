/*
 * client.h — the client side of the API for `calibd submit|status|wait|
 * cancel|logs` and the API tests: a minimal HTTP/1.1 client over a TCP
 * socket (one request per connection), and the mapping from job failures
 * to exit codes.
 */
#ifndef CAL_CLIENT_H
#define CAL_CLIENT_H

#include <stddef.h>

#include "common/status.h"

#define CAL_CLIENT_MAX_RESPONSE (64u * 1024 * 1024)

struct cal_client_resp {
	int status;          /* HTTP status */
	char *body;          /* NUL-terminated, de-chunked */
	size_t len;
	char *headers;       /* raw header block (lines), NUL-terminated */
};

/*
 * Sends one request to host:port and reads the whole response (until
 * Content-Length, the last chunk, or EOF), waiting at most timeout_s for
 * each step.  `headers` holds extra header lines ("Name: value\r\n"...), or
 * NULL.  Errors: CAL_ERR_IO (cannot connect / send / read: the daemon is
 * unreachable), CAL_ERR_FORMAT (not HTTP), CAL_ERR_RANGE (too large).
 */
enum cal_status cal_client_request(const char *host, const char *port, const char *method, const char *path,
				   const char *headers, const char *body, size_t body_len, double timeout_s,
				   struct cal_client_resp *ret, struct cal_error *err);

/* Value of header `name` in r (case-insensitive), heap; NULL if absent. */
char *cal_client_header(const struct cal_client_resp *r, const char *name);

void cal_client_resp_free(struct cal_client_resp *r);

/* Splits "http://HOST:PORT" into heap host and port.  IPv6 as [::1]. */
enum cal_status cal_client_parse_url(const char *url, char **ret_host, char **ret_port, struct cal_error *err);

/* Stable lower-case code of a status ("format", "nospace", ...): what a
 * worker reports as the job's error code. */
const char *cal_status_code(enum cal_status st);

/* Exit code (cli.h) for a job that ended with error code `code`. */
int cal_exit_from_job_error(const char *code);

#endif
