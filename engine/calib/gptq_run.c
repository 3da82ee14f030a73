/*
 * gptq_run.c — GPTQ in the calibration forward (docs/gptq.md "In the
 * engine"): modelopt 0.47's layerwise `gptq`, one decoder layer at a time.
 *
 * A linear run (lin_run.c): calib.c runs every layer three times over all
 * micro-batches when the recipe's algorithm is gptq (pass_begin / _end
 * around each pass):
 *   pass 0  max calibration: the plain forward with the observers, from the
 *           layer's input (the previous layer's quantized outputs);
 *   pass 1  Hessians: the weights as they are, every quantized input
 *           fake-quantized (NVFP4 dynamic with pass 0's amax, layer.c's
 *           actq sites) and, at the input of each linear GPTQ updates, the
 *           `hessian` op adds x^T x of those fake-quantized rows (the
 *           forward stops after the layer's last such site and leaves
 *           out the routed experts: sites_only below);
 *   then    per linear the GPTQ update (engine/calib/gptq.c; the factor
 *           and the update on the back end) with the static NVFP4 scales
 *           of the original weight;
 *   pass 2  the quantized layer: updated weights and routed experts
 *           fake-quantized (static NVFP4, original scales), inputs
 *           fake-quantized; its outputs are the next layer's input.
 * The layer's input is saved before pass 0 and restored before passes 1
 * and 2; the observers' state after pass 0 is saved and restored after
 * pass 2, so the statistics are pass 0's (passes 1 and 2 skip the
 * observers: obs_dropped below; docs/gptq.md "What a pass leaves out").
 *
 * Which linears: modelopt updates every quantized nn.Linear (attention
 * q/k/v/o, gated attention's q_proj with its gate rows, MLA's q_a/q_b/kv_a/
 * kv_b, Gated DeltaNet's in_proj / out_proj, dense MLP and shared-expert
 * gate/up/down); the fused routed experts of transformers 5 are not
 * nn.Linear modules (3-D parameters), so modelopt's GPTQ leaves them to max
 * calibration: so does calibd.  Over several ranks pass 1's rows are
 * gathered per round and added in micro-batch order (round_end).
 *
 * Memory: one Hessian per distinct linear input of the layer on the back
 * end (q/k/v share one: hidden^2, o_proj (heads*head_dim)^2, gate/up one,
 * down I^2, fp32), freed layer by layer; the saved layer input (2 H bytes a
 * token); fake-quantized copies of the layer's updated linears and routed
 * experts; the back end: the factors of one chunk of linears (their sums,
 * U and the gptq_factor op's scratch), at most GPTQ_FACTOR_BUDGET
 * (docs/gptq.md "Memory"); host: the
 * updated bf16 weights of the last layer (kept for the exporter).
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"
#include "engine/gptq.h"


/* One linear GPTQ updates in the current layer: lin_run.c's (f, at: its
 * first part; w: the updated bf16 weight in the checkpoint's row order,
 * kept until the next layer), then GPTQ's own. */
struct glin {
	struct cal_lin r;
	uint16_t *orig;    /* host, during the solve: the original weight */
	float *ba, ga;     /* its per-16-block amax and global amax */
	struct cal_gptq_stats st;
	uint64_t n_samples;
};

struct cal_gptq_run {
	struct cal_lin_run r;
	struct cal_gptq_opts o;
	enum cal_div_mode div;
	/* the layer */
	int site_q[EQ_COUNT];      /* input quantized (NVFP4 dynamic) */
	float site_scale[EQ_COUNT]; /* its input_scale (0: amax 0, left as is) */
	float *hs[EQ_COUNT];       /* back end: Hessian sums [cols, cols] */
	uint64_t hcols[EQ_COUNT], hn[EQ_COUNT];
	/* back end buffers, grown as needed */
	void *save;                /* the layer input */
	uint64_t save_cap;
	int save_host;
	float *obs_save;
	struct cal_nonfinite *nf_save;
	uint64_t *tok_save;        /* host [E] */
	uint8_t *qbuf, *sbuf;
	uint64_t q_cap;
	uint16_t *shadow[F_COUNT];
	uint64_t shadow_cap[F_COUNT];
	float *bamax;              /* back end block amax scratch */
	uint64_t bamax_cap;
	float *du, *work;          /* back end: a chunk's U [nf, C, C], the update's rows */
	uint64_t du_cap, work_cap;
	float *fh;                 /* back end: a chunk's Hessian sums [nf, C, C] */
	uint64_t fh_cap;
	void *fscr;                /* back end: the chunk's factorisation scratch */
	uint64_t fscr_cap;
	uint16_t *wsrc, *wdst;     /* back end: a linear's weight before / after the update */
	uint64_t wsrc_cap, wdst_cap;
	float *dwamax;             /* back end [E] */
	struct cal_nonfinite *dnf;
	struct cal_layer_w use;    /* pass 2's weights */
	/* several ranks: pass 1's Hessian input rows of this round (back end) */
	uint16_t *stash[EQ_COUNT];
	uint64_t stash_rows[EQ_COUNT], stash_cap[EQ_COUNT];
	void *gath;                /* back end: R stashes of one site */
	uint64_t gath_cap;
	uint64_t *cnt;             /* back end [R]: the ranks' row counts; then host [R] */
	uint64_t *hcnt;
	json_t *fallback;          /* report: names */
	double t_factor;           /* seconds of the solve in the factorisations */
};

static struct cal_gptq_run *run(const struct cal_calib *c)
{
	return (struct cal_gptq_run *)(void *)c->lr;
}

#define LIN(g) ((struct glin *)(g)->r.lin)

