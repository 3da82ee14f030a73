/*
 * awq_run.c — AWQ-lite in the calibration forward (docs/awq.md "In the
 * engine"): modelopt 0.47's `awq_lite` on INT4 block weights.
 *
 * Not layerwise: every decoder layer runs once, as for max calibration, on
 * the unquantized outputs of the layer before.  While it runs
 * (cal_awq_pass_begin .. _end), layer.c's actq sites hand each searched
 * linear's input rows to cal_awq_site, which appends them to a host cache
 * per site (q/k/v share one, gate/up one).  After the layer's forward, per
 * linear, cal_awq_lite_int4 (awq.c) searches the scale from the cached
 * rows, one calibration step per micro-batch (the size of the first one;
 * modelopt's statistics are per forward step); then the export fold:
 * cal_resmooth_group over q/k/v, a dense MLP's gate/up and a shared
 * expert's gate/up, and cal_awq_fuse_norm of the shared scale into
 * input_layernorm (q/k/v) and a dense MLP's post_attention_layernorm
 * (gate/up).  The exporter gets the folded weights, the pre_quant_scale
 * of the linears whose group is not fused, and the fused norms
 * (engine/quantize.c).
 *
 * Which linears: attention q/k/v/o, dense MLP and shared-expert
 * gate/up/down; the routed experts keep max calibration (modelopt's fused
 * experts are not nn.Linear modules).
 *
 * Memory (host): the cached inputs of the layer, per distinct input, T x
 * cols bf16 (T calibration tokens: q/k/v T x H, o_proj T x heads*head_dim,
 * gate/up T x H, down T x I, the shared expert's likewise), freed after the
 * layer's search; the folded weights, scales and norms of the last layer
 * (kept for the exporter).  No token subsampling (modelopt's awq_lite
 * searches on every calibration token).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/awq.h"
#include "engine/calib/calib_internal.h"

/* One linear the search runs on. */
struct alin {
	struct cal_lin_ref r;
	uint16_t *w;       /* host: the folded bf16 weight */
	uint16_t *pqs;     /* host [cols] bf16: its pre_quant_scale */
	int exported_pqs;  /* the exporter writes pqs (group not fused into a norm) */
	float alpha;       /* -1: not searched (no token) */
	int quant_in;      /* an enabled input quantizer (nvfp4_awq) */
	float in_amax;     /* its amax after the fold (searched linears) */
	float *clip;       /* awq_full: host [rows * cols / 128] clipped block amax, or NULL */
};

struct cal_awq_run {
	double alpha_step;
	enum cal_awq_wq wq;               /* the search's weight fake quantizer */
	int32_t L;
	struct alin *lin;
	size_t n_lin, cap_lin;
	uint16_t *cache[EQ_COUNT];        /* host [crows, ccols] bf16 */
	uint64_t crows[EQ_COUNT], ccap[EQ_COUNT], ccols[EQ_COUNT], batch[EQ_COUNT];
	int want[EQ_COUNT];
	uint16_t *norm[2];                /* the fused input / post-attention norm, or NULL */
	uint64_t norm_n[2];
	json_t *report;
	double t_search;
	int clip;                         /* awq_full: awq_clip after the search */
	struct cal_awq_clip_opts clip_o;
	double t_clip;
};

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
	if (!why && d->norm == CAL_NORM_RMS_F32W)
		why = "fp32 norm weights";
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
	return cal_linear_algo_refuse(d, "awq_lite", why, "docs/awq.md", err);
}

enum cal_status cal_awq_init(struct cal_calib *c, struct cal_error *err)
{
	const struct cal_algorithm *a = &c->plan->recipe->algo;
	CAL_TRY_RET(cal_calib_check_awq(c->plan, err));
	struct cal_awq_run *g = calloc(1, sizeof(*g));
	if (!g)
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	c->aw = g;
	g->alpha_step = a->alpha_step;
	g->clip = a->awq_clip;
	g->clip_o = (struct cal_awq_clip_opts){(uint64_t)a->clip_max_tokens, a->clip_min_ratio,
					       a->clip_shrink_step};
	g->wq = awq_wq(c->plan, NULL);
	g->L = -1;
	g->report = json_array();
	if (!g->report)
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	return CAL_OK;
}

static void drop_layer(struct cal_awq_run *g)
{
	for (size_t i = 0; i < g->n_lin; i++)
		CAL_FREE_ALL(g->lin[i].w, g->lin[i].pqs, g->lin[i].clip);
	g->n_lin = 0;
	for (int k = 0; k < 2; k++) {
		free(g->norm[k]);
		g->norm[k] = NULL;
	}
}

