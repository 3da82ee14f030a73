/*
 * fsutil.c — atomic durable writes and path confinement (see fsutil.h).
 */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/util.h"

static enum cal_status io_status(int e)
{
	return (e == ENOSPC || e == EDQUOT) ? CAL_ERR_NOSPACE : CAL_ERR_IO;
}

enum cal_status cal_fsync_dir(const char *path, struct cal_error *err)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return cal_error_set(err, CAL_ERR_IO, "%s: %s", path, strerror(errno));
	if (fsync(fd) < 0) {
		int e = errno;
		close(fd);
		return cal_error_set(err, io_status(e), "fsync %s: %s", path, strerror(e));
	}
	close(fd);
	return CAL_OK;
}

static enum cal_status write_atomic(const char *dir, const char *name, const char *prev, const void *data,
				    size_t n, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	char *tmp = NULL, *dst = NULL, *old = NULL;
	int fd = -1;
	if (asprintf(&tmp, "%s/.%s.tmp", dir, name) < 0) {
		tmp = NULL;
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	dst = cal_path_join(dir, name);
	if (!dst) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
	if (fd < 0) {
		st = cal_error_set(err, io_status(errno), "%s: %s", tmp, strerror(errno));
		goto fail;
	}
	const char *p = data;
	size_t left = n;
	while (left > 0) {
		ssize_t w = write(fd, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			st = cal_error_set(err, io_status(errno), "write %s: %s", tmp, strerror(errno));
			goto fail;
		}
		p += w;
		left -= (size_t)w;
	}
	/* a failed fsync is final: the temp file is dropped, never retried */
	if (fsync(fd) < 0) {
		st = cal_error_set(err, io_status(errno), "fsync %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		st = cal_error_set(err, io_status(errno), "close %s: %s", tmp, strerror(errno));
		goto fail;
	}
	fd = -1;
	if (prev) {
		/* keep the current generation as `prev` by a second link: `name`
		 * exists at every moment, and a crash leaves at worst no prev */
		old = cal_path_join(dir, prev);
		if (!old) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
			goto fail;
		}
		if (unlink(old) < 0 && errno != ENOENT) {
			st = cal_error_set(err, io_status(errno), "unlink %s: %s", old, strerror(errno));
			goto fail;
		}
		if (link(dst, old) < 0 && errno != ENOENT) {
			st = cal_error_set(err, io_status(errno), "link %s: %s", old, strerror(errno));
			goto fail;
		}
	}
	if (rename(tmp, dst) < 0) {
		st = cal_error_set(err, io_status(errno), "rename %s: %s", dst, strerror(errno));
		goto fail;
	}
	st = cal_fsync_dir(dir, err);
	free(tmp);
	free(dst);
	free(old);
	return st;
fail:
	if (fd >= 0)
		close(fd);
	if (tmp)
		unlink(tmp);
	free(tmp);
	free(dst);
	free(old);
	return st;
}

enum cal_status cal_write_atomic(const char *dir, const char *name, const void *data,
				 size_t n, struct cal_error *err)
{
	return write_atomic(dir, name, NULL, data, n, err);
}

enum cal_status cal_write_atomic_keep(const char *dir, const char *name, const char *prev, const void *data,
				      size_t n, struct cal_error *err)
{
	return write_atomic(dir, name, prev, data, n, err);
}

int cal_free_percent(const char *path, double *ret)
{
	struct statvfs sv;
	if (statvfs(path, &sv) < 0)
		return -1;
	if (sv.f_blocks == 0) {
		*ret = 100;
		return 0;
	}
	*ret = 100.0 * (double)sv.f_bavail / (double)sv.f_blocks;
	return 0;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	if (flag == FTW_DP)
		return rmdir(p) < 0 && errno != ENOENT ? -1 : 0;
	return unlink(p) < 0 && errno != ENOENT ? -1 : 0;
}

enum cal_status cal_rmtree(const char *path, struct cal_error *err)
{
	/* FTW_PHYS: symbolic links are removed, never followed */
	if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 && errno != ENOENT)
		return cal_error_set(err, io_status(errno), "remove %s: %s", path, strerror(errno));
	return CAL_OK;
}