/* Elements of field f in layer lh. */
static uint64_t field_n(const struct cal_calib *c, const struct cal_layer_host *lh, int f)
{
	const struct cal_model_desc *d = c->d;
	uint64_t H = (uint64_t)c->H, qd = (uint64_t)(c->nh * c->hd), kd = (uint64_t)(c->nkv * c->hd);
	uint64_t E = (uint64_t)c->El, nh = (uint64_t)c->nh;
	uint64_t kvb = nh * (uint64_t)(d->qk_nope_head_dim + d->v_head_dim);
	struct cal_gdn_dims g;
	cal_gdn_dims(d, &g);
	switch (f) {
	case F_WQ:
		return lh->n_wq ? lh->n_wq : (d->attn == CAL_ATTN_GATED_GQA ? 2 : 1) * qd * H;
	case F_WK: case F_WV: return kd * H;
	case F_WO: return lh->n_wo ? lh->n_wo : H * qd;
	case F_W13: return lh->n_w13;
	case F_W2: return lh->n_w2;
	case F_S13: return lh->n_s13;
	case F_S2: return lh->n_s2;
	case F_E13: return E * 2 * (uint64_t)c->I * H;
	case F_E2: return E * H * (uint64_t)c->I;
	case F_WQA: return (uint64_t)d->q_lora_rank * H;
	case F_WKVA: return (uint64_t)(d->kv_lora_rank + d->qk_rope_head_dim) * H;
	case F_WKVB: return kvb * (uint64_t)d->kv_lora_rank;
	case F_LQKV: return g.cd * H;
	case F_LZ: return g.vd * H;
	case F_LB: case F_LA: return g.nv * H;
	case F_LOUT: return H * g.vd;
	}
	return 0;
}

enum cal_status cal_calib_check_gptq(const struct cal_plan *p, struct cal_error *err)
{
	const struct cal_model_desc *d = p->model;
	const char *why = NULL;
	if (p->recipe->algo.method != CAL_CALIB_GPTQ)
		return CAL_OK;
	if (d->src_quant == CAL_SRC_QUANT_FP8_BLOCK)
		why = "an FP8 block-quantized source (the updated weights are exported from bf16)";
	for (size_t i = 0; !why && i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		const struct cal_plan_module *m = &p->modules[q->module];
		if (!q->spec.enabled)
			continue;
		if (q->role == CAL_QROLE_K_BMM || q->role == CAL_QROLE_V_BMM)
			why = "a quantized KV cache or attention BMM";
		else if (q->role == CAL_QROLE_INPUT && q->spec.fmt != CAL_QFMT_NVFP4 &&
			 m->kind != CAL_MOD_LM_HEAD)
			why = "inputs quantized other than NVFP4 dynamic";
		else
			why = cal_linear_algo_q_why(p, q);
	}
	return cal_linear_algo_refuse(d, "gptq", why, "docs/gptq.md", err);
}

static enum cal_status gptq_init(struct cal_calib *c, struct cal_error *err)
{
	const struct cal_algorithm *a = &c->plan->recipe->algo;
	struct cal_gptq_run *g = run(c);
	g->o.perc_damp = a->perc_damp;
	g->o.block_size = (uint32_t)a->gptq_block_size;
	g->div = c->o.div;
	g->fallback = json_array();
	if (c->E)
		g->tok_save = calloc((size_t)c->E, sizeof(uint64_t));
	if (!g->fallback || (c->E && !g->tok_save))
		return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
	return CAL_OK;
}

/* Back-end buffers of one run (calib.c frees them with the run). */
static void release(struct cal_calib *c)
{
	struct cal_gptq_run *g = run(c);
	for (int s = 0; s < EQ_COUNT; s++) {
		cal_backend_dealloc(c->be, g->hs[s]);
		g->hs[s] = NULL;
	}
	if (g->save_host)
		free(g->save);
	else
		cal_backend_dealloc(c->be, g->save);
	g->save = NULL;
	g->save_cap = 0;
	void *b[] = {g->obs_save, g->nf_save, g->qbuf, g->sbuf, g->bamax, g->dwamax, g->dnf,
		     g->du, g->work, g->wsrc, g->wdst, g->gath, g->cnt, g->fh, g->fscr};
	for (size_t i = 0; i < CAL_ARRAY_LEN(b); i++)
		cal_backend_dealloc(c->be, b[i]);
	g->obs_save = NULL;
	g->nf_save = NULL;
	g->qbuf = g->sbuf = NULL;
	g->bamax = g->dwamax = NULL;
	g->dnf = NULL;
	g->q_cap = g->bamax_cap = 0;
	g->du = g->work = g->fh = NULL;
	g->fscr = NULL;
	g->du_cap = g->work_cap = g->fh_cap = g->fscr_cap = 0;
	g->wsrc = g->wdst = NULL;
	g->wsrc_cap = g->wdst_cap = 0;
	g->gath = NULL;
	g->gath_cap = 0;
	g->cnt = NULL;
	for (int s = 0; s < EQ_COUNT; s++) {
		cal_backend_dealloc(c->be, g->stash[s]);
		g->stash[s] = NULL;
		g->stash_cap[s] = g->stash_rows[s] = 0;
	}
	for (int f = 0; f < F_COUNT; f++) {
		cal_backend_dealloc(c->be, g->shadow[f]);
		g->shadow[f] = NULL;
		g->shadow_cap[f] = 0;
	}
}

static void gptq_free(struct cal_calib *c)
{
	struct cal_gptq_run *g = run(c);
	json_decref(g->fallback);
	CAL_FREE_ALL(g->tok_save, g->hcnt);
}

