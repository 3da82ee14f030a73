/*
 * eval_weights.c — `calibd eval`: the quantized model's weights, read from
 * the exported checkpoint and dequantized on the back end, and its
 * activations fake-quantized at layer.c's sites (docs/eval.md, "The
 * quantized forward"). The run itself: eval.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"
#include "engine/calib/eval_internal.h"
#include "engine/eval.h"
#include "kernels/qfmt.h"

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
	const struct cal_st_tensor *pqs; /* pre_quant_scale, or NULL */
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
	q->pqs = qget(ev, mod, "pre_quant_scale");
	return 0;
}

/* Rows of a stored 2-D tensor (or the 1-D per-row scales of INT8)
 * rearranged on the host: row r of the result is row map[r] of t (map
 * NULL: t unchanged).  A tensor with half the rows (INT4, packed along the
 * rows) moves by row pairs, which map must keep together. */
static enum cal_status permute_rows(struct cal_st_tensor *t, int64_t rows, const uint32_t *map,
				    void **owned, int *n_owned, const char *mod,
				    struct cal_error *err)
{
	if (!map || !t->data)
		return CAL_OK;
	int pairs = t->ndim == 2 && t->shape[0] * 2 == rows;
	if ((t->ndim != 2 && t->ndim != 1) || (t->shape[0] != rows && !pairs))
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
	*ret_site = (struct eq_site){AQ_NONE, 0, NULL, q->pqs, NULL, 1};
	if (q->pqs && (q->pqs->dtype != CAL_DTYPE_BF16 || q->pqs->ndim != 1 ||
		       q->pqs->shape[0] != cols))
		return cal_error_set(err, CAL_ERR_INVALID, "%s: %s of %llu values does not fit the "
				     "source's %lld input channels (BF16 expected)", q->pqs->name,
				     cal_dtype_name(q->pqs->dtype),
				     (unsigned long long)q->pqs->numel, (long long)cols);
	if (w->dtype == CAL_DTYPE_BF16) {
		if (w->numel != n)
			return cal_error_set(err, CAL_ERR_INVALID,
					     "%s.weight: %llu elements, the source has %llu: the "
					     "quantized checkpoint was not made from this source",
					     q->mod, (unsigned long long)w->numel,
					     (unsigned long long)n);
		return cal_backend_upload(c->be, dst, w->data, n * 2, err);
	}
	enum cal_qfmt id;
	float scale = 0.0f; /* the tensor scale (NVFP4's weight_scale_2, FP8's weight_scale) */
	if (w->dtype == CAL_DTYPE_U8 && q->s2 > 0) {
		id = CAL_QFMT_NVFP4;
		scale = q->s2;
		in = q->is > 0 ? AQ_NVFP4 : AQ_NONE;
	} else if (w->dtype == CAL_DTYPE_F8_E4M3 && q->s1 > 0) {
		id = CAL_QFMT_FP8;
		scale = q->s1;
		in = q->is > 0 ? AQ_FP8 : AQ_NONE;
	} else if (w->dtype == CAL_DTYPE_F8_E4M3 && s->data && s->dtype == CAL_DTYPE_U8) {
		id = CAL_QFMT_MXFP8;
		in = AQ_MXFP8; /* modelopt's MXFP8 quantizes inputs too, per block, dynamically */
	} else if (w->dtype == CAL_DTYPE_U8 && s->data && s->dtype == CAL_DTYPE_U8) {
		id = CAL_QFMT_MXFP4;
		in = q->is > 0 ? AQ_FP8 : AQ_NONE; /* W4A8_MXFP4_FP8 (docs/numerics.md "W4A8") */
	} else if (w->dtype == CAL_DTYPE_U8 && s->data && s->dtype == CAL_DTYPE_F32) {
		id = CAL_QFMT_INT4_BLOCK;
	} else if (w->dtype == CAL_DTYPE_I8 && s->data && s->dtype == CAL_DTYPE_F32) {
		id = CAL_QFMT_INT8; /* int8, int8_sq: W8A8; int8_wo: W8A16 */
		in = q->is > 0 ? AQ_INT8 : AQ_NONE;
	} else {
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: weight %s with these scales is not a format calibd "
				     "exports (NVFP4, FP8, MXFP8, MXFP4, INT4, INT8)", q->mod,
				     cal_dtype_name(w->dtype));
	}
	/* the shapes of the format's row (kernels/qfmt.def): values packed along
	 * rows or columns, block scales [rows, cols / block] */
	const struct cal_qfmt_info *f = cal_qfmt(id);
	int64_t per = 8 / f->elem_bits;
	if (!has_shape(w, f->elem_dtype, f->pack_rows ? rows / per : rows,
		       f->pack_rows ? cols : cols / per) ||
	    (f->pack_rows ? rows : cols) % per ||
	    (f->block && (cols % f->block || !has_shape(s, f->scale_dtype, rows, cols / f->block))) ||
	    (!f->block && f->per_channel && (s->ndim != 1 || s->shape[0] != rows)))
		return misfit(q, f->label, rows, cols, err);
	CAL_TRY(cal_backend_alloc_upload(c->be, w->data, w->nbytes, &dw, err));
	if (f->block || f->per_channel)
		CAL_TRY(cal_backend_alloc_upload(c->be, s->data, s->nbytes, &ds, err));
	CAL_TRY(f->dequantize(c->be, dw, ds, (uint64_t)rows, (uint64_t)cols, f->block, scale,
			      CAL_DTYPE_BF16, dst, err));
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
 * serving engine's fused GEMM uses the larger input_scale, and one
 * pre_quant_scale, which every linear reading the input must have). */
