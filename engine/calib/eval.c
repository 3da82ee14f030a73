/*
 * eval.c — `calibd eval`: the original and the quantized model side by side
 * through the calibration engine's forward (engine/eval.h, docs/eval.md).
 *
 * The run loop of calib.c calls in here when c->ev is set: per layer, for
 * every micro-batch and every step of the layer (attention, dense MLP or
 * MoE), the original step runs on the original hidden states, the
 * quantized step on a copy of the same input (teacher forcing: the error
 * that step's quantization adds, routed experts broken out by expert since
 * both see the same routing), and then the quantized layer runs on the
 * quantized model's own hidden states (the chain).  After the last layer
 * both final norms and lm_heads give logits, compared on the host.
 *
 * The quantized weights come from the exported checkpoint, dequantized with
 * the back end's dequantizers; activations are fake-quantized in place by
 * layer.c's sites (cal_eval_actq): NVFP4 per block of 16 with input_scale
 * as the global scale, FP8 per tensor with input_scale, the KV cache with
 * k_scale / v_scale.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"
#include "engine/eval.h"

#define N_WORST 10

enum afmt {
	AQ_NONE,
	AQ_NVFP4,  /* per 16-block, global scale = input_scale */
	AQ_FP8,    /* per tensor, scale = input_scale */
	AQ_MXFP8,  /* per 32-block, E8M0 scales, dynamic (no scale) */
};

struct eq_site {
	enum afmt fmt;
	float scale;
};

struct worst {
	double kl;
	uint64_t tok;
	uint32_t id, next, top_o, top_q;
};

struct cal_eval {
	const struct cal_checkpoint *q;
	const struct cal_calib_tokens *tk;
	FILE *logits_out, *logits_orig_out;
	float kv_default;                /* kv_cache_quant_algo FP8 without scales: 1.0, else 0 */
	struct eq_site site[EQ_COUNT];
	struct eq_site *exp_gu, *exp_dn; /* [E] */
	struct eq_site lm_site;
	/* back end */
	uint16_t *xq, *xtf, *logits_o, *logits_q;
	uint8_t *qbuf, *sbuf;
	uint64_t fq_elems;
	/* host */
	uint16_t *hin, *ha, *hb, *yref, *ycmp;
	uint32_t *offref;
	uint64_t *tok_save;
	uint32_t *next;                  /* [n_tok]: next token id, UINT32_MAX at a sequence end */
	uint32_t *seq;                   /* [n_tok]: sequence of the token */
	/* results */
	json_t *layers;
	double *kl;
	uint64_t n_pred, top1;
	double nll_o, nll_q;
	struct worst worst[N_WORST];
	size_t n_worst;
	uint64_t n_qweights, n_qacts;
	double t0;
	/* per-layer KL (the logit lens, docs/eval.md): the final norm and the
	 * source lm_head on the back end, the sampled positions */
	void *norm_w, *lm_src;
	enum cal_dtype norm_dt;
	uint32_t *lens_idx, *lens_idx_h; /* [n_lens] back end, host */
	uint8_t *lens_at;                /* [n_tok] host: position sampled */
	uint64_t n_lens, lens_max;
	double lens_prev, lens_final;
	/* per-row results of kl_rows (host, [mb_tokens]) */
	double *r_kl, *r_nlo, *r_nlq;
	uint32_t *r_ao, *r_aq;
};

/* ---- the exported tensors ---------------------------------------------------- */

static const struct cal_st_tensor *qget(const struct cal_eval *ev, const char *mod,
					const char *suf)
{
	char name[CAL_ST_MAX_NAME + 64];
	if ((size_t)snprintf(name, sizeof(name), "%s.%s", mod, suf) >= sizeof(name))
		return NULL;
	return cal_checkpoint_find(ev->q, name);
}

static float scalar(const struct cal_st_tensor *t)
{
	float f = 0;
	if (t && t->dtype == CAL_DTYPE_F32 && t->numel == 1)
		memcpy(&f, t->data, 4);
	return f;
}

/* One exported weight as host tensors in the source weight's [rows, cols]
 * (out, in) order: the codes w, the block scales s (data NULL: none) and
 * the scalars (0: absent).  Views may point into rearranged host copies
 * (gated q_proj, Qwen3-Next in_proj, GPT-OSS's 3-D experts). */
struct qtens {
	const char *mod;
	struct cal_st_tensor w, s;
	float s1, s2, is;       /* per-tensor weight_scale (FP8), weight_scale_2, input_scale */
};

static int qtens_find(const struct cal_eval *ev, const char *mod, struct qtens *q)
{
	const struct cal_st_tensor *w = qget(ev, mod, "weight"), *s = qget(ev, mod, "weight_scale");
	memset(q, 0, sizeof(*q));
	q->mod = mod;
	if (!w)
		return -1;
	q->w = *w;
	if (s && s->numel == 1)
		q->s1 = scalar(s);
	else if (s)
		q->s = *s;
	q->s2 = scalar(qget(ev, mod, "weight_scale_2"));
	q->is = scalar(qget(ev, mod, "input_scale"));
	return 0;
}

/* Rows of a stored 2-D tensor rearranged on the host: row r of the result
 * is row map[r] of t (map NULL: t unchanged).  A tensor with half the rows
 * (INT4, packed along the rows) moves by row pairs, which map must keep
 * together. */
static enum cal_status permute_rows(struct cal_st_tensor *t, int64_t rows, const uint32_t *map,
				    void **owned, int *n_owned, const char *mod,
				    struct cal_error *err)
{
	if (!map || !t->data)
		return CAL_OK;
	int pairs = t->ndim == 2 && t->shape[0] * 2 == rows;
	if (t->ndim != 2 || (t->shape[0] != rows && !pairs))
		return cal_error_set(err, CAL_ERR_INVALID, "%s: %s of shape [%lld, ...] does not fit "
				     "the source's %lld rows: the quantized checkpoint was not made "
				     "from this source", mod, t->name, (long long)t->shape[0],
				     (long long)rows);
	uint64_t n = (uint64_t)t->shape[0], rb = t->nbytes / n;
	uint8_t *p = malloc(t->nbytes);
	if (!p)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	owned[(*n_owned)++] = p;
	for (uint64_t r = 0; r < n; r++) {
		uint64_t src = pairs ? map[2 * r] / 2 : map[r];
		if (pairs && (map[2 * r] % 2 || map[2 * r + 1] != map[2 * r] + 1))
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: INT4 rows packed in "
					     "pairs cannot take this row order", mod);
		memcpy(p + r * rb, (const uint8_t *)t->data + src * rb, rb);
	}
	t->data = p;
	return CAL_OK;
}

static int has_shape(const struct cal_st_tensor *t, enum cal_dtype dt, int64_t a, int64_t b)
{
	return t->data && t->dtype == dt && t->ndim == 2 && t->shape[0] == a && t->shape[1] == b;
}

static enum cal_status misfit(const struct qtens *q, const char *fmt, int64_t rows, int64_t cols,
			      struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_INVALID, "%s: %s tensors do not fit the source's "
			     "[%lld, %lld] weight: the quantized checkpoint was not made from this "
			     "source", q->mod, fmt, (long long)rows, (long long)cols);
}

/* The exported weight q as bf16 [rows, cols] into dst (back end), bit-exact
 * with the serving engines' dequantization (docs/eval.md), and the site its
 * input gets. */
