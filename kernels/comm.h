/*
 * comm.h — collectives between the ranks of one job (docs/comm.md).
 *
 * A job over R ranks gives each rank one endpoint, struct cal_comm.  The
 * same engine code runs on three implementations:
 *
 *   CAL_COMM_THREADS  R ranks as threads of one process on the CPU back end;
 *                     the ranks read each other's buffers in shared memory.
 *   CAL_COMM_TCP      one CPU rank per process (or per node), connected by
 *                     TCP sockets; rank 0 relays (a star).
 *   CAL_COMM_NCCL     GPU ranks (CUDA back end), one per GPU, through NCCL;
 *                     a process may host several of them as threads.
 *
 * Buffers.  Every data pointer a collective takes lives in the memory of the
 * rank's back end (kernels/backend.h): host memory for the cpu back end,
 * device memory for cuda.  Arrays of sizes (send_bytes, recv_bytes) and the
 * counts of cal_comm_alltoall_counts are host memory.
 *
 * Calls.  Every rank calls the same collectives in the same order with
 * matching arguments (the same count, dtype, op and root; alltoallv's
 * recv_bytes[p] on rank r equal to send_bytes[r] on rank p).  A collective
 * returns only when it is complete on this rank (its output may be read and
 * its input reused) or has failed.  One endpoint is used by one thread at a
 * time; different endpoints of one world by different threads.  A
 * mismatch that an implementation can see (THREADS, TCP) fails with
 * CAL_ERR_INVALID naming both ranks' calls; NCCL cannot see every one.
 *
 * Exactness.  max is exact; sums are computed in rank order 0, 1, ..., R-1
 * whatever the arrival order, so results are the same on every rank and on
 * every run (u64 sums are exact in any order; f32 sums are not, hence the
 * fixed order).  allgather and alltoallv place data in rank order.
 *
 * Failure.  opts.timeout_ms is the deadline of every collective (and of
 * joining): one that does not complete in time fails with CAL_ERR_DEVICE
 * and a message naming the operation and the rank(s) that did not arrive
 * ("allreduce #7: rank 1 did not arrive within 2000 ms").  A failure aborts
 * the whole world: every rank's current collective fails with the reason
 * (threads at once, processes when they see the abort message or the closed
 * socket, NCCL through ncclCommAbort by the watchdog) and every later call
 * on any endpoint fails fast with CAL_ERR_DEVICE and the first reason.
 * cal_comm_abort() does the same on purpose (cancellation, a rank's own
 * error).  The only calls allowed after a failure are the accessors,
 * cal_comm_abort() and cal_comm_free().
 *
 * Counters.  Each endpoint counts, per operation, the calls and the payload
 * bytes it sent to and received from other ranks (not to itself), as the
 * algorithm-independent amounts in docs/comm.md; the engine reads them
 * before and after a layer to report communication bytes per layer.
 */
#ifndef CAL_KERNELS_COMM_H
#define CAL_KERNELS_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

enum cal_comm_kind {
	CAL_COMM_THREADS = 0,
	CAL_COMM_TCP = 1,
	CAL_COMM_NCCL = 2,
};

enum cal_comm_dtype {
	CAL_COMM_F32 = 0,
	CAL_COMM_U64 = 1,
	CAL_COMM_I64 = 2,
};

enum cal_comm_redop {
	CAL_COMM_SUM = 0,
	CAL_COMM_MAX = 1,
};

/* The operations, for the counters. */
enum cal_comm_op {
	CAL_COMM_OP_ALLREDUCE = 0,
	CAL_COMM_OP_ALLGATHER,
	CAL_COMM_OP_BROADCAST,
	CAL_COMM_OP_BARRIER,
	CAL_COMM_OP_ALLTOALLV,
	CAL_COMM_OP_COUNTS, /* cal_comm_alltoall_counts */
	CAL_COMM_OP_COUNT
};

#define CAL_COMM_MAX_RANKS 1024u
#define CAL_COMM_DEFAULT_TIMEOUT_MS 600000u /* 10 minutes */

struct cal_comm_opts {
	enum cal_comm_kind kind;
	unsigned nranks;         /* R, the ranks of the whole job (1..CAL_COMM_MAX_RANKS) */
	unsigned rank;           /* cal_comm_open: this rank; cal_comm_world_new: the
				    first rank this process hosts */
	unsigned local_ranks;    /* cal_comm_world_new: ranks hosted by this process,
				    rank .. rank+local_ranks-1 (0 = nranks); THREADS
				    needs all R, TCP exactly 1 */
	const char *rendezvous;  /* TCP, NCCL across processes: a file path on storage
				    every process sees; rank 0 writes it (tmp + rename),
				    the others wait for it until the deadline */
	const char *host;        /* TCP rank 0: address to bind and publish
				    (NULL = "127.0.0.1") */
	unsigned timeout_ms;     /* deadline of each collective and of joining
				    (0 = CAL_COMM_DEFAULT_TIMEOUT_MS) */
};

struct cal_comm_counter {
	uint64_t calls, bytes_sent, bytes_recv;
};

struct cal_comm_stats {
	struct cal_comm_counter total;
	struct cal_comm_counter op[CAL_COMM_OP_COUNT];
};

struct cal_comm;       /* one rank's endpoint */
struct cal_comm_world; /* the ranks one process hosts, before they join */

/* "threads", "tcp", "nccl" and back; from_name returns 0 or -1. */
const char *cal_comm_kind_name(enum cal_comm_kind kind);
int cal_comm_kind_from_name(const char *name, enum cal_comm_kind *ret);
const char *cal_comm_op_name(enum cal_comm_op op);

