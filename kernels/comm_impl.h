/*
 * comm_impl.h — what kernels/comm.c shares with the implementations of
 * kernels/comm.h (comm_threads.c, comm_tcp.c, comm_nccl.c).  Not for use
 * outside kernels/.
 *
 * comm.c checks arguments, keeps the counters and the world's failure
 * state, and calls the implementation's table.  An implementation's
 * collective may assume: valid arguments, a world that had not failed when
 * the call began, and count/bytes > 0 where a zero-size call is trivial
 * (comm.c still runs it, so that every rank takes part).
 */
#ifndef CAL_KERNELS_COMM_IMPL_H
#define CAL_KERNELS_COMM_IMPL_H

#include <pthread.h>
#include <stdarg.h>

#include "kernels/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct comm_world_ops;

/* Shared by the world and every endpoint joined from it (refcounted). */
struct cal_comm_world {
	struct cal_comm_opts opts;  /* strings copied (rendezvous, host) */
	const struct comm_world_ops *ops;
	pthread_mutex_t lock;       /* refs, joined, failure; THREADS' barrier */
	pthread_cond_t cond;        /* CLOCK_MONOTONIC */
	unsigned refs;
	unsigned char *joined;      /* per hosted rank */
	int failed;                 /* set once, read with __atomic_load_n */
	char *reason;               /* the first failure */
	void *impl;                 /* the implementation's world */
};

struct cal_comm {
	struct cal_comm_world *world;
	enum cal_comm_kind kind;
	unsigned rank, size;
	struct cal_backend *be;
	unsigned timeout_ms;
	uint64_t seq;               /* collectives started on this endpoint */
	int in_call;                /* inside a collective: op and seq are current */
	enum cal_comm_op op;
	pthread_mutex_t stats_lock;
	struct cal_comm_stats stats;
	void *impl;                 /* the implementation's endpoint */
};

struct comm_world_ops {
	/* world->opts is set; creates world->impl. */
	enum cal_status (*world_init)(struct cal_comm_world *w, struct cal_error *err);
	/* comm's fields are set; creates comm->impl (may block: NCCL, TCP). */
	enum cal_status (*join)(struct cal_comm *comm, struct cal_error *err);
	enum cal_status (*allreduce)(struct cal_comm *c, void *buf, size_t count,
				     enum cal_comm_dtype dtype, enum cal_comm_redop op,
				     struct cal_error *err);
	enum cal_status (*allgather)(struct cal_comm *c, const void *send, size_t bytes, void *recv,
				     struct cal_error *err);
	enum cal_status (*broadcast)(struct cal_comm *c, void *buf, size_t bytes, unsigned root,
				     struct cal_error *err);
	enum cal_status (*barrier)(struct cal_comm *c, struct cal_error *err);
	enum cal_status (*alltoallv)(struct cal_comm *c, const void *send, const uint64_t *send_bytes,
				     void *recv, const uint64_t *recv_bytes, struct cal_error *err);
	/* Wakes this endpoint's collective in progress, if any, and tells peers
	 * (the world's failed flag and reason are already set).  Any thread. */
	void (*abort)(struct cal_comm *c);
	void (*leave)(struct cal_comm *c);            /* frees comm->impl */
	void (*world_fini)(struct cal_comm_world *w); /* frees w->impl */
};

/* Defines NAME as the ops table of the implementation whose functions are
 * PREFIX_world_init, PREFIX_join, ... PREFIX_world_fini. */
#define CAL_COMM_WORLD_OPS(name, prefix)                                                  \
	const struct comm_world_ops name = {                                              \
		prefix##_world_init, prefix##_join, prefix##_allreduce, prefix##_allgather, \
		prefix##_broadcast, prefix##_barrier, prefix##_alltoallv, prefix##_abort,  \
		prefix##_leave, prefix##_world_fini,                                      \
	}

extern const struct comm_world_ops cal_comm_threads_ops;
extern const struct comm_world_ops cal_comm_tcp_ops;
extern const struct comm_world_ops cal_comm_nccl_ops;

/*
 * Records the first failure of the world (printf message), wakes every
 * endpoint of this process (abort hooks) and returns CAL_ERR_DEVICE with
 * the message in err ("<op> #<seq>: " is prefixed by comm.c).  A world
 * that had failed already keeps its first reason; err gets this message.
 */