static enum cal_status dequant(struct cal_calib *c, const struct qtens *q, int64_t rows,
			       int64_t cols, uint16_t *dst, struct eq_site *ret_site,
			       struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	const struct cal_st_tensor *w = &q->w, *s = &q->s;
	void *dw = NULL, *ds = NULL;
	enum cal_status st = CAL_OK;
	uint64_t n = (uint64_t)(rows * cols);
	enum afmt in = AQ_NONE;
	ret_site->fmt = AQ_NONE;
	ret_site->scale = 0;
	if (w->dtype == CAL_DTYPE_BF16) {
		if (w->numel != n)
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s.weight: %llu elements, the source has %llu: the "
					     "quantized checkpoint was not made from this source",
					     q->mod, (unsigned long long)w->numel,
					     (unsigned long long)n);
		return cal_backend_upload(c->be, dst, w->data, n * 2, err);
	}
	if (w->dtype == CAL_DTYPE_U8 && q->s2 > 0) {
		if (!has_shape(w, CAL_DTYPE_U8, rows, cols / 2) || cols % 16 ||
		    !has_shape(s, CAL_DTYPE_F8_E4M3, rows, cols / 16))
			return misfit(q, "NVFP4", rows, cols, err);
		CAL_TRY(cal_backend_alloc_upload(c->be, w->data, w->nbytes, &dw, err));
		CAL_TRY(cal_backend_alloc_upload(c->be, s->data, s->nbytes, &ds, err));
		struct cal_nvfp4_dequant_args a = {dw, ds, (uint64_t)rows, (uint64_t)cols, q->s2,
						   CAL_DTYPE_BF16, dst, 0};
		CAL_TRY(cal_op_nvfp4_dequant(c->be, &a, err));
		in = q->is > 0 ? AQ_NVFP4 : AQ_NONE;
	} else if (w->dtype == CAL_DTYPE_F8_E4M3 && q->s1 > 0) {
		if (!has_shape(w, CAL_DTYPE_F8_E4M3, rows, cols))
			return misfit(q, "FP8", rows, cols, err);
		CAL_TRY(cal_backend_alloc_upload(c->be, w->data, w->nbytes, &dw, err));
		struct cal_fp8_dequant_args a = {dw, n, q->s1, CAL_DTYPE_BF16, dst};
		CAL_TRY(cal_op_fp8_dequant(c->be, &a, err));
		in = q->is > 0 ? AQ_FP8 : AQ_NONE;
	} else if (w->dtype == CAL_DTYPE_F8_E4M3 && s->data && s->dtype == CAL_DTYPE_U8) {
		if (!has_shape(w, CAL_DTYPE_F8_E4M3, rows, cols) || cols % 32 ||
		    !has_shape(s, CAL_DTYPE_U8, rows, cols / 32))
			return misfit(q, "MXFP8", rows, cols, err);
		CAL_TRY(cal_backend_alloc_upload(c->be, w->data, w->nbytes, &dw, err));
		CAL_TRY(cal_backend_alloc_upload(c->be, s->data, s->nbytes, &ds, err));
		struct cal_mxfp8_dequant_args a = {dw, ds, (uint64_t)rows, (uint64_t)cols,
						   CAL_DTYPE_BF16, dst};
		CAL_TRY(cal_op_mxfp8_dequant(c->be, &a, err));
		in = AQ_MXFP8; /* modelopt's MXFP8 quantizes inputs too, per block, dynamically */
	} else if (w->dtype == CAL_DTYPE_U8 && s->data && s->dtype == CAL_DTYPE_U8) {
		if (!has_shape(w, CAL_DTYPE_U8, rows, cols / 2) || cols % 32 ||
		    !has_shape(s, CAL_DTYPE_U8, rows, cols / 32))
			return misfit(q, "MXFP4", rows, cols, err);
		CAL_TRY(cal_backend_alloc_upload(c->be, w->data, w->nbytes, &dw, err));
		CAL_TRY(cal_backend_alloc_upload(c->be, s->data, s->nbytes, &ds, err));
		struct cal_mxfp4_dequant_args a = {dw, ds, (uint64_t)rows, (uint64_t)cols,
						   CAL_DTYPE_BF16, dst};
		CAL_TRY(cal_op_mxfp4_dequant(c->be, &a, err));
	} else if (w->dtype == CAL_DTYPE_U8 && s->data && s->dtype == CAL_DTYPE_F32) {
		if (!has_shape(w, CAL_DTYPE_U8, rows / 2, cols) || rows % 2 || cols % 128 ||
		    !has_shape(s, CAL_DTYPE_F32, rows, cols / 128))
			return misfit(q, "INT4", rows, cols, err);
		CAL_TRY(cal_backend_alloc_upload(c->be, w->data, w->nbytes, &dw, err));
		CAL_TRY(cal_backend_alloc_upload(c->be, s->data, s->nbytes, &ds, err));
		struct cal_int4_dequant_args a = {dw, ds, (uint64_t)rows, (uint64_t)cols,
						  CAL_DTYPE_BF16, dst};
		CAL_TRY(cal_op_int4_dequant(c->be, &a, err));
	} else {
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: weight %s with these scales is not a format calibd "
				     "exports (NVFP4, FP8, MXFP8, MXFP4, INT4)", q->mod,
				     cal_dtype_name(w->dtype));
	}
	ret_site->fmt = in;
	ret_site->scale = in == AQ_MXFP8 ? 1.0f : q->is;
	if (in != AQ_NONE && !(ret_site->scale > 0 && isfinite(ret_site->scale)))
		st = cal_error_set(err, CAL_ERR_INVALID, "%s.input_scale: %g is not finite and "
				   "positive", q->mod, (double)ret_site->scale);
	ev->n_qweights++;
fail:
	cal_backend_dealloc(c->be, dw);
	cal_backend_dealloc(c->be, ds);
	return st;
}

/* The module name of a source tensor of (role, L): its name less ".weight". */
static int module_of(const struct cal_calib *c, enum cal_role role, int32_t L, char *buf,
		     size_t n, const struct cal_st_tensor **ret_t)
{
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, role, CAL_PART_WEIGHT, L, -1);
	size_t len;
	*ret_t = t;
	if (!t || (len = strlen(t->name)) < 7 || strcmp(t->name + len - 7, ".weight") ||
	    len - 7 >= n)
		return -1;
	memcpy(buf, t->name, len - 7);
	buf[len - 7] = 0;
	return 0;
}

/* Merges the input site b into a (q/k/v and gate/up share one input: the
 * serving engine's fused GEMM uses the larger input_scale). */
static void merge_site(struct eq_site *a, const struct eq_site *b)
{
	if (a->fmt == AQ_NONE) {
		*a = *b;
		return;
	}
	if (b->scale > a->scale)
		a->scale = b->scale;
}

/* Part of a weight the engine runs as one matrix: a source module (role)
 * of [rows, cols], its rows in the engine's order given by map (NULL: as
 * stored). */
struct wpart {
	enum cal_role role;
	int64_t rows, cols;
	const uint32_t *map;
};

#define MAX_PARTS 4
#define MAX_OWNED 24

/* The parts stacked by rows into one new back-end buffer (*ret), or *ret =
 * keep when the export quantizes none of them (then every exported weight
 * must equal the source's byte for byte). */
static enum cal_status load_linear(struct cal_calib *c, int32_t L, const struct wpart *p, int np,
				   const uint16_t *keep, const uint16_t **ret, void **owned,
				   int *n_owned, struct eq_site *site, struct cal_error *err)
{
	char mod[MAX_PARTS][CAL_ST_MAX_NAME];
	const struct cal_st_tensor *t[MAX_PARTS];
	struct qtens q[MAX_PARTS];
	int any = 0;
	uint64_t total = 0, off = 0;
	enum cal_status st = CAL_OK;
	void *buf = NULL;
	site->fmt = AQ_NONE;
	site->scale = 0;
	*ret = keep;
	for (int i = 0; i < np; i++) {
		if (module_of(c, p[i].role, L, mod[i], sizeof(mod[i]), &t[i]) < 0)
			return cal_error_set(err, CAL_ERR_INVALID, "layer %d: %s weight not found", L,
					     cal_role_name(p[i].role));
		if (qtens_find(c->ev, mod[i], &q[i]) < 0)
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s.weight is missing from the quantized checkpoint: it "
					     "was not made from this source", mod[i]);
		if (q[i].w.dtype != CAL_DTYPE_BF16)
			any = 1;
		else if (t[i]->dtype == CAL_DTYPE_BF16 &&
			 (q[i].w.nbytes != t[i]->nbytes || memcmp(q[i].w.data, t[i]->data,
								  t[i]->nbytes)))
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s.weight is unquantized but differs from the source's: "
					     "the quantized checkpoint was not made from this source",
					     mod[i]);
		total += (uint64_t)(p[i].rows * p[i].cols);
	}
	if (!any)
		return CAL_OK;
	CAL_TRY(cal_backend_alloc(c->be, total * 2, &buf, err));
	owned[(*n_owned)++] = buf;
	for (int i = 0; i < np; i++) {
		struct eq_site s;
		int n_tmp = 0;
		void *tmp[2] = {NULL, NULL};
		st = permute_rows(&q[i].w, p[i].rows, p[i].map, tmp, &n_tmp, mod[i], err);
		if (st >= 0)
			st = permute_rows(&q[i].s, p[i].rows, p[i].map, tmp, &n_tmp, mod[i], err);
		if (st >= 0)
			st = dequant(c, &q[i], p[i].rows, p[i].cols, (uint16_t *)buf + off, &s, err);
		/* the upload is done when the back end's stream reaches the next sync;
		 * the host copies must live until then */
		if (n_tmp)
			(void)cal_backend_sync(c->be, NULL);
		free(tmp[0]);
		free(tmp[1]);
		if (st < 0)
			goto fail;
		merge_site(site, &s);
		off += (uint64_t)(p[i].rows * p[i].cols);
	}
	*ret = buf;
fail:
	return st;
}

/* A row map (dst row r <- src row map[r]) of n rows, owned. */
static uint32_t *new_map(uint64_t n, void **owned, int *n_owned)
{
	uint32_t *m = malloc((n + 1) * 4);
	if (m)
		owned[(*n_owned)++] = m;
	return m;
}

/* Routed expert e's module name in the export: per expert under the hub
 * names (docs/export.md), `mlp.experts` or Mixtral's `block_sparse_moe`. */
static int expert_module(const struct cal_calib *c, int32_t L, int64_t e, int proj, char *buf,
			 size_t n)
{
	const char *pre = cal_catalog_prefix(c->cat);
	static const char *const blk[] = {"mlp", "block_sparse_moe"};
	for (int b = 0; b < 2; b++) {
		snprintf(buf, n, "%slayers.%d.%s.experts.%lld.%s", pre, L, blk[b], (long long)e,
			 c->d->arch->expert_proj[proj]);
		if (qget(c->ev, buf, "weight"))
			return 0;
	}
	return -1;
}

/* GPT-OSS: projection `name` of every expert, one 3-D tensor [E, in', out]
 * in the export (docs/gpt_oss.md: quantized as [E, out, in], stored
 * transposed; gate and up interleaved along out), as the per-expert qtens
 * of expert e in the engine's [out, in] order, gate rows first. */
