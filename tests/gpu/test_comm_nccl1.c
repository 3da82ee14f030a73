/*
 * test_comm_nccl1.c — suite 'gpu': kernels/comm.h with one NCCL rank on GPU
 * 0: every collective against the serial reference (commcheck.c, through
 * device memory), the counts exchange, abort and fail-fast afterwards.
 * Exits 77 (SKIP) with the reason when the build has no NCCL or there is
 * no GPU.  (2 and more GPUs: the multigpu suite.)
 */
#include <stdio.h>
#include <string.h>

#include "../multigpu/commcheck.h"
#include "kernels/comm.h"

static int fails;

static void expect(int ok, const char *what, const char *detail)
{
	if (!ok) {
		fprintf(stderr, "FAIL %s: %s\n", what, detail ? detail : "");
		fails++;
	}
}

int main(void)
{
	if (!cal_comm_nccl_built()) {
		printf("SKIP: this build has no NCCL\n");
		return 77;
	}
	int n = 0;
	struct cal_error err = {0};
	if (cal_backend_cuda_device_count(&n, &err) < 0 || n == 0) {
		printf("SKIP: no GPU (%s)\n", err.msg ? err.msg : "0 devices");
		return 77;
	}
	struct cal_backend *be = NULL;
	struct cal_comm *c = NULL;
	char msg[1024];
	/* through a world (the form a process hosting several GPUs uses) */
	struct cal_comm_opts o = {.kind = CAL_COMM_NCCL, .nranks = 1, .timeout_ms = 60000};
	struct cal_comm_world *w = NULL;
	if (commcheck_backend(CAL_COMM_NCCL, 0, &be, &err) < 0 ||
	    cal_comm_world_new(&o, &w, &err) < 0 || cal_comm_world_join(w, 0, be, &c, &err) < 0) {
		fprintf(stderr, "FAIL setup: %s\n", cal_error_msg(&err));
		return 1;
	}
	cal_comm_world_free(w);
	printf("comm nccl R=1 on %s\n", cal_backend_describe(be));
	expect(commcheck_run(c, 41, 6, msg, sizeof(msg)) == 0, "collectives", msg);
	struct cal_comm_stats s;
	cal_comm_get_stats(c, &s);
	printf("%llu collectives\n", (unsigned long long)s.total.calls);

	/* abort: the call fails fast with the reason, so do the later ones */
	cal_comm_abort(c, "test abort");
	void *d = NULL;
	expect(cal_backend_alloc(be, 8, &d, &err) == CAL_OK, "alloc", cal_error_msg(&err));
	enum cal_status st = cal_comm_allreduce(c, d, 1, CAL_COMM_U64, CAL_COMM_SUM, &err);
	expect(st == CAL_ERR_DEVICE && strstr(cal_error_msg(&err), "rank 0 aborted: test abort"),
	       "allreduce after abort", cal_error_msg(&err));
	cal_error_clear(&err);
	cal_backend_dealloc(be, d);
	cal_comm_free(c);
	cal_backend_free(be);

	/* cal_comm_open, 1 rank: no rendezvous file needed */
	expect(commcheck_open(CAL_COMM_NCCL, 1, 0, NULL, 60000, &be, &c, &err) == CAL_OK,
	       "cal_comm_open", cal_error_msg(&err));
	if (c)
		expect(commcheck_run(c, 43, 2, msg, sizeof(msg)) == 0, "collectives (open)", msg);
	cal_comm_free(c);
	cal_backend_free(be);
	printf("%s\n", fails ? "FAILED" : "ok");
	return fails ? 1 : 0;
}
