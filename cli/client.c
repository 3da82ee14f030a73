/*
 * client.c — requests to the daemon through libcurl (HTTP and HTTPS,
 * proxies from the environment, a URL path prefix) and the job-error →
 * exit-code table.
 */
#include "client.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "common/util.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* What the callbacks fill: the header block of the last response (a
 * proxy's CONNECT reply or a 100 Continue comes first: only the lines after
 * the last status line count) and the body, in memory streams. */
struct sink {
	FILE *hf, *bf;
	char *hdr, *body;
	size_t hlen, blen;
	long hstart;      /* offset of the last response's first header line */
	size_t received;  /* body bytes */
	int too_big;
};

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
	struct sink *s = arg;
	size_t len = size * n;
	if (len >= 5 && !strncmp(p, "HTTP/", 5)) {
		s->hstart = ftell(s->hf);
		return s->hstart < 0 ? 0 : len;
	}
	if (len <= 2 && (p[0] == '\r' || p[0] == '\n'))
		return len;
	if ((unsigned long)ftell(s->hf) + len > CAL_CLIENT_MAX_HEADERS)
		return 0;
	return fwrite(p, 1, len, s->hf);
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct sink *s = arg;
	size_t len = size * n;
	if (s->received + len > CAL_CLIENT_MAX_RESPONSE) {
		s->too_big = 1;
		return 0;
	}
	s->received += len;
	return fwrite(p, 1, len, s->bf);
}

char *cal_client_header(const struct cal_client_resp *r, const char *name)
{
	size_t nl = strlen(name);
	for (const char *p = r->headers; p && *p;) {
		size_t ll = strcspn(p, "\r\n");
		const char *eol = p + ll;
		if (ll > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
			const char *v = p + nl + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			return strndup(v, (size_t)(eol - v));
		}
		p = eol + strspn(eol, "\r\n");
	}
	return NULL;
}

enum cal_status cal_client_fetch(const char *base_url, const struct cal_client_opts *o, const char *method,
				 const char *path, const char *headers, const char *body, size_t body_len,
				 struct cal_client_resp *ret, struct cal_error *err)
{
	memset(ret, 0, sizeof(*ret));
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return cal_error_set(err, CAL_ERR_INTERNAL, "libcurl: %s", curl_easy_strerror(curl_init_rc));
	enum cal_status st = CAL_OK;
	struct sink sink = {0};
	struct curl_slist *hl = NULL;
	char *url = NULL, errbuf[CURL_ERROR_SIZE] = "";
	CURL *c = curl_easy_init();
	size_t bl = strlen(base_url);
	while (bl > 0 && base_url[bl - 1] == '/')
		bl--;
	sink.hf = open_memstream(&sink.hdr, &sink.hlen);
	sink.bf = open_memstream(&sink.body, &sink.blen);
	if (!c || !sink.hf || !sink.bf || asprintf(&url, "%.*s%s", (int)bl, base_url, path) < 0) {
		url = NULL;
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* "Name: value\r\n" lines, and no Expect: 100-continue round trip */
	for (const char *p = headers; p && *p;) {
		size_t ll = strcspn(p, "\r\n");
		if (ll) {
			char *line = strndup(p, ll);
			struct curl_slist *nl = line ? curl_slist_append(hl, line) : NULL;
			if (line)
				explicit_bzero(line, ll);
			free(line);
			if (!nl) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
				goto out;
			}
			hl = nl;
		}
		p += ll + strspn(p + ll, "\r\n");
	}
	struct curl_slist *nl = curl_slist_append(hl, "Expect:");
	if (nl && body)
		nl = curl_slist_append(nl, "Content-Type: application/json");
	if (!nl) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto out;
	}
	hl = nl;
	double t = o && o->timeout_s > 0 ? o->timeout_s : 30;
	char ua[64];
	snprintf(ua, sizeof(ua), "calibd/%s", CAL_VERSION);
	curl_easy_setopt(c, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	/* the path as given: no dot-segment squashing (the API decides) */
	curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_USERAGENT, ua);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(t * 1000));
	/* at most t seconds without a byte, as long as the reply streams */
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(t < 1 ? 1 : t));
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &sink);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
	if (o && o->cacert)
		curl_easy_setopt(c, CURLOPT_CAINFO, o->cacert);
	if (o && o->no_proxy)
		curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	if (body) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	}
	if (strcmp(method, body ? "POST" : "GET"))
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	CURLcode rc = curl_easy_perform(c);
	if (rc != CURLE_OK) {
		if (sink.too_big)
			st = cal_error_set(err, CAL_ERR_RANGE, "response larger than %u bytes", CAL_CLIENT_MAX_RESPONSE);
		else if (rc == CURLE_OUT_OF_MEMORY || rc == CURLE_WRITE_ERROR)
			st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		else if (rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_URL_MALFORMAT)
			st = cal_error_set(err, CAL_ERR_INVALID, "%.*s: %s", (int)bl, base_url,
					   *errbuf ? errbuf : curl_easy_strerror(rc));
		else
			st = cal_error_set(err, CAL_ERR_IO, "%.*s: %s", (int)bl, base_url,
					   *errbuf ? errbuf : curl_easy_strerror(rc));
		goto out;
	}
	long code = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	int bad = fclose(sink.hf) != 0;
	bad |= fclose(sink.bf) != 0;
	sink.hf = sink.bf = NULL;
	if (bad || !sink.hdr || !sink.body) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto out;
	}
	ret->status = (int)code;
	ret->headers = strdup(sink.hdr + sink.hstart);
	ret->body = sink.body;
	ret->len = sink.blen;
	sink.body = NULL;
	if (!ret->headers)
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
out:
	if (st)
		cal_client_resp_free(ret);
	if (sink.hf)
		fclose(sink.hf);
	if (sink.bf)
		fclose(sink.bf);
	curl_slist_free_all(hl);
	if (c)
		curl_easy_cleanup(c);
	free(url);
	free(sink.hdr);
	free(sink.body);
	return st;
}

enum cal_status cal_client_request(const char *host, const char *port, const char *method, const char *path,
				   const char *headers, const char *body, size_t body_len, double timeout_s,
				   struct cal_client_resp *ret, struct cal_error *err)
{
	char base[300];
	snprintf(base, sizeof(base), strchr(host, ':') ? "http://[%s]:%s" : "http://%s:%s", host, port);
	struct cal_client_opts o = {.timeout_s = timeout_s, .no_proxy = 1};
	return cal_client_fetch(base, &o, method, path, headers, body, body_len, ret, err);
}

void cal_client_resp_free(struct cal_client_resp *r)
{
	if (!r)
		return;
	free(r->body);
	free(r->headers);
	memset(r, 0, sizeof(*r));
}

enum cal_status cal_client_check_url(const char *url, struct cal_error *err)
{
	const char *h = !strncmp(url, "http://", 7) ? url + 7 : !strncmp(url, "https://", 8) ? url + 8 : NULL;
	if (!h)
		return cal_error_set(err, CAL_ERR_INVALID, "url '%s' must start with http:// or https://", url);
	if (!*h || *h == '/' || *h == ':')
		return cal_error_set(err, CAL_ERR_INVALID, "url '%s' has no host", url);
	if (strpbrk(url, "?# \t\r\n"))
		return cal_error_set(err, CAL_ERR_INVALID, "url '%s': a query, fragment or space has no place here",
				     url);
	return CAL_OK;
}
