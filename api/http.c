/*
 * http.c — libmicrohttpd set-up and the dispatcher (see http.h).  Order of
 * checks for every request: the request line (a NUL byte: 400; longer than
 * CAL_MAX_URL_BYTES: 414) and headers (over CAL_MAX_HEADER_BYTES: 431),
 * route (404/405), token (401), Content-Length and Content-Type (413/415,
 * answered before any body byte is read), body accumulation capped at
 * CAL_MAX_BODY_BYTES (a chunked body that grows past it is drained and
 * answered 413), then the handler.  MHD's PostProcessor is never used.
 *
 * Slow clients: MHD's connection timeout counts inactivity only, so every
 * connection is tracked (MHD_OPTION_NOTIFY_CONNECTION) and a watchdog
 * thread closes one whose request has not fully arrived within
 * request_timeout_s of the connection's opening or of the end of its
 * previous response, writing a JSON 408 first when no response is queued
 * (MHD is then only reading, so the write cannot interleave with one).
 * The socket is shut down, not closed, under the tracking lock: MHD
 * reports the connection closed before it closes the descriptor, so the
 * descriptor cannot have been reused.
 *
 * MHD answers some malformed requests itself, in HTML: a request line or
 * headers larger than its per-connection memory (CAL_HTTP_MHD_MEMORY, far
 * above the limits this file answers in JSON) and requests it cannot parse.
 */
#include "http.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/parse.h"
#include "common/sha256.h"
#include "common/util.h"
#include "daemon/log.h"

#define CAL_HTTP_MHD_MEMORY (256 * 1024) /* MHD's per-connection memory pool */
#define CAL_MAX_DISCARD_BYTES (16 * 1024 * 1024) /* an over-long chunked body is
						   * drained this far, then dropped */

/* One open connection (the deadline watchdog's view of it). */
struct conn_track {
	struct conn_track *prev, *next;
	MHD_socket fd;
	double start;  /* the current request's clock */
	int receiving; /* its request has not fully arrived */
	int replied;   /* a response is queued */
	int expired;   /* the watchdog shut it down */
};

struct cal_http {
	struct MHD_Daemon *mhd;
	struct cal_daemon *d;
	unsigned port;
	int admin;                 /* only CAL_ROUTE_ADMIN routes */
	pthread_mutex_t mu;        /* conns, stopping */
	pthread_cond_t cv;
	struct conn_track *conns;
	int stopping, watchdog_started;
	pthread_t watchdog;
	char *timeout_reply;       /* the raw HTTP 408 the watchdog writes */
};


/* ---- request counters (by route and status) ---- */

#define STATUS_SLOTS 16
struct counter {
	unsigned status;
	unsigned long long n;
};
static pthread_mutex_t counters_mu = PTHREAD_MUTEX_INITIALIZER;
static struct counter counters[64][STATUS_SLOTS]; /* route index + 1 (0: unmatched) */

/* request latency (seconds, headers in to response queued) per route */
static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define LATENCY_BUCKETS (sizeof(latency_bounds) / sizeof(*latency_bounds))
static struct {
	unsigned long long buckets[LATENCY_BUCKETS + 1], count;
	double sum;
} latency[64];

static void count(int route, unsigned status, double seconds)
{
	size_t r = (size_t)(route + 1);
	if (r >= 64)
		return;
	size_t b = 0;
	while (b < LATENCY_BUCKETS && seconds > latency_bounds[b])
		b++;
	pthread_mutex_lock(&counters_mu);
	latency[r].buckets[b]++;
	latency[r].count++;
	latency[r].sum += seconds;
	for (size_t i = 0; i < STATUS_SLOTS; i++) {
		if (counters[r][i].status == status || counters[r][i].status == 0) {
			counters[r][i].status = status;
			counters[r][i].n++;
			break;
		}
	}
	pthread_mutex_unlock(&counters_mu);
}

/* 405s, by the first route of the path and the request's method */
static const char *const std_methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
					  "CONNECT", "TRACE", "other"};
#define N_STD_METHODS (sizeof(std_methods) / sizeof(std_methods[0]))
static unsigned long long not_allowed[64][N_STD_METHODS];

static void count_not_allowed(int route, const char *method)
{
	size_t m = 0;
	while (m + 1 < N_STD_METHODS && strcmp(std_methods[m], method))
		m++;
	if (route < 0 || route >= 64)
		return;
	pthread_mutex_lock(&counters_mu);
	not_allowed[route][m]++;
	pthread_mutex_unlock(&counters_mu);
}

