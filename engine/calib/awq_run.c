/*
 * awq_run.c — AWQ-lite in the calibration forward (docs/awq.md "In the
 * engine"): modelopt 0.47's `awq_lite` (and awq_full / awq_clip) on INT4
 * block, W4A8 AWQ or NVFP4 weights, a linear run (lin_run.c) of one pass.
 *
 * Not layerwise: every decoder layer runs once, as for max calibration, on
 * the unquantized outputs of the layer before.  While it runs
 * (pass_begin .. _end), layer.c's actq sites hand each searched linear's
 * input rows to awq_site, which appends them to a host cache
 * per site (q/k/v share one, gate/up one; MLA's q_a / kv_a one).  After the layer's forward, per
 * linear, cal_awq_lite_bias (awq.c) searches the scale from the cached
 * rows, one calibration step per micro-batch (the size of the first one;
 * modelopt's statistics are per forward step), its GEMMs on the engine's
 * back end (docs/awq.md "What runs where"); then the export fold:
 * cal_lin_resmooth over q/k/v (MLA: q_a_proj and kv_a_proj_with_mqa, or
 * q_proj and kv_a_proj_with_mqa; a Gated DeltaNet layer's in_proj), a
 * dense MLP's gate/up and a shared expert's gate/up, and cal_awq_fuse_norm
 * of the shared scale into input_layernorm (q/k/v, MLA's pair, in_proj)
 * and a dense MLP's post_attention_layernorm (gate/up) where
 * cal_plan_awq_fuses_norm says so (docs/awq.md "MLA", "Qwen3-Next and
 * Qwen3.5-MoE").  The exporter gets the folded weights, the
 * pre_quant_scale of the linears whose group is not fused, and the fused
 * norms (engine/quantize.c).
 *
 * Which linears: attention q/k/v/o (gated attention's too; MLA: q_a, q_b
 * or q, kv_a, kv_b, o, where q_b_proj and kv_b_proj read their own norm's
 * output alone and keep their pre_quant_scale), Gated DeltaNet in_proj /
 * out_proj, dense MLP and shared-expert gate/up/down (lin_run.c's
 * cal_lin_layout; searched in the checkpoint's row order, cal_lin_load);
 * the routed experts keep max calibration (modelopt's fused
 * experts are not nn.Linear modules).  Attention biases (GPT-OSS's q/k/v/o,
 * Qwen2's q/k/v) are inside the search's outputs (lin_bias); GPT-OSS's
 * fp32 norms are fused as bf16.
 *
 * Memory (host): the cached inputs of the layer, per distinct input, T x
 * cols bf16 (T calibration tokens: q/k/v T x H, o_proj T x heads*head_dim,
 * gate/up T x H, down T x I, the shared expert's likewise; MLA: q_a / kv_a
 * T x H, q_b T x q_lora_rank, kv_b T x kv_lora_rank), freed after the
 * layer's search; the folded weights, scales and norms of the last layer
 * (kept for the exporter).  No token subsampling (modelopt's awq_lite
 * searches on every calibration token).  Back end: the search's chunk of
 * tokens and two weights while it runs (awq.c; search_bytes).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/awq.h"
#include "engine/calib/calib_internal.h"

/* One linear the search runs on: lin_run.c's (w: the folded weight; pqs:
 * its pre_quant_scale, exported unless its group's is fused into a norm or
 * the previous linear; in_amax: its input amax after the fold, searched
 * linears), then AWQ's own. */
struct alin {
	struct cal_lin r;
	float alpha;       /* -1: not searched (no token; awq_clip alone: every linear) */
	int seen;          /* its cached inputs are there and finite */
	float *clip;       /* awq_full / awq_clip: host [rows * cols / 128] clipped block
			    * amax (INT4), [1] the clipped global amax (NVFP4), or NULL */
};

