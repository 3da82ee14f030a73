/*
 * test_quantize_signal.c — suite 'unit': SIGTERM to a running
 * `calibd quantize` after its first layer stops it gracefully: exit 6,
 * nothing published, no temporary directory left.  A separate executable
 * because Criterion's parallel runner reports a 48-byte leak of its own
 * under ASan when this test (a forked child of a test) overlaps others.
 * Fixture seed 7; runs $CALIBD.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "fixture.h"

#define SEED 7u

static char *tracked[16];
static size_t n_tracked;

static char *track(char *p)
{
	cr_assert(p && n_tracked < sizeof(tracked) / sizeof(tracked[0]));
	tracked[n_tracked++] = p;
	return p;
}

static const char *calibd(void)
{
	const char *p = getenv("CALIBD");
	cr_assert(p && *p, "$CALIBD (the calibd binary) is not set");
	return p;
}

static char *tmpdir(void)
{
	char t[] = "/tmp/calibd-quantize-XXXXXX";
	char *d = mkdtemp(t);
	cr_assert(d);
	return track(strdup(d));
}

static void rm_rf(const char *p)
{
	char *cmd = NULL;
	cr_assert(asprintf(&cmd, "rm -rf '%s'", p) > 0);
	cr_assert_eq(system(cmd), 0);
	free(cmd);
	while (n_tracked)
		free(tracked[--n_tracked]);
}

static int exists(const char *p)
{
	struct stat sb;
	return stat(p, &sb) == 0;
}

static size_t count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	size_t n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	if (d)
		closedir(d);
	return n;
}

static char *path2(const char *dir, const char *name)
{
	return track(cal_path_join(dir, name));
}

static char *make_model(const char *root, const char *arch, const char *layout)
{
	char *dir = path2(root, arch);
	struct cal_fixture_opts o = {.arch = arch, .seed = SEED};
	cr_assert_eq(cal_fixture_layout_parse(layout, &o.layout), 0);
	struct cal_error err = {0};
	cr_assert_eq(cal_fixture_write(&o, dir, &err), CAL_OK, "%s", cal_error_msg(&err));
	return dir;
}

/* n sequences of len ids (< 256), fixed pattern. */
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

Test(quantize, sigterm_after_first_layer_exits_6, .timeout = 60)
{
	printf("fixture seed %u\n", SEED);
	char *root = tmpdir();
	char *src = make_model(root, "qwen3_moe", "per-expert");
	/* enough tokens that the remaining layers take a few hundred ms */
	char *tok = make_tokens(root, "tok.jsonl", 64, 256);
	char *dst = path2(root, "out");
	size_t before = count_entries(root);
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		if (dup2(fds[1], 3) < 0)
			_exit(120);
		int dn = open("/dev/null", O_WRONLY);
		dup2(dn, 1);
		dup2(dn, 2);
		for (int fd = 4; fd < 1024; fd++) /* not the test runner's sockets */
			close(fd);
		execl(calibd(), "calibd", "quantize", "--model", src, "--recipe",
		      "general/ptq/nvfp4_experts_only-kv_fp8", "--calib-tokens", tok, "--out", dst,
		      "--device", "cpu", "--progress-fd", "3", (char *)NULL);
		_exit(121);
	}
	close(fds[1]);
	FILE *f = fdopen(fds[0], "r");
	cr_assert(f);
	char line[4096];
	int sent = 0;
	while (fgets(line, sizeof(line), f)) {
		if (!sent && strstr(line, "\"phase\":\"calibrate\",\"layer\":0,")) {
			cr_assert_eq(kill(pid, SIGTERM), 0);
			sent = 1;
		}
	}
	fclose(f);
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(sent, "no progress line for layer 0");
	cr_assert(WIFEXITED(ws), "calibd died of signal %d", WIFSIGNALED(ws) ? WTERMSIG(ws) : 0);
	cr_assert_eq(WEXITSTATUS(ws), 6, "exit %d", WEXITSTATUS(ws));
	cr_assert(!exists(dst), "an interrupted job published %s", dst);
	cr_assert_eq(count_entries(root), before, "a temporary directory was left behind");
	rm_rf(root);
}
