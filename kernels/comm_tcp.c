/*
 * comm_tcp.c — kernels/comm.h for one CPU rank per process (or per node)
 * over TCP sockets.
 *
 * Topology: a star.  Rank 0 binds opts.host on an ephemeral port, publishes
 * "host port" in the rendezvous file (write + rename) and accepts the other
 * ranks, which say hello with their rank; once all R - 1 are in, rank 0
 * answers each with a welcome and removes the file.  Every collective is
 * then one CALL frame from each rank to rank 0 and one REPLY frame back:
 * rank 0 checks that all called the same thing, computes (sums in rank
 * order) and sends each rank its result.  Rank 0 therefore moves every
 * byte twice; this transport is for CPU ranks (tests, small jobs), not for
 * bandwidth — GPU jobs use NCCL.
 *
 * Frames are a fixed header (struct frame, host byte order: every rank runs
 * the same build on the same architecture; the magic catches a mismatch)
 * and a payload.  Sockets are non-blocking and every wait is a poll() on
 * the sockets plus a wake pipe, bounded by the collective's deadline.  A
 * rank that fails sends an ABORT frame with the reason to the ranks it is
 * connected to (when its stream is at a frame boundary) and shuts its
 * sockets down, so that peers fail at once with the reason or with
 * "closed the connection".
 */
#include "kernels/comm_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAGIC 0x43414c43u /* "CALC" */
#define MAX_REASON 4096u

enum frame_type {
	FRAME_HELLO = 1,   /* join: rank -> rank 0; a = nranks */
	FRAME_WELCOME = 2, /* join: rank 0 -> rank */
	FRAME_CALL = 3,    /* collective: rank -> rank 0 */
	FRAME_REPLY = 4,   /* collective: rank 0 -> rank */
	FRAME_ABORT = 5,   /* payload: the reason */
};

struct frame {
	uint32_t magic, type, op, rank;
	uint64_t seq;
	uint64_t a, b; /* the call's arguments, compared across ranks */
	uint64_t len;  /* payload bytes */
};

struct tcp_comm {
	int *fd;                /* rank 0: fd[p] for p >= 1; others: fd[0] */
	unsigned char *mid;     /* per fd: 1 while a frame is partly sent */
	int wake[2];            /* pipe: abort from another thread */
	pthread_mutex_t lock;   /* busy, owner, closed */
	int busy;
	pthread_t owner;
	int shut;               /* sockets shut down after a failure */
};

/* ---- one transfer per peer: an optional frame out, an optional frame in ---- */

struct io {
	unsigned peer;
	int fd;
	int want_send, want_recv;
	struct frame sh;       /* out */
	const void *sp;
	size_t sdone;          /* bytes of header + payload sent */
	struct frame rh;       /* in */
	char *rp;              /* payload in (malloc'd, owned by the caller after) */
	size_t rdone;
	uint32_t expect;       /* frame type expected in */
};

static void io_send(struct io *io, int fd, unsigned peer, const struct frame *h, const void *p)
{
	io->fd = fd;
	io->peer = peer;
	io->want_send = 1;
	io->sh = *h;
	io->sp = p;
}

static void io_recv(struct io *io, int fd, unsigned peer, uint32_t type)
{
	io->fd = fd;
	io->peer = peer;
	io->want_recv = 1;
	io->expect = type;
}

static struct frame mkframe(struct cal_comm *c, uint32_t type, uint64_t a, uint64_t b, uint64_t len)
{
	struct frame f = {FRAME_MAGIC, type, (uint32_t)c->op, c->rank, c->seq, a, b, len};
	return f;
}

/* Which fd index of the endpoint a peer uses. */
static unsigned fd_index(const struct cal_comm *c, unsigned peer)
{
	return c->rank == 0 ? peer : 0;
}

/* The failure of a peer's socket: the world's reason if it failed already
 * (our own shutdown), else the peer closing. */
static enum cal_status peer_gone(struct cal_comm *c, unsigned peer, int e, struct cal_error *err)
{
	if (cal_comm_world_failed(c->world))
		return cal_comm_fail(c, err, "%s", c->world->reason);
	if (e && e != ECONNRESET && e != EPIPE)
		return cal_comm_fail(c, err, "connection to rank %u failed: %s", peer, strerror(e));
	return cal_comm_fail(c, err, "rank %u closed the connection (exited, killed or left)", peer);
}