static enum cal_status merge_site(struct eq_site *a, const struct eq_site *b,
				  struct cal_error *err)
{
	const struct cal_st_tensor *p = a->pqs_t, *q = b->pqs_t;
	if (a->linears && b->linears && (p || q) &&
	    (!p || !q || p->nbytes != q->nbytes || memcmp(p->data, q->data, p->nbytes)))
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: not every linear that reads "
				     "this input has this pre_quant_scale (a serving engine runs "
				     "them on one input): not evaluated", (p ? p : q)->name);
	if (a->fmt == AQ_NONE) {
		a->fmt = b->fmt;
		a->scale = b->scale;
		a->bias = b->bias;
	} else if (b->scale > a->scale) {
		a->scale = b->scale;
	}
	a->pqs_t = p ? p : q;
	a->linears += b->linears;
	return CAL_OK;
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
	memset(site, 0, sizeof(*site));
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
	if (!any) {
		site->linears = np; /* unquantized: no pre_quant_scale */
		return CAL_OK;
	}
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
		if (st < 0 || (st = merge_site(site, &s, err)) < 0)
			goto fail;
		off += (uint64_t)(p[i].rows * p[i].cols);
	}
	*ret = buf;
fail:
	return st;
}

/* Row map k (dst row r <- src row map[r]) of n rows, host memory kept by
 * the eval (its layers all have the same shapes); owned[] holds back-end
 * buffers only. */
static uint32_t *new_map(struct cal_eval *ev, int k, uint64_t n)
{
	if (!ev->maps[k])
		ev->maps[k] = malloc((n + 1) * 4);
	return ev->maps[k];
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
		memset(&ev->exp_gu[e], 0, sizeof(ev->exp_gu[e]));
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
			if (st >= 0 && s.pqs_t) /* calibd's exports smooth no routed expert */
				st = cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: a routed expert's "
						   "pre_quant_scale is not evaluated", s.pqs_t->name);
			if (tmp[0] || tmp[1])
				(void)cal_backend_sync(c->be, NULL);
			free(tmp[0]);
			free(tmp[1]);
			if (st < 0)
				goto fail;
			if (p == 2)
				ev->exp_dn[e] = s;
			else if ((st = merge_site(&ev->exp_gu[e], &s, err)) < 0)
				goto fail;
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

/* The affine KV cache's bias of one quantized K or V site (t: k_bias or
 * v_bias, BF16 [1, heads, 1, head_dim], cols = heads * head_dim of the
 * site's [tokens, cols] input) onto the back end as [-b, b] (negation is
 * exact in bf16), into *ret; a new back-end buffer goes to owned. */
