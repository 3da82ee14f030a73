/*
 * ranks.c — expert parallelism in the calibration engine
 * (docs/expert_parallel.md).
 *
 * A job over R ranks runs R engines, one per rank, each on its own back end
 * (a CPU back end with its share of the threads, or one CUDA device), as
 * threads of the process that opened the first one (the lead).  Ranks talk
 * only through kernels/comm.h.
 *
 *   - Experts: rank r holds experts lo[r] .. lo[r+1]-1 of every MoE layer,
 *     lo[r] = r E / R (every expert of a layer has the same shapes, so equal
 *     counts are equal bytes); staging and upload read only those.
 *   - Everything else runs data parallel: the micro-batches are laid out as
 *     for one rank, and micro-batch i runs on rank i mod R, in rounds of R.
 *     A token's attention, router, norms, dense and shared-expert math is
 *     therefore the same as on one rank.
 *   - Routing (cal_ep_experts): after the router and the stable sort by
 *     expert, each rank sends the per-expert row counts of its micro-batch
 *     to the experts' owners (alltoallv of u64), then the rows themselves
 *     (alltoallv; the rows of one owner are contiguous in the sorted
 *     order).  The owner runs its experts' observers and GEMMs on what it
 *     received, one source rank's segment at a time, in place, and returns
 *     the outputs (alltoallv).  Each GEMM group then holds exactly the rows,
 *     in the same order, that it holds in the one-rank run (the rows of one
 *     expert in one micro-batch), so its bytes are the one-rank bytes even
 *     where a GEMM's result would depend on the number of rows (cuBLAS picks
 *     its kernel by M); the sender holds its expert outputs in the sorted
 *     order of the one-rank path, and the unchanged moe_combine sums each
 *     token's k outputs in the same fixed order: the result does not
 *     depend on R.
 *   - A rank without a micro-batch in a round still serves its experts.
 *   - Observers combine exactly at the end of each layer: amax by max,
 *     non-finite counts by sum and first index by min, expert token counts
 *     by sum; expert weight amax come from their owners (max with the
 *     others' "none").
 *   - Failure: a rank that fails aborts the world (cal_comm_abort), so every
 *     other rank's collective fails at once; the run fails naming the rank
 *     whose own error it was.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/calib/calib_internal.h"

struct cal_ranks {
	unsigned n_local;
	struct cal_calib *eng[CAL_CALIB_MAX_RANKS]; /* [0]: the lead itself */
};

struct cal_ep {
	int64_t lo[CAL_CALIB_MAX_RANKS + 1]; /* expert range starts per rank */
	/* back end */
	uint16_t *xr;                        /* [cap, H] received rows, then their outputs */
	uint16_t *gu, *act;                  /* [seg_cap, 2I], [seg_cap, I] expert scratch */
	uint32_t *off;                       /* [R (El + 1)] offsets of each source's rows */
	uint64_t cap, seg_cap;
	uint64_t *dcnt;                      /* [E] counts out, [R El] counts in */
	void *scr;                           /* reductions */
	uint64_t scr_bytes;
	/* host */
	uint64_t *hcnt, *hin;                /* [E], [R El] */
	uint64_t *sb, *rb, *rsb, *rrb;       /* [R] bytes: counts out / in, rows out / in */
	uint32_t *hoff;                      /* [R (El + 1)] */
	uint64_t mark;                       /* bytes sent when the last layer was booked */
};

static void layout(struct cal_calib *c, unsigned rank, unsigned world)
{
	c->rank = rank;
	c->nranks = world;
	c->e0 = (int64_t)((uint64_t)c->E * rank / world);
	c->El = (int64_t)((uint64_t)c->E * (rank + 1) / world) - c->e0;
}

/* CALIBD_TEST_RANK_FAIL=RANK:LAYER[:stall] (tests): that rank fails when
 * the layer starts, or stops answering until the world has failed. */
static int test_fail_layer(unsigned rank, int *stall)
{
	const char *s = getenv("CALIBD_TEST_RANK_FAIL");
	unsigned r;
	int L, n = 0;
	*stall = 0;
	if (!s || sscanf(s, "%u:%d%n", &r, &L, &n) != 2 || r != rank)
		return -1;
	*stall = !strcmp(s + n, ":stall");
	return L;
}