/* Advances one io on readiness; 1 = progress, 0 = nothing, < 0 = failed. */
static enum cal_status io_step_send(struct cal_comm *c, struct tcp_comm *t, struct io *io,
				    struct cal_error *err)
{
	size_t total = sizeof(io->sh) + io->sh.len;
	while (io->sdone < total) {
		const char *src;
		size_t n;
		if (io->sdone < sizeof(io->sh)) {
			src = (const char *)&io->sh + io->sdone;
			n = sizeof(io->sh) - io->sdone;
		} else {
			src = (const char *)io->sp + (io->sdone - sizeof(io->sh));
			n = total - io->sdone;
		}
		t->mid[fd_index(c, io->peer)] = 1;
		ssize_t k = send(io->fd, src, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return CAL_OK;
		if (k <= 0)
			return peer_gone(c, io->peer, k < 0 ? errno : 0, err);
		io->sdone += (size_t)k;
	}
	t->mid[fd_index(c, io->peer)] = 0;
	io->want_send = 0;
	return CAL_OK;
}

static enum cal_status io_step_recv(struct cal_comm *c, struct io *io, struct cal_error *err)
{
	for (;;) {
		char *dst;
		size_t n;
		if (io->rdone < sizeof(io->rh)) {
			dst = (char *)&io->rh + io->rdone;
			n = sizeof(io->rh) - io->rdone;
		} else if (io->rdone < sizeof(io->rh) + io->rh.len) {
			dst = io->rp + (io->rdone - sizeof(io->rh));
			n = sizeof(io->rh) + io->rh.len - io->rdone;
		} else {
			break;
		}
		ssize_t k = recv(io->fd, dst, n, MSG_DONTWAIT);
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return CAL_OK;
		if (k <= 0)
			return peer_gone(c, io->peer, k < 0 ? errno : 0, err);
		io->rdone += (size_t)k;
		if (io->rdone == sizeof(io->rh)) { /* header complete: check it */
			const struct frame *h = &io->rh;
			if (h->magic != FRAME_MAGIC || h->rank != io->peer)
				return cal_comm_fail(c, err, "rank %u sent a malformed frame (another "
						     "calibd build or architecture?)", io->peer);
			if (h->type == FRAME_ABORT && h->len > MAX_REASON)
				return cal_comm_fail(c, err, "rank %u aborted", io->peer);
			if (h->type != FRAME_ABORT && (h->type != io->expect || h->op != (uint32_t)c->op ||
						       h->seq != c->seq))
				return cal_comm_fail(c, err, "rank %u called %s #%llu instead", io->peer,
						     cal_comm_op_name((enum cal_comm_op)h->op),
						     (unsigned long long)h->seq);
			if (h->len > SIZE_MAX - sizeof(*h) - 1)
				return cal_comm_fail(c, err, "rank %u sent %llu bytes", io->peer,
						     (unsigned long long)h->len);
			io->rp = malloc(h->len + 1);
			if (!io->rp)
				return cal_comm_fail(c, err, "out of memory for %llu bytes from rank %u",
						     (unsigned long long)h->len, io->peer);
		}
	}
	io->rp[io->rh.len] = '\0';
	io->want_recv = 0;
	if (io->rh.type == FRAME_ABORT)
		return cal_comm_fail(c, err, "rank %u reported: %s", io->peer, io->rp);
	return CAL_OK;
}

/* Runs the ios until all are done, one fails, the world fails or the
 * deadline passes (naming the peers still pending). */
static enum cal_status run_io(struct cal_comm *c, struct io *io, unsigned n,
			      const struct timespec *dl, struct cal_error *err)
{
	struct tcp_comm *t = c->impl;
	struct pollfd *pf = calloc(n + 1, sizeof(*pf));
	unsigned *which = calloc(n + 1, sizeof(*which));
	enum cal_status st = CAL_OK;
	if (!pf || !which) {
		st = cal_comm_fail(c, err, "out of memory");
		goto out;
	}
	for (;;) {
		unsigned k = 0;
		for (unsigned i = 0; i < n; i++) {
			if (!io[i].want_send && !io[i].want_recv)
				continue;
			pf[k].fd = io[i].fd;
			pf[k].events = (short)((io[i].want_send ? POLLOUT : 0) |
					       (io[i].want_recv ? POLLIN : 0));
			pf[k].revents = 0;
			which[k++] = i;
		}
		if (cal_comm_world_failed(c->world)) {
			st = cal_comm_fail(c, err, "%s", c->world->reason);
			goto out;
		}
		if (!k)
			break;
		pf[k] = (struct pollfd){.fd = t->wake[0], .events = POLLIN};
		long left = cal_comm_ms_left(dl);
		int r = left ? poll(pf, k + 1, (int)(left > 60000 ? 60000 : left)) : 0;
		if (r < 0 && errno != EINTR) {
			st = cal_comm_fail(c, err, "poll: %s", strerror(errno));
			goto out;
		}
		if (r == 0 && cal_comm_ms_left(dl) == 0) {
			char list[256];
			size_t len = 0;
			list[0] = '\0';
			for (unsigned j = 0; j < k && j < 16; j++)
				len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%u",
							len ? ", " : "", io[which[j]].peer);
			if (c->rank == 0)
				st = cal_comm_fail(c, err, "rank%s %s did not arrive within %u ms",
						   k > 1 ? "s" : "", list, c->timeout_ms);
			else
				st = cal_comm_fail(c, err, "rank 0 (the relay) did not answer within "
						   "%u ms: it or another rank stopped", c->timeout_ms);
			goto out;
		}
		for (unsigned j = 0; j < k && r > 0; j++) {
			struct io *x = &io[which[j]];
			if (!pf[j].revents)
				continue;
			if (x->want_recv && (pf[j].revents & (POLLIN | POLLHUP | POLLERR)))
				if ((st = io_step_recv(c, x, err)) < 0)
					goto out;
			if (x->want_send && (pf[j].revents & (POLLOUT | POLLHUP | POLLERR)))
				if ((st = io_step_send(c, t, x, err)) < 0)
					goto out;
		}
	}
out:
	free(pf);
	free(which);
	return st;
}

