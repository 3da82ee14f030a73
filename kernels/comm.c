/*
 * comm.c — the part of kernels/comm.h common to its implementations:
 * argument checks, worlds and endpoints, the failure state, counters,
 * exact f32 sums over NCCL, the rendezvous file.  See docs/comm.md.
 */
#include "kernels/comm_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"

static const char *const kind_names[] = {"threads", "tcp", "nccl"};
static const char *const op_names[CAL_COMM_OP_COUNT] = {
	"allreduce", "allgather", "broadcast", "barrier", "alltoallv", "alltoall_counts",
};

const char *cal_comm_kind_name(enum cal_comm_kind kind)
{
	return (unsigned)kind < 3 ? kind_names[kind] : "unknown";
}

int cal_comm_kind_from_name(const char *name, enum cal_comm_kind *ret)
{
	for (unsigned i = 0; i < 3; i++) {
		if (name && strcmp(name, kind_names[i]) == 0) {
			*ret = (enum cal_comm_kind)i;
			return 0;
		}
	}
	return -1;
}

const char *cal_comm_op_name(enum cal_comm_op op)
{
	return (unsigned)op < CAL_COMM_OP_COUNT ? op_names[op] : "unknown";
}

int cal_comm_nccl_built(void)
{
#ifdef CAL_HAVE_NCCL
	return 1;
#else
	return 0;
#endif
}

/* ---- time ------------------------------------------------------------------ */

struct timespec cal_comm_deadline(unsigned timeout_ms)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	t.tv_sec += timeout_ms / 1000;
	t.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

long cal_comm_ms_left(const struct timespec *deadline)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	long ms = (long)(deadline->tv_sec - now.tv_sec) * 1000L +
		  (deadline->tv_nsec - now.tv_nsec) / 1000000L;
	return ms > 0 ? ms : 0;
}

/* ---- element-wise reduction (host) ----------------------------------------- */

size_t cal_comm_dtype_size(enum cal_comm_dtype dtype)
{
	return dtype == CAL_COMM_F32 ? 4 : 8;
}

void cal_comm_reduce_into(void *dst, const void *src, size_t count, enum cal_comm_dtype dtype,
			  enum cal_comm_redop op)
{
	switch (dtype) {
	case CAL_COMM_F32: {
		float *d = dst;
		const float *s = src;
		if (op == CAL_COMM_SUM) {
			for (size_t i = 0; i < count; i++)
				d[i] += s[i];
		} else { /* NaN wins, so that a NaN anywhere is seen */
			for (size_t i = 0; i < count; i++)
				if (s[i] > d[i] || s[i] != s[i])
					d[i] = s[i];
		}
		break;
	}
	case CAL_COMM_U64: {
		uint64_t *d = dst;
		const uint64_t *s = src;
		for (size_t i = 0; i < count; i++)
			d[i] = op == CAL_COMM_SUM ? d[i] + s[i] : (s[i] > d[i] ? s[i] : d[i]);
		break;
	}
	case CAL_COMM_I64: {
		int64_t *d = dst;
		const int64_t *s = src;
		for (size_t i = 0; i < count; i++) /* sums wrap like NCCL's (two's complement) */
			d[i] = op == CAL_COMM_SUM ? (int64_t)((uint64_t)d[i] + (uint64_t)s[i])
						  : (s[i] > d[i] ? s[i] : d[i]);
		break;
	}
	}
}

/* ---- failure ----------------------------------------------------------------- */

enum cal_status cal_comm_failv(struct cal_comm *c, struct cal_error *err, const char *fmt,
			       va_list ap)
{
	char *msg = NULL, *full = NULL;
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	if (c->in_call) {
		if (asprintf(&full, "%s #%llu on rank %u: %s", cal_comm_op_name(c->op),
			     (unsigned long long)c->seq, c->rank, msg ? msg : "failed") < 0)
			full = NULL;
	}
	const char *text = full ? full : msg ? msg : "communication failed";
	struct cal_comm_world *w = c->world;
	pthread_mutex_lock(&w->lock);
	if (!w->failed) {
		w->reason = strdup(text);
		__atomic_store_n(&w->failed, 1, __ATOMIC_RELEASE);
	}
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	w->ops->abort(c);
	cal_error_set(err, CAL_ERR_DEVICE, "%s", text);
	free(full);
	free(msg);
	return CAL_ERR_DEVICE;
}

