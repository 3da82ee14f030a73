/*
 * lin_run.c — the linear run: the lifecycle GPTQ, AWQ-lite and SmoothQuant
 * share in the calibration forward (calib_internal.h "lin_run.c";
 * docs/gptq.md, docs/awq.md, docs/smoothquant.md "In the engine").
 *
 * The run opens with the calibration (cal_lin_run_open: the algorithm's
 * plan check, the run zeroed, its report array, the algorithm's own
 * fields).  Per decoder layer: pass 0 drops the previous layer's linears
 * (the exporter has taken their weights by then) and lists the layer's;
 * each pass runs between begin and end, the actq sites calling the site
 * hook while c->lr_pass is set; map after the layer's statistics are
 * mapped.  At the end: the statistics object (the algorithm's parameters,
 * "linears", its seconds), the weights for the exporter
 * (cal_calib_lin_weight), the back-end buffers released with the run's
 * (cal_lin_run_release), then the rest (cal_lin_run_free).
 *
 * Also the pieces the algorithms share: which linears of a layer they run
 * on (cal_linear_site, cal_layer_field), what they refuse
 * (cal_linear_algo_*), and the export's resmoothing of a shared-input group
 * (cal_lin_resmooth).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "engine/awq.h"
#include "engine/calib/calib_internal.h"

#define CAL_LIN_ALGO(var) &var,
static const struct cal_lin_algo *const algos[] = {
#include "engine/calib/lin_algos.def"
};
#undef CAL_LIN_ALGO

static const size_t field_off[F_COUNT] = {
	offsetof(struct cal_layer_w, wq),  offsetof(struct cal_layer_w, wk),
	offsetof(struct cal_layer_w, wv),  offsetof(struct cal_layer_w, wo),
	offsetof(struct cal_layer_w, w13), offsetof(struct cal_layer_w, w2),
	offsetof(struct cal_layer_w, s13), offsetof(struct cal_layer_w, s2),
	offsetof(struct cal_layer_w, e13), offsetof(struct cal_layer_w, e2),
	offsetof(struct cal_layer_w, wqa), offsetof(struct cal_layer_w, wkva),
	offsetof(struct cal_layer_w, wkvb), offsetof(struct cal_layer_w, lqkv),
	offsetof(struct cal_layer_w, lz),  offsetof(struct cal_layer_w, lb),
	offsetof(struct cal_layer_w, la),  offsetof(struct cal_layer_w, lout),
};

const uint16_t **cal_layer_field(struct cal_layer_w *w, int f)
{
	return (const uint16_t **)(void *)((char *)w + field_off[f]);
}

/* MLA and Gated DeltaNet linears: field and input site (-1: none). */
static int extra_site(const struct cal_plan_module *m, int *f)
{
	static const struct {
		enum cal_mod_kind kind;
		const char *proj;
		int f, site;
	} t[] = {
		{CAL_MOD_ATTN_PROJ, "q_a_proj", F_WQA, EQ_QKV},
		{CAL_MOD_ATTN_PROJ, "q_b_proj", F_WQ, EQ_QB},
		{CAL_MOD_ATTN_PROJ, "kv_a_proj_with_mqa", F_WKVA, EQ_QKV},
		{CAL_MOD_ATTN_PROJ, "kv_b_proj", F_WKVB, EQ_KVB},
		{CAL_MOD_LINATTN_PROJ, "in_proj_qkv", F_LQKV, EQ_QKV},
		{CAL_MOD_LINATTN_PROJ, "in_proj_z", F_LZ, EQ_QKV},
		{CAL_MOD_LINATTN_PROJ, "in_proj_b", F_LB, EQ_QKV},
		{CAL_MOD_LINATTN_PROJ, "in_proj_a", F_LA, EQ_QKV},
		{CAL_MOD_LINATTN_PROJ, "in_proj_qkvz", F_LQKV, EQ_QKV}, /* + F_LZ */
		{CAL_MOD_LINATTN_PROJ, "in_proj_ba", F_LB, EQ_QKV},     /* + F_LA */
		{CAL_MOD_LINATTN_PROJ, "out_proj", F_LOUT, EQ_O},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(t); i++)
		if (m->kind == t[i].kind && !strcmp(m->proj, t[i].proj))
			return *f = t[i].f, t[i].site;
	return -1;
}