void cal_http_render_metrics(FILE *f)
{
	fprintf(f, "# HELP calibd_http_requests_total HTTP requests by route and status.\n"
		   "# TYPE calibd_http_requests_total counter\n");
	pthread_mutex_lock(&counters_mu);
	for (size_t r = 0; r <= cal_n_routes && r < 64; r++) {
		for (size_t i = 0; i < STATUS_SLOTS && counters[r][i].status; i++) {
			const char *m = r ? cal_routes[r - 1].method : "";
			const char *p = r ? cal_routes[r - 1].pattern : "unmatched";
			fprintf(f, "calibd_http_requests_total{method=\"%s\",route=\"%s\",code=\"%u\"} %llu\n", m, p,
				counters[r][i].status, counters[r][i].n);
		}
	}
	for (size_t r = 0; r < cal_n_routes && r < 64; r++)
		for (size_t m = 0; m < N_STD_METHODS; m++)
			if (not_allowed[r][m])
				fprintf(f, "calibd_http_requests_total{method=\"%s\",route=\"%s\",code=\"405\"} %llu\n",
					std_methods[m], cal_routes[r].pattern, not_allowed[r][m]);
	fprintf(f, "# HELP calibd_http_request_duration_seconds Time from a request's headers to its response, "
		   "by route.\n# TYPE calibd_http_request_duration_seconds histogram\n");
	for (size_t r = 0; r <= cal_n_routes && r < 64; r++) {
		if (!latency[r].count)
			continue;
		const char *m = r ? cal_routes[r - 1].method : "";
		const char *p = r ? cal_routes[r - 1].pattern : "unmatched";
		unsigned long long cum = 0;
		for (size_t b = 0; b <= LATENCY_BUCKETS; b++) {
			cum += latency[r].buckets[b];
			char le[24];
			if (b < LATENCY_BUCKETS)
				snprintf(le, sizeof(le), "%g", latency_bounds[b]);
			else
				snprintf(le, sizeof(le), "+Inf");
			fprintf(f, "calibd_http_request_duration_seconds_bucket{method=\"%s\",route=\"%s\",le=\"%s\"} %llu\n",
				m, p, le, cum);
		}
		fprintf(f, "calibd_http_request_duration_seconds_sum{method=\"%s\",route=\"%s\"} %.6f\n", m, p,
			latency[r].sum);
		fprintf(f, "calibd_http_request_duration_seconds_count{method=\"%s\",route=\"%s\"} %llu\n", m, p,
			latency[r].count);
	}
	pthread_mutex_unlock(&counters_mu);
}

static void track_set(struct cal_http *h, void *track, int receiving, int replied, int restart);

/* ---- responses ---- */

enum MHD_Result cal_http_send(struct cal_http_req *r, unsigned status, struct MHD_Response *resp)
{
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	if (r->close)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	r->status = status;
	track_set(r->http, r->track, -1, 1, 0);
	enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

enum MHD_Result cal_http_json_h(struct cal_http_req *r, unsigned status, json_t *body, const char *hname,
				const char *hvalue)
{
	char *text = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(body);
	if (!text) {
		static const char fallback[] =
			"{\"error\":{\"code\":\"internal\",\"number\":1000,\"message\":\"cannot encode the response\",\"field\":null}}";
		text = strdup(fallback);
		status = 500;
		if (!text)
			return MHD_NO;
	}
	size_t len = strlen(text);
	text[len] = '\0';
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "application/json");
	if (hname && hvalue)
		MHD_add_response_header(resp, hname, hvalue);
	return cal_http_send(r, status, resp);
}

enum MHD_Result cal_http_json(struct cal_http_req *r, unsigned status, json_t *body)
{
	return cal_http_json_h(r, status, body, NULL, NULL);
}

