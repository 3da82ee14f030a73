/*
 * commcheck.h — one rank's side of the collective checks shared by the
 * multigpu suite (threads, processes, NCCL) and the gpu suite's 1-rank NCCL
 * test.  Every rank derives every rank's inputs from (seed, iteration, rank),
 * so each can compute the serial reference itself: sums in rank order, max,
 * placement in rank order, alltoallv with random per-pair sizes (zeros
 * included).  Buffers live in the endpoint's back end (host or device).
 */
#ifndef CAL_TEST_COMMCHECK_H
#define CAL_TEST_COMMCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/comm.h"

/* Runs iters rounds of every collective; 0 when every result equals the
 * reference bit for bit, else -1 with the first difference or error in msg. */
int commcheck_run(struct cal_comm *c, uint64_t seed, unsigned iters, char *msg, size_t msg_size);

#endif
