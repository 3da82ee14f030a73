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

/* The back end a rank of kind uses (cpu for THREADS and TCP; cuda device
 * `rank` for NCCL) and its endpoint through cal_comm_open (rendezvous may be
 * NULL for a 1-rank job).  On failure *be may be set (free it). */
enum cal_status commcheck_open(enum cal_comm_kind kind, unsigned R, unsigned rank,
			       const char *rendezvous, unsigned timeout_ms,
			       struct cal_backend **be, struct cal_comm **c,
			       struct cal_error *err);

/* A back end for a rank of kind (see commcheck_open). */
enum cal_status commcheck_backend(enum cal_comm_kind kind, unsigned rank, struct cal_backend **be,
				  struct cal_error *err);