enum MHD_Result cal_http_problem(struct cal_http_req *r, struct cal_api_problem *p)
{
	unsigned status = cal_api_err_http(p->err);
	json_t *body = cal_api_problem_json(p);
	/* what is left of a refused or malformed request is not read: close */
	if (p->err == CAL_API_ERR_BAD_REQUEST || status == 413 || status == 414 || status == 431)
		r->close = 1;
	const char *hn = NULL;
	char hv[32];
	hv[0] = '\0';
	if (p->err == CAL_API_ERR_UNAUTHORIZED) {
		hn = "WWW-Authenticate";
		snprintf(hv, sizeof(hv), "%s", p->field && !strcmp(p->field, "invalid") ?
			 "Bearer error=\"invalid_token\"" : "Bearer");
		free(p->field);
		p->field = NULL;
		json_object_set_new(json_object_get(body, "error"), "field", json_null());
	} else if (status == 503) {
		hn = "Retry-After";
		snprintf(hv, sizeof(hv), "%.0f", r->cfg ? r->cfg->retry_after_s : 30.0);
	} else if (p->err == CAL_API_ERR_METHOD_NOT_ALLOWED) {
		hn = "Allow";
		snprintf(hv, sizeof(hv), "%s", p->field ? p->field : "");
		free(p->field);
		p->field = NULL;
		json_object_set_new(json_object_get(body, "error"), "field", json_null());
	}
	enum MHD_Result ret = cal_http_json_h(r, status, body, hn, hn ? hv : NULL);
	cal_api_problem_clear(p);
	return ret;
}

enum MHD_Result cal_http_error(struct cal_http_req *r, enum cal_api_err e, const char *field, const char *fmt, ...)
{
	struct cal_api_problem p = {0};
	p.err = e;
	p.field = field ? strdup(field) : NULL;
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		if (vasprintf(&p.message, fmt, ap) < 0)
			p.message = NULL;
		va_end(ap);
	}
	return cal_http_problem(r, &p);
}

/* ---- routing ---- */

static int param_char_ok(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
	       c == '-' || c == '.';
}

/* Does path match pattern?  Copies the {..} segment into param; with
 * multi, the parameter may span '/'-separated segments. */
static int pattern_match(const char *pattern, const char *path, int multi, char *param)
{
	const char *p = pattern, *s = path;
	while (*p && *s) {
		if (*p == '{') {
			const char *close = strchr(p, '}');
			size_t n = 0;
			for (;;) {
				size_t seg = 0;
				while (s[n + seg] && s[n + seg] != '/') {
					if (!param_char_ok(s[n + seg]))
						return 0;
					seg++;
				}
				if (seg == 0 || s[n] == '.')
					return 0;
				n += seg;
				if (!multi || s[n] != '/')
					break;
				n++; /* the '/' between segments */
			}
			if (n >= CAL_PATH_PARAM_MAX)
				return 0;
			memcpy(param, s, n);
			param[n] = '\0';
			s += n;
			p = close + 1;
			continue;
		}
		if (*p != *s)
			return 0;
		p++;
		s++;
	}
	return *p == '\0' && *s == '\0';
}

int cal_route_match(const char *method, const char *path, char *param)
{
	int path_seen = 0;
	char tmp[CAL_PATH_PARAM_MAX];
	for (size_t i = 0; i < cal_n_routes; i++) {
		if (!pattern_match(cal_routes[i].pattern, path, !!(cal_routes[i].flags & CAL_ROUTE_PARAM_PATH), tmp))
			continue;
		path_seen = 1;
		if (!strcmp(cal_routes[i].method, method)) {
			memcpy(param, tmp, sizeof(tmp));
			return (int)i;
		}
	}
	return path_seen ? -2 : -1;
}

/* Lists in out the methods of the routes matching path; returns the index
 * of the first of them. */
static int allowed_methods(const char *path, char *out, size_t cap)
{
	char tmp[CAL_PATH_PARAM_MAX];
	int first = -1;
	out[0] = '\0';
	for (size_t i = 0; i < cal_n_routes; i++) {
		if (pattern_match(cal_routes[i].pattern, path, !!(cal_routes[i].flags & CAL_ROUTE_PARAM_PATH), tmp)) {
			size_t l = strlen(out);
			snprintf(out + l, cap - l, "%s%s", l ? ", " : "", cal_routes[i].method);
			if (first < 0)
				first = (int)i;
		}
	}
	return first;
}

/* ---- auth ---- */

/* 0: allowed; 1: no token; 2: wrong token.  Compares SHA-256 digests
 * against every configured token without an early exit. */
