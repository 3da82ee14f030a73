/*
 * http.c — libmicrohttpd set-up and the dispatcher (see http.h).  Order of
 * checks for every request: route (404/405), token (401), Content-Length
 * and Content-Type (413/415, answered before any body byte is read), body
 * accumulation capped at CAL_MAX_BODY_BYTES, then the handler.  MHD's
 * PostProcessor is never used.
 */
#include "http.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "api/sha256.h"
#include "common/util.h"
#include "daemon/log.h"

struct cal_http {
	struct MHD_Daemon *mhd;
	struct cal_daemon *d;
	unsigned port;
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

/* ---- responses ---- */

enum MHD_Result cal_http_send(struct cal_http_req *r, unsigned status, struct MHD_Response *resp)
{
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	r->status = status;
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

static void allowed_methods(const char *path, char *out, size_t cap)
{
	char tmp[CAL_PATH_PARAM_MAX];
	out[0] = '\0';
	for (size_t i = 0; i < cal_n_routes; i++) {
		if (pattern_match(cal_routes[i].pattern, path, !!(cal_routes[i].flags & CAL_ROUTE_PARAM_PATH), tmp)) {
			size_t l = strlen(out);
			snprintf(out + l, cap - l, "%s%s", l ? ", " : "", cal_routes[i].method);
		}
	}
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
	if (!(rt->flags & CAL_ROUTE_MUTATING) && !r->cfg->auth_read)
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

/* ---- the access handler ---- */

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
				      const char *method, const char *version, const char *upload_data,
				      size_t *upload_data_size, void **con_cls)
{
	struct cal_http *h = cls;
	struct cal_http_req *r = *con_cls;
	(void)version;
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return MHD_NO;
		*con_cls = r;
		r->conn = conn;
		r->d = h->d;
		r->cfg = cal_daemon_config(h->d);
		r->method = method;
		r->url = url;
		r->t0 = cal_now();
		r->route = cal_route_match(method, url, r->param);
		if (r->route == -1)
			return cal_http_error(r, CAL_API_ERR_ROUTE_NOT_FOUND, NULL, "no route for %s", "this path");
		if (r->route == -2) {
			char allow[128];
			allowed_methods(url, allow, sizeof(allow));
			r->route = -1;
			return cal_http_error(r, CAL_API_ERR_METHOD_NOT_ALLOWED, allow, "use %s", allow);
		}
		int a = auth_check(r);
		if (a)
			return cal_http_error(r, CAL_API_ERR_UNAUTHORIZED, a == 2 ? "invalid" : NULL, NULL);
		if (cal_routes[r->route].flags & CAL_ROUTE_BODY) {
			const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
								     MHD_HTTP_HEADER_CONTENT_LENGTH);
			if (cl && strtoull(cl, NULL, 10) > CAL_MAX_BODY_BYTES)
				return cal_http_error(r, CAL_API_ERR_BODY_TOO_LARGE, NULL, NULL);
			const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
								     MHD_HTTP_HEADER_CONTENT_TYPE);
			if (ct && strncasecmp(ct, "application/json", 16))
				return cal_http_error(r, CAL_API_ERR_UNSUPPORTED_MEDIA_TYPE, NULL, NULL);
		}
		return MHD_YES;
	}
	if (r->status) {
		*upload_data_size = 0; /* an early error reply is queued: discard the body */
		return MHD_YES;
	}
	if (*upload_data_size > 0) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (!(cal_routes[r->route].flags & CAL_ROUTE_BODY) || r->body_too_large)
			return MHD_YES;
		if (r->body_len + n > CAL_MAX_BODY_BYTES) {
			r->body_too_large = 1;
			free(r->body);
			r->body = NULL;
			return cal_http_error(r, CAL_API_ERR_BODY_TOO_LARGE, NULL, NULL);
		}
		if (r->body_len + n + 1 > r->body_cap) {
			size_t cap = r->body_cap ? r->body_cap : 4096;
			while (cap < r->body_len + n + 1)
				cap *= 2;
			if (cap > CAL_MAX_BODY_BYTES + 1)
				cap = CAL_MAX_BODY_BYTES + 1;
			char *nb = realloc(r->body, cap);
			if (!nb)
				return MHD_NO;
			r->body = nb;
			r->body_cap = cap;
		}
		memcpy(r->body + r->body_len, upload_data, n);
		r->body_len += n;
		r->body[r->body_len] = '\0';
		return MHD_YES;
	}
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
	struct cal_http_req *r = *con_cls;
	(void)cls;
	(void)conn;
	(void)toe;
	if (!r)
		return;
	if (r->status) {
		double dt = cal_now() - r->t0;
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

enum cal_status cal_http_start(struct cal_daemon *d, const struct cal_config *cfg, struct cal_http **ret,
			       struct cal_error *err)
{
	*ret = NULL;
	struct cal_http *h = calloc(1, sizeof(*h));
	if (!h)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	h->d = d;
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
			 MHD_USE_ITC | MHD_USE_ERROR_LOG;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, cfg->listen, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)cfg->port);
	} else if (inet_pton(AF_INET6, cfg->listen, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)cfg->port);
		flags |= MHD_USE_IPv6;
	} else {
		free(h);
		return cal_error_set(err, CAL_ERR_INVALID, "listen: bad address %s", cfg->listen);
	}
	h->mhd = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, access_handler, h,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				  MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->per_ip_connections,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->connection_timeout_s,
				  MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32 * 1024),
				  MHD_OPTION_STRICT_FOR_CLIENT, (int)1,
				  MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL,
				  MHD_OPTION_END);
	if (!h->mhd) {
		free(h);
		return cal_error_set(err, CAL_ERR_IO, "cannot listen on %s port %d", cfg->listen, cfg->port);
	}
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
	h->port = info ? info->port : (unsigned)cfg->port;
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
	if (h->mhd)
		MHD_stop_daemon(h->mhd);
	free(h);
}
