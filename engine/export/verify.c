/*
 * verify.c — `calibd verify`: checks an exported checkpoint as a loader (vLLM
 * / SGLang / TensorRT-LLM, docs/export.md "What loaders expect") would read
 * it, and with the source checkpoint reports the SQNR of every quantized
 * weight (export.h cal_export_verify).
 */
#include "export_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/parse.h"
#include "common/util.h"
#include "engine/recipe/recipe.h"
#include "kernels/ops.h"

struct vctx {
	json_t *viol;
	json_t *weights;
	struct cal_error first;
	const struct cal_checkpoint *ck;
};

static void violation(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violation(struct vctx *v, const char *fmt, ...)
{
	char *s = NULL;
	va_list ap;
	va_start(ap, fmt);
	int r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r < 0)
		return;
	if (!v->first.msg)
		cal_error_set(&v->first, CAL_ERR_FORMAT, "%s", s);
	json_array_append_new(v->viol, json_string(s));
	free(s);
}

/* Tensor "<mod><sep><suf>" of the output (sep '.', or '_' for gpt_oss BMM
 * experts' scales). */
static const struct cal_st_tensor *tget_sep(struct vctx *v, const char *mod, char sep,
					    const char *suf)
{
	char name[CAL_ST_MAX_NAME + 64];
	if ((size_t)snprintf(name, sizeof(name), "%s%c%s", mod, sep, suf) >= sizeof(name))
		return NULL;
	return cal_checkpoint_find(v->ck, name);
}

static const struct cal_st_tensor *tget(struct vctx *v, const char *mod, const char *suf)
{
	return tget_sep(v, mod, '.', suf);
}

static int shape_is(const struct cal_st_tensor *t, enum cal_dtype dt, int ndim, int64_t a,
		    int64_t b)
{
	if (!t || t->dtype != dt || t->ndim != ndim)
		return 0;
	return (ndim < 1 || t->shape[0] == a) && (ndim < 2 || t->shape[1] == b);
}

static float f32_at(const struct cal_st_tensor *t, uint64_t i)
{
	float f;
	memcpy(&f, (const char *)t->data + 4 * i, 4);
	return f;
}

/* A scalar F32 scale "<mod><sep><suf>": present, [], finite, > 0. */
static int check_scalar_sep(struct vctx *v, const char *mod, char sep, const char *suf,
			    int required)
{
	const struct cal_st_tensor *t = tget_sep(v, mod, sep, suf);
	if (!t) {
		if (required)
			violation(v, "%s%c%s: missing", mod, sep, suf);
		return 0;
	}
	if (!shape_is(t, CAL_DTYPE_F32, 0, 0, 0)) {
		violation(v, "%s%c%s: expected F32 [], found %s with %d dims", mod, sep, suf,
			  cal_dtype_name(t->dtype), t->ndim);
		return 0;
	}
	float f = f32_at(t, 0);
	if (!isfinite(f) || f <= 0.0f) {
		violation(v, "%s%c%s: %g is not finite and positive", mod, sep, suf, (double)f);
		return 0;
	}
	return 1;
}

static int check_scalar(struct vctx *v, const char *mod, const char *suf, int required)
{
	return check_scalar_sep(v, mod, '.', suf, required);
}

static int excluded(json_t *patterns, const char *mod)
{
	size_t i;
	json_t *p;
	json_array_foreach(patterns, i, p) {
		const char *s = json_string_value(p);
		if (s && (!strcmp(s, mod) || cal_fnmatch(s, mod)))
			return 1;
	}
	return 0;
}

/* quantized_layers entry of mod (or of its experts container). */
static json_t *mixed_cfg(json_t *ql, const char *mod)
{
	json_t *c = json_object_get(ql, mod);
	if (c)
		return c;
	const char *e = strstr(mod, ".experts.");
	if (!e)
		return NULL;
	char *cont = strndup(mod, (size_t)(e - mod) + 8);
	if (!cont)
		return NULL;
	c = json_object_get(ql, cont);
	free(cont);
	return c;
}

/* The format a module is exported in: the row of kernels/qfmt.def that its
 * quant_algo and group_size name (f NULL: unknown algo; algo NULL: not
 * quantized). */
struct vfmt {
	const char *algo;
	const struct cal_qfmt_info *f;
	int with_input;               /* algo names quantized inputs */
	int group;
};