static enum cal_status oai_expert(struct cal_calib *c, int32_t L, const char *name, int64_t e,
				  int64_t rows, int gate_up, char *mod, size_t mod_n,
				  struct qtens *q, void **tmp, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	char sn[CAL_ST_MAX_NAME + 32];
	const struct cal_st_tensor *w, *s;
	snprintf(mod, mod_n, "%slayers.%d.mlp.experts.%s", cal_catalog_prefix(c->cat), L,
		 name);
	memset(q, 0, sizeof(*q));
	q->mod = mod;
	w = cal_checkpoint_find(ev->q, mod);
	snprintf(sn, sizeof(sn), "%s_weight_scale", mod);
	s = cal_checkpoint_find(ev->q, sn);
	snprintf(sn, sizeof(sn), "%s_weight_scale_2", mod);
	q->s2 = scalar(cal_checkpoint_find(ev->q, sn));
	snprintf(sn, sizeof(sn), "%s_input_scale", mod);
	q->is = scalar(cal_checkpoint_find(ev->q, sn));
	if (s && s->numel == 1)
		q->s1 = scalar(s), s = NULL;
	int64_t E = c->E;
	for (int k = 0; k < 2; k++) {
		const struct cal_st_tensor *t = k ? s : w;
		struct cal_st_tensor *o = k ? &q->s : &q->w;
		if (!t)
			continue;
		/* [E, in', out] -> expert e's [out, in'] */
		uint64_t esz = t->dtype == CAL_DTYPE_BF16 ? 2 : 1;
		if (t->ndim != 3 || t->shape[0] != E || t->shape[2] != rows ||
		    (esz != 1 && esz != 2))
			return cal_error_set(err, CAL_ERR_INVALID, "%s: [%lld, ?, %lld] expected: the "
					     "quantized checkpoint was not made from this source",
					     t->name, (long long)E, (long long)rows);
		uint64_t in = (uint64_t)t->shape[1], R = (uint64_t)rows;
		uint8_t *p = malloc(R * in * esz);
		if (!p)
			return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
		tmp[k] = p;
		const uint8_t *src = (const uint8_t *)t->data + (uint64_t)e * in * R * esz;
		for (uint64_t r = 0; r < R; r++) {
			uint64_t sc = gate_up ? (r < R / 2 ? 2 * r : 2 * (r - R / 2) + 1) : r;
			for (uint64_t i = 0; i < in; i++)
				memcpy(p + (r * in + i) * esz, src + (i * R + sc) * esz, esz);
		}
		*o = *t;
		o->data = p;
		o->ndim = 2;
		o->shape[0] = (int64_t)R;
		o->shape[1] = (int64_t)in;
		o->numel = R * in;
		o->nbytes = R * in * esz;
	}
	if (!w)
		return cal_error_set(err, CAL_ERR_INVALID, "%s is missing from the quantized "
				     "checkpoint: it was not made from this source", mod);
	return CAL_OK;
}

static enum cal_status load_experts(struct cal_calib *c, int32_t L, struct cal_layer_w *qw,
				    void **owned, int *n_owned, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	int64_t E = c->E, I = c->I, H = c->H;
	int oai = c->d->act == CAL_ACT_SWIGLU_OAI;
	char mod[CAL_ST_MAX_NAME];
	enum cal_status st = CAL_OK;
	void *b13 = NULL, *b2 = NULL;
	CAL_TRY(cal_backend_alloc(c->be, (size_t)(E * 2 * I * H) * 2, &b13, err));
	owned[(*n_owned)++] = b13;
	CAL_TRY(cal_backend_alloc(c->be, (size_t)(E * H * I) * 2, &b2, err));
	owned[(*n_owned)++] = b2;
	for (int64_t e = 0; e < E; e++) {
		struct eq_site s;
		ev->exp_gu[e] = (struct eq_site){AQ_NONE, 0};
		for (int p = oai; p < 3; p++) { /* gpt_oss: gate and up are one tensor */
			int64_t rows = p == 2 ? H : p == 1 && oai ? 2 * I : I, cols = p == 2 ? I : H;
			uint16_t *dst = p == 2 ? (uint16_t *)b2 + e * H * I
					       : (uint16_t *)b13 + e * 2 * I * H + (oai ? 0 : p) * I * H;
			struct qtens q;
			void *tmp[2] = {NULL, NULL};
			if (oai) {
				st = oai_expert(c, L, p == 2 ? "down_proj" : "gate_up_proj", e, rows,
						p != 2, mod, sizeof(mod), &q, tmp, err);
			} else if (expert_module(c, L, e, p, mod, sizeof(mod)) < 0 ||
				   qtens_find(ev, mod, &q) < 0) {
				st = cal_error_set(err, CAL_ERR_INVALID,
						   "layer %d expert %lld: %s is missing from the "
						   "quantized checkpoint: it was not made from this "
						   "source", L, (long long)e, c->d->arch->expert_proj[p]);
			}
			if (st >= 0)
				st = dequant(c, &q, rows, cols, dst, &s, err);
			if (tmp[0] || tmp[1])
				(void)cal_backend_sync(c->be, NULL);
			free(tmp[0]);
			free(tmp[1]);
			if (st < 0)
				goto fail;
			if (p == 2)
				ev->exp_dn[e] = s;
			else
				merge_site(&ev->exp_gu[e], &s);
		}
	}
	qw->e13 = b13;
	qw->e2 = b2;
fail:
	return st;
}

/* The attention module's prefix ("...self_attn") from its o_proj. */
static int attn_prefix(const struct cal_calib *c, int32_t L, char *buf, size_t n)
{
	const struct cal_st_tensor *t;
	if (module_of(c, CAL_ROLE_O_PROJ, L, buf, n, &t) < 0)
		return -1;
	char *dot = strrchr(buf, '.');
	if (!dot)
		return -1;
	*dot = 0;
	return 0;
}

/* The KV-cache sites: k_scale / v_scale beside k_proj / v_proj (MLA: the
 * same names, modelopt's, docs/deepseek.md). */
static void kv_sites(struct cal_calib *c, int32_t L)
{
	struct cal_eval *ev = c->ev;
	char pre[CAL_ST_MAX_NAME], mod[CAL_ST_MAX_NAME + 16];
	if (attn_prefix(c, L, pre, sizeof(pre)) < 0)
		return;
	for (int k = 0; k < 2; k++) {
		snprintf(mod, sizeof(mod), "%s.%s", pre, k ? "v_proj" : "k_proj");
		float sc = scalar(qget(ev, mod, k ? "v_scale" : "k_scale"));
		ev->site[k ? EQ_V : EQ_K] = (struct eq_site){
			sc > 0 || ev->kv_default > 0 ? AQ_FP8 : AQ_NONE, sc > 0 ? sc : ev->kv_default};
	}
}

/* Gated attention: q_proj stores each head's query rows, then its gate
 * rows; the engine runs every query row first (layer.c). */
static const uint32_t *gated_q_map(const struct cal_calib *c, void **owned, int *n_owned)
{
	uint64_t nh = (uint64_t)c->nh, hd = (uint64_t)c->hd;
	uint32_t *m = new_map(2 * nh * hd, owned, n_owned);
	for (uint64_t h = 0; m && h < nh; h++)
		for (uint64_t j = 0; j < hd; j++) {
			m[h * hd + j] = (uint32_t)(2 * h * hd + j);
			m[(nh + h) * hd + j] = (uint32_t)((2 * h + 1) * hd + j);
		}
	return m;
}

static enum cal_status load_gdn(struct cal_calib *c, int32_t L, struct cal_layer_w *qw,
				void **owned, int *n_owned, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	struct cal_gdn_dims g;
	int64_t H = c->H;
	enum cal_status st = CAL_OK;
	const uint16_t *in = NULL;
	cal_gdn_dims(c->d, &g);
	if (c->d->gdn == CAL_GDN_FUSED) {
		/* Qwen3-Next: qkvz / ba grouped by key head (gdn.c permute_fused) */
		uint64_t r = g.nv / g.nk, kd = g.nk * g.dk, gw = 2 * g.dk + 2 * r * g.dv;
		uint32_t *m1 = new_map(g.cd + g.vd, owned, n_owned), *m2 = new_map(2 * g.nv, owned,
										    n_owned);
		if (!m1 || !m2)
			return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
		for (uint64_t k = 0; k < g.nk; k++) {
			uint64_t s0 = k * gw;
			uint64_t dst[4] = {k * g.dk, kd + k * g.dk, 2 * kd + k * r * g.dv,
					   g.cd + k * r * g.dv};
			uint64_t len[4] = {g.dk, g.dk, r * g.dv, r * g.dv};
			for (int p = 0; p < 4; p++)
				for (uint64_t i = 0; i < len[p]; i++)
					m1[dst[p] + i] = (uint32_t)(s0++);
			for (uint64_t i = 0; i < r; i++) {
				m2[k * r + i] = (uint32_t)(2 * k * r + i);
				m2[g.nv + k * r + i] = (uint32_t)(2 * k * r + r + i);
			}
		}
		struct wpart p[2] = {{CAL_ROLE_GDN_IN_QKVZ, (int64_t)(g.cd + g.vd), H, m1},
				     {CAL_ROLE_GDN_IN_BA, (int64_t)(2 * g.nv), H, m2}};
		CAL_TRY(load_linear(c, L, p, 2, NULL, &in, owned, n_owned, &ev->site[EQ_QKV], err));
	} else {
		struct wpart p[4] = {{CAL_ROLE_GDN_IN_QKV, (int64_t)g.cd, H, NULL},
				     {CAL_ROLE_GDN_IN_Z, (int64_t)g.vd, H, NULL},
				     {CAL_ROLE_GDN_IN_B, (int64_t)g.nv, H, NULL},
				     {CAL_ROLE_GDN_IN_A, (int64_t)g.nv, H, NULL}};
		CAL_TRY(load_linear(c, L, p, 4, NULL, &in, owned, n_owned, &ev->site[EQ_QKV], err));
	}
	if (in) { /* the buffer holds qkv | z | b | a */
		qw->lqkv = in;
		qw->lz = in + g.cd * (uint64_t)H;
		qw->lb = qw->lz + g.vd * (uint64_t)H;
		qw->la = qw->lb + g.nv * (uint64_t)H;
	}
	struct wpart o = {CAL_ROLE_GDN_OUT, H, (int64_t)g.vd, NULL};
	CAL_TRY(load_linear(c, L, &o, 1, qw->lout, &qw->lout, owned, n_owned, &ev->site[EQ_O],
			    err));
fail:
	return st;
}