enum cal_status cal_comm_fail(struct cal_comm *c, struct cal_error *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	enum cal_status st = cal_comm_failv(c, err, fmt, ap);
	va_end(ap);
	return st;
}

void cal_comm_abort(struct cal_comm *comm, const char *reason)
{
	if (!comm)
		return;
	struct cal_comm_world *w = comm->world;
	char *text = NULL;
	if (asprintf(&text, "rank %u aborted: %s", comm->rank, reason ? reason : "no reason given") < 0)
		text = NULL;
	pthread_mutex_lock(&w->lock);
	if (!w->failed) {
		w->reason = text ? text : strdup("aborted");
		text = NULL;
		__atomic_store_n(&w->failed, 1, __ATOMIC_RELEASE);
	}
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	free(text);
	w->ops->abort(comm);
}

int cal_comm_failed(const struct cal_comm *comm, const char **ret_reason)
{
	struct cal_comm_world *w = comm->world;
	int failed = cal_comm_world_failed(w);
	if (ret_reason)
		*ret_reason = failed ? w->reason : NULL;
	return failed;
}

/* ---- worlds and endpoints --------------------------------------------------- */

static enum cal_status check_opts(const struct cal_comm_opts *o, struct cal_error *err)
{
	if ((unsigned)o->kind > CAL_COMM_NCCL)
		return cal_error_set(err, CAL_ERR_INVALID, "comm: unknown kind %d", (int)o->kind);
	const char *k = cal_comm_kind_name(o->kind);
	if (o->nranks < 1 || o->nranks > CAL_COMM_MAX_RANKS)
		return cal_error_set(err, CAL_ERR_RANGE, "comm %s: %u ranks (1..%u)", k, o->nranks,
				     CAL_COMM_MAX_RANKS);
	unsigned local = o->local_ranks ? o->local_ranks : o->nranks;
	if (o->rank >= o->nranks || local > o->nranks - o->rank)
		return cal_error_set(err, CAL_ERR_RANGE, "comm %s: ranks %u..%u outside 0..%u", k,
				     o->rank, o->rank + local - 1, o->nranks - 1);
	if (o->kind == CAL_COMM_THREADS && local != o->nranks)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "comm threads: one process hosts all %u ranks (not %u)",
				     o->nranks, local);
	if (o->kind == CAL_COMM_TCP && local != 1)
		return cal_error_set(err, CAL_ERR_INVALID,
				     "comm tcp: one rank per process (not %u): use threads inside a process",
				     local);
	if (o->kind != CAL_COMM_THREADS && local < o->nranks && (!o->rendezvous || !*o->rendezvous))
		return cal_error_set(err, CAL_ERR_INVALID,
				     "comm %s: ranks in other processes need a rendezvous file", k);
	return CAL_OK;
}

static void world_unref(struct cal_comm_world *w)
{
	pthread_mutex_lock(&w->lock);
	unsigned refs = --w->refs;
	pthread_mutex_unlock(&w->lock);
	if (refs)
		return;
	if (w->impl)
		w->ops->world_fini(w);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
	free((char *)w->opts.rendezvous);
	free((char *)w->opts.host);
	free(w->joined);
	free(w->reason);
	free(w);
}

