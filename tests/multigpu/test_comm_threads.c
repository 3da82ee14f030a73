/*
 * test_comm_threads.c — kernels/comm.h with R ranks as threads of one
 * process: CAL_COMM_THREADS on the CPU back end (every collective against
 * the serial reference, commcheck.c, with R = 1..4; the deadline naming the
 * rank that did not arrive, abort, mismatched calls, counters, options) and
 * NCCL with one thread per GPU (skipped, with the reason, without NCCL or
 * 2 GPUs).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "commcheck.h"
#include "kernels/comm.h"

#define MAXR 8

struct rank_run {
	struct cal_comm_world *world;
	enum cal_comm_kind kind;
	unsigned rank;
	uint64_t seed;
	int (*body)(struct rank_run *rr, struct cal_comm *c);
	void *arg;
	int rc;
	enum cal_status st; /* of the body's collective, where it records one */
	char msg[1024];
	double ms;          /* how long the body's collective took */
};

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void *rank_main(void *p)
{
	struct rank_run *rr = p;
	struct cal_error err = {0};
	struct cal_backend *be = NULL;
	struct cal_comm *c = NULL;
	if (commcheck_backend(rr->kind, rr->rank, &be, &err) < 0 ||
	    cal_comm_world_join(rr->world, rr->rank, be, &c, &err) < 0) {
		snprintf(rr->msg, sizeof(rr->msg), "rank %u: %s", rr->rank, cal_error_msg(&err));
		rr->rc = -1;
	} else {
		rr->rc = rr->body(rr, c);
	}
	cal_error_clear(&err);
	cal_comm_free(c);
	cal_backend_free(be);
	return NULL;
}

/* Runs body on R ranks (threads) of one world of kind with timeout_ms. */
static void run_kind(enum cal_comm_kind kind, unsigned R, unsigned timeout_ms, uint64_t seed,
		     int (*body)(struct rank_run *, struct cal_comm *), void *arg,
		     struct rank_run *rr)
{
	struct cal_comm_opts o = {.kind = kind, .nranks = R, .timeout_ms = timeout_ms};
	struct cal_comm_world *w;
	struct cal_error err = {0};
	cr_assert_eq(cal_comm_world_new(&o, &w, &err), CAL_OK, "%s", cal_error_msg(&err));
	pthread_t th[MAXR];
	for (unsigned r = 0; r < R; r++) {
		rr[r] = (struct rank_run){.world = w, .kind = kind, .rank = r, .seed = seed, .body = body,
					  .arg = arg};
		cr_assert_eq(pthread_create(&th[r], NULL, rank_main, &rr[r]), 0);
	}
	for (unsigned r = 0; r < R; r++)
		pthread_join(th[r], NULL);
	cal_comm_world_free(w);
}

static void run_ranks(unsigned R, unsigned timeout_ms, uint64_t seed,
		      int (*body)(struct rank_run *, struct cal_comm *), void *arg,
		      struct rank_run *rr)
{
	run_kind(CAL_COMM_THREADS, R, timeout_ms, seed, body, arg, rr);
}

/* Records a collective's outcome in rr (status, message, ms since t0). */
static int record(struct rank_run *rr, enum cal_status st, struct cal_error *err, double t0)
{
	rr->ms = now_ms() - t0;
	rr->st = st;
	snprintf(rr->msg, sizeof(rr->msg), "%s", cal_error_msg(err));
	cal_error_clear(err);
	return 0;
}

/* rr's collective ended with st, a message holding substr, before max_ms. */
static void expect_outcome(const struct rank_run *rr, enum cal_status st, const char *substr,
			   double max_ms)
{
	cr_expect_eq(rr->st, st, "rank %u: status %d", rr->rank, (int)rr->st);
	cr_expect(strstr(rr->msg, substr), "rank %u: %s", rr->rank, rr->msg);
	cr_expect(rr->ms < max_ms, "rank %u: %.0f ms", rr->rank, rr->ms);
}

static int body_check(struct rank_run *rr, struct cal_comm *c)
{
	return commcheck_run(c, rr->seed, 7, rr->msg, sizeof(rr->msg));
}

static void check_all(unsigned R, uint64_t seed)
{
	struct rank_run rr[MAXR];
	printf("comm threads R=%u seed %llu\n", R, (unsigned long long)seed);
	run_ranks(R, 20000, seed, body_check, NULL, rr);
	for (unsigned r = 0; r < R; r++)
		cr_expect_eq(rr[r].rc, 0, "R=%u: %s", R, rr[r].msg);
}

Test(comm_threads, collectives_r1) { check_all(1, 11); }
Test(comm_threads, collectives_r2) { check_all(2, 12); }
Test(comm_threads, collectives_r4) { check_all(4, 14); }
Test(comm_threads, collectives_r3_other_seed) { check_all(3, 0x5eed); }