static void drop_cache(struct cal_awq_run *g)
{
	for (int s = 0; s < EQ_COUNT; s++) {
		free(g->cache[s]);
		g->cache[s] = NULL;
		g->crows[s] = g->ccap[s] = g->batch[s] = 0;
		g->want[s] = 0;
	}
}

void cal_awq_free(struct cal_calib *c)
{
	struct cal_awq_run *g = c->aw;
	if (!g)
		return;
	drop_layer(g);
	drop_cache(g);
	json_decref(g->report);
	CAL_FREE_ALL(g->lin, g);
	c->aw = NULL;
}

enum cal_status cal_awq_pass_begin(struct cal_calib *c, int32_t L,
				   const struct cal_layer_host *lh, struct cal_error *err)
{
	struct cal_awq_run *g = c->aw;
	const struct cal_plan *p = c->plan;
	drop_layer(g);
	drop_cache(g);
	g->L = L;
	CAL_TRY_RET(cal_layer_linears(c, L, lh, (void **)&g->lin, &g->n_lin, &g->cap_lin,
				      sizeof(*g->lin), err));
	for (size_t i = 0; i < g->n_lin; i++) {
		struct alin *al = &g->lin[i];
		const struct cal_plan_module *m = &p->modules[al->r.mod];
		al->alpha = -1.0f;
		al->quant_in = m->iq >= 0 && p->q[m->iq].spec.enabled;
		g->want[al->r.site] = 1;
		g->ccols[al->r.site] = al->r.cols;
	}
	c->aw_pass = 1;
	return CAL_OK;
}

enum cal_status cal_awq_site(struct cal_calib *c, int site, const uint16_t *x, uint64_t rows,
			     uint64_t cols, struct cal_error *err)
{
	struct cal_awq_run *g = c->aw;
	if (!g->want[site] || !rows)
		return CAL_OK;
	if (cols != g->ccols[site])
		return cal_error_set(err, CAL_ERR_INTERNAL, "awq: site %d input has %llu columns, "
				     "its linears %llu", site, (unsigned long long)cols,
				     (unsigned long long)g->ccols[site]);
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

/* The search for one linear: al->w and al->pqs. */
static enum cal_status search_one(struct cal_calib *c, const struct cal_layer_w *dw,
				  struct alin *al, struct cal_error *err)
{
	struct cal_awq_run *g = c->aw;
	uint64_t n = al->r.rows * al->r.cols;
	const uint16_t *src = *cal_layer_field((struct cal_layer_w *)dw, al->r.f);
	const char *name = c->plan->modules[al->r.mod].name;
	if (!src)
		return cal_error_set(err, CAL_ERR_INTERNAL, "awq: %s has no weight in the layer",
				     name);
	al->w = malloc(n * 2);
	al->pqs = malloc(al->r.cols * 2);
	if (!al->w || !al->pqs)
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	CAL_TRY_RET(cal_backend_download(c->be, al->w, src + al->r.at, n * 2, err));
	uint64_t T = g->crows[al->r.site];
	int finite = 1;
	for (uint64_t k = 0; k < T * al->r.cols && finite; k++)
		finite = isfinite(cal_bf16_to_f32(g->cache[al->r.site][k]));
	if (!T || !finite) { /* not searched: max calibration, all-ones scale */
		for (uint64_t k = 0; k < al->r.cols; k++)
			al->pqs[k] = cal_f32_to_bf16(1.0f);
		return CAL_OK;
	}
	float *wa = malloc(n / (g->wq == CAL_AWQ_WQ_NVFP4 ? 16 : 128) * sizeof(float));
	uint16_t *wf = malloc(n * 2);
	enum cal_status st = CAL_OK;
	if (!wa || !wf) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	} else {
		struct cal_awq_out o = {al->pqs, wf, wa, NULL, 0, 0.0f};
		st = cal_awq_lite(c->host, g->wq, al->w, al->r.rows, al->r.cols, g->cache[al->r.site],
				  T, g->batch[al->r.site], g->alpha_step, &o,
				  al->quant_in ? &al->in_amax : NULL, err);
		if (st >= 0) {
			memcpy(al->w, wf, n * 2);
			al->alpha = o.best_alpha;
		} else {
			st = cal_error_wrap(err, st, "awq: %s", name);
		}
	}
	free(wa);
	free(wf);
	return st;
}

/* awq_full: modelopt's awq_clip on a searched linear (docs/awq.md
 * "awq_full"), on its folded weight and the site's cached inputs times its
 * pre_quant_scale; al->clip, and the report's count of clipped blocks. */
