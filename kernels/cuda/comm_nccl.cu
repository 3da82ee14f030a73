/*
 * comm_nccl.cu — the NCCL half of kernels/comm.h inside libcalibd-cuda.so
 * (built when meson finds NCCL); kernels/comm_nccl.c reaches it through
 * cal_nccl_module_get() (kernels/comm_impl.h).  See docs/comm.md.
 *
 * Communicators are non-blocking (ncclConfig_t.blocking = 0): every NCCL
 * call returns at once, possibly with ncclInProgress, and wait_done() — the
 * watchdog — polls ncclCommGetAsyncError and the back end's stream until
 * the work is complete, calling ncclCommAbort when NCCL reports an error,
 * when the deadline passes (a peer stopped, died or called something else)
 * or when the world's failed flag is set (another local rank failed or
 * cal_comm_abort was called).  Each collective is enqueued on the back end's
 * stream, after the ops queued before it, inside one ncclGroupStart/End.
 */
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.cuh"

extern "C" {
#include "kernels/comm_impl.h"
}

struct cal_nccl {
	ncclComm_t comm;
	int device;
	unsigned nranks, rank;
	int aborted;
	void *scratch; /* 8 bytes of device memory for the barrier */
};

static enum cal_status nccl_fail(struct cal_nccl *n, struct cal_error *err, ncclResult_t r,
				 const char *what)
{
	const char *last = n && n->comm ? ncclGetLastError(n->comm) : ncclGetLastError(NULL);
	return cal_error_set(err, CAL_ERR_DEVICE, "NCCL %s: %s%s%s", what, ncclGetErrorString(r),
			     last && *last ? ": " : "", last ? last : "");
}

static long ms_left(const struct timespec *dl)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	long ms = (long)(dl->tv_sec - now.tv_sec) * 1000L + (dl->tv_nsec - now.tv_nsec) / 1000000L;
	return ms > 0 ? ms : 0;
}

static void abort_comm(struct cal_nccl *n)
{
	if (!n->aborted && n->comm)
		ncclCommAbort(n->comm);
	n->aborted = 1;
	n->comm = NULL;
}

/* The watchdog: until the communicator has no call in progress and (when
 * stream is not NULL) the stream is idle, or it fails. */
static enum cal_status wait_done(struct cal_nccl *n, cudaStream_t stream,
				 const struct cal_nccl_wait *w, struct cal_error *err)
{
	long nap_ns = 20000;
	for (;;) {
		ncclResult_t as = ncclSuccess;
		ncclResult_t r = ncclCommGetAsyncError(n->comm, &as);
		if (r != ncclSuccess)
			as = r;
		if (as != ncclSuccess && as != ncclInProgress) {
			enum cal_status st = nccl_fail(n, err, as, w->what);
			abort_comm(n);
			return st;
		}
		if (as == ncclSuccess) {
			if (!stream)
				return CAL_OK;
			cudaError_t e = cudaStreamQuery(stream);
			if (e == cudaSuccess)
				return CAL_OK;
			if (e != cudaErrorNotReady) {
				enum cal_status st = cal_cuda_fail(err, e, w->what, __FILE__, __LINE__);
				abort_comm(n);
				return st;
			}
		}
		if (w->stop && __atomic_load_n(w->stop, __ATOMIC_ACQUIRE)) {
			abort_comm(n);
			return cal_error_set(err, CAL_ERR_DEVICE, "%s: aborted (the job's communicator "
					     "failed)", w->what);
		}
		if (ms_left(&w->deadline) == 0) {
			abort_comm(n);
			return cal_error_set(err, CAL_ERR_DEVICE, "%s did not complete before the "
					     "deadline: a rank stopped, died or called another "
					     "collective (NCCL cannot tell which; the communicator "
					     "was aborted)", w->what);
		}
		struct timespec nap = {0, nap_ns};
		nanosleep(&nap, NULL);
		if (nap_ns < 1000000)
			nap_ns *= 2;
	}
}

static enum cal_status enter(struct cal_nccl *n, struct cal_backend *be, cudaStream_t *stream,
			     const struct cal_nccl_wait *w, struct cal_error *err)
{
	if (!n->comm)
		return cal_error_set(err, CAL_ERR_DEVICE, "%s: the NCCL communicator was aborted",
				     w->what);
	return cal_cuda_enter(be, stream, err);
}