static struct vfmt vfmt_of(const char *algo, int group)
{
	struct vfmt r = {algo, NULL, 0, group};
	if (algo)
		r.f = cal_qfmt_by_algo(algo, group, &r.with_input);
	return r;
}

static const char *vfmt_name(const struct vfmt *f)
{
	return f->f ? f->f->name : f->algo ? f->algo : "none";
}

/* Block scales of dtype dt: finite and positive (E4M3: no NaN, zero or
 * negative byte; E8M0: no NaN byte 0xFF; F32: finite > 0). */
static int scales_ok(struct vctx *v, const char *mod, char sep, const struct cal_st_tensor *s,
		     enum cal_dtype dt)
{
	const uint8_t *b = s->data;
	for (uint64_t k = 0; k < s->numel; k++) {
		int bad;
		if (dt == CAL_DTYPE_F8_E4M3)
			bad = (b[k] & 0x7f) == 0x7f || (b[k] & 0x7f) == 0 || (b[k] & 0x80);
		else if (dt == CAL_DTYPE_U8)
			bad = b[k] == 0xff;
		else
			bad = !isfinite(f32_at(s, k)) || f32_at(s, k) <= 0.0f;
		if (bad) {
			if (dt == CAL_DTYPE_F32)
				violation(v, "%s%cweight_scale: element %llu is %g", mod, sep,
					  (unsigned long long)k, (double)f32_at(s, k));
			else
				violation(v, "%s%cweight_scale: block %llu has scale byte 0x%02x (not "
					  "finite and positive)", mod, sep, (unsigned long long)k, b[k]);
			return 0;
		}
	}
	return 1;
}

/* Checks one quantized module; returns its logical input dim (0 on error). */
static int64_t check_module(struct vctx *v, const char *mod, const struct vfmt *vf)
{
	const struct cal_st_tensor *w = tget(v, mod, "weight"), *s = tget(v, mod, "weight_scale");
	const struct cal_qfmt_info *f = vf->f;
	if (!w || w->ndim != 2) {
		violation(v, "%s.weight: missing or not 2-D", mod);
		return 0;
	}
	if (!s) {
		violation(v, "%s.weight_scale: missing", mod);
		return 0;
	}
	if (!f) {
		violation(v, "%s: quant_algo %s (group_size %d) not checked by calibd verify", mod,
			  vf->algo, vf->group);
		return 0;
	}
	int64_t per = 8 / f->elem_bits;
	int64_t o = f->pack_rows ? w->shape[0] * per : w->shape[0];
	int64_t in = f->pack_rows ? w->shape[1] : w->shape[1] * per;
	if (w->dtype != f->elem_dtype) {
		violation(v, "%s.weight: %s expects %s, found %s", mod, vf->algo,
			  cal_dtype_name(f->elem_dtype), cal_dtype_name(w->dtype));
		return 0;
	}
	if (f->block2d) { /* [o/b, 1, in/b, 1], or [] for one tile */
		int64_t b = f->block, ob = (o + b - 1) / b, ib = (in + b - 1) / b;
		int one = ob * ib == 1;
		if (s->dtype != f->scale_dtype || s->ndim != (one ? 0 : 4) ||
		    (!one && (s->shape[0] != ob || s->shape[1] != 1 || s->shape[2] != ib ||
			      s->shape[3] != 1))) {
			violation(v, "%s: %s expects weight_scale %s [%lld, 1, %lld, 1] (or [] for "
				  "one block)", mod, vf->algo, cal_dtype_name(f->scale_dtype),
				  (long long)ob, (long long)ib);
			return 0;
		}
		if (!scales_ok(v, mod, '.', s, f->scale_dtype))
			return 0;
	} else if (f->block) {
		int g = vf->group ? vf->group : (int)f->block;
		if (!shape_is(s, f->scale_dtype, 2, o, in / g)) {
			violation(v, "%s: %s expects weight_scale %s [%lld, %lld]; found %s [%lld, %lld]",
				  mod, vf->algo, cal_dtype_name(f->scale_dtype), (long long)o,
				  (long long)(in / g), cal_dtype_name(s->dtype),
				  (long long)s->shape[0], (long long)(s->ndim > 1 ? s->shape[1] : -1));
			return 0;
		}
		if (!scales_ok(v, mod, '.', s, f->scale_dtype))
			return 0;
	}
	if (f->per_channel) {
		if (!shape_is(s, f->scale_dtype, 1, o, 0)) {
			violation(v, "%s: %s expects weight_scale %s [%lld]; found %s with %d dims",
				  mod, vf->algo, cal_dtype_name(f->scale_dtype), (long long)o,
				  cal_dtype_name(s->dtype), (int)s->ndim);
			return 0;
		}
		if (!scales_ok(v, mod, '.', s, f->scale_dtype))
			return 0;
	}
	if (f->tensor_scale && !check_scalar(v, mod, f->tensor_scale, 1))
		return 0;
	if (vf->with_input && f->input_scale_of && !check_scalar(v, mod, "input_scale", 1))
		return 0;
	return in;
}

