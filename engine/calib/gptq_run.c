/*
 * gptq_run.c — GPTQ in the calibration forward (docs/gptq.md "In the
 * engine"): modelopt 0.47's layerwise `gptq`, one decoder layer at a time.
 *
 * calib.c runs every layer three times over all micro-batches when the
 * recipe's algorithm is gptq (cal_gptq_pass_begin / _end around each pass):
 *   pass 0  max calibration: the plain forward with the observers, from the
 *           layer's input (the previous layer's quantized outputs);
 *   pass 1  Hessians: the weights as they are, every quantized input
 *           fake-quantized (NVFP4 dynamic with pass 0's amax, layer.c's
 *           actq sites) and, at the input of each linear GPTQ updates, the
 *           `hessian` op adds x^T x of those fake-quantized rows;
 *   then    per linear the GPTQ update (engine/calib/gptq.c, host threads)
 *           with the static NVFP4 scales of the original weight;
 *   pass 2  the quantized layer: updated weights and routed experts
 *           fake-quantized (static NVFP4, original scales), inputs
 *           fake-quantized; its outputs are the next layer's input.
 * The layer's input is saved before pass 0 and restored before passes 1
 * and 2; the observers' state after pass 0 is saved and restored after
 * pass 2, so the statistics are pass 0's.
 *
 * Which linears: modelopt updates every quantized nn.Linear (attention
 * q/k/v/o, dense MLP gate/up/down, shared-expert gate/up/down); the fused
 * routed experts of transformers 5 are not nn.Linear modules (3-D
 * parameters), so modelopt's GPTQ leaves them to max calibration: so does
 * calibd.
 *
 * Memory: one Hessian per distinct linear input of the layer on the back
 * end (q/k/v share one: hidden^2, o_proj (heads*head_dim)^2, gate/up one,
 * down I^2, fp32), freed layer by layer; the saved layer input (2 H bytes a
 * token); fake-quantized copies of the layer's updated linears and routed
 * experts; host: the update's scratch (cal_gptq_scratch_bytes) and the
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


static const size_t field_off[F_COUNT] = {
	offsetof(struct cal_layer_w, wq),  offsetof(struct cal_layer_w, wk),
	offsetof(struct cal_layer_w, wv),  offsetof(struct cal_layer_w, wo),
	offsetof(struct cal_layer_w, w13), offsetof(struct cal_layer_w, w2),
	offsetof(struct cal_layer_w, s13), offsetof(struct cal_layer_w, s2),
	offsetof(struct cal_layer_w, e13), offsetof(struct cal_layer_w, e2),
};

const uint16_t **cal_layer_field(struct cal_layer_w *w, int f)
{
	return (const uint16_t **)(void *)((char *)w + field_off[f]);
}

/* One linear GPTQ updates in the current layer. */
struct glin {
	size_t mod;        /* plan module */
	int f, site;       /* field, actq site of its input */
	uint64_t at, rows, cols;
	uint16_t *upd;     /* host: updated bf16 weight (kept until the next layer) */
	uint16_t *orig;    /* host, during the solve: the original weight */
	float *ba, ga;     /* its per-16-block amax and global amax */
	struct cal_gptq_stats st;
	uint64_t n_samples;
};

struct cal_gptq_run {
	struct cal_gptq_opts o;
	enum cal_div_mode div;
	/* the layer */
	int32_t L;
	struct glin *lin;
	size_t n_lin, cap_lin;
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
	float *du, *work;          /* back end: U, the update's rows */
	uint64_t du_cap, work_cap;
	float *dwamax;             /* back end [E] */
	struct cal_nonfinite *dnf;
	struct cal_layer_w use;    /* pass 2's weights */
	/* report */
	json_t *report;            /* array of per-linear objects */
	json_t *fallback;          /* names */
	double t_solve, t_passes;
};