struct cal_awq_run {
	struct cal_lin_run r;
	double alpha_step;
	enum cal_awq_wq wq;               /* the search's weight fake quantizer */
	uint16_t *cache[EQ_COUNT];        /* host [crows, ccols] bf16 */
	uint64_t crows[EQ_COUNT], ccap[EQ_COUNT], batch[EQ_COUNT];
	uint16_t *norm[2];                /* the fused input / post-attention norm, or NULL */
	uint64_t norm_n[2];
	int clip;                         /* awq_full: awq_clip after the search */
	int no_search;                    /* awq_clip alone: no awq_lite search */
	int w4a8;                         /* W4A8 weights: the clip is discarded */
	struct cal_awq_clip_opts clip_o;
	double t_clip;
};

static struct cal_awq_run *run(const struct cal_calib *c)
{
	return (struct cal_awq_run *)(void *)c->lr;
}

#define LIN(g) ((struct alin *)(g)->r.lin)

/* NVFP4 when the recipe's linears have NVFP4 weights (nvfp4_awq), else
 * INT4 blocks (the plan refuses other weight formats with awq_lite);
 * *mixed: both kinds in one recipe. */
static enum cal_awq_wq awq_wq(const struct cal_plan *p, int *mixed)
{
	int nv = 0, i4 = 0;
	for (size_t i = 0; i < p->n_q; i++)
		if (p->q[i].role == CAL_QROLE_WEIGHT && p->q[i].spec.enabled) {
			nv |= p->q[i].spec.fmt == CAL_QFMT_NVFP4;
			i4 |= p->q[i].spec.fmt == CAL_QFMT_INT4_BLOCK ||
			      p->q[i].spec.fmt == CAL_QFMT_W4A8_AWQ; /* its INT4 stage */
		}
	if (mixed)
		*mixed = nv && i4;
	return nv ? CAL_AWQ_WQ_NVFP4 : CAL_AWQ_WQ_INT4;
}

enum cal_status cal_calib_check_awq(const struct cal_plan *p, struct cal_error *err)
{
	const struct cal_model_desc *d = p->model;
	if (p->recipe->algo.method != CAL_CALIB_AWQ_LITE)
		return CAL_OK;
	const char *why = cal_linear_algo_model_why(d);
	int mixed;
	enum cal_awq_wq wq = awq_wq(p, &mixed);
	if (!why && mixed)
		why = "INT4 and NVFP4 weights in one recipe";
	for (size_t i = 0; !why && i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		/* NVFP4 inputs with NVFP4 weights: nvfp4_awq; FP8 inputs with W4A8
		 * AWQ weights (the plan pairs them): w4a8_awq */
		int nvfp4_in = q->spec.fmt == CAL_QFMT_NVFP4 && wq == CAL_AWQ_WQ_NVFP4;
		int fp8_in = q->spec.fmt == CAL_QFMT_FP8 && wq == CAL_AWQ_WQ_INT4;
		why = q->spec.enabled && q->role == CAL_QROLE_INPUT && !nvfp4_in && !fp8_in
			      ? "quantized inputs other than NVFP4 with NVFP4 weights or FP8 with "
				"W4A8 AWQ weights"
			      : cal_linear_algo_q_why(p, q);
	}
	return cal_linear_algo_refuse(d, p->recipe->algo.name, why, "docs/awq.md", err);
}

static enum cal_status awq_init(struct cal_calib *c, struct cal_error *err)
{
	struct cal_awq_run *g = run(c);
	(void)err;
	const struct cal_algorithm *a = &c->plan->recipe->algo;
	g->alpha_step = a->alpha_step;
	g->wq = awq_wq(c->plan, NULL);
	g->clip = a->awq_clip;
	g->no_search = a->awq_no_search;
	for (size_t i = 0; i < c->plan->n_q; i++)
		g->w4a8 |= c->plan->q[i].role == CAL_QROLE_WEIGHT && c->plan->q[i].spec.enabled &&
			   c->plan->q[i].spec.fmt == CAL_QFMT_W4A8_AWQ;
	g->clip_o = (struct cal_awq_clip_opts){(uint64_t)a->clip_max_tokens, a->clip_min_ratio,
					       a->clip_shrink_step,
					       g->wq == CAL_AWQ_WQ_NVFP4 || a->awq_no_search};
	return CAL_OK;
}