/* NCCL, one thread per GPU (up to 8), the same checks. */
Test(comm_threads, nccl_one_thread_per_gpu)
{
	if (!cal_comm_nccl_built())
		cr_skip_test("this build has no NCCL: NCCL ranks not tested");
	int n = 0;
	cal_backend_cuda_device_count(&n, NULL);
	if (n < 2)
		cr_skip_test("%d GPU(s) here: the NCCL test needs 2", n);
	unsigned R = n > MAXR ? MAXR : (unsigned)n;
	struct rank_run rr[MAXR];
	printf("comm nccl R=%u seed 31\n", R);
	run_kind(CAL_COMM_NCCL, R, 60000, 31, body_check, NULL, rr);
	for (unsigned r = 0; r < R; r++)
		cr_expect_eq(rr[r].rc, 0, "R=%u: %s", R, rr[r].msg);
}

/* rank 1 does not call: rank 0's allreduce fails at the deadline naming
 * rank 1; afterwards every call fails fast, rank 1's included. */
static int body_missing(struct rank_run *rr, struct cal_comm *c)
{
	struct cal_error err = {0};
	uint64_t v = 1;
	if (rr->rank == 1) {
		while (!cal_comm_failed(c, NULL)) {
			struct timespec nap = {0, 5000000};
			nanosleep(&nap, NULL);
		}
	}
	double t0 = now_ms();
	return record(rr, cal_comm_allreduce(c, &v, 1, CAL_COMM_U64, CAL_COMM_SUM, &err), &err, t0);
}

Test(comm_threads, missing_rank_fails_at_deadline_naming_it)
{
	struct rank_run rr[2];
	run_ranks(2, 300, 0, body_missing, NULL, rr);
	expect_outcome(&rr[0], CAL_ERR_DEVICE,
		       "allreduce #1 on rank 0: rank 1 did not arrive within 300 ms", 2000);
	cr_expect(rr[0].ms >= 250, "failed after %.0f ms, before the deadline", rr[0].ms);
	expect_outcome(&rr[1], CAL_ERR_DEVICE, "failed earlier: allreduce #1 on rank 0: rank 1", 100);
}

/* rank 3 aborts while the others wait in a barrier: they wake at once. */
static int body_abort(struct rank_run *rr, struct cal_comm *c)
{
	struct cal_error err = {0};
	if (rr->rank == 3) {
		struct timespec nap = {0, 50000000};
		nanosleep(&nap, NULL);
		cal_comm_abort(c, "cancelled by the test");
	}
	double t0 = now_ms();
	return record(rr, cal_comm_barrier(c, &err), &err, t0);
}

Test(comm_threads, abort_wakes_every_rank)
{
	struct rank_run rr[4];
	run_ranks(4, 60000, 0, body_abort, NULL, rr);
	for (unsigned r = 0; r < 4; r++)
		expect_outcome(&rr[r], CAL_ERR_DEVICE, "rank 3 aborted: cancelled by the test", 1000);
}

/* rank 0 calls allreduce, rank 1 broadcast: both fail, naming the other call. */
static int body_mismatch(struct rank_run *rr, struct cal_comm *c)
{
	struct cal_error err = {0};
	uint64_t v = 1;
	double t0 = now_ms();
	if (rr->rank == 0)
		return record(rr, cal_comm_allreduce(c, &v, 1, CAL_COMM_U64, CAL_COMM_SUM, &err), &err,
			      t0);
	return record(rr, cal_comm_broadcast(c, &v, 8, 0, &err), &err, t0);
}

Test(comm_threads, mismatched_calls_fail_on_every_rank)
{
	struct rank_run rr[2];
	run_ranks(2, 5000, 0, body_mismatch, NULL, rr);
	/* whichever rank checks first names the other's call */
	expect_outcome(&rr[0], CAL_ERR_DEVICE, " called ", 1000);
	expect_outcome(&rr[1], CAL_ERR_DEVICE, " called ", 1000);
}

/* A caller's mistake on rank 0 (CAL_ERR_INVALID there) wakes rank 1 at once. */
static int body_invalid(struct rank_run *rr, struct cal_comm *c)
{
	struct cal_error err = {0};
	uint64_t v = 1;
	double t0 = now_ms();
	if (rr->rank == 0)
		return record(rr, cal_comm_broadcast(c, &v, 8, 7, &err), &err, t0);
	return record(rr, cal_comm_barrier(c, &err), &err, t0);
}

Test(comm_threads, invalid_call_fails_the_world)
{
	struct rank_run rr[2];
	run_ranks(2, 60000, 0, body_invalid, NULL, rr);
	expect_outcome(&rr[0], CAL_ERR_INVALID,
		       "broadcast #1 on rank 0: invalid call: root outside the ranks", 1000);
	expect_outcome(&rr[1], CAL_ERR_DEVICE, "invalid call", 1000);
}