static int auth_check(struct cal_http_req *r)
{
	const struct cal_route *rt = &cal_routes[r->route];
	snprintf(r->client, sizeof(r->client), "anonymous");
	if (r->cfg->n_tokens == 0 || (rt->flags & CAL_ROUTE_PUBLIC))
		return 0;
	if (!(rt->flags & CAL_ROUTE_TOKEN) && !r->cfg->auth_read)
		return 0;
	const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h)
		return 1;
	if (strncasecmp(h, "Bearer ", 7))
		return 2;
	const char *tok = h + 7;
	while (*tok == ' ')
		tok++;
	size_t len = strlen(tok);
	while (len > 0 && tok[len - 1] == ' ')
		len--;
	if (len == 0 || len > 4096)
		return 2;
	uint8_t dg[CAL_SHA256_LEN];
	cal_sha256(tok, len, dg);
	int ok = 0;
	for (size_t i = 0; i < r->cfg->n_tokens; i++)
		ok |= cal_digest_equal(dg, r->cfg->tokens[i]);
	if (!ok)
		return 2;
	/* the client's identity (Idempotency-Key scope) is a hash of the
	 * token's digest under a domain prefix, truncated: stable across
	 * reloads and restarts, never the token nor its plain digest */
	struct cal_sha256 ctx;
	uint8_t id[CAL_SHA256_LEN];
	char hex[2 * CAL_SHA256_LEN + 1];
	cal_sha256_init(&ctx);
	cal_sha256_update(&ctx, "calibd-client-id\n", 17);
	cal_sha256_update(&ctx, dg, sizeof(dg));
	cal_sha256_final(&ctx, id);
	cal_sha256_hex(id, hex);
	snprintf(r->client, sizeof(r->client), "%.32s", hex);
	return 0;
}

/* ---- connection tracking and the request deadline ---- */

static struct conn_track *track_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

/* Updates the tracked state of a connection's current request: receiving
 * and replied (-1: unchanged); restart starts its clock again. */
static void track_set(struct cal_http *h, void *track, int receiving, int replied, int restart)
{
	struct conn_track *t = track;
	if (!h || !t)
		return;
	pthread_mutex_lock(&h->mu);
	if (restart)
		t->start = cal_now();
	if (receiving >= 0)
		t->receiving = receiving;
	if (replied >= 0)
		t->replied = replied;
	pthread_mutex_unlock(&h->mu);
}

static void notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			      enum MHD_ConnectionNotificationCode code)
{
	struct cal_http *h = cls;
	struct conn_track *t = *socket_context;
	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		if (!ci || !(t = calloc(1, sizeof(*t))))
			return; /* untracked: only the inactivity timeout applies */
		t->fd = ci->connect_fd;
		t->start = cal_now();
		t->receiving = 1;
		pthread_mutex_lock(&h->mu);
		t->next = h->conns;
		if (h->conns)
			h->conns->prev = t;
		h->conns = t;
		pthread_mutex_unlock(&h->mu);
		*socket_context = t;
	} else if (code == MHD_CONNECTION_NOTIFY_CLOSED && t) {
		pthread_mutex_lock(&h->mu);
		if (t->prev)
			t->prev->next = t->next;
		else
			h->conns = t->next;
		if (t->next)
			t->next->prev = t->prev;
		pthread_mutex_unlock(&h->mu);
		free(t);
		*socket_context = NULL;
	}
}

static void *watchdog_main(void *arg)
{
	struct cal_http *h = arg;
	size_t reply_len = strlen(h->timeout_reply);
	for (;;) {
		struct cal_config *c = cal_daemon_config(h->d);
		double limit = c->request_timeout_s;
		cal_config_unref(c);
		unsigned expired = 0;
		pthread_mutex_lock(&h->mu);
		if (h->stopping) {
			pthread_mutex_unlock(&h->mu);
			break;
		}
		double now = cal_now();
		for (struct conn_track *t = h->conns; t; t = t->next) {
			if (!t->receiving || t->expired || now - t->start < limit)
				continue;
			if (!t->replied && send(t->fd, h->timeout_reply, reply_len, MSG_NOSIGNAL | MSG_DONTWAIT) > 0)
				expired++;
			shutdown(t->fd, SHUT_RDWR);
			t->expired = 1;
		}
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 200 * 1000 * 1000;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&h->cv, &h->mu, &until);
		pthread_mutex_unlock(&h->mu);
		while (expired--)
			count(-1, 408, limit);
	}
	return NULL;
}

