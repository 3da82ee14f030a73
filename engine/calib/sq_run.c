/*
 * sq_run.c — SmoothQuant in the calibration forward (docs/smoothquant.md
 * "In the engine"): modelopt 0.47's `smoothquant` on INT8 linears.
 *
 * Not layerwise, as modelopt: each decoder layer runs once, as for max
 * calibration.  While it runs (cal_sq_pass_begin .. _end), layer.c's actq
 * sites hand each smoothed linear's input to cal_sq_site, which folds it
 * into a per-input-channel max |x| on the back end (op amax_cols; one
 * [cols] vector per site: q/k/v share one, gate/up one).  After the
 * forward, per linear, cal_smoothquant (smoothquant.c) computes the scale,
 * the folded weight and the input amax after smoothing; then the export's
 * resmoothing of each shared-input group (cal_resmooth_group, per output
 * channel) and the group's input amax (their max).  cal_sq_map_layer puts
 * those input amaxes in place of the observed per-tensor ones; the exporter
 * gets the folded weights and every smoothed linear's pre_quant_scale
 * (engine/quantize.c).
 *
 * Which linears: attention q/k/v/o, dense MLP and shared-expert
 * gate/up/down; the routed experts keep max calibration (modelopt's fused
 * experts are not nn.Linear modules).
 *
 * Memory: on the back end `in` floats per distinct input of the layer
 * (q/k/v H, o_proj heads*head_dim, gate/up H, down I, the shared expert's
 * likewise); on the host the folded weights and scales of the last layer,
 * kept for the exporter.
 */
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "engine/awq.h"
#include "engine/calib/calib_internal.h"
#include "engine/smoothquant.h"

/* One smoothed linear. */
struct slin {
	struct cal_lin_ref r;
	uint16_t *w;       /* host: the folded bf16 weight */
	uint16_t *pqs;     /* host [cols] bf16: its pre_quant_scale */
	float in_amax;     /* the input amax after smoothing (the group's max) */
};

struct cal_sq_run {
	double alpha;
	int32_t L;
	struct slin *lin;
	size_t n_lin, cap_lin;
	float *amax[EQ_COUNT];            /* back end [cols]: per-channel max |x| */
	struct cal_nonfinite *nf[EQ_COUNT];
	uint64_t cols[EQ_COUNT];
	json_t *report;
	double t_smooth;
};

enum cal_status cal_calib_check_sq(const struct cal_plan *p, struct cal_error *err)
{
	const struct cal_model_desc *d = p->model;
	if (p->recipe->algo.method != CAL_CALIB_SMOOTHQUANT)
		return CAL_OK;
	const char *why = cal_linear_algo_model_why(d);
	for (size_t i = 0; !why && i < p->n_q; i++)
		why = cal_linear_algo_q_why(p, &p->q[i]);
	return cal_linear_algo_refuse(d, "smoothquant", why, "docs/smoothquant.md", err);
}

enum cal_status cal_sq_init(struct cal_calib *c, struct cal_error *err)
{
	const struct cal_algorithm *a = &c->plan->recipe->algo;
	CAL_TRY_RET(cal_calib_check_sq(c->plan, err));
	struct cal_sq_run *g = calloc(1, sizeof(*g));
	if (!g)
		return cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
	c->sq = g;
	g->alpha = a->sq_alpha;
	g->L = -1;
	g->report = json_array();
	if (!g->report)
		return cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
	return CAL_OK;
}

static void drop_layer(struct cal_calib *c)
{
	struct cal_sq_run *g = c->sq;
	for (size_t i = 0; i < g->n_lin; i++) {
		free(g->lin[i].w);
		free(g->lin[i].pqs);
	}
	g->n_lin = 0;
	for (int s = 0; s < EQ_COUNT; s++) {
		cal_backend_dealloc(c->be, g->amax[s]);
		cal_backend_dealloc(c->be, g->nf[s]);
		g->amax[s] = NULL;
		g->nf[s] = NULL;
		g->cols[s] = 0;
	}
}

void cal_sq_free(struct cal_calib *c)
{
	struct cal_sq_run *g = c->sq;
	if (!g)
		return;
	drop_layer(c);
	free(g->lin);
	json_decref(g->report);
	free(g);
	c->sq = NULL;
}

