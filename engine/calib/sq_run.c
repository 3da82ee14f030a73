/*
 * sq_run.c — SmoothQuant in the calibration forward (docs/smoothquant.md
 * "In the engine"): modelopt 0.47's `smoothquant` on INT8 linears, a
 * linear run (lin_run.c) of one pass.
 *
 * Not layerwise, as modelopt: each decoder layer runs once, as for max
 * calibration.  While it runs (pass_begin .. _end), layer.c's actq sites
 * hand each smoothed linear's input to sq_site, which folds it
 * into a per-input-channel max |x| on the back end (op amax_cols; one
 * [cols] vector per site: q/k/v (MLA: q_a / kv_a) share one, gate/up
 * one).  After the forward, per linear, cal_smoothquant (smoothquant.c)
 * computes the scale, the folded weight and the input amax after
 * smoothing; then the export's
 * resmoothing of each shared-input group (cal_lin_resmooth, per output
 * channel) and the group's input amax (their max), which take the place
 * of the observed per-tensor ones (cal_lin_run_map); the exporter
 * gets the folded weights and every smoothed linear's pre_quant_scale
 * (engine/quantize.c).
 *
 * Which linears: attention q/k/v/o (gated attention's too; MLA: q_a, q_b
 * or q, kv_a, kv_b, o, the q_a / kv_a pair the shared-input group), Gated
 * DeltaNet in_proj / out_proj, dense MLP and shared-expert gate/up/down
 * (lin_run.c's cal_lin_layout; smoothed in the checkpoint's row order);
 * the routed experts keep max calibration (modelopt's fused experts are
 * not nn.Linear modules).
 *
 * Memory: on the back end `in` floats per distinct input of the layer
 * (q/k/v H, o_proj heads*head_dim, gate/up H, down I, the shared expert's
 * likewise); on the host the folded weights and scales of the last layer,
 * kept for the exporter.
 */
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "engine/calib/calib_internal.h"
#include "engine/smoothquant.h"

struct cal_sq_run {
	struct cal_lin_run r;
	float *amax[EQ_COUNT];            /* back end [cols]: per-channel max |x| */
	struct cal_nonfinite *nf[EQ_COUNT];
};

static struct cal_sq_run *run(const struct cal_calib *c)
{
	return (struct cal_sq_run *)(void *)c->lr;
}

/* The smoothed linears: lin_run.c's struct cal_lin (w: the folded weight;
 * pqs: its pre_quant_scale, always exported; in_amax: the input amax after
 * smoothing, the group's max). */
#define LIN(g) ((struct cal_lin *)(g)->r.lin)

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

static void drop_layer(struct cal_calib *c)
{
	struct cal_sq_run *g = run(c);
	for (int s = 0; s < EQ_COUNT; s++) {
		cal_backend_dealloc(c->be, g->amax[s]);
		cal_backend_dealloc(c->be, g->nf[s]);
		g->amax[s] = NULL;
		g->nf[s] = NULL;
	}
}

static enum cal_status pass_begin(struct cal_calib *c, int32_t L, int pass,
				  const struct cal_layer_host *lh, const struct cal_layer_w *w,
				  const struct cal_layer_w **use, struct cal_error *err)
{
	struct cal_sq_run *g = run(c);
	(void)L, (void)pass, (void)lh, (void)w, (void)use;
	for (size_t i = 0; i < g->r.n_lin; i++) { /* one per-channel amax per site */
		const struct cal_lin *r = &LIN(g)[i];
		if (g->amax[r->site])
			continue;
		CAL_TRY_RET(cal_backend_alloc(c->be, r->cols * 4, (void **)&g->amax[r->site], err));
		CAL_TRY_RET(cal_backend_memset(c->be, g->amax[r->site], 0, r->cols * 4, err));
		CAL_TRY_RET(cal_backend_alloc(c->be, sizeof(struct cal_nonfinite),
					      (void **)&g->nf[r->site], err));
		CAL_TRY_RET(cal_nonfinite_reset(c->be, g->nf[r->site], err));
	}
	return CAL_OK;
}

static enum cal_status sq_site(struct cal_calib *c, int32_t L, int site, int64_t expert,
			       uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_sq_run *g = run(c);
	(void)L, (void)expert;
	struct cal_amax_cols_args a = {x, rows, cols, 0, g->amax[site], g->nf[site]};
	return cal_op_amax_cols(c->be, &a, err);
}