int cal_linear_site(const struct cal_calib *c, const struct cal_plan_module *m, int *f,
		    uint64_t *at, const struct cal_layer_host *lh)
{
	const char *pr = m->proj;
	uint64_t H = (uint64_t)c->H, qd = (uint64_t)(c->nh * c->hd), kd = (uint64_t)(c->nkv * c->hd);
	*at = 0;
	if (m->wq < 0 || !c->plan->q[m->wq].spec.enabled || m->count != 1)
		return -1;
	switch (m->kind) {
	case CAL_MOD_ATTN_PROJ:
		if (!strcmp(pr, "q_proj"))
			return *f = F_WQ, EQ_QKV;
		if (!strcmp(pr, "k_proj"))
			return *f = F_WK, EQ_QKV;
		if (!strcmp(pr, "v_proj"))
			return *f = F_WV, EQ_QKV;
		if (!strcmp(pr, "o_proj"))
			return *f = F_WO, EQ_O;
		break;
	case CAL_MOD_MLP_PROJ:
	case CAL_MOD_SHARED_PROJ: {
		int sh = m->kind == CAL_MOD_SHARED_PROJ;
		uint64_t n13 = sh ? lh->n_s13 : lh->n_w13;
		if (!strcmp(pr, "gate_proj") || !strcmp(pr, "up_proj")) {
			*at = strcmp(pr, "up_proj") ? 0 : n13 / 2;
			*f = sh ? F_S13 : F_W13;
			return sh ? EQ_SH_GU : EQ_MLP_GU;
		}
		if (!strcmp(pr, "down_proj"))
			return *f = sh ? F_S2 : F_W2, sh ? EQ_SH_DOWN : EQ_MLP_DOWN;
		break;
	}
	default:
		break;
	}
	(void)H, (void)qd, (void)kd;
	return -1;
}

enum cal_status cal_layer_linears(const struct cal_calib *c, int32_t L,
				  const struct cal_layer_host *lh, void **v, size_t *n, size_t *cap,
				  size_t size, struct cal_error *err)
{
	const struct cal_plan *p = c->plan;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		struct cal_lin_ref r = {.mod = mi, .rows = (uint64_t)m->out, .cols = (uint64_t)m->in};
		if (m->layer != L || (r.site = cal_linear_site(c, m, &r.f, &r.at, lh)) < 0)
			continue;
		if (*n == *cap) {
			size_t nc = *cap ? 2 * *cap : 16;
			void *nv = realloc(*v, nc * size);
			if (!nv)
				return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory "
						     "listing its linears", (int)L);
			*v = nv;
			*cap = nc;
		}
		char *e = (char *)*v + *n * size;
		memset(e, 0, size);
		memcpy(e, &r, sizeof(r));
		(*n)++;
	}
	return CAL_OK;
}

/* Elements of field f in layer lh. */
static uint64_t field_n(const struct cal_calib *c, const struct cal_layer_host *lh, int f)
{
	uint64_t H = (uint64_t)c->H, qd = (uint64_t)(c->nh * c->hd), kd = (uint64_t)(c->nkv * c->hd);
	switch (f) {
	case F_WQ: return qd * H;
	case F_WK: case F_WV: return kd * H;
	case F_WO: return H * qd;
	case F_W13: return lh->n_w13;
	case F_W2: return lh->n_w2;
	case F_S13: return lh->n_s13;
	case F_S2: return lh->n_s2;
	case F_E13: return (uint64_t)c->E * 2 * (uint64_t)c->I * H;
	case F_E2: return (uint64_t)c->E * H * (uint64_t)c->I;
	}
	return 0;
}

const char *cal_linear_algo_model_why(const struct cal_model_desc *d)
{
	if (d->attn != CAL_ATTN_GQA)
		return "attention other than plain GQA (gated, MLA)";
	for (int32_t L = 0; L < d->num_layers; L++)
		if (d->layers[L].mixer == CAL_MIXER_LINEAR)
			return "Gated DeltaNet layers";
	if (d->act == CAL_ACT_SWIGLU_OAI)
		return "GPT-OSS (experts as BMMs, attention sinks)";
	return NULL;
}