static void io_free(struct io *io, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		free(io[i].rp);
	free(io);
}

/*
 * The skeleton of every collective.  Non-zero ranks send CALL (a, b,
 * payload) and receive REPLY into *ret_reply (malloc'd, length in
 * *ret_len).  Rank 0 receives every CALL, checks a and b against its own,
 * and calls relay() to build each reply (NULL payload = empty), then sends
 * them.
 */
typedef enum cal_status (*relay_fn)(struct cal_comm *c, struct io *calls, void *arg,
				    const void **ret_payload, uint64_t *ret_len, char **ret_owned,
				    struct cal_error *err);

static enum cal_status exchange(struct cal_comm *c, uint64_t a, uint64_t b, const void *payload,
				uint64_t len, relay_fn relay, void *arg, char **ret_reply,
				uint64_t *ret_len, struct cal_error *err)
{
	struct tcp_comm *t = c->impl;
	struct timespec dl = cal_comm_deadline(c->timeout_ms);
	unsigned R = c->size;
	struct io *io = calloc(R, sizeof(*io));
	enum cal_status st = CAL_OK;
	*ret_reply = NULL;
	*ret_len = 0;
	if (!io)
		return cal_comm_fail(c, err, "out of memory");
	pthread_mutex_lock(&t->lock);
	t->busy = 1;
	t->owner = pthread_self();
	pthread_mutex_unlock(&t->lock);
	if (c->rank != 0) {
		struct frame f = mkframe(c, FRAME_CALL, a, b, len);
		io_send(&io[0], t->fd[0], 0, &f, payload);
		io_recv(&io[0], t->fd[0], 0, FRAME_REPLY);
		if ((st = run_io(c, io, 1, &dl, err)) >= 0) {
			*ret_reply = io[0].rp;
			*ret_len = io[0].rh.len;
			io[0].rp = NULL;
		}
		goto out;
	}
	/* rank 0: io[p] for p >= 1 (io[0] unused) */
	for (unsigned p = 1; p < R; p++)
		io_recv(&io[p], t->fd[p], p, FRAME_CALL);
	if ((st = run_io(c, io + 1, R - 1, &dl, err)) < 0)
		goto out;
	for (unsigned p = 1; p < R; p++)
		if (io[p].rh.a != a || io[p].rh.b != b) {
			st = cal_comm_fail(c, err, "rank %u passes (%llu, %llu), rank 0 (%llu, %llu)",
					   p, (unsigned long long)io[p].rh.a,
					   (unsigned long long)io[p].rh.b, (unsigned long long)a,
					   (unsigned long long)b);
			goto out;
		}
	const void **rp = calloc(R, sizeof(*rp));
	uint64_t *rl = calloc(R, sizeof(*rl));
	char **owned = calloc(R, sizeof(*owned));
	if (!rp || !rl || !owned)
		st = cal_comm_fail(c, err, "out of memory");
	else
		st = relay(c, io, arg, rp, rl, owned, err);
	if (st >= 0) {
		for (unsigned p = 1; p < R; p++) {
			struct frame f = mkframe(c, FRAME_REPLY, a, b, rl[p]);
			io_send(&io[p], t->fd[p], p, &f, rp[p]);
		}
		st = run_io(c, io + 1, R - 1, &dl, err);
	}
	if (owned)
		for (unsigned p = 0; p < R; p++)
			free(owned[p]);
	free(owned);
	free(rp);
	free(rl);
out:
	pthread_mutex_lock(&t->lock);
	t->busy = 0;
	pthread_mutex_unlock(&t->lock);
	io_free(io, R);
	return st;
}