static enum cal_status load_mla(struct cal_calib *c, int32_t L, struct cal_layer_w *qw,
				void **owned, int *n_owned, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	const struct cal_model_desc *d = c->d;
	int64_t H = c->H, nh = d->num_heads, qr = d->q_lora_rank, kvr = d->kv_lora_rank;
	int64_t qk = d->qk_nope_head_dim + d->qk_rope_head_dim, dv = d->v_head_dim;
	enum cal_status st = CAL_OK;
	struct eq_site s;
	if (qr) {
		struct wpart a = {CAL_ROLE_Q_A_PROJ, qr, H, NULL}, b = {CAL_ROLE_Q_B_PROJ, nh * qk, qr,
									NULL};
		CAL_TRY(load_linear(c, L, &a, 1, qw->wqa, &qw->wqa, owned, n_owned, &s, err));
		merge_site(&ev->site[EQ_QKV], &s);
		CAL_TRY(load_linear(c, L, &b, 1, qw->wq, &qw->wq, owned, n_owned, &ev->site[EQ_QB],
				    err));
	} else {
		struct wpart q = {CAL_ROLE_Q_PROJ, nh * qk, H, NULL};
		CAL_TRY(load_linear(c, L, &q, 1, qw->wq, &qw->wq, owned, n_owned, &s, err));
		merge_site(&ev->site[EQ_QKV], &s);
	}
	struct wpart a = {CAL_ROLE_KV_A_PROJ, kvr + d->qk_rope_head_dim, H, NULL},
		     b = {CAL_ROLE_KV_B_PROJ, nh * (d->qk_nope_head_dim + dv), kvr, NULL},
		     o = {CAL_ROLE_O_PROJ, H, nh * dv, NULL};
	CAL_TRY(load_linear(c, L, &a, 1, qw->wkva, &qw->wkva, owned, n_owned, &s, err));
	merge_site(&ev->site[EQ_QKV], &s);
	CAL_TRY(load_linear(c, L, &b, 1, qw->wkvb, &qw->wkvb, owned, n_owned, &ev->site[EQ_KVB],
			    err));
	CAL_TRY(load_linear(c, L, &o, 1, qw->wo, &qw->wo, owned, n_owned, &ev->site[EQ_O], err));
fail:
	return st;
}

static enum cal_status load_gqa(struct cal_calib *c, int32_t L, struct cal_layer_w *qw,
				void **owned, int *n_owned, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	int64_t H = c->H, qd = c->nh * c->hd, kd = c->nkv * c->hd;
	int gated = c->d->attn == CAL_ATTN_GATED_GQA;
	enum cal_status st = CAL_OK;
	struct eq_site s;
	const uint32_t *qmap = gated ? gated_q_map(c, owned, n_owned) : NULL;
	if (gated && !qmap)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	struct wpart q = {CAL_ROLE_Q_PROJ, (gated ? 2 : 1) * qd, H, qmap},
		     k = {CAL_ROLE_K_PROJ, kd, H, NULL}, v = {CAL_ROLE_V_PROJ, kd, H, NULL},
		     o = {CAL_ROLE_O_PROJ, H, qd, NULL};
	CAL_TRY(load_linear(c, L, &q, 1, qw->wq, &qw->wq, owned, n_owned, &s, err));
	merge_site(&ev->site[EQ_QKV], &s);
	CAL_TRY(load_linear(c, L, &k, 1, qw->wk, &qw->wk, owned, n_owned, &s, err));
	merge_site(&ev->site[EQ_QKV], &s);
	CAL_TRY(load_linear(c, L, &v, 1, qw->wv, &qw->wv, owned, n_owned, &s, err));
	merge_site(&ev->site[EQ_QKV], &s);
	CAL_TRY(load_linear(c, L, &o, 1, qw->wo, &qw->wo, owned, n_owned, &ev->site[EQ_O], err));
fail:
	return st;
}

/* The quantized weights of layer L (qw starts as the source's) and the
 * sites of its inputs. */
static enum cal_status load_layer(struct cal_calib *c, int32_t L, enum cal_step mixer,
				  struct cal_layer_w *qw, void **owned, int *n_owned,
				  struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	const struct cal_layer_desc *ld = &c->d->layers[L];
	int64_t H = c->H;
	enum cal_status st = CAL_OK;
	memset(ev->site, 0, sizeof(ev->site));
	if (mixer == STEP_GDN) {
		CAL_TRY(load_gdn(c, L, qw, owned, n_owned, err));
	} else {
		if (mixer == STEP_ATTN_MLA)
			CAL_TRY(load_mla(c, L, qw, owned, n_owned, err));
		else
			CAL_TRY(load_gqa(c, L, qw, owned, n_owned, err));
		kv_sites(c, L);
	}
	if (ld->ffn == CAL_FFN_DENSE) {
		struct wpart gu[2] = {{CAL_ROLE_MLP_GATE, c->Id, H, NULL},
				      {CAL_ROLE_MLP_UP, c->Id, H, NULL}},
			     dn = {CAL_ROLE_MLP_DOWN, H, c->Id, NULL};
		CAL_TRY(load_linear(c, L, gu, 2, qw->w13, &qw->w13, owned, n_owned,
				    &ev->site[EQ_MLP_GU], err));
		CAL_TRY(load_linear(c, L, &dn, 1, qw->w2, &qw->w2, owned, n_owned,
				    &ev->site[EQ_MLP_DOWN], err));
		return CAL_OK;
	}
	CAL_TRY(load_experts(c, L, qw, owned, n_owned, err));
	if (qw->s13) {
		struct wpart gu[2] = {{CAL_ROLE_SHARED_GATE, c->Is, H, NULL},
				      {CAL_ROLE_SHARED_UP, c->Is, H, NULL}},
			     dn = {CAL_ROLE_SHARED_DOWN, H, c->Is, NULL};
		CAL_TRY(load_linear(c, L, gu, 2, qw->s13, &qw->s13, owned, n_owned,
				    &ev->site[EQ_SH_GU], err));
		CAL_TRY(load_linear(c, L, &dn, 1, qw->s2, &qw->s2, owned, n_owned,
				    &ev->site[EQ_SH_DOWN], err));
	}
fail:
	return st;
}

/* ---- activations ------------------------------------------------------------------ */

static enum cal_status fake_quant(struct cal_calib *c, const struct eq_site *s, uint16_t *x,
				  uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	enum cal_status st = CAL_OK;
	uint64_t n = rows * cols;
	if (s->fmt == AQ_NONE || n == 0)
		return CAL_OK;
	if (n > ev->fq_elems)
		return cal_error_set(err, CAL_ERR_INTERNAL, "eval: activation of %llu elements "
				     "exceeds the scratch", (unsigned long long)n);
	if (s->fmt == AQ_FP8) {
		/* the serving engine's FP8 quantizer saturates at +-448 scale */
		struct cal_ewise_args cl = {CAL_EWISE_CLAMP, x, NULL, NULL, x, rows, cols, 0, 0, 0, 0,
					    448.0f * s->scale, 0};
		/* one rounding of the fp32 quotient, as the serving engines' quantizer */
		struct cal_fp8_quant_args q = {x, n, s->scale, CAL_DIV_EXACT, ev->qbuf, 1};
		struct cal_fp8_dequant_args d = {ev->qbuf, n, s->scale, CAL_DTYPE_BF16, x};
		CAL_TRY(cal_op_ewise(c->be, &cl, err));
		CAL_TRY(cal_op_fp8_quant(c->be, &q, err));
		CAL_TRY(cal_op_fp8_dequant(c->be, &d, err));
		return CAL_OK;
	}
	if (s->fmt == AQ_MXFP8) {
		if (cols % 32)
			return cal_error_set(err, CAL_ERR_INVALID, "eval: MXFP8 input of %llu "
					     "columns", (unsigned long long)cols);
		struct cal_mxfp8_quant_args q = {x, rows, cols, CAL_DIV_EXACT, ev->qbuf, ev->sbuf};
		struct cal_mxfp8_dequant_args d = {ev->qbuf, ev->sbuf, rows, cols, CAL_DTYPE_BF16, x};
		CAL_TRY(cal_op_mxfp8_quant(c->be, &q, err));
		CAL_TRY(cal_op_mxfp8_dequant(c->be, &d, err));
		return CAL_OK;
	}
	if (cols % 16)
		return cal_error_set(err, CAL_ERR_INVALID, "eval: NVFP4 input of %llu columns",
				     (unsigned long long)cols);
	struct cal_nvfp4_quant_args q = {x, rows, cols, s->scale, ev->qbuf, ev->sbuf, 0};
	struct cal_nvfp4_dequant_args d = {ev->qbuf, ev->sbuf, rows, cols, s->scale, CAL_DTYPE_BF16,
					   x, 0};
	CAL_TRY(cal_op_nvfp4_quant(c->be, &q, err));
	CAL_TRY(cal_op_nvfp4_dequant(c->be, &d, err));
fail:
	return st;
}