enum cal_status cal_comm_world_new(const struct cal_comm_opts *opts, struct cal_comm_world **ret,
				   struct cal_error *err)
{
	*ret = NULL;
	enum cal_status st = check_opts(opts, err);
	if (st < 0)
		return st;
	const struct comm_world_ops *ops = NULL;
	switch (opts->kind) {
	case CAL_COMM_THREADS: ops = &cal_comm_threads_ops; break;
	case CAL_COMM_TCP: ops = &cal_comm_tcp_ops; break;
	case CAL_COMM_NCCL:
#ifdef CAL_HAVE_NCCL
		ops = &cal_comm_nccl_ops;
		break;
#else
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "comm nccl: this calibd was built without NCCL (configure with "
				     "-Dcuda=enabled -Dnccl=enabled where nccl.h and libnccl are installed)");
#endif
	}
	struct cal_comm_world *w = calloc(1, sizeof(*w));
	if (!w)
		return cal_error_set(err, CAL_ERR_NOMEM, "comm: out of memory");
	w->opts = *opts;
	w->opts.local_ranks = opts->local_ranks ? opts->local_ranks : opts->nranks;
	w->opts.timeout_ms = opts->timeout_ms ? opts->timeout_ms : CAL_COMM_DEFAULT_TIMEOUT_MS;
	w->opts.rendezvous = opts->rendezvous ? strdup(opts->rendezvous) : NULL;
	w->opts.host = strdup(opts->host ? opts->host : "127.0.0.1");
	w->joined = calloc(w->opts.local_ranks, 1);
	w->ops = ops;
	w->refs = 1;
	pthread_mutex_init(&w->lock, NULL);
	cal_cond_init_monotonic(&w->cond);
	if (!w->joined || !w->opts.host || (opts->rendezvous && !w->opts.rendezvous)) {
		world_unref(w);
		return cal_error_set(err, CAL_ERR_NOMEM, "comm: out of memory");
	}
	if ((st = ops->world_init(w, err)) < 0) {
		world_unref(w);
		return st;
	}
	*ret = w;
	return CAL_OK;
}

void cal_comm_world_free(struct cal_comm_world *world)
{
	if (world)
		world_unref(world);
}

enum cal_status cal_comm_world_join(struct cal_comm_world *w, unsigned rank,
				    struct cal_backend *be, struct cal_comm **ret,
				    struct cal_error *err)
{
	*ret = NULL;
	const struct cal_comm_opts *o = &w->opts;
	const char *k = cal_comm_kind_name(o->kind);
	if (rank < o->rank || rank - o->rank >= o->local_ranks)
		return cal_error_set(err, CAL_ERR_INVALID, "comm %s: rank %u is not hosted here (%u..%u)",
				     k, rank, o->rank, o->rank + o->local_ranks - 1);
	enum cal_backend_kind want = o->kind == CAL_COMM_NCCL ? CAL_BACKEND_CUDA : CAL_BACKEND_CPU;
	if (!be || be->kind != want)
		return cal_error_set(err, CAL_ERR_INVALID, "comm %s: rank %u needs a %s back end", k,
				     rank, want == CAL_BACKEND_CUDA ? "cuda" : "cpu");
	pthread_mutex_lock(&w->lock);
	int twice = w->joined[rank - o->rank];
	w->joined[rank - o->rank] = 1;
	if (!twice)
		w->refs++;
	pthread_mutex_unlock(&w->lock);
	if (twice)
		return cal_error_set(err, CAL_ERR_INVALID, "comm %s: rank %u joined twice", k, rank);
	struct cal_comm *c = calloc(1, sizeof(*c));
	if (!c) {
		world_unref(w);
		return cal_error_set(err, CAL_ERR_NOMEM, "comm: out of memory");
	}
	c->world = w;
	c->kind = o->kind;
	c->rank = rank;
	c->size = o->nranks;
	c->be = be;
	c->timeout_ms = o->timeout_ms;
	pthread_mutex_init(&c->stats_lock, NULL);
	enum cal_status st = w->ops->join(c, err);
	if (st < 0) { /* the world's other ranks stop waiting for this one */
		pthread_mutex_lock(&w->lock);
		if (!w->failed) {
			if (asprintf(&w->reason, "rank %u could not join: %s", rank,
				     cal_error_msg(err)) < 0)
				w->reason = NULL;
			__atomic_store_n(&w->failed, 1, __ATOMIC_RELEASE);
		}
		pthread_cond_broadcast(&w->cond);
		pthread_mutex_unlock(&w->lock);
		pthread_mutex_destroy(&c->stats_lock);
		free(c);
		world_unref(w);
		return st;
	}
	*ret = c;
	return CAL_OK;
}

enum cal_status cal_comm_open(const struct cal_comm_opts *opts, struct cal_backend *be,
			      struct cal_comm **ret, struct cal_error *err)
{
	struct cal_comm_opts one = *opts;
	one.local_ranks = 1;
	struct cal_comm_world *w;
	*ret = NULL;
	enum cal_status st = cal_comm_world_new(&one, &w, err);
	if (st < 0)
		return st;
	st = cal_comm_world_join(w, opts->rank, be, ret, err);
	cal_comm_world_free(w);
	return st;
}

