/*
 * client.h — the client side of the API for `calibd submit|status|wait|
 * cancel|logs` and the API tests: one request through libcurl (HTTP or
 * HTTPS; http_proxy/https_proxy/no_proxy from the environment; a base URL
 * with a path prefix, as behind an ingress), and the mapping from job
 * failures to exit codes.
 */
#ifndef CAL_CLIENT_H
#define CAL_CLIENT_H

#include <stddef.h>

#include "common/status.h"

#define CAL_CLIENT_MAX_RESPONSE (64u * 1024 * 1024)
#define CAL_CLIENT_MAX_HEADERS (256u * 1024)

struct cal_client_opts {
	double timeout_s;    /* connect, and longest silence while reading (<= 0: 30) */
	const char *cacert;  /* CA bundle for https, or NULL for the system's */
	int no_proxy;        /* ignore proxy variables (a direct connection) */
};

struct cal_client_resp {
	int status;          /* HTTP status */
	char *body;          /* NUL-terminated, de-chunked */
	size_t len;
	char *headers;       /* raw header block (lines), NUL-terminated */
};

/*
 * Sends one request to base_url + path ("https://host/prefix" +
 * "/v1/jobs") and reads the whole response.  `headers` holds extra header
 * lines ("Name: value\r\n"...), or NULL; a body goes as application/json.
 * Errors: CAL_ERR_IO (cannot connect / send / read, TLS: the daemon is
 * unreachable), CAL_ERR_INVALID (a URL libcurl refuses), CAL_ERR_RANGE
 * (response too large).
 */
enum cal_status cal_client_fetch(const char *base_url, const struct cal_client_opts *o, const char *method,
				 const char *path, const char *headers, const char *body, size_t body_len,
				 struct cal_client_resp *ret, struct cal_error *err);

/* cal_client_fetch() of http://host:port, without proxy (the tests). */
enum cal_status cal_client_request(const char *host, const char *port, const char *method, const char *path,
				   const char *headers, const char *body, size_t body_len, double timeout_s,
				   struct cal_client_resp *ret, struct cal_error *err);

/* Value of header `name` in r (case-insensitive), heap; NULL if absent. */
char *cal_client_header(const struct cal_client_resp *r, const char *name);

void cal_client_resp_free(struct cal_client_resp *r);

/* Checks a base URL: http:// or https://, a host, no query or fragment. */
enum cal_status cal_client_check_url(const char *url, struct cal_error *err);

#endif