enum cal_status cal_eval_actq(struct cal_calib *c, int32_t L, int site, int64_t expert,
			      uint16_t *x, uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	const struct eq_site *s;
	(void)L;
	if (!c->ev_quant || !ev)
		return CAL_OK;
	s = &ev->site[site];
	if (site == EQ_EXP_GU)
		s = &ev->exp_gu[expert];
	else if (site == EQ_EXP_DOWN)
		s = &ev->exp_dn[expert];
	return fake_quant(c, s, x, rows, cols, err);
}

/* ---- the run ------------------------------------------------------------------------ */

static uint64_t maxu(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

/* The widest fake-quantized input per token: any module input, MLA's K
 * and V, the routed experts' kk rows. */
static uint64_t fq_per_token(const struct cal_calib *c)
{
	const struct cal_model_desc *d = c->d;
	uint64_t H = (uint64_t)c->H, kk = maxu((uint64_t)c->kk, 1), w = H;
	uint64_t mla_k = (uint64_t)d->num_heads * (uint64_t)(d->qk_nope_head_dim +
							     d->qk_rope_head_dim);
	w = maxu(w, (uint64_t)(c->nh * c->hd));
	w = maxu(w, maxu(maxu((uint64_t)c->Id, (uint64_t)c->I), (uint64_t)c->Is));
	if (d->attn == CAL_ATTN_MLA)
		w = maxu(w, maxu(maxu(mla_k, (uint64_t)(d->num_heads * d->v_head_dim)),
				 maxu((uint64_t)d->q_lora_rank, (uint64_t)d->kv_lora_rank)));
	if (d->gdn != CAL_GDN_NONE) {
		struct cal_gdn_dims g;
		cal_gdn_dims(d, &g);
		w = maxu(w, g.vd);
	}
	return kk * w;
}

uint64_t cal_eval_token_bytes(const struct cal_calib *c)
{
	uint64_t fq = fq_per_token(c);
	return 2 * (uint64_t)c->H + fq + fq / 16 + 4 * (uint64_t)c->d->vocab_size;
}

/* The final norm and the source's lm_head (tied: the embedding) on the
 * back end. */
static enum cal_status load_source_head(struct cal_calib *c, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, V = (uint64_t)c->d->vocab_size;
	const struct cal_st_tensor *nt = cal_catalog_find(c->cat, CAL_ROLE_FINAL_NORM,
							  CAL_PART_WEIGHT, -1, -1);
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, CAL_ROLE_LM_HEAD, CAL_PART_WEIGHT,
							 -1, -1);
	enum cal_status st = CAL_OK;
	if (!nt || nt->numel != H || (nt->dtype != CAL_DTYPE_BF16 && nt->dtype != CAL_DTYPE_F32))
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "eval: the final norm weight must be "
				     "a bf16 or f32 [%llu] tensor", (unsigned long long)H);
	if (!t)
		t = cal_catalog_find(c->cat, CAL_ROLE_EMBED, CAL_PART_WEIGHT, -1, -1);
	if (!t || t->numel != V * H || t->dtype != CAL_DTYPE_BF16)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "eval: no bf16 lm_head or "
				     "embedding of [%llu, %llu]", (unsigned long long)V,
				     (unsigned long long)H);
	ev->norm_dt = nt->dtype;
	CAL_TRY(cal_backend_alloc_upload(c->be, nt->data, nt->nbytes, &ev->norm_w, err));
	CAL_TRY(cal_backend_alloc_upload(c->be, t->data, t->nbytes, &ev->lm_src, err));
fail:
	return st;
}

/* ---- logits and KL ------------------------------------------------------------------ */

/* logits [n, V] of the hidden states x [n, H] (back end) through the final
 * norm and lm_head lw, the norm's output fake-quantized as site (NULL:
 * none). */
static enum cal_status head_logits(struct cal_calib *c, const uint16_t *x, uint64_t n,
				   const void *lw, const struct eq_site *site, uint16_t *lg,
				   struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, V = (uint64_t)c->d->vocab_size;
	enum cal_status st = CAL_OK;
	enum cal_rms_kind kind = c->d->norm == CAL_NORM_RMS_F32W ? CAL_RMS_F32W
			       : c->d->norm == CAL_NORM_RMS_1P ? CAL_RMS_1P : CAL_RMS_PLAIN;
	struct cal_rmsnorm_args a = {kind, x, c->h, n, H, ev->norm_w, ev->norm_dt,
				     (float)c->d->rms_norm_eps};
	CAL_TRY(cal_op_rmsnorm(c->be, &a, err));
	if (site)
		CAL_TRY(fake_quant(c, site, c->h, n, H, err));
	struct cal_gemm_args g = {.x = c->h, .w = lw, .y = lg, .m = n, .n = V, .k = H};
	CAL_TRY(cal_op_gemm(c->be, &g, err));
fail:
	return st;
}

struct kl_ctx {
	const uint16_t *lo, *lq;    /* [n, V] host */
	uint64_t V;
	const uint32_t *next;       /* [n] next token, UINT32_MAX: none (NULL: no NLL) */
	struct cal_eval *ev;
};

/* log-sum-exp of n bf16 logits and their argmax (first maximum). */
static double lse_bf16(const uint16_t *x, uint64_t n, uint32_t *am)
{
	double mx = -INFINITY, sum = 0;
	*am = 0;
	for (uint64_t i = 0; i < n; i++) {
		double v = cal_bf16_to_f32(x[i]);
		if (v > mx) {
			mx = v;
			*am = (uint32_t)i;
		}
	}
	for (uint64_t i = 0; i < n; i++)
		sum += exp(cal_bf16_to_f32(x[i]) - mx);
	return mx + log(sum);
}

/* Per row r: KL(P_o || P_q) of the softmaxes (double), both argmaxes and
 * the negative log-likelihoods of next[r]. */
static void kl_range(void *ctx, uint64_t b, uint64_t e, unsigned slot)
{
	const struct kl_ctx *k = ctx;
	struct cal_eval *ev = k->ev;
	(void)slot;
	for (uint64_t r = b; r < e; r++) {
		const uint16_t *lo = k->lo + r * k->V, *lq = k->lq + r * k->V;
		double zo = lse_bf16(lo, k->V, &ev->r_ao[r]), zq = lse_bf16(lq, k->V, &ev->r_aq[r]);
		double kl = 0;
		for (uint64_t i = 0; i < k->V; i++) {
			double a = cal_bf16_to_f32(lo[i]) - zo, q = cal_bf16_to_f32(lq[i]) - zq;
			kl += exp(a) * (a - q);
		}
		ev->r_kl[r] = kl > 0 ? kl : 0;
		if (k->next && k->next[r] != UINT32_MAX) {
			ev->r_nlo[r] = zo - cal_bf16_to_f32(lo[k->next[r]]);
			ev->r_nlq[r] = zq - cal_bf16_to_f32(lq[k->next[r]]);
		}
	}
}

static enum cal_status kl_rows(struct cal_calib *c, const uint16_t *lo, const uint16_t *lq,
			       uint64_t n, const uint32_t *next, struct cal_error *err)
{
	struct kl_ctx k = {lo, lq, (uint64_t)c->d->vocab_size, next, c->ev};
	return cal_cpu_parallel(c->host, n, 1, kl_range, &k, err);
}

/* The logit lens after layer L: mean KL between the original and the
 * quantized model's hidden states read through the final norm and the
 * source lm_head, over the sampled positions. */
static enum cal_status lens_kl(struct cal_calib *c, double *ret, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, V = (uint64_t)c->d->vocab_size, T = c->mb_tokens;
	enum cal_status st = CAL_OK;
	double sum = 0;
	for (uint64_t i0 = 0; i0 < ev->n_lens; i0 += T) {
		uint64_t n = ev->n_lens - i0 < T ? ev->n_lens - i0 : T;
		for (int q = 0; q < 2; q++) {
			struct cal_gather_rows_args g = {q ? ev->xq : c->hidden, c->n_tok, H,
							 ev->lens_idx + i0, n, 1, ev->xtf};
			CAL_TRY(cal_op_gather_rows(c->be, &g, err));
			CAL_TRY(head_logits(c, ev->xtf, n, ev->lm_src, NULL,
					    q ? ev->logits_q : ev->logits_o, err));
		}
		CAL_TRY(cal_backend_download(c->be, ev->ha, ev->logits_o, n * V * 2, err));
		CAL_TRY(cal_backend_download(c->be, ev->hb, ev->logits_q, n * V * 2, err));
		CAL_TRY(cal_backend_sync(c->be, err));
		CAL_TRY(kl_rows(c, ev->ha, ev->hb, n, NULL, err));
		for (uint64_t r = 0; r < n; r++)
			sum += ev->r_kl[r];
	}
	*ret = ev->n_lens ? sum / (double)ev->n_lens : 0;
fail:
	return st;
}

/* Every stride-th predicted position, at most lens_max of them. */
static enum cal_status lens_sample(struct cal_calib *c, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t n_pred = 0, k = 0;
	for (uint64_t g = 0; g < c->n_tok; g++)
		n_pred += ev->next[g] != UINT32_MAX;
	uint64_t stride = ev->lens_max && n_pred > ev->lens_max
				  ? (n_pred + ev->lens_max - 1) / ev->lens_max : 1;
	ev->lens_at = calloc(c->n_tok + 1, 1);
	ev->lens_idx_h = malloc((n_pred / stride + 1) * 4);
	if (!ev->lens_at || !ev->lens_idx_h)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	for (uint64_t g = 0; g < c->n_tok; g++) {
		if (ev->next[g] == UINT32_MAX)
			continue;
		if (k++ % stride == 0) {
			ev->lens_at[g] = 1;
			ev->lens_idx_h[ev->n_lens++] = (uint32_t)g;
		}
	}
	if (!ev->n_lens)
		return CAL_OK;
	return cal_backend_alloc_upload(c->be, ev->lens_idx_h, ev->n_lens * 4,
					(void **)&ev->lens_idx, err);
}

