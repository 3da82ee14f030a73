/*
 * test_comm_tcp.c — kernels/comm.h with one CPU rank per process
 * (CAL_COMM_TCP on loopback): R processes rendezvous through a file in a
 * temporary directory and run every collective against the serial
 * reference; a rank stopped with SIGSTOP makes the other's collective fail
 * within the deadline naming it; a killed rank fails it at once.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "commcheck.h"
#include "kernels/comm.h"

enum child_mode {
	CHILD_CHECK,      /* every collective, exits 0 when all match */
	CHILD_STOP,       /* a barrier, then SIGSTOP to itself */
	CHILD_EXIT,       /* a barrier, then _exit */
	CHILD_ABORT,      /* a barrier, then cal_comm_abort */
};

struct job {
	char dir[64], rdv[128];
	unsigned R, timeout_ms;
	uint64_t seed;
};

static void job_init(struct job *j, unsigned R, unsigned timeout_ms, uint64_t seed)
{
	snprintf(j->dir, sizeof(j->dir), "/tmp/calcomm.XXXXXX");
	cr_assert_not_null(mkdtemp(j->dir));
	snprintf(j->rdv, sizeof(j->rdv), "%s/rendezvous", j->dir);
	j->R = R;
	j->timeout_ms = timeout_ms;
	j->seed = seed;
}

static void job_fini(struct job *j)
{
	unlink(j->rdv);
	rmdir(j->dir);
}

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Opens rank's endpoint on a CPU back end. */
static enum cal_status open_rank(const struct job *j, unsigned rank, struct cal_backend **be,
				 struct cal_comm **c, struct cal_error *err)
{
	struct cal_comm_opts o = {.kind = CAL_COMM_TCP, .nranks = j->R, .rank = rank,
				  .rendezvous = j->rdv, .timeout_ms = j->timeout_ms};
	struct cal_backend_opts bo = {.cpu_threads = 1};
	enum cal_status st = cal_backend_init(CAL_BACKEND_CPU, &bo, be, err);
	return st < 0 ? st : cal_comm_open(&o, *be, c, err);
}

static void rank_exit(struct cal_comm *c, struct cal_backend *be, int code)
{
	cal_comm_free(c);
	cal_backend_free(be);
	_exit(code);
}

static pid_t spawn(const struct job *j, unsigned rank, enum child_mode mode)
{
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid)
		return pid;
	struct cal_error err = {0};
	struct cal_backend *be = NULL;
	struct cal_comm *c = NULL;
	char msg[1024];
	if (open_rank(j, rank, &be, &c, &err) < 0) {
		fprintf(stderr, "rank %u: %s\n", rank, cal_error_msg(&err));
		_exit(2);
	}
	if (mode == CHILD_CHECK) {
		int rc = commcheck_run(c, j->seed, 5, msg, sizeof(msg));
		if (rc)
			fprintf(stderr, "%s\n", msg);
		rank_exit(c, be, rc ? 1 : 0);
	}
	if (cal_comm_barrier(c, &err) < 0) {
		fprintf(stderr, "rank %u: %s\n", rank, cal_error_msg(&err));
		_exit(3);
	}
	if (mode == CHILD_STOP)
		raise(SIGSTOP);
	if (mode == CHILD_ABORT) {
		cal_comm_abort(c, "the worker was cancelled");
		struct timespec nap = {0, 200000000};
		nanosleep(&nap, NULL); /* keep the socket open: the peer reads the reason */
	}
	_exit(0);
}