/* ---- the request line ---- */

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decoding of the path and query arguments, except "%00", which
 * stays as written: a decoded NUL would end the string early, and
 * "/livez%00abc" would be "/livez". */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
	(void)cls;
	(void)conn;
	char *w = s;
	for (const char *p = s; *p;) {
		int hi = p[0] == '%' ? hexval(p[1]) : -1, lo = hi >= 0 ? hexval(p[2]) : -1;
		if (lo >= 0 && (hi | lo)) {
			*w++ = (char)(hi * 16 + lo);
			p += 3;
		} else {
			*w++ = *p++;
		}
	}
	*w = '\0';
	return (size_t)(w - s);
}

/* Called with the request target as received, before MHD splits off the
 * query or decodes it: the request starts here, and its length up to the
 * first NUL byte is recorded (see raw_nul). */
static void *uri_logged(void *cls, const char *uri, struct MHD_Connection *conn)
{
	(void)cls;
	(void)conn;
	struct cal_http_req *r = calloc(1, sizeof(*r));
	if (r) {
		r->raw_url = uri;
		r->raw_url_len = strlen(uri);
	}
	return r;
}

/* Does the request target contain a NUL byte?  MHD keeps the request line
 * in one buffer, "METHOD SP target NUL version", and hands the handler
 * pointers into it: the target ends one byte before the version, so a
 * shorter string means a NUL inside it. */
static int raw_nul(const struct cal_http_req *r, const char *url, const char *version)
{
	uintptr_t u = (uintptr_t)url, v = (uintptr_t)version;
	if (r->raw_url != url || v <= u)
		return 0;
	return v - u - 1 != r->raw_url_len;
}

/* "application/json", any case, alone or followed by parameters. */
static int is_json_type(const char *ct)
{
	if (strncasecmp(ct, "application/json", 16))
		return 0;
	ct += 16;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	return *ct == '\0' || *ct == ';';
}

/* ---- the access handler ---- */

static enum MHD_Result first_call(struct cal_http *h, struct cal_http_req *r, struct MHD_Connection *conn,
				  const char *url, const char *method, const char *version)
{
	r->conn = conn;
	r->d = h->d;
	r->http = h;
	r->track = track_of(conn);
	r->cfg = cal_daemon_config(h->d);
	r->method = method;
	r->url = url;
	r->t0 = cal_now();
	r->route = -1;
	if (raw_nul(r, url, version))
		return cal_http_error(r, CAL_API_ERR_BAD_REQUEST, NULL, "the request target contains a NUL byte");
	if (r->raw_url_len > CAL_MAX_URL_BYTES)
		return cal_http_error(r, CAL_API_ERR_URI_TOO_LONG, NULL, NULL);
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
	if (ci && ci->header_size > CAL_MAX_HEADER_BYTES)
		return cal_http_error(r, CAL_API_ERR_HEADERS_TOO_LARGE, NULL, NULL);
	int route = cal_route_match(method, url, r->param);
	if (route >= 0 && h->admin && !(cal_routes[route].flags & CAL_ROUTE_ADMIN))
		route = -1;
	if (route == -1)
		return cal_http_error(r, CAL_API_ERR_ROUTE_NOT_FOUND, NULL, "no route for %s", "this path");
	if (route == -2) {
		char allow[128];
		r->not_allowed_route = allowed_methods(url, allow, sizeof(allow));
		return cal_http_error(r, CAL_API_ERR_METHOD_NOT_ALLOWED, allow, "use %s", allow);
	}
	r->route = route;
	int a = auth_check(r);
	if (a)
		return cal_http_error(r, CAL_API_ERR_UNAUTHORIZED, a == 2 ? "invalid" : NULL, NULL);
	if (cal_routes[r->route].flags & CAL_ROUTE_BODY) {
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		uint64_t n = 0;
		/* too many digits is too large; libmicrohttpd answers other bad values */
		if (cl && cal_parse_u64("Content-Length", cl, 0, CAL_MAX_BODY_BYTES, &n, NULL) ==
				  CAL_ERR_RANGE)
			return cal_http_error(r, CAL_API_ERR_BODY_TOO_LARGE, NULL, NULL);
		const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
		if (ct && !is_json_type(ct))
			return cal_http_error(r, CAL_API_ERR_UNSUPPORTED_MEDIA_TYPE, NULL, NULL);
	}
	return MHD_YES;
}

