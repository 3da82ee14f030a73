/*
 * test_comm_procs.c — kernels/comm.h with one rank per process: CPU ranks
 * over TCP on loopback (always) and GPU ranks through NCCL (skipped, with
 * the reason, without NCCL or 2 GPUs).  R processes rendezvous through a
 * file in a temporary directory and run every collective against the
 * serial reference; a rank stopped with SIGSTOP makes the other's
 * collective fail within the deadline (TCP: naming it); a killed rank fails
 * it (TCP: at once).  No CUDA is initialised before a fork: the GPU count
 * is probed in a child.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
	enum cal_comm_kind kind;
	unsigned R, timeout_ms;
	uint64_t seed;
};

static void job_init(struct job *j, enum cal_comm_kind kind, unsigned R, unsigned timeout_ms,
		     uint64_t seed)
{
	j->kind = kind;
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

static enum cal_status open_rank(const struct job *j, unsigned rank, struct cal_backend **be,
				 struct cal_comm **c, struct cal_error *err)
{
	return commcheck_open(j->kind, j->R, rank, j->rdv, j->timeout_ms, be, c, err);
}

/* NCCL tests: skip (visibly) without NCCL or with fewer than 2 GPUs; the
 * count comes from a child so that this process forks CUDA-free. */
static void need_two_gpus(void)
{
	if (!cal_comm_nccl_built())
		cr_skip_test("this build has no NCCL: NCCL ranks across processes not tested");
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (!pid) {
		int n = 0;
		cal_backend_cuda_device_count(&n, NULL);
		_exit(n > 100 ? 100 : n);
	}
	int status;
	waitpid(pid, &status, 0);
	int n = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
	if (n < 2)
		cr_skip_test("%d GPU(s) here: NCCL across processes needs 2", n);
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
	/* a stopped child must not outlive a test that failed before killing it */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
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

static void check_processes(enum cal_comm_kind kind, unsigned R, uint64_t seed)
{
	struct job j;
	job_init(&j, kind, R, 60000, seed);
	printf("comm %s R=%u seed %llu\n", cal_comm_kind_name(kind), R, (unsigned long long)seed);
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
	if (kind == CAL_COMM_TCP)
		cr_expect_neq(access(j.rdv, F_OK), 0, "rank 0 removes the rendezvous file once all joined");
	job_fini(&j);
}

Test(comm_procs, tcp_two_processes) { check_processes(CAL_COMM_TCP, 2, 21); }
Test(comm_procs, tcp_four_processes) { check_processes(CAL_COMM_TCP, 4, 23); }
Test(comm_procs, nccl_two_processes)
{
	need_two_gpus();
	check_processes(CAL_COMM_NCCL, 2, 25);
}

/* One fault: this process is rank `me` of 2, the other rank a child in
 * mode (killed after the first barrier when kill_it).  This rank's
 * allreduce after that barrier (deadline 2 s) must fail with CAL_ERR_DEVICE
 * and a message holding `expect`, after min_ms..max_ms; every later call
 * fails fast. */
struct fault {
	enum cal_comm_kind kind;
	unsigned me;
	enum child_mode mode;
	int kill_it;
	char expect[96]; /* an array: Criterion re-executes the binary, so no pointers */
	double min_ms, max_ms;
};

static void check_fault(const struct fault *f)
{
	struct job j;
	job_init(&j, f->kind, 2, 60000, 0); /* joining NCCL takes seconds */
	pid_t pid = spawn(&j, 1 - f->me, f->mode);
	struct cal_error err = {0};
	struct cal_backend *be = NULL;
	struct cal_comm *c = NULL;
	cr_assert_eq(open_rank(&j, f->me, &be, &c, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_comm_set_timeout(c, 2000);
	cr_assert_eq(cal_comm_barrier(c, &err), CAL_OK, "%s", cal_error_msg(&err));
	if (f->kill_it) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	uint64_t v = 5;
	double t0 = now_ms();
	enum cal_status st = cal_comm_allreduce(c, &v, 1, CAL_COMM_U64, CAL_COMM_SUM, &err);
	double ms = now_ms() - t0;
	cr_expect_eq(st, CAL_ERR_DEVICE);
	cr_expect(strstr(cal_error_msg(&err), f->expect), "%s", cal_error_msg(&err));
	cr_expect(ms >= f->min_ms && ms < f->max_ms, "failed after %.0f ms (deadline 2000)", ms);
	cal_error_clear(&err);
	t0 = now_ms();
	cr_expect_eq(cal_comm_barrier(c, &err), CAL_ERR_DEVICE);
	cr_expect(strstr(cal_error_msg(&err), "failed earlier"), "%s", cal_error_msg(&err));
	cr_expect(now_ms() - t0 < 100);
	cal_error_clear(&err);
	cal_comm_free(c);
	cal_backend_free(be);
	if (f->mode == CHILD_ABORT)
		cr_expect_eq(wait_exit(pid), 0);
	else if (!f->kill_it) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	job_fini(&j);
}

/* rank 1 stopped; rank 0 stopped (seen from rank 1); rank 1 killed; rank 1
 * aborting with a reason */
static struct fault tcp_faults[] = {
	{CAL_COMM_TCP, 0, CHILD_STOP, 0,
	 "allreduce #2 on rank 0: rank 1 did not arrive within 2000 ms", 1900, 3000},
	{CAL_COMM_TCP, 1, CHILD_STOP, 0,
	 "on rank 1: rank 0 (the relay) did not answer within 2000 ms", 1900, 3000},
	{CAL_COMM_TCP, 0, CHILD_STOP, 1, "rank 1 closed the connection", 0, 1000},
	{CAL_COMM_TCP, 0, CHILD_ABORT, 0,
	 "rank 1 reported: rank 1 aborted: the worker was cancelled", 0, 1000},
};

ParameterizedTestParameters(comm_procs, tcp_faults)
{
	return cr_make_param_array(struct fault, tcp_faults, sizeof(tcp_faults) / sizeof(*tcp_faults));
}

ParameterizedTest(struct fault *f, comm_procs, tcp_faults)
{
	check_fault(f);
}

Test(comm_procs, tcp_missing_rank_fails_joining)
{
	struct job j;
	job_init(&j, CAL_COMM_TCP, 3, 500, 0);
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
	job_fini(&j);
	job_init(&j, CAL_COMM_TCP, 2, 300, 0);
	cr_expect_eq(open_rank(&j, 1, &be, &c, &err), CAL_ERR_DEVICE);
	cr_expect(strstr(cal_error_msg(&err), "did not publish the rendezvous file"), "%s",
		  cal_error_msg(&err));
	cal_error_clear(&err);
	cal_backend_free(be);
	job_fini(&j);
}

/* NCCL: the watchdog aborts the communicator at the deadline; NCCL cannot
 * say which rank is missing. */
Test(comm_procs, nccl_stopped_rank_fails_within_deadline)
{
	static const struct fault f = {CAL_COMM_NCCL, 0, CHILD_STOP, 0,
		"allreduce #2 on rank 0: NCCL allreduce did not complete before the deadline", 1900,
		4000};
	need_two_gpus();
	check_fault(&f);
}

Test(comm_procs, nccl_killed_rank_fails_by_the_deadline)
{
	static const struct fault f = {CAL_COMM_NCCL, 0, CHILD_STOP, 1,
		"allreduce #2 on rank 0: NCCL allreduce", 0, 4000};
	need_two_gpus();
	check_fault(&f);
}

/* cal_comm_abort from another thread wakes a TCP rank inside a collective,
 * and the peer learns the reason.  Both ranks live in this process here
 * (two threads, two one-rank worlds joined over loopback). */
struct tcp_rank {
	struct job *j;
	unsigned rank;
	struct cal_backend *be;
	struct cal_comm *c;
	enum cal_status st;
};

static void *tcp_open_thread(void *p)
{
	struct tcp_rank *t = p;
	struct cal_error err = {0};
	t->st = open_rank(t->j, t->rank, &t->be, &t->c, &err);
	cal_error_clear(&err);
	return NULL;
}

static void *tcp_barrier_thread(void *p)
{
	struct tcp_rank *t = p;
	t->st = cal_comm_barrier(t->c, NULL);
	return NULL;
}

Test(comm_procs, tcp_abort_from_another_thread)
{
	struct job j;
	job_init(&j, CAL_COMM_TCP, 2, 30000, 0);
	struct tcp_rank r[2] = {{&j, 0, NULL, NULL, CAL_OK}, {&j, 1, NULL, NULL, CAL_OK}};
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, tcp_open_thread, &r[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	cr_assert(r[0].st == CAL_OK && r[1].st == CAL_OK);
	/* rank 0 waits in a barrier that rank 1 does not join */
	pthread_create(&th[0], NULL, tcp_barrier_thread, &r[0]);
	struct timespec nap = {0, 100000000};
	nanosleep(&nap, NULL);
	double t0 = now_ms();
	cal_comm_abort(r[0].c, "stopped by the supervisor");
	pthread_join(th[0], NULL);
	cr_expect_eq(r[0].st, CAL_ERR_DEVICE);
	cr_expect(now_ms() - t0 < 1000, "woke after %.0f ms", now_ms() - t0);
	const char *why = NULL;
	cr_expect(cal_comm_failed(r[0].c, &why) &&
		  strstr(why, "rank 0 aborted: stopped by the supervisor"), "%s", why ? why : "(none)");
	/* rank 1 hears it on its next call */
	struct cal_error err = {0};
	uint64_t v = 1;
	cr_expect_eq(cal_comm_allreduce(r[1].c, &v, 1, CAL_COMM_U64, CAL_COMM_SUM, &err),
		     CAL_ERR_DEVICE);
	cr_expect(strstr(cal_error_msg(&err),
			 "rank 0 reported: rank 0 aborted: stopped by the supervisor"),
		  "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	for (int i = 0; i < 2; i++) {
		cal_comm_free(r[i].c);
		cal_backend_free(r[i].be);
	}
	job_fini(&j);
}
