/*
 * http.h — the HTTP server (libmicrohttpd, one thread per connection under
 * global, per-IP, inactivity and whole-request deadline limits; a second,
 * small listener for probes and metrics) and the dispatcher every route goes
 * through: route lookup, auth, body limits, error replies, request counters.
 * Handlers live one file per resource (jobs.c, system.c) and are listed once
 * in routes.c.
 */
#ifndef CAL_API_HTTP_H
#define CAL_API_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>
#include <stdio.h>

#include "api/errors.h"
#include "daemon/daemon.h"

#define CAL_ROUTE_TOKEN 1u    /* needs a token whenever tokens are configured:
			       * routes that change state or do work */
#define CAL_ROUTE_BODY 2u     /* takes a JSON body */
#define CAL_ROUTE_PUBLIC 4u   /* probes: never needs a token */
#define CAL_ROUTE_PARAM_PATH 8u /* the {..} parameter may span several segments
				 * ("general/ptq/x"; %2F arrives decoded) */
#define CAL_ROUTE_ADMIN 16u   /* also served by the admin listener */

/* Request limits answered in JSON (docs/api.md, "Limits"). */
#define CAL_MAX_URL_BYTES (8 * 1024)     /* the request target, query included */
#define CAL_MAX_HEADER_BYTES (32 * 1024) /* request line and headers */

struct cal_http_req;
typedef enum MHD_Result (*cal_route_fn)(struct cal_http_req *r);

struct cal_route {
	const char *method;
	const char *pattern; /* "/v1/jobs/{id}": a {name} matches one segment */
	cal_route_fn fn;
	unsigned flags;
};

/* the route table (routes.c) */
extern const struct cal_route cal_routes[];
extern const size_t cal_n_routes;

#define CAL_PATH_PARAM_MAX 256
/* client identity: 32 hex digits of a hash of the bearer token, or "anonymous" */
#define CAL_CLIENT_ID_MAX 33

struct cal_http_req {
	struct MHD_Connection *conn;
	struct cal_daemon *d;
	struct cal_config *cfg;   /* reference held for the request */
	const char *method, *url;
	int route;                /* index into cal_routes, -1 when none */
	char param[CAL_PATH_PARAM_MAX]; /* the {..} segment, decoded */
	char client[CAL_CLIENT_ID_MAX]; /* who is asking (Idempotency-Key scope) */
	char *body;
	size_t body_len, body_cap;
	int body_too_large;
	size_t discarded;         /* body bytes drained after a refusal */
	int close;                /* the response closes the connection */
	int started;
	unsigned status;          /* HTTP status sent (for the counters) */
	int not_allowed_route;    /* 405: the first route of the path */
	const char *raw_url;      /* the target as received (MHD's buffer) */
	size_t raw_url_len;       /* ... up to its first NUL byte */
	struct cal_http *http;    /* the listener */
	void *track;              /* its connection's deadline state */
	double t0;                /* cal_now() when the request began */
};

/* Sends body (reference stolen) as JSON with the given status. */
enum MHD_Result cal_http_json(struct cal_http_req *r, unsigned status, json_t *body);
/* Same, adding one header (name/value may be NULL). */
enum MHD_Result cal_http_json_h(struct cal_http_req *r, unsigned status, json_t *body, const char *hname,
				const char *hvalue);
/* Sends the error body for p (and clears p). */
enum MHD_Result cal_http_problem(struct cal_http_req *r, struct cal_api_problem *p);
/* Sends error e with a printf message (NULL: the default) naming field. */
enum MHD_Result cal_http_error(struct cal_http_req *r, enum cal_api_err e, const char *field, const char *fmt,
			       ...) __attribute__((format(printf, 4, 5)));
/* Sends a prepared response and records its status. */
enum MHD_Result cal_http_send(struct cal_http_req *r, unsigned status, struct MHD_Response *resp);

/* Appends the HTTP request counters and the latency histogram per route
 * in Prometheus format to f. */
void cal_http_render_metrics(FILE *f);

struct cal_http;

/* Starts listening on cfg's listen/port, or with admin on its
 * admin_listen/admin_port serving only the CAL_ROUTE_ADMIN routes (probes
 * and metrics, answered while the API's connections are all taken).
 * *ret owned by the caller (cal_http_stop).  The bound port is in
 * cal_http_port(). */
enum cal_status cal_http_start(struct cal_daemon *d, const struct cal_config *cfg, int admin,
			       struct cal_http **ret, struct cal_error *err);
unsigned cal_http_port(const struct cal_http *h);
/* Stops accepting new connections (requests in progress continue). */
void cal_http_quiesce(struct cal_http *h);
/* Stops the server and frees h.  NULL is a no-op. */
void cal_http_stop(struct cal_http *h);

/* Matches method+path against the table: the route index, -1 when no
 * pattern matches, -2 when a pattern matches but not the method.  The
 * {..} segment (segments, for CAL_ROUTE_PARAM_PATH routes: each one
 * non-empty and not starting with '.') is copied to param (size
 * CAL_PATH_PARAM_MAX). */
int cal_route_match(const char *method, const char *path, char *param);

#endif