enum cal_status cal_eval_begin(struct cal_calib *c, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, T = c->mb_tokens, kk = maxu((uint64_t)c->kk, 1);
	uint64_t V = (uint64_t)c->d->vocab_size;
	enum cal_status st = CAL_OK;
	if (c->hidden_on_host)
		return cal_error_set(err, CAL_ERR_NOMEM,
				     "evaluation keeps both models' hidden states in device memory; "
				     "%llu tokens do not fit: evaluate fewer samples",
				     (unsigned long long)c->n_tok);
	ev->fq_elems = T * fq_per_token(c);
	CAL_TRY(cal_backend_alloc(c->be, c->n_tok * H * 2, (void **)&ev->xq, err));
	CAL_TRY(cal_backend_copy(c->be, ev->xq, c->hidden, c->n_tok * H * 2, err));
	CAL_TRY(cal_backend_alloc(c->be, T * H * 2, (void **)&ev->xtf, err));
	CAL_TRY(cal_backend_alloc(c->be, ev->fq_elems, (void **)&ev->qbuf, err));
	CAL_TRY(cal_backend_alloc(c->be, ev->fq_elems / 16 + 16, (void **)&ev->sbuf, err));
	CAL_TRY(cal_backend_alloc(c->be, T * V * 2, (void **)&ev->logits_o, err));
	CAL_TRY(cal_backend_alloc(c->be, T * V * 2, (void **)&ev->logits_q, err));
	ev->hin = malloc(T * maxu(H, V) * 2);
	ev->ha = malloc(T * maxu(H, V) * 2);
	ev->hb = malloc(T * maxu(H, V) * 2);
	ev->yref = malloc(T * kk * H * 2);
	ev->ycmp = malloc(T * kk * H * 2);
	ev->offref = malloc(((size_t)c->E + 1) * 4);
	ev->tok_save = malloc(((size_t)c->E + 1) * 8);
	ev->exp_gu = calloc((size_t)c->E + 1, sizeof(*ev->exp_gu));
	ev->exp_dn = calloc((size_t)c->E + 1, sizeof(*ev->exp_dn));
	ev->kl = malloc((c->n_tok + 1) * sizeof(double));
	ev->r_kl = malloc((T + 1) * sizeof(double));
	ev->r_nlo = malloc((T + 1) * sizeof(double));
	ev->r_nlq = malloc((T + 1) * sizeof(double));
	ev->r_ao = malloc((T + 1) * 4);
	ev->r_aq = malloc((T + 1) * 4);
	ev->next = malloc((c->n_tok + 1) * 4);
	ev->seq = malloc((c->n_tok + 1) * 4);
	ev->layers = json_array();
	if (!ev->hin || !ev->ha || !ev->hb || !ev->yref || !ev->ycmp || !ev->offref ||
	    !ev->tok_save || !ev->exp_gu || !ev->exp_dn || !ev->kl || !ev->next || !ev->seq ||
	    !ev->layers || !ev->r_kl || !ev->r_nlo || !ev->r_nlq || !ev->r_ao || !ev->r_aq)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	for (size_t s = 0; s < ev->tk->n; s++)
		for (size_t i = ev->tk->off[s]; i < ev->tk->off[s + 1]; i++) {
			ev->seq[i] = (uint32_t)s;
			ev->next[i] = i + 1 < ev->tk->off[s + 1] ? ev->tk->ids[i + 1] : UINT32_MAX;
		}
	CAL_TRY(load_source_head(c, err));
	CAL_TRY(lens_sample(c, err));
fail:
	return st;
}

static const char *step_name(enum cal_step s)
{
	switch (s) {
	case STEP_ATTN_GQA: return "attention";
	case STEP_MLP_DENSE: return "mlp";
	case STEP_MOE: return "moe";
	case STEP_GDN: return "linear_attention";
	case STEP_ATTN_MLA: return "attention";
	}
	return "?";
}

/* sum (b - a)^2 and sum (a - in)^2 over n bf16 values. */
static void accum(const uint16_t *in, const uint16_t *a, const uint16_t *b, uint64_t n,
		  double *err2, double *ref2)
{
	double e = 0, r = 0;
	for (uint64_t i = 0; i < n; i++) {
		double fa = cal_bf16_to_f32(a[i]), fb = cal_bf16_to_f32(b[i]);
		double fi = in ? cal_bf16_to_f32(in[i]) : 0;
		e += (fb - fa) * (fb - fa);
		r += (fa - fi) * (fa - fi);
	}
	*err2 += e;
	*ref2 += r;
}

/* accum over the host back end's threads: each slot sums a contiguous
 * range, the slots fold in order. */
#define ACC_SLOTS 256
struct acc_ctx {
	const uint16_t *in, *a, *b;
	double e[ACC_SLOTS], r[ACC_SLOTS];
};

static void acc_range(void *p, uint64_t b, uint64_t e, unsigned slot)
{
	struct acc_ctx *x = p;
	accum(x->in ? x->in + b : NULL, x->a + b, x->b + b, e - b, &x->e[slot % ACC_SLOTS],
	      &x->r[slot % ACC_SLOTS]);
}

static void accum_par(struct cal_calib *c, const uint16_t *in, const uint16_t *a,
		      const uint16_t *b, uint64_t n, double *err2, double *ref2)
{
	struct acc_ctx x;
	memset(&x, 0, sizeof(x));
	x.in = in;
	x.a = a;
	x.b = b;
	if (cal_cpu_parallel(c->host, n, 1u << 16, acc_range, &x, NULL) < 0) {
		accum(in, a, b, n, err2, ref2);
		return;
	}
	for (unsigned k = 0; k < ACC_SLOTS; k++) {
		*err2 += x.e[k];
		*ref2 += x.r[k];
	}
}

/* Per routed expert e: the error of its output rows (teacher forced). */
struct xacc_ctx {
	const struct cal_eval *ev;
	uint64_t H;
	double *xerr, *xref;
};

static void xacc_range(void *p, uint64_t b, uint64_t e, unsigned slot)
{
	const struct xacc_ctx *x = p;
	(void)slot;
	for (uint64_t k = b; k < e; k++) {
		uint64_t r0 = x->ev->offref[k], r1 = x->ev->offref[k + 1];
		accum(NULL, x->ev->yref + r0 * x->H, x->ev->ycmp + r0 * x->H, (r1 - r0) * x->H,
		      &x->xerr[k], &x->xref[k]);
	}
}

static json_t *rel(double err2, double ref2)
{
	return ref2 > 0 ? json_real(sqrt(err2 / ref2)) : json_null();
}