static enum cal_status kv_bias(struct cal_calib *c, const struct cal_st_tensor *t, uint64_t cols,
			       const uint16_t **ret, void **owned, int *n_owned,
			       struct cal_error *err)
{
	*ret = NULL;
	if (t->dtype != CAL_DTYPE_BF16 || t->numel != cols)
		return cal_error_set(err, CAL_ERR_INVALID, "%s: %s of %llu values does not fit "
				     "the source's %llu K/V channels (BF16 expected)", t->name,
				     cal_dtype_name(t->dtype), (unsigned long long)t->numel,
				     (unsigned long long)cols);
	uint16_t *h = malloc(2 * cols * 2);
	if (!h)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	memcpy(h + cols, t->data, cols * 2);
	for (uint64_t j = 0; j < cols; j++)
		h[j] = h[cols + j] ^ 0x8000u;
	void *b = NULL;
	enum cal_status st = cal_backend_alloc_upload(c->be, h, 2 * cols * 2, &b, err);
	free(h);
	if (st < 0)
		return st;
	owned[(*n_owned)++] = b;
	*ret = b;
	return CAL_OK;
}

/* The KV-cache sites: k_scale / v_scale beside k_proj / v_proj (MLA: the
 * same names, modelopt's, docs/deepseek.md), and k_bias / v_bias of an
 * affine KV cache (docs/eval.md). */
static enum cal_status kv_sites(struct cal_calib *c, int32_t L, void **owned, int *n_owned,
				struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	char pre[CAL_ST_MAX_NAME], mod[CAL_ST_MAX_NAME + 16];
	if (attn_prefix(c, L, pre, sizeof(pre)) < 0)
		return CAL_OK;
	for (int k = 0; k < 2; k++) {
		struct eq_site *s = &ev->site[k ? EQ_V : EQ_K];
		snprintf(mod, sizeof(mod), "%s.%s", pre, k ? "v_proj" : "k_proj");
		float sc = scalar(qget(ev, mod, k ? "v_scale" : "k_scale"));
		int64_t hd = 0;
		*s = (struct eq_site){sc > 0 || ev->kv_default > 0 ? ev->kv_fmt : AQ_NONE,
				      sc > 0 ? sc : ev->kv_default, NULL, NULL, NULL, 0};
		/* NVFP4: k_scale = amax / 448, the global scale amax / (6 * 448)
		 * (docs/eval.md "KV cache"); blocks of 16 along head_dim */
		if (s->fmt == AQ_NVFP4) {
			s->scale /= 6.0f;
			cal_model_kv_dims(c->d, k, NULL, &hd);
			if (hd % 16)
				return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: an NVFP4 KV cache "
						     "of head_dim %lld (not a multiple of 16)", mod,
						     (long long)hd);
		}
		const struct cal_st_tensor *b = qget(ev, mod, k ? "v_bias" : "k_bias");
		if (b && s->fmt != AQ_NONE)
			CAL_TRY_RET(kv_bias(c, b, (uint64_t)cal_model_kv_dims(c->d, k, NULL, NULL),
					    &s->bias, owned, n_owned, err));
	}
	return CAL_OK;
}

/* Gated attention: q_proj stores each head's query rows, then its gate
 * rows; the engine runs every query row first (layer.c). */
static const uint32_t *gated_q_map(const struct cal_calib *c)
{
	uint32_t *m = new_map(c->ev, 0, 2 * (uint64_t)c->nh * (uint64_t)c->hd);
	if (m)
		cal_gated_q_map(c, m);
	return m;
}

/* Gated DeltaNet: in_proj (Qwen3-Next: qkvz | ba, grouped by key head, gdn.c
 * permute_fused; Qwen3.5: qkv | z | b | a) and out_proj.  The b / a
 * projections without a quantizer of their own (the recipes leave them
 * unquantized) read the input before the quantized projections' quantizer
 * and pre_quant_scale, as the serving engines run them as their own linear
 * (gdn.c, cal_eval_gdn_ba_raw); with one they share the qkv site. */