/* ---- SQNR against the source ------------------------------------------------- */

struct vsrc {
	struct cal_model_desc *d;
	struct cal_checkpoint *ck;
	struct cal_catalog *cat;
};

static void vsrc_free(struct vsrc *s)
{
	cal_catalog_free(s->cat);
	cal_checkpoint_free(s->ck);
	cal_model_desc_free(s->d);
}

/* Source weight of output module mod as bf16 [o, in] into *ret (malloc). */
static int source_weight(const struct vsrc *s, const char *mod, int64_t o, int64_t in,
			 uint16_t **ret)
{
	const char *pre = cal_catalog_prefix(s->cat);
	const char *e = strstr(mod, ".experts.");
	*ret = NULL;
	if (e && !strncmp(mod, pre, strlen(pre)) && !strncmp(mod + strlen(pre), "layers.", 7)) {
		const char *end;
		uint64_t L, ex;
		if (cal_scan_u64(mod + strlen(pre) + 7, &end, &L) < 0 || L > INT32_MAX ||
		    cal_scan_u64(e + 9, &end, &ex) < 0 || ex > INT32_MAX || *end != '.')
			return -1;
		int proj = -1;
		for (int k = 0; k < 3; k++)
			if (!strcmp(end + 1, s->d->arch->expert_proj[k]))
				proj = k;
		struct cal_expert_slice sl;
		if (proj < 0 || cal_catalog_expert(s->cat, (int32_t)L, (int32_t)ex, (enum cal_proj)proj, &sl,
						   NULL) < 0 || sl.out != o || sl.in != in)
			return -1;
		uint16_t *w = malloc((size_t)(o * in) * 2);
		if (!w)
			return -1;
		if (sl.t->dtype == CAL_DTYPE_F8_E4M3 && sl.expert_index < 0) { /* FP8 source */
			static const enum cal_role roles[] = {CAL_ROLE_EXPERT_GATE, CAL_ROLE_EXPERT_UP,
							      CAL_ROLE_EXPERT_DOWN};
			const struct cal_st_tensor *si = cal_catalog_find(s->cat, roles[proj],
									  CAL_PART_SCALE_INV, L,
									  (int32_t)ex);
			if (cal_fp8_block_decode(s->d, sl.t, si, w, NULL) < 0) {
				free(w);
				return -1;
			}
			*ret = w;
			return 0;
		}
		if (sl.t->dtype != CAL_DTYPE_BF16) {
			free(w);
			return -1;
		}
		const uint16_t *src = sl.t->data;
		for (int64_t r = 0; r < o; r++)
			for (int64_t c = 0; c < in; c++)
				w[r * in + c] = src[cal_expert_slice_index(&sl, r, c)];
		*ret = w;
		return 0;
	}
	char name[CAL_ST_MAX_NAME + 16];
	snprintf(name, sizeof(name), "%s.weight", mod);
	const struct cal_st_tensor *t = cal_checkpoint_find(s->ck, name);
	const char *bp = strstr(name, ".block_sparse_moe.");
	if (!t && bp) { /* hub MoE block name; the source may use ".mlp." */
		char alt[CAL_ST_MAX_NAME + 16];
		snprintf(alt, sizeof(alt), "%.*s.mlp.%s", (int)(bp - name), name, bp + 18);
		t = cal_checkpoint_find(s->ck, alt);
	}
	if (!t || t->ndim != 2 || t->shape[0] != o || t->shape[1] != in ||
	    (t->dtype != CAL_DTYPE_BF16 && t->dtype != CAL_DTYPE_F8_E4M3))
		return -1;
	uint16_t *w = malloc((size_t)(o * in) * 2);
	if (!w)
		return -1;
	if (t->dtype == CAL_DTYPE_F8_E4M3) { /* FP8 block source: <name>_scale_inv */
		char sn[CAL_ST_MAX_NAME + 32];
		snprintf(sn, sizeof(sn), "%s_scale_inv", t->name);
		if (cal_fp8_block_decode(s->d, t, cal_checkpoint_find(s->ck, sn), w, NULL) < 0) {
			free(w);
			return -1;
		}
	} else {
		memcpy(w, t->data, t->nbytes);
	}
	*ret = w;
	return 0;
}