static void drop_cache(struct cal_awq_run *g)
{
	for (int s = 0; s < EQ_COUNT; s++) {
		free(g->cache[s]);
		g->cache[s] = NULL;
		g->crows[s] = g->ccap[s] = g->batch[s] = 0;
	}
}

static void drop_layer(struct cal_calib *c)
{
	struct cal_awq_run *g = run(c);
	for (size_t i = 0; i < g->r.n_lin; i++) {
		free(LIN(g)[i].clip);
		LIN(g)[i].clip = NULL;
	}
	for (int k = 0; k < 2; k++) {
		free(g->norm[k]);
		g->norm[k] = NULL;
	}
	drop_cache(g);
}

static enum cal_status awq_site(struct cal_calib *c, int32_t L, int site, int64_t expert,
				uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_awq_run *g = run(c);
	(void)L, (void)expert;
	if (g->crows[site] + rows > g->ccap[site]) {
		uint64_t nc = g->ccap[site] ? 2 * g->ccap[site] : rows;
		while (nc < g->crows[site] + rows)
			nc *= 2;
		uint16_t *nb = realloc(g->cache[site], nc * cols * 2);
		if (!nb)
			return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory caching %llu "
					     "inputs of %llu columns (docs/awq.md)",
					     (unsigned long long)nc, (unsigned long long)cols);
		g->cache[site] = nb;
		g->ccap[site] = nc;
	}
	if (!g->batch[site])
		g->batch[site] = rows;
	CAL_TRY_RET(cal_backend_download(c->be, g->cache[site] + g->crows[site] * cols, x,
					 rows * cols * 2, err));
	g->crows[site] += rows;
	return CAL_OK;
}

/* The bias of attention linear l where the checkpoint has one (GPT-OSS's
 * q/k/v/o, Qwen2's and Qwen2-MoE's q/k/v, a gated q_proj's in the engine's
 * row order, l->map; NULL for every other linear, and for a two-part one,
 * none of which has a bias): the search's outputs include it, as modelopt's
 * run the whole linear (docs/awq.md "GPT-OSS"). */
static const uint16_t *lin_bias(const struct cal_layer_w *dw, const struct cal_lin *l)
{
	int f = l->n_part != 1 ? -1 : l->f;
	return f == F_WQ ? dw->bq : f == F_WK ? dw->bk : f == F_WV ? dw->bv
	     : f == F_WO ? dw->bo : NULL;
}

/* The back-end memory a search of linear l may take for its chunk of
 * tokens (docs/awq.md "What runs where"): CAL_AWQ_CHUNK_BYTES, or less when
 * the cap (--max-gpu-mem) leaves less beside the search's two weights, but
 * never under CAL_AWQ_MIN_CHUNK_TOKENS tokens (or the site's T, if fewer):
 * a cap that leaves less fails the search's allocation with the cap and
 * the bytes named, wrapped with the linear's name, instead of a search that
 * runs a few tokens a GEMM for hours.  Not the device's free memory: that
 * changes from run to run, and the chunk's token count picks cuBLAS's
 * kernels, so a GPU's bytes would too (a device short of it fails the
 * search's allocation, naming the bytes). */
static uint64_t search_bytes(struct cal_calib *c, const struct cal_lin *l)
{
	struct cal_backend_mem ms;
	uint64_t T = run(c)->crows[l->site];
	uint64_t fr = UINT64_MAX, w = 4 * l->rows * l->cols + 2 * (l->rows + l->cols);
	uint64_t least = (T < CAL_AWQ_MIN_CHUNK_TOKENS ? (T ? T : 1) : CAL_AWQ_MIN_CHUNK_TOKENS) *
			 CAL_AWQ_TOKEN_BYTES(l->rows, l->cols);
	cal_backend_mem_stats(c->be, &ms);
	if (ms.limit)
		fr = ms.limit - (ms.current < ms.limit ? ms.current : ms.limit);
	fr = fr > w ? fr - w : 0;
	fr = fr < least ? least : fr;
	return fr < CAL_AWQ_CHUNK_BYTES ? fr : CAL_AWQ_CHUNK_BYTES;
}