enum cal_status cal_linear_algo_refuse(const struct cal_model_desc *d, const char *algo,
				       const char *why, const char *doc, struct cal_error *err)
{
	if (!why)
		return CAL_OK;
	return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: algorithm %s with %s is not "
			     "implemented (%s)", d->model_type, algo, why, doc);
}

const char *cal_linear_algo_q_why(const struct cal_plan *p, const struct cal_plan_q *q)
{
	const struct cal_plan_module *m = &p->modules[q->module];
	if (!q->spec.enabled)
		return NULL;
	if (q->role == CAL_QROLE_Q_BMM || q->role == CAL_QROLE_P_BMM)
		return "a quantized attention BMM";
	if (q->role == CAL_QROLE_OUTPUT)
		return "output quantizers";
	if (q->role == CAL_QROLE_WEIGHT &&
	    (m->kind == CAL_MOD_SHARED_GATE || m->kind == CAL_MOD_LM_HEAD))
		return "a quantized shared_expert_gate or lm_head";
	return NULL;
}

enum cal_status cal_calib_check_gptq(const struct cal_plan *p, struct cal_error *err)
{
	const struct cal_model_desc *d = p->model;
	const char *why = NULL;
	if (p->recipe->algo.method != CAL_CALIB_GPTQ)
		return CAL_OK;
	why = cal_linear_algo_model_why(d);
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

enum cal_status cal_gptq_init(struct cal_calib *c, struct cal_error *err)
{
	const struct cal_algorithm *a = &c->plan->recipe->algo;
	CAL_TRY_RET(cal_calib_check_gptq(c->plan, err));
	struct cal_gptq_run *g = calloc(1, sizeof(*g));
	if (!g)
		return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
	g->o.perc_damp = a->perc_damp;
	g->o.block_size = (uint32_t)a->gptq_block_size;
	g->div = c->o.div;
	g->L = -1;
	g->report = json_array();
	g->fallback = json_array();
	if (c->E)
		g->tok_save = calloc((size_t)c->E, sizeof(uint64_t));
	c->gq = g;
	if (!g->report || !g->fallback || (c->E && !g->tok_save))
		return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
	return CAL_OK;
}

static void drop_layer(struct cal_gptq_run *g)
{
	for (size_t i = 0; i < g->n_lin; i++)
		free(g->lin[i].upd);
	g->n_lin = 0;
}

/* Back-end buffers of one run (calib.c frees them with the run). */
void cal_gptq_free_run(struct cal_calib *c)
{
	struct cal_gptq_run *g = c->gq;
	if (!g)
		return;
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
		     g->du, g->work};
	for (size_t i = 0; i < CAL_ARRAY_LEN(b); i++)
		cal_backend_dealloc(c->be, b[i]);
	g->obs_save = NULL;
	g->nf_save = NULL;
	g->qbuf = g->sbuf = NULL;
	g->bamax = g->dwamax = NULL;
	g->dnf = NULL;
	g->q_cap = g->bamax_cap = 0;
	g->du = g->work = NULL;
	g->du_cap = g->work_cap = 0;
	for (int f = 0; f < F_COUNT; f++) {
		cal_backend_dealloc(c->be, g->shadow[f]);
		g->shadow[f] = NULL;
		g->shadow_cap[f] = 0;
	}
}