/* Dequantizes mod (format f, [o, in]) into host f32 y. */
static enum cal_status dequant(struct vctx *v, struct cal_backend *be, const char *mod,
			       const struct vfmt *vf, int64_t o, int64_t in, float *y,
			       struct cal_error *err)
{
	enum cal_status st;
	const struct cal_qfmt_info *f = vf->f;
	const struct cal_st_tensor *w = tget(v, mod, "weight"), *s = tget(v, mod, "weight_scale");
	const struct cal_st_tensor *ts = f->tensor_scale ? tget(v, mod, f->tensor_scale) : NULL;
	void *dw = NULL, *ds = NULL, *dy = NULL;
	uint64_t n = (uint64_t)(o * in);
	CAL_TRY(cal_backend_alloc_upload(be, w->data, w->nbytes, &dw, err));
	CAL_TRY(cal_backend_alloc_upload(be, s->data, s->nbytes, &ds, err));
	CAL_TRY(cal_backend_alloc(be, n * 4, &dy, err));
	CAL_TRY(f->dequantize(be, dw, ds, (uint64_t)o, (uint64_t)in,
			      vf->group ? (uint32_t)vf->group : f->block, ts ? f32_at(ts, 0) : 0.0f,
			      CAL_DTYPE_F32, dy, err));
	CAL_TRY(cal_backend_download(be, y, dy, n * 4, err));
fail:
	cal_backend_dealloc(be, dw);
	cal_backend_dealloc(be, ds);
	cal_backend_dealloc(be, dy);
	return st;
}

/* Adds {name, format, sqnr_db} of the dequantized y against source w. */
static void report_sqnr(struct vctx *v, const char *name, const struct vfmt *f, const uint16_t *w,
			const float *y, uint64_t n)
{
	double sig = 0, noise = 0;
	for (uint64_t k = 0; k < n; k++) {
		double x = cal_bf16_to_f32(w[k]), dd = x - (double)y[k];
		sig += x * x;
		noise += dd * dd;
	}
	json_t *wr = json_pack("{s:s, s:s}", "name", name, "format", vfmt_name(f));
	json_object_set_new(wr, "sqnr_db", noise > 0 && sig > 0 ?
			    json_real(10.0 * log10(sig / noise)) : json_null());
	json_array_append_new(v->weights, wr);
}

/* ---- gpt_oss BMM experts (docs/gpt_oss.md) ----------------------------------- */

/* "<...>.experts.gate_up_proj" / ".down_proj" with 3 dims: 1, else 0. */
static int is_bmm(const struct cal_st_tensor *t)
{
	static const char *const sfx[] = {".experts.gate_up_proj", ".experts.down_proj"};
	size_t l = strlen(t->name);
	for (size_t k = 0; k < 2; k++) {
		size_t sl = strlen(sfx[k]);
		if (t->ndim == 3 && l > sl && !strcmp(t->name + l - sl, sfx[k]))
			return 1;
	}
	return 0;
}

/* Source experts of BMM tensor `name` ([E, C, R] on output) as bf16 [E R, C]. */
static uint16_t *bmm_source(const struct vsrc *s, const char *name, uint64_t E, uint64_t R,
			    uint64_t C)
{
	const char *pre = cal_catalog_prefix(s->cat);
	struct cal_expert_slice sl;
	if (strncmp(name, pre, strlen(pre)) || strncmp(name + strlen(pre), "layers.", 7))
		return NULL;
	const char *end;
	uint64_t L;
	int down = strstr(name, ".down_proj") != NULL;
	if (cal_scan_u64(name + strlen(pre) + 7, &end, &L) < 0 || L > INT32_MAX)
		return NULL;
	if (cal_catalog_expert(s->cat, (int32_t)L, 0, down ? CAL_PROJ_DOWN : CAL_PROJ_GATE, &sl, NULL) < 0 ||
	    (uint64_t)s->d->num_experts != E || (uint64_t)sl.in != C ||
	    (uint64_t)(down ? s->d->hidden_size : 2 * s->d->moe_intermediate_size) != R ||
	    (!sl.scales && sl.t->dtype != CAL_DTYPE_BF16))
		return NULL;
	uint16_t *w = malloc(E * R * C * 2);
	if (w)
		cal_export_bmm_source(&sl, E, R, C, w);
	return w;
}