/* err from the search (what: "awq" or "awq_clip") of linear l, named; a
 * search out of capped back-end memory also says what it needed and which
 * option sets the cap. */
static enum cal_status search_failed(struct cal_calib *c, const struct cal_lin *l,
				     const char *what, const char *name, enum cal_status st,
				     struct cal_error *err)
{
	struct cal_backend_mem ms;
	cal_backend_mem_stats(c->be, &ms);
	if (st != CAL_ERR_NOMEM || !ms.limit)
		return cal_error_wrap(err, st, "%s: %s", what, name);
	return cal_error_wrap(err, st,
			      "%s: %s: its search holds the weight twice (%llu bytes) and a chunk "
			      "of up to %d tokens (%llu bytes a token) beside the layer: raise "
			      "--max-gpu-mem",
			      what, name, (unsigned long long)(4 * l->rows * l->cols),
			      CAL_AWQ_MIN_CHUNK_TOKENS,
			      (unsigned long long)CAL_AWQ_TOKEN_BYTES(l->rows, l->cols));
}

/* The search for one linear: al->w and al->pqs. */
static enum cal_status search_one(struct cal_calib *c, const struct cal_layer_w *dw,
				  struct alin *al, struct cal_error *err)
{
	struct cal_awq_run *g = run(c);
	const struct cal_plan_module *m = &c->plan->modules[al->r.mod];
	int quant_in = m->iq >= 0 && c->plan->q[m->iq].spec.enabled; /* nvfp4_awq */
	uint64_t n = al->r.rows * al->r.cols;
	const char *name = m->name;
	al->alpha = -1.0f;
	al->r.w = malloc(n * 2);
	al->r.pqs = malloc(al->r.cols * 2);
	if (!al->r.w || !al->r.pqs)
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	/* the checkpoint's row order, as modelopt's search sees the weight */
	CAL_TRY_RET(cal_lin_load(c, dw, &al->r, al->r.w, 1, err));
	uint64_t T = g->crows[al->r.site];
	int finite = 1;
	for (uint64_t k = 0; k < T * al->r.cols && finite; k++)
		finite = isfinite(cal_bf16_to_f32(g->cache[al->r.site][k]));
	al->seen = T && finite;
	if (!al->seen || g->no_search) { /* max calibration, all-ones scale (awq_clip
					  * alone: the clip only, on the source weight) */
		for (uint64_t k = 0; k < al->r.cols; k++)
			al->r.pqs[k] = cal_f32_to_bf16(1.0f);
		return CAL_OK;
	}
	float *wa = malloc(n / (g->wq == CAL_AWQ_WQ_NVFP4 ? 16 : 128) * sizeof(float));
	uint16_t *wf = malloc(n * 2);
	const uint16_t *db = lin_bias(dw, &al->r);
	/* the bias in the checkpoint's row order, as the weight (eng: the engine's) */
	uint16_t *bias = db ? malloc(al->r.rows * 2) : NULL;
	uint16_t *eng = db && al->r.map ? malloc(al->r.rows * 2) : bias;
	enum cal_status st = CAL_OK;
	if (!wa || !wf || (db && (!bias || !eng)))
		st = cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	else if (db)
		st = cal_backend_download(c->be, eng, db, al->r.rows * 2, err);
	if (st >= 0 && eng != bias)
		cal_lin_to_ckpt(&al->r, bias, eng, 1);
	if (eng != bias)
		free(eng);
	if (st >= 0) {
		struct cal_awq_out o = {al->r.pqs, wf, wa, NULL, 0, 0.0f};
		/* the GEMMs on the engine's back end */
		struct cal_awq_dev dev = {c->be, c->host, search_bytes(c, &al->r)};
		st = cal_awq_lite_bias(&dev, g->wq, al->r.w, bias, al->r.rows, al->r.cols,
				       g->cache[al->r.site], T, g->batch[al->r.site],
				       g->alpha_step, &o, quant_in ? &al->r.in_amax : NULL, err);
		if (st >= 0) {
			memcpy(al->r.w, wf, n * 2);
			al->alpha = o.best_alpha;
			al->r.has_in_amax = quant_in && al->alpha >= 0.0f;
		} else {
			st = search_failed(c, &al->r, "awq", name, st, err);
		}
	}
	CAL_FREE_ALL(wa, wf, bias);
	return st;
}

