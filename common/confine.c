/* confine.c — opening files beneath allowed roots (see confine.h). */
#include "confine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/util.h"

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

#define WALK_MAX_LINKS 40

/* Opens the directory root/dirs (dirs: components joined by '/', no link
 * among them) as an O_PATH descriptor. */
static int reopen_dir(int rootfd, const char *dirs)
{
	return *dirs ? openat(rootfd, dirs, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
		     : openat(rootfd, ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
}

/*
 * The resolution done by hand: one component at a time from rootfd, each
 * opened with O_NOFOLLOW; a symbolic link is read and its target resolved
 * the same way (a relative target from the link's directory, an absolute
 * one only when it lies lexically under root, from rootfd); ".." never
 * climbs above rootfd.  A component replaced by a link between the look
 * and the open fails (O_NOFOLLOW), it is never followed unchecked.
 */
static int walk_beneath(int rootfd, const char *root, const char *rel, int flags, mode_t mode)
{
	size_t cap = strlen(rel) + PATH_MAX + 2;
	char *todo = malloc(cap), *done = malloc(cap), *target = malloc(PATH_MAX + 1);
	int cur = -1, fd = -1, links = 0, e = 0;
	if (!todo || !done || !target) {
		e = ENOMEM;
		goto out;
	}
	snprintf(todo, cap, "%s", rel);
	done[0] = '\0';
	cur = reopen_dir(rootfd, "");
	if (cur < 0) {
		e = errno;
		goto out;
	}
	for (;;) {
		char *p = todo;
		while (*p == '/')
			p++;
		size_t n = strcspn(p, "/");
		char comp[NAME_MAX + 1];
		if (n > NAME_MAX) {
			e = ENAMETOOLONG;
			break;
		}
		memcpy(comp, p, n);
		comp[n] = '\0';
		const char *rest = p + n;
		while (*rest == '/')
			rest++;
		int last = !*rest;
		if (!n || !strcmp(comp, ".")) {
			if (last) {
				fd = openat(cur, ".", flags | O_CLOEXEC, mode);
				e = errno;
				break;
			}
			memmove(todo, rest, strlen(rest) + 1);
			continue;
		}
		if (!strcmp(comp, "..")) {
			char *slash = strrchr(done, '/');
			if (!*done) {
				e = EXDEV; /* above the root */
				break;
			}
			if (slash)
				*slash = '\0';
			else
				done[0] = '\0';
			close(cur);
			if ((cur = reopen_dir(rootfd, done)) < 0) {
				e = errno;
				break;
			}
			memmove(todo, rest, strlen(rest) + 1);
			if (!*todo) {
				fd = openat(cur, ".", flags | O_CLOEXEC, mode);
				e = errno;
				break;
			}
			continue;
		}
		struct stat sb;
		if (fstatat(cur, comp, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
			e = errno;
			if (e == ENOENT && last && (flags & O_CREAT)) {
				fd = openat(cur, comp, flags | O_NOFOLLOW | O_CLOEXEC, mode);
				e = fd < 0 && errno == ELOOP ? EXDEV : errno;
			}
			break;
		}
		if (S_ISLNK(sb.st_mode)) {
			if ((last && (flags & O_NOFOLLOW)) || ++links > WALK_MAX_LINKS) {
				e = ELOOP;
				break;
			}
			ssize_t tl = readlinkat(cur, comp, target, PATH_MAX);
			if (tl < 0 || tl >= PATH_MAX) {
				e = tl < 0 ? errno : ENAMETOOLONG;
				break;
			}
			target[tl] = '\0';
			const char *from = target;
			if (target[0] == '/') {
				size_t rl = under(target, root);
				if (!rl) {
					e = EXDEV;
					break;
				}
				from = target + rl;
				done[0] = '\0';
				close(cur);
				if ((cur = reopen_dir(rootfd, "")) < 0) {
					e = errno;
					break;
				}
			}
			/* the link's target takes its place in what is left to do */
			char *next = malloc(cap);
			if (!next || strlen(from) + 1 + strlen(rest) + 1 > cap) {
				free(next);
				e = next ? ENAMETOOLONG : ENOMEM;
				break;
			}
			snprintf(next, cap, "%s%s%s", from, *rest ? "/" : "", rest);
			free(todo);
			todo = next;
			continue;
		}
		if (last) {
			fd = openat(cur, comp, flags | O_NOFOLLOW | O_CLOEXEC, mode);
			e = fd < 0 && errno == ELOOP ? EXDEV : errno; /* became a link meanwhile */
			break;
		}
		int nfd = openat(cur, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0) {
			e = errno;
			break;
		}
		close(cur);
		cur = nfd;
		size_t dl = strlen(done);
		if (dl + 1 + n + 1 > cap) {
			e = ENAMETOOLONG;
			break;
		}
		snprintf(done + dl, cap - dl, "%s%s", dl ? "/" : "", comp);
		memmove(todo, rest, strlen(rest) + 1);
	}
out:
	if (cur >= 0)
		close(cur);
	free(todo);
	free(done);
	free(target);
	errno = fd >= 0 ? 0 : e;
	return fd;
}

int cal_open_beneath(int rootfd, const char *root, const char *rel, int flags, mode_t mode, int walk)
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
		/* EXDEV includes an absolute link, which openat2 never follows
		 * beneath a root: the walk follows it when it stays under root */
		if (errno != ENOSYS && errno != EXDEV)
			return -1;
	}
	return walk_beneath(rootfd, root, rel, flags, mode);
}


int cal_open_confined(const char *path, int flags, mode_t mode)
{
	const struct cal_confine *c = current;
	if (!c)
		return open(path, flags | O_CLOEXEC, mode);
	char *abs = NULL;
	if (path[0] != '/') {
		char *cwd = getcwd(NULL, 0);
		enum cal_status st = cwd ? cal_path_join_checked(cwd, path, &abs, NULL) : CAL_ERR_NOMEM;
		if (st < 0) {
			free(cwd);
			errno = st == CAL_ERR_RANGE ? ENAMETOOLONG : ENOMEM;
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
		fd = cal_open_beneath(rootfd, c->roots[bi], rel, flags, mode, 0);
		e = errno;
		close(rootfd);
		if (fd >= 0 || e != EXDEV)
			break;
	}
	free(abs);
	errno = e;
	return fd;
}