/* Checks one BMM expert tensor of format f (rows with bmm), and its SQNR
 * against the source when given. */
static enum cal_status verify_bmm(struct vctx *v, const struct cal_st_tensor *t,
				  const struct vfmt *vf, const struct vsrc *src,
				  struct cal_backend *be, struct cal_error *err)
{
	const char *name = t->name;
	const struct cal_qfmt_info *f = vf->f;
	if (!f || !f->bmm) {
		violation(v, "%s: GPT-OSS experts in %s are not checked", name, vfmt_name(vf));
		return CAL_OK;
	}
	uint64_t per = 8 / (uint64_t)f->elem_bits, blk = f->block;
	uint64_t E = (uint64_t)t->shape[0], R = (uint64_t)t->shape[2];
	uint64_t C = (uint64_t)t->shape[1] * per;
	const struct cal_st_tensor *ws = tget_sep(v, name, '_', "weight_scale");
	if (t->dtype != f->elem_dtype) {
		violation(v, "%s: %s, expected %s", name, cal_dtype_name(t->dtype),
			  cal_dtype_name(f->elem_dtype));
		return CAL_OK;
	}
	if (blk) {
		if (!ws || ws->dtype != f->scale_dtype || ws->ndim != 3 ||
		    (uint64_t)ws->shape[0] != E || (uint64_t)ws->shape[1] != C / blk ||
		    (uint64_t)ws->shape[2] != R) {
			violation(v, "%s_weight_scale: expected %s [%llu, %llu, %llu]", name,
				  cal_dtype_name(f->scale_dtype), (unsigned long long)E,
				  (unsigned long long)(C / blk), (unsigned long long)R);
			return CAL_OK;
		}
		if (!scales_ok(v, name, '_', ws, f->scale_dtype))
			return CAL_OK;
	}
	if (f->per_channel) { /* one scale per expert */
		if (!ws || ws->dtype != f->scale_dtype || ws->ndim != 1 ||
		    (uint64_t)ws->shape[0] != E) {
			violation(v, "%s_weight_scale: expected %s [%llu]", name,
				  cal_dtype_name(f->scale_dtype), (unsigned long long)E);
			return CAL_OK;
		}
		if (!scales_ok(v, name, '_', ws, f->scale_dtype))
			return CAL_OK;
	}
	if (f->tensor_scale && !check_scalar_sep(v, name, '_', f->tensor_scale, 1))
		return CAL_OK;
	if ((vf->with_input && f->input_scale_of &&
	     !check_scalar_sep(v, name, '_', "input_scale", 1)) || !src->ck)
		return CAL_OK;
	const struct cal_st_tensor *ts = f->tensor_scale ? tget_sep(v, name, '_', f->tensor_scale)
							 : NULL;
	/* SQNR: back to [E R, C] rows, dequantized on the back end */
	/* per channel: one row of R * C per expert (its scale) */
	uint64_t n = E * R * C, qr = f->per_channel ? E : E * R;
	uint64_t qb = cal_qfmt_packed_bytes(f, E * R, C),
		 sbytes = cal_qfmt_scale_bytes(f, qr, n / qr, f->block);
	uint16_t *w = bmm_source(src, name, E, R, C);
	unsigned char *q = malloc(qb), *sc = malloc(sbytes ? sbytes : 1);
	float *y = malloc(n * 4);
	void *dq = NULL, *ds = NULL, *dy = NULL;
	enum cal_status st = CAL_OK;
	if (!q || !sc || !y) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "verify: out of memory");
		goto fail;
	}
	if (!w) {
		violation(v, "%s: no matching bf16 or MXFP4 experts in the source", name);
		goto fail;
	}
	cal_export_bmm_transpose(q, t->data, E, C / per, R, 1);
	if (blk)
		cal_export_bmm_transpose(sc, ws->data, E, C / blk, R, f->scale_bytes);
	else if (f->per_channel)
		memcpy(sc, ws->data, sbytes);
	CAL_TRY(cal_backend_alloc(be, qb, &dq, err));
	CAL_TRY(cal_backend_alloc(be, sbytes ? sbytes : 1, &ds, err));
	CAL_TRY(cal_backend_alloc(be, n * 4, &dy, err));
	CAL_TRY(cal_backend_upload(be, dq, q, qb, err));
	if (sbytes)
		CAL_TRY(cal_backend_upload(be, ds, sc, sbytes, err));
	CAL_TRY(f->dequantize(be, dq, ds, qr, n / qr, f->block, ts ? f32_at(ts, 0) : 0.0f,
			      CAL_DTYPE_F32, dy, err));
	CAL_TRY(cal_backend_download(be, y, dy, n * 4, err));
	report_sqnr(v, name, vf, w, y, n);
