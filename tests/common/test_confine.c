/*
 * test_confine.c — opening beneath roots (common/confine.h): links that
 * stay beneath a root are followed (relative and absolute), links and ".."
 * that lead out are refused, with openat2 and with the walk by hand alike.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/confine.h"
#include "testutil.h"

static char top[64], root[128];

static void mk(const char *rel, int dir)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", top, rel);
	if (dir) {
		cr_assert_eq(mkdir(p, 0755), 0, "%s", p);
		return;
	}
	FILE *f = fopen(p, "w");
	cr_assert(f, "%s", p);
	fputs(rel, f);
	fclose(f);
}

static void ln(const char *target, const char *rel)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", top, rel);
	cr_assert_eq(symlink(target, p), 0, "%s", p);
}

/* top/root: a model tree; top/outside: what must stay out of reach. */
static void setup(void)
{
	snprintf(top, sizeof(top), "/tmp/calibd-confine-XXXXXX");
	cr_assert(mkdtemp(top));
	char *real = realpath(top, NULL);
	snprintf(top, sizeof(top), "%s", real);
	free(real);
	snprintf(root, sizeof(root), "%s/root", top);
	mk("root", 1);
	mk("outside", 0);
	mk("root/blobs", 1);
	mk("root/blobs/abc", 0);
	mk("root/snap", 1);
	mk("root/snap/rev", 1);
	ln("../../blobs/abc", "root/snap/rev/rel");   /* a Hugging Face cache link */
	char abs[512];
	snprintf(abs, sizeof(abs), "%s/blobs/abc", root);
	ln(abs, "root/snap/rev/abs");                  /* absolute, still beneath */
	ln("../../../outside", "root/snap/rev/out");   /* relative, leads out */
	snprintf(abs, sizeof(abs), "%s/outside", top);
	ln(abs, "root/snap/rev/absout");               /* absolute, leads out */
	ln("/proc/self/root/etc/hostname", "root/snap/rev/magic");
	ln(".", "root/loop");
	ln("rev", "root/snap/dirlink");                /* a directory link beneath */
}

static void teardown(void)
{
	cal_test_rm_rf(top);
}

TestSuite(confine, .init = setup, .fini = teardown);

/* open(rel) beneath root with walk; returns 0 or errno. */
static int try_open(const char *rel, int walk)
{
	int rfd = open(root, O_PATH | O_DIRECTORY);
	cr_assert(rfd >= 0);
	int fd = cal_open_beneath(rfd, root, rel, O_RDONLY, 0, walk);
	int e = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	close(rfd);
	return e;
}

static const struct {
	const char *rel;
	int want; /* 0: opens */
} cases[] = {
	{"blobs/abc", 0},
	{"snap/rev/rel", 0},
	{"snap/rev/abs", 0},
	{"snap/dirlink/rel", 0},
	{"snap/rev/../../blobs/abc", 0},
	{"./snap//rev/rel", 0},
	{"snap/rev/out", EXDEV},
	{"snap/rev/absout", EXDEV},
	{"../outside", EXDEV},
	{"snap/../../outside", EXDEV},
	{"snap/rev/missing", ENOENT},
};

static void check_cases(int walk)
{
	const char *how = walk ? "walk" : "openat2";
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		cr_expect_eq(try_open(cases[i].rel, walk), cases[i].want, "%s %s: errno %d, want %d", how,
			     cases[i].rel, try_open(cases[i].rel, walk), cases[i].want);
	cr_expect_neq(try_open("snap/rev/magic", walk), 0, "%s: a link to /proc is refused", how);
	cr_expect_eq(try_open("loop/loop/blobs/abc", walk), 0, "%s: a link to '.'", how);
}

Test(confine, openat2_follows_links_only_beneath_the_root)
{
	check_cases(0);
}

Test(confine, walk_by_hand_agrees)
{
	check_cases(1);
}

Test(confine, thread_confinement)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/outside", top);
	int fd = cal_open_confined(p, O_RDONLY, 0);
	cr_expect(fd >= 0, "no confinement: plain open");
	close(fd);
	const char *const roots[] = {root};
	struct cal_confine c = {roots, 1};
	cal_confine_set(&c);
	errno = 0;
	cr_expect_eq(cal_open_confined(p, O_RDONLY, 0), -1, "a path under no root");
	cr_expect_eq(errno, EXDEV);
	snprintf(p, sizeof(p), "%s/snap/rev/absout", root);
	cr_expect_eq(cal_open_confined(p, O_RDONLY, 0), -1);
	cr_expect_eq(errno, EXDEV);
	snprintf(p, sizeof(p), "%s/snap/rev/rel", root);
	fd = cal_open_confined(p, O_RDONLY, 0);
	cr_expect(fd >= 0, "%s: %s", p, strerror(errno));
	close(fd);
	snprintf(p, sizeof(p), "%s/blobs/new", root);
	fd = cal_open_confined(p, O_WRONLY | O_CREAT | O_EXCL, 0644);
	cr_expect(fd >= 0, "creating beneath the root: %s", strerror(errno));
	close(fd);
	cr_expect(strstr(cal_confine_strerror(EXDEV), "outside"));
	cal_confine_set(NULL);
	cr_expect_null(cal_confine_get());
}