enum cal_status cal_eval_layer(struct cal_calib *c, int32_t L, const struct cal_layer_w *w,
			       struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	enum cal_step steps[CAL_MAX_STEPS];
	int n_steps = 0, n_owned = 0;
	void *owned[MAX_OWNED];
	struct cal_layer_w qw = *w;
	uint64_t H = (uint64_t)c->H, E = (uint64_t)c->E, kk = maxu((uint64_t)c->kk, 1);
	double serr[CAL_MAX_STEPS] = {0}, sref[CAL_MAX_STEPS] = {0}, cerr = 0, cref = 0;
	double *xerr = NULL, *xref = NULL;
	uint64_t routing_differs = 0;
	enum cal_status st = cal_layer_steps(c, L, steps, &n_steps, err);
	if (st < 0)
		return st;
	if (c->d->layers[L].ffn == CAL_FFN_MOE) {
		xerr = calloc(E + 1, sizeof(double));
		xref = calloc(E + 1, sizeof(double));
		if (!xerr || !xref) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
			goto fail;
		}
	}
	CAL_TRY(load_layer(c, L, steps[0], &qw, owned, &n_owned, err));
	for (size_t m = 0; m < c->n_mb; m++) {
		const struct cal_mb *mb = &c->mbs[m];
		uint64_t T = mb->n_tok, n = T * H, P = T * kk;
		uint16_t *xo = c->hidden + mb->tok0 * H, *xq = ev->xq + mb->tok0 * H;
		for (int s = 0; s < n_steps; s++) {
			int moe = steps[s] == STEP_MOE;
			CAL_TRY(cal_backend_copy(c->be, ev->xtf, xo, n * 2, err));
			CAL_TRY(cal_backend_download(c->be, ev->hin, xo, n * 2, err));
			CAL_TRY(cal_layer_step_run(c, L, steps[s], w, mb, xo, err));
			if (moe) {
				CAL_TRY(cal_backend_download(c->be, ev->yref, c->yo, P * H * 2, err));
				memcpy(ev->offref, c->h_offsets, (E + 1) * 4);
				memcpy(ev->tok_save, c->moe[L].tokens, E * 8);
			}
			c->ev_quant = 1;
			st = cal_layer_step_run(c, L, steps[s], &qw, mb, ev->xtf, err);
			c->ev_quant = 0;
			if (st < 0)
				goto fail;
			if (moe) {
				memcpy(c->moe[L].tokens, ev->tok_save, E * 8);
				if (memcmp(ev->offref, c->h_offsets, (E + 1) * 4)) {
					routing_differs++;
				} else {
					CAL_TRY(cal_backend_download(c->be, ev->ycmp, c->yo, P * H * 2,
								     err));
					struct xacc_ctx xc = {ev, H, xerr, xref};
					CAL_TRY(cal_cpu_parallel(c->host, E, 1, xacc_range, &xc,
								 err));
				}
			}
			CAL_TRY(cal_backend_download(c->be, ev->ha, xo, n * 2, err));
			CAL_TRY(cal_backend_download(c->be, ev->hb, ev->xtf, n * 2, err));
			accum_par(c, ev->hin, ev->ha, ev->hb, n, &serr[s], &sref[s]);
		}
		/* the quantized model on its own hidden states */
		if (c->moe[L].tokens)
			memcpy(ev->tok_save, c->moe[L].tokens, E * 8);
		c->ev_quant = 1;
		for (int s = 0; s < n_steps && st >= 0; s++)
			st = cal_layer_step_run(c, L, steps[s], &qw, mb, xq, err);
		c->ev_quant = 0;
		if (st < 0)
			goto fail;
		if (c->moe[L].tokens)
			memcpy(c->moe[L].tokens, ev->tok_save, E * 8);
		CAL_TRY(cal_backend_download(c->be, ev->ha, xo, n * 2, err));
		CAL_TRY(cal_backend_download(c->be, ev->hb, xq, n * 2, err));
		accum_par(c, NULL, ev->ha, ev->hb, n, &cerr, &cref);
	}
	CAL_TRY(cal_backend_sync(c->be, err));
	double lk = 0;
	CAL_TRY(lens_kl(c, &lk, err));
	json_t *lj = json_pack("{s:i}", "layer", (int)L), *sa = json_array();
	json_object_set_new(lj, "kl_contribution", json_real(lk - ev->lens_prev));
	json_object_set_new(lj, "lens_kl", json_real(lk));
	ev->lens_prev = lk;
	double terr = 0, tref = 0;
	for (int s = 0; s < n_steps; s++) {
		json_t *sj = json_pack("{s:s, s:o}", "step", step_name(steps[s]), "rel_error",
				       rel(serr[s], sref[s]));
		terr += serr[s];
		tref += sref[s];
		if (steps[s] == STEP_MOE) {
			json_t *xa = json_array();
			for (uint64_t e = 0; e < E; e++)
				json_array_append_new(xa, rel(xerr[e], xref[e]));
			json_object_set_new(sj, "experts_rel_error", xa);
			if (routing_differs)
				json_object_set_new(sj, "micro_batches_routing_differs",
						    json_integer((json_int_t)routing_differs));
		}
		json_array_append_new(sa, sj);
	}
	json_object_set_new(lj, "rel_error", rel(terr, tref));
	json_object_set_new(lj, "hidden_rel_error", rel(cerr, cref));
	json_object_set_new(lj, "steps", sa);
	json_array_append_new(ev->layers, lj);
fail:
	(void)cal_backend_sync(c->be, NULL);
	for (int i = 0; i < n_owned; i++)
		cal_backend_dealloc(c->be, owned[i]);
	free(xerr);
	free(xref);
	return st;
}