/* *p holds at least n bytes of back-end memory. */
static enum cal_status grow(struct cal_calib *c, void **p, uint64_t *cap, uint64_t n,
			    struct cal_error *err)
{
	if (*p && *cap >= n)
		return CAL_OK;
	cal_backend_dealloc(c->be, *p);
	*p = NULL;
	*cap = 0;
	CAL_TRY_RET(cal_backend_alloc(c->be, n ? n : 1, p, err));
	*cap = n;
	return CAL_OK;
}

/* ---- the actq sites ------------------------------------------------------------- */

/* Quantizer scratch for n values (back end). */
static enum cal_status qscratch(struct cal_calib *c, uint64_t n, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	if (g->qbuf && g->q_cap >= n)
		return CAL_OK;
	cal_backend_dealloc(c->be, g->qbuf);
	cal_backend_dealloc(c->be, g->sbuf);
	g->qbuf = g->sbuf = NULL;
	g->q_cap = 0;
	CAL_TRY_RET(cal_backend_alloc(c->be, n / 2 + 1, (void **)&g->qbuf, err));
	CAL_TRY_RET(cal_backend_alloc(c->be, n / 16 + 1, (void **)&g->sbuf, err));
	g->q_cap = n;
	return CAL_OK;
}

/* NVFP4 fake-quant of x [rows, cols] in place with input_scale s. */
static enum cal_status fq_nvfp4(struct cal_calib *c, float s, uint16_t *x, uint64_t rows,
				uint64_t cols, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	uint64_t n = rows * cols;
	if (!n || !(s > 0.0f))
		return CAL_OK;
	if (cols % 16)
		return cal_error_set(err, CAL_ERR_INVALID, "gptq: NVFP4 input of %llu columns",
				     (unsigned long long)cols);
	CAL_TRY_RET(qscratch(c, n, err));
	struct cal_nvfp4_quant_args q = {x, rows, cols, s, g->qbuf, g->sbuf, 0};
	struct cal_nvfp4_dequant_args d = {g->qbuf, g->sbuf, rows, cols, s, CAL_DTYPE_BF16, x, 0};
	CAL_TRY_RET(cal_op_nvfp4_quant(c->be, &q, err));
	return cal_op_nvfp4_dequant(c->be, &d, err);
}

static enum cal_status gptq_site(struct cal_calib *c, int32_t L, int site, int64_t expert,
			 uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	(void)L;
	(void)expert; /* routed experts share one input quantizer per projection */
	if (g->site_q[site])
		CAL_TRY_RET(fq_nvfp4(c, g->site_scale[site], x, rows, cols, err));
	if (g->r.pass != 1 || !g->hs[site] || !rows)
		return CAL_OK;
	if (c->nranks > 1) { /* added in micro-batch order at the round's end */
		uint64_t need = (g->stash_rows[site] + rows) * cols * 2;
		if (need > g->stash_cap[site])
			return cal_error_set(err, CAL_ERR_INTERNAL, "gptq: %llu input rows of a "
					     "micro-batch at site %d", (unsigned long long)(
					     g->stash_rows[site] + rows), site);
		CAL_TRY_RET(cal_backend_copy(c->be, g->stash[site] + g->stash_rows[site] * cols, x,
					     rows * cols * 2, err));
		g->stash_rows[site] += rows;
		return CAL_OK;
	}
	struct cal_hessian_args h = {CAL_DTYPE_BF16, x, rows, cols, NULL, 0, g->hs[site]};
	CAL_TRY_RET(cal_op_hessian(c->be, &h, err));
	g->hn[site] += rows;
	return CAL_OK;
}

/* Over several ranks: the stashes of the sites with a Hessian, room for the
 * longest micro-batch (the same on every rank), and the gather buffers. */
static enum cal_status stash_alloc(struct cal_calib *c, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	uint64_t R = c->nranks, T = 0, big = 0, cap = 0;
	for (size_t i = 0; i < c->n_mb; i++)
		T = c->mbs[i].n_tok > T ? c->mbs[i].n_tok : T;
	for (int s = 0; s < EQ_COUNT; s++) {
		g->stash_rows[s] = 0;
		if (!g->hs[s])
			continue;
		CAL_TRY_RET(grow(c, (void **)&g->stash[s], &g->stash_cap[s], T * g->hcols[s] * 2,
				 err));
		big = g->stash_cap[s] > big ? g->stash_cap[s] : big;
	}
	CAL_TRY_RET(grow(c, &g->gath, &g->gath_cap, R * big, err));
	if (!g->cnt)
		CAL_TRY_RET(grow(c, (void **)&g->cnt, &cap, R * 8, err));
	if (!g->hcnt && !(g->hcnt = malloc(R * 8)))
		return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
	return CAL_OK;
}

static enum cal_status round_end(struct cal_calib *c, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	uint64_t R = c->nranks;
	if (g->r.pass != 1 || R < 2)
		return CAL_OK;
	/* every rank reaches this once per round, with or without a
	 * micro-batch; the sites with a Hessian are the same on every rank */
	for (int s = 0; s < EQ_COUNT; s++) {
		if (!g->hs[s])
			continue;
		uint64_t seg = g->stash_cap[s], cols = g->hcols[s];
		CAL_TRY_RET(cal_backend_upload(c->be, g->cnt + c->rank, &g->stash_rows[s], 8, err));
		CAL_TRY_RET(cal_comm_allgather(c->comm, g->cnt + c->rank, 8, g->cnt, err));
		CAL_TRY_RET(cal_backend_download(c->be, g->hcnt, g->cnt, R * 8, err));
		CAL_TRY_RET(cal_comm_allgather(c->comm, g->stash[s], seg, g->gath, err));
		/* rank r held micro-batch j R + r of this round: rank order is
		 * micro-batch order */
		for (uint64_t r = 0; r < R; r++) {
			if (!g->hcnt[r])
				continue;
			struct cal_hessian_args h = {CAL_DTYPE_BF16, (const char *)g->gath + r * seg,
						     g->hcnt[r], cols, NULL, 0, g->hs[s]};
			CAL_TRY_RET(cal_op_hessian(c->be, &h, err));
			g->hn[s] += g->hcnt[r];
		}
		g->stash_rows[s] = 0;
	}
	return CAL_OK;
}