/* awq_full / awq_clip: modelopt's awq_clip on a linear (docs/awq.md
 * "awq_full", "awq_clip"), on its folded weight and the site's cached
 * inputs times its pre_quant_scale (awq_clip alone: the source weight and
 * the raw inputs); al->clip, and the report's count of clipped blocks (NVFP4:
 * 0 or 1, the tensor, and the clipped amax).  A quantized input gets the amax of the
 * clip pass's inputs.  W4A8: modelopt's closing max calibration of the
 * sequential weight quantizer discards the clip, so only the input amax. */
static enum cal_status clip_one(struct cal_calib *c, struct alin *al, json_t *o,
				struct cal_error *err)
{
	struct cal_awq_run *g = run(c);
	const struct cal_plan_module *m = &c->plan->modules[al->r.mod];
	const uint16_t *x = g->cache[al->r.site], *pqs = g->no_search ? NULL : al->r.pqs;
	uint64_t T = g->crows[al->r.site], n = al->r.rows * al->r.cols;
	int nvfp4 = g->wq == CAL_AWQ_WQ_NVFP4;
	uint64_t nb = nvfp4 ? 1 : n / 128, clipped = 0;
	double t0 = cal_now();
	if (!g->no_search && m->iq >= 0 && c->plan->q[m->iq].spec.enabled) {
		al->r.in_amax = cal_awq_in_amax(x, T, al->r.cols, pqs);
		al->r.has_in_amax = 1;
	}
	if (g->w4a8) {
		g->t_clip += cal_now() - t0;
		return CAL_OK;
	}
	if (!(al->clip = malloc(nb * sizeof(float))))
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	struct cal_awq_dev dev = {c->be, c->host, search_bytes(c, &al->r)};
	enum cal_status st =
		nvfp4 ? cal_awq_clip_nvfp4(&dev, al->r.w, al->r.rows, al->r.cols, x, T,
					   g->batch[al->r.site], pqs, &g->clip_o, al->clip, NULL, err)
		      : cal_awq_clip_int4(c->host, al->r.w, al->r.rows, al->r.cols, x, T,
					  g->batch[al->r.site], pqs, &g->clip_o, al->clip, err);
	if (st < 0)
		return search_failed(c, &al->r, "awq_clip", m->name, st, err);
	g->t_clip += cal_now() - t0;
	for (uint64_t b = 0; b < nb; b++) {
		float mx = 0.0f;
		for (uint64_t k = b * (n / nb); k < (b + 1) * (n / nb); k++)
			mx = fmaxf(mx, fabsf(cal_bf16_to_f32(al->r.w[k])));
		clipped += al->clip[b] < mx;
	}
	json_object_set_new(o, "clipped_blocks", json_integer((json_int_t)clipped));
	if (nvfp4) /* its one "block": the tensor */
		json_object_set_new(o, "clipped_amax", json_real(al->clip[0]));
	return CAL_OK;
}

/* The export fold of the linears reading `site`; norm k (0 input, 1
 * post-attention; -1 none) takes the shared scale where modelopt's export
 * fuses it (cal_plan_awq_fuses_norm: a group of two or more). */