/* Takes n body bytes: 0, or -1 when the connection must be dropped. */
static int body_take(struct cal_http_req *r, const char *data, size_t n)
{
	if (r->status || r->body_too_large || !(cal_routes[r->route].flags & CAL_ROUTE_BODY)) {
		/* refused already (an error queued before the body, or a
		 * chunked body that outgrew the limit): drained, then dropped */
		r->discarded += n;
		return r->discarded > CAL_MAX_DISCARD_BYTES ? -1 : 0;
	}
	if (r->body_len + n > CAL_MAX_BODY_BYTES) {
		/* a response cannot be queued while MHD is reading the body:
		 * the 413 goes out once the body has arrived */
		r->body_too_large = 1;
		free(r->body);
		r->body = NULL;
		r->discarded = r->body_len + n;
		return 0;
	}
	if (r->body_len + n + 1 > r->body_cap) {
		size_t cap = r->body_cap ? r->body_cap : 4096;
		while (cap < r->body_len + n + 1)
			cap *= 2;
		if (cap > CAL_MAX_BODY_BYTES + 1)
			cap = CAL_MAX_BODY_BYTES + 1;
		char *nb = realloc(r->body, cap);
		if (!nb)
			return -1;
		r->body = nb;
		r->body_cap = cap;
	}
	memcpy(r->body + r->body_len, data, n);
	r->body_len += n;
	r->body[r->body_len] = '\0';
	return 0;
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
				      const char *method, const char *version, const char *upload_data,
				      size_t *upload_data_size, void **con_cls)
{
	struct cal_http *h = cls;
	struct cal_http_req *r = *con_cls;
	if (!r)
		return MHD_NO; /* out of memory in uri_logged */
	if (!r->conn)
		return first_call(h, r, conn, url, method, version);
	if (*upload_data_size > 0) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		return body_take(r, upload_data, n) ? MHD_NO : MHD_YES;
	}
	/* the whole request has arrived: its deadline no longer applies */
	track_set(h, r->track, 0, -1, 0);
	if (r->status)
		return MHD_YES;
	if (r->body_too_large)
		return cal_http_error(r, CAL_API_ERR_BODY_TOO_LARGE, NULL, NULL);
	return cal_routes[r->route].fn(r);
}

/* One line per request: method, route (the pattern, not the path: no
 * client bytes), status, duration, client address.  Probes and scrapes
 * that succeed are debug lines. */
static void access_log(struct MHD_Connection *conn, const struct cal_http_req *r, double dt)
{
	const char *route = r->route >= 0 ? cal_routes[r->route].pattern : "unmatched";
	int quiet = r->status < 400 && r->route >= 0 && !strcmp(cal_routes[r->route].method, "GET") &&
		    (!strcmp(route, "/livez") || !strcmp(route, "/readyz") || !strcmp(route, "/metrics"));
	enum cal_log_level lvl = quiet ? CAL_LOG_DEBUG : CAL_LOG_INFO;
	if (!cal_log_enabled(lvl))
		return;
	char addr[INET6_ADDRSTRLEN] = "?";
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;
	if (sa && sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, addr, sizeof(addr));
	else if (sa && sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, addr, sizeof(addr));
	char method[16];
	snprintf(method, sizeof(method), "%s", r->route >= 0 ? cal_routes[r->route].method : "?");
	if (r->route < 0 && r->method) {
		/* an unknown method is echoed only when it is a plain token */
		size_t n = strspn(r->method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
		if (n > 0 && n < sizeof(method) && !r->method[n])
			snprintf(method, sizeof(method), "%s", r->method);
	}
	cal_logj(lvl, "http_request",
		 json_pack("{s:s, s:s, s:i, s:f, s:s}", "method", method, "route", route, "status", (int)r->status,
			   "duration_ms", dt * 1000, "client", addr));
}

static void request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct cal_http *h = cls;
	struct cal_http_req *r = *con_cls;
	(void)toe;
	/* the next request on this connection starts its clock now */
	track_set(h, track_of(conn), 1, 0, 1);
	if (!r)
		return;
	if (r->status) {
		double dt = cal_now() - r->t0;
		if (r->status == 405)
			count_not_allowed(r->not_allowed_route, r->method);
		else
			count(r->route, r->status, dt);
		access_log(conn, r, dt);
	}
	cal_config_unref(r->cfg);
	free(r->body);
	free(r);
	*con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char *msg = NULL;
	if (vasprintf(&msg, fmt, ap) < 0)
		return;
	size_t l = strlen(msg);
	while (l > 0 && msg[l - 1] == '\n')
		msg[--l] = '\0';
	cal_log(CAL_LOG_WARN, "http", "message", msg, NULL);
	free(msg);
}