static int wait_exit(pid_t pid)
{
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void check_processes(unsigned R, uint64_t seed)
{
	struct job j;
	job_init(&j, R, 20000, seed);
	printf("comm tcp R=%u seed %llu\n", R, (unsigned long long)seed);
	pid_t pid[8];
	for (unsigned r = 1; r < R; r++)
		pid[r] = spawn(&j, r, CHILD_CHECK);
	struct cal_error err = {0};
	struct cal_backend *be = NULL;
	struct cal_comm *c = NULL;
	char msg[1024] = "";
	int rc = -1;
	if (open_rank(&j, 0, &be, &c, &err) == 0)
		rc = commcheck_run(c, seed, 5, msg, sizeof(msg));
	else
		snprintf(msg, sizeof(msg), "%s", cal_error_msg(&err));
	cr_expect_eq(rc, 0, "rank 0: %s", msg);
	cal_comm_free(c);
	cal_backend_free(be);
	cal_error_clear(&err);
	for (unsigned r = 1; r < R; r++)
		cr_expect_eq(wait_exit(pid[r]), 0, "rank %u failed (its stderr says why)", r);
	cr_expect_neq(access(j.rdv, F_OK), 0, "rank 0 removes the rendezvous file once all joined");
	job_fini(&j);
}

Test(comm_tcp, two_processes) { check_processes(2, 21); }
Test(comm_tcp, four_processes) { check_processes(4, 23); }

/* Rank `me` (this process) and rank `other` (a child in mode): this rank's
 * allreduce after a common barrier; returns its status, message, time. */
static enum cal_status peer_fault(unsigned me, enum child_mode mode, int kill_it, char *msg,
				  size_t msg_size, double *ret_ms, pid_t *ret_pid, struct job *j)
{
	job_init(j, 2, 2000, 0);
	pid_t pid = spawn(j, 1 - me, mode);
	struct cal_error err = {0};
	struct cal_backend *be = NULL;
	struct cal_comm *c = NULL;
	cr_assert_eq(open_rank(j, me, &be, &c, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_comm_barrier(c, &err), CAL_OK, "%s", cal_error_msg(&err));
	if (kill_it) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	uint64_t v = 5;
	double t0 = now_ms();
	enum cal_status st = cal_comm_allreduce(c, &v, 1, CAL_COMM_U64, CAL_COMM_SUM, &err);
	*ret_ms = now_ms() - t0;
	snprintf(msg, msg_size, "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	/* after a failure every call fails fast */
	t0 = now_ms();
	cr_expect_eq(cal_comm_barrier(c, &err), CAL_ERR_DEVICE);
	cr_expect(strstr(cal_error_msg(&err), "failed earlier"), "%s", cal_error_msg(&err));
	cr_expect(now_ms() - t0 < 100);
	cal_error_clear(&err);
	cal_comm_free(c);
	cal_backend_free(be);
	*ret_pid = pid;
	return st;
}

Test(comm_tcp, stopped_rank_fails_within_deadline_naming_it)
{
	struct job j;
	char msg[1024];
	double ms;
	pid_t pid;
	enum cal_status st = peer_fault(0, CHILD_STOP, 0, msg, sizeof(msg), &ms, &pid, &j);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	job_fini(&j);
	cr_expect_eq(st, CAL_ERR_DEVICE);
	cr_expect(strstr(msg, "allreduce #2 on rank 0: rank 1 did not arrive within 2000 ms"), "%s",
		  msg);
	cr_expect(ms >= 1900 && ms < 3000, "failed after %.0f ms (deadline 2000)", ms);
}

Test(comm_tcp, stopped_rank_zero_is_named_by_the_others)
{
	struct job j;
	char msg[1024];
	double ms;
	pid_t pid;
	enum cal_status st = peer_fault(1, CHILD_STOP, 0, msg, sizeof(msg), &ms, &pid, &j);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	job_fini(&j);
	cr_expect_eq(st, CAL_ERR_DEVICE);
	cr_expect(strstr(msg, "on rank 1: rank 0 (the relay) did not answer within 2000 ms"), "%s", msg);
	cr_expect(ms >= 1900 && ms < 3000, "failed after %.0f ms (deadline 2000)", ms);
}

Test(comm_tcp, killed_rank_fails_at_once)
{
	struct job j;
	char msg[1024];
	double ms;
	pid_t pid;
	enum cal_status st = peer_fault(0, CHILD_STOP, 1, msg, sizeof(msg), &ms, &pid, &j);
	job_fini(&j);
	cr_expect_eq(st, CAL_ERR_DEVICE);
	cr_expect(strstr(msg, "rank 1 closed the connection"), "%s", msg);
	cr_expect(ms < 1000, "failed after %.0f ms", ms);
}

Test(comm_tcp, aborting_rank_sends_its_reason)
{
	struct job j;
	char msg[1024];
	double ms;
	pid_t pid;
	enum cal_status st = peer_fault(0, CHILD_ABORT, 0, msg, sizeof(msg), &ms, &pid, &j);
	cr_expect_eq(wait_exit(pid), 0);
	job_fini(&j);
	cr_expect_eq(st, CAL_ERR_DEVICE);
	cr_expect(strstr(msg, "rank 1 reported: rank 1 aborted: the worker was cancelled"), "%s", msg);
	cr_expect(ms < 1000, "failed after %.0f ms", ms);
}

Test(comm_tcp, missing_rank_fails_joining)
{
	struct job j;
	job_init(&j, 3, 500, 0);
	pid_t pid = spawn(&j, 1, CHILD_EXIT);
	struct cal_error err = {0};
	struct cal_backend *be = NULL;
	struct cal_comm *c = NULL;
	cr_expect_eq(open_rank(&j, 0, &be, &c, &err), CAL_ERR_DEVICE);
	cr_expect(strstr(cal_error_msg(&err), "rank 2 did not join within 500 ms"), "%s",
		  cal_error_msg(&err));
	cal_error_clear(&err);
	cal_backend_free(be);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	/* a rank whose leader never comes */
	unlink(j.rdv);
	job_init(&j, 2, 300, 0);
	cr_expect_eq(open_rank(&j, 1, &be, &c, &err), CAL_ERR_DEVICE);
	cr_expect(strstr(cal_error_msg(&err), "did not publish the rendezvous file"), "%s",
		  cal_error_msg(&err));
	cal_error_clear(&err);
	cal_backend_free(be);
	job_fini(&j);
}