/* Over several ranks: *v = the max of *v over the ranks. */
static enum cal_status ranks_max(struct cal_calib *c, float *v, uint64_t n, struct cal_error *err)
{
	uint64_t cap = 0;
	if (c->nranks < 2)
		return CAL_OK;
	void *b = NULL;
	CAL_TRY_RET(grow(c, &b, &cap, n * 4, err));
	enum cal_status st = cal_backend_upload(c->be, b, v, n * 4, err);
	if (st >= 0)
		st = cal_comm_allreduce(c->comm, b, n, CAL_COMM_F32, CAL_COMM_MAX, err);
	if (st >= 0)
		st = cal_backend_download(c->be, v, b, n * 4, err);
	cal_backend_dealloc(c->be, b);
	return st;
}

/* ---- passes ----------------------------------------------------------------------- */

static uint16_t *hidden_of(struct cal_calib *c)
{
	return c->hidden_on_host ? c->hidden_host : c->hidden;
}

static enum cal_status save_input(struct cal_calib *c, int restore, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	uint64_t n = c->n_tok * (uint64_t)c->H * 2;
	if (!restore && !g->save) {
		g->save_host = c->hidden_on_host || !c->on_device;
		if (g->save_host) {
			if (!(g->save = malloc(n ? n : 1)))
				return cal_error_set(err, CAL_ERR_NOMEM, "gptq: %llu bytes for the "
						     "layer input", (unsigned long long)n);
			g->save_cap = n;
		} else {
			CAL_TRY_RET(grow(c, &g->save, &g->save_cap, n, err));
		}
	}
	void *h = hidden_of(c), *dst = restore ? h : g->save, *src = restore ? g->save : h;
	if (c->hidden_on_host || !c->on_device) {
		CAL_TRY_RET(cal_backend_sync(c->be, err));
		memcpy(dst, src, n);
		return CAL_OK;
	}
	return cal_backend_copy(c->be, dst, src, n, err);
}

/* The pass-0 input amax of the sites, and which sites quantize their input. */
static enum cal_status site_scales(struct cal_calib *c, int32_t L, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	const struct cal_plan *p = c->plan;
	uint64_t E = (uint64_t)c->E;
	float *am = malloc(c->n_slots * sizeof(float));
	if (!am)
		return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
	enum cal_status st = cal_backend_download(c->be, am, c->obs_amax, c->n_slots * 4, err);
	/* over several ranks: pass 0's amax of every rank's micro-batches */
	if (st >= 0)
		st = ranks_max(c, am, c->n_slots, err);
	if (st < 0)
		goto out;
	static const int slot[EQ_COUNT] = {[EQ_QKV] = S_QKV, [EQ_O] = S_O,
					   [EQ_MLP_GU] = S_MLP_GU, [EQ_MLP_DOWN] = S_MLP_DOWN,
					   [EQ_SH_GU] = S_MOE_IN, [EQ_SH_DOWN] = S_SH_DOWN,
					   [EQ_K] = -1, [EQ_V] = -1, [EQ_EXP_GU] = -1,
					   [EQ_EXP_DOWN] = -1, [EQ_QB] = S_QB, [EQ_KVB] = S_KVB};
	memset(g->site_q, 0, sizeof(g->site_q));
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L || m->iq < 0 || !p->q[m->iq].spec.enabled)
			continue;
		const struct cal_qspec *sp = &p->q[m->iq].spec;
		int f, site = -1;
		uint64_t at;
		struct cal_layer_host none = {0};
		if (m->kind == CAL_MOD_EXPERTS_GATE_UP)
			site = EQ_EXP_GU;
		else if (m->kind == CAL_MOD_EXPERTS_DOWN)
			site = EQ_EXP_DOWN;
		else
			site = cal_linear_site(c, m, &f, &at, &none);
		if (site < 0)
			continue;
		float a = 0.0f;
		if (site == EQ_EXP_GU && c->d->act == CAL_ACT_SWIGLU_OAI) {
			/* gpt_oss: one gate_up input quantizer before routing (stats.c) */
			a = am[S_MOE_IN];
		} else if (site == EQ_EXP_GU || site == EQ_EXP_DOWN) {
			const float *v = am + S_FIXED + (site == EQ_EXP_DOWN ? E : 0);
			for (uint64_t e = 0; e < E; e++)
				a = v[e] > a ? v[e] : a;
		} else {
			a = am[slot[site]];
		}
		if (sp->has_constant_amax)
			a = (float)sp->constant_amax;
		float s = 0.0f;
		if (a > 0.0f && (st = cal_nvfp4_input_scale(a, g->div, &s, err)) < 0)
			goto out;
		g->site_q[site] = 1;
		g->site_scale[site] = s;
	}
out:
	free(am);
	return st;
}

/* The Hessians of the layer's linears (zeroed). */
static enum cal_status hessians(struct cal_calib *c, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	for (int s = 0; s < EQ_COUNT; s++) {
		uint64_t cols = g->r.cols[s];
		g->hn[s] = 0;
		if (!cols) {
			cal_backend_dealloc(c->be, g->hs[s]);
			g->hs[s] = NULL;
			g->hcols[s] = 0;
			continue;
		}
		if (g->hcols[s] != cols) {
			cal_backend_dealloc(c->be, g->hs[s]);
			g->hs[s] = NULL;
			CAL_TRY_RET(cal_backend_alloc(c->be, cols * cols * 4, (void **)&g->hs[s], err));
			g->hcols[s] = cols;
		}
		CAL_TRY_RET(cal_backend_memset(c->be, g->hs[s], 0, cols * cols * 4, err));
	}
	return CAL_OK;
}