/* The raw 408 the watchdog writes (heap). */
static char *timeout_reply(void)
{
	struct cal_api_problem p = {.err = CAL_API_ERR_REQUEST_TIMEOUT};
	json_t *body = cal_api_problem_json(&p);
	char *text = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(body);
	cal_api_problem_clear(&p);
	char *out = NULL;
	if (text && asprintf(&out,
			     "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
			     "Cache-Control: no-store\r\nContent-Length: %zu\r\n\r\n%s", strlen(text), text) < 0)
		out = NULL;
	free(text);
	return out;
}

enum cal_status cal_http_start(struct cal_daemon *d, const struct cal_config *cfg, int admin,
			       struct cal_http **ret, struct cal_error *err)
{
	*ret = NULL;
	const char *listen = admin ? cfg->admin_listen : cfg->listen;
	int port = admin ? cfg->admin_port : cfg->port;
	struct cal_http *h = calloc(1, sizeof(*h));
	if (!h)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	h->d = d;
	h->admin = admin;
	pthread_mutex_init(&h->mu, NULL);
	pthread_cond_init(&h->cv, NULL);
	if (!(h->timeout_reply = timeout_reply())) {
		cal_http_stop(h);
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	}
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
			 MHD_USE_ITC | MHD_USE_ERROR_LOG;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, listen, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
	} else if (inet_pton(AF_INET6, listen, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		flags |= MHD_USE_IPv6;
	} else {
		cal_http_stop(h);
		return cal_error_set(err, CAL_ERR_INVALID, "%s: bad address %s", admin ? "admin_listen" : "listen",
				     listen);
	}
	/* the admin listener serves three cheap routes: a small fixed share */
	unsigned max_conn = admin ? 64 : (unsigned)cfg->max_connections;
	unsigned per_ip = admin ? 32 : (unsigned)cfg->per_ip_connections;
	h->mhd = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, access_handler, h,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				  MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
				  MHD_OPTION_CONNECTION_LIMIT, max_conn,
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->connection_timeout_s,
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CAL_HTTP_MHD_MEMORY,
				  MHD_OPTION_STRICT_FOR_CLIENT, (int)1,
				  MHD_OPTION_NOTIFY_COMPLETED, request_done, h,
				  MHD_OPTION_NOTIFY_CONNECTION, notify_connection, h,
				  MHD_OPTION_URI_LOG_CALLBACK, uri_logged, h,
				  MHD_OPTION_UNESCAPE_CALLBACK, unescape, h,
				  MHD_OPTION_END);
	if (!h->mhd) {
		cal_http_stop(h);
		return cal_error_set(err, CAL_ERR_IO, "cannot listen on %s port %d%s", listen, port,
				     admin ? " (admin_listen, admin_port)" : "");
	}
	if (pthread_create(&h->watchdog, NULL, watchdog_main, h)) {
		cal_http_stop(h);
		return cal_error_set(err, CAL_ERR_NOMEM, "cannot start the request deadline thread");
	}
	h->watchdog_started = 1;
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
	h->port = info ? info->port : (unsigned)port;
	*ret = h;
	return CAL_OK;
}

unsigned cal_http_port(const struct cal_http *h)
{
	return h->port;
}

void cal_http_quiesce(struct cal_http *h)
{
	if (!h || !h->mhd)
		return;
	MHD_socket s = MHD_quiesce_daemon(h->mhd);
	if (s != MHD_INVALID_SOCKET)
		close(s);
}

void cal_http_stop(struct cal_http *h)
{
	if (!h)
		return;
	if (h->watchdog_started) {
		pthread_mutex_lock(&h->mu);
		h->stopping = 1;
		pthread_cond_broadcast(&h->cv);
		pthread_mutex_unlock(&h->mu);
		pthread_join(h->watchdog, NULL);
	}
	if (h->mhd)
		MHD_stop_daemon(h->mhd);
	pthread_mutex_destroy(&h->mu);
	pthread_cond_destroy(&h->cv);
	free(h->timeout_reply);
	free(h);
}
