/*
 * comm_threads.c — kernels/comm.h for R ranks that are threads of one
 * process on the CPU back end.
 *
 * Every collective is two rendezvous of all ranks.  At the first each rank
 * has published what it calls (its slot: operation, sizes, buffers); then
 * each rank reads the peers' buffers directly and writes only its own
 * output (allreduce into a private copy, reduced in rank order); the
 * second rendezvous says every rank has finished reading, so that inputs
 * may be reused and in-place results written.  A rendezvous waits on the
 * world's condition variable until the deadline, the world's failure, or
 * all ranks' arrival; at the deadline it names the ranks that are missing.
 */
#include "kernels/comm_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct thr_slot {
	enum cal_comm_op op;
	uint64_t seq;
	size_t count;           /* elements (allreduce) or bytes */
	enum cal_comm_dtype dtype;
	enum cal_comm_redop redop;
	unsigned root;
	const void *send;       /* allreduce, broadcast: the buffer */
	const uint64_t *send_bytes;
	void *recv;             /* where this rank's result goes */
	const uint64_t *recv_bytes;
};

struct thr_world {
	uint64_t *arrived;      /* per rank: rendezvous passed (count), under w->lock */
	struct thr_slot *slot;  /* per rank, written before its arrival */
	uint64_t *left;         /* per rank: 1 once it freed its endpoint */
};

static enum cal_status thr_world_init(struct cal_comm_world *w, struct cal_error *err)
{
	unsigned R = w->opts.nranks;
	struct thr_world *t = calloc(1, sizeof(*t));
	if (t) {
		t->arrived = calloc(R, sizeof(*t->arrived));
		t->slot = calloc(R, sizeof(*t->slot));
		t->left = calloc(R, sizeof(*t->left));
	}
	w->impl = t;
	if (!t || !t->arrived || !t->slot || !t->left)
		return cal_error_set(err, CAL_ERR_NOMEM, "comm threads: out of memory");
	return CAL_OK;
}

static void thr_world_fini(struct cal_comm_world *w)
{
	struct thr_world *t = w->impl;
	free(t->arrived);
	free(t->slot);
	free(t->left);
	free(t);
	w->impl = NULL;
}

static enum cal_status thr_join(struct cal_comm *c, struct cal_error *err)
{
	return CAL_OK;
}

static void thr_leave(struct cal_comm *c)
{
	struct cal_comm_world *w = c->world;
	struct thr_world *t = w->impl;
	pthread_mutex_lock(&w->lock);
	t->left[c->rank] = 1;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void thr_abort(struct cal_comm *c)
{
	/* cal_comm_fail/abort broadcast the world's condition already */
}

/* Waits until every rank has passed rendezvous number n (counted per
 * rank: each collective is rendezvous 2k-1 and 2k). */
static enum cal_status rendezvous(struct cal_comm *c, const struct timespec *deadline,
				  struct cal_error *err)
{
	struct cal_comm_world *w = c->world;
	struct thr_world *t = w->impl;
	unsigned R = c->size;
	pthread_mutex_lock(&w->lock);
	uint64_t n = ++t->arrived[c->rank];
	pthread_cond_broadcast(&w->cond);
	for (;;) {
		unsigned missing = 0, gone = R;
		for (unsigned r = 0; r < R; r++) {
			if (t->arrived[r] < n) {
				missing++;
				if (t->left[r])
					gone = r;
			}
		}
		if (!missing) {
			pthread_mutex_unlock(&w->lock);
			return CAL_OK;
		}
		if (w->failed) {
			char *why = strdup(w->reason ? w->reason : "aborted");
			pthread_mutex_unlock(&w->lock);
			enum cal_status st = cal_comm_fail(c, err, "%s", why ? why : "aborted");
			free(why);
			return st;
		}
		if (gone < R) {
			pthread_mutex_unlock(&w->lock);
			return cal_comm_fail(c, err, "rank %u left (freed its endpoint)", gone);
		}
		if (pthread_cond_timedwait(&w->cond, &w->lock, deadline) == ETIMEDOUT) {
			/* one last look, then name the missing ranks */
			char list[256];
			size_t len = 0;
			unsigned shown = 0;
			list[0] = '\0';
			for (unsigned r = 0; r < R; r++) {
				if (t->arrived[r] >= n)
					continue;
				if (shown++ < 16)
					len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%u",
								len ? ", " : "", r);
				else if (shown == 17)
					len += (size_t)snprintf(list + len, sizeof(list) - len, ", ...");
			}
			pthread_mutex_unlock(&w->lock);
			if (!shown)
				return CAL_OK;
			return cal_comm_fail(c, err, "rank%s %s did not arrive within %u ms",
					     shown > 1 ? "s" : "", list, c->timeout_ms);
		}
	}
}

/* Publishes this rank's call, waits for all, checks that every rank calls
 * the same thing. */
static enum cal_status publish(struct cal_comm *c, const struct thr_slot *mine,
			       const struct timespec *deadline, struct cal_error *err)
{
	struct thr_world *t = c->world->impl;
	t->slot[c->rank] = *mine;
	t->slot[c->rank].op = c->op;
	t->slot[c->rank].seq = c->seq;
	enum cal_status st = rendezvous(c, deadline, err);
	if (st < 0)
		return st;
	for (unsigned r = 0; r < c->size; r++) {
		const struct thr_slot *s = &t->slot[r];
		if (s->op != c->op || s->seq != c->seq)
			return cal_comm_fail(c, err, "rank %u called %s #%llu instead", r,
					     cal_comm_op_name(s->op), (unsigned long long)s->seq);
		if (s->count != mine->count && c->op != CAL_COMM_OP_ALLTOALLV &&
		    c->op != CAL_COMM_OP_COUNTS)
			return cal_comm_fail(c, err, "rank %u passes %zu, this rank %zu", r, s->count,
					     mine->count);
		if (s->dtype != mine->dtype || s->redop != mine->redop || s->root != mine->root)
			return cal_comm_fail(c, err, "rank %u passes another dtype, reduction or root",
					     r);
	}
	return CAL_OK;
}

