/*
 * pipeline.c — the export stage of the job (docs/export.md, "Pipeline").
 *
 * Three threads take part:
 *   the caller (the calibration engine's on_layer, or cal_export_run) turns
 *     the statistics of layer L into input and KV scales, then queues L and
 *     goes back to calibrating layer L+1; it waits only when XQUEUE - 1
 *     layers already wait behind the one being quantized (a queued layer
 *     costs no memory: its weights are read when its turn comes);
 *   the quantize thread gathers the layer's source weights (reading the
 *     source, on up to 8 helper threads) into two pinned staging buffers,
 *     uploads each block asynchronously while the next is gathered,
 *     takes every weight amax, quantizes every linear of the layer (all
 *     experts; over several ranks, this rank's share) and computes the
 *     SQNR sums on the back end, and downloads only the output bytes into a ring of pinned slots;
 *   the writer thread turns full slots into safetensors through the
 *     crash-safe writer (engine/st), in the order they were filled.
 * The model-level tensors that need no statistics (copies such as the
 * embedding, unquantized lm_head) are the first job of the quantize thread
 * (CAL_XSTATIC), so their read and write overlap the calibration too; the
 * quantized model-level linears (layer -1) run the same stage on the
 * caller's thread in cal_exporter_finish(), after the threads were joined.
 *
 * Host memory is bounded by 2 staging buffers (max(64 MiB, the largest
 * quantized source weight) each) plus XSLOTS ring slots (max(64 MiB, the
 * largest output item) each); back-end memory by one layer's quantized
 * weights, their outputs and SQNR sums, and one weight's scratch.
 *
 * Errors: the first error of any thread is kept (pipe.st / pipe.err) and
 * every wait also wakes on it, so neither stage can block on a dead one;
 * the caller sees it at its next cal_exporter_layer() or at finish, and the
 * writer's errors name the shard file.  free() stops and joins the threads
 * before the writer removes the temporary directory.
 *
 * Fault injection for tests: CALIBD_TEST_EXPORT_FAIL_LAYER=L makes the
 * quantize stage fail at layer L, =L:R only rank R's (expert parallelism;
 * L alone is rank 0's) (engine/st has CALIBD_TEST_WRITE_LIMIT for the
 * writer).
 *
 * Over several ranks (parts.c) each rank's pipeline takes only what its
 * rank quantizes and writes (cal_export_mine): a part's, its routed
 * experts; the leader's, everything else.  The SQNR sums of each linear are
 * kept (pipe.sq) and the report's entries made at finish in one fixed
 * order (cal_export_pipe_report), wherever the linear was quantized.
 */
#include "export_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/parse.h"
#include "common/util.h"
#include "kernels/ops.h"

#define STAGE_MIN (64ull << 20)
#define SLOT_MIN (64ull << 20)

enum { SLOT_FREE, SLOT_FILLING, SLOT_FULL };

static enum cal_status nomem(struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
}

/* ---- first error wins -------------------------------------------------------- */

/* Records st/err as the pipeline's error unless one is already kept; wakes
 * every waiter.  Takes the lock. */
