/*
 * comm_nccl.c — kernels/comm.h for GPU ranks through NCCL: the worlds, the
 * unique id's rendezvous and the failure state.  NCCL itself is called in
 * the CUDA module (kernels/cuda/comm_nccl.cu), so that this file, linked
 * into calibd, links no NCCL.  Built only when meson found NCCL.
 *
 * The process hosting rank 0 creates the ncclUniqueId; when other
 * processes host ranks it writes it, hex-encoded, into the rendezvous file
 * (write + rename) and they wait for the file until the deadline.  Each
 * rank's thread then joins (ncclCommInitRankConfig, non-blocking) on its
 * own back end's device.
 */
#include "kernels/comm_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend_impl.h"

struct nccl_world {
	const struct cal_nccl_module *m;
	unsigned char id[CAL_NCCL_ID_BYTES];
};

static const struct cal_nccl_module *nccl_module(struct cal_error *err)
{
	cal_nccl_module_get_fn get =
		(cal_nccl_module_get_fn)cal_backend_cuda_symbol(CAL_NCCL_MODULE_SYMBOL, err);
	const struct cal_nccl_module *m = get ? get() : NULL;
	if (get && (!m || m->abi != CAL_NCCL_MODULE_ABI)) {
		cal_error_set(err, CAL_ERR_UNSUPPORTED, "comm nccl: libcalibd-cuda.so is from "
			      "another calibd build");
		return NULL;
	}
	if (!m)
		cal_error_wrap(err, CAL_ERR_UNSUPPORTED, "comm nccl");
	return m;
}

static enum cal_status id_from_hex(const char *text, unsigned char *id)
{
	for (unsigned i = 0; i < CAL_NCCL_ID_BYTES; i++) {
		unsigned v;
		if (sscanf(text + 2 * i, "%2x", &v) != 1)
			return CAL_ERR_FORMAT;
		id[i] = (unsigned char)v;
	}
	return CAL_OK;
}

static enum cal_status nccl_world_init(struct cal_comm_world *w, struct cal_error *err)
{
	struct nccl_world *nw = calloc(1, sizeof(*nw));
	if (!nw)
		return cal_error_set(err, CAL_ERR_NOMEM, "comm nccl: out of memory");
	w->impl = nw;
	if (!(nw->m = nccl_module(err)))
		return CAL_ERR_UNSUPPORTED;
	const struct cal_comm_opts *o = &w->opts;
	int shared = o->local_ranks < o->nranks;
	enum cal_status st;
	if (o->rank == 0) {
		if ((st = nw->m->unique_id(nw->id, err)) < 0)
			return st;
		if (!shared)
			return CAL_OK;
		char hex[2 * CAL_NCCL_ID_BYTES + 2];
		for (unsigned i = 0; i < CAL_NCCL_ID_BYTES; i++)
			snprintf(hex + 2 * i, 3, "%02x", nw->id[i]);
		strcpy(hex + 2 * CAL_NCCL_ID_BYTES, "\n");
		return cal_comm_rdv_write(o->rendezvous, hex, err);
	}
	struct timespec dl = cal_comm_deadline(o->timeout_ms);
	char *text = NULL;
	if ((st = cal_comm_rdv_read(w, o->rendezvous, &dl, &text, err)) < 0)
		return st;
	if (strlen(text) < 2 * CAL_NCCL_ID_BYTES || id_from_hex(text, nw->id) < 0)
		st = cal_error_set(err, CAL_ERR_FORMAT, "comm nccl: rendezvous file %s does not hold "
				   "an NCCL unique id", o->rendezvous);
	free(text);
	return st;
}

static void nccl_world_fini(struct cal_comm_world *w)
{
	free(w->impl);
	w->impl = NULL;
}

static struct cal_nccl_wait wait_for(struct cal_comm *c, const char *what)
{
	struct cal_nccl_wait wt = {cal_comm_deadline(c->timeout_ms), &c->world->failed, what};
	return wt;
}

/* A failure of the module: the world's first reason when it had failed
 * (this rank was woken by another's failure), else the module's message. */
static enum cal_status failed(struct cal_comm *c, struct cal_error *e, struct cal_error *err)
{
	enum cal_status st;
	if (cal_comm_world_failed(c->world))
		st = cal_comm_fail(c, err, "%s", c->world->reason);
	else
		st = cal_comm_fail(c, err, "%s", cal_error_msg(e));
	cal_error_clear(e);
	return st;
}

static enum cal_status nccl_join(struct cal_comm *c, struct cal_error *err)
{
	struct nccl_world *nw = c->world->impl;
	char what[64];
	snprintf(what, sizeof(what), "joining rank %u of %u", c->rank, c->size);
	struct cal_nccl_wait wt = wait_for(c, what);
	return nw->m->init(c->be, nw->id, c->size, c->rank, &wt, &c->impl, err);
}

#define CALL(c, fn, ...)                                                       \
	do {                                                                   \
		struct nccl_world *nw_ = (c)->world->impl;                     \
		struct cal_error e_ = {0};                                     \
		char what_[64];                                                \
		snprintf(what_, sizeof(what_), "NCCL %s", cal_comm_op_name((c)->op)); \
		struct cal_nccl_wait wt_ = wait_for(c, what_);                 \
		if (nw_->m->fn((c)->impl, (c)->be, __VA_ARGS__, &wt_, &e_) < 0) \
			return failed(c, &e_, err);                            \
		return CAL_OK;                                                 \
	} while (0)

static enum cal_status nccl_allreduce(struct cal_comm *c, void *buf, size_t count,
				      enum cal_comm_dtype dtype, enum cal_comm_redop op,
				      struct cal_error *err)
{
	CALL(c, allreduce, buf, count, dtype, op);
}

static enum cal_status nccl_allgather(struct cal_comm *c, const void *send, size_t bytes,
				      void *recv, struct cal_error *err)
{
	CALL(c, allgather, send, bytes, recv);
}

static enum cal_status nccl_broadcast(struct cal_comm *c, void *buf, size_t bytes, unsigned root,
				      struct cal_error *err)
{
	CALL(c, broadcast, buf, bytes, root);
}

static enum cal_status nccl_barrier(struct cal_comm *c, struct cal_error *err)
{
	struct nccl_world *nw = c->world->impl;
	struct cal_error e = {0};
	struct cal_nccl_wait wt = wait_for(c, "NCCL barrier");
	if (nw->m->barrier(c->impl, c->be, &wt, &e) < 0)
		return failed(c, &e, err);
	return CAL_OK;
}

static enum cal_status nccl_alltoallv(struct cal_comm *c, const void *send,
				      const uint64_t *send_bytes, void *recv,
				      const uint64_t *recv_bytes, struct cal_error *err)
{
	CALL(c, alltoallv, send, send_bytes, recv, recv_bytes);
}

static void nccl_abort(struct cal_comm *c)
{
	/* the watchdog of a collective in progress polls the world's failed
	 * flag and aborts the communicator; cal_comm_free aborts an idle one */
}

static void nccl_leave(struct cal_comm *c)
{
	struct nccl_world *nw = c->world->impl;
	nw->m->destroy(c->impl, cal_comm_world_failed(c->world));
	c->impl = NULL;
}

CAL_COMM_WORLD_OPS(cal_comm_nccl_ops, nccl);