static enum cal_status expect_len(struct cal_comm *c, uint64_t got, uint64_t want,
				  struct cal_error *err)
{
	if (got != want)
		return cal_comm_fail(c, err, "rank 0 replied %llu bytes, expected %llu",
				     (unsigned long long)got, (unsigned long long)want);
	return CAL_OK;
}

/* ---- the collectives ---------------------------------------------------------- */

struct red_arg {
	void *buf;
	size_t count;
	enum cal_comm_dtype dtype;
	enum cal_comm_redop op;
};

static enum cal_status relay_allreduce(struct cal_comm *c, struct io *calls, void *arg,
				       const void **rp, uint64_t *rl, char **owned,
				       struct cal_error *err)
{
	struct red_arg *x = arg;
	size_t bytes = x->count * cal_comm_dtype_size(x->dtype);
	for (unsigned p = 1; p < c->size; p++) { /* rank order: 0 (buf), 1, 2, ... */
		if (calls[p].rh.len != bytes)
			return cal_comm_fail(c, err, "rank %u sent %llu bytes, expected %zu", p,
					     (unsigned long long)calls[p].rh.len, bytes);
		cal_comm_reduce_into(x->buf, calls[p].rp, x->count, x->dtype, x->op);
	}
	for (unsigned p = 1; p < c->size; p++) {
		rp[p] = x->buf;
		rl[p] = bytes;
	}
	return CAL_OK;
}

static enum cal_status tcp_allreduce(struct cal_comm *c, void *buf, size_t count,
				     enum cal_comm_dtype dtype, enum cal_comm_redop op,
				     struct cal_error *err)
{
	struct red_arg x = {buf, count, dtype, op};
	size_t bytes = count * cal_comm_dtype_size(dtype);
	char *reply;
	uint64_t len;
	enum cal_status st = exchange(c, count, (uint64_t)dtype << 8 | (uint64_t)op, buf, bytes,
				      relay_allreduce, &x, &reply, &len, err);
	if (st >= 0 && c->rank && (st = expect_len(c, len, bytes, err)) >= 0)
		memcpy(buf, reply, bytes);
	free(reply);
	return st;
}

struct gather_arg {
	const void *send;
	size_t bytes;
	void *recv;
};

static enum cal_status relay_allgather(struct cal_comm *c, struct io *calls, void *arg,
				       const void **rp, uint64_t *rl, char **owned,
				       struct cal_error *err)
{
	struct gather_arg *x = arg;
	char *recv = x->recv;
	if (recv != x->send)
		memmove(recv, x->send, x->bytes);
	for (unsigned p = 1; p < c->size; p++) {
		if (calls[p].rh.len != x->bytes)
			return cal_comm_fail(c, err, "rank %u sent %llu bytes, expected %zu", p,
					     (unsigned long long)calls[p].rh.len, x->bytes);
		memcpy(recv + (size_t)p * x->bytes, calls[p].rp, x->bytes);
		rp[p] = recv;
		rl[p] = (uint64_t)x->bytes * c->size;
	}
	return CAL_OK;
}

static enum cal_status tcp_allgather(struct cal_comm *c, const void *send, size_t bytes,
				     void *recv, struct cal_error *err)
{
	struct gather_arg x = {send, bytes, recv};
	char *reply;
	uint64_t len, all = (uint64_t)bytes * c->size;
	enum cal_status st = exchange(c, bytes, 0, send, bytes, relay_allgather, &x, &reply, &len, err);
	if (st >= 0 && c->rank && (st = expect_len(c, len, all, err)) >= 0)
		memcpy(recv, reply, all); /* own segment included: same bytes */
	free(reply);
	return st;
}

