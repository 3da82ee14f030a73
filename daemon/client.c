/*
 * client.c — a small blocking HTTP/1.1 client (Connection: close) and the
 * job-error → exit-code table.
 */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"
#include "common/util.h"

static int wait_fd(int fd, short ev, double timeout_s)
{
	struct pollfd p = {.fd = fd, .events = ev};
	int r;
	do
		r = poll(&p, 1, (int)(timeout_s * 1000));
	while (r < 0 && errno == EINTR);
	return r;
}

static int dial(const char *host, const char *port, double timeout_s, struct cal_error *err)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
	int g = getaddrinfo(host, port, &hints, &res);
	if (g) {
		cal_error_set(err, CAL_ERR_IO, "%s:%s: %s", host, port, gai_strerror(g));
		return -1;
	}
	int fd = -1, last = 0;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, timeout_s) > 0) {
			int so = 0;
			socklen_t sl = sizeof(so);
			getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl);
			if (so == 0)
				break;
			last = so;
		} else {
			last = errno ? errno : ETIMEDOUT;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		cal_error_set(err, CAL_ERR_IO, "cannot connect to %s:%s: %s", host, port, strerror(last));
	return fd;
}

static enum cal_status send_all(int fd, const char *p, size_t n, double timeout_s, struct cal_error *err)
{
	while (n > 0) {
		if (wait_fd(fd, POLLOUT, timeout_s) <= 0)
			return cal_error_set(err, CAL_ERR_IO, "send: timed out");
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (w < 0)
			return cal_error_set(err, CAL_ERR_IO, "send: %s", strerror(errno));
		p += w;
		n -= (size_t)w;
	}
	return CAL_OK;
}

/* De-chunks body in place.  Returns the new length, or -1 when malformed
 * or incomplete. */
static long dechunk(char *b, size_t n)
{
	size_t in = 0, out = 0;
	for (;;) {
		char *end;
		if (in >= n)
			return -1;
		unsigned long sz = strtoul(b + in, &end, 16);
		char *crlf = strstr(b + in, "\r\n");
		if (!crlf || end == b + in)
			return -1;
		in = (size_t)(crlf - b) + 2;
		if (sz == 0)
			return (long)out;
		if (sz > n - in)
			return -1;
		memmove(b + out, b + in, sz);
		out += sz;
		in += sz + 2;
	}
}

char *cal_client_header(const struct cal_client_resp *r, const char *name)
{
	size_t nl = strlen(name);
	for (const char *p = r->headers; p && *p;) {
		const char *eol = strstr(p, "\r\n");
		if (!eol)
			eol = p + strlen(p);
		if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
			const char *v = p + nl + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			return strndup(v, (size_t)(eol - v));
		}
		p = *eol ? eol + 2 : eol;
	}
	return NULL;
}

enum cal_status cal_client_request(const char *host, const char *port, const char *method, const char *path,
				   const char *headers, const char *body, size_t body_len, double timeout_s,
				   struct cal_client_resp *ret, struct cal_error *err)
{
	memset(ret, 0, sizeof(*ret));
	enum cal_status st = CAL_OK;
	char *req = NULL, *buf = NULL;
	size_t len = 0, cap = 0;
	int fd = dial(host, port, timeout_s, err);
	if (fd < 0)
		return CAL_ERR_IO;
	size_t reqlen = 0;
	FILE *f = open_memstream(&req, &reqlen);
	if (!f) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto out;
	}
	fprintf(f, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\nUser-Agent: calibd/%s\r\n%s",
		method, path, host, port, CAL_VERSION, headers ? headers : "");
	if (body)
		fprintf(f, "Content-Type: application/json\r\nContent-Length: %zu\r\n", body_len);
	fputs("\r\n", f);
	if (fclose(f) != 0 || !req) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto out;
	}
	CAL_TRY(send_all(fd, req, strlen(req), timeout_s, err));
	if (body)
		CAL_TRY(send_all(fd, body, body_len, timeout_s, err));
	for (;;) {
		if (len + 65536 + 1 > cap) {
			if (cap >= CAL_CLIENT_MAX_RESPONSE) {
				st = cal_error_set(err, CAL_ERR_RANGE, "response larger than %u bytes",
						   CAL_CLIENT_MAX_RESPONSE);
				goto out;
			}
			cap = cap ? 2 * cap : 65536 * 2;
			char *nb = realloc(buf, cap);
			if (!nb) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
				goto out;
			}
			buf = nb;
		}
		if (wait_fd(fd, POLLIN, timeout_s) <= 0) {
			st = cal_error_set(err, CAL_ERR_IO, "no response from %s:%s within %.0f s", host, port, timeout_s);
			goto out;
		}
		ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r < 0) {
			st = cal_error_set(err, CAL_ERR_IO, "recv: %s", strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		len += (size_t)r;
		buf[len] = '\0';
		/* stop early when Content-Length says we have it all */
		char *hend = strstr(buf, "\r\n\r\n");
		if (hend) {
			struct cal_client_resp tmp = {.headers = buf};
			*hend = '\0';
			char *cl = cal_client_header(&tmp, "Content-Length");
			*hend = '\r';
			if (cl && len - (size_t)(hend + 4 - buf) >= strtoull(cl, NULL, 10)) {
				free(cl);
				break;
			}
			free(cl);
		}
	}
	if (!buf || strncmp(buf, "HTTP/1.", 7) || len < 12) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%s: not an HTTP response", host, port);
		goto out;
	}
	buf[len] = '\0';
	char *hend = strstr(buf, "\r\n\r\n");
	if (!hend) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%s: truncated HTTP response", host, port);
		goto out;
	}
	*hend = '\0';
	ret->status = atoi(buf + 9);
	char *line_end = strstr(buf, "\r\n");
	ret->headers = strdup(line_end ? line_end + 2 : "");
	char *te = cal_client_header(ret, "Transfer-Encoding");
	char *cl = cal_client_header(ret, "Content-Length");
	char *b = hend + 4;
	size_t blen = len - (size_t)(b - buf);
	if (te && !strcasecmp(te, "chunked")) {
		long l = dechunk(b, blen);
		if (l < 0) {
			free(te);
			free(cl);
			st = cal_error_set(err, CAL_ERR_IO, "%s:%s: incomplete chunked response", host, port);
			goto out;
		}
		blen = (size_t)l;
	} else if (cl && strtoull(cl, NULL, 10) < blen) {
		blen = strtoull(cl, NULL, 10);
	}
	free(te);
	free(cl);
	ret->body = malloc(blen + 1);
	if (!ret->body || !ret->headers) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(ret->body, b, blen);
	ret->body[blen] = '\0';
	ret->len = blen;