int cal_linear_site(const struct cal_calib *c, const struct cal_plan_module *m, int *f,
		    uint64_t *at, const struct cal_layer_host *lh)
{
	const char *pr = m->proj;
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
	return extra_site(m, f);
}

int cal_lin_layout(const struct cal_calib *c, const struct cal_plan_module *m,
		   const struct cal_layer_host *lh, struct cal_lin *l)
{
	int f = -1, site;
	uint64_t at = 0;
	l->n_part = 1;
	l->map = NULL;
	if ((site = cal_linear_site(c, m, &f, &at, lh)) < 0)
		return -1;
	l->part[0] = (struct cal_lin_part){f, at, (uint64_t)m->out};
	l->f = f;
	l->at = at;
	if (f == F_WQ && c->d->attn == CAL_ATTN_GATED_GQA) {
		if ((l->map = malloc((size_t)m->out * sizeof(uint32_t))))
			cal_gated_q_map(c, l->map);
		return l->map ? site : -2;
	}
	int qkvz = f == F_LQKV && !strcmp(m->proj, "in_proj_qkvz");
	if (qkvz || (f == F_LB && !strcmp(m->proj, "in_proj_ba"))) {
		/* Qwen3-Next's fused in_proj: two fields, the rows permuted */
		struct cal_gdn_dims g;
		cal_gdn_dims(c->d, &g);
		l->part[0].rows = qkvz ? g.cd : g.nv;
		l->part[1] = (struct cal_lin_part){qkvz ? F_LZ : F_LA, 0, qkvz ? g.vd : g.nv};
		l->n_part = 2;
		uint32_t *m1 = malloc((g.cd + g.vd) * sizeof(uint32_t));
		uint32_t *m2 = malloc(2 * g.nv * sizeof(uint32_t));
		if (!m1 || !m2) {
			CAL_FREE_ALL(m1, m2);
			return -2;
		}
		cal_gdn_fused_maps(&g, m1, m2);
		l->map = qkvz ? m1 : m2;
		free(qkvz ? m2 : m1);
	}
	return site;
}

enum cal_status cal_lin_load(struct cal_calib *c, const struct cal_layer_w *dw,
			     const struct cal_lin *l, uint16_t *out, int ckpt,
			     struct cal_error *err)
{
	uint64_t C = l->cols, r0 = 0;
	uint16_t *eng = ckpt && l->map ? malloc(l->rows * C * 2) : out;
	enum cal_status st = CAL_OK;
	if (!eng)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", c->lr->a->name);
	for (int k = 0; k < l->n_part && st >= 0; k++) {
		const struct cal_lin_part *pt = &l->part[k];
		const uint16_t *src = *cal_layer_field((struct cal_layer_w *)dw, pt->f);
		st = src ? cal_backend_download(c->be, eng + r0 * C, src + pt->at, pt->rows * C * 2,
						err)
			 : cal_error_set(err, CAL_ERR_INTERNAL, "%s: %s has no weight in the "
					 "layer", c->lr->a->name, c->plan->modules[l->mod].name);
		r0 += pt->rows;
	}
	if (eng != out) {
		if (st >= 0)
			cal_lin_to_ckpt(l, out, eng, C);
		free(eng);
	}
	return st;
}

void cal_lin_to_ckpt(const struct cal_lin *l, uint16_t *dst, const uint16_t *src,
		     uint64_t width)
{
	for (uint64_t r = 0; r < l->rows; r++)
		memcpy(dst + (l->map ? l->map[r] : r) * width, src + r * width, width * 2);
}