static enum cal_status clip_one(struct cal_calib *c, struct alin *al, json_t *o,
				struct cal_error *err)
{
	struct cal_awq_run *g = c->aw;
	uint64_t nb = al->r.rows * al->r.cols / 128, clipped = 0;
	if (!(al->clip = malloc(nb * sizeof(float))))
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	double t0 = cal_now();
	enum cal_status st = cal_awq_clip_int4(c->host, al->w, al->r.rows, al->r.cols,
					       g->cache[al->r.site], g->crows[al->r.site],
					       g->batch[al->r.site], al->pqs, &g->clip_o, al->clip,
					       err);
	if (st < 0)
		return cal_error_wrap(err, st, "awq_clip: %s", c->plan->modules[al->r.mod].name);
	g->t_clip += cal_now() - t0;
	for (uint64_t b = 0; b < nb; b++) {
		float m = 0.0f;
		for (uint64_t k = 0; k < 128; k++) {
			float a = fabsf(cal_bf16_to_f32(al->w[b * 128 + k]));
			m = a > m ? a : m;
		}
		clipped += al->clip[b] < m;
	}
	json_object_set_new(o, "clipped_blocks", json_integer((json_int_t)clipped));
	return CAL_OK;
}

/* The export fold of the linears reading `site`; norm k (0 input, 1
 * post-attention; -1 none) takes the shared scale. */
static enum cal_status fold_group(struct cal_calib *c, const struct cal_layer_w *dw, int site,
				  int k, struct cal_error *err)
{
	struct cal_awq_run *g = c->aw;
	uint16_t *w[8];
	const uint16_t *pq[8];
	uint64_t rows[8];
	float *wa[8] = {0};
	size_t n = 0, idx[8];
	uint64_t cols = 0;
	enum cal_status st = CAL_OK;
	for (size_t i = 0; i < g->n_lin && n < 8; i++) {
		if (g->lin[i].r.site != site)
			continue;
		idx[n] = i;
		w[n] = g->lin[i].w;
		pq[n] = g->lin[i].pqs;
		rows[n] = g->lin[i].r.rows;
		cols = g->lin[i].r.cols;
		n++;
	}
	if (!n)
		return CAL_OK;
	uint64_t blk = g->wq == CAL_AWQ_WQ_NVFP4 ? 16 : 128;
	uint16_t *avg = malloc(cols * 2);
	if (!avg)
		return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	for (size_t i = 0; i < n && st >= 0; i++)
		if (!(wa[i] = malloc(rows[i] * cols / blk * sizeof(float))))
			st = cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
	if (st >= 0)
		st = cal_resmooth_group(w, rows, n, cols, blk, pq, avg, wa, NULL, err);
	for (size_t i = 0; i < n && st >= 0; i++) {
		struct alin *al = &g->lin[idx[i]];
		if (al->clip && memcmp(al->pqs, avg, cols * 2)) { /* re-folded: max amax */
			free(al->clip);
			al->clip = NULL;
		}
		memcpy(al->pqs, avg, cols * 2);
		al->exported_pqs = k < 0;
	}
	if (st >= 0 && k >= 0) {
		const void *nw = k ? dw->post_norm : dw->in_norm;
		enum cal_dtype dt = k ? dw->post_norm_dt : dw->in_norm_dt;
		if (dt != CAL_DTYPE_BF16) {
			st = cal_error_set(err, CAL_ERR_UNSUPPORTED, "awq: layer %d: a %s norm weight "
					   "is not bf16", (int)g->L, k ? "post-attention" : "input");
		} else if (!(g->norm[k] = malloc(cols * 2))) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
		} else {
			g->norm_n[k] = cols;
			st = cal_backend_download(c->be, g->norm[k], nw, cols * 2, err);
			if (st >= 0)
				cal_awq_fuse_norm(g->norm[k], avg, cols, c->d->norm == CAL_NORM_RMS_1P);
		}
	}
	for (size_t i = 0; i < n; i++)
		free(wa[i]);
	free(avg);
	return st;
}

/* nvfp4_awq (docs/awq.md "Export" step 1): o_proj's scale into v_proj's
 * output rows, a dense MLP's down_proj's into up_proj's, where modelopt
 * does it (cal_plan_awq_fuses_prev); before the shared-input groups. */
static enum cal_status fuse_prev(struct cal_calib *c, struct cal_error *err)
{
	struct cal_awq_run *g = c->aw;
	const struct cal_plan *p = c->plan;
	for (size_t i = 0; i < g->n_lin; i++) {
		struct alin *al = &g->lin[i];
		const struct cal_plan_module *m = &p->modules[al->r.mod];
		if (!cal_plan_awq_fuses_prev(p, al->r.mod))
			continue;
		const char *into = m->kind == CAL_MOD_ATTN_PROJ ? "v_proj" : "up_proj";
		struct alin *dst = NULL;
		for (size_t j = 0; j < g->n_lin && !dst; j++) {
			const struct cal_plan_module *mj = &p->modules[g->lin[j].r.mod];
			if (mj->kind == m->kind && mj->proj && !strcmp(mj->proj, into))
				dst = &g->lin[j];
		}
		if (!dst || dst->r.rows != al->r.cols)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "awq: %s: its pre_quant_scale "
					     "folds into %s, which is not a quantized linear of %llu "
					     "outputs (docs/awq.md)", m->name, into,
					     (unsigned long long)al->r.cols);
		cal_awq_fuse_rows(dst->w, dst->r.rows, dst->r.cols, al->pqs);
		al->exported_pqs = 0;
	}
	return CAL_OK;
}