/* Static NVFP4 fake-quant of w [rows, cols] (back end) into out (may alias),
 * with block amax ba (back end) and global amax ga. */
static enum cal_status fq_static(struct cal_calib *c, const uint16_t *w, uint16_t *out,
				 uint64_t rows, uint64_t cols, const float *ba, float ga,
				 struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	uint64_t n = rows * cols;
	if (!(ga > 0.0f)) { /* an all-zero weight stays zero */
		return w == out ? CAL_OK : cal_backend_copy(c->be, out, w, n * 2, err);
	}
	CAL_TRY_RET(qscratch(c, n, err));
	float s2 = cal_nvfp4_static_scale2(ga, 448.0f, g->div);
	struct cal_nvfp4_static_quant_args q = {w, rows, cols, ba, ga, 448.0f, g->div, g->qbuf,
						g->sbuf};
	struct cal_nvfp4_dequant_args d = {g->qbuf, g->sbuf, rows, cols, s2, CAL_DTYPE_BF16, out,
					   0};
	CAL_TRY_RET(cal_op_nvfp4_static_quant(c->be, &q, err));
	return cal_op_nvfp4_dequant(c->be, &d, err);
}

/* Block amax (16) of w [rows, cols] into g->bamax (back end). */
static enum cal_status block_amax(struct cal_calib *c, const uint16_t *w, uint64_t rows,
				  uint64_t cols, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	uint64_t nb = rows * cols / 16;
	CAL_TRY_RET(grow(c, (void **)&g->bamax, &g->bamax_cap, nb * 4, err));
	if (!g->dnf) {
		uint64_t cap = 0;
		CAL_TRY_RET(grow(c, (void **)&g->dnf, &cap, sizeof(struct cal_nonfinite), err));
	}
	CAL_TRY_RET(cal_backend_memset(c->be, g->bamax, 0, nb * 4, err));
	CAL_TRY_RET(cal_nonfinite_reset(c->be, g->dnf, err));
	struct cal_amax_blocks_args b = {CAL_DTYPE_BF16, w, rows, cols, 16, 0, g->bamax, g->dnf};
	return cal_op_amax_blocks(c->be, &b, err);
}

/* The routed experts of pass 2: each expert's weights static-NVFP4
 * fake-quantized with its own scales (modelopt's per-expert quantizers). */
static enum cal_status experts_qdq(struct cal_calib *c, int32_t L, const struct cal_layer_host *lh,
				   struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	const struct cal_plan *p = c->plan;
	uint64_t E = (uint64_t)c->El, H = (uint64_t)c->H, I = (uint64_t)c->I; /* rank's experts */
	for (size_t mi = cal_plan_next_experts(p, L, 0); mi < p->n_modules;
	     mi = cal_plan_next_experts(p, L, mi + 1)) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (!p->q[m->wq].spec.enabled)
			continue;
		int f = m->kind == CAL_MOD_EXPERTS_GATE_UP ? F_E13 : F_E2;
		uint64_t rows = f == F_E13 ? 2 * I : H, cols = f == F_E13 ? H : I, n = rows * cols;
		const uint16_t *src = *cal_layer_field(&g->use, f);
		if (!src)
			continue;
		uint64_t tot = field_n(c, lh, f) * 2;
		CAL_TRY_RET(grow(c, (void **)&g->shadow[f], &g->shadow_cap[f], tot, err));
		uint64_t cap = 0;
		if (!g->dwamax)
			CAL_TRY_RET(grow(c, (void **)&g->dwamax, &cap, E * 4, err));
		if (!g->dnf) {
			cap = 0;
			CAL_TRY_RET(grow(c, (void **)&g->dnf, &cap, sizeof(struct cal_nonfinite), err));
		}
		CAL_TRY_RET(cal_backend_memset(c->be, g->dwamax, 0, E * 4, err));
		for (uint64_t e = 0; e < E; e++) {
			struct cal_amax_args a = {CAL_DTYPE_BF16, src + e * n, n, 0, g->dwamax + e,
						  g->dnf};
			CAL_TRY_RET(cal_op_amax(c->be, &a, err));
		}
		float *ga = malloc(E * 4);
		if (!ga)
			return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
		enum cal_status st = cal_backend_download(c->be, ga, g->dwamax, E * 4, err);
		if (c->d->act == CAL_ACT_SWIGLU_OAI) {
			/* gpt_oss: one weight quantizer for all experts of a projection
			 * (docs/gpt_oss.md): one global amax */
			float top = 0.0f;
			for (uint64_t e = 0; e < E; e++)
				top = ga[e] > top ? ga[e] : top;
			if (st >= 0) /* over several ranks: all experts */
				st = ranks_max(c, &top, 1, err);
			for (uint64_t e = 0; e < E; e++)
				ga[e] = top;
		}
		for (uint64_t e = 0; st >= 0 && e < E; e++) {
			st = block_amax(c, src + e * n, rows, cols, err);
			if (st >= 0)
				st = fq_static(c, src + e * n, g->shadow[f] + e * n, rows, cols,
					       g->bamax, ga[e], err);
		}
		free(ga);
		CAL_TRY_RET(st);
		*cal_layer_field(&g->use, f) = g->shadow[f];
	}
	return CAL_OK;
}