enum cal_status cal_ranks_test_fail(struct cal_calib *c, int32_t L, struct cal_error *err)
{
	if (L != c->fail_layer)
		return CAL_OK;
	for (int i = 0; c->fail_stall && c->comm && i < 6000 && !cal_comm_failed(c->comm, NULL); i++)
		usleep(10000);
	return cal_error_set(err, CAL_ERR_DEVICE, "layer %d: injected %s (CALIBD_TEST_RANK_FAIL)",
			     L, c->fail_stall ? "stall" : "failure");
}

enum cal_status cal_ranks_open(struct cal_calib *c, const struct cal_calib_src *src,
			       struct cal_error *err)
{
	unsigned local = c->o.ranks ? c->o.ranks : 1;
	unsigned world = c->o.rank_world ? c->o.rank_world : local;
	enum cal_status st = CAL_OK;
	c->comm_bytes = calloc((size_t)c->d->num_layers + 1, sizeof(uint64_t));
	if (!c->comm_bytes)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	if (world > CAL_CALIB_MAX_RANKS || local > world || c->o.rank_first + local > world)
		return cal_error_set(err, CAL_ERR_INVALID, "ranks %u..%u of %u (at most %d)",
				     c->o.rank_first, c->o.rank_first + local - 1, world,
				     CAL_CALIB_MAX_RANKS);
	layout(c, c->o.rank_first, world);
	c->fail_layer = test_fail_layer(c->rank, &c->fail_stall);
	if (world == 1)
		return CAL_OK;
	if (c->o.on_hidden)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "hidden-state hooks (parity) run on "
				     "one rank only, not %u", world);
	if (world > local && !c->o.rendezvous)
		return cal_error_set(err, CAL_ERR_INVALID, "%u of %u ranks in this process need a "
				     "rendezvous", local, world);
	if (c->rank != 0) { /* hooks belong to global rank 0 */
		c->o.on_layer = NULL;
		c->o.progress = NULL;
	}
	c->rk = calloc(1, sizeof(*c->rk));
	if (!c->rk)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	c->rk->n_local = local;
	c->rk->eng[0] = c;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned threads = c->o.cpu_threads ? c->o.cpu_threads : (unsigned)(ncpu > 0 ? ncpu : 1);
	for (unsigned i = 1; i < local; i++) {
		struct cal_calib_opts po = c->o;
		struct cal_calib_src ps = {src->model_dir, c->ck, c->cat, NULL};
		po.on_layer = NULL;
		po.on_hidden = NULL;
		po.progress = NULL;
		po.ctx = NULL;
		po.ranks = 0;
		po.rank_first = 0;
		po.rank_world = 0;
		po.cpu_threads = threads / local ? threads / local : 1;
		po.cuda_device = c->o.cuda_devices ? c->o.cuda_devices[i] : c->o.cuda_device + (int)i;
		st = cal_calib_open_src(&ps, c->plan, &po, &c->rk->eng[i], err);
		if (st < 0)
			return cal_error_wrap(err, st, "rank %u", c->o.rank_first + i);
		layout(c->rk->eng[i], c->o.rank_first + i, world);
		c->rk->eng[i]->fail_layer = test_fail_layer(c->o.rank_first + i,
							    &c->rk->eng[i]->fail_stall);
	}
	return CAL_OK;
}

void cal_ranks_free(struct cal_calib *c)
{
	if (c->rk)
		for (unsigned i = 1; i < c->rk->n_local; i++)
			cal_calib_free(c->rk->eng[i]);
	free(c->rk);
	c->rk = NULL;
	free(c->comm_bytes);
	c->comm_bytes = NULL;
}

int cal_ranks_mine(const struct cal_calib *c, size_t i)
{
	return i % c->nranks == c->rank;
}

size_t cal_ranks_rounds(const struct cal_calib *c)
{
	return (c->n_mb + c->nranks - 1) / c->nranks;
}

enum cal_status cal_ranks_min(struct cal_calib *c, uint64_t *v, struct cal_error *err)
{
	uint64_t m = ~*v; /* the min is the max of the complement */
	void *b = NULL;
	enum cal_status st = cal_be_alloc(c, 8, &b, err);
	if (st >= 0)
		st = cal_backend_upload(c->be, b, &m, 8, err);
	if (st >= 0)
		st = cal_comm_allreduce(c->comm, b, 1, CAL_COMM_U64, CAL_COMM_MAX, err);
	if (st >= 0)
		st = cal_backend_download(c->be, &m, b, 8, err);
	cal_be_free(c, b);
	if (st >= 0)
		*v = ~m;
	return st;
}