struct bcast_arg {
	void *buf;
	size_t bytes;
	unsigned root;
};

static enum cal_status relay_broadcast(struct cal_comm *c, struct io *calls, void *arg,
				       const void **rp, uint64_t *rl, char **owned,
				       struct cal_error *err)
{
	struct bcast_arg *x = arg;
	if (x->root != 0) {
		if (calls[x->root].rh.len != x->bytes)
			return cal_comm_fail(c, err, "rank %u sent %llu bytes, expected %zu", x->root,
					     (unsigned long long)calls[x->root].rh.len, x->bytes);
		memcpy(x->buf, calls[x->root].rp, x->bytes);
	}
	for (unsigned p = 1; p < c->size; p++) {
		rp[p] = p == x->root ? NULL : x->buf;
		rl[p] = p == x->root ? 0 : x->bytes;
	}
	return CAL_OK;
}

static enum cal_status tcp_broadcast(struct cal_comm *c, void *buf, size_t bytes, unsigned root,
				     struct cal_error *err)
{
	struct bcast_arg x = {buf, bytes, root};
	char *reply;
	uint64_t len;
	int mine = c->rank == root;
	enum cal_status st = exchange(c, bytes, root, mine ? buf : NULL, mine ? bytes : 0,
				      relay_broadcast, &x, &reply, &len, err);
	if (st >= 0 && c->rank && !mine && (st = expect_len(c, len, bytes, err)) >= 0)
		memcpy(buf, reply, bytes);
	free(reply);
	return st;
}

static enum cal_status relay_none(struct cal_comm *c, struct io *calls, void *arg,
				  const void **rp, uint64_t *rl, char **owned, struct cal_error *err)
{
	return CAL_OK;
}

static enum cal_status tcp_barrier(struct cal_comm *c, struct cal_error *err)
{
	char *reply;
	uint64_t len;
	enum cal_status st = exchange(c, 0, 0, NULL, 0, relay_none, NULL, &reply, &len, err);
	free(reply);
	return st;
}

/* alltoallv: a CALL carries send_bytes[R], recv_bytes[R], then the data. */
struct a2a_arg {
	const char *send;
	const uint64_t *send_bytes, *recv_bytes;
	char *recv;
};

static enum cal_status relay_alltoallv(struct cal_comm *c, struct io *calls, void *arg,
				       const void **rp, uint64_t *rl, char **owned,
				       struct cal_error *err)
{
	struct a2a_arg *x = arg;
	unsigned R = c->size;
	/* every rank's sizes and data as rank 0 sees them */
	const uint64_t **sb = calloc(R, sizeof(*sb)), **rb = calloc(R, sizeof(*rb));
	const char **data = calloc(R, sizeof(*data));
	enum cal_status st = CAL_OK;
	if (!sb || !rb || !data) {
		st = cal_comm_fail(c, err, "out of memory");
		goto out;
	}
	sb[0] = x->send_bytes;
	rb[0] = x->recv_bytes;
	data[0] = x->send;
	for (unsigned q = 1; q < R; q++) { /* sizes arrived whole and add up */
		uint64_t hdr = 2 * sizeof(uint64_t) * R, sum = 0;
		if (calls[q].rh.len < hdr) {
			st = cal_comm_fail(c, err, "rank %u sent a short alltoallv call", q);
			goto out;
		}
		sb[q] = (const uint64_t *)calls[q].rp;
		rb[q] = sb[q] + R;
		data[q] = calls[q].rp + hdr;
		for (unsigned p = 0; p < R; p++)
			sum += sb[q][p];
		if (sum != calls[q].rh.len - hdr) {
			st = cal_comm_fail(c, err, "rank %u sent %llu bytes of data for %llu", q,
					   (unsigned long long)(calls[q].rh.len - hdr),
					   (unsigned long long)sum);
			goto out;
		}
	}
	for (unsigned p = 0; p < R; p++) {
		uint64_t total = 0;
		for (unsigned q = 0; q < R; q++) {
			if (sb[q][p] != rb[p][q]) {
				st = cal_comm_fail(c, err, "rank %u sends %llu bytes to rank %u, which "
						   "expects %llu", q, (unsigned long long)sb[q][p], p,
						   (unsigned long long)rb[p][q]);
				goto out;
			}
			total += rb[p][q];
		}
		char *dst = p == 0 ? x->recv : (owned[p] = malloc(total ? total : 1));
		if (!dst) {
			st = cal_comm_fail(c, err, "out of memory (%llu bytes)",
					   (unsigned long long)total);
			goto out;
		}
		for (unsigned q = 0; q < R; q++) {
			uint64_t off = 0;
			for (unsigned k = 0; k < p; k++)
				off += sb[q][k];
			if (sb[q][p])
				memcpy(dst, data[q] + off, sb[q][p]);
			dst += sb[q][p];
		}
		rp[p] = owned[p];
		rl[p] = total;
	}
out:
	free(sb);
	free(rb);
	free(data);
	return st;
}