static const char *mod_name(const struct cal_calib *c, size_t mi)
{
	return c->plan->modules[mi].name;
}

/* The original weight of gl (host copy), its per-16-block amax and its
 * global amax. */
static enum cal_status load_linear(struct cal_calib *c, const struct cal_layer_w *dw,
				   struct glin *gl, struct cal_error *err)
{
	uint64_t n = gl->r.rows * gl->r.cols;
	gl->orig = malloc(n * 2);
	gl->ba = malloc(n / 16 * 4);
	gl->r.w = malloc(n * 2);
	if (!gl->orig || !gl->ba || !gl->r.w)
		return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
	CAL_TRY_RET(cal_lin_load(c, dw, &gl->r, gl->orig, 0, err));
	gl->ga = 0.0f;
	for (uint64_t b = 0; b < n / 16; b++) {
		float m = 0.0f;
		for (int k = 0; k < 16; k++) {
			float v = fabsf(cal_bf16_to_f32(gl->orig[b * 16 + k]));
			m = v > m ? v : m;
		}
		gl->ba[b] = m;
		gl->ga = m > gl->ga ? m : gl->ga;
	}
	return CAL_OK;
}

/* Pass 2's copy of field f (the layer's weights until a linear's rows are
 * written into it), which g->use points to. */
static enum cal_status shadow_of(struct cal_calib *c, const struct cal_layer_host *lh,
				 struct cal_layer_w *dw, int f, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	if (f < 0 || f >= F_COUNT)
		return cal_error_set(err, CAL_ERR_INTERNAL, "gptq: field %d of a linear", f);
	if (*cal_layer_field(&g->use, f) == g->shadow[f])
		return CAL_OK;
	uint64_t tot = field_n(c, lh, f) * 2;
	CAL_TRY_RET(grow(c, (void **)&g->shadow[f], &g->shadow_cap[f], tot, err));
	CAL_TRY_RET(cal_backend_copy(c->be, g->shadow[f], *cal_layer_field(dw, f), tot, err));
	*cal_layer_field(&g->use, f) = g->shadow[f];
	return CAL_OK;
}

/* gl is in one of the fusible groups modelopt 0.47 unifies by name before
 * calibrating (its SHARED_PATTERNS: q/k/v_proj, gate/up_proj). */
static int shared_amax(const struct cal_calib *c, const struct glin *gl)
{
	static const char *const names[] = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"};
	const char *pr = c->plan->modules[gl->r.mod].proj;
	for (size_t i = 0; pr && i < CAL_ARRAY_LEN(names); i++)
		if (!strcmp(pr, names[i]))
			return 1;
	return 0;
}

/* Back-end bytes the factors of one batched factorisation may take: the
 * gptq_factor op's f64 scratch (16 n^2 on the CPU, 8 n^2 on a device, one
 * matrix at a time) and per
 * distinct factor of input dim n a copy of its Hessian sums and U (f32,
 * 8 n^2) (docs/gptq.md, "Memory"). */
#define GPTQ_FACTOR_BUDGET ((uint64_t)2 << 30)

/* One distinct factor of a chunk: U depends on the weight only through its
 * dead columns, so the linears of one Hessian site with the same dead
 * columns (q/k/v, an expert's gate/up) share it. */
struct gfac {
	int site;
	uint8_t *dead;     /* [cols] */
	struct cal_gptq_stats st;
};

static void gfac_free(struct gfac *f, size_t nf)
{
	for (size_t k = 0; k < nf; k++)
		free(f[k].dead);
}

/* The linears from i0 on of the same input dim whose distinct factors fit
 * the budget: their factors f[0 .. *nf) (one gptq_factor op; U k at
 * g->du + k C C on the back end), fac[i] the factor of linear i (-1: an
 * all-zero weight, none), *i1 past the last. */
static enum cal_status factor_chunk(struct cal_calib *c, const float *ga, size_t i0,
				    size_t *i1, struct gfac *f, size_t *nf, int *fac,
				    uint8_t *mask, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	uint64_t C = LIN(g)[i0].r.cols, CC = C * C, per = CC * 8,
		 bytes = cal_gptq_factor_dev_bytes(c->be, C, 0);
	size_t i = i0;
	*nf = 0;
	for (; i < g->r.n_lin && LIN(g)[i].r.cols == C; i++) {
		struct glin *gl = &LIN(g)[i];
		size_t k = 0;
		fac[i] = -1;
		if (!(ga[i] > 0.0f))
			continue;
		cal_gptq_dead_mask(gl->orig, gl->r.rows, C, mask);
		while (k < *nf && (f[k].site != gl->r.site || memcmp(f[k].dead, mask, C)))
			k++;
		if (k == *nf) {
			if (*nf && (bytes + per > GPTQ_FACTOR_BUDGET || *nf == 65535))
				break;
			struct gfac *nk = &f[(*nf)++];
			nk->site = gl->r.site;
			if (!(nk->dead = malloc(C)))
				return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
			memcpy(nk->dead, mask, C);
			bytes += per;
		}
		fac[i] = (int)k;
	}
	*i1 = i;
	if (!*nf)
		return CAL_OK;
	uint8_t *dead = malloc(*nf * C);
	uint64_t *ns = malloc(*nf * sizeof(uint64_t));
	struct cal_gptq_stats *st = calloc(*nf, sizeof(*st));
	enum cal_status rc = CAL_OK;
	if (!dead || !ns || !st) {
		rc = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
		goto out;
	}
	/* one factor reads its site's sums in place; several, copies side by side */
	if ((*nf > 1 && (rc = grow(c, (void **)&g->fh, &g->fh_cap, *nf * CC * 4, err)) < 0) ||
	    (rc = grow(c, (void **)&g->du, &g->du_cap, *nf * CC * 4, err)) < 0 ||
	    (rc = grow(c, &g->fscr, &g->fscr_cap, cal_gptq_factor_dev_bytes(c->be, C, *nf), err)) < 0)
		goto out;
	for (size_t k = 0; k < *nf; k++) {
		/* no rows seen: H = 0, which no damping makes positive
		 * definite: the identity fallback, as modelopt */
		ns[k] = g->hn[f[k].site] ? g->hn[f[k].site] : 1;
		memcpy(dead + k * C, f[k].dead, C);
		if (*nf > 1 &&
		    (rc = cal_backend_copy(c->be, g->fh + k * CC, g->hs[f[k].site], CC * 4, err)) < 0)
			goto out;
	}
	const float *hs = *nf > 1 ? g->fh : g->hs[f[0].site];
	double t0 = cal_now();
	rc = cal_gptq_factor_dev(c->be, C, *nf, hs, dead, ns, &g->o, g->du, g->fscr, st, err);
	g->t_factor += cal_now() - t0; /* it downloads the flags: synchronised */
	if (rc < 0)
		cal_error_wrap(err, rc, "gptq: %s (the factors of %zu linears from it)",
			       mod_name(c, LIN(g)[i0].r.mod), *i1 - i0);
	for (size_t k = 0; k < *nf && rc >= 0; k++)
		f[k].st = st[k];
out:
	free(dead);
	free(ns);
	free(st);
	return rc;
}