enum cal_status cal_awq_pass_end(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				 struct cal_error *err)
{
	struct cal_awq_run *g = c->aw;
	double t0 = cal_now();
	c->aw_pass = 0;
	CAL_TRY_RET(cal_backend_sync(c->be, err));
	for (size_t i = 0; i < g->n_lin; i++) {
		struct alin *al = &g->lin[i];
		CAL_TRY_RET(search_one(c, w, al, err));
		al->exported_pqs = 1;
		json_t *o = json_pack("{s:s, s:i, s:I}", "module", c->plan->modules[al->r.mod].name,
				      "layer", (int)L, "n_samples", (json_int_t)g->crows[al->r.site]);
		if (!o)
			return cal_error_set(err, CAL_ERR_NOMEM, "awq: out of memory");
		json_object_set_new(o, "alpha", al->alpha < 0 ? json_null()
							       : json_real(al->alpha));
		json_array_append_new(g->report, o);
		if (g->clip && al->alpha >= 0.0f)
			CAL_TRY_RET(clip_one(c, al, o, err));
	}
	drop_cache(g);
	CAL_TRY_RET(fuse_prev(c, err));
	CAL_TRY_RET(fold_group(c, w, EQ_QKV, 0, err));
	CAL_TRY_RET(fold_group(c, w, EQ_MLP_GU, 1, err));
	CAL_TRY_RET(fold_group(c, w, EQ_SH_GU, -1, err));
	g->t_search += cal_now() - t0;
	return CAL_OK;
}

void cal_awq_map_amax(struct cal_calib *c, int32_t L)
{
	struct cal_awq_run *g = c->aw;
	for (size_t i = 0; g->L == L && i < g->n_lin; i++) {
		const struct alin *al = &g->lin[i];
		long iq = c->plan->modules[al->r.mod].iq;
		if (al->quant_in && al->alpha >= 0.0f && iq >= 0) {
			c->q_amax[iq] = al->in_amax;
			c->q_has[iq] = 1;
		}
	}
}

const uint16_t *cal_calib_awq_weight(const struct cal_calib *c, size_t mod, uint64_t *numel,
				     const uint16_t **pqs)
{
	const struct cal_awq_run *g = c->aw;
	for (size_t i = 0; g && i < g->n_lin; i++)
		if (g->lin[i].r.mod == mod && g->lin[i].w) {
			*numel = g->lin[i].r.rows * g->lin[i].r.cols;
			*pqs = g->lin[i].exported_pqs ? g->lin[i].pqs : NULL;
			return g->lin[i].w;
		}
	return NULL;
}

const float *cal_calib_awq_clip(const struct cal_calib *c, size_t mod, uint64_t *n)
{
	const struct cal_awq_run *g = c->aw;
	for (size_t i = 0; g && i < g->n_lin; i++)
		if (g->lin[i].r.mod == mod && g->lin[i].clip) {
			*n = g->lin[i].r.rows * g->lin[i].r.cols / 128;
			return g->lin[i].clip;
		}
	return NULL;
}

const uint16_t *cal_calib_awq_norm(const struct cal_calib *c, int post_attention,
				   uint64_t *numel)
{
	const struct cal_awq_run *g = c->aw;
	if (!g || !g->norm[post_attention ? 1 : 0])
		return NULL;
	*numel = g->norm_n[post_attention ? 1 : 0];
	return g->norm[post_attention ? 1 : 0];
}

json_t *cal_awq_stats(const struct cal_calib *c)
{
	const struct cal_awq_run *g = c->aw;
	if (!g)
		return NULL;
	json_t *o = json_pack("{s:f, s:O, s:f}", "alpha_step", g->alpha_step, "linears",
			      g->report, "search_s", g->t_search);
	if (o && g->clip) /* awq_full: awq_clip's options and time (within search_s) */
		json_object_set_new(o, "clip", json_pack("{s:I, s:f, s:f, s:f}",
							 "max_tokens_per_batch",
							 (json_int_t)g->clip_o.max_tokens,
							 "min_clip_ratio", g->clip_o.min_ratio,
							 "shrink_step", g->clip_o.step,
							 "clip_s", g->t_clip));
	return o;
}
