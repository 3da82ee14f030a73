/*
 * opcases.h — back-end comparison cases: for every op of ops.def one
 * function that builds random inputs of a given shape, runs the op on two
 * back ends (A and B) and requires byte-identical outputs, with guard bytes
 * after every output buffer checked on both sides.  Used by the unit suite
 * (reference 1 thread vs CPU N threads) and by the gpu suite (CPU vs CUDA).
 */
#ifndef CAL_TEST_OPCASES_H
#define CAL_TEST_OPCASES_H

#include <stdint.h>

#include "kernels/ops.h"

struct opcase_env {
	struct cal_backend *a, *b;
	int specials;      /* also feed NaN/inf to observers */
	unsigned misalign; /* offset data buffers by this many bytes (0 or 4) */
};

/* Runs op `id` on shape (rows, units): units counts the op's blocks per row
 * (elements for un-blocked ops).  Returns 0 when both back ends agree; else
 * prints what differed (op, shape, seed, first byte) and returns -1. */
typedef int (*opcase_fn)(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);

/* Indexed by enum cal_op_id; NULL where an op has no case (a test fails). */
extern const opcase_fn opcase_table[CAL_OP_COUNT];

int opcase_run(struct opcase_env *env, enum cal_op_id id, uint64_t rows, uint64_t units,
	       uint64_t seed);

#endif