/* ---- the run over the local ranks ------------------------------------------- */

struct rank_job {
	struct cal_calib *c;
	const struct cal_calib_tokens *tokens;
	struct cal_comm_world *world;
	const struct cal_comm_opts *co;
	enum cal_status st;
	int own;                 /* the failure started here (not an abort seen) */
	struct cal_error err;
};

static void *rank_main(void *p)
{
	struct rank_job *j = p;
	struct cal_calib *c = j->c;
	if (j->world)
		j->st = cal_comm_world_join(j->world, c->rank, c->be, &c->comm, &j->err);
	else
		j->st = cal_comm_open(j->co, c->be, &c->comm, &j->err);
	const struct cal_calib_rank_hooks *h = c->o.rank_hooks;
	if (j->st >= 0 && h && h->start)
		j->st = h->start(h->ctx, c, c->comm, &j->err);
	if (j->st >= 0)
		j->st = cal_calib_run_rank(c, j->tokens, &j->err);
	if (j->st >= 0 && h && h->end)
		j->st = h->end(h->ctx, c, c->comm, &j->err);
	if (j->st < 0 && c->comm) {
		j->own = !cal_comm_failed(c->comm, NULL);
		cal_comm_abort(c->comm, cal_error_msg(&j->err));
	} else if (j->st < 0) {
		j->own = 1;
	}
	return NULL;
}

enum cal_status cal_ranks_run(struct cal_calib *c, const struct cal_calib_tokens *tokens,
			      struct cal_error *err)
{
	unsigned local = c->rk ? c->rk->n_local : 1;
	struct rank_job jobs[CAL_CALIB_MAX_RANKS];
	pthread_t tid[CAL_CALIB_MAX_RANKS];
	int started[CAL_CALIB_MAX_RANKS] = {0};
	struct cal_comm_world *world = NULL;
	enum cal_status st = CAL_OK;
	if (!c->rk)
		return cal_calib_run_rank(c, tokens, err);
	struct cal_comm_opts co = {
		.kind = c->o.backend == CAL_BACKEND_CUDA ? CAL_COMM_NCCL
			: c->nranks > local ? CAL_COMM_TCP : CAL_COMM_THREADS,
		.nranks = c->nranks,
		.rank = c->rank,
		.local_ranks = local,
		.rendezvous = c->o.rendezvous,
		.timeout_ms = c->o.comm_timeout_ms,
	};
	if (co.kind != CAL_COMM_TCP)
		CAL_TRY(cal_comm_world_new(&co, &world, err));
	else if (local != 1)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "CPU ranks across processes run one "
				     "rank per process, not %u", local);
	for (unsigned i = 0; i < local; i++)
		jobs[i] = (struct rank_job){c->rk->eng[i], tokens, world, &co, CAL_OK, 0, {0}};
	for (unsigned i = 1; i < local; i++)
		started[i] = pthread_create(&tid[i], NULL, rank_main, &jobs[i]) == 0;
	for (unsigned i = 1; i < local; i++)
		if (!started[i]) { /* no thread: the rank cannot join; fail the world */
			jobs[i].st = cal_error_set(&jobs[i].err, CAL_ERR_NOMEM, "no thread for the rank");
			jobs[i].own = 1;
		}
	rank_main(&jobs[0]);
	for (unsigned i = 1; i < local; i++)
		if (started[i])
			pthread_join(tid[i], NULL);
	/* the rank whose own error it was (lowest first), else the lowest failed */
	int pick = -1;
	for (unsigned i = 0; i < local && pick < 0; i++)
		if (jobs[i].st < 0 && jobs[i].own)
			pick = (int)i;
	for (unsigned i = 0; i < local && pick < 0; i++)
		if (jobs[i].st < 0)
			pick = (int)i;
	if (pick >= 0)
		st = cal_error_set(err, jobs[pick].st, "rank %u: %s", c->rk->eng[pick]->rank,
				   cal_error_msg(&jobs[pick].err));
	for (unsigned i = 0; i < local; i++) {
		cal_error_clear(&jobs[i].err);
		struct cal_calib *e = c->rk->eng[i];
		cal_comm_free(e->comm);
		e->comm = NULL;
		for (int32_t L = 0; i && L <= c->d->num_layers; L++)
			c->comm_bytes[L] += e->comm_bytes[L];
	}
	cal_comm_world_free(world);