void cal_comm_free(struct cal_comm *comm)
{
	if (!comm)
		return;
	comm->world->ops->leave(comm);
	pthread_mutex_destroy(&comm->stats_lock);
	struct cal_comm_world *w = comm->world;
	free(comm);
	world_unref(w);
}

void cal_comm_set_timeout(struct cal_comm *comm, unsigned timeout_ms)
{
	comm->timeout_ms = timeout_ms ? timeout_ms : CAL_COMM_DEFAULT_TIMEOUT_MS;
}

unsigned cal_comm_rank(const struct cal_comm *comm) { return comm->rank; }
unsigned cal_comm_size(const struct cal_comm *comm) { return comm->size; }
enum cal_comm_kind cal_comm_kind(const struct cal_comm *comm) { return comm->kind; }
struct cal_backend *cal_comm_backend(const struct cal_comm *comm) { return comm->be; }

/* ---- counters ---------------------------------------------------------------- */

static void count(struct cal_comm *c, enum cal_comm_op op, uint64_t sent, uint64_t recv)
{
	pthread_mutex_lock(&c->stats_lock);
	struct cal_comm_counter *k[2] = {&c->stats.total, &c->stats.op[op]};
	for (int i = 0; i < 2; i++) {
		k[i]->calls++;
		k[i]->bytes_sent += sent;
		k[i]->bytes_recv += recv;
	}
	pthread_mutex_unlock(&c->stats_lock);
}

void cal_comm_get_stats(const struct cal_comm *comm, struct cal_comm_stats *ret)
{
	struct cal_comm *c = (struct cal_comm *)comm;
	pthread_mutex_lock(&c->stats_lock);
	*ret = c->stats;
	pthread_mutex_unlock(&c->stats_lock);
}

void cal_comm_reset_stats(struct cal_comm *comm)
{
	pthread_mutex_lock(&comm->stats_lock);
	memset(&comm->stats, 0, sizeof(comm->stats));
	pthread_mutex_unlock(&comm->stats_lock);
}

/* ---- collectives --------------------------------------------------------------- */

/* Starts collective op: fails fast once the world has failed. */
static enum cal_status begin(struct cal_comm *c, enum cal_comm_op op, struct cal_error *err)
{
	c->seq++;
	c->op = op;
	if (cal_comm_world_failed(c->world))
		return cal_error_set(err, CAL_ERR_DEVICE, "%s #%llu on rank %u: the job's communicator "
				     "failed earlier: %s", cal_comm_op_name(op),
				     (unsigned long long)c->seq, c->rank,
				     c->world->reason ? c->world->reason : "aborted");
	c->in_call = 1;
	return CAL_OK;
}

static enum cal_status end(struct cal_comm *c, enum cal_status st, uint64_t sent, uint64_t recv)
{
	c->in_call = 0;
	if (st >= 0)
		count(c, c->op, sent, recv);
	return st;
}

/* A caller's mistake: the other ranks would wait for this rank until the
 * deadline, so it fails the world too (they learn the reason at once); the
 * caller gets CAL_ERR_INVALID. */
static enum cal_status bad(struct cal_comm *c, enum cal_comm_op op, struct cal_error *err,
			   const char *what)
{
	c->seq++;
	c->op = op;
	c->in_call = 1;
	cal_comm_fail(c, err, "invalid call: %s", what);
	c->in_call = 0;
	if (err)
		err->code = CAL_ERR_INVALID;
	return CAL_ERR_INVALID;
}

/* f32 sums over NCCL: allgather, then the sum in rank order on the host,
 * so that the result does not depend on NCCL's reduction order. */
static enum cal_status allreduce_f32_sum_ordered(struct cal_comm *c, float *buf, size_t count,
						 struct cal_error *err)
{
	size_t bytes = count * sizeof(float), R = c->size;
	void *all = NULL;
	float *host = malloc(bytes * R);
	enum cal_status st;
	if (!host)
		return cal_error_set(err, CAL_ERR_NOMEM, "comm allreduce: %zu bytes of host memory",
				     bytes * R);
	CAL_TRY(cal_backend_alloc(c->be, bytes * R, &all, err));
	CAL_TRY(c->world->ops->allgather(c, buf, bytes, all, err));
	CAL_TRY(cal_backend_download(c->be, host, all, bytes * R, err));
	for (size_t r = 1; r < R; r++)
		cal_comm_reduce_into(host, host + r * count, count, CAL_COMM_F32, CAL_COMM_SUM);
	CAL_TRY(cal_backend_upload(c->be, buf, host, bytes, err));
fail:
	cal_backend_dealloc(c->be, all);
	free(host);
	return st;
}