static void pipe_fail(struct xpipe *p, enum cal_status st, struct cal_error *err)
{
	pthread_mutex_lock(&p->mu);
	if (p->st >= 0) {
		p->st = st;
		p->err.code = st;
		p->err.msg = err->msg;
		err->msg = NULL;
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	cal_error_clear(err);
}

/* The kept error, copied into err (caller holds no lock). */
static enum cal_status pipe_error(struct xpipe *p, struct cal_error *err)
{
	pthread_mutex_lock(&p->mu);
	enum cal_status st = p->st;
	char *m = p->err.msg ? strdup(p->err.msg) : NULL;
	pthread_mutex_unlock(&p->mu);
	if (st >= 0) {
		free(m);
		return CAL_OK;
	}
	cal_error_set(err, st, "%s", m ? m : "export pipeline failed");
	free(m);
	return st;
}

/* ---- the ring ------------------------------------------------------------------ */

/* Writes every item of slot s (writer thread, or the caller when no writer
 * thread runs). */
static enum cal_status write_slot(struct cal_exporter *ex, struct xslot *s,
				  struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	for (size_t i = 0; i < s->n_items; i++) {
		const struct xitem *it = &s->items[i];
		CAL_TRY_RET(cal_st_writer_put(ex->w, it->name, it->data, it->n, err));
		__atomic_add_fetch(&p->written, it->n, __ATOMIC_RELAXED);
	}
	return CAL_OK;
}

static void slot_clear(struct xslot *s)
{
	for (size_t i = 0; i < s->n_items; i++)
		CAL_FREE_ALL(s->items[i].name, s->items[i].owned);
	s->n_items = 0;
	s->used = 0;
}

/* Hands the slot being filled to the writer (or writes it at once). */
static enum cal_status slot_submit(struct cal_exporter *ex, struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	if (p->fill < 0)
		return CAL_OK;
	struct xslot *s = &p->slot[p->fill];
	p->fill = -1;
	if (!p->w_started) {
		double t0 = cal_now();
		enum cal_status st = write_slot(ex, s, err);
		p->t_write += cal_now() - t0;
		slot_clear(s);
		s->state = SLOT_FREE;
		return st;
	}
	pthread_mutex_lock(&p->mu);
	s->state = SLOT_FULL;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return CAL_OK;
}

/* Room for n bytes in the slot being filled (a new one when it is full);
 * *ret points into it.  n <= slot_bytes by construction. */
static enum cal_status slot_reserve(struct cal_exporter *ex, uint64_t n, void **ret,
				    struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	if (p->fill >= 0 && p->slot[p->fill].used + n > p->slot_bytes)
		CAL_TRY_RET(slot_submit(ex, err));
	if (p->fill < 0) {
		unsigned k = p->next_fill;
		struct xslot *s = &p->slot[k];
		pthread_mutex_lock(&p->mu);
		while (s->state != SLOT_FREE && p->st >= 0 && !p->abort)
			pthread_cond_wait(&p->cv, &p->mu);
		int dead = p->st < 0 || p->abort;
		if (!dead)
			s->state = SLOT_FILLING;
		pthread_mutex_unlock(&p->mu);
		if (dead)
			return pipe_error(p, err) < 0 ? err->code :
			       cal_error_set(err, CAL_ERR_INTERRUPTED, "export: stopped");
		if (!s->buf)
			CAL_TRY_RET(cal_backend_host_alloc(p->be, p->slot_bytes, (void **)&s->buf,
							   err));
		p->fill = (int)k;
		p->next_fill = (k + 1) % XSLOTS;
	}
	struct xslot *s = &p->slot[p->fill];
	*ret = s->buf + s->used;
	s->used += (n + 7) & ~7ull;
	if (s->used > p->slot_bytes)
		s->used = p->slot_bytes;
	return CAL_OK;
}

/* Adds tensor "name.suffix" (suffix NULL: "name"; data: in the slot, the
 * source mapping, or `owned`, a malloc'd buffer the item frees once written,
 * also on failure here) to the slot being filled. */
static enum cal_status slot_item(struct cal_exporter *ex, const char *name, const char *suffix,
				 const void *data, uint64_t n, void *owned, struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	enum cal_status st = CAL_OK;
	char *full = NULL;
	if (p->fill < 0) {
		void *dummy;
		if ((st = slot_reserve(ex, 0, &dummy, err)) < 0)
			goto fail;
	}
	struct xslot *s = &p->slot[p->fill];
	if (s->n_items == s->cap_items) {
		size_t nc = s->cap_items ? s->cap_items * 2 : 256;
		struct xitem *ni = realloc(s->items, nc * sizeof(*ni));
		if (!ni) {
			st = nomem(err);
			goto fail;
		}
		s->items = ni;
		s->cap_items = nc;
	}
	if ((suffix ? asprintf(&full, "%s.%s", name, suffix) : asprintf(&full, "%s", name)) < 0) {
		st = nomem(err);
		goto fail;
	}
	s->items[s->n_items++] = (struct xitem){full, data, n, owned};
	return CAL_OK;
fail:
	free(owned);
	return st;
}

/* A small value copied into the slot. */
/* A copy of n bytes at src in the slot, as tensor name.suffix. */
static enum cal_status slot_copy(struct cal_exporter *ex, const char *name, const char *suffix,
				 const void *src, uint64_t n, struct cal_error *err)
{
	void *d;
	CAL_TRY_RET(slot_reserve(ex, n, &d, err));
	memcpy(d, src, n);
	return slot_item(ex, name, suffix, d, n, NULL, err);
}

static enum cal_status slot_scalar(struct cal_exporter *ex, const char *name, const char *suffix,
				   float v, struct cal_error *err)
{
	return slot_copy(ex, name, suffix, &v, 4, err);
}

/* Tensor `suffix` of x (data in the slot or the source).  gpt_oss BMM
 * experts (docs/gpt_oss.md): named "<name>" / "<name>_<suffix>", and the
 * weight and block scales [E * rows, cols] go out as modelopt writes them,
 * [E, cols, rows], from a transposed copy the item owns. */
static enum cal_status lin_item(struct cal_exporter *ex, const struct xlin *x, const char *suffix,
				const void *data, uint64_t n, struct cal_error *err)
{
	if (!x->bmm)
		return slot_item(ex, x->name, suffix, data, n, NULL, err);
	int matrix = !strcmp(suffix, "weight") ||
		     (!strcmp(suffix, "weight_scale") && cal_qfmt(x->fmt)->block);
	char *full = cal_export_bmm_name(x, suffix);
	/* the item owns a copy: the caller's buffer is freed before the write */
	unsigned char *t = malloc(n ? n : 1);
	if (!full || !t) {
		free(full);
		free(t);
		return nomem(err);
	}
	if (matrix) {
		uint64_t R = (uint64_t)x->bmm_rows, E = (uint64_t)x->out / R;
		uint64_t es = x->fmt == CAL_QFMT_NONE ? 2 : 1, cols = n / ((uint64_t)x->out * es);
		cal_export_bmm_transpose(t, data, E, R, cols, es);
	} else {
		memcpy(t, data, n);
	}
	enum cal_status st = slot_item(ex, full, NULL, t, n, t, err);
	free(full);
	return st;
}

static enum cal_status lin_scalar(struct cal_exporter *ex, const struct xlin *x,
				  const char *suffix, float v, struct cal_error *err)
{
	void *d;
	CAL_TRY_RET(slot_reserve(ex, 4, &d, err));
	memcpy(d, &v, 4);
	return lin_item(ex, x, suffix, d, 4, err);
}

/* ---- source ------------------------------------------------------------------- */

/* Copies x's weight [out, in] (source dtype) into dst. */
static void gather(const struct cal_exporter *ex, const struct xlin *x, void *dst)
{
	size_t es = cal_dtype_size(x->dtype);
	if (x->si) { /* FP8 block source (DeepSeek), checked when planned */
		(void)cal_fp8_block_decode(ex->d, x->expert < 0 ? x->w : x->sl.t, x->si, dst, NULL);
		return;
	}
	if (x->bmm) {
		uint64_t R = (uint64_t)x->bmm_rows;
		cal_export_bmm_source(&x->sl, (uint64_t)x->out / R, R, (uint64_t)x->in, dst);
		return;
	}
	if (x->expert < 0) {
		memcpy(dst, x->w->data, (size_t)(x->out * x->in) * es);
		return;
	}
	const unsigned char *src = x->sl.t->data;
	unsigned char *o8 = dst;
	for (int64_t o = 0; o < x->out; o++) {
		if (x->sl.istride == 1) {
			memcpy(o8 + (size_t)(o * x->in) * es,
			       src + cal_expert_slice_index(&x->sl, o, 0) * es, (size_t)x->in * es);
			continue;
		}
		for (int64_t i = 0; i < x->in; i++)
			memcpy(o8 + (size_t)(o * x->in + i) * es,
			       src + cal_expert_slice_index(&x->sl, o, i) * es, es);
	}
}

enum cal_status cal_export_check_scale(const char *name, const char *what, float v,
				       struct cal_error *err)
{
	if (!isfinite(v) || v <= 0.0f)
		return cal_error_set(err, CAL_ERR_NUMERIC, "%s.%s would be %g (must be finite and "
				     "> 0)", name, what, (double)v);
	return CAL_OK;
}

/* Whether x is a quantized linear of layer L that this exporter quantizes
 * (all of them on one rank; parts.c). */
static int takes_q(const struct cal_exporter *ex, const struct xlin *x, int32_t L)
{
	return x->layer == L && x->fmt != CAL_QFMT_NONE && cal_export_mine(ex, x);
}

/* The index of the first linear from i on that layer L quantizes, or
 * ex->n_lin: the loops over a layer's quantized linears step with it. */
static size_t next_q(const struct cal_exporter *ex, int32_t L, size_t i)
{
	while (i < ex->n_lin && !takes_q(ex, &ex->lin[i], L))
		i++;
	return i;
}

/* ---- back-end scratch ----------------------------------------------------------- */

enum { D_W, D_OUT, D_AMAX, D_NF, D_SUMS, D_Y, D_BA, D_NF1, D_GW, D_COUNT };

static enum cal_status dneed(struct cal_exporter *ex, int k, size_t n, void **ret,
			     struct cal_error *err)
{
	if (n == 0)
		n = 1;
	if (n > ex->dcap[k]) {
		cal_backend_dealloc(ex->pipe.be, ex->dbuf[k]);
		ex->dbuf[k] = NULL;
		ex->dcap[k] = 0;
		CAL_TRY_RET(cal_backend_alloc(ex->pipe.be, n, &ex->dbuf[k], err));
		ex->dcap[k] = n;
	}
	*ret = ex->dbuf[k];
	return CAL_OK;
}

static void *hneed(struct cal_exporter *ex, int k, size_t n)
{
	if (n > ex->hcap[k]) {
		void *p = realloc(ex->hbuf[k], n);
		if (!p)
			return NULL;
		ex->hbuf[k] = p;
		ex->hcap[k] = n;
	}
	return ex->hbuf[k];
}

/* Rows x is quantized as: its output rows, except per-channel formats on
 * GPT-OSS's BMM experts, whose scale is one per expert (modelopt's axis 0
 * of [E, in, out]): one row of R * in per expert. */
static uint64_t q_rows(const struct xlin *x, const struct cal_qfmt_info *f)
{
	return f && f->per_channel && x->bmm ? (uint64_t)(x->out / x->bmm_rows) : (uint64_t)x->out;
}

/* Output bytes of a quantized x: packed values and block scales. */
static void out_sizes(const struct xlin *x, uint64_t *q, uint64_t *s)
{
	const struct cal_qfmt_info *f = cal_qfmt(x->fmt);
	uint64_t n = (uint64_t)x->out * (uint64_t)x->in, o = q_rows(x, f);
	*q = f ? cal_qfmt_packed_bytes(f, o, n / o) : 0;
	*s = f ? cal_qfmt_scale_bytes(f, o, n / o, f->block) : 0;
}

/* Quantizes x (weight at dw) into dq/ds, dequantizes into dy and adds the
 * SQNR sums at dsum; sets *scale (the format's tensor scale, e.g.
 * weight_scale_2 / FP8 weight_scale). */
static enum cal_status quantize_one(struct cal_exporter *ex, struct xlin *x, const void *dw,
				    void *dq, void *ds, double *dsum, float *ret_scale,
				    struct cal_error *err)
{
	struct cal_backend *be = ex->pipe.be;
	const struct cal_qfmt_info *f = cal_qfmt(x->fmt);
	uint64_t n = (uint64_t)x->out * (uint64_t)x->in, o = q_rows(x, f), i = n / o;
	void *dy = NULL, *dba = NULL, *dnf = NULL;
	if (!f)
		return cal_error_set(err, CAL_ERR_INTERNAL, "%s: not quantized", x->name);
	CAL_TRY_RET(dneed(ex, D_Y, n * 4, &dy, err));
	struct cal_qfmt_io io = {dw, o, i, f->block, x->wamax, 0.0f, ex->opts.div,
				 f->mse && ex->mse_sweep, x->bmm, NULL, NULL, dq, ds, NULL, 0};
	if (x->gw) { /* the weight the calibration algorithm changed */
		void *dg = NULL;
		CAL_TRY_RET(dneed(ex, D_GW, n * 2, &dg, err));
		CAL_TRY_RET(cal_backend_upload(be, dg, x->gw, n * 2, err));
		if (ex->plan->recipe->algo.method == CAL_CALIB_GPTQ)
			io.qw = dg; /* GPTQ: on the grid of the source's scales (docs/gptq.md) */
		else
			io.w = dw = dg; /* AWQ: the folded weight, its own scales (docs/awq.md) */
	}
	if (f->tensor_scale_of) {
		io.scale = f->tensor_scale_of(x->wamax, ex->opts.div);
		CAL_TRY_RET(cal_export_check_scale(x->name, f->tensor_scale, io.scale, err));
	}
	if (f->block_amax) {
		CAL_TRY_RET(dneed(ex, D_BA, n / f->block * 4, &dba, err));
		if (!io.mse)
			CAL_TRY_RET(dneed(ex, D_NF1, sizeof(struct cal_nonfinite), &dnf, err));
		io.block_amax = dba;
		io.nonfinite = dnf;
		if (x->bamax && x->gw && x->fmt == CAL_QFMT_INT4_BLOCK) {
			/* awq_full / awq_clip: the clipped block amax (docs/awq.md) */
			CAL_TRY_RET(cal_backend_upload(be, dba, x->bamax, n / f->block * 4, err));
			io.block_amax_set = 1;
		}
	}
	CAL_TRY_RET(f->quantize(be, &io, err));
	CAL_TRY_RET(f->dequantize(be, dq, ds, o, i, f->block, io.scale, CAL_DTYPE_F32, dy, err));
	struct cal_sqnr_rows_args sq = {dw, dy, (uint64_t)x->out, (uint64_t)x->in, dsum};
	CAL_TRY_RET(cal_op_sqnr_rows(be, &sq, err));
	*ret_scale = io.scale;
	return CAL_OK;
}

/* x's SQNR sums (signal, noise) from its per-row sums, in row order, kept
 * for the report (cal_export_pipe_report). */
static void keep_sums(struct cal_exporter *ex, const struct xlin *x, const double *sums)
{
	double sig = 0.0, noise = 0.0;
	for (int64_t r = 0; r < x->out; r++) {
		sig += sums[2 * r];
		noise += sums[2 * r + 1];
	}
	size_t i = (size_t)(x - ex->lin);
	ex->pipe.sq[2 * i] = sig;
	ex->pipe.sq[2 * i + 1] = noise;
}

static enum cal_status report_weight(struct cal_exporter *ex, const struct xlin *x, double sig,
				     double noise, struct cal_error *err)
{
	int inf = noise == 0.0 || sig == 0.0;
	double db = inf ? 0.0 : 10.0 * log10(sig / noise);
	json_t *wr = json_pack("{s:s, s:i, s:s, s:f}", "name", x->name, "layer", (int)x->layer,
			       "format", cal_qfmt_name(x->fmt), "amax", (double)x->wamax);
	if (!wr)
		return nomem(err);
	json_object_set_new(wr, "sqnr_db", inf ? json_null() : json_real(db));
	json_array_append_new(ex->weights, wr);
	if (!inf) {
		ex->sqnr_min = db < ex->sqnr_min ? db : ex->sqnr_min;
		ex->sqnr_sum += db;
		ex->sqnr_n++;
	}
	return CAL_OK;
}

/* ---- one layer ------------------------------------------------------------------- */

static enum cal_status write_bias(struct cal_exporter *ex, const struct xlin *x,
				  struct cal_error *err)
{
	const struct cal_st_tensor *b = x->sl.bias;
	size_t es = cal_dtype_size(b->dtype);
	unsigned char *h;
	CAL_TRY_RET(slot_reserve(ex, (uint64_t)x->out * es, (void **)&h, err));
	const unsigned char *src = b->data;
	for (int64_t o = 0; o < x->out; o++) {
		uint64_t idx = (uint64_t)x->sl.expert_index * (uint64_t)b->shape[1] +
			       (uint64_t)(x->sl.out_start + o * x->sl.out_stride);
		memcpy(h + (size_t)o * es, src + idx * es, es);
	}
	return slot_item(ex, x->name, "bias", h, (uint64_t)x->out * es, NULL, err);
}

/* One staging block: the quantized linears [first, last) of ex->lin. */
struct gather_job {
	const struct cal_exporter *ex;
	size_t *idx;                    /* indices into ex->lin */
	unsigned char *dst;             /* staging block */
	uint64_t base;                  /* woff of the block's first linear */
};

static void gather_range(void *ctx, uint64_t begin, uint64_t end, unsigned slot)
{
	const struct gather_job *g = ctx;
	(void)slot;
	for (uint64_t k = begin; k < end; k++) {
		const struct xlin *x = &g->ex->lin[g->idx[k]];
		gather(g->ex, x, g->dst + (x->woff - g->base));
	}
}

/* Uploads every quantized weight of layer L to dW (at x->woff). */
static enum cal_status upload_layer(struct cal_exporter *ex, int32_t L, unsigned char *dW,
				    struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	struct cal_backend *be = ex->pipe.be;
	size_t *idx = hneed(ex, 3, ex->n_lin * sizeof(size_t));
	if (!idx)
		return nomem(err);
	unsigned turn = 0;
	size_t i = 0;
	while (i < ex->n_lin) {
		size_t n = 0;
		uint64_t base = 0, end = 0;
		for (i = next_q(ex, L, i); i < ex->n_lin; i = next_q(ex, L, i + 1)) {
			const struct xlin *x = &ex->lin[i];
			uint64_t e = x->woff + (uint64_t)x->out * (uint64_t)x->in * 2;
			if (n && e - base > p->stage_bytes)
				break;
			if (!n)
				base = x->woff;
			idx[n++] = i;
			end = e;
		}
		if (!n)
			break;
		CAL_TRY_RET(cal_backend_upload_mark_sync(be, turn, err));
		struct gather_job g = {ex, idx, p->stage[turn], base};
		CAL_TRY_RET(cal_cpu_parallel(p->cpu, n, 1, gather_range, &g, err));
		CAL_TRY_RET(cal_backend_upload_async(be, dW + base, p->stage[turn], end - base, err));
		CAL_TRY_RET(cal_backend_upload_mark(be, turn, err));
		turn ^= 1;
	}
	return CAL_OK;
}

/* Places every quantized x of layer L in the layer buffers (offsets in
 * x->woff / x->ooff / x->soff); returns the totals. */
static size_t layout(struct cal_exporter *ex, int32_t L, uint64_t *w, uint64_t *o,
		     uint64_t *sums)
{
	size_t nq = 0;
	*w = *o = *sums = 0;
	for (size_t i = next_q(ex, L, 0); i < ex->n_lin; i = next_q(ex, L, i + 1)) {
		struct xlin *x = &ex->lin[i];
		uint64_t q, s;
		out_sizes(x, &q, &s);
		x->qidx = nq++;
		x->woff = *w;
		x->ooff = *o;
		x->soff = *sums;
		*w += ((uint64_t)x->out * (uint64_t)x->in * 2 + 255) & ~255ull;
		*o += (q + s + 255) & ~255ull;
		*sums += (uint64_t)x->out * 2;
	}
	return nq;
}

enum cal_status cal_export_stage_layer(struct cal_exporter *ex, int32_t L,
				       struct cal_error *err)
{
	struct cal_backend *be = ex->pipe.be;
	struct xpipe *p = &ex->pipe;
	uint64_t wbytes, obytes, nsums;
	unsigned char *dW = NULL, *dO = NULL;
	float *dA = NULL;
	struct cal_nonfinite *dNF = NULL;
	double *dS = NULL;
	if (p->fail_layer && p->fail_layer == L + 2)
		return cal_error_set(err, CAL_ERR_DEVICE, "injected quantize fault "
				     "(CALIBD_TEST_EXPORT_FAIL_LAYER)"); /* the caller names L */
	size_t nq = layout(ex, L, &wbytes, &obytes, &nsums);
	if (nq) {
		CAL_TRY_RET(dneed(ex, D_W, wbytes, (void **)&dW, err));
		CAL_TRY_RET(dneed(ex, D_OUT, obytes, (void **)&dO, err));
		CAL_TRY_RET(dneed(ex, D_AMAX, nq * 4, (void **)&dA, err));
		CAL_TRY_RET(dneed(ex, D_NF, nq * sizeof(struct cal_nonfinite), (void **)&dNF, err));
		CAL_TRY_RET(dneed(ex, D_SUMS, nsums * 8, (void **)&dS, err));
		/* the layer's weights: gathered (reading the source) by several
		 * threads into two staging buffers in turn, each uploaded as one
		 * block while the next one is gathered */
		CAL_TRY_RET(upload_layer(ex, L, dW, err));
		CAL_TRY_RET(cal_backend_upload_wait(be, err));
		/* every weight amax (exact, non-finite elements are an error) */
		struct cal_nonfinite *hnf = hneed(ex, 0, nq * sizeof(*hnf));
		float *ha = hneed(ex, 1, nq * 4);
		if (!hnf || !ha)
			return nomem(err);
		for (size_t k = 0; k < nq; k++)
			hnf[k] = (struct cal_nonfinite){0, CAL_NONFINITE_NONE};
		CAL_TRY_RET(cal_backend_upload(be, dNF, hnf, nq * sizeof(*hnf), err));
		CAL_TRY_RET(cal_backend_memset(be, dA, 0, nq * 4, err));
		for (size_t i = next_q(ex, L, 0); i < ex->n_lin; i = next_q(ex, L, i + 1)) {
			struct xlin *x = &ex->lin[i];
			struct cal_amax_args a = {CAL_DTYPE_BF16, dW + x->woff,
						  (uint64_t)x->out * (uint64_t)x->in, 0,
						  dA + x->qidx, dNF + x->qidx};
			CAL_TRY_RET(cal_op_amax(be, &a, err));
		}
		CAL_TRY_RET(cal_backend_download(be, ha, dA, nq * 4, err));
		CAL_TRY_RET(cal_backend_download(be, hnf, dNF, nq * sizeof(*hnf), err));
		for (size_t i = next_q(ex, L, 0); i < ex->n_lin; i = next_q(ex, L, i + 1)) {
			struct xlin *x = &ex->lin[i];
			if (hnf[x->qidx].count)
				return cal_error_set(err, CAL_ERR_NUMERIC, "%s.weight: element %llu is "
						     "not finite", x->name,
						     (unsigned long long)hnf[x->qidx].first);
			x->wamax = ha[x->qidx];
			if (x->gw && x->bamax && x->fmt == CAL_QFMT_NVFP4) {
				x->wamax = x->bamax[0]; /* NVFP4 awq_clip: the clipped amax */
			} else if (x->gw && ex->plan->recipe->algo.method != CAL_CALIB_GPTQ) {
				/* AWQ: the weight amax re-taken from the folded weight */
				float m = 0.0f;
				for (uint64_t k = 0; k < (uint64_t)x->out * (uint64_t)x->in; k++) {
					float a = fabsf(cal_bf16_to_f32(x->gw[k]));
					m = a > m ? a : m;
				}
				x->wamax = m;
			}
		}
		/* fused-experts semantics: gate and up of an expert share one quantizer */
		for (size_t i = 0; i + 1 < ex->n_lin; i++) {
			struct xlin *g = &ex->lin[i], *u = &ex->lin[i + 1];
			if (g->layer == L && g->expert >= 0 && g->proj == CAL_PROJ_GATE &&
			    u->expert == g->expert && u->proj == CAL_PROJ_UP &&
			    g->fmt != CAL_QFMT_NONE && cal_export_mine(ex, g)) {
				float m = g->wamax > u->wamax ? g->wamax : u->wamax;
				g->wamax = u->wamax = m;
			}
		}
		cal_export_unify_groups(ex, L);
		/* quantize, dequantize and the SQNR sums: all queued, one sync */
		for (size_t i = next_q(ex, L, 0); i < ex->n_lin; i = next_q(ex, L, i + 1)) {
			struct xlin *x = &ex->lin[i];
			uint64_t q, s;
			out_sizes(x, &q, &s);
			CAL_TRY_RET(quantize_one(ex, x, dW + x->woff, dO + x->ooff,
						 s ? dO + x->ooff + q : NULL, dS + x->soff, &x->scale,
						 err));
		}
		double *hs = hneed(ex, 2, nsums * 8);
		if (!hs)
			return nomem(err);
		CAL_TRY_RET(cal_backend_download(be, hs, dS, nsums * 8, err));
		for (size_t i = 0; i < ex->n_lin; i++) {
			struct xlin *x = &ex->lin[i];
			if (takes_q(ex, x, L))
				keep_sums(ex, x, hs + x->soff);
			if (x->layer == L) { /* GPTQ's updated weight, used */
				CAL_FREE_ALL(x->gw, x->bamax);
				x->gw = NULL;
				x->bamax = NULL;
			}
		}
		p->n_quantized += nq;
	}
	/* the output bytes, into the ring */
	for (size_t i = 0; i < ex->n_lin; i++) {
		struct xlin *x = &ex->lin[i];
		if (L >= 0 ? x->layer != L :
		    x->layer != -1 || (L == CAL_XSTATIC) != (x->fmt == CAL_QFMT_NONE))
			continue;
		if (!cal_export_mine(ex, x))
			continue;
		size_t es = cal_dtype_size(x->dtype);
		uint64_t wn = (uint64_t)x->out * (uint64_t)x->in * es;
		if (x->fmt == CAL_QFMT_NONE) {
			if (x->expert < 0 && !x->bmm && !x->si) {
				CAL_TRY_RET(slot_item(ex, x->name, "weight", x->w->data, wn, NULL, err));
			} else if (x->bmm) { /* gathered outside the ring (large) */
				void *h = malloc(wn ? wn : 1);
				if (!h)
					return nomem(err);
				gather(ex, x, h);
				enum cal_status st = lin_item(ex, x, "weight", h, wn, err);
				free(h);
				CAL_TRY_RET(st);
			} else {
				void *h;
				CAL_TRY_RET(slot_reserve(ex, wn, &h, err));
				gather(ex, x, h);
				CAL_TRY_RET(slot_item(ex, x->name, "weight", h, wn, NULL, err));
			}
		} else {
			uint64_t q, s;
			unsigned char *h, *tmp = NULL;
			out_sizes(x, &q, &s);
			if (x->bmm) { /* transposed into copies: downloaded outside the ring */
				if (!(tmp = h = malloc(q + s)))
					return nomem(err);
			} else {
				CAL_TRY_RET(slot_reserve(ex, q + s, (void **)&h, err));
			}
			enum cal_status st = cal_backend_download(be, h, dO + x->ooff, q + s, err);
			if (st >= 0)
				st = lin_item(ex, x, "weight", h, q, err);
			if (st >= 0 && s)
				st = lin_item(ex, x, "weight_scale", h + q, s, err);
			const struct cal_qfmt_info *f = cal_qfmt(x->fmt);
			if (st >= 0 && f->block && f->scale_dtype == CAL_DTYPE_F8_E4M3) {
				const unsigned char *hs = h + q;
				for (uint64_t k = 0; k < s && st >= 0; k++)
					if ((hs[k] & 0x7f) == 0x7f || (hs[k] & 0x7f) == 0)
						st = cal_error_set(err, CAL_ERR_NUMERIC, "%s.weight_scale: "
								   "block %llu scale byte 0x%02x is %s",
								   x->name, (unsigned long long)k, hs[k],
								   (hs[k] & 0x7f) ? "NaN" : "zero");
			}
			if (st >= 0 && f->tensor_scale)
				st = lin_scalar(ex, x, f->tensor_scale, x->scale, err);
			if (st >= 0 && x->has_input_scale)
				st = lin_scalar(ex, x, "input_scale", x->iscale, err);
			if (st >= 0 && x->awq_pqs)
				st = x->pqs ? lin_item(ex, x, "pre_quant_scale", x->pqs, x->in * 2, err)
					    : cal_error_set(err, CAL_ERR_INTERNAL, "%s: no "
							    "pre_quant_scale was set", x->name);
			free(tmp);
			CAL_TRY_RET(st);
		}
		if (x->expert >= 0 && x->sl.bias)
			CAL_TRY_RET(write_bias(ex, x, err));
	}
	for (size_t i = 0; ex->xp.rank == 0 && i < ex->n_kv; i++) {
		const struct xkv *k = &ex->kv[i];
		if (k->layer != L)
			continue;
		if (k->k)
			CAL_TRY_RET(slot_scalar(ex, k->attn, "k_proj.k_scale", k->kscale, err));
		if (k->v)
			CAL_TRY_RET(slot_scalar(ex, k->attn, "v_proj.v_scale", k->vscale, err));
		for (int v = 0; v < 2; v++)
			if (k->bias[v])
				CAL_TRY_RET(slot_copy(ex, k->attn, v ? "v_proj.v_bias" : "k_proj.k_bias",
						      k->bias[v], (uint64_t)cal_model_kv_dims(ex->d, v,
						      NULL, NULL) * 2, err));
	}
	for (size_t i = 0; ex->xp.rank == 0 && i < ex->n_cp; i++) {
		const struct xcopy *c = &ex->cp[i];
		if (!(L >= 0 ? c->layer == L : L == CAL_XSTATIC && c->layer == -1))
			continue;
		if (c->to_f32) { /* widened to F32 (DeepSeek's router weight, as modelopt) */
			float *f;
			CAL_TRY_RET(slot_reserve(ex, c->t->numel * 4, (void **)&f, err));
			const uint16_t *h = c->t->data;
			for (uint64_t k = 0; k < c->t->numel; k++)
				f[k] = c->t->dtype == CAL_DTYPE_BF16 ? cal_bf16_to_f32(h[k])
								     : cal_f16_to_f32(h[k]);
			CAL_TRY_RET(slot_item(ex, c->name, NULL, f, c->t->numel * 4, NULL, err));
			continue;
		}
		if (!c->to_bf16 || c->data) { /* c->data: bf16 (a fused AWQ norm) */
			CAL_TRY_RET(slot_item(ex, c->name, NULL, c->data ? (const void *)c->data
									 : c->t->data,
					      c->data ? c->t->numel * 2 : c->t->nbytes, NULL, err));
			continue;
		}
		/* F32 written as bf16 (gpt_oss norms, as modelopt saves them) */
		uint16_t *b;
		CAL_TRY_RET(slot_reserve(ex, c->t->numel * 2, (void **)&b, err));
		for (uint64_t k = 0; k < c->t->numel; k++) {
			float v;
			memcpy(&v, (const char *)c->t->data + k * 4, 4);
			b[k] = cal_f32_to_bf16(v);
		}
		CAL_TRY_RET(slot_item(ex, c->name, NULL, b, c->t->numel * 2, NULL, err));
	}
	return slot_submit(ex, err);
}

/* ---- threads ---------------------------------------------------------------------- */

static void *quantize_main(void *arg)
{
	struct cal_exporter *ex = arg;
	struct xpipe *p = &ex->pipe;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (!p->q_n && !p->closing && !p->abort && p->st >= 0)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->abort || p->st < 0 || !p->q_n) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		int32_t L = p->queue[p->q_head];
		pthread_mutex_unlock(&p->mu);
		struct cal_error err = {0};
		double t0 = cal_now();
		enum cal_status st = cal_export_stage_layer(ex, L, &err);
		p->t_quant += cal_now() - t0;
		if (st < 0) {
			if (L >= 0)
				cal_error_wrap(&err, st, "export of layer %d", (int)L);
			else
				cal_error_wrap(&err, st, "export of the model-level tensors");
			pipe_fail(p, st, &err);
			break;
		}
		pthread_mutex_lock(&p->mu);
		p->q_head = (p->q_head + 1) % XQUEUE;
		p->q_n--;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	/* no more slots will come: let the writer finish */
	pthread_mutex_lock(&p->mu);
	p->q_done = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void *writer_main(void *arg)
{
	struct cal_exporter *ex = arg;
	struct xpipe *p = &ex->pipe;
	unsigned k = 0;
	for (;;) {
		struct xslot *s = &p->slot[k];
		pthread_mutex_lock(&p->mu);
		while (s->state != SLOT_FULL && !p->q_done && !p->abort && p->st >= 0)
			pthread_cond_wait(&p->cv, &p->mu);
		int go = s->state == SLOT_FULL && !p->abort && p->st >= 0;
		pthread_mutex_unlock(&p->mu);
		if (!go)
			break;
		struct cal_error err = {0};
		double t0 = cal_now();
		enum cal_status st = write_slot(ex, s, &err);
		p->t_write += cal_now() - t0;
		slot_clear(s);
		if (st < 0) {
			pipe_fail(p, st, &err);
			break;
		}
		pthread_mutex_lock(&p->mu);
		s->state = SLOT_FREE;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		k = (k + 1) % XSLOTS;
	}
	return NULL;
}

/* Sizes of the staging buffers and ring slots; allocates the staging
 * buffers (pinned on CUDA). */
static enum cal_status pipe_buffers(struct cal_exporter *ex, struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	if (p->be)
		return CAL_OK;
	if (!p->sq && !(p->sq = calloc(2 * ex->n_lin + 1, sizeof(double))))
		return nomem(err);
	uint64_t stage = STAGE_MIN, slot = SLOT_MIN;
	for (size_t i = 0; i < ex->n_lin; i++) {
		const struct xlin *x = &ex->lin[i];
		if (!cal_export_mine(ex, x))
			continue;
		uint64_t wn = (uint64_t)x->out * (uint64_t)x->in * cal_dtype_size(x->dtype), q, s;
		if (x->fmt != CAL_QFMT_NONE) {
			out_sizes(x, &q, &s);
			stage = wn > stage ? wn : stage;
			wn = q + s;
		} else if (x->expert < 0 && !x->si) {
			continue; /* written straight from the source mapping */
		}
		if (x->bmm)
			continue; /* gpt_oss: owned transposed copies, outside the ring */
		slot = wn + 64 > slot ? wn + 64 : slot;
	}
	for (size_t i = 0; ex->xp.rank == 0 && i < ex->n_cp; i++) {
		uint64_t cn = ex->cp[i].t->numel * (ex->cp[i].to_f32 ? 4 : ex->cp[i].to_bf16 ? 2 : 0);
		slot = cn + 64 > slot ? cn + 64 : slot;
	}
	/* a back end of its own (same kind and device as the job's): the
	 * calibration keeps using the job's stream, upload marks and memory
	 * accounting on the other thread */
	struct cal_backend_opts bo = {.cpu_threads = ex->be->cpu_threads,
				      .cuda_device = ex->be->cuda_device};
	CAL_TRY_RET(cal_backend_init(ex->be->kind, &bo, &p->be, err));
	p->slot_bytes = (slot + 255) & ~255ull;
	p->stage_bytes = (stage + 255) & ~255ull;
	/* threads for the gather (the source read): 8 at most */
	struct cal_backend_opts co = {.cpu_threads = 8};
	CAL_TRY_RET(cal_backend_init(CAL_BACKEND_CPU, &co, &p->cpu, err));
	for (int k = 0; k < 2; k++)
		CAL_TRY_RET(cal_backend_host_alloc(p->be, stage, &p->stage[k], err));
	return CAL_OK;
}

enum cal_status cal_export_pipe_init(struct cal_exporter *ex, struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	memset(p, 0, sizeof(*p));
	p->fill = -1;
	if (pthread_mutex_init(&p->mu, NULL))
		return nomem(err);
	if (pthread_cond_init(&p->cv, NULL)) {
		pthread_mutex_destroy(&p->mu);
		return nomem(err);
	}
	p->inited = 1;
	/* L: the leader's (one rank's) stage fails at layer L; L:R: rank R's */
	const char *f = getenv("CALIBD_TEST_EXPORT_FAIL_LAYER");
	if (f && *f) {
		/* LAYER or LAYER:RANK */
		char layer[24];
		const char *colon = strchr(f, ':');
		size_t ln = colon ? (size_t)(colon - f) : strlen(f);
		int64_t v = 0;
		uint64_t r = 0;
		int ok = ln < sizeof(layer);
		if (ok) {
			memcpy(layer, f, ln);
			layer[ln] = '\0';
			ok = cal_parse_i64("layer", layer, -1, INT32_MAX - 2, &v, NULL) >= 0 &&
			     (!colon || cal_parse_u64("rank", colon + 1, 0, UINT32_MAX, &r, NULL) >= 0);
		}
		if (!ok)
			return cal_error_set(err, CAL_ERR_INVALID, "CALIBD_TEST_EXPORT_FAIL_LAYER='%s' is "
					     "not LAYER or LAYER:RANK", f);
		if (r == ex->opts.rank)
			p->fail_layer = (int32_t)v + 2;
	}
	return CAL_OK;
}

enum cal_status cal_export_pipe_push(struct cal_exporter *ex, int32_t L, struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	CAL_TRY_RET(pipe_buffers(ex, err));
	if (!p->q_started) {
		if (pthread_create(&p->wt, NULL, writer_main, ex))
			return cal_error_set(err, CAL_ERR_NOMEM, "export: cannot start the writer thread");
		p->w_started = 1;
		if (pthread_create(&p->qt, NULL, quantize_main, ex))
			return cal_error_set(err, CAL_ERR_NOMEM, "export: cannot start the quantize "
					     "thread");
		p->q_started = 1;
		/* the model-level tensors that need no statistics go first */
		pthread_mutex_lock(&p->mu);
		p->queue[(p->q_head + p->q_n) % XQUEUE] = CAL_XSTATIC;
		p->q_n++;
		p->static_queued = 1;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	double t0 = cal_now();
	pthread_mutex_lock(&p->mu);
	/* at most XQUEUE - 1 layers wait behind the one being quantized */
	while (p->q_n >= XQUEUE - 1 && p->st >= 0 && !p->abort)
		pthread_cond_wait(&p->cv, &p->mu);
	int ok = p->st >= 0 && !p->abort;
	if (ok) {
		p->queue[(p->q_head + p->q_n) % XQUEUE] = L;
		p->q_n++;
		pthread_cond_broadcast(&p->cv);
	}
	pthread_mutex_unlock(&p->mu);
	p->t_wait += cal_now() - t0;
	return ok ? CAL_OK : pipe_error(p, err);
}

enum cal_status cal_export_pipe_check(struct cal_exporter *ex, struct cal_error *err)
{
	return ex->pipe.inited ? pipe_error(&ex->pipe, err) : CAL_OK;
}

/* Joins the threads; abort: without waiting for queued work. */
static void pipe_join(struct xpipe *p, int abort)
{
	if (!p->inited)
		return;
	pthread_mutex_lock(&p->mu);
	p->closing = 1;
	if (abort)
		p->abort = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	if (p->q_started)
		pthread_join(p->qt, NULL);
	if (!p->q_started) { /* the writer waits for q_done */
		pthread_mutex_lock(&p->mu);
		p->q_done = 1;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	if (p->w_started)
		pthread_join(p->wt, NULL);
	p->q_started = p->w_started = 0;
}

enum cal_status cal_export_pipe_drain(struct cal_exporter *ex, struct cal_error *err)
{
	struct xpipe *p = &ex->pipe;
	double t0 = cal_now();
	CAL_TRY_RET(pipe_buffers(ex, err));
	pipe_join(p, 0);
	p->t_drain += cal_now() - t0;
	/* the writer stopped at the first full slot it could not take */
	return pipe_error(p, err);
}

uint64_t cal_export_pipe_written(const struct cal_exporter *ex)
{
	return __atomic_load_n(&ex->pipe.written, __ATOMIC_RELAXED);
}

void cal_export_pipe_free(struct cal_exporter *ex)
{
	struct xpipe *p = &ex->pipe;
	cal_export_parts_free(ex);
	if (!p->inited)
		return;
	pipe_join(p, 1);
	for (int k = 0; k < XSLOTS; k++) {
		slot_clear(&p->slot[k]);
		free(p->slot[k].items);
		cal_backend_host_free(p->be, p->slot[k].buf);
	}
	for (int k = 0; k < 2; k++)
		cal_backend_host_free(p->be, p->stage[k]);
	cal_backend_free(p->cpu);
	cal_error_clear(&p->err);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	p->inited = 0;
	for (int k = 0; k < D_COUNT && k < XDBUF; k++) {
		cal_backend_dealloc(p->be, ex->dbuf[k]);
		ex->dbuf[k] = NULL;
	}
	cal_backend_free(p->be);
	p->be = NULL;
	free(p->sq);
	p->sq = NULL;
}

enum cal_status cal_export_pipe_report(struct cal_exporter *ex, struct cal_error *err)
{
	for (int32_t pass = 0; pass <= (int32_t)ex->d->num_layers; pass++) {
		int32_t L = pass < ex->d->num_layers ? pass : -1;
		for (size_t i = 0; i < ex->n_lin; i++) {
			const struct xlin *x = &ex->lin[i];
			if (x->layer == L && x->fmt != CAL_QFMT_NONE)
				CAL_TRY_RET(report_weight(ex, x, ex->pipe.sq[2 * i],
							  ex->pipe.sq[2 * i + 1], err));
		}
	}
	return CAL_OK;
}