static enum cal_status tcp_alltoallv(struct cal_comm *c, const void *send,
				     const uint64_t *send_bytes, void *recv,
				     const uint64_t *recv_bytes, struct cal_error *err)
{
	unsigned R = c->size;
	struct a2a_arg x = {send, send_bytes, recv_bytes, recv};
	uint64_t s_all = 0, r_all = 0, hdr = 2 * sizeof(uint64_t) * R;
	for (unsigned p = 0; p < R; p++) {
		s_all += send_bytes[p];
		r_all += recv_bytes[p];
	}
	char *msg = NULL, *reply = NULL;
	uint64_t len;
	if (c->rank) { /* sizes and data in one payload */
		msg = malloc(hdr + s_all);
		if (!msg)
			return cal_comm_fail(c, err, "out of memory (%llu bytes)",
					     (unsigned long long)(hdr + s_all));
		memcpy(msg, send_bytes, hdr / 2);
		memcpy(msg + hdr / 2, recv_bytes, hdr / 2);
		if (s_all)
			memcpy(msg + hdr, send, s_all);
	}
	enum cal_status st = exchange(c, R, 0, msg, c->rank ? hdr + s_all : 0, relay_alltoallv, &x,
				      &reply, &len, err);
	if (st >= 0 && c->rank && (st = expect_len(c, len, r_all, err)) >= 0 && r_all)
		memcpy(recv, reply, r_all);
	free(msg);
	free(reply);
	return st;
}

/* ---- failure ----------------------------------------------------------------------- */

/* Tells the peers (ABORT frame where the stream is at a frame boundary) and
 * shuts the sockets down.  Called by the endpoint's own thread, or by
 * another while no collective runs. */
static void tell_peers(struct cal_comm *c, struct tcp_comm *t)
{
	if (t->shut)
		return;
	t->shut = 1;
	const char *why = c->world->reason ? c->world->reason : "aborted";
	size_t n = strlen(why) < MAX_REASON ? strlen(why) : MAX_REASON;
	unsigned nfd = c->rank == 0 ? c->size : 1;
	for (unsigned i = c->rank == 0 ? 1 : 0; i < nfd; i++) {
		if (t->fd[i] < 0)
			continue;
		if (!t->mid[i]) {
			struct frame f = mkframe(c, FRAME_ABORT, 0, 0, n);
			char buf[sizeof(f) + MAX_REASON];
			memcpy(buf, &f, sizeof(f));
			memcpy(buf + sizeof(f), why, n);
			(void)!send(t->fd[i], buf, sizeof(f) + n, MSG_NOSIGNAL | MSG_DONTWAIT);
		}
		shutdown(t->fd[i], SHUT_RDWR);
	}
}

static void tcp_abort(struct cal_comm *c)
{
	struct tcp_comm *t = c->impl;
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	if (t->busy && !pthread_equal(t->owner, pthread_self()))
		(void)!write(t->wake[1], "x", 1); /* the owner tells the peers */
	else
		tell_peers(c, t);
	pthread_mutex_unlock(&t->lock);
}

/* ---- joining ------------------------------------------------------------------------- */

static enum cal_status tcp_world_init(struct cal_comm_world *w, struct cal_error *err)
{
	return CAL_OK;
}

static void tcp_world_fini(struct cal_comm_world *w)
{
}

/* Sends or receives exactly n bytes on a non-blocking fd before the deadline;
 * 0, or -1 with errno (ETIMEDOUT at the deadline, ECONNRESET on EOF). */