struct cal_lin *cal_lin_at(const struct cal_lin_run *r, size_t i)
{
	return (struct cal_lin *)(void *)((char *)r->lin + i * r->a->lin_size);
}

/* Layer L's linears (the algorithm's linear hook), in plan order. */
static enum cal_status list_linears(struct cal_calib *c, int32_t L,
				    const struct cal_layer_host *lh, struct cal_error *err)
{
	struct cal_lin_run *r = c->lr;
	const struct cal_plan *p = c->plan;
	size_t size = r->a->lin_size;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L)
			continue;
		if (r->n_lin == r->cap_lin) {
			size_t nc = r->cap_lin ? 2 * r->cap_lin : 16;
			void *nv = realloc(r->lin, nc * size);
			if (!nv)
				return cal_error_set(err, CAL_ERR_NOMEM, "layer %d: out of memory "
						     "listing its linears", (int)L);
			r->lin = nv;
			r->cap_lin = nc;
		}
		struct cal_lin *l = memset((char *)r->lin + r->n_lin * size, 0, size);
		*l = (struct cal_lin){.mod = mi, .rows = (uint64_t)m->out, .cols = (uint64_t)m->in};
		l->site = r->a->linear ? r->a->linear(c, m, lh, l) : cal_lin_layout(c, m, lh, l);
		if (l->site == -2)
			return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", r->a->name);
		r->n_lin += l->site >= 0;
	}
	return CAL_OK;
}