static enum cal_status load_gdn(struct cal_calib *c, int32_t L, struct cal_layer_w *qw,
				void **owned, int *n_owned, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	struct cal_gdn_dims g;
	int64_t H = c->H;
	enum cal_status st = CAL_OK;
	const uint16_t *in = NULL, *ba = NULL;
	struct eq_site bs;
	cal_gdn_dims(c->d, &g);
	if (c->d->gdn == CAL_GDN_FUSED) {
		uint32_t *m1 = new_map(ev, 1, g.cd + g.vd), *m2 = new_map(ev, 2, 2 * g.nv);
		if (!m1 || !m2)
			return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
		cal_gdn_fused_maps(&g, m1, m2);
		struct wpart p = {CAL_ROLE_GDN_IN_QKVZ, (int64_t)(g.cd + g.vd), H, m1},
			     q = {CAL_ROLE_GDN_IN_BA, (int64_t)(2 * g.nv), H, m2};
		CAL_TRY(load_linear(c, L, &p, 1, NULL, &in, owned, n_owned, &ev->site[EQ_QKV], err));
		CAL_TRY(load_linear(c, L, &q, 1, NULL, &ba, owned, n_owned, &bs, err));
	} else {
		struct wpart p[2] = {{CAL_ROLE_GDN_IN_QKV, (int64_t)g.cd, H, NULL},
				     {CAL_ROLE_GDN_IN_Z, (int64_t)g.vd, H, NULL}},
			     q[2] = {{CAL_ROLE_GDN_IN_B, (int64_t)g.nv, H, NULL},
				     {CAL_ROLE_GDN_IN_A, (int64_t)g.nv, H, NULL}};
		CAL_TRY(load_linear(c, L, p, 2, NULL, &in, owned, n_owned, &ev->site[EQ_QKV], err));
		CAL_TRY(load_linear(c, L, q, 2, NULL, &ba, owned, n_owned, &bs, err));
	}
	ev->gdn_ba_raw = bs.fmt == AQ_NONE && !bs.pqs_t;
	if (!ev->gdn_ba_raw)
		CAL_TRY(merge_site(&ev->site[EQ_QKV], &bs, err));
	if (in) { /* the buffer holds qkv | z */
		qw->lqkv = in;
		qw->lz = in + g.cd * (uint64_t)H;
	}
	if (ba) { /* b | a */
		qw->lb = ba;
		qw->la = ba + g.nv * (uint64_t)H;
	}
	struct wpart o = {CAL_ROLE_GDN_OUT, H, (int64_t)g.vd, NULL};
	CAL_TRY(load_linear(c, L, &o, 1, qw->lout, &qw->lout, owned, n_owned, &ev->site[EQ_O],
			    err));
fail:
	return st;
}

int cal_eval_gdn_ba_raw(const struct cal_calib *c)
{
	return c->ev_quant && c->ev && c->ev->gdn_ba_raw;
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
		CAL_TRY(merge_site(&ev->site[EQ_QKV], &s, err));
		CAL_TRY(load_linear(c, L, &b, 1, qw->wq, &qw->wq, owned, n_owned, &ev->site[EQ_QB],
				    err));
	} else {
		struct wpart q = {CAL_ROLE_Q_PROJ, nh * qk, H, NULL};
		CAL_TRY(load_linear(c, L, &q, 1, qw->wq, &qw->wq, owned, n_owned, &s, err));
		CAL_TRY(merge_site(&ev->site[EQ_QKV], &s, err));
	}
	struct wpart a = {CAL_ROLE_KV_A_PROJ, kvr + d->qk_rope_head_dim, H, NULL},
		     b = {CAL_ROLE_KV_B_PROJ, nh * (d->qk_nope_head_dim + dv), kvr, NULL},
		     o = {CAL_ROLE_O_PROJ, H, nh * dv, NULL};
	CAL_TRY(load_linear(c, L, &a, 1, qw->wkva, &qw->wkva, owned, n_owned, &s, err));
	CAL_TRY(merge_site(&ev->site[EQ_QKV], &s, err));
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
	const uint32_t *qmap = gated ? gated_q_map(c) : NULL;
	if (gated && !qmap)
		return cal_error_set(err, CAL_ERR_NOMEM, "eval: out of memory");
	struct wpart q = {CAL_ROLE_Q_PROJ, (gated ? 2 : 1) * qd, H, qmap},
		     k = {CAL_ROLE_K_PROJ, kd, H, NULL}, v = {CAL_ROLE_V_PROJ, kd, H, NULL},
		     o = {CAL_ROLE_O_PROJ, H, qd, NULL};
	CAL_TRY(load_linear(c, L, &q, 1, qw->wq, &qw->wq, owned, n_owned, &s, err));
	CAL_TRY(merge_site(&ev->site[EQ_QKV], &s, err));
	CAL_TRY(load_linear(c, L, &k, 1, qw->wk, &qw->wk, owned, n_owned, &s, err));
	CAL_TRY(merge_site(&ev->site[EQ_QKV], &s, err));
	CAL_TRY(load_linear(c, L, &v, 1, qw->wv, &qw->wv, owned, n_owned, &s, err));
	CAL_TRY(merge_site(&ev->site[EQ_QKV], &s, err));
	CAL_TRY(load_linear(c, L, &o, 1, qw->wo, &qw->wo, owned, n_owned, &ev->site[EQ_O], err));