static enum cal_status fold_group(struct cal_calib *c, const struct cal_layer_w *dw, int site,
				  int k, struct cal_error *err)
{
	struct cal_awq_run *g = run(c);
	uint64_t blk = g->wq == CAL_AWQ_WQ_NVFP4 ? 16 : 128;
	const struct cal_lin *l0 = NULL;
	for (size_t i = 0; i < g->r.n_lin && !l0; i++)
		l0 = LIN(g)[i].r.site == site ? &LIN(g)[i].r : NULL;
	if (!l0 || !cal_plan_awq_fuses_norm(c->plan, l0->mod))
		k = -1;
	/* awq_full: a member whose scale the group re-folds loses its clip
	 * (modelopt's export takes the max amax of the re-folded weight) */
	uint16_t *was = NULL;
	size_t ncl = 0;
	for (size_t i = 0; i < g->r.n_lin; i++)
		ncl += LIN(g)[i].r.site == site && LIN(g)[i].clip;
	if (ncl && !(was = malloc(g->r.n_lin * g->r.cols[site] * 2)))
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	for (size_t i = 0; was && i < g->r.n_lin; i++)
		if (LIN(g)[i].r.site == site && LIN(g)[i].clip)
			memcpy(was + i * g->r.cols[site], LIN(g)[i].r.pqs, g->r.cols[site] * 2);
	enum cal_status st = cal_lin_resmooth(c, site, blk, 0, 1, err);
	for (size_t i = 0; i < g->r.n_lin; i++) {
		struct alin *al = &LIN(g)[i];
		if (al->r.site != site)
			continue;
		al->r.pqs_out = k < 0;
		if (al->clip && memcmp(was + i * g->r.cols[site], al->r.pqs, g->r.cols[site] * 2)) {
			free(al->clip);
			al->clip = NULL;
		}
	}
	free(was);
	CAL_TRY_RET(st);
	if (!l0 || k < 0)
		return CAL_OK;
	/* the group's scale (each linear's pqs now) into the norm */
	uint64_t cols = l0->cols;
	const void *nw = k ? dw->post_norm : dw->in_norm;
	enum cal_dtype dt = k ? dw->post_norm_dt : dw->in_norm_dt;
	/* gpt_oss: fp32 norm weights, bf16 values (transformers runs them in
	 * bf16, modelopt fuses and saves them so; docs/gpt_oss.md) */
	int f32 = dt == CAL_DTYPE_F32 && c->d->norm == CAL_NORM_RMS_F32W;
	if (dt != CAL_DTYPE_BF16 && !f32)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "awq: layer %d: a %s norm weight is "
				     "not bf16", (int)g->r.L, k ? "post-attention" : "input");
	float *nf = f32 ? malloc(cols * 4) : NULL;
	if (!(g->norm[k] = malloc(cols * 2)) || (f32 && !nf)) {
		free(nf);
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	}
	g->norm_n[k] = cols;
	enum cal_status st2 = cal_backend_download(c->be, f32 ? (void *)nf : (void *)g->norm[k], nw,
						   cols * (f32 ? 4 : 2), err);
	for (uint64_t i = 0; f32 && st2 >= 0 && i < cols; i++)
		g->norm[k][i] = cal_f32_to_bf16(nf[i]);
	free(nf);
	CAL_TRY_RET(st2);
	cal_awq_fuse_norm(g->norm[k], l0->pqs, cols, c->d->norm == CAL_NORM_RMS_1P);
	return CAL_OK;
}

/* nvfp4_awq (docs/awq.md "Export" step 1): o_proj's scale into v_proj's
 * output rows, a dense MLP's down_proj's into up_proj's, where modelopt
 * does it (cal_plan_awq_fuses_prev); before the shared-input groups. */
static enum cal_status fuse_prev(struct cal_calib *c, struct cal_error *err)
{
	struct cal_awq_run *g = run(c);
	const struct cal_plan *p = c->plan;
	for (size_t i = 0; i < g->r.n_lin; i++) {
		struct alin *al = &LIN(g)[i];
		const struct cal_plan_module *m = &p->modules[al->r.mod];
		if (!cal_plan_awq_fuses_prev(p, al->r.mod))
			continue;
		const char *into = m->kind == CAL_MOD_ATTN_PROJ ? "v_proj" : "up_proj";
		struct alin *dst = NULL;
		for (size_t j = 0; j < g->r.n_lin && !dst; j++) {
			const struct cal_plan_module *mj = &p->modules[LIN(g)[j].r.mod];
			if (mj->kind == m->kind && mj->proj && !strcmp(mj->proj, into))
				dst = &LIN(g)[j];
		}
		if (dst) { /* modelopt re-takes its amax from the fused weight */
			free(dst->clip);
			dst->clip = NULL;
		}
		if (!dst || dst->r.rows != al->r.cols)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "awq: %s: its pre_quant_scale "
					     "folds into %s, which is not a quantized linear of %llu "
					     "outputs (docs/awq.md)", m->name, into,
					     (unsigned long long)al->r.cols);
		cal_awq_fuse_rows(dst->r.w, dst->r.rows, dst->r.cols, al->r.pqs);
		al->r.pqs_out = 0;
	}
	return CAL_OK;
}