fail:
	cal_backend_dealloc(be, dq);
	cal_backend_dealloc(be, ds);
	cal_backend_dealloc(be, dy);
	free(w);
	free(q);
	free(sc);
	free(y);
	return st;
}

/* ---- main ------------------------------------------------------------------ */

static json_t *load_json(const char *dir, const char *name, struct vctx *v)
{
	char *p = cal_path_join(dir, name), *text = NULL;
	size_t len;
	json_t *j = NULL;
	struct cal_error e = {0};
	if (p && cal_read_file(p, 256u << 20, &text, &len, &e) >= 0) {
		json_error_t je;
		j = json_loadb(text, len, 0, &je);
		if (!j)
			violation(v, "%s: not JSON (%s)", name, je.text);
	} else {
		violation(v, "%s: %s", name, cal_error_msg(&e));
	}
	cal_error_clear(&e);
	free(text);
	free(p);
	return j;
}

static int is_sibling(const char *mod, const char **ret_other_suffix, size_t *ret_cut)
{
	static const char *const pairs[][2] = {{"gate_proj", "up_proj"}, {"w1", "w3"}};
	size_t l = strlen(mod);
	for (size_t k = 0; k < 2; k++) {
		size_t pl = strlen(pairs[k][0]);
		if (l > pl + 1 && mod[l - pl - 1] == '.' && !strcmp(mod + l - pl, pairs[k][0])) {
			*ret_other_suffix = pairs[k][1];
			*ret_cut = l - pl;
			return 1;
		}
	}
	return 0;
}