fail:
	return st;
}

/* A gated MLP (dense, or the shared expert) of intermediate size I:
 * gate|up (roles[0], roles[1]) into *w13, down (roles[2]) into *w2, the
 * sites of their inputs into *site_gu / *site_dn. */
static enum cal_status load_mlp(struct cal_calib *c, int32_t L, const enum cal_role roles[3],
				int64_t I, const uint16_t **w13, const uint16_t **w2, void **owned,
				int *n_owned, struct eq_site *site_gu, struct eq_site *site_dn,
				struct cal_error *err)
{
	int64_t H = c->H;
	struct wpart gu[2] = {{roles[0], I, H, NULL}, {roles[1], I, H, NULL}},
		     dn = {roles[2], H, I, NULL};
	CAL_TRY_RET(load_linear(c, L, gu, 2, *w13, w13, owned, n_owned, site_gu, err));
	return load_linear(c, L, &dn, 1, *w2, w2, owned, n_owned, site_dn, err);
}

/* The layer's input sites' pre_quant_scales onto the back end. */
static enum cal_status upload_pqs(struct cal_calib *c, void **owned, int *n_owned,
				  struct cal_error *err)
{
	for (int i = 0; i < EQ_COUNT; i++) {
		struct eq_site *s = &c->ev->site[i];
		void *b = NULL;
		if (!s->pqs_t)
			continue;
		CAL_TRY_RET(cal_backend_alloc_upload(c->be, s->pqs_t->data, s->pqs_t->nbytes, &b,
						     err));
		owned[(*n_owned)++] = b;
		s->pqs = b;
	}
	return CAL_OK;
}

/* The quantized weights of layer L (qw starts as the source's) and the
 * sites of its inputs. */
enum cal_status cal_eval_load_layer(struct cal_calib *c, int32_t L, enum cal_step mixer,
				    struct cal_layer_w *qw, void **owned, int *n_owned,
				    struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	const struct cal_layer_desc *ld = &c->d->layers[L];
	enum cal_status st = CAL_OK;
	memset(ev->site, 0, sizeof(ev->site));
	ev->gdn_ba_raw = 0;
	if (mixer == STEP_GDN) {
		CAL_TRY(load_gdn(c, L, qw, owned, n_owned, err));
	} else {
		if (mixer == STEP_ATTN_MLA)
			CAL_TRY(load_mla(c, L, qw, owned, n_owned, err));
		else
			CAL_TRY(load_gqa(c, L, qw, owned, n_owned, err));
		CAL_TRY(kv_sites(c, L, owned, n_owned, err));
	}
	if (ld->ffn == CAL_FFN_DENSE) {
		static const enum cal_role mlp[3] = {CAL_ROLE_MLP_GATE, CAL_ROLE_MLP_UP,
						     CAL_ROLE_MLP_DOWN};
		CAL_TRY(load_mlp(c, L, mlp, c->Id, &qw->w13, &qw->w2, owned, n_owned,
				 &ev->site[EQ_MLP_GU], &ev->site[EQ_MLP_DOWN], err));
		return upload_pqs(c, owned, n_owned, err);
	}
	CAL_TRY(load_experts(c, L, qw, owned, n_owned, err));
	if (qw->s13) {
		static const enum cal_role shared[3] = {CAL_ROLE_SHARED_GATE, CAL_ROLE_SHARED_UP,
							CAL_ROLE_SHARED_DOWN};
		CAL_TRY(load_mlp(c, L, shared, c->Is, &qw->s13, &qw->s2, owned, n_owned,
				 &ev->site[EQ_SH_GU], &ev->site[EQ_SH_DOWN], err));
	}
	return upload_pqs(c, owned, n_owned, err);
fail:
	return st;
}