static void keep_worst(struct cal_eval *ev, const struct worst *w)
{
	size_t i = ev->n_worst < N_WORST ? ev->n_worst++ : N_WORST - 1;
	if (i == N_WORST - 1 && ev->n_worst == N_WORST && ev->worst[i].kl >= w->kl)
		return;
	ev->worst[i] = *w;
	while (i > 0 && ev->worst[i - 1].kl < ev->worst[i].kl) {
		struct worst t = ev->worst[i - 1];
		ev->worst[i - 1] = ev->worst[i];
		ev->worst[i] = t;
		i--;
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* lm_head as the quantized model runs it (a new back-end buffer): the
 * export's, dequantized when quantized, else the source's (tied: the
 * embedding), and its input site. */
static enum cal_status load_lm_head(struct cal_calib *c, void **ret, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, V = (uint64_t)c->d->vocab_size;
	const uint16_t *q = NULL;
	void *owned[2];
	int n_owned = 0;
	enum cal_status st = CAL_OK;
	const struct cal_st_tensor *t = cal_catalog_find(c->cat, CAL_ROLE_LM_HEAD, CAL_PART_WEIGHT,
							 -1, -1);
	*ret = NULL;
	if (t) {
		struct wpart p = {CAL_ROLE_LM_HEAD, (int64_t)V, (int64_t)H, NULL};
		CAL_TRY(load_linear(c, -1, &p, 1, NULL, &q, owned, &n_owned, &ev->lm_site, err));
		if (q) {
			*ret = owned[0];
			return CAL_OK;
		}
	} else {
		t = cal_catalog_find(c->cat, CAL_ROLE_EMBED, CAL_PART_WEIGHT, -1, -1);
	}
	if (!t || t->numel != V * H || t->dtype != CAL_DTYPE_BF16)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "eval: no bf16 lm_head or "
				     "embedding of [%llu, %llu]", (unsigned long long)V,
				     (unsigned long long)H);
	CAL_TRY(cal_backend_alloc_upload(c->be, t->data, t->nbytes, ret, err));
fail:
	return st;
}

enum cal_status cal_eval_end(struct cal_calib *c, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	uint64_t H = (uint64_t)c->H, V = (uint64_t)c->d->vocab_size;
	enum cal_status st = CAL_OK;
	void *lq = NULL;
	double lens_sum = 0;
	CAL_TRY(load_lm_head(c, &lq, err));
	for (size_t m = 0; m < c->n_mb; m++) {
		const struct cal_mb *mb = &c->mbs[m];
		uint64_t T = mb->n_tok;
		CAL_TRY(head_logits(c, c->hidden + mb->tok0 * H, T, ev->lm_src, NULL, ev->logits_o,
				    err));
		CAL_TRY(head_logits(c, ev->xq + mb->tok0 * H, T, lq ? lq : ev->lm_src, &ev->lm_site,
				    ev->logits_q, err));
		CAL_TRY(cal_backend_download(c->be, ev->ha, ev->logits_o, T * V * 2, err));
		CAL_TRY(cal_backend_download(c->be, ev->hb, ev->logits_q, T * V * 2, err));
		CAL_TRY(cal_backend_sync(c->be, err));
		if ((ev->logits_out && fwrite(ev->hb, 2, T * V, ev->logits_out) != T * V) ||
		    (ev->logits_orig_out &&
		     fwrite(ev->ha, 2, T * V, ev->logits_orig_out) != T * V)) {
			st = cal_error_set(err, CAL_ERR_IO, "eval: writing the logits failed");
			goto fail;
		}
		CAL_TRY(kl_rows(c, ev->ha, ev->hb, T, ev->next + mb->tok0, err));
		for (uint64_t t = 0; t < T; t++) {
			uint64_t g = mb->tok0 + t;
			uint32_t nx = ev->next[g];
			if (nx == UINT32_MAX)
				continue;
			double kl = ev->r_kl[t];
			ev->kl[ev->n_pred++] = kl;
			ev->top1 += ev->r_ao[t] == ev->r_aq[t];
			ev->nll_o += ev->r_nlo[t];
			ev->nll_q += ev->r_nlq[t];
			if (ev->lens_at[g])
				lens_sum += kl;
			struct worst w = {kl, g, ev->tk->ids[g], nx, ev->r_ao[t], ev->r_aq[t]};
			keep_worst(ev, &w);
		}
	}
	ev->lens_final = ev->n_lens ? lens_sum / (double)ev->n_lens : 0;
fail:
	(void)cal_backend_sync(c->be, NULL);
	cal_backend_dealloc(c->be, lq);
	return st;
}

static json_t *report(struct cal_eval *ev, const struct cal_calib *c)
{
	json_t *r = json_object();
	uint64_t n = ev->n_pred;
	double sum = 0;
	for (uint64_t i = 0; i < n; i++)
		sum += ev->kl[i];
	qsort(ev->kl, n, sizeof(double), cmp_double);
	json_object_set_new(r, "sequences", json_integer((json_int_t)ev->tk->n));
	json_object_set_new(r, "tokens", json_integer((json_int_t)ev->tk->n_tokens));
	json_object_set_new(r, "predicted_tokens", json_integer((json_int_t)n));
	json_t *kl = json_object();
	json_object_set_new(kl, "mean", n ? json_real(sum / (double)n) : json_null());
	json_object_set_new(kl, "median", n ? json_real(ev->kl[n / 2]) : json_null());
	json_object_set_new(kl, "p99", n ? json_real(ev->kl[(uint64_t)((double)(n - 1) * 0.99)])
				      : json_null());
	json_object_set_new(kl, "max", n ? json_real(ev->kl[n - 1]) : json_null());
	json_object_set_new(r, "kl", kl);
	json_object_set_new(r, "top1_agreement", n ? json_real((double)ev->top1 / (double)n)
					       : json_null());
	json_object_set_new(r, "perplexity", json_pack("{s:o, s:o}",
		"original", n ? json_real(exp(ev->nll_o / (double)n)) : json_null(),
		"quantized", n ? json_real(exp(ev->nll_q / (double)n)) : json_null()));
	json_object_set_new(r, "quantized_weights", json_integer((json_int_t)ev->n_qweights));
	json_object_set(r, "layers", ev->layers);
	json_object_set_new(r, "layer_kl", json_pack("{s:s, s:I, s:f, s:f}", "method", "logit_lens",
		"positions", (json_int_t)ev->n_lens, "final_kl_on_positions", ev->lens_final,
		"lm_head_contribution", ev->lens_final - ev->lens_prev));
	json_t *wa = json_array();
	for (size_t i = 0; i < ev->n_worst; i++) {
		const struct worst *w = &ev->worst[i];
		uint32_t s = ev->seq[w->tok];
		json_array_append_new(wa, json_pack("{s:I, s:I, s:I, s:I, s:f, s:I, s:I}",
			"sequence", (json_int_t)s, "position", (json_int_t)(w->tok - ev->tk->off[s]),
			"token", (json_int_t)w->id, "next", (json_int_t)w->next, "kl", w->kl,
			"top1_original", (json_int_t)w->top_o, "top1_quantized", (json_int_t)w->top_q));
	}
	json_object_set_new(r, "worst_tokens", wa);
	json_object_set_new(r, "device", json_string(cal_calib_backend_describe(c)));
	json_object_set_new(r, "seconds", json_real(cal_now() - ev->t0));
	return r;
}

static void eval_free(struct cal_calib *c, struct cal_eval *ev)
{
	cal_backend_dealloc(c->be, ev->xq);
	cal_backend_dealloc(c->be, ev->xtf);
	cal_backend_dealloc(c->be, ev->qbuf);
	cal_backend_dealloc(c->be, ev->sbuf);
	cal_backend_dealloc(c->be, ev->logits_o);
	cal_backend_dealloc(c->be, ev->logits_q);
	free(ev->hin);
	free(ev->ha);
	free(ev->hb);
	free(ev->yref);
	free(ev->ycmp);
	free(ev->offref);
	free(ev->tok_save);
	free(ev->exp_gu);
	free(ev->exp_dn);
	free(ev->kl);
	free(ev->next);
	free(ev->seq);
	json_decref(ev->layers);
	cal_backend_dealloc(c->be, ev->norm_w);
	cal_backend_dealloc(c->be, ev->lm_src);
	cal_backend_dealloc(c->be, ev->lens_idx);
	free(ev->lens_idx_h);
	free(ev->lens_at);
	free(ev->r_kl);
	free(ev->r_nlo);
	free(ev->r_nlq);
	free(ev->r_ao);
	free(ev->r_aq);
}

/* kv_cache_quant_algo of the export's hf_quant_config.json: FP8 without
 * k_scale / v_scale means scale 1 in the serving engines. */
static float kv_default(const struct cal_checkpoint *q)
{
	const struct cal_st_tensor *t = cal_checkpoint_count(q) ? cal_checkpoint_tensor(q, 0) : NULL;
	char *dir = NULL, *path = NULL, *text = NULL;
	size_t len = 0;
	float r = 0;
	if (!t || !t->file)
		return 0;
	const char *slash = strrchr(t->file, '/');
	dir = slash ? strndup(t->file, (size_t)(slash - t->file)) : strdup(".");
	path = dir ? cal_path_join(dir, "hf_quant_config.json") : NULL;
	if (path && cal_read_file(path, 16u << 20, &text, &len, NULL) >= 0) {
		json_t *j = json_loadb(text, len, 0, NULL);
		const char *kv = json_string_value(
			json_object_get(json_object_get(j, "quantization"), "kv_cache_quant_algo"));
		if (kv && !strcmp(kv, "FP8"))
			r = 1.0f;
		json_decref(j);
	}
	free(text);
	free(path);
	free(dir);
	return r;
}

enum cal_status cal_eval_run(struct cal_calib *c, const struct cal_checkpoint *quant,
			     const struct cal_calib_tokens *tokens, const struct cal_eval_opts *opts,
			     json_t **ret, struct cal_error *err)
{
	struct cal_eval ev;
	enum cal_status st;
	*ret = NULL;
	if (c->o.pad_like_modelopt)
		return cal_error_set(err, CAL_ERR_INVALID, "eval runs packed sequences "
				     "(no --pad-like-modelopt)");
	memset(&ev, 0, sizeof(ev));
	ev.q = quant;
	ev.tk = tokens;
	ev.t0 = cal_now();
	ev.kv_default = kv_default(quant);
	ev.lens_max = opts && opts->layer_kl_positions ? opts->layer_kl_positions
						       : CAL_EVAL_LAYER_KL_POSITIONS;
	if (opts && opts->logits_out && !(ev.logits_out = fopen(opts->logits_out, "wb")))
		return cal_error_set(err, CAL_ERR_IO, "%s: cannot create", opts->logits_out);
	if (opts && opts->logits_orig_out &&
	    !(ev.logits_orig_out = fopen(opts->logits_orig_out, "wb"))) {
		if (ev.logits_out)
			fclose(ev.logits_out);
		return cal_error_set(err, CAL_ERR_IO, "%s: cannot create", opts->logits_orig_out);
	}
	c->ev = &ev;
	st = cal_calib_run(c, tokens, err);
	if (ev.logits_out && fclose(ev.logits_out) && st >= 0)
		st = cal_error_set(err, CAL_ERR_IO, "%s: write failed", opts->logits_out);
	if (ev.logits_orig_out && fclose(ev.logits_orig_out) && st >= 0)
		st = cal_error_set(err, CAL_ERR_IO, "%s: write failed", opts->logits_orig_out);
	c->ev = NULL;
	c->ev_quant = 0;
	if (st >= 0) {
		*ret = report(&ev, c);
		if (!*ret)
			st = cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	}
	eval_free(c, &ev);
	return st;
}

/* ---- the source check ------------------------------------------------------------ */

static enum cal_status load_json_file(const char *dir, const char *name, json_t **ret,
				      struct cal_error *err)
{
	char *path = cal_path_join(dir, name), *text = NULL;
	size_t len = 0;
	enum cal_status st;
	json_error_t je;
	*ret = NULL;
	if (!path)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	st = cal_read_file(path, 64u << 20, &text, &len, err);
	if (st >= 0) {
		*ret = json_loadb(text, len, 0, &je);
		if (!json_is_object(*ret)) {
			json_decref(*ret);
			*ret = NULL;
			st = cal_error_set(err, CAL_ERR_FORMAT, "%s:%d: %s", path, je.line, je.text);
		}
	}
	free(text);
	free(path);
	return st;
}

enum cal_status cal_eval_check_source(const char *model_dir, const struct cal_checkpoint *src,
				      const char *quant_dir, struct cal_error *err)
{
	json_t *a = NULL, *b = NULL, *rep = NULL;
	enum cal_status st;
	char fp[17];
	CAL_TRY(load_json_file(model_dir, "config.json", &a, err));
	CAL_TRY(load_json_file(quant_dir, "config.json", &b, err));
	json_object_del(a, "quantization_config");
	json_object_del(b, "quantization_config");
	if (!json_equal(a, b)) {
		const char *k;
		json_t *v;
		const char *diff = "?";
		json_object_foreach(a, k, v)
			if (!json_equal(v, json_object_get(b, k))) {
				diff = k;
				break;
			}
		if (!strcmp(diff, "?"))
			json_object_foreach(b, k, v)
				if (!json_object_get(a, k)) {
					diff = k;
					break;
				}
		st = cal_error_set(err, CAL_ERR_INVALID,
				   "%s was not made from %s: config.json differs (key '%s')",
				   quant_dir, model_dir, diff);
		goto fail;
	}
	if (load_json_file(quant_dir, "calibd_report.json", &rep, NULL) >= 0) {
		const char *want = json_string_value(json_object_get(rep, "source_fingerprint"));
		if (want) {
			CAL_TRY(cal_checkpoint_fingerprint(model_dir, src, fp, err));
			if (strcmp(want, fp)) {
				st = cal_error_set(err, CAL_ERR_INVALID,
						   "%s was not made from %s: source fingerprint %s, "
						   "recorded at export %s", quant_dir, model_dir, fp,
						   want);
				goto fail;
			}
		}
	}
	st = CAL_OK;
fail:
	json_decref(a);
	json_decref(b);
	json_decref(rep);
	return st;
}

/* ---- overlap with the calibration set ------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

void cal_eval_overlap(const char *quant_dir, const struct cal_calib_tokens *tk, json_t *rep)
{
	json_t *r = NULL;
	const char *hx = NULL;
	uint64_t *h = NULL;
	size_t n = 0, hit = 0;
	if (load_json_file(quant_dir, "calibd_report.json", &r, NULL) >= 0)
		hx = json_string_value(json_object_get(json_object_get(r, "calibration"),
						       "sequence_hashes"));
	if (hx && strlen(hx) % 16 == 0)
		n = strlen(hx) / 16;
	if (!hx || !(h = malloc((n + 1) * sizeof(*h)))) {
		json_object_set_new(rep, "calibration_overlap", json_pack("{s:s}", "unknown",
			"the export's calibd_report.json records no calibration sequence_hashes"));
		json_decref(r);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char d[17];
		memcpy(d, hx + 16 * i, 16);
		d[16] = 0;
		h[i] = strtoull(d, NULL, 16);
	}
	qsort(h, n, sizeof(*h), cmp_u64);
	json_t *seqs = json_array();
	for (size_t s = 0; s < tk->n; s++) {
		uint64_t k = cal_calib_tokens_hash(tk, s);
		if (bsearch(&k, h, n, sizeof(*h), cmp_u64)) {
			if (hit++ < 10)
				json_array_append_new(seqs, json_integer((json_int_t)s));
		}
	}
	json_object_set_new(rep, "calibration_overlap", json_pack("{s:I, s:I, s:I, s:o}",
		"sequences", (json_int_t)hit, "of", (json_int_t)tk->n,
		"calibration_sequences", (json_int_t)n, "first", seqs));
	free(h);
	json_decref(r);
}