enum cal_status cal_mkdir_durable(const char *path, int excl, struct cal_error *err)
{
	if (mkdir(path, 0750) < 0 && (excl || errno != EEXIST))
		return cal_error_set(err, errno == EEXIST ? CAL_ERR_EXISTS : io_status(errno),
				     "mkdir %s: %s", path, strerror(errno));
	char *parent = strdup(path);
	if (!parent)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	char *slash = strrchr(parent, '/');
	if (slash == parent)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		strcpy(parent, ".");
	enum cal_status st = cal_fsync_dir(parent, err);
	free(parent);
	return st;
}

enum cal_status cal_mkdir_p(const char *path, struct cal_error *err)
{
	char *p = strdup(path);
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	for (char *s = p + 1;; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = '\0';
			if (mkdir(p, 0750) < 0 && errno != EEXIST) {
				enum cal_status st = cal_error_set(err, io_status(errno), "mkdir %s: %s",
								   p, strerror(errno));
				free(p);
				return st;
			}
			*s = c;
			if (c == '\0')
				break;
		}
	}
	free(p);
	return CAL_OK;
}

int cal_path_under(const char *real, const char *root)
{
	size_t rl = strlen(root);
	if (rl == 1 && root[0] == '/')
		return real[0] == '/';
	return strncmp(real, root, rl) == 0 && (real[rl] == '\0' || real[rl] == '/');
}

enum cal_status cal_path_confine(const char *path, char *const *roots, size_t nroots,
				 int must_exist, char **ret_real, struct cal_error *err)
{
	*ret_real = NULL;
	size_t len = strlen(path);
	if (len == 0 || path[0] != '/')
		return cal_error_set(err, CAL_ERR_INVALID, "must be an absolute path");
	if (len >= 4096)
		return cal_error_set(err, CAL_ERR_INVALID, "path longer than 4095 bytes");
	for (const unsigned char *p = (const unsigned char *)path; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return cal_error_set(err, CAL_ERR_INVALID, "path contains a control character");
	if (nroots == 0)
		return cal_error_set(err, CAL_ERR_RANGE, "no root directory is configured for this kind of path");
	char *real = NULL;
	if (must_exist) {
		real = realpath(path, NULL);
		if (!real)
			return cal_error_set(err, errno == ENOENT ? CAL_ERR_NOTFOUND : CAL_ERR_INVALID,
					     "%s", strerror(errno));
	} else {
		char *dup = strdup(path);
		if (!dup)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		while (len > 1 && dup[len - 1] == '/')
			dup[--len] = '\0';
		char *slash = strrchr(dup, '/');
		const char *name = slash + 1;
		if (!*name || !strcmp(name, ".") || !strcmp(name, "..")) {
			free(dup);
			return cal_error_set(err, CAL_ERR_INVALID, "the last path component must be a plain name");
		}
		*slash = '\0';
		char *preal = realpath(slash == dup ? "/" : dup, NULL);
		if (!preal) {
			int e = errno;
			free(dup);
			return cal_error_set(err, e == ENOENT ? CAL_ERR_NOTFOUND : CAL_ERR_INVALID,
					     "parent directory: %s", strerror(e));
		}
		int r = asprintf(&real, "%s%s%s", preal, strcmp(preal, "/") ? "/" : "", name);
		free(preal);
		free(dup);
		if (r < 0)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		struct stat sb;
		if (lstat(real, &sb) == 0) {
			free(real);
			return cal_error_set(err, CAL_ERR_EXISTS, "output already exists");
		}
	}
	for (size_t i = 0; i < nroots; i++) {
		if (cal_path_under(real, roots[i])) {
			*ret_real = real;
			return CAL_OK;
		}
	}
	free(real);
	return cal_error_set(err, CAL_ERR_RANGE, "path resolves outside the configured roots");
}