enum cal_status cal_comm_allreduce(struct cal_comm *c, void *buf, size_t count,
				   enum cal_comm_dtype dtype, enum cal_comm_redop op,
				   struct cal_error *err)
{
	const enum cal_comm_op me = CAL_COMM_OP_ALLREDUCE;
	if ((unsigned)dtype > CAL_COMM_I64 || (unsigned)op > CAL_COMM_MAX)
		return bad(c, me, err, "unknown dtype or reduction");
	if (!buf && count)
		return bad(c, me, err, "NULL buffer");
	if (count > SIZE_MAX / 8 / c->size)
		return bad(c, me, err, "count too large");
	enum cal_status st = begin(c, me, err);
	if (st < 0)
		return st;
	if (c->kind == CAL_COMM_NCCL && dtype == CAL_COMM_F32 && op == CAL_COMM_SUM && c->size > 1)
		st = allreduce_f32_sum_ordered(c, buf, count, err);
	else
		st = c->world->ops->allreduce(c, buf, count, dtype, op, err);
	uint64_t n = (uint64_t)count * cal_comm_dtype_size(dtype) * (c->size - 1);
	return end(c, st, n, n);
}

enum cal_status cal_comm_allgather(struct cal_comm *c, const void *send, size_t bytes, void *recv,
				   struct cal_error *err)
{
	const enum cal_comm_op me = CAL_COMM_OP_ALLGATHER;
	if (bytes && (!send || !recv))
		return bad(c, me, err, "NULL buffer");
	if (bytes > SIZE_MAX / c->size)
		return bad(c, me, err, "size too large");
	enum cal_status st = begin(c, me, err);
	if (st < 0)
		return st;
	st = c->world->ops->allgather(c, send, bytes, recv, err);
	uint64_t n = (uint64_t)bytes * (c->size - 1);
	return end(c, st, n, n);
}

enum cal_status cal_comm_broadcast(struct cal_comm *c, void *buf, size_t bytes, unsigned root,
				   struct cal_error *err)
{
	const enum cal_comm_op me = CAL_COMM_OP_BROADCAST;
	if (bytes && !buf)
		return bad(c, me, err, "NULL buffer");
	if (root >= c->size)
		return bad(c, me, err, "root outside the ranks");
	enum cal_status st = begin(c, me, err);
	if (st < 0)
		return st;
	st = c->world->ops->broadcast(c, buf, bytes, root, err);
	if (c->rank == root)
		return end(c, st, (uint64_t)bytes * (c->size - 1), 0);
	return end(c, st, 0, bytes);
}

enum cal_status cal_comm_barrier(struct cal_comm *c, struct cal_error *err)
{
	enum cal_status st = begin(c, CAL_COMM_OP_BARRIER, err);
	if (st < 0)
		return st;
	return end(c, c->world->ops->barrier(c, err), 0, 0);
}

/* Sum of n sizes other than index skip, or -1 on overflow of size_t. */
static int sum_sizes(const uint64_t *v, unsigned n, unsigned skip, uint64_t *ret_all,
		     uint64_t *ret_peers)
{
	uint64_t all = 0;
	for (unsigned i = 0; i < n; i++) {
		if (v[i] > SIZE_MAX - all)
			return -1;
		all += v[i];
	}
	*ret_all = all;
	*ret_peers = all - v[skip];
	return 0;
}

enum cal_status cal_comm_alltoallv(struct cal_comm *c, const void *send,
				   const uint64_t *send_bytes, void *recv,
				   const uint64_t *recv_bytes, struct cal_error *err)
{
	const enum cal_comm_op me = CAL_COMM_OP_ALLTOALLV;
	uint64_t s_all, s_peers, r_all, r_peers;
	if (!send_bytes || !recv_bytes)
		return bad(c, me, err, "NULL size array");
	if (sum_sizes(send_bytes, c->size, c->rank, &s_all, &s_peers) < 0 ||
	    sum_sizes(recv_bytes, c->size, c->rank, &r_all, &r_peers) < 0)
		return bad(c, me, err, "sizes overflow");
	if ((s_all && !send) || (r_all && !recv))
		return bad(c, me, err, "NULL buffer");
	if (send_bytes[c->rank] != recv_bytes[c->rank])
		return bad(c, me, err, "send_bytes[rank] != recv_bytes[rank] (the segment to itself)");
	if (s_all && r_all && (const char *)send < (const char *)recv + r_all &&
	    (const char *)recv < (const char *)send + s_all)
		return bad(c, me, err, "send and recv overlap");
	enum cal_status st = begin(c, me, err);
	if (st < 0)
		return st;
	st = c->world->ops->alltoallv(c, send, send_bytes, recv, recv_bytes, err);
	return end(c, st, s_peers, r_peers);
}

