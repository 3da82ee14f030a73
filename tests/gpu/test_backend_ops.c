/*
 * test_backend_ops.c — gpu suite: every op of ops.def on the CPU back end
 * and on the CUDA back end, on random tensors of many shapes (size 1, odd,
 * prime, exact multiples, misaligned pointers, one ~64M-element case), must
 * give byte-identical outputs with intact guard bytes; the golden vectors of
 * docs/numerics.md must come out of the CUDA back end byte for byte.
 *
 * A plain main (no Criterion): Criterion forks per test, and the process
 * must not fork after CUDA is initialised.  Exits 77 (meson: SKIP) when no
 * CUDA device is present; seeds are printed so any failure can be rerun:
 *   test_backend_ops [--seed N] [--quick] [--op NAME[,NAME...]]
 * (--op limits step 3 to those ops, e.g. --op gated_delta,gdn_conv).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../numerics/goldens.h"
#include "../numerics/opcases.h"
#include "common/util.h"
#include "kernels/ops.h"

static const uint64_t shapes[][2] = {
	{1, 1}, {1, 2}, {2, 1}, {3, 3}, {7, 5}, {13, 1}, {1, 97}, {31, 17}, {64, 8},
	{128, 32}, {127, 3}, {257, 2}, {1000, 7}, {4096, 4}, {512, 64},
};

int main(int argc, char **argv)
{
	struct cal_error err = {0};
	struct cal_backend *cpu = NULL, *cuda = NULL;
	uint64_t seed = 1234567;
	int quick = 0, ndev = 0, bad = 0;
	const char *only = NULL;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--seed") && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--quick"))
			quick = 1;
		else if (!strcmp(argv[i], "--op") && i + 1 < argc)
			only = argv[++i];
		else {
			fprintf(stderr, "usage: %s [--seed N] [--quick] [--op NAME[,NAME...]]\n",
				argv[0]);
			return 2;
		}
	}
	if (cal_backend_cuda_device_count(&ndev, &err) < 0) {
		fprintf(stderr, "counting CUDA devices: %s\n", cal_error_msg(&err));
		return 1;
	}
	if (ndev == 0) {
		printf("SKIP: no CUDA device (or no driver) on this machine\n");
		return 77;
	}
	if (cal_backend_init(CAL_BACKEND_CPU, NULL, &cpu, &err) < 0 ||
	    cal_backend_init(CAL_BACKEND_CUDA, NULL, &cuda, &err) < 0) {
		fprintf(stderr, "back end: %s\n", cal_error_msg(&err));
		return 1;
	}
	printf("cuda: %s\ncpu: %u threads\nbase seed: %" PRIu64 " (rerun: --seed %" PRIu64 ")\n",
	       cal_backend_describe(cuda), cpu->cpu_threads, seed, seed);

	/* 1. every op has a case, and CUDA says it runs every op */
	for (int op = 0; op < CAL_OP_COUNT; op++) {
		if (!opcase_table[op]) {
			fprintf(stderr, "FAIL: op %s has no back-end comparison case\n",
				cal_op_name((enum cal_op_id)op));
			bad++;
		}
		if (!cal_backend_supports_op(cuda, (enum cal_op_id)op)) {
			fprintf(stderr, "FAIL: cuda does not support op %s\n",
				cal_op_name((enum cal_op_id)op));
			bad++;
		}
	}
	if (!cal_backend_supports(cuda, CAL_BACKEND_FEATURE_PINNED_HOST) ||
	    !cal_backend_supports(cuda, CAL_BACKEND_FEATURE_ASYNC_UPLOAD) ||
	    cal_backend_supports(cuda, CAL_BACKEND_FEATURE_HOST_MEMORY)) {
		fprintf(stderr, "FAIL: cuda's features (pinned host, async upload, no host memory)\n");
		bad++;
	}

	/* 2. goldens on CUDA and on CPU */
	struct golden_result g;
	if (golden_run(cuda, &g, &err) < 0) {
		fprintf(stderr, "FAIL: goldens on cuda: %s\n", cal_error_msg(&err));
		cal_error_clear(&err);
		bad++;
	} else {
		int n = golden_check(&g, "cuda");
		printf("goldens (cuda): %s\n", n ? "FAIL" : "ok");
		bad += n;
	}

	/* 3. every op, every shape, aligned and misaligned, CPU vs CUDA */
	struct opcase_env env = {cpu, cuda, 1, 0};
	uint64_t s = seed;
	for (int op = 0; op < CAL_OP_COUNT; op++) {
		int op_bad = 0;
		double t0 = cal_now();
		if (only) {
			const char *nm = cal_op_name((enum cal_op_id)op), *p = only;
			size_t l = strlen(nm);
			int hit = 0;
			for (; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
				hit |= !strncmp(p, nm, l) && (p[l] == ',' || p[l] == 0);
			if (!hit)
				continue;
		}
		for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
			for (unsigned mis = 0; mis <= 4; mis += 4, s++) {
				env.misalign = mis;
				op_bad |= opcase_run(&env, (enum cal_op_id)op, shapes[i][0], shapes[i][1], s);
			}
		}
		/* one large case, ~64M elements (16M for the compute-bound MSE sweep) */
		if (!quick) {
			uint64_t units = 8192, rows = 8192;
			const char *nm = cal_op_name((enum cal_op_id)op);
			if (strstr(nm, "nvfp4"))
				units = 8192 / 16;
			else if (strstr(nm, "mx"))
				units = 8192 / 32;
			else if (strstr(nm, "int4"))
				units = 8192 / 128, rows = 4096; /* rows are doubled */
			else if (strstr(nm, "int8")) /* cols = 7 units (+ seed % 5) */
				units = 8192 / 7;
			else if (!strcmp(nm, "amax_cols")) /* cols = 3 units (+ seed % 7) */
				units = 8192 / 3;
			else if (!strcmp(nm, "amax_blocks"))
				units = 8192 / 128;
			else if (!strcmp(nm, "logit_kl")) /* vocab = 37 units + 1 */
				units = 8192 / 37;
			else if (!strcmp(nm, "err_rows")) /* cols = 5 units */
				units = 8192 / 5;
			else if (!strcmp(nm, "amax_hist"))
				units = 8192 / 32;
			if (!strcmp(nm, "nvfp4_mse_sweep"))
				rows = 2048;
			if (!strcmp(nm, "hessian")) /* cols^2 outputs: 4096 tokens x 300 */
				rows = 4096;
			env.misalign = 0;
			op_bad |= opcase_run(&env, (enum cal_op_id)op, rows, units, s++);
		}
		printf("%-20s %s (%.1f s)\n", cal_op_name((enum cal_op_id)op), op_bad ? "FAIL" : "ok",
		       cal_now() - t0);
		bad += op_bad != 0;
	}

	/* 4. a device error is returned, not fatal */
	void *p = NULL;
	if (cal_backend_alloc(cuda, (size_t)1 << 60, &p, &err) != CAL_ERR_NOMEM) {
		fprintf(stderr, "FAIL: a 2^60-byte cudaMalloc did not return CAL_ERR_NOMEM\n");
		bad++;
	} else {
		printf("huge alloc -> %s\n", cal_error_msg(&err));
	}
	cal_error_clear(&err);

	cal_backend_free(cuda);
	cal_backend_free(cpu);
	printf("%s\n", bad ? "FAILED" : "all ops byte-identical on cpu and cuda");
	return bad ? 1 : 0;
}
