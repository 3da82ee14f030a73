/*
 * testutil.c — helpers shared by the tests (testutil.h).
 */
#include "testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"

char *cal_test_tmpdir(const char *tag)
{
	char *d = NULL;
	cr_assert(asprintf(&d, "/tmp/calibd-%s-XXXXXX", tag) > 0);
	cr_assert_not_null(mkdtemp(d), "mkdtemp %s: %s", d, strerror(errno));
	return d;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	if (remove(p) < 0 && errno != ENOENT)
		cr_assert_fail("rm_rf: %s: %s (%s)", p, strerror(errno),
			       flag == FTW_DNR ? "unreadable directory" : "remove");
	return 0;
}

void cal_test_rm_rf(const char *p)
{
	struct stat sb;
	if (lstat(p, &sb) < 0 && errno == ENOENT)
		return;
	cr_assert_eq(nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS), 0, "rm_rf %s", p);
}

char *cal_test_path(const char *dir, const char *name)
{
	char *p = cal_path_join(dir, name);
	cr_assert_not_null(p, "path %s/%s", dir, name);
	return p;
}

int cal_test_exists(const char *p)
{
	struct stat sb;
	return lstat(p, &sb) == 0;
}

size_t cal_test_count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	size_t n = 0;
	struct dirent *e;
	cr_assert_not_null(d, "opendir %s: %s", dir, strerror(errno));
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

void cal_test_write_file(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f, "fopen %s: %s", path, strerror(errno));
	cr_assert_eq(fwrite(buf, 1, len, f), len, "write %s", path);
	cr_assert_eq(fclose(f), 0, "close %s", path);
}

void cal_test_write_text(const char *dir, const char *name, const char *text)
{
	char *p = cal_test_path(dir, name);
	cal_test_write_file(p, text, strlen(text));
	free(p);
}

char *cal_test_slurp(const char *path, size_t *ret_len)
{
	char *t = NULL;
	size_t n = 0;
	struct cal_error err = {0};
	cr_assert_eq(cal_read_file(path, 64u << 20, &t, &n, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	if (ret_len)
		*ret_len = n;
	return t;
}