fail:
out:
	if (st)
		cal_client_resp_free(ret);
	close(fd);
	free(req);
	free(buf);
	return st;
}

void cal_client_resp_free(struct cal_client_resp *r)
{
	if (!r)
		return;
	free(r->body);
	free(r->headers);
	memset(r, 0, sizeof(*r));
}

enum cal_status cal_client_parse_url(const char *url, char **ret_host, char **ret_port, struct cal_error *err)
{
	*ret_host = *ret_port = NULL;
	if (strncmp(url, "http://", 7))
		return cal_error_set(err, CAL_ERR_INVALID, "url '%s' must start with http://", url);
	const char *h = url + 7, *hend, *p;
	if (*h == '[') {
		hend = strchr(h, ']');
		if (!hend)
			return cal_error_set(err, CAL_ERR_INVALID, "url '%s': unterminated [", url);
		h++;
		p = hend + 1;
	} else {
		hend = h + strcspn(h, ":/");
		p = hend;
	}
	const char *port = "80";
	size_t plen = 2;
	if (*p == ':') {
		port = p + 1;
		plen = strcspn(port, "/");
	}
	if (hend == h || plen == 0 || plen > 5)
		return cal_error_set(err, CAL_ERR_INVALID, "url '%s' has no host or a bad port", url);
	*ret_host = strndup(h, (size_t)(hend - h));
	*ret_port = strndup(port, plen);
	if (!*ret_host || !*ret_port) {
		free(*ret_host);
		free(*ret_port);
		*ret_host = *ret_port = NULL;
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	}
	return CAL_OK;
}

/* mirrors cal_exit_from_status() (main.c), which this library cannot call */
static const struct {
	enum cal_status st;
	const char *code;
	int exit;
} status_codes[] = {
	{CAL_ERR_NOMEM, "nomem", CAL_EXIT_FAILURE},
	{CAL_ERR_IO, "io", CAL_EXIT_FAILURE},
	{CAL_ERR_FORMAT, "format", CAL_EXIT_BAD_INPUT},
	{CAL_ERR_INVALID, "invalid", CAL_EXIT_BAD_INPUT},
	{CAL_ERR_UNSUPPORTED, "unsupported", CAL_EXIT_BAD_INPUT},
	{CAL_ERR_NOSPACE, "nospace", CAL_EXIT_NOSPACE},
	{CAL_ERR_EXISTS, "exists", CAL_EXIT_BAD_INPUT},
	{CAL_ERR_NOTFOUND, "notfound", CAL_EXIT_BAD_INPUT},
	{CAL_ERR_DEVICE, "device", CAL_EXIT_DEVICE},
	{CAL_ERR_RANGE, "range", CAL_EXIT_BAD_INPUT},
	{CAL_ERR_INTERRUPTED, "interrupted", CAL_EXIT_INTERRUPTED},
	{CAL_ERR_NUMERIC, "numeric", CAL_EXIT_BAD_INPUT},
	{CAL_ERR_INTERNAL, "internal", CAL_EXIT_FAILURE},
};

const char *cal_status_code(enum cal_status st)
{
	for (size_t i = 0; i < CAL_ARRAY_LEN(status_codes); i++)
		if (status_codes[i].st == st)
			return status_codes[i].code;
	return st == CAL_OK ? "ok" : "internal";
}

int cal_exit_from_job_error(const char *code)
{
	if (!code)
		return CAL_EXIT_FAILURE;
	for (size_t i = 0; i < CAL_ARRAY_LEN(status_codes); i++)
		if (!strcmp(status_codes[i].code, code))
			return status_codes[i].exit;
	/* failures of the worker process, not of the input: worth a retry */
	static const char *const retriable[] = {"worker_crashed", "progress_timeout", "daemon_restarted",
						"daemon_shutdown", "spawn_failed"};
	for (size_t i = 0; i < CAL_ARRAY_LEN(retriable); i++)
		if (!strcmp(retriable[i], code))
			return CAL_EXIT_DEVICE;
	if (!strcmp(code, "cancelled") || !strcmp(code, "job_timeout"))
		return CAL_EXIT_INTERRUPTED;
	if (!strcmp(code, "devices_unavailable"))
		return CAL_EXIT_BAD_INPUT;
	return CAL_EXIT_FAILURE;
}
