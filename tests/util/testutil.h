/*
 * testutil.h — helpers every Criterion test shares: a fresh temporary
 * directory, its removal, paths under it, and whole-file reads and writes.
 * Each helper asserts (cr_assert) instead of returning an error, so a test
 * stops where the setup failed.  Strings returned are the caller's (free).
 */
#ifndef CAL_TESTS_TESTUTIL_H
#define CAL_TESTS_TESTUTIL_H

#include <stddef.h>

/* A new directory /tmp/calibd-TAG-XXXXXX (mode 0700). */
char *cal_test_tmpdir(const char *tag);

/* Removes p and everything below it without following symbolic links and
 * without a shell; a p that does not exist is not an error. */
void cal_test_rm_rf(const char *p);

/* dir/name. */
char *cal_test_path(const char *dir, const char *name);

/* 1 when p exists (lstat), else 0. */
int cal_test_exists(const char *p);

/* Entries of dir other than . and .. (asserts that dir opens). */
size_t cal_test_count_entries(const char *dir);

/* Writes len bytes of buf to path (created or truncated). */
void cal_test_write_file(const char *path, const void *buf, size_t len);
/* Writes the string text to dir/name. */
void cal_test_write_text(const char *dir, const char *name, const char *text);

/* The whole file (at most 64 MiB), NUL-terminated; *ret_len (may be NULL)
 * without the NUL. */
char *cal_test_slurp(const char *path, size_t *ret_len);

#endif
