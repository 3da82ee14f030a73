/* test_util.c — the shared helpers of common/util.h and common/hash.h:
 * growable arrays, word tables, size formatting, opening regular files,
 * the name index and FNV-1a, and the status table (status.def). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/exit.h"
#include "common/hash.h"
#include "common/status.h"
#include "common/util.h"

Test(util, grow_doubles_from_the_minimum)
{
	size_t cap = 0;
	int *v = cal_grow(NULL, &cap, 1, sizeof(*v), 64);
	cr_assert_not_null(v);
	cr_assert_eq(cap, 64);
	cr_assert_eq(cal_grow(v, &cap, 64, sizeof(*v), 64), v, "fits: the same array");
	v = cal_grow(v, &cap, 65, sizeof(*v), 64);
	cr_assert_eq(cap, 128);
	v[127] = 1;
	v = cal_grow(v, &cap, 1000, sizeof(*v), 64);
	cr_assert_eq(cap, 1024);
	cr_assert_eq(v[127], 1, "contents kept");
	size_t big = cap;
	cr_assert_null(cal_grow(v, &big, SIZE_MAX / 2, sizeof(*v), 64), "overflow refused");
	cr_assert_eq(big, 1024, "capacity unchanged on failure");
	free(v);
}

Test(util, name_val_tables)
{
	static const struct cal_name_val t[] = {{"a", 3}, {"b", -1}};
	int r = 7;
	cr_assert_eq(cal_name_val_find(t, CAL_ARRAY_LEN(t), "b", &r), 0);
	cr_assert_eq(r, -1);
	cr_assert_eq(cal_name_val_find(t, CAL_ARRAY_LEN(t), "c", &r), -1);
	cr_assert_eq(cal_name_val_find(t, CAL_ARRAY_LEN(t), NULL, &r), -1);
	cr_assert_eq(r, -1, "unchanged when absent");
}

Test(util, fmt_scaled)
{
	char b[32];
	cr_assert_str_eq(cal_fmt_scaled(b, sizeof(b), 1234567, 1000, 2, "B"), "1.23 MB");
	cr_assert_str_eq(cal_fmt_scaled(b, sizeof(b), 999, 1000, 2, ""), "999");
	cr_assert_str_eq(cal_fmt_scaled(b, sizeof(b), 999, 1000, 2, "B"), "999 B");
	cr_assert_str_eq(cal_fmt_scaled(b, sizeof(b), 1000, 1000, 2, ""), "1.00 K");
	cr_assert_str_eq(cal_fmt_scaled(b, sizeof(b), 1536, 1024, 1, "B"), "1.5 KiB");
	cr_assert_str_eq(cal_fmt_scaled(b, sizeof(b), 5e15, 1000, 2, "B"), "5000.00 TB");
}

Test(util, open_regular)
{
	char dir[] = "/tmp/cal_test_util_XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char *file = cal_path_join(dir, "f");
	FILE *f = fopen(file, "w");
	cr_assert_not_null(f);
	fputs("hello", f);
	fclose(f);
	struct cal_error err = {0};
	int fd;
	uint64_t size;
	cr_assert_eq(cal_open_regular(file, "", &fd, &size, &err), CAL_OK);
	cr_assert_eq(size, 5);
	close(fd);
	cr_assert_eq(cal_open_regular(dir, "", &fd, &size, &err), CAL_ERR_IO);
	cr_assert(strstr(cal_error_msg(&err), "not a regular file"));
	cr_assert_eq(fd, -1);
	cal_error_clear(&err);
	char *gone = cal_path_join(dir, "gone");
	cr_assert_eq(cal_open_regular(gone, "cannot open: ", &fd, &size, &err), CAL_ERR_NOTFOUND);
	cr_assert(strstr(cal_error_msg(&err), ": cannot open: "), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	unlink(file);
	rmdir(dir);
	free(gone);
	free(file);
}

static int vfmt(char **ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int vfmt(char **ret, const char *fmt, ...)
{
	return CAL_VASPRINTF(ret, fmt);
}

Test(util, vasprintf_macro)
{
	char *s = NULL;
	cr_assert_eq(vfmt(&s, "%s-%d", "x", 42), 4);
	cr_assert_str_eq(s, "x-42");
	free(s);
}

Test(util, splitmix64_stream)
{
	uint64_t s = 0;
	/* the reference stream of SplitMix64 seeded with 0 */
	cr_assert_eq(cal_splitmix64(&s), 0xe220a8397b1dcdafull);
	cr_assert_eq(cal_splitmix64(&s), 0x6e789e6aa1b965f4ull);
}

static const char *name_at(const void *items, size_t i)
{
	return ((const char *const *)items)[i];
}

Test(hash, name_index_finds_every_name)
{
	enum { N = 1000 };
	static char names[N][16];
	const char *items[N];
	struct cal_name_index ix = {0};
	for (size_t i = 0; i < N; i++) {
		snprintf(names[i], sizeof(names[i]), "t%zu.weight", i);
		items[i] = names[i];
		if ((i + 1) * 2 > ix.cap)
			cr_assert_eq(cal_name_index_rebuild(&ix, ix.cap ? ix.cap * 2 : 64, i, name_at,
							    items), 0);
		size_t *sl = cal_name_index_slot(&ix, names[i], name_at, items);
		cr_assert_eq(*sl, 0, "new name: empty slot");
		*sl = i + 1;
	}
	for (size_t i = 0; i < N; i++)
		cr_assert_eq(*cal_name_index_slot(&ix, names[i], name_at, items), i + 1);
	cr_assert_eq(*cal_name_index_slot(&ix, "absent", name_at, items), 0);
	cal_name_index_free(&ix);
	cr_assert_eq(ix.cap, 0);
}

Test(hash, fnv1a)
{
	cr_assert_eq(cal_fnv1a(CAL_FNV_SEED, "", 0), CAL_FNV_SEED);
	/* FNV-1a 64 of "a" from the standard offset basis */
	cr_assert_eq(cal_fnv1a(14695981039346656037ull, "a", 1), 0xaf63dc4c8601ec8cull);
}

Test(status, table_of_every_error)
{
	static const struct {
		enum cal_status st;
		const char *phrase, *code;
		int exit;
	} want[] = {
		{CAL_ERR_NOMEM, "out of memory", "nomem", CAL_EXIT_FAILURE},
		{CAL_ERR_FORMAT, "malformed input", "format", CAL_EXIT_BAD_INPUT},
		{CAL_ERR_NOSPACE, "no space left", "nospace", CAL_EXIT_NOSPACE},
		{CAL_ERR_DEVICE, "device error", "device", CAL_EXIT_DEVICE},
		{CAL_ERR_INTERRUPTED, "interrupted", "interrupted", CAL_EXIT_INTERRUPTED},
		{CAL_ERR_INTERNAL, "internal error", "internal", CAL_EXIT_FAILURE},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(want); i++) {
		cr_assert_str_eq(cal_status_str(want[i].st), want[i].phrase);
		cr_assert_str_eq(cal_status_code(want[i].st), want[i].code);
		cr_assert_eq(cal_exit_from_status(want[i].st), want[i].exit);
		cr_assert_eq(cal_exit_from_job_error(want[i].code), want[i].exit);
	}
	cr_assert_eq(CAL_ERR_NOMEM, -1);
	cr_assert_eq(CAL_ERR_INTERNAL, -13);
	cr_assert_str_eq(cal_status_str(CAL_OK), "ok");
}