enum cal_status cal_sq_pass_begin(struct cal_calib *c, int32_t L,
				  const struct cal_layer_host *lh, struct cal_error *err)
{
	struct cal_sq_run *g = c->sq;
	drop_layer(c);
	g->L = L;
	CAL_TRY_RET(cal_layer_linears(c, L, lh, (void **)&g->lin, &g->n_lin, &g->cap_lin,
				      sizeof(*g->lin), err));
	for (size_t i = 0; i < g->n_lin; i++) { /* one per-channel amax per site */
		const struct cal_lin_ref *r = &g->lin[i].r;
		if (g->amax[r->site])
			continue;
		g->cols[r->site] = r->cols;
		CAL_TRY_RET(cal_backend_alloc(c->be, r->cols * 4, (void **)&g->amax[r->site], err));
		CAL_TRY_RET(cal_backend_memset(c->be, g->amax[r->site], 0, r->cols * 4, err));
		CAL_TRY_RET(cal_backend_alloc(c->be, sizeof(struct cal_nonfinite),
					      (void **)&g->nf[r->site], err));
		CAL_TRY_RET(cal_nonfinite_reset(c->be, g->nf[r->site], err));
	}
	c->sq_pass = 1;
	return CAL_OK;
}

enum cal_status cal_sq_site(struct cal_calib *c, int site, const uint16_t *x, uint64_t rows,
			    uint64_t cols, struct cal_error *err)
{
	struct cal_sq_run *g = c->sq;
	if (!g->amax[site] || !rows)
		return CAL_OK;
	if (cols != g->cols[site])
		return cal_error_set(err, CAL_ERR_INTERNAL, "smoothquant: site %d input has %llu "
				     "columns, its linears %llu", site, (unsigned long long)cols,
				     (unsigned long long)g->cols[site]);
	struct cal_amax_cols_args a = {x, rows, cols, 0, g->amax[site], g->nf[site]};
	return cal_op_amax_cols(c->be, &a, err);
}

/* Smoothing of one linear from its site's per-channel amax `act`. */
static enum cal_status smooth_one(struct cal_calib *c, const struct cal_layer_w *dw,
				  struct slin *sl, const float *act, struct cal_error *err)
{
	struct cal_sq_run *g = c->sq;
	uint64_t n = sl->r.rows * sl->r.cols;
	const uint16_t *src = *cal_layer_field((struct cal_layer_w *)dw, sl->r.f);
	const char *name = c->plan->modules[sl->r.mod].name;
	if (!src)
		return cal_error_set(err, CAL_ERR_INTERNAL, "smoothquant: %s has no weight in the "
				     "layer", name);
	uint16_t *w = malloc(n * 2);
	float *wa = malloc(sl->r.rows * sizeof(float));
	sl->w = malloc(n * 2);
	sl->pqs = malloc(sl->r.cols * 2);
	enum cal_status st = CAL_OK;
	if (!w || !wa || !sl->w || !sl->pqs)
		st = cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
	if (st >= 0)
		st = cal_backend_download(c->be, w, src + sl->r.at, n * 2, err);
	if (st >= 0) {
		struct cal_sq_out o = {sl->pqs, sl->w, wa, 0.0f};
		st = cal_smoothquant(w, sl->r.rows, sl->r.cols, act, (float)g->alpha, &o, err);
		if (st < 0)
			st = cal_error_wrap(err, st, "smoothquant: %s", name);
		sl->in_amax = o.in_amax;
	}
	free(w);
	free(wa);
	return st;
}

/* The export's resmoothing of the linears reading `site` (docs/smoothquant.md
 * "Export"): one pre_quant_scale, re-folded weights, the group's input amax. */