/* GPTQ of every linear of the layer; their fake-quantized updated weights
 * go into the shadows of g->use.  The factors are made a chunk of linears
 * at a time (factor_chunk), then each linear's update runs. */
static enum cal_status solve_layer(struct cal_calib *c, const struct cal_layer_host *lh,
				   const struct cal_layer_w *w, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	enum cal_status st = CAL_OK;
	double t0 = cal_now();
	struct cal_layer_w dw = *w;
	float gmax[EQ_COUNT] = {0};
	float *ga = calloc(g->r.n_lin ? g->r.n_lin : 1, sizeof(float));
	int *fac = calloc(g->r.n_lin ? g->r.n_lin : 1, sizeof(int));
	struct gfac *f = calloc(g->r.n_lin ? g->r.n_lin : 1, sizeof(struct gfac));
	uint8_t *mask = NULL;
	size_t nf = 0, i1 = 0;
	uint64_t cmax = 16;
	if ((st = cal_backend_sync(c->be, err)) < 0)
		goto out;
	if (!ga || !fac || !f) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
		goto out;
	}
	for (size_t i = 0; i < g->r.n_lin; i++) {
		struct glin *gl = &LIN(g)[i];
		if ((st = load_linear(c, &dw, gl, err)) < 0)
			goto out;
		if (shared_amax(c, gl))
			gmax[gl->r.site] = gl->ga > gmax[gl->r.site] ? gl->ga : gmax[gl->r.site];
		cmax = gl->r.cols > cmax ? gl->r.cols : cmax;
	}
	/* modelopt's max calibration gives the static-NVFP4 weights of a
	 * fusible group (q/k/v, gate/up) one global amax, the group's largest,
	 * before GPTQ runs; the other siblings (MLA q_a / kv_a, the Gated
	 * DeltaNet in_proj_*) keep their own until the export */
	for (size_t i = 0; i < g->r.n_lin; i++)
		ga[i] = shared_amax(c, &LIN(g)[i]) ? gmax[LIN(g)[i].r.site] : LIN(g)[i].ga;
	if (!(mask = malloc(cmax))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
		goto out;
	}
	for (size_t i = 0; i < g->r.n_lin; i++) {
		struct glin *gl = &LIN(g)[i];
		uint64_t R = gl->r.rows, C = gl->r.cols, n = R * C;
		if (i == i1) {
			gfac_free(f, nf);
			memset(f, 0, nf * sizeof(*f));
			if ((st = factor_chunk(c, ga, i, &i1, f, &nf, fac, mask, err)) < 0)
				goto out;
		}
		gl->n_samples = g->hn[gl->r.site];
		/* the update runs on a contiguous copy of the original weight (the
		 * engine's row order) */
		if ((st = grow(c, (void **)&g->wsrc, &g->wsrc_cap, n * 2, err)) < 0 ||
		    (st = grow(c, (void **)&g->wdst, &g->wdst_cap, n * 2, err)) < 0 ||
		    (st = cal_backend_upload(c->be, g->wsrc, gl->orig, n * 2, err)) < 0 ||
		    (st = grow(c, (void **)&g->bamax, &g->bamax_cap, n / 16 * 4, err)) < 0 ||
		    (st = cal_backend_upload(c->be, g->bamax, gl->ba, n / 16 * 4, err)) < 0)
			goto out;
		if (fac[i] >= 0) {
			/* the update on the back end, with the chunk's U of its
			 * factor (the gptq_factor op) */
			const struct gfac *fk = &f[fac[i]];
			uint64_t bs = g->o.block_size;
			gl->st = fk->st;
			if ((st = grow(c, (void **)&g->work, &g->work_cap, (C + bs) * R * 4, err)) < 0)
				goto out;
			struct cal_gptq_update_args ua = {g->wsrc, R, C, g->du + (uint64_t)fac[i] * C * C,
							  g->bamax, ga[i], 448.0f, g->div, (uint32_t)bs,
							  g->work, g->wdst};
			if ((st = cal_op_gptq_update(c->be, &ua, err)) < 0)
				goto out;
		} /* else all-zero weights: nothing to update */
		else if ((st = cal_backend_copy(c->be, g->wdst, g->wsrc, n * 2, err)) < 0) {
			goto out;
		}
		if ((st = cal_backend_download(c->be, gl->orig, g->wdst, n * 2, err)) < 0)
			goto out;
		cal_lin_to_ckpt(&gl->r, gl->r.w, gl->orig, C); /* the exporter's row order */
		/* pass 2 quantizes the updated weight with the same scales, in the
		 * shadows of its fields (the scratch buffers are reused by the next
		 * linear: wait) */
		if ((st = fq_static(c, g->wdst, g->wdst, R, C, g->bamax, ga[i], err)) < 0)
			goto out;
		for (int k = 0, r0 = 0; k < gl->r.n_part; r0 += (int)gl->r.part[k++].rows) {
			const struct cal_lin_part *pt = &gl->r.part[k];
			if ((st = shadow_of(c, lh, &dw, pt->f, err)) < 0 ||
			    (st = cal_backend_copy(c->be, g->shadow[pt->f] + pt->at,
						   g->wdst + (uint64_t)r0 * C, pt->rows * C * 2, err)) < 0)
				goto out;
		}
		if ((st = cal_backend_sync(c->be, err)) < 0)
			goto out;
		json_t *o = json_pack("{s:s, s:i, s:I, s:I, s:f, s:b, s:o}", "module",
				      mod_name(c, gl->r.mod), "layer", (int)g->r.L, "n_samples",
				      (json_int_t)gl->n_samples, "dead_columns",
				      (json_int_t)gl->st.dead_cols, "damp", gl->st.damp, "fallback",
				      gl->st.fallback, "relative_error", json_null());
		if (o)
			json_array_append_new(g->r.report, o);
		if (gl->st.fallback)
			json_array_append_new(g->fallback, json_string(mod_name(c, gl->r.mod)));
	}
