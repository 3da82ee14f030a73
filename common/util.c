/* util.c — whole-file reading, path joining, clocks. */
#include "util.h"

#include "confine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int cal_name_val_find(const struct cal_name_val *t, size_t n, const char *name, int *ret)
{
	for (size_t i = 0; name && i < n; i++)
		if (!strcmp(t[i].name, name)) {
			*ret = t[i].val;
			return 0;
		}
	return -1;
}

void *cal_grow(void *v, size_t *cap, size_t need, size_t elem_size, size_t min_cap)
{
	if (need <= *cap)
		return v;
	size_t n = *cap ? *cap : min_cap ? min_cap : 1, bytes;
	while (n < need)
		if (__builtin_mul_overflow(n, 2, &n))
			return NULL;
	if (__builtin_mul_overflow(n, elem_size, &bytes))
		return NULL;
	void *nv = realloc(v, bytes ? bytes : 1);
	if (nv)
		*cap = n;
	return nv;
}

enum cal_status cal_open_regular(const char *path, const char *open_what, int *ret_fd,
				 uint64_t *ret_size, struct cal_error *err)
{
	*ret_fd = -1;
	*ret_size = 0;
	int fd = cal_open_confined(path, O_RDONLY, 0);
	if (fd < 0)
		return cal_error_set(err, errno == ENOENT ? CAL_ERR_NOTFOUND : CAL_ERR_IO,
				     "%s: %s%s", path, open_what, cal_confine_strerror(errno));
	struct stat sb;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		return cal_error_set(err, CAL_ERR_IO, "%s: not a regular file", path);
	}
	*ret_fd = fd;
	*ret_size = (uint64_t)sb.st_size;
	return CAL_OK;
}

enum cal_status cal_read_file(const char *path, size_t max_bytes, char **ret,
			      size_t *ret_len, struct cal_error *err)
{
	*ret = NULL;
	if (ret_len)
		*ret_len = 0;
	int fd;
	uint64_t size;
	enum cal_status st = cal_open_regular(path, "", &fd, &size, err);
	if (st < 0)
		return st;
	if (size > max_bytes) {
		close(fd);
		return cal_error_set(err, CAL_ERR_RANGE, "%s: %lld bytes exceeds the limit of %zu",
				     path, (long long)size, max_bytes);
	}
	size_t n = (size_t)size;
	char *buf = malloc(n + 1);
	if (!buf) {
		close(fd);
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", path);
	}
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = errno;
			free(buf);
			close(fd);
			return cal_error_set(err, CAL_ERR_IO, "%s: read failed: %s", path,
					     r == 0 ? "short read" : strerror(e));
		}
		got += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*ret = buf;
	if (ret_len)
		*ret_len = n;
	return CAL_OK;
}

enum cal_status cal_path_join_checked(const char *dir, const char *name, char **ret,
				      struct cal_error *err)
{
	size_t dl = strlen(dir), nl = strlen(name);
	size_t sep = dl > 0 && dir[dl - 1] == '/' ? 0 : 1;
	char *s;
	*ret = NULL;
	if (dl + sep + nl >= PATH_MAX)
		return cal_error_set(err, CAL_ERR_RANGE, "path too long: '%.64s...' and '%.64s' "
				     "join to %zu bytes, PATH_MAX is %d", dir, name, dl + sep + nl,
				     PATH_MAX);
	s = malloc(dl + sep + nl + 1);
	if (!s)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	memcpy(s, dir, dl);
	s[dl] = '/';
	memcpy(s + dl + sep, name, nl + 1);
	*ret = s;
	return CAL_OK;
}

char *cal_path_join(const char *dir, const char *name)
{
	char *s = NULL;
	(void)cal_path_join_checked(dir, name, &s, NULL);
	return s;
}

const char *cal_fmt_scaled(char *buf, size_t cap, double v, double base, int prec,
			   const char *unit)
{
	static const char *const si[] = {"", "K", "M", "G", "T"};
	static const char *const iec[] = {"", "Ki", "Mi", "Gi", "Ti"};
	int i = 0;
	while (v >= base && i < 4) {
		v /= base;
		i++;
	}
	const char *prefix = base == 1024 ? iec[i] : si[i];
	snprintf(buf, cap, "%.*f%s%s%s", i ? prec : 0, v, *prefix || *unit ? " " : "", prefix,
		 unit);
	return buf;
}

double cal_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cal_cond_init_monotonic(pthread_cond_t *cv)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

char *cal_str_scrub_dir(const char *msg, const char *dir)
{
	size_t dl = strlen(dir);
	char *out = malloc(strlen(msg) + 1), *o = out;
	if (!out)
		return NULL;
	for (const char *m = msg; *m;) {
		if (dl && !strncmp(m, dir, dl) && m[dl] == '/') {
			m += dl + 1;
			continue;
		}
		*o++ = *m++;
	}
	*o = '\0';
	return out;
}