/* Smoothing of one linear from its site's per-channel amax `act`. */
static enum cal_status smooth_one(struct cal_calib *c, const struct cal_layer_w *dw,
				  struct cal_lin *sl, const float *act, struct cal_error *err)
{
	uint64_t n = sl->rows * sl->cols;
	const char *name = c->plan->modules[sl->mod].name;
	uint16_t *w = malloc(n * 2);
	float *wa = malloc(sl->rows * sizeof(float));
	sl->w = malloc(n * 2);
	sl->pqs = malloc(sl->cols * 2);
	sl->pqs_out = 1;
	enum cal_status st = CAL_OK;
	if (!w || !wa || !sl->w || !sl->pqs)
		st = cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
	if (st >= 0)
		st = cal_lin_load(c, dw, sl, w, 1, err); /* the checkpoint's row order */
	if (st >= 0) {
		struct cal_sq_out o = {sl->pqs, sl->w, wa, 0.0f};
		st = cal_smoothquant(w, sl->rows, sl->cols, act, (float)c->plan->recipe->algo.sq_alpha, &o,
				     err);
		if (st < 0)
			st = cal_error_wrap(err, st, "smoothquant: %s", name);
		sl->in_amax = o.in_amax;
		sl->has_in_amax = 1;
	}
	free(w);
	free(wa);
	return st;
}

static enum cal_status pass_end(struct cal_calib *c, int32_t L, int pass,
				const struct cal_layer_w *w, struct cal_error *err)
{
	struct cal_sq_run *g = run(c);
	double t0 = cal_now();
	float *act[EQ_COUNT] = {0};
	enum cal_status st = CAL_OK;
	(void)pass;
	CAL_TRY_RET(cal_backend_sync(c->be, err));
	for (int s = 0; s < EQ_COUNT && st >= 0; s++) {
		if (!g->amax[s])
			continue;
		if (!(act[s] = malloc(g->r.cols[s] * sizeof(float))))
			st = cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
		else
			st = cal_backend_download(c->be, act[s], g->amax[s], g->r.cols[s] * 4, err);
	}
	for (size_t i = 0; i < g->r.n_lin && st >= 0; i++) {
		struct cal_lin *sl = &LIN(g)[i];
		st = smooth_one(c, w, sl, act[sl->site], err);
	}
	/* the export's resmoothing of each shared-input group (docs/smoothquant.md
	 * "Export"): one pre_quant_scale, re-folded weights, the group's input amax */
	if (st >= 0)
		st = cal_lin_resmooth(c, EQ_QKV, g->r.cols[EQ_QKV], 1, 2, err);
	if (st >= 0)
		st = cal_lin_resmooth(c, EQ_MLP_GU, g->r.cols[EQ_MLP_GU], 1, 2, err);
	if (st >= 0)
		st = cal_lin_resmooth(c, EQ_SH_GU, g->r.cols[EQ_SH_GU], 1, 2, err);
	for (size_t i = 0; i < g->r.n_lin && st >= 0; i++) {
		json_t *o = json_pack("{s:s, s:i, s:f}", "module",
				      c->plan->modules[LIN(g)[i].mod].name, "layer", (int)L,
				      "input_amax", (double)LIN(g)[i].in_amax);
		if (!o || json_array_append_new(g->r.report, o))
			st = cal_error_set(err, CAL_ERR_NOMEM, "smoothquant: out of memory");
	}
	for (int s = 0; s < EQ_COUNT; s++)
		free(act[s]);
	g->r.t += cal_now() - t0;
	return st;
}

static json_t *params(const struct cal_calib *c)
{
	return json_pack("{s:f}", "alpha", c->plan->recipe->algo.sq_alpha);
}

const struct cal_lin_algo cal_sq_algo = {
	.method = CAL_CALIB_SMOOTHQUANT, .name = "smoothquant", .key = "smoothquant",
	.time_key = "smooth_s", .passes = 1, .check = cal_calib_check_sq, .params = params,
	.size = sizeof(struct cal_sq_run), .lin_size = sizeof(struct cal_lin),
	.drop_layer = drop_layer, .begin = pass_begin, .site = sq_site, .end = pass_end,
};