enum cal_status cal_export_verify(const char *out_dir, const char *source_dir,
				  struct cal_backend *be, char **ret_report,
				  struct cal_error *err)
{
	enum cal_status st;
	struct vctx v = {0};
	struct cal_checkpoint *ck = NULL;
	struct vsrc src = {0};
	json_t *hfq = NULL, *cfg = NULL, *rep = NULL;
	size_t n_quant = 0;
	v.viol = json_array();
	v.weights = json_array();
	if (!v.viol || !v.weights) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "verify: out of memory");
		goto fail;
	}
	CAL_TRY(cal_checkpoint_open(out_dir, &ck, err));
	v.ck = ck;
	if (source_dir) {
		CAL_TRY(cal_model_desc_load(source_dir, &src.d, err));
		CAL_TRY(cal_checkpoint_open(source_dir, &src.ck, err));
		CAL_TRY(cal_catalog_build(src.d, src.ck, &src.cat, err));
	}
	hfq = load_json(out_dir, "hf_quant_config.json", &v);
	cfg = load_json(out_dir, "config.json", &v);
	json_t *q = json_object_get(hfq, "quantization");
	json_t *qc = json_object_get(cfg, "quantization_config");
	const char *algo = json_string_value(json_object_get(q, "quant_algo"));
	const char *kv = json_string_value(json_object_get(q, "kv_cache_quant_algo"));
	int mixed = algo && !strcmp(algo, "MIXED_PRECISION");
	json_t *exm = json_object_get(q, "exclude_modules");
	json_t *ql = json_object_get(q, "quantized_layers");
	int group = (int)json_integer_value(json_object_get(q, "group_size"));
	if (hfq) {
		if (!json_is_object(json_object_get(hfq, "producer")))
			violation(&v, "hf_quant_config.json: producer missing");
		if (!json_is_object(q))
			violation(&v, "hf_quant_config.json: quantization missing");
		else if (!json_object_get(q, "kv_cache_quant_algo"))
			violation(&v, "hf_quant_config.json: quantization.kv_cache_quant_algo missing "
				  "(vLLM requires the key)");
		if (algo && !mixed && !json_is_array(exm))
			violation(&v, "hf_quant_config.json: exclude_modules missing");
		if (algo && !mixed && !vfmt_of(algo, group).f)
			violation(&v, "hf_quant_config.json: quant_algo %s with group_size %d is not a "
				  "format calibd knows (kernels/qfmt.def)", algo, group);
		if (mixed && !json_is_object(ql))
			violation(&v, "hf_quant_config.json: MIXED_PRECISION without quantized_layers");
	}
	if (cfg) {
		if (!json_is_object(qc)) {
			violation(&v, "config.json: quantization_config missing");
		} else {
			const char *m = json_string_value(json_object_get(qc, "quant_method"));
			if (!m || strcmp(m, "modelopt"))
				violation(&v, "config.json: quantization_config.quant_method is not "
					  "\"modelopt\"");
			const char *a2 = json_string_value(json_object_get(qc, "quant_algo"));
			if ((algo || a2) && (!algo || !a2 || strcmp(algo, a2)))
				violation(&v, "config.json: quant_algo %s differs from "
					  "hf_quant_config.json's %s", a2 ? a2 : "null",
					  algo ? algo : "null");
			json_t *ign = json_object_get(qc, "ignore");
			if (!mixed && algo && !json_equal(ign, exm))
				violation(&v, "config.json: quantization_config.ignore differs from "
					  "exclude_modules");
			if (!!kv != !!json_object_get(qc, "kv_cache_scheme"))
				violation(&v, "config.json: kv_cache_scheme %s but kv_cache_quant_algo "
					  "is %s", json_object_get(qc, "kv_cache_scheme") ? "present" :
					  "absent", kv ? kv : "null");
		}
	}
	/* tensors */
	/* the KV-cache scales: "<attn>.k_proj.k_scale", "<attn>.v_proj.v_scale"
	 * (both suffixes 15 characters, the scale's name their last 7) */
	static const char *const kv_suffix[2] = {".k_proj.k_scale", ".v_proj.v_scale"};
	size_t nt = cal_checkpoint_count(ck), n_kv[2] = {0, 0};
	for (size_t i = 0; i < nt; i++) {
		const struct cal_st_tensor *t = cal_checkpoint_tensor(ck, i);
		size_t l = strlen(t->name), s;
		for (s = 0; s < 2; s++)
			if (l > 15 && !strcmp(t->name + l - 15, kv_suffix[s]))
				break;
		if (s < 2) {
			n_kv[s]++;
			char *mod = strndup(t->name, l - 8);
			if (mod)
				check_scalar(&v, mod, kv_suffix[s] + 8, 1);
			free(mod);
			continue;
		}
		if (is_bmm(t)) {
			/* gpt_oss experts: the module of hf_quant_config is ".experts" */
			char *mod = strndup(t->name, (size_t)(strrchr(t->name, '.') - t->name));
			if (!mod) {
				st = cal_error_set(err, CAL_ERR_NOMEM, "verify: out of memory");
				goto fail;
			}
			json_t *c = mixed ? mixed_cfg(ql, mod) : NULL;
			struct vfmt f = mixed ? vfmt_of(json_string_value(json_object_get(c,
					"quant_algo")), (int)json_integer_value(json_object_get(c,
					"group_size")))
					    : vfmt_of(!excluded(exm, mod) ? algo : NULL, group);
			int qdt = t->dtype == CAL_DTYPE_U8 || t->dtype == CAL_DTYPE_I8 ||
			  t->dtype == CAL_DTYPE_F8_E4M3;
			free(mod);
			if (!f.algo || !qdt) {
				if (qdt || f.algo)
					violation(&v, "%s: %s, but the config %s it", t->name,
						  cal_dtype_name(t->dtype), qdt ? "does not quantize" :
						  "quantizes");
				continue;
			}
			n_quant++;
			CAL_TRY(verify_bmm(&v, t, &f, &src, be, err));
			continue;
		}
		if (l <= 7 || strcmp(t->name + l - 7, ".weight") || t->ndim != 2)
			continue;
		char *mod = strndup(t->name, l - 7);
		if (!mod) {
			st = cal_error_set(err, CAL_ERR_NOMEM, "verify: out of memory");
			goto fail;
		}
		int qdt = t->dtype == CAL_DTYPE_U8 || t->dtype == CAL_DTYPE_I8 ||
			  t->dtype == CAL_DTYPE_F8_E4M3;
		struct vfmt f = vfmt_of(NULL, 0);
		if (mixed) {
			json_t *c = mixed_cfg(ql, mod);
			f = vfmt_of(json_string_value(json_object_get(c, "quant_algo")),
				    (int)json_integer_value(json_object_get(c, "group_size")));
		} else if (algo && !excluded(exm, mod)) {
			f = vfmt_of(algo, group);
		}
		if (!f.algo) {
			if (qdt)
				violation(&v, "%s.weight: %s, but the config does not quantize %s",
					  mod, cal_dtype_name(t->dtype), mod);
			free(mod);
			continue;
		}
		if (!qdt) {
			violation(&v, "%s.weight: %s, but the config quantizes %s (%s)", mod,
				  cal_dtype_name(t->dtype), mod, vfmt_name(&f));
			free(mod);
			continue;
		}
		n_quant++;
		int64_t in = check_module(&v, mod, &f);
		const char *other;
		size_t cut;
		if (f.f && f.f->shared_amax && strstr(mod, ".experts.") &&
		    is_sibling(mod, &other, &cut)) {
			char *sib = NULL;
			if (asprintf(&sib, "%.*s%s", (int)cut, mod, other) > 0) {
				const struct cal_st_tensor *a = tget(&v, mod, "weight_scale_2"),
							   *b = tget(&v, sib, "weight_scale_2");
				if (a && b && b->nbytes == 4 && a->nbytes == 4 &&
				    memcmp(a->data, b->data, 4))
					violation(&v, "%s.weight_scale_2 (%g) differs from %s's (%g)", mod,
						  (double)f32_at(a, 0), sib, (double)f32_at(b, 0));
				free(sib);
			}
		}
		if (in > 0 && source_dir) {
			int64_t o = f.f->pack_rows ? t->shape[0] * (8 / f.f->elem_bits) : t->shape[0];
			uint16_t *w = NULL;
			float *y = malloc((size_t)(o * in) * 4);
			if (!y || source_weight(&src, mod, o, in, &w) < 0) {
				violation(&v, "%s: no matching bf16 [%lld, %lld] weight in the source",
					  mod, (long long)o, (long long)in);
			} else {
				st = dequant(&v, be, mod, &f, o, in, y, err);
				if (st < 0) {
					free(w);
					free(y);
					free(mod);
					goto fail;
				}
				report_sqnr(&v, mod, &f, w, y, (uint64_t)(o * in));
			}
			free(w);
			free(y);
		}
		free(mod);
	}
	if (kv && (n_kv[0] != n_kv[1]))
		violation(&v, "KV cache: %zu k_scale but %zu v_scale tensors", n_kv[0], n_kv[1]);
	if (!kv && (n_kv[0] || n_kv[1]))
		violation(&v, "KV cache: %zu k_scale / %zu v_scale tensors but kv_cache_quant_algo "
			  "is null", n_kv[0], n_kv[1]);
	rep = json_pack("{s:b, s:I, s:I, s:O, s:O}", "ok", json_array_size(v.viol) == 0,
			"tensors", (json_int_t)nt, "quantized_modules", (json_int_t)n_quant,
			"violations", v.viol, "weights", v.weights);
	if (ret_report)
		*ret_report = rep ? json_dumps(rep, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
	if (json_array_size(v.viol)) {
		st = cal_error_set(err, CAL_ERR_FORMAT, "%s: %s%s", out_dir, cal_error_msg(&v.first),
				   json_array_size(v.viol) > 1 ? " (and more violations)" : "");
	} else {
		st = CAL_OK;
	}
fail:
	cal_error_clear(&v.first);
	json_decref(rep);
	json_decref(hfq);
	json_decref(cfg);
	json_decref(v.viol);
	json_decref(v.weights);
	vsrc_free(&src);
	cal_checkpoint_free(ck);
	return st;
}