out:
	for (size_t i = 0; i < g->r.n_lin; i++) {
		free(LIN(g)[i].orig);
		free(LIN(g)[i].ba);
		LIN(g)[i].orig = NULL;
		LIN(g)[i].ba = NULL;
	}
	if (f)
		gfac_free(f, nf);
	free(f);
	free(fac);
	free(ga);
	free(mask);
	if (st >= 0)
		st = cal_backend_sync(c->be, err);
	g->r.t += cal_now() - t0;
	return st;
}

static enum cal_status pass_begin(struct cal_calib *c, int32_t L, int pass,
				  const struct cal_layer_host *lh, const struct cal_layer_w *w,
				  const struct cal_layer_w **use, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	if (pass == 0) {
		g->use = *w;
		CAL_TRY_RET(hessians(c, err));
		return save_input(c, 0, err);
	}
	if (pass == 1) {
		uint64_t cap = 0;
		/* the statistics are pass 0's: keep them through passes 1 and 2 */
		if (!g->obs_save) {
			CAL_TRY_RET(grow(c, (void **)&g->obs_save, &cap, c->n_slots * 4, err));
			cap = 0;
			CAL_TRY_RET(grow(c, (void **)&g->nf_save, &cap,
					 c->n_slots * sizeof(struct cal_nonfinite), err));
		}
		CAL_TRY_RET(cal_backend_copy(c->be, g->obs_save, c->obs_amax, c->n_slots * 4, err));
		CAL_TRY_RET(cal_backend_copy(c->be, g->nf_save, c->obs_nf,
					     c->n_slots * sizeof(struct cal_nonfinite), err));
		if (c->moe[L].tokens)
			memcpy(g->tok_save, c->moe[L].tokens, (size_t)c->E * sizeof(uint64_t));
		CAL_TRY_RET(site_scales(c, L, err));
		if (c->nranks > 1)
			CAL_TRY_RET(stash_alloc(c, err));
		return save_input(c, 1, err);
	}
	CAL_TRY_RET(solve_layer(c, lh, w, err));
	CAL_TRY_RET(experts_qdq(c, L, lh, err));
	CAL_TRY_RET(save_input(c, 1, err));
	*use = &g->use;
	return CAL_OK;
}

static enum cal_status pass_end(struct cal_calib *c, int32_t L, int pass,
				const struct cal_layer_w *w, struct cal_error *err)
{
	struct cal_gptq_run *g = run(c);
	(void)w;
	if (pass < 2)
		return CAL_OK;
	CAL_TRY_RET(cal_backend_copy(c->be, c->obs_amax, g->obs_save, c->n_slots * 4, err));
	CAL_TRY_RET(cal_backend_copy(c->be, c->obs_nf, g->nf_save,
				     c->n_slots * sizeof(struct cal_nonfinite), err));
	if (c->moe[L].tokens)
		memcpy(c->moe[L].tokens, g->tok_save, (size_t)c->E * sizeof(uint64_t));
	return CAL_OK;
}

static json_t *params(const struct cal_calib *c)
{
	const struct cal_gptq_run *g = run(c);
	return json_pack("{s:f, s:I, s:O, s:f}", "perc_damp", g->o.perc_damp, "block_size",
			 (json_int_t)g->o.block_size, "fallback", g->fallback, "factor_s",
			 g->t_factor);
}

const struct cal_lin_algo cal_gptq_algo = {
	.method = CAL_CALIB_GPTQ, .name = "gptq", .key = "gptq", .time_key = "solve_s",
	.passes = 3, .site_pass = 1, .all_sites = 1, .site_writes = 1,
	.obs_dropped = 1u << 1 | 1u << 2, .sites_only = 1u << 1, .check = cal_calib_check_gptq, .params = params,
	.size = sizeof(struct cal_gptq_run), .lin_size = sizeof(struct glin),
	.init = gptq_init, .release = release,
	.free = gptq_free, .begin = pass_begin, .site = gptq_site, .round_end = round_end,
	.end = pass_end,
};