/* ---- activations ------------------------------------------------------------------ */

enum cal_status cal_eval_fake_quant(struct cal_calib *c, const struct eq_site *s, uint16_t *x,
				    uint64_t rows, uint64_t cols, struct cal_error *err)
{
	struct cal_eval *ev = c->ev;
	enum cal_status st = CAL_OK;
	uint64_t n = rows * cols;
	if (n == 0)
		return CAL_OK;
	if (s->pqs) { /* the input times its pre_quant_scale, then the quantizer */
		struct cal_ewise_args mul = {CAL_EWISE_MUL_ROW, x, s->pqs, NULL, x, rows, cols,
					     0, 0, 0, 0, 0, 0};
		CAL_TRY(cal_op_ewise(c->be, &mul, err));
	}
	if (s->fmt == AQ_NONE)
		return CAL_OK;
	if (n > ev->fq_elems)
		return cal_error_set(err, CAL_ERR_INTERNAL, "eval: activation of %llu elements "
				     "exceeds the scratch", (unsigned long long)n);
	if (s->bias) { /* affine: quantize x - b, dequantize, add b (as modelopt) */
		struct cal_ewise_args sub = {CAL_EWISE_ADD_ROW, x, s->bias, NULL, x, rows, cols,
					     0, 0, 0, 0, 0, 0};
		struct eq_site plain = {s->fmt, s->scale, NULL, NULL, NULL, 0};
		CAL_TRY(cal_op_ewise(c->be, &sub, err));
		CAL_TRY(cal_eval_fake_quant(c, &plain, x, rows, cols, err));
		sub.b = s->bias + cols;
		return cal_op_ewise(c->be, &sub, err);
	}
	if (s->fmt == AQ_FP8) {
		/* the serving engine's FP8 quantizer saturates at +-448 scale */
		struct cal_ewise_args cl = {CAL_EWISE_CLAMP, x, NULL, NULL, x, rows, cols, 0, 0, 0, 0,
					    448.0f * s->scale, 0};
		/* one rounding of the fp32 quotient, as the serving engines' quantizer */
		struct cal_fp8_quant_args q = {x, n, s->scale, CAL_DIV_EXACT, ev->qbuf, 1,
					       NULL, 0, 0};
		struct cal_fp8_dequant_args d = {ev->qbuf, n, s->scale, CAL_DTYPE_BF16, x,
						 NULL, 0, 0};
		CAL_TRY(cal_op_ewise(c->be, &cl, err));
		CAL_TRY(cal_op_fp8_quant(c->be, &q, err));
		CAL_TRY(cal_op_fp8_dequant(c->be, &d, err));
		return CAL_OK;
	}
	if (s->fmt == AQ_INT8) {
		/* rint(fl32(x / s)) saturating to [-128, 127], times s (docs/eval.md) */
		struct cal_int8_quant_args q = {x, rows, cols, CAL_DIV_EXACT, ev->qbuf, NULL,
						s->scale};
		struct cal_int8_dequant_args d = {ev->qbuf, NULL, rows, cols, CAL_DTYPE_BF16, x,
						  s->scale};
		CAL_TRY(cal_op_int8_quant(c->be, &q, err));
		CAL_TRY(cal_op_int8_dequant(c->be, &d, err));
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
	return cal_eval_fake_quant(c, s, x, rows, cols, err);
}

/* lm_head as the quantized model runs it (a new back-end buffer): the
 * export's, dequantized when quantized, else the source's (tied: the
 * embedding), and its input site. */
enum cal_status cal_eval_load_lm_head(struct cal_calib *c, void **ret, struct cal_error *err)
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
		if (q && ev->lm_site.pqs_t) {
			cal_backend_dealloc(c->be, owned[0]);
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: lm_head's "
					     "pre_quant_scale is not evaluated",
					     ev->lm_site.pqs_t->name);
		}
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