/* 1 when this build has the NCCL implementation (says nothing about GPUs). */
int cal_comm_nccl_built(void);

/*
 * Several ranks in one process, one thread each.  cal_comm_world_new()
 * prepares the ranks opts->rank .. +local_ranks-1 (THREADS: all R; NCCL:
 * any, with opts->rendezvous when other processes host the rest; TCP is
 * not supported here: use cal_comm_open).  Then each rank's thread calls
 * cal_comm_world_join() with its global rank and its own back end (cpu for
 * THREADS, cuda for NCCL; the back end must outlive the endpoint); join
 * returns at once for THREADS and when the communicator is up for NCCL
 * (which needs every rank joining concurrently, so join from the ranks'
 * threads, not in a loop).  The world may be freed once every rank has
 * joined (endpoints hold a reference).  Errors: CAL_ERR_INVALID (bad
 * opts, rank not hosted here or joined twice), CAL_ERR_UNSUPPORTED (NCCL
 * not built, or the CUDA module missing), CAL_ERR_DEVICE (NCCL or
 * rendezvous failure, deadline), CAL_ERR_IO (rendezvous file), CAL_ERR_NOMEM.
 */
enum cal_status cal_comm_world_new(const struct cal_comm_opts *opts, struct cal_comm_world **ret,
				   struct cal_error *err);
enum cal_status cal_comm_world_join(struct cal_comm_world *world, unsigned rank,
				    struct cal_backend *be, struct cal_comm **ret,
				    struct cal_error *err);
/* Drops the caller's reference; NULL is a no-op. */
void cal_comm_world_free(struct cal_comm_world *world);

/*
 * One rank per process (TCP, or NCCL with one GPU): world_new for
 * opts->rank alone plus join.  Returns when all R ranks have connected, or
 * fails at the deadline naming the ranks still missing.
 */
enum cal_status cal_comm_open(const struct cal_comm_opts *opts, struct cal_backend *be,
			      struct cal_comm **ret, struct cal_error *err);

/* Frees the endpoint (waits for nothing: call it after the last collective
 * or after a failure); NULL is a no-op.  Freeing one rank's endpoint while
 * the others still call collectives makes theirs fail (rank gone). */
void cal_comm_free(struct cal_comm *comm);

/* Changes the deadline of this endpoint's later collectives (0 = the
 * default), e.g. a long one for joining and the first layer, a short one
 * after. */
void cal_comm_set_timeout(struct cal_comm *comm, unsigned timeout_ms);

unsigned cal_comm_rank(const struct cal_comm *comm);
unsigned cal_comm_size(const struct cal_comm *comm);
enum cal_comm_kind cal_comm_kind(const struct cal_comm *comm);
struct cal_backend *cal_comm_backend(const struct cal_comm *comm);

/* --- collectives (see the contract above) ------------------------------- */

/* In place: buf[i] = op over ranks of buf[i], count elements.  Supported:
 * f32 max and sum, u64 sum and max, i64 max and sum. */
enum cal_status cal_comm_allreduce(struct cal_comm *comm, void *buf, size_t count,
				   enum cal_comm_dtype dtype, enum cal_comm_redop op,
				   struct cal_error *err);

/* recv (R * bytes) = every rank's send (bytes) in rank order; send may be
 * recv + rank * bytes (in place). */
enum cal_status cal_comm_allgather(struct cal_comm *comm, const void *send, size_t bytes,
				   void *recv, struct cal_error *err);

/* buf (bytes) on every rank = buf on root. */
enum cal_status cal_comm_broadcast(struct cal_comm *comm, void *buf, size_t bytes, unsigned root,
				   struct cal_error *err);

/* Returns when every rank has called it. */
enum cal_status cal_comm_barrier(struct cal_comm *comm, struct cal_error *err);

/*
 * Personalised exchange: send holds R contiguous segments in rank order,
 * segment p (send_bytes[p] bytes, may be 0) for rank p; recv receives R
 * contiguous segments in rank order, segment p (recv_bytes[p]) from rank p.
 * send_bytes, recv_bytes: host arrays of R.  send and recv must not
 * overlap.  Callers learn recv_bytes from cal_comm_alltoall_counts first.
 */
enum cal_status cal_comm_alltoallv(struct cal_comm *comm, const void *send,
				   const uint64_t *send_bytes, void *recv,
				   const uint64_t *recv_bytes, struct cal_error *err);

/* Host arrays of R: recv[p] = send[rank] of rank p (an alltoall of one u64
 * per pair: the counts before an alltoallv). */
enum cal_status cal_comm_alltoall_counts(struct cal_comm *comm, const uint64_t *send,
					 uint64_t *recv, struct cal_error *err);

/* --- failure and counters ------------------------------------------------- */

/*
 * Aborts the world this endpoint belongs to with reason (copied): every
 * rank's collective in progress and every later one fails with
 * CAL_ERR_DEVICE and "rank N aborted: reason".  Safe from any thread, also
 * while this endpoint's own thread is inside a collective; a second abort
 * keeps the first reason.
 */
void cal_comm_abort(struct cal_comm *comm, const char *reason);

/* 1 once the world has failed or was aborted; the reason (owned by comm,
 * valid until cal_comm_free) or NULL. */
int cal_comm_failed(const struct cal_comm *comm, const char **ret_reason);

/* A copy of the endpoint's counters (safe from any thread) / zeroes them. */
void cal_comm_get_stats(const struct cal_comm *comm, struct cal_comm_stats *ret);
void cal_comm_reset_stats(struct cal_comm *comm);

#ifdef __cplusplus
}
#endif

#endif