/* A collective's work once every rank has published: reads the slots of
 * all (this rank's is slot[c->rank]). */
typedef enum cal_status (*thr_step_fn)(struct cal_comm *c, const struct thr_slot *slot,
				       struct cal_error *err);

/* One collective: publishes mine, runs step (none for a barrier), then
 * waits until every rank is done reading (slots stay readable until then). */
static enum cal_status collective(struct cal_comm *c, const struct thr_slot *mine,
				  thr_step_fn step, struct cal_error *err)
{
	struct thr_world *t = c->world->impl;
	struct timespec dl = cal_comm_deadline(c->timeout_ms);
	enum cal_status st = publish(c, mine, &dl, err);
	if (st >= 0 && step)
		st = step(c, t->slot, err);
	return st < 0 ? st : rendezvous(c, &dl, err);
}

static enum cal_status reduce_step(struct cal_comm *c, const struct thr_slot *slot,
				   struct cal_error *err)
{
	const struct thr_slot *me = &slot[c->rank];
	memcpy(me->recv, slot[0].send, me->count * cal_comm_dtype_size(me->dtype));
	for (unsigned r = 1; r < c->size; r++)
		cal_comm_reduce_into(me->recv, slot[r].send, me->count, me->dtype, me->redop);
	return CAL_OK;
}

static enum cal_status thr_allreduce(struct cal_comm *c, void *buf, size_t count,
				     enum cal_comm_dtype dtype, enum cal_comm_redop op,
				     struct cal_error *err)
{
	size_t bytes = count * cal_comm_dtype_size(dtype);
	void *acc = malloc(bytes ? bytes : 1);
	if (!acc)
		return cal_comm_fail(c, err, "out of memory (%zu bytes)", bytes);
	struct thr_slot mine = {.count = count, .dtype = dtype, .redop = op, .send = buf,
				.recv = acc};
	enum cal_status st = collective(c, &mine, reduce_step, err);
	if (st >= 0)
		memcpy(buf, acc, bytes);
	free(acc);
	return st;
}

static enum cal_status gather_step(struct cal_comm *c, const struct thr_slot *slot,
				   struct cal_error *err)
{
	const struct thr_slot *me = &slot[c->rank];
	for (unsigned r = 0; r < c->size; r++) {
		char *dst = (char *)me->recv + (size_t)r * me->count;
		if (dst != slot[r].send)
			memcpy(dst, slot[r].send, me->count);
	}
	return CAL_OK;
}

static enum cal_status thr_allgather(struct cal_comm *c, const void *send, size_t bytes,
				     void *recv, struct cal_error *err)
{
	struct thr_slot mine = {.count = bytes, .send = send, .recv = recv};
	return collective(c, &mine, gather_step, err);
}

static enum cal_status bcast_step(struct cal_comm *c, const struct thr_slot *slot,
				  struct cal_error *err)
{
	const struct thr_slot *me = &slot[c->rank];
	if (c->rank != me->root)
		memcpy(me->recv, slot[me->root].send, me->count);
	return CAL_OK;
}

static enum cal_status thr_broadcast(struct cal_comm *c, void *buf, size_t bytes, unsigned root,
				     struct cal_error *err)
{
	struct thr_slot mine = {.count = bytes, .root = root, .send = buf, .recv = buf};
	return collective(c, &mine, bcast_step, err);
}

static enum cal_status thr_barrier(struct cal_comm *c, struct cal_error *err)
{
	struct thr_slot mine = {0};
	return collective(c, &mine, NULL, err);
}

static enum cal_status alltoallv_step(struct cal_comm *c, const struct thr_slot *slot,
				      struct cal_error *err)
{
	unsigned R = c->size, me = c->rank;
	const uint64_t *recv_bytes = slot[me].recv_bytes;
	char *dst = slot[me].recv;
	for (unsigned p = 0; p < R; p++) {
		const struct thr_slot *s = &slot[p];
		if (s->send_bytes[me] != recv_bytes[p])
			return cal_comm_fail(c, err, "rank %u sends %llu bytes to rank %u, which expects "
					     "%llu", p, (unsigned long long)s->send_bytes[me], me,
					     (unsigned long long)recv_bytes[p]);
		uint64_t off = 0;
		for (unsigned q = 0; q < me; q++)
			off += s->send_bytes[q];
		if (recv_bytes[p])
			memcpy(dst, (const char *)s->send + off, recv_bytes[p]);
		dst += recv_bytes[p];
	}
	return CAL_OK;
}

static enum cal_status thr_alltoallv(struct cal_comm *c, const void *send,
				     const uint64_t *send_bytes, void *recv,
				     const uint64_t *recv_bytes, struct cal_error *err)
{
	struct thr_slot mine = {.send = send, .send_bytes = send_bytes, .recv = recv,
				.recv_bytes = recv_bytes};
	return collective(c, &mine, alltoallv_step, err);
}

CAL_COMM_WORLD_OPS(cal_comm_threads_ops, thr);