enum cal_status cal_comm_alltoall_counts(struct cal_comm *c, const uint64_t *send, uint64_t *recv,
					 struct cal_error *err)
{
	const enum cal_comm_op me = CAL_COMM_OP_COUNTS;
	size_t R = c->size, bytes = R * sizeof(uint64_t);
	if (!send || !recv)
		return bad(c, me, err, "NULL buffer");
	uint64_t *eight = malloc(bytes);
	if (!eight)
		return cal_error_set(err, CAL_ERR_NOMEM, "comm: out of memory");
	for (size_t i = 0; i < R; i++)
		eight[i] = sizeof(uint64_t);
	enum cal_status st = begin(c, me, err);
	if (st < 0) {
		free(eight);
		return st;
	}
	if (c->be->kind == CAL_BACKEND_CPU) {
		st = c->world->ops->alltoallv(c, send, eight, recv, eight, err);
	} else { /* through device memory */
		char *dev = NULL;
		CAL_TRY(cal_backend_alloc(c->be, 2 * bytes, (void **)&dev, err));
		CAL_TRY(cal_backend_upload(c->be, dev, send, bytes, err));
		CAL_TRY(c->world->ops->alltoallv(c, dev, eight, dev + bytes, eight, err));
		CAL_TRY(cal_backend_download(c->be, recv, dev + bytes, bytes, err));
fail:
		cal_backend_dealloc(c->be, dev);
	}
	free(eight);
	uint64_t n = (R - 1) * sizeof(uint64_t);
	return end(c, st, n, n);
}

/* ---- rendezvous file ------------------------------------------------------------- */

enum cal_status cal_comm_rdv_write(const char *path, const char *text, struct cal_error *err)
{
	char *tmp = NULL;
	if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0)
		return cal_error_set(err, CAL_ERR_NOMEM, "comm: out of memory");
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	size_t n = strlen(text);
	int ok = fd >= 0 && write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
	int e = errno;
	if (fd >= 0 && close(fd) != 0)
		ok = 0;
	if (ok && rename(tmp, path) != 0) {
		ok = 0;
		e = errno;
	}
	if (!ok) {
		unlink(tmp);
		cal_error_set(err, CAL_ERR_IO, "comm rendezvous file %s: %s", path, strerror(e));
	}
	free(tmp);
	return ok ? CAL_OK : CAL_ERR_IO;
}

enum cal_status cal_comm_rdv_read(struct cal_comm_world *w, const char *path,
				  const struct timespec *deadline, char **ret,
				  struct cal_error *err)
{
	*ret = NULL;
	for (;;) {
		FILE *f = fopen(path, "re");
		if (f) {
			char *text = NULL;
			size_t cap = 0;
			ssize_t n = getdelim(&text, &cap, '\0', f);
			fclose(f);
			if (n > 0) {
				*ret = text;
				return CAL_OK;
			}
			free(text);
		} else if (errno != ENOENT) {
			return cal_error_set(err, CAL_ERR_IO, "comm rendezvous file %s: %s", path,
					     strerror(errno));
		}
		if (cal_comm_world_failed(w))
			return cal_error_set(err, CAL_ERR_DEVICE, "comm: aborted while waiting for %s: %s",
					     path, w->reason ? w->reason : "aborted");
		if (cal_comm_ms_left(deadline) == 0)
			return cal_error_set(err, CAL_ERR_DEVICE,
					     "comm: rank 0 did not publish the rendezvous file %s within "
					     "%u ms", path, w->opts.timeout_ms);
		struct timespec nap = {0, 10 * 1000000L};
		nanosleep(&nap, NULL);
	}
}