static enum cal_status resmooth(struct cal_calib *c, int site, struct cal_error *err)
{
	struct cal_sq_run *g = c->sq;
	uint16_t *w[8];
	const uint16_t *pq[8];
	uint64_t rows[8];
	float *wa[8] = {0}, in[8];
	size_t n = 0, idx[8];
	uint64_t cols = g->cols[site];
	enum cal_status st = CAL_OK;
	for (size_t i = 0; i < g->n_lin && n < 8; i++) {
		if (g->lin[i].r.site != site)
			continue;
		idx[n] = i;
		w[n] = g->lin[i].w;
		pq[n] = g->lin[i].pqs;
		rows[n] = g->lin[i].r.rows;
		in[n] = g->lin[i].in_amax;
		n++;
	}
	if (n < 2)
		return CAL_OK;
	uint16_t *avg = malloc(cols * 2);
	if (!avg)
		return cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
	for (size_t i = 0; i < n && st >= 0; i++)
		if (!(wa[i] = malloc(rows[i] * sizeof(float))))
			st = cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
	if (st >= 0)
		st = cal_resmooth_group(w, rows, n, cols, cols, pq, avg, wa, in, err);
	for (size_t i = 0; i < n && st >= 0; i++) {
		memcpy(g->lin[idx[i]].pqs, avg, cols * 2);
		g->lin[idx[i]].in_amax = in[i];
	}
	for (size_t i = 0; i < n; i++)
		free(wa[i]);
	free(avg);
	return st;
}

enum cal_status cal_sq_pass_end(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
				struct cal_error *err)
{
	struct cal_sq_run *g = c->sq;
	double t0 = cal_now();
	float *act[EQ_COUNT] = {0};
	enum cal_status st = CAL_OK;
	c->sq_pass = 0;
	CAL_TRY_RET(cal_backend_sync(c->be, err));
	for (int s = 0; s < EQ_COUNT && st >= 0; s++) {
		if (!g->amax[s])
			continue;
		if (!(act[s] = malloc(g->cols[s] * sizeof(float))))
			st = cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
		else
			st = cal_backend_download(c->be, act[s], g->amax[s], g->cols[s] * 4, err);
	}
	for (size_t i = 0; i < g->n_lin && st >= 0; i++) {
		struct slin *sl = &g->lin[i];
		st = smooth_one(c, w, sl, act[sl->r.site], err);
	}
	if (st >= 0)
		st = resmooth(c, EQ_QKV, err);
	if (st >= 0)
		st = resmooth(c, EQ_MLP_GU, err);
	if (st >= 0)
		st = resmooth(c, EQ_SH_GU, err);
	for (size_t i = 0; i < g->n_lin && st >= 0; i++) {
		json_t *o = json_pack("{s:s, s:i, s:f}", "module",
				      c->plan->modules[g->lin[i].r.mod].name, "layer", (int)L,
				      "input_amax", (double)g->lin[i].in_amax);
		if (!o || json_array_append_new(g->report, o))
			st = cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
	}
	for (int s = 0; s < EQ_COUNT; s++)
		free(act[s]);
	g->t_smooth += cal_now() - t0;
	return st;
}

void cal_sq_map_layer(struct cal_calib *c, int32_t L)
{
	const struct cal_sq_run *g = c->sq;
	for (size_t i = 0; g && g->L == L && i < g->n_lin; i++) {
		int iq = c->plan->modules[g->lin[i].r.mod].iq;
		if (iq < 0 || !c->plan->q[iq].spec.enabled)
			continue;
		c->q_amax[iq] = g->lin[i].in_amax;
		c->q_has[iq] = 1;
	}
}

const uint16_t *cal_calib_sq_weight(const struct cal_calib *c, size_t mod, uint64_t *numel,
				    const uint16_t **pqs)
{
	const struct cal_sq_run *g = c->sq;
	for (size_t i = 0; g && i < g->n_lin; i++)
		if (g->lin[i].r.mod == mod && g->lin[i].w) {
			*numel = g->lin[i].r.rows * g->lin[i].r.cols;
			*pqs = g->lin[i].pqs;
			return g->lin[i].w;
		}
	return NULL;
}

json_t *cal_sq_stats(const struct cal_calib *c)
{
	const struct cal_sq_run *g = c->sq;
	if (!g)
		return NULL;
	return json_pack("{s:f, s:O, s:f}", "alpha", g->alpha, "linears", g->report,
			 "smooth_s", g->t_smooth);
}
