/* confine.c — opening files beneath allowed roots (see confine.h). */
#include "confine.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static _Thread_local const struct cal_confine *current;

void cal_confine_set(const struct cal_confine *c)
{
	current = c;
}

const struct cal_confine *cal_confine_get(void)
{
	return current;
}

const char *cal_confine_strerror(int e)
{
	return e == EXDEV ? "resolves outside the allowed directories (a symbolic link or '..' leading out)"
			  : strerror(e);
}

/* The O_NOFOLLOW walk: every directory component opened on its own, no
 * symbolic link followed, no "..". */
static int walk_beneath(int rootfd, const char *rel, int flags, mode_t mode)
{
	char *copy = strdup(rel);
	if (!copy) {
		errno = ENOMEM;
		return -1;
	}
	int cur = dup(rootfd), fd = -1;
	char *save = NULL, *next = NULL;
	char *comp = strtok_r(copy, "/", &save);
	while (cur >= 0) {
		while (comp && !strcmp(comp, "."))
			comp = strtok_r(NULL, "/", &save);
		if (!comp) { /* rel named the root itself (or ended in '/') */
			fd = openat(cur, ".", flags | O_CLOEXEC, mode);
			break;
		}
		if (!strcmp(comp, "..")) {
			errno = EXDEV;
			break;
		}
		next = strtok_r(NULL, "/", &save);
		while (next && !strcmp(next, "."))
			next = strtok_r(NULL, "/", &save);
		if (!next) {
			fd = openat(cur, comp, flags | O_NOFOLLOW | O_CLOEXEC, mode);
			if (fd < 0 && errno == ELOOP)
				errno = EXDEV;
			break;
		}
		struct stat sb;
		if (fstatat(cur, comp, &sb, AT_SYMLINK_NOFOLLOW) < 0)
			break;
		if (S_ISLNK(sb.st_mode)) {
			errno = EXDEV;
			break;
		}
		int nfd = openat(cur, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0)
			break;
		close(cur);
		cur = nfd;
		comp = next;
	}
	int e = errno;
	if (cur >= 0)
		close(cur);
	free(copy);
	errno = e;
	return fd;
}

int cal_open_beneath(int rootfd, const char *rel, int flags, mode_t mode, int walk)
{
	if (!walk) {
		struct open_how how = {
			.flags = (unsigned long long)(flags | O_CLOEXEC),
			.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
		};
		for (int tries = 0; tries < 8; tries++) {
			long fd = syscall(SYS_openat2, rootfd, *rel ? rel : ".", &how, sizeof(how));
			if (fd >= 0)
				return (int)fd;
			/* EAGAIN: a rename raced the lookup; the kernel asks to retry */
			if (errno != EAGAIN && errno != EINTR)
				break;
		}
		if (errno != ENOSYS)
			return -1;
	}
	return walk_beneath(rootfd, rel, flags, mode);
}

/* Length of the root path under which path lies lexically, or 0. */
static size_t under(const char *path, const char *root)
{
	size_t rl = strlen(root);
	while (rl > 1 && root[rl - 1] == '/')
		rl--;
	if (rl == 1 && root[0] == '/')
		return 1;
	return !strncmp(path, root, rl) && (path[rl] == '\0' || path[rl] == '/') ? rl : 0;
}

int cal_open_confined(const char *path, int flags, mode_t mode)
{
	const struct cal_confine *c = current;
	if (!c)
		return open(path, flags | O_CLOEXEC, mode);
	char *abs = NULL;
	if (path[0] != '/') {
		char *cwd = getcwd(NULL, 0);
		if (!cwd || asprintf(&abs, "%s/%s", cwd, path) < 0) {
			free(cwd);
			errno = ENOMEM;
			return -1;
		}
		free(cwd);
		path = abs;
	}
	/* the deepest root first: with nested roots, the closest one decides
	 * first and the outer ones may still admit the path */
	int fd = -1, e = EXDEV;
	size_t done = (size_t)-1;
	for (;;) {
		size_t best = 0, bi = 0;
		for (size_t i = 0; i < c->n_roots; i++) {
			size_t l = under(path, c->roots[i]);
			if (l > best && l < done) {
				best = l;
				bi = i;
			}
		}
		if (!best)
			break;
		done = best;
		int rootfd = open(c->roots[bi], O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (rootfd < 0) {
			e = errno;
			continue;
		}
		const char *rel = path + best;
		while (*rel == '/')
			rel++;
		fd = cal_open_beneath(rootfd, rel, flags, mode, 0);
		e = errno;
		close(rootfd);
		if (fd >= 0 || e != EXDEV)
			break;
	}
	free(abs);
	errno = e;
	return fd;
}