static int xfer_all(int fd, void *buf, size_t n, int out, const struct timespec *dl)
{
	size_t done = 0;
	while (done < n) {
		ssize_t k = out ? send(fd, (char *)buf + done, n - done, MSG_NOSIGNAL | MSG_DONTWAIT)
				: recv(fd, (char *)buf + done, n - done, MSG_DONTWAIT);
		if (k > 0) {
			done += (size_t)k;
			continue;
		}
		if (k == 0) {
			errno = ECONNRESET;
			return -1;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		long left = cal_comm_ms_left(dl);
		if (!left) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd pf = {fd, out ? POLLOUT : POLLIN, 0};
		poll(&pf, 1, (int)(left > 1000 ? 1000 : left));
	}
	return 0;
}

static void tune(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static enum cal_status join_leader(struct cal_comm *c, struct tcp_comm *t,
				   const struct timespec *dl, struct cal_error *err)
{
	const struct cal_comm_opts *o = &c->world->opts;
	unsigned R = c->size;
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV};
	struct addrinfo *ai = NULL;
	int lfd = -1, rc = getaddrinfo(o->host, "0", &hints, &ai);
	enum cal_status st = CAL_OK;
	if (rc != 0)
		return cal_error_set(err, CAL_ERR_INVALID, "comm tcp: address %s: %s", o->host,
				     gai_strerror(rc));
	lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_storage sa;
	socklen_t salen = sizeof(sa);
	int one = 1;
	if (lfd >= 0)
		setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (lfd < 0 || bind(lfd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(lfd, (int)R) != 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &salen) != 0) {
		st = cal_error_set(err, CAL_ERR_IO, "comm tcp: listening on %s: %s", o->host,
				   strerror(errno));
		goto out;
	}
	unsigned port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
						       : ((struct sockaddr_in *)&sa)->sin_port);
	char text[512];
	snprintf(text, sizeof(text), "%s %u\n", o->host, port);
	if ((st = cal_comm_rdv_write(o->rendezvous, text, err)) < 0)
		goto out;
	fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
	unsigned joined = 1;
	while (joined < R) {
		long left = cal_comm_ms_left(dl);
		if (!left || cal_comm_world_failed(c->world)) {
			char list[256];
			size_t len = 0;
			list[0] = '\0';
			for (unsigned p = 1; p < R && len < 200; p++)
				if (t->fd[p] < 0)
					len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%u",
								len ? ", " : "", p);
			st = cal_error_set(err, CAL_ERR_DEVICE, "comm tcp: rank%s %s did not join "
					   "within %u ms (rendezvous %s)", R - joined > 1 ? "s" : "",
					   list, o->timeout_ms, o->rendezvous);
			goto out;
		}
		struct pollfd pf = {lfd, POLLIN, 0};
		if (poll(&pf, 1, (int)(left > 1000 ? 1000 : left)) <= 0)
			continue;
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			continue;
		tune(fd);
		struct frame h;
		struct timespec hello_dl = cal_comm_deadline(2000); /* a stray connection */
		if (xfer_all(fd, &h, sizeof(h), 0, &hello_dl) != 0 || h.magic != FRAME_MAGIC ||
		    h.type != FRAME_HELLO || h.a != R || h.rank == 0 || h.rank >= R ||
		    t->fd[h.rank] >= 0) {
			close(fd);
			continue;
		}
		t->fd[h.rank] = fd;
		joined++;
	}
	for (unsigned p = 1; p < R; p++) {
		struct frame f = {FRAME_MAGIC, FRAME_WELCOME, 0, 0, 0, R, 0, 0};
		if (xfer_all(t->fd[p], &f, sizeof(f), 1, dl) != 0) {
			st = cal_error_set(err, CAL_ERR_DEVICE, "comm tcp: rank %u left while joining: %s",
					   p, strerror(errno));
			goto out;
		}
	}
	unlink(o->rendezvous); /* every rank is in: nobody reads it again */
out:
	if (lfd >= 0)
		close(lfd);
	freeaddrinfo(ai);
	return st;
}