/* The body of a collective on communicator p and back end be: makes the
 * device current, runs `enqueue` (which may use n and stream) between
 * ncclGroupStart and ncclGroupEnd on be's stream, then waits. */
#define GROUP(p, be, w, enqueue)                                               \
	do {                                                                   \
		struct cal_nccl *n = (struct cal_nccl *)(p);                   \
		cudaStream_t stream;                                           \
		enum cal_status st_ = enter(n, be, &stream, w, err);           \
		if (st_ < 0)                                                   \
			return st_;                                            \
		ncclResult_t r_ = ncclGroupStart();                            \
		if (r_ == ncclSuccess) {                                       \
			r_ = (enqueue);                                        \
			ncclResult_t e_ = ncclGroupEnd();                      \
			if (r_ == ncclSuccess || r_ == ncclInProgress)         \
				r_ = e_;                                       \
		}                                                              \
		if (r_ != ncclSuccess && r_ != ncclInProgress) {               \
			st_ = nccl_fail(n, err, r_, (w)->what);                \
			abort_comm(n);                                         \
			return st_;                                            \
		}                                                              \
		return wait_done(n, stream, w, err);                           \
	} while (0)

extern "C" {

static enum cal_status nccl_unique_id(unsigned char id[CAL_NCCL_ID_BYTES], struct cal_error *err)
{
	ncclUniqueId u;
	static_assert(sizeof(u) == CAL_NCCL_ID_BYTES, "ncclUniqueId size");
	ncclResult_t r = ncclGetUniqueId(&u);
	if (r != ncclSuccess)
		return nccl_fail(NULL, err, r, "ncclGetUniqueId");
	memcpy(id, &u, sizeof(u));
	return CAL_OK;
}

static void nccl_destroy(void *p, int aborted)
{
	struct cal_nccl *n = (struct cal_nccl *)p;
	if (!n)
		return;
	if (n->comm && !aborted && !n->aborted) {
		/* flush, bounded: a peer that vanished must not hang the free */
		cudaSetDevice(n->device);
		ncclResult_t r = ncclCommFinalize(n->comm);
		struct timespec dl;
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_sec += 10;
		ncclResult_t as = r;
		while (r == ncclSuccess || r == ncclInProgress) {
			if (ncclCommGetAsyncError(n->comm, &as) != ncclSuccess || as != ncclInProgress)
				break;
			if (ms_left(&dl) == 0)
				break;
			struct timespec nap = {0, 1000000};
			nanosleep(&nap, NULL);
		}
		if (r == ncclSuccess && as == ncclSuccess) {
			ncclCommDestroy(n->comm);
			n->comm = NULL;
		}
	}
	if (n->comm)
		abort_comm(n);
	if (n->scratch) {
		cudaSetDevice(n->device);
		cudaFree(n->scratch);
	}
	free(n);
}

static enum cal_status nccl_init(struct cal_backend *be, const unsigned char id[CAL_NCCL_ID_BYTES],
				 unsigned nranks, unsigned rank, const struct cal_nccl_wait *w,
				 void **ret, struct cal_error *err)
{
	*ret = NULL;
	cudaStream_t stream;
	enum cal_status st = cal_cuda_enter(be, &stream, err);
	if (st < 0)
		return st;
	struct cal_nccl *n = (struct cal_nccl *)calloc(1, sizeof(*n));
	if (!n)
		return cal_error_set(err, CAL_ERR_NOMEM, "NCCL: out of memory");
	n->device = be->cuda_device;
	n->nranks = nranks;
	n->rank = rank;
	cudaError_t ce = cudaMalloc(&n->scratch, 8);
	if (ce != cudaSuccess) {
		n->scratch = NULL;
		nccl_destroy(n, 1);
		return cal_cuda_fail(err, ce, "cudaMalloc (NCCL scratch)", __FILE__, __LINE__);
	}
	ncclUniqueId u;
	memcpy(&u, id, sizeof(u));
	ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
	cfg.blocking = 0;
	ncclResult_t r = ncclCommInitRankConfig(&n->comm, (int)nranks, u, (int)rank, &cfg);
	if (r != ncclSuccess && r != ncclInProgress) {
		st = nccl_fail(n, err, r, "ncclCommInitRankConfig");
		nccl_destroy(n, 1);
		return st;
	}
	if ((st = wait_done(n, NULL, w, err)) < 0) {
		nccl_destroy(n, 1);
		return st;
	}
	*ret = n;
	return CAL_OK;
}

static ncclDataType_t nccl_type(enum cal_comm_dtype dt)
{
	return dt == CAL_COMM_F32 ? ncclFloat32 : dt == CAL_COMM_U64 ? ncclUint64 : ncclInt64;
}

static enum cal_status nccl_allreduce(void *p, struct cal_backend *be, void *buf, size_t count,
				      enum cal_comm_dtype dtype, enum cal_comm_redop op,
				      const struct cal_nccl_wait *w, struct cal_error *err)
{
	GROUP(p, be, w, ncclAllReduce(buf, buf, count, nccl_type(dtype),
				  op == CAL_COMM_SUM ? ncclSum : ncclMax, n->comm, stream));
}

static enum cal_status nccl_allgather(void *p, struct cal_backend *be, const void *send,
				      size_t bytes, void *recv, const struct cal_nccl_wait *w,
				      struct cal_error *err)
{
	GROUP(p, be, w, ncclAllGather(send, recv, bytes, ncclUint8, n->comm, stream));
}

static enum cal_status nccl_broadcast(void *p, struct cal_backend *be, void *buf, size_t bytes,
				      unsigned root, const struct cal_nccl_wait *w,
				      struct cal_error *err)
{
	/* bytes == 0: NCCL still wants a pointer */
	GROUP(p, be, w, ncclBroadcast(buf ? buf : n->scratch, buf ? buf : n->scratch, bytes,
				      ncclUint8, (int)root, n->comm, stream));
}

static ncclResult_t enqueue_alltoallv(struct cal_nccl *n, cudaStream_t stream, const char *send,
				      const uint64_t *send_bytes, char *recv,
				      const uint64_t *recv_bytes)
{
	uint64_t so = 0, ro = 0;
	for (unsigned p = 0; p < n->nranks; p++) {
		if (p == n->rank) { /* the segment to itself: a copy on the same stream */
			if (send_bytes[p] &&
			    cudaMemcpyAsync(recv + ro, send + so, send_bytes[p],
					    cudaMemcpyDeviceToDevice, stream) != cudaSuccess)
				return ncclUnhandledCudaError;
		} else {
			ncclResult_t r;
			if (send_bytes[p] &&
			    (r = ncclSend(send + so, send_bytes[p], ncclUint8, (int)p, n->comm, stream)) !=
				    ncclSuccess && r != ncclInProgress)
				return r;
			if (recv_bytes[p] &&
			    (r = ncclRecv(recv + ro, recv_bytes[p], ncclUint8, (int)p, n->comm, stream)) !=
				    ncclSuccess && r != ncclInProgress)
				return r;
		}
		so += send_bytes[p];
		ro += recv_bytes[p];
	}
	return ncclSuccess;
}

static enum cal_status nccl_alltoallv(void *p, struct cal_backend *be, const void *send,
				      const uint64_t *send_bytes, void *recv,
				      const uint64_t *recv_bytes, const struct cal_nccl_wait *w,
				      struct cal_error *err)
{
	GROUP(p, be, w, enqueue_alltoallv(n, stream, (const char *)send, send_bytes, (char *)recv,
				      recv_bytes));
}

/* An allreduce of one u64 in the communicator's scratch. */
static enum cal_status nccl_barrier(void *p, struct cal_backend *be, const struct cal_nccl_wait *w,
				    struct cal_error *err)
{
	GROUP(p, be, w, ncclAllReduce(n->scratch, n->scratch, 1, ncclUint64, ncclSum, n->comm,
				      stream));
}

__attribute__((visibility("default"))) const struct cal_nccl_module *cal_nccl_module_get(void)
{
	static const struct cal_nccl_module m = {
		CAL_NCCL_MODULE_ABI,
		nccl_unique_id,
		nccl_init,
		nccl_allreduce,
		nccl_allgather,
		nccl_broadcast,
		nccl_alltoallv,
		nccl_barrier,
		nccl_destroy,
	};
	return &m;
}

} /* extern "C" */