fail:
	return st;
}

/* ---- dispatch and combine ------------------------------------------------------- */

void cal_ep_free(struct cal_calib *c)
{
	struct cal_ep *p = c->ep;
	if (!p)
		return;
	void *b[] = {p->xr, p->gu, p->act, p->off, p->dcnt, p->scr};
	for (size_t i = 0; i < CAL_ARRAY_LEN(b); i++)
		cal_be_free(c, b[i]);
	CAL_FREE_ALL(p->hcnt, p->hin, p->sb, p->hoff, p);
	c->ep = NULL;
}

enum cal_status cal_ep_alloc(struct cal_calib *c, struct cal_error *err)
{
	uint64_t E = (uint64_t)c->E, El = (uint64_t)c->El, R = c->nranks;
	enum cal_status st = CAL_OK;
	struct cal_ep *p = calloc(1, sizeof(*p));
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	c->ep = p;
	for (unsigned r = 0; r <= c->nranks; r++)
		p->lo[r] = (int64_t)(E * r / R);
	/* reductions: f32 amax [n_slots + q], u64 [2 n_slots + E] */
	p->scr_bytes = 8 * (3 * c->n_slots + 3 * E + 16);
	CAL_TRY(cal_be_alloc(c, p->scr_bytes, &p->scr, err));
	p->hcnt = calloc(E + 1, 8);
	p->hin = calloc(R * El + 1, 8);
	p->sb = calloc(4 * R, 8);
	p->hoff = calloc(R * (El + 1), 4);
	if (!p->hcnt || !p->hin || !p->sb || !p->hoff) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	p->rb = p->sb + R;
	p->rsb = p->rb + R;
	p->rrb = p->rsb + R;
	if (E) {
		CAL_TRY(cal_be_alloc(c, 8 * (E + R * El), &p->dcnt, err));
		CAL_TRY(cal_be_alloc(c, 4 * R * (El + 1), &p->off, err));
	}
fail:
	return st;
}

/* Room for `rows` received rows and `seg` rows of one source (grown as
 * needed; a rank receives at most every rank's whole micro-batch). */
static enum cal_status ep_reserve(struct cal_calib *c, uint64_t rows, uint64_t seg,
				  struct cal_error *err)
{
	struct cal_ep *p = c->ep;
	uint64_t H = (uint64_t)c->H, I = (uint64_t)c->I;
	enum cal_status st = CAL_OK;
	if (rows > p->cap) {
		cal_be_free(c, p->xr);
		p->xr = NULL;
		p->cap = 0;
		CAL_TRY(cal_be_alloc(c, rows * H * 2, &p->xr, err));
		p->cap = rows;
	}
	if (seg > p->seg_cap) {
		cal_be_free(c, p->gu);
		cal_be_free(c, p->act);
		p->gu = p->act = NULL;
		p->seg_cap = 0;
		CAL_TRY(cal_be_alloc(c, seg * 2 * I * 2, &p->gu, err));
		CAL_TRY(cal_be_alloc(c, seg * I * 2, &p->act, err));
		p->seg_cap = seg;
	}
fail:
	return st;
}

enum cal_status cal_ep_experts(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			       uint64_t P, struct cal_error *err)
{
	struct cal_ep *p = c->ep;
	unsigned R = c->nranks;
	uint64_t E = (uint64_t)c->E, El = (uint64_t)c->El, H = (uint64_t)c->H, row = H * 2;
	enum cal_status st = CAL_OK;