/* Connects to "host port" from the rendezvous file; -1 with errno. */
static int dial(const char *text, const struct timespec *dl)
{
	char host[256];
	unsigned port;
	if (sscanf(text, "%255s %u", host, &port) != 2 || port == 0 || port > 65535) {
		errno = EINVAL;
		return -1;
	}
	char ps[16];
	snprintf(ps, sizeof(ps), "%u", port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV};
	struct addrinfo *ai = NULL;
	if (getaddrinfo(host, ps, &hints, &ai) != 0) {
		errno = EHOSTUNREACH;
		return -1;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int ok = fd >= 0;
	if (ok && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		ok = errno == EINPROGRESS;
		long left = cal_comm_ms_left(dl);
		struct pollfd pf = {fd, POLLOUT, 0};
		int e = 0;
		socklen_t el = sizeof(e);
		if (ok && (poll(&pf, 1, (int)(left > 5000 ? 5000 : left)) != 1 ||
			   getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0 || e != 0)) {
			ok = 0;
			errno = e ? e : ETIMEDOUT;
		}
	}
	int e = errno;
	freeaddrinfo(ai);
	if (!ok) {
		if (fd >= 0)
			close(fd);
		errno = e;
		return -1;
	}
	tune(fd);
	return fd;
}

static enum cal_status join_member(struct cal_comm *c, struct tcp_comm *t,
				   const struct timespec *dl, struct cal_error *err)
{
	const struct cal_comm_opts *o = &c->world->opts;
	int last = 0;
	for (;;) {
		char *text = NULL;
		enum cal_status st = cal_comm_rdv_read(c->world, o->rendezvous, dl, &text, err);
		if (st < 0)
			return st;
		int fd = dial(text, dl);
		last = errno;
		free(text);
		if (fd >= 0) {
			struct frame h = {FRAME_MAGIC, FRAME_HELLO, 0, c->rank, 0, c->size, 0, 0};
			struct frame w;
			if (xfer_all(fd, &h, sizeof(h), 1, dl) == 0 &&
			    xfer_all(fd, &w, sizeof(w), 0, dl) == 0 && w.magic == FRAME_MAGIC &&
			    w.type == FRAME_WELCOME && w.a == c->size) {
				t->fd[0] = fd;
				return CAL_OK;
			}
			last = errno;
			close(fd);
		}
		if (cal_comm_ms_left(dl) == 0)
			return cal_error_set(err, CAL_ERR_DEVICE, "comm tcp: rank %u could not join rank 0 "
					     "within %u ms (rendezvous %s): %s", c->rank, o->timeout_ms,
					     o->rendezvous, last ? strerror(last) : "no answer");
		struct timespec nap = {0, 20 * 1000000L}; /* a stale file: rank 0 rewrites it */
		nanosleep(&nap, NULL);
	}
}

static void tcp_leave(struct cal_comm *c)
{
	struct tcp_comm *t = c->impl;
	if (!t)
		return;
	unsigned nfd = c->rank == 0 ? c->size : 1;
	for (unsigned i = 0; i < nfd; i++)
		if (t->fd[i] >= 0)
			close(t->fd[i]);
	close(t->wake[0]);
	close(t->wake[1]);
	pthread_mutex_destroy(&t->lock);
	free(t->fd);
	free(t->mid);
	free(t);
	c->impl = NULL;
}

static enum cal_status tcp_join(struct cal_comm *c, struct cal_error *err)
{
	struct tcp_comm *t = calloc(1, sizeof(*t));
	unsigned nfd = c->rank == 0 ? c->size : 1;
	if (!t)
		return cal_error_set(err, CAL_ERR_NOMEM, "comm tcp: out of memory");
	t->fd = malloc(nfd * sizeof(*t->fd));
	t->mid = calloc(nfd, 1);
	t->wake[0] = t->wake[1] = -1;
	pthread_mutex_init(&t->lock, NULL);
	c->impl = t;
	if (!t->fd || !t->mid) {
		tcp_leave(c);
		return cal_error_set(err, CAL_ERR_NOMEM, "comm tcp: out of memory");
	}
	for (unsigned i = 0; i < nfd; i++)
		t->fd[i] = -1;
	if (pipe2(t->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
		tcp_leave(c);
		return cal_error_set(err, CAL_ERR_IO, "comm tcp: pipe: %s", strerror(errno));
	}
	struct timespec dl = cal_comm_deadline(c->timeout_ms);
	enum cal_status st = CAL_OK;
	if (c->size > 1)
		st = c->rank == 0 ? join_leader(c, t, &dl, err) : join_member(c, t, &dl, err);
	if (st < 0)
		tcp_leave(c);
	return st;
}

CAL_COMM_WORLD_OPS(cal_comm_tcp_ops, tcp);