void cal_gptq_free(struct cal_calib *c)
{
	struct cal_gptq_run *g = c->gq;
	if (!g)
		return;
	cal_gptq_free_run(c);
	drop_layer(g);
	free(g->lin);
	free(g->tok_save);
	json_decref(g->report);
	json_decref(g->fallback);
	free(g);
	c->gq = NULL;
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
	struct cal_gptq_run *g = c->gq;
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
	struct cal_gptq_run *g = c->gq;
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

enum cal_status cal_gptq_site(struct cal_calib *c, int32_t L, int site, int64_t expert,
			      uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_gptq_run *g = c->gq;
	(void)L;
	(void)expert; /* routed experts share one input quantizer per projection */
	if (g->site_q[site])
		CAL_TRY_RET(fq_nvfp4(c, g->site_scale[site], x, rows, cols, err));
	if (c->gq_pass == 1 && g->hs[site] && rows) {
		struct cal_hessian_args h = {CAL_DTYPE_BF16, x, rows, cols, NULL, 0, g->hs[site]};
		CAL_TRY_RET(cal_op_hessian(c->be, &h, err));
		g->hn[site] += rows;
	}
	return CAL_OK;
}

/* ---- passes ----------------------------------------------------------------------- */

static uint16_t *hidden_of(struct cal_calib *c)
{
	return c->hidden_on_host ? c->hidden_host : c->hidden;
}

static enum cal_status save_input(struct cal_calib *c, int restore, struct cal_error *err)
{
	struct cal_gptq_run *g = c->gq;
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
	struct cal_gptq_run *g = c->gq;
	const struct cal_plan *p = c->plan;
	uint64_t E = (uint64_t)c->E;
	float *am = malloc(c->n_slots * sizeof(float));
	if (!am)
		return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
	enum cal_status st = cal_backend_download(c->be, am, c->obs_amax, c->n_slots * 4, err);
	if (st < 0)
		goto out;
	static const int slot[EQ_COUNT] = {[EQ_QKV] = S_QKV, [EQ_O] = S_O,
					   [EQ_MLP_GU] = S_MLP_GU, [EQ_MLP_DOWN] = S_MLP_DOWN,
					   [EQ_SH_GU] = S_MOE_IN, [EQ_SH_DOWN] = S_SH_DOWN,
					   [EQ_K] = -1, [EQ_V] = -1, [EQ_EXP_GU] = -1,
					   [EQ_EXP_DOWN] = -1};
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
		if (site == EQ_EXP_GU || site == EQ_EXP_DOWN) {
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

/* The linears of layer L that GPTQ updates, and their Hessians (zeroed). */
static enum cal_status layer_linears(struct cal_calib *c, int32_t L,
				     const struct cal_layer_host *lh, struct cal_error *err)
{
	struct cal_gptq_run *g = c->gq;
	const struct cal_plan *p = c->plan;
	drop_layer(g);
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		struct glin gl = {.mod = mi};
		if (m->layer != L || (gl.site = cal_linear_site(c, m, &gl.f, &gl.at, lh)) < 0)
			continue;
		gl.rows = (uint64_t)m->out;
		gl.cols = (uint64_t)m->in;
		if (g->n_lin == g->cap_lin) {
			size_t nc = g->cap_lin ? 2 * g->cap_lin : 16;
			struct glin *nl = realloc(g->lin, nc * sizeof(*nl));
			if (!nl)
				return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
			g->lin = nl;
			g->cap_lin = nc;
		}
		g->lin[g->n_lin++] = gl;
	}
	for (int s = 0; s < EQ_COUNT; s++) {
		uint64_t cols = 0;
		for (size_t i = 0; i < g->n_lin; i++)
			if (g->lin[i].site == s)
				cols = g->lin[i].cols;
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
	struct cal_gptq_run *g = c->gq;
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
	struct cal_gptq_run *g = c->gq;
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
	struct cal_gptq_run *g = c->gq;
	const struct cal_plan *p = c->plan;
	uint64_t E = (uint64_t)c->E, H = (uint64_t)c->H, I = (uint64_t)c->I;
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
	uint64_t n = gl->rows * gl->cols;
	const uint16_t *src = *cal_layer_field((struct cal_layer_w *)dw, gl->f);
	if (!src)
		return cal_error_set(err, CAL_ERR_INTERNAL, "gptq: %s has no weight in the layer",
				     c->plan->modules[gl->mod].name);
	gl->orig = malloc(n * 2);
	gl->ba = malloc(n / 16 * 4);
	gl->upd = malloc(n * 2);
	if (!gl->orig || !gl->ba || !gl->upd)
		return cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
	CAL_TRY_RET(cal_backend_download(c->be, gl->orig, src + gl->at, n * 2, err));
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

/* GPTQ of every linear of the layer; their fake-quantized updated weights
 * go into the shadows of g->use. */
static enum cal_status solve_layer(struct cal_calib *c, const struct cal_layer_host *lh,
				   const struct cal_layer_w *w, struct cal_error *err)
{
	struct cal_gptq_run *g = c->gq;
	enum cal_status st = CAL_OK;
	float *hsum = NULL, *u = NULL;
	int have_site = -1;
	double t0 = cal_now();
	struct cal_layer_w dw = *w;
	float gmax[EQ_COUNT] = {0};
	CAL_TRY_RET(cal_backend_sync(c->be, err));
	for (size_t i = 0; i < g->n_lin; i++) {
		struct glin *gl = &g->lin[i];
		if ((st = load_linear(c, &dw, gl, err)) < 0)
			goto out;
		gmax[gl->site] = gl->ga > gmax[gl->site] ? gl->ga : gmax[gl->site];
	}
	for (size_t i = 0; i < g->n_lin; i++) {
		struct glin *gl = &g->lin[i];
		uint64_t R = gl->rows, C = gl->cols, n = R * C;
		/* modelopt's max calibration gives the static-NVFP4 weights of a
		 * fusible group (q/k/v, gate/up: the linears of one input) one global
		 * amax, the group's largest, before GPTQ runs */
		float ga = gmax[gl->site];
		if (have_site != gl->site) {
			free(hsum);
			if (!(hsum = malloc(C * C * 4))) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
				goto out;
			}
			if ((st = cal_backend_download(c->be, hsum, g->hs[gl->site], C * C * 4, err)) < 0)
				goto out;
			have_site = gl->site;
		}
		gl->n_samples = g->hn[gl->site];
		/* pass 2's weight lives in the shadow of its field */
		int f = gl->f;
		if (f < 0 || f >= F_COUNT) {
			st = cal_error_set(err, CAL_ERR_INTERNAL, "gptq: field %d of a linear", f);
			goto out;
		}
		if (*cal_layer_field(&g->use, f) != g->shadow[f]) {
			uint64_t tot = field_n(c, lh, f) * 2;
			if ((st = grow(c, (void **)&g->shadow[f], &g->shadow_cap[f], tot, err)) < 0 ||
			    (st = cal_backend_copy(c->be, g->shadow[f], *cal_layer_field(&dw, f), tot, err)) < 0)
				goto out;
			*cal_layer_field(&g->use, f) = g->shadow[f];
		}
		uint16_t *dst = g->shadow[f] + gl->at;
		if ((st = grow(c, (void **)&g->bamax, &g->bamax_cap, n / 16 * 4, err)) < 0 ||
		    (st = cal_backend_upload(c->be, g->bamax, gl->ba, n / 16 * 4, err)) < 0)
			goto out;
		if (ga > 0.0f) {
			/* the factor on the host (f64), the update on the back end; no rows
			 * seen: H = 0, which no damping makes positive definite: the
			 * identity fallback, as modelopt */
			free(u);
			if (!(u = malloc(C * C * 4))) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "gptq: out of memory");
				goto out;
			}
			st = cal_gptq_factor(c->host, gl->orig, R, C, hsum,
					     gl->n_samples ? gl->n_samples : 1, &g->o, u, &gl->st, err);
			if (st < 0) {
				cal_error_wrap(err, st, "gptq: %s", mod_name(c, gl->mod));
				goto out;
			}
			uint64_t bs = g->o.block_size;
			if ((st = grow(c, (void **)&g->du, &g->du_cap, C * C * 4, err)) < 0 ||
			    (st = grow(c, (void **)&g->work, &g->work_cap, (C + bs) * R * 4, err)) < 0 ||
			    (st = cal_backend_upload(c->be, g->du, u, C * C * 4, err)) < 0)
				goto out;
			struct cal_gptq_update_args ua = {*cal_layer_field(&dw, f) + gl->at, R, C, g->du, g->bamax,
							  ga, 448.0f, g->div, (uint32_t)bs, g->work,
							  dst};
			if ((st = cal_op_gptq_update(c->be, &ua, err)) < 0 ||
			    (st = cal_backend_download(c->be, gl->upd, dst, n * 2, err)) < 0)
				goto out;
		} /* else all-zero weights: nothing to update, the shadow holds them */
		else if ((st = cal_backend_download(c->be, gl->upd, dst, n * 2, err)) < 0) {
			goto out;
		}
		/* pass 2 quantizes the updated weight with the same scales (the
		 * scratch buffers are reused by the next linear: wait) */
		if ((st = fq_static(c, dst, dst, R, C, g->bamax, ga, err)) < 0 ||
		    (st = cal_backend_sync(c->be, err)) < 0)
			goto out;
		json_t *o = json_pack("{s:s, s:i, s:I, s:I, s:f, s:b, s:o}", "module",
				      mod_name(c, gl->mod), "layer", (int)g->L, "n_samples",
				      (json_int_t)gl->n_samples, "dead_columns",
				      (json_int_t)gl->st.dead_cols, "damp", gl->st.damp, "fallback",
				      gl->st.fallback, "relative_error", json_null());
		if (o)
			json_array_append_new(g->report, o);
		if (gl->st.fallback)
			json_array_append_new(g->fallback, json_string(mod_name(c, gl->mod)));
	}
out:
	for (size_t i = 0; i < g->n_lin; i++) {
		free(g->lin[i].orig);
		free(g->lin[i].ba);
		g->lin[i].orig = NULL;
		g->lin[i].ba = NULL;
	}
	free(hsum);
	free(u);
	if (st >= 0)
		st = cal_backend_sync(c->be, err);
	g->t_solve += cal_now() - t0;
	return st;
}

enum cal_status cal_gptq_pass_begin(struct cal_calib *c, int32_t L, int pass,
				    const struct cal_layer_host *lh, const struct cal_layer_w *w,
				    const struct cal_layer_w **use, struct cal_error *err)
{
	struct cal_gptq_run *g = c->gq;
	*use = w;
	c->gq_pass = pass;
	if (pass == 0) {
		g->L = L;
		g->use = *w;
		CAL_TRY_RET(layer_linears(c, L, lh, err));
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
		return save_input(c, 1, err);
	}
	CAL_TRY_RET(solve_layer(c, lh, w, err));
	CAL_TRY_RET(experts_qdq(c, L, lh, err));
	CAL_TRY_RET(save_input(c, 1, err));
	*use = &g->use;
	return CAL_OK;
}

enum cal_status cal_gptq_pass_end(struct cal_calib *c, int32_t L, int pass,
				  struct cal_error *err)
{
	struct cal_gptq_run *g = c->gq;
	c->gq_pass = 0;
	if (pass < 2)
		return CAL_OK;
	CAL_TRY_RET(cal_backend_copy(c->be, c->obs_amax, g->obs_save, c->n_slots * 4, err));
	CAL_TRY_RET(cal_backend_copy(c->be, c->obs_nf, g->nf_save,
				     c->n_slots * sizeof(struct cal_nonfinite), err));
	if (c->moe[L].tokens)
		memcpy(c->moe[L].tokens, g->tok_save, (size_t)c->E * sizeof(uint64_t));
	return CAL_OK;
}

const uint16_t *cal_calib_gptq_weight(const struct cal_calib *c, size_t mod, uint64_t *numel)
{
	const struct cal_gptq_run *g = c->gq;
	for (size_t i = 0; g && i < g->n_lin; i++)
		if (g->lin[i].mod == mod && g->lin[i].upd) {
			if (numel)
				*numel = g->lin[i].rows * g->lin[i].cols;
			return g->lin[i].upd;
		}
	return NULL;
}

json_t *cal_gptq_stats(const struct cal_calib *c)
{
	const struct cal_gptq_run *g = c->gq;
	if (!g)
		return NULL;
	return json_pack("{s:f, s:I, s:O, s:O, s:f}", "perc_damp", g->o.perc_damp, "block_size",
			 (json_int_t)g->o.block_size, "fallback", g->fallback, "linears", g->report,
			 "solve_s", g->t_solve);
}