/* Counters: payload bytes to and from other ranks, per operation. */
static int body_counters(struct rank_run *rr, struct cal_comm *c)
{
	struct cal_error err = {0};
	char send[100] = {0}, recv[400];
	uint64_t sb[4] = {10, 20, 30, 40}, rb[4], in[40 * 4 + 100], out[1000];
	float f[5] = {0};
	memset(in, 0, sizeof(in));
	if (cal_comm_allgather(c, send, 100, recv, &err) < 0 ||
	    cal_comm_allreduce(c, f, 5, CAL_COMM_F32, CAL_COMM_MAX, &err) < 0 ||
	    cal_comm_broadcast(c, send, 100, 2, &err) < 0 ||
	    cal_comm_alltoall_counts(c, sb, rb, &err) < 0 ||
	    cal_comm_alltoallv(c, in, sb, out, rb, &err) < 0) {
		snprintf(rr->msg, sizeof(rr->msg), "%s", cal_error_msg(&err));
		cal_error_clear(&err);
		return -1;
	}
	struct cal_comm_stats s;
	cal_comm_get_stats(c, &s);
	uint64_t me = sb[rr->rank];
	int ok = s.total.calls == 5 && s.op[CAL_COMM_OP_ALLGATHER].bytes_sent == 300 &&
		 s.op[CAL_COMM_OP_ALLGATHER].bytes_recv == 300 &&
		 s.op[CAL_COMM_OP_ALLREDUCE].bytes_sent == 60 &&
		 s.op[CAL_COMM_OP_BROADCAST].bytes_sent == (rr->rank == 2 ? 300u : 0u) &&
		 s.op[CAL_COMM_OP_BROADCAST].bytes_recv == (rr->rank == 2 ? 0u : 100u) &&
		 s.op[CAL_COMM_OP_COUNTS].bytes_sent == 24 &&
		 s.op[CAL_COMM_OP_ALLTOALLV].bytes_sent == 100 - me &&
		 s.op[CAL_COMM_OP_ALLTOALLV].bytes_recv == 3 * me;
	cal_comm_reset_stats(c);
	cal_comm_get_stats(c, &s);
	ok = ok && s.total.calls == 0;
	if (!ok)
		snprintf(rr->msg, sizeof(rr->msg), "rank %u: counters wrong", rr->rank);
	return ok ? 0 : -1;
}

Test(comm_threads, counters)
{
	struct rank_run rr[4];
	run_ranks(4, 5000, 0, body_counters, NULL, rr);
	for (unsigned r = 0; r < 4; r++)
		cr_expect_eq(rr[r].rc, 0, "%s", rr[r].msg);
}

Test(comm_threads, options_are_checked)
{
	struct cal_comm_world *w = NULL;
	struct cal_error err = {0};
	struct cal_comm_opts o = {.kind = CAL_COMM_THREADS, .nranks = 0};
	cr_expect_eq(cal_comm_world_new(&o, &w, &err), CAL_ERR_RANGE);
	cal_error_clear(&err);
	o = (struct cal_comm_opts){.kind = CAL_COMM_THREADS, .nranks = 4, .local_ranks = 2};
	cr_expect_eq(cal_comm_world_new(&o, &w, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);
	o = (struct cal_comm_opts){.kind = CAL_COMM_TCP, .nranks = 2, .local_ranks = 2,
				   .rendezvous = "/tmp/x"};
	cr_expect_eq(cal_comm_world_new(&o, &w, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);
	o = (struct cal_comm_opts){.kind = CAL_COMM_TCP, .nranks = 2, .local_ranks = 1};
	cr_expect_eq(cal_comm_world_new(&o, &w, &err), CAL_ERR_INVALID, "no rendezvous file");
	cr_expect(strstr(cal_error_msg(&err), "rendezvous"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	if (!cal_comm_nccl_built()) {
		o = (struct cal_comm_opts){.kind = CAL_COMM_NCCL, .nranks = 1};
		cr_expect_eq(cal_comm_world_new(&o, &w, &err), CAL_ERR_UNSUPPORTED);
		cr_expect(strstr(cal_error_msg(&err), "without NCCL"), "%s", cal_error_msg(&err));
		cal_error_clear(&err);
	}
	/* a rank joins once, with a CPU back end */
	o = (struct cal_comm_opts){.kind = CAL_COMM_THREADS, .nranks = 2};
	cr_assert_eq(cal_comm_world_new(&o, &w, &err), CAL_OK);
	struct cal_backend *be;
	cr_assert_eq(cal_backend_init(CAL_BACKEND_CPU, NULL, &be, &err), CAL_OK);
	struct cal_comm *c = NULL, *c2 = NULL;
	cr_expect_eq(cal_comm_world_join(w, 2, be, &c, &err), CAL_ERR_INVALID);
	cal_error_clear(&err);
	cr_expect_eq(cal_comm_world_join(w, 1, be, &c, &err), CAL_OK);
	cr_expect_eq(cal_comm_world_join(w, 1, be, &c2, &err), CAL_ERR_INVALID);
	cr_expect(strstr(cal_error_msg(&err), "joined twice"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_expect_eq(cal_comm_rank(c), 1);
	cr_expect_eq(cal_comm_size(c), 2);
	cr_expect_eq(cal_comm_kind(c), CAL_COMM_THREADS);
	enum cal_comm_kind k;
	cr_expect_eq(cal_comm_kind_from_name("tcp", &k), 0);
	cr_expect_eq(k, CAL_COMM_TCP);
	cr_expect_eq(cal_comm_kind_from_name("mpi", &k), -1);
	cal_comm_world_free(w);
	cal_comm_free(c);
	cal_backend_free(be);
}