	cal_prof(c, PH_EXPERTS);
	/* 1. per-expert counts of this micro-batch to the experts' owners */
	for (uint64_t e = 0; e < E; e++)
		p->hcnt[e] = P ? c->h_offsets[e + 1] - c->h_offsets[e] : 0;
	for (unsigned r = 0; r < R; r++) {
		p->sb[r] = (uint64_t)(p->lo[r + 1] - p->lo[r]) * 8;
		p->rb[r] = El * 8;
	}
	CAL_TRY(cal_backend_upload(c->be, p->dcnt, p->hcnt, E * 8, err));
	CAL_TRY(cal_comm_alltoallv(c->comm, p->dcnt, p->sb, p->dcnt + E, p->rb, err));
	CAL_TRY(cal_backend_download(c->be, p->hin, p->dcnt + E, R * El * 8, err));
	/* 2. the rows: those of owner r are contiguous in the sorted order; from
	 * source r come its micro-batch's rows of this rank's experts, by expert */
	uint64_t nin = 0, most = 0;
	for (unsigned r = 0; r < R; r++) {
		uint64_t n = 0;
		for (int64_t e = p->lo[r]; e < p->lo[r + 1]; e++)
			n += p->hcnt[e];
		p->rsb[r] = n * row;
		uint32_t *ho = p->hoff + (uint64_t)r * (El + 1);
		ho[0] = 0;
		for (uint64_t j = 0; j < El; j++)
			ho[j + 1] = ho[j] + (uint32_t)p->hin[r * El + j];
		p->rrb[r] = (uint64_t)ho[El] * row;
		nin += ho[El];
		most = ho[El] > most ? ho[El] : most;
	}
	CAL_TRY(ep_reserve(c, nin, most, err));
	CAL_TRY(cal_comm_alltoallv(c->comm, c->xg, p->rsb, p->xr, p->rrb, err));
	/* 3. the experts, one source's segment at a time: each GEMM group has
	 * the rows, in the order, that the one-rank run gives it (so even a
	 * GEMM whose rows are not independent, e.g. cuBLAS choosing its kernel
	 * by M, gives the one-rank bytes); outputs in place */
	if (nin)
		CAL_TRY(cal_backend_upload(c->be, p->off, p->hoff, R * (El + 1) * 4, err));
	uint64_t at = 0;
	for (unsigned r = 0; r < R; r++) {
		uint64_t n = p->rrb[r] / row;
		struct cal_experts_args ea = {p->xr + at * H, n, p->off + (uint64_t)r * (El + 1),
					      p->hoff + (uint64_t)r * (El + 1), El,
					      (uint64_t)c->e0, 0, p->gu, p->act,
					      p->xr + at * H};
		CAL_TRY(cal_layer_experts(c, L, w, &ea, err));
		at += n;
	}
	cal_prof(c, PH_EXPERTS);
	/* 4. the outputs back to their tokens' ranks, into the sorted order */
	CAL_TRY(cal_comm_alltoallv(c->comm, p->xr, p->rrb, c->yo, p->rsb, err));
fail:
	return st;
}

enum cal_status cal_ep_idle(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			    struct cal_error *err)
{
	if (c->d->layers[L].ffn != CAL_FFN_MOE || !cal_fwd_routed(c))
		return CAL_OK; /* the busy ranks leave the routed experts out too */
	return cal_ep_experts(c, L, w, 0, err);
}

/* ---- exact combination of the statistics ------------------------------------- */

enum cal_status cal_ep_reduce_obs(struct cal_calib *c, int32_t L, float *am,
				  struct cal_nonfinite *nf, struct cal_error *err)
{
	uint64_t n = c->n_slots, E = L >= 0 && c->moe[L].tokens ? (uint64_t)c->E : 0;
	enum cal_status st = CAL_OK;
	void *scr = c->ep->scr;
	uint64_t *u = malloc((n + E) * 8);
	if (!u)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	/* amax by max */
	CAL_TRY(cal_backend_upload(c->be, scr, am, n * 4, err));
	CAL_TRY(cal_comm_allreduce(c->comm, scr, n, CAL_COMM_F32, CAL_COMM_MAX, err));
	CAL_TRY(cal_backend_download(c->be, am, scr, n * 4, err));
	/* non-finite counts and expert token counts by sum */
	for (uint64_t s = 0; s < n; s++)
		u[s] = nf[s].count;
	for (uint64_t e = 0; e < E; e++)
		u[n + e] = c->moe[L].tokens[e];
	CAL_TRY(cal_backend_upload(c->be, scr, u, (n + E) * 8, err));
	CAL_TRY(cal_comm_allreduce(c->comm, scr, n + E, CAL_COMM_U64, CAL_COMM_SUM, err));
	CAL_TRY(cal_backend_download(c->be, u, scr, (n + E) * 8, err));
	for (uint64_t s = 0; s < n; s++)
		nf[s].count = u[s];
	for (uint64_t e = 0; e < E; e++)
		c->moe[L].tokens[e] = u[n + e];
	/* the first non-finite index by min: the max of its complement */
	for (uint64_t s = 0; s < n; s++)
		u[s] = ~nf[s].first;
	CAL_TRY(cal_backend_upload(c->be, scr, u, n * 8, err));
	CAL_TRY(cal_comm_allreduce(c->comm, scr, n, CAL_COMM_U64, CAL_COMM_MAX, err));
	CAL_TRY(cal_backend_download(c->be, u, scr, n * 8, err));
	for (uint64_t s = 0; s < n; s++)
		nf[s].first = ~u[s];
fail:
	free(u);
	return st;
}

