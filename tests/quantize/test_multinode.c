/*
 * test_multinode.c — `calibd quantize --nodes 2 --node-rank I --rendezvous
 * FILE` as two processes on this machine, one CPU rank each, connected by
 * TCP through the rendezvous file (docs/deploy.md):
 *   - the checkpoint is byte-identical to the one-process run;
 *   - a process stopped with SIGSTOP after the first layer makes the other
 *     fail at the communication deadline with exit 5 (GPU / worker fault),
 *     naming the missing rank, and nothing is published.
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

#define RECIPE "general/ptq/nvfp4_experts_only-kv_fp8"

/* Starts `calibd quantize` for node `rank` of `nodes` (nodes 0: one
 * process); stderr to errf; progress lines on *ret_fd when ret_fd. */
static pid_t start_node(const char *src, const char *tok, const char *out, const char *rv, int nodes,
			int rank, const char *timeout_s, const char *errf, int *ret_fd)
{
	int fds[2] = {-1, -1};
	if (ret_fd)
		cr_assert_eq(pipe(fds), 0);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		if (ret_fd && dup2(fds[1], 3) < 0)
			_exit(120);
		int dn = open("/dev/null", O_WRONLY), ef = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(dn, 1);
		dup2(ef, 2);
		for (int fd = 4; fd < 1024; fd++) /* not the test runner's sockets */
			close(fd);
		char n[16], r[16];
		snprintf(n, sizeof(n), "%d", nodes);
		snprintf(r, sizeof(r), "%d", rank);
		const char *argv[32] = {"calibd", "quantize", "--model", src, "--recipe", RECIPE,
					"--calib-tokens", tok, "--out", out, "--device", "cpu"};
		size_t k = 12;
		if (nodes) {
			const char *more[] = {"--nodes", n, "--node-rank", r, "--rendezvous", rv};
			for (size_t i = 0; i < 6; i++)
				argv[k++] = more[i];
		}
		if (timeout_s) {
			argv[k++] = "--comm-timeout";
			argv[k++] = timeout_s;
		}
		if (ret_fd) {
			argv[k++] = "--progress-fd";
			argv[k++] = "3";
		}
		argv[k] = NULL;
		execv(calibd(), (char *const *)argv);
		_exit(121);
	}
	if (ret_fd) {
		close(fds[1]);
		*ret_fd = fds[0];
	}
	return pid;
}

static int wait_exit(pid_t pid)
{
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(WIFEXITED(ws), "calibd died of signal %d", WIFSIGNALED(ws) ? WTERMSIG(ws) : 0);
	return WEXITSTATUS(ws);
}

/* Every file of a (but calibd_report.json, which holds timings) is in b
 * with the same bytes, and b has no other file; NULL or the first name
 * that differs. */
static const char *same_files(const char *a, const char *b)
{
	static char bad[512];
	DIR *d = opendir(a);
	cr_assert(d, "%s", a);
	struct dirent *e;
	size_t n = 0;
	bad[0] = '\0';
	while ((e = readdir(d)) && !bad[0]) {
		if (e->d_name[0] == '.')
			continue;
		n++;
		if (!strcmp(e->d_name, "calibd_report.json"))
			continue;
		char *pa = path2(a, e->d_name), *pb = path2(b, e->d_name), *ta = NULL, *tb = NULL;
		size_t la = 0, lb = 0;
		cr_assert_eq(cal_read_file(pa, 1u << 30, &ta, &la, NULL), CAL_OK, "%s", pa);
		if (cal_read_file(pb, 1u << 30, &tb, &lb, NULL) != CAL_OK || la != lb || memcmp(ta, tb, la))
			snprintf(bad, sizeof(bad), "%s", e->d_name);
		free(ta);
		free(tb);
	}
	closedir(d);
	if (!bad[0] && cal_test_count_entries(b) != n)
		snprintf(bad, sizeof(bad), "(%zu files in %s, %zu in %s)", n, a, cal_test_count_entries(b), b);
	return bad[0] ? bad : NULL;
}

/* Both tests: a temp root with the fixture model and 8 x 48 tokens. */
static char *setup(char **src, char **tok)
{
	printf("fixture seed %u\n", SEED);
	char *root = tmpdir();
	*src = make_model(root, "qwen3_moe", "per-expert");
	*tok = make_tokens(root, "tok.jsonl", 8, 48);
	return root;
}

Test(multinode, two_processes_same_bytes_as_one, .timeout = 120)
{
	char *src, *tok, *root = setup(&src, &tok);
	char *one = path2(root, "one"), *two = path2(root, "two"), *rv = path2(root, "rendezvous");
	char *e0 = path2(root, "stderr0"), *e1 = path2(root, "stderr1");
	int rc = wait_exit(start_node(src, tok, one, NULL, 0, 0, NULL, e0, NULL));
	cr_assert_eq(rc, 0, "one process: exit %d: %s", rc, slurp(e0));
	/* the follower first: it waits for the leader's file */
	pid_t p1 = start_node(src, tok, two, rv, 2, 1, NULL, e1, NULL);
	pid_t p0 = start_node(src, tok, two, rv, 2, 0, NULL, e0, NULL);
	int rc0 = wait_exit(p0), rc1 = wait_exit(p1);
	cr_assert_eq(rc0, 0, "node 0: exit %d: %s", rc0, slurp(e0));
	cr_assert_eq(rc1, 0, "node 1: exit %d: %s", rc1, slurp(e1));
	const char *bad = same_files(one, two);
	cr_assert(!bad, "2 processes: %s differs from the 1-process checkpoint", bad);
	rm_rf(root);
}

Test(multinode, stopped_process_fails_the_job_at_the_deadline, .timeout = 120)
{
	char *src, *tok, *root = setup(&src, &tok);
	char *out = path2(root, "out"), *rv = path2(root, "rendezvous");
	char *e0 = path2(root, "stderr0"), *e1 = path2(root, "stderr1");
	int fd;
	pid_t p1 = start_node(src, tok, out, rv, 2, 1, "2", e1, NULL);
	pid_t p0 = start_node(src, tok, out, rv, 2, 0, "2", e0, &fd);
	FILE *f = fdopen(fd, "r");
	cr_assert(f);
	char line[4096];
	int stopped = 0;
	double t0 = 0;
	while (fgets(line, sizeof(line), f)) {
		if (!stopped && strstr(line, "\"phase\":\"calibrate\",\"layer\":0,")) {
			cr_assert_eq(kill(p1, SIGSTOP), 0);
			t0 = cal_now();
			stopped = 1;
		}
	}
	fclose(f);
	int rc0 = wait_exit(p0);
	double took = cal_now() - t0;
	kill(p1, SIGKILL);
	int ws;
	waitpid(p1, &ws, 0);
	char *e = slurp(e0);
	cr_assert(stopped, "no progress line for layer 0: %s", e);
	cr_assert_eq(rc0, 5, "node 0: exit %d (want 5, GPU / worker fault): %s", rc0, e);
	cr_assert(strstr(e, "rank 1"), "the error does not name rank 1: %s", e);
	cr_expect_lt(took, 30.0, "node 0 failed %.1f s after the stop (deadline 2 s)", took);
	cr_assert(!cal_test_exists(out), "a failed job published %s", out);
	rm_rf(root);
}