static enum cal_status pass_end(struct cal_calib *c, int32_t L, int pass,
				const struct cal_layer_w *w, struct cal_error *err)
{
	struct cal_awq_run *g = run(c);
	double t0 = cal_now();
	(void)pass;
	CAL_TRY_RET(cal_backend_sync(c->be, err));
	for (size_t i = 0; i < g->r.n_lin; i++) {
		struct alin *al = &LIN(g)[i];
		CAL_TRY_RET(search_one(c, w, al, err));
		al->r.pqs_out = !g->no_search;
		json_t *o = json_pack("{s:s, s:i, s:I}", "module", c->plan->modules[al->r.mod].name,
				      "layer", (int)L, "n_samples", (json_int_t)g->crows[al->r.site]);
		if (!o)
			return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
		json_object_set_new(o, "alpha", al->alpha < 0 ? json_null()
							       : json_real(al->alpha));
		json_array_append_new(g->r.report, o);
		if (g->clip && al->seen)
			CAL_TRY_RET(clip_one(c, al, o, err));
	}
	drop_cache(g);
	if (g->no_search) { /* no pre_quant_scale: nothing to fold */
		g->r.t += cal_now() - t0;
		return CAL_OK;
	}
	CAL_TRY_RET(fuse_prev(c, err));
	CAL_TRY_RET(fold_group(c, w, EQ_QKV, 0, err));
	CAL_TRY_RET(fold_group(c, w, EQ_MLP_GU, 1, err));
	CAL_TRY_RET(fold_group(c, w, EQ_SH_GU, -1, err));
	g->r.t += cal_now() - t0;
	return CAL_OK;
}

const uint16_t *cal_calib_awq_norm(const struct cal_calib *c, int post_attention,
				   uint64_t *numel)
{
	const struct cal_awq_run *g = c->lr && c->lr->a == &cal_awq_algo ? run(c) : NULL;
	if (!g || !g->norm[post_attention ? 1 : 0])
		return NULL;
	*numel = g->norm_n[post_attention ? 1 : 0];
	return g->norm[post_attention ? 1 : 0];
}

static json_t *params(const struct cal_calib *c)
{
	const struct cal_awq_run *g = run(c);
	json_t *o = json_pack("{s:f}", "alpha_step", g->alpha_step);
	if (o && g->clip) /* awq_full: awq_clip's options and time (within the search's) */
		json_object_set_new(o, "clip", json_pack("{s:I, s:f, s:f, s:f}",
							 "max_tokens_per_batch",
							 (json_int_t)g->clip_o.max_tokens,
							 "min_clip_ratio", g->clip_o.min_ratio,
							 "shrink_step", g->clip_o.step,
							 "clip_s", g->t_clip));
	return o;
}

const struct cal_lin_algo cal_awq_algo = {
	.method = CAL_CALIB_AWQ_LITE, .name = "awq", .key = "awq_lite", .time_key = "search_s",
	.passes = 1, .check = cal_calib_check_awq, .params = params, .init = awq_init,
	.size = sizeof(struct cal_awq_run), .lin_size = sizeof(struct alin),
	.drop_layer = drop_layer, .site = awq_site, .end = pass_end,
};

const float *cal_calib_awq_clip(const struct cal_calib *c, size_t mod, uint64_t *n)
{
	const struct cal_awq_run *g = c->lr && c->lr->a->method == CAL_CALIB_AWQ_LITE ? run(c) : NULL;
	for (size_t i = 0; g && i < g->r.n_lin; i++)
		if (LIN(g)[i].r.mod == mod && LIN(g)[i].clip) {
			*n = g->wq == CAL_AWQ_WQ_NVFP4 ? 1 : LIN(g)[i].r.rows * LIN(g)[i].r.cols / 128;
			return LIN(g)[i].clip;
		}
	return NULL;
}
