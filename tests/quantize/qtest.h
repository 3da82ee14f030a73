/*
 * qtest.h — helpers shared by the `calibd quantize` tests (test_quantize.c,
 * test_quantize_signal.c): tracked allocations, a temp root (tests/util),
 * fixtures and token files made with fixture seed SEED, and the $CALIBD
 * binary.  Each
 * test process includes it once; every function is static and may go
 * unused in one of them.
 */
#ifndef CAL_TESTS_QTEST_H
#define CAL_TESTS_QTEST_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"
#include "fixture.h"
#include "testutil.h"

#define SEED 7u

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"

/* Strings a test allocates, freed at its end (one test per process). */
static char *tracked[256];
static size_t n_tracked;

static char *track(char *p)
{
	cr_assert(p && n_tracked < sizeof(tracked) / sizeof(tracked[0]));
	tracked[n_tracked++] = p;
	return p;
}

static void free_tracked(void)
{
	while (n_tracked)
		free(tracked[--n_tracked]);
}

static const char *calibd(void)
{
	const char *p = getenv("CALIBD");
	cr_assert(p && *p, "$CALIBD (the calibd binary) is not set");
	return p;
}

static char *tmpdir(void)
{
	return track(cal_test_tmpdir("quantize"));
}

/* Removes the test's directory and frees what it tracked. */
static void rm_rf(const char *p)
{
	cal_test_rm_rf(p);
	free_tracked();
}

static char *path2(const char *dir, const char *name)
{
	return track(cal_path_join(dir, name));
}

static char *make_model(const char *root, const char *arch, const char *layout)
{
	char *dir = NULL;
	cr_assert(asprintf(&dir, "%s/%s-%s", root, arch, layout) > 0);
	track(dir);
	struct cal_fixture_opts o = {.arch = arch, .seed = SEED};
	if (!strcmp(layout, "fp8-block16")) /* deepseek_v3 variants */
		o.fp8_block = 16;
	else if (!strcmp(layout, "q-lora-null"))
		o.q_lora_null = 1;
	else if (!strcmp(layout, "wide")) /* every linear input a multiple of 128 */
		o.wide = 1;
	else if (!strcmp(layout, "mha")) /* no GQA (llama, qwen3) */
		o.mha = 1;
	else if (strcmp(layout, "default"))
		cr_assert_eq(cal_fixture_layout_parse(layout, &o.layout), 0);
	struct cal_error err = {0};
	cr_assert_eq(cal_fixture_write(&o, dir, &err), CAL_OK, "%s", cal_error_msg(&err));
	return dir;
}

/* A token file: n sequences of len ids (< 256), fixed pattern. */
static char *make_tokens(const char *root, const char *name, int n, int len)
{
	char *p = path2(root, name);
	FILE *f = fopen(p, "w");
	cr_assert(f);
	uint64_t s = SEED;
	for (int i = 0; i < n; i++) {
		fputs("{\"input_ids\": [", f);
		for (int k = 0; k < len; k++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			fprintf(f, "%s%u", k ? "," : "", (unsigned)(s >> 33) % 256u);
		}
		fputs("]}\n", f);
	}
	cr_assert_eq(fclose(f), 0);
	return p;
}

/* Runs `calibd ARGS` through the shell; returns the exit code.  stdout and
 * stderr go to files when the paths are given (else /dev/null). */
static int run(const char *out, const char *errf, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int run(const char *out, const char *errf, const char *fmt, ...)
{
	char *args = NULL, *cmd = NULL;
	va_list ap;
	va_start(ap, fmt);
	cr_assert(vasprintf(&args, fmt, ap) > 0);
	va_end(ap);
	cr_assert(asprintf(&cmd, "'%s' %s >%s 2>%s", calibd(), args, out ? out : "/dev/null",
			   errf ? errf : "/dev/null") > 0);
	int ws = system(cmd);
	free(cmd);
	free(args);
	cr_assert(WIFEXITED(ws), "calibd did not exit normally");
	return WEXITSTATUS(ws);
}

static char *slurp(const char *path)
{
	return track(cal_test_slurp(path, NULL));
}

/* Asserts that a calibd run exited with want; returns its stderr (the
 * file errf, tracked) for further checks. */
static char *expect_exit(int rc, int want, const char *errf)
{
	char *e = slurp(errf);
	cr_assert_eq(rc, want, "exit %d, want %d: %s", rc, want, e);
	return e;
}

#pragma GCC diagnostic pop

#endif
