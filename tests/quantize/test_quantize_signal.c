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
#include "qtest.h"

Test(quantize, sigterm_after_first_layer_exits_6, .timeout = 60)
{
	printf("fixture seed %u\n", SEED);
	char *root = tmpdir();
	char *src = make_model(root, "qwen3_moe", "per-expert");
	/* enough tokens that the remaining layers take a few hundred ms */
	char *tok = make_tokens(root, "tok.jsonl", 64, 256);
	char *dst = path2(root, "out");
	size_t before = cal_test_count_entries(root);
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
	cr_assert(!cal_test_exists(dst), "an interrupted job published %s", dst);
	cr_assert_eq(cal_test_count_entries(root), before, "a temporary directory was left behind");
	rm_rf(root);
}