const char *cal_linear_algo_model_why(const struct cal_model_desc *d)
{
	/* MLA (docs/awq.md "MLA"), gated attention and Gated DeltaNet layers
	 * (docs/awq.md "Qwen3-Next and Qwen3.5-MoE") and GPT-OSS (docs/awq.md
	 * "GPT-OSS") run: every attention kind of model.h today, so this
	 * never fires; it keeps a kind added later refused until awq_run.c
	 * and sq_run.c map its linears */
	if (d->attn != CAL_ATTN_GQA && d->attn != CAL_ATTN_GATED_GQA && d->attn != CAL_ATTN_MLA)
		return "attention other than plain GQA, gated GQA and MLA";
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

enum cal_status cal_lin_run_open(struct cal_calib *c, struct cal_error *err)
{
	const struct cal_lin_algo *a = NULL;
	for (size_t i = 0; i < CAL_ARRAY_LEN(algos) && !a; i++)
		if (algos[i]->method == c->plan->recipe->algo.method)
			a = algos[i];
	if (!a)
		return CAL_OK;
	CAL_TRY_RET(a->check(c->plan, err));
	struct cal_lin_run *r = calloc(1, a->size);
	if (!r)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", a->name);
	c->lr = r;
	r->a = a;
	r->L = -1;
	r->full_passes = getenv("CALIBD_TEST_FULL_PASSES") != NULL; /* tests: the same bytes */
	r->site_dump = getenv("CALIBD_TEST_SITE_DUMP");
	r->sync_passes = getenv("CALIBD_PROFILE_PASSES") != NULL;
	r->report = json_array();
	if (!r->report)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", a->name);
	return a->init ? a->init(c, err) : CAL_OK;
}

/* Frees what the layer's linears own. */
static void drop_layer(struct cal_calib *c)
{
	struct cal_lin_run *r = c->lr;
	if (r->a->drop_layer)
		r->a->drop_layer(c);
	for (size_t i = 0; i < r->n_lin; i++)
		CAL_FREE_ALL(cal_lin_at(r, i)->w, cal_lin_at(r, i)->pqs, cal_lin_at(r, i)->map);
	r->n_lin = 0;
}

void cal_lin_run_release(struct cal_calib *c)
{
	if (c->lr && c->lr->a->release)
		c->lr->a->release(c);
}

void cal_lin_run_free(struct cal_calib *c)
{
	struct cal_lin_run *r = c->lr;
	if (!r)
		return;
	cal_lin_run_release(c);
	drop_layer(c);
	if (r->a->free)
		r->a->free(c);
	json_decref(r->report);
	CAL_FREE_ALL(r->lin, r);
	c->lr = NULL;
}

enum cal_status cal_lin_run_begin(struct cal_calib *c, int32_t L, int pass,
				  const struct cal_layer_host *lh, const struct cal_layer_w *w,
				  const struct cal_layer_w **use, struct cal_error *err)
{
	struct cal_lin_run *r = c->lr;
	*use = w;
	r->pass = pass;
	r->t_pass = cal_now();
	c->lr_pass = pass >= r->a->site_pass;
	if (pass == 0) {
		drop_layer(c);
		r->L = L;
		CAL_TRY_RET(list_linears(c, L, lh, err));
		memset(r->cols, 0, sizeof(r->cols));
		for (size_t i = 0; i < r->n_lin; i++)
			r->cols[cal_lin_at(r, i)->site] = cal_lin_at(r, i)->cols;
	}
	/* what the forward leaves out (calib_internal.h, cal_fwd_done) */
	c->fwd_no_obs = !r->full_passes && (r->a->obs_dropped >> pass & 1);
	c->fwd_sites = !r->full_passes && (r->a->sites_only >> pass & 1);
	c->fwd_need = 0;
	for (int s = 0; c->fwd_sites && s < EQ_COUNT; s++)
		if (r->cols[s])
			c->fwd_need |= 1u << s;
	return r->a->begin ? r->a->begin(c, L, pass, lh, w, use, err) : CAL_OK;
}

/* CALIBD_TEST_SITE_DUMP=DIR (a diagnostic, tests/modelopt/search_inputs.py):
 * each site's input rows are appended to DIR/L<layer>_s<site>_e<expert>_c<cols>.bf16
 * as raw little-endian bf16, the rows the algorithm's site hook receives. */
static enum cal_status dump_site(struct cal_calib *c, const char *dir, int32_t L, int site,
				 int64_t expert, const uint16_t *x, uint64_t rows, uint64_t cols,
				 struct cal_error *err)
{
	char fn[4096];
	snprintf(fn, sizeof fn, "%s/L%d_s%d_e%lld_c%llu.bf16", dir, (int)L, site,
		 (long long)expert, (unsigned long long)cols);
	uint16_t *h = malloc(rows * cols * 2);
	if (!h)
		return cal_error_set(err, CAL_ERR_NOMEM, "site dump: out of memory");
	enum cal_status st = cal_backend_download(c->be, h, x, rows * cols * 2, err);
	FILE *f = st < 0 ? NULL : fopen(fn, "ab");
	if (st >= 0 && (!f || fwrite(h, 2, rows * cols, f) != rows * cols))
		st = cal_error_set(err, CAL_ERR_IO, "CALIBD_TEST_SITE_DUMP: cannot write %s", fn);
	if (f && fclose(f) != 0 && st >= 0)
		st = cal_error_set(err, CAL_ERR_IO, "CALIBD_TEST_SITE_DUMP: cannot write %s", fn);
	free(h);
	return st;
}

enum cal_status cal_lin_run_site(struct cal_calib *c, int32_t L, int site, int64_t expert,
				 uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err)
{
	const struct cal_lin_run *r = c->lr;
	if (!r->a->all_sites && (!r->cols[site] || !rows))
		return CAL_OK;
	if (!r->a->all_sites && cols != r->cols[site])
		return cal_error_set(err, CAL_ERR_INTERNAL, "%s: site %d input has %llu columns, "
				     "its linears %llu", r->a->name, site, (unsigned long long)cols,
				     (unsigned long long)r->cols[site]);
	if (r->site_dump)
		CAL_TRY_RET(dump_site(c, r->site_dump, L, site, expert, x, rows, cols, err));
	return r->a->site(c, L, site, expert, x, rows, cols, err);
}

enum cal_status cal_lin_run_round_end(struct cal_calib *c, struct cal_error *err)
{
	return c->lr->a->round_end ? c->lr->a->round_end(c, err) : CAL_OK;
}

enum cal_status cal_lin_run_end(struct cal_calib *c, int32_t L, int pass,
				const struct cal_layer_w *w, struct cal_error *err)
{
	c->lr_pass = 0;
	c->fwd_no_obs = c->fwd_sites = 0;
	c->fwd_need = c->fwd_left = 0;
	struct cal_lin_run *r = c->lr;
	CAL_TRY_RET(r->a->end(c, L, pass, w, err));
	if (r->sync_passes)
		CAL_TRY_RET(cal_backend_sync(c->be, err));
	if (pass < 4)
		r->pass_s[pass] += cal_now() - r->t_pass;
	return CAL_OK;
}

void cal_lin_run_map(struct cal_calib *c, int32_t L)
{
	const struct cal_lin_run *r = c->lr;
	for (size_t i = 0; r && r->L == L && i < r->n_lin; i++) {
		const struct cal_lin *l = cal_lin_at(r, i);
		int iq = c->plan->modules[l->mod].iq;
		if (!l->has_in_amax || iq < 0 || !c->plan->q[iq].spec.enabled)
			continue;
		c->q_amax[iq] = l->in_amax;
		c->q_has[iq] = 1;
	}
}

json_t *cal_lin_run_stats(const struct cal_calib *c)
{
	const struct cal_lin_run *r = c->lr;
	json_t *o = r->a->params(c);
	if (o) {
		json_object_set(o, "linears", r->report);
		json_object_set_new(o, r->a->time_key, json_real(r->t));
		json_t *ps = json_array();
		for (int p = 0; p < r->a->passes && p < 4; p++)
			json_array_append_new(ps, json_real(r->pass_s[p]));
		json_object_set_new(o, "pass_s", ps);
	}
	return o;
}

const uint16_t *cal_calib_lin_weight(const struct cal_calib *c, size_t mod, uint64_t *numel,
				     const uint16_t **pqs)
{
	for (size_t i = 0; c->lr && i < c->lr->n_lin; i++) {
		const struct cal_lin *l = cal_lin_at(c->lr, i);
		if (l->mod == mod && l->w) {
			*numel = l->rows * l->cols;
			*pqs = l->pqs_out ? l->pqs : NULL;
			return l->w;
		}
	}
	return NULL;
}

enum cal_status cal_lin_resmooth(struct cal_calib *c, int site, uint64_t blk, int with_amax,
				 size_t min_n, struct cal_error *err)
{
	struct cal_lin_run *r = c->lr;
	struct cal_lin *l[8];
	uint16_t *w[8];
	const uint16_t *pq[8];
	uint64_t rows[8], cols = 0;
	float *wa[8] = {0}, in[8];
	size_t n = 0;
	enum cal_status st = CAL_OK;
	for (size_t i = 0; i < r->n_lin && n < 8; i++) {
		if ((l[n] = cal_lin_at(r, i))->site != site)
			continue;
		w[n] = l[n]->w;
		pq[n] = l[n]->pqs;
		rows[n] = l[n]->rows;
		in[n] = l[n]->in_amax;
		cols = l[n]->cols;
		n++;
	}
	if (n < min_n)
		return CAL_OK;
	uint16_t *avg = malloc(cols * 2);
	if (!avg)
		return cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", r->a->name);
	for (size_t i = 0; i < n && st >= 0; i++)
		if (!(wa[i] = malloc(rows[i] * cols / blk * sizeof(float))))
			st = cal_error_set(err, CAL_ERR_NOMEM, "%s: out of memory", r->a->name);
	if (st >= 0)
		st = cal_resmooth_group(w, rows, n, cols, blk, pq, avg, wa, with_amax ? in : NULL,
					err);
	for (size_t i = 0; i < n && st >= 0; i++) {
		memcpy(l[i]->pqs, avg, cols * 2);
		if (with_amax)
			l[i]->in_amax = in[i];
	}
	for (size_t i = 0; i < n; i++)
		free(wa[i]);
	free(avg);
	return st;
}