enum cal_status cal_ep_sum_u64(struct cal_calib *c, uint64_t *v, uint64_t n,
			       struct cal_error *err)
{
	uint64_t cap = c->ep->scr_bytes / 8;
	for (uint64_t i = 0; i < n; i += cap) {
		uint64_t k = n - i < cap ? n - i : cap;
		enum cal_status st = cal_backend_upload(c->be, c->ep->scr, v + i, k * 8, err);
		if (st >= 0)
			st = cal_comm_allreduce(c->comm, c->ep->scr, k, CAL_COMM_U64, CAL_COMM_SUM,
						err);
		if (st >= 0)
			st = cal_backend_download(c->be, v + i, c->ep->scr, k * 8, err);
		if (st < 0)
			return st;
	}
	return CAL_OK;
}

enum cal_status cal_ep_reduce_weights(struct cal_calib *c, int32_t L, struct cal_error *err)
{
	const struct cal_plan *pl = c->plan;
	uint64_t n = 0, cap = c->ep->scr_bytes / 4;
	enum cal_status st = CAL_OK;
	float *v = NULL;
	size_t *qi = NULL;
	if (c->d->layers[L].ffn != CAL_FFN_MOE)
		return CAL_OK;
	v = malloc(cap * 4);
	qi = malloc(cap * sizeof(*qi));
	if (!v || !qi) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	/* the layer's expert weight quantizers; -1: not this rank's (amax >= 0) */
	for (size_t mi = cal_plan_next_experts(pl, L, 0); mi < pl->n_modules;
	     mi = cal_plan_next_experts(pl, L, mi + 1)) {
		const struct cal_plan_module *m = &pl->modules[mi];
		for (int64_t e = 0; e < m->count && n < cap; e++, n++) {
			qi[n] = (size_t)m->wq + (size_t)e;
			v[n] = c->q_has[qi[n]] ? c->q_amax[qi[n]] : -1.0f;
		}
	}
	CAL_TRY(cal_backend_upload(c->be, c->ep->scr, v, n * 4, err));
	CAL_TRY(cal_comm_allreduce(c->comm, c->ep->scr, n, CAL_COMM_F32, CAL_COMM_MAX, err));
	CAL_TRY(cal_backend_download(c->be, v, c->ep->scr, n * 4, err));
	for (uint64_t k = 0; k < n; k++)
		if (v[k] >= 0) {
			c->q_amax[qi[k]] = v[k];
			c->q_has[qi[k]] = 1;
		}
fail:
	free(v);
	free(qi);
	return st;
}

void cal_ep_count_layer(struct cal_calib *c, int32_t L)
{
	struct cal_comm_stats s;
	if (!c->comm)
		return;
	cal_comm_get_stats(c->comm, &s);
	c->comm_bytes[L < 0 ? c->d->num_layers : L] += s.total.bytes_sent - c->ep->mark;
	c->ep->mark = s.total.bytes_sent;
}

unsigned cal_calib_rank(const struct cal_calib *c, unsigned *ret_world)
{
	if (ret_world)
		*ret_world = c->nranks;
	return c->rank;
}

json_t *cal_calib_ranks_json(const struct cal_calib *c)
{
	struct cal_calib_perf pf;
	if (c->nranks <= 1)
		return NULL;
	cal_calib_perf(c, &pf);
	json_t *per = json_array();
	for (int32_t L = 0; per && L < pf.n_layers; L++)
		json_array_append_new(per, json_integer((json_int_t)pf.comm_layer_bytes[L]));
	return json_pack("{s:i, s:I, s:o, s:I}", "ranks", (int)pf.ranks, "comm_bytes",
			 (json_int_t)pf.comm_bytes, "comm_bytes_per_layer", per ? per : json_null(),
			 "comm_bytes_final_norm", (json_int_t)pf.comm_layer_bytes[pf.n_layers]);
}