enum cal_status cal_comm_fail(struct cal_comm *c, struct cal_error *err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Same for a failure that a peer reported (reason already formatted). */
enum cal_status cal_comm_failv(struct cal_comm *c, struct cal_error *err, const char *fmt,
			       va_list ap);

/* 1 once the world has failed (any thread, no lock). */
static inline int cal_comm_world_failed(const struct cal_comm_world *w)
{
	return __atomic_load_n(&w->failed, __ATOMIC_ACQUIRE);
}

/* The deadline of a collective starting now, and the milliseconds left until
 * it (0 when passed); CLOCK_MONOTONIC. */
struct timespec cal_comm_deadline(unsigned timeout_ms);
long cal_comm_ms_left(const struct timespec *deadline);

/* Element size of a dtype (4 or 8). */
size_t cal_comm_dtype_size(enum cal_comm_dtype dtype);
/* dst[i] = op(dst[i], src[i]) for count elements (host memory); the order
 * of calls fixes the order of f32 sums. */
void cal_comm_reduce_into(void *dst, const void *src, size_t count, enum cal_comm_dtype dtype,
			  enum cal_comm_redop op);

/* Rendezvous file: rank 0 writes text atomically (path.tmp.<pid> + rename);
 * the others wait until it exists (polling) and read it (malloc'd, NUL
 * terminated), or fail at the deadline / when the world is aborted. */
enum cal_status cal_comm_rdv_write(const char *path, const char *text, struct cal_error *err);
enum cal_status cal_comm_rdv_read(struct cal_comm_world *w, const char *path,
				  const struct timespec *deadline, char **ret,
				  struct cal_error *err);

/* ---- the NCCL module ------------------------------------------------------ */

/*
 * The NCCL implementation lives in the CUDA module libcalibd-cuda.so (so
 * that nothing which only runs CPU ranks links NCCL or CUDA), reached with
 * cal_backend_cuda_symbol(CAL_NCCL_MODULE_SYMBOL).  Every call takes a
 * struct cal_nccl_wait: the deadline and the world's failed flag, which the
 * module's wait loop (the watchdog) polls together with
 * ncclCommGetAsyncError, calling ncclCommAbort on an error, the deadline or
 * the flag.
 */
#define CAL_NCCL_MODULE_ABI 1u
#define CAL_NCCL_MODULE_SYMBOL "cal_nccl_module_get"
#define CAL_NCCL_ID_BYTES 128

struct cal_nccl_wait {
	struct timespec deadline;
	const int *stop;  /* the world's failed flag */
	const char *what; /* "allreduce #3" for messages */
};

struct cal_nccl_module {
	unsigned abi;
	enum cal_status (*unique_id)(unsigned char id[CAL_NCCL_ID_BYTES], struct cal_error *err);
	enum cal_status (*init)(struct cal_backend *be, const unsigned char id[CAL_NCCL_ID_BYTES],
				unsigned nranks, unsigned rank, const struct cal_nccl_wait *w,
				void **ret, struct cal_error *err);
	enum cal_status (*allreduce)(void *nc, struct cal_backend *be, void *buf, size_t count,
				     enum cal_comm_dtype dtype, enum cal_comm_redop op,
				     const struct cal_nccl_wait *w, struct cal_error *err);
	enum cal_status (*allgather)(void *nc, struct cal_backend *be, const void *send,
				     size_t bytes, void *recv, const struct cal_nccl_wait *w,
				     struct cal_error *err);
	enum cal_status (*broadcast)(void *nc, struct cal_backend *be, void *buf, size_t bytes,
				     unsigned root, const struct cal_nccl_wait *w,
				     struct cal_error *err);
	enum cal_status (*alltoallv)(void *nc, struct cal_backend *be, const void *send,
				     const uint64_t *send_bytes, void *recv,
				     const uint64_t *recv_bytes, const struct cal_nccl_wait *w,
				     struct cal_error *err);
	enum cal_status (*barrier)(void *nc, struct cal_backend *be, const struct cal_nccl_wait *w,
				   struct cal_error *err);
	/* ncclCommAbort when aborted is set (or the communicator failed), else
	 * finalize + destroy; frees nc.  NULL is a no-op. */
	void (*destroy)(void *nc, int aborted);
};

typedef const struct cal_nccl_module *(*cal_nccl_module_get_fn)(void);

#ifdef __cplusplus
}
#endif

#endif
