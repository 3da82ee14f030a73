/*
 * plan_fmt.c — the plan's format selection: which row of kernels/qfmt.def a
 * quantizer's resolved attributes select, and the texts that say what
 * calibd implements when none does, and the classification of an enabled
 * quantizer's attributes into a cal_qspec with the refusals that name what
 * is not implemented (plan_fmt.h).
 */
#include "plan_fmt.h"

#include <stdio.h>
#include <string.h>

#include "common/util.h"
#include "kernels/ops.h"
#include "plan.h"

/* "calibd implements NVFP4 W4A4 and W4A16, ...": the rows of kernels/qfmt.def. */
void cal_plan_implemented(char *out, size_t n)
{
	size_t l = (size_t)snprintf(out, n, "calibd implements");
	for (int i = CAL_QFMT_NONE + 1; i < CAL_QFMT_COUNT && l < n; i++) {
		const struct cal_qfmt_info *f = cal_qfmt((enum cal_qfmt)i);
		int b = f->elem_bits, ab = f->act ? cal_qfmt(f->act)->elem_bits : 16;
		if (f->weight_of)
			l += (size_t)snprintf(out + l, n - l, "%s %s W%dA%d", i > 1 ? "," : "",
					      f->title, b, ab);
		else if (f->act)
			l += (size_t)snprintf(out + l, n - l, "%s %s W%dA%d and W%dA16", i > 1 ? "," : "",
					      f->title, b, ab, b);
		else
			l += (size_t)snprintf(out + l, n - l, "%s %s W%dA16", i > 1 ? "," : "",
					      f->title, b);
		if (l < n && (f->roles & CAL_QFMT_ROLE_KV))
			l += (size_t)snprintf(out + l, n - l, " and KV cache");
		if (l < n && f->mse)
			l += (size_t)snprintf(out + l, n - l, " (max or MSE)");
	}
	if (l < n)
		snprintf(out + l, n - l, " (kernels/qfmt.def)");
}

static int elem_is(const struct cal_qattr *a, const struct cal_qfmt_info *f)
{
	return f->elem_e < 0 ? a->fp_e < 0 && a->num_bits == f->elem_bits
			     : a->fp_e == f->elem_e && a->fp_m == f->elem_m;
}

/* The row of kernels/qfmt.def that attributes `a` of a weight (`weight`
 * 1) or another quantizer (block bs along -1, or bs x bs along -1 and -2
 * with b2; pc: per channel / per token, qfmt.h) select, or NULL.  A
 * per_channel row with input_per_tensor takes per-tensor inputs. */
const struct cal_qfmt_info *cal_plan_select_fmt(const struct cal_qattr *a, int64_t bs, int pc,
						 int b2, int weight)
{
	int sfp = a->has_scale_bits && a->scale_fp_e >= 0;
	for (int i = CAL_QFMT_NONE + 1; i < CAL_QFMT_COUNT; i++) {
		const struct cal_qfmt_info *f = cal_qfmt((enum cal_qfmt)i);
		int row_pc = f->per_channel && (weight || !f->input_per_tensor);
		if (!elem_is(a, f) || !row_pc != !pc || f->weight_of != CAL_QFMT_NONE ||
		    !f->block2d != !b2)
			continue;
		if (f->block_type == CAL_QBLOCK_NONE) {
			if (!a->has_block || pc)
				return f;
			continue;
		}
		int ok = a->has_block && a->block_dynamic == (f->block_type == CAL_QBLOCK_DYNAMIC);
		ok = ok && (f->scale_e < 0 ? !a->has_scale_bits
					   : sfp && a->scale_fp_e == f->scale_e &&
						     a->scale_fp_m == f->scale_m);
		int in_blocks = 0;
		for (size_t k = 0; k < CAL_ARRAY_LEN(f->blocks); k++)
			in_blocks |= f->blocks[k] && f->blocks[k] == bs;
		if (ok && in_blocks)
			return f;
	}
	return NULL;
}

/* "<prefix>NVFP4, FP8" — the titles of the rows allowed in `role`. */
void cal_plan_role_list(int role, char *out, size_t n, const char *prefix)
{
	size_t l = (size_t)snprintf(out, n, "%s", prefix);
	const char *sep = "";
	for (int i = CAL_QFMT_NONE + 1; i < CAL_QFMT_COUNT && l < n; i++) {
		const struct cal_qfmt_info *f = cal_qfmt((enum cal_qfmt)i);
		if (f->roles & role) {
			l += (size_t)snprintf(out + l, n - l, "%s%s", sep, f->title);
			sep = ", ";
		}
	}
	if (l < n && !*sep)
		snprintf(out + l, n - l, "no format");
	else if (l < n)
		snprintf(out + l, n - l, " only");
}

/* Why no row matches: names the element type and what exists for it. */
void cal_plan_no_fmt_why(const struct cal_qattr *a, char *why, size_t n)
{
	size_t l;
	if (a->fp_e >= 0)
		l = (size_t)snprintf(why, n, "this E%dM%d layout is not implemented", a->fp_e,
				     a->fp_m);
	else
		l = (size_t)snprintf(why, n, "%d-bit integer%s quantization is not implemented",
				     a->num_bits, a->has_block ? " block" : "");
	const char *sep = " (implemented: ";
	for (int i = CAL_QFMT_NONE + 1; i < CAL_QFMT_COUNT && l < n; i++) {
		const struct cal_qfmt_info *f = cal_qfmt((enum cal_qfmt)i);
		if (!elem_is(a, f))
			continue;
		if (f->block_type == CAL_QBLOCK_NONE)
			l += (size_t)snprintf(why + l, n - l, "%s%s%s", sep, f->title,
					      !f->per_channel ? " per tensor"
					      : f->input_per_tensor ? " weights per output channel "
								      "(axis 0), inputs per tensor"
								    : "");
		else if (f->scale_e >= 0)
			l += (size_t)snprintf(why + l, n - l, "%s%s block %u with E%dM%d %s scales",
					      sep, f->title, f->block, f->scale_e, f->scale_m,
					      f->block_type == CAL_QBLOCK_DYNAMIC ? "dynamic" : "static");
		else
			l += (size_t)snprintf(why + l, n - l, "%s%s block %u with %s %s scales", sep,
					      f->title, f->block, cal_dtype_name(f->scale_dtype),
					      f->block_type == CAL_QBLOCK_DYNAMIC ? "dynamic" : "static");
		sep = "; ";
	}
	if (l < n && *sep == ';')
		snprintf(why + l, n - l, ")");
}

/* ---- classification ------------------------------------------------------ */

enum cal_status cal_plan_unsupported(struct cal_error *err, const struct cal_recipe *r,
				   const struct cal_plan_q *q, const char *why)
{
	char impl[640];
	cal_plan_implemented(impl, sizeof(impl));
	if (q->entry >= 0) {
		const struct cal_qentry *e = &r->entries[q->entry];
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "%s: %s (quant_cfg entry %d at %s: '%s'); %s", q->name, why,
				     q->entry, e->where, e->quantizer_name, impl);
	}
	return cal_error_set(err, CAL_ERR_UNSUPPORTED, "%s: %s (no quant_cfg entry disables it: "
			     "modelopt's default is 8-bit integer); %s", q->name, why, impl);
}

/* Why role takes no quantizer with the constant-amax settings of s (or
 * none at all): the reason, or NULL when it does. */
static const char *role_refusal(enum cal_qrole role, const struct cal_qspec *s)
{
	switch (role) {
	case CAL_QROLE_WEIGHT:
		return s->has_constant_amax || s->use_constant_amax
			       ? "a constant amax on weights is not implemented" : NULL;
	case CAL_QROLE_INPUT:
		return s->use_constant_amax
			       ? "use_constant_amax is implemented for KV-cache quantizers only" : NULL;
	case CAL_QROLE_K_BMM:
	case CAL_QROLE_V_BMM:
		return s->has_constant_amax ? "constant_amax on the KV cache is not implemented "
					      "(use use_constant_amax)" : NULL;
	case CAL_QROLE_OUTPUT:
		return "output quantizers are not implemented";
	case CAL_QROLE_Q_BMM:
	case CAL_QROLE_P_BMM:
		return "q/p attention quantizers (FP8 attention) are not implemented";
	}
	return NULL;
}

/* Classifies the attributes of an enabled quantizer. */
enum cal_status cal_plan_classify(struct cal_error *err, const struct cal_recipe *r,
				const struct cal_plan_q *q, struct cal_qspec *s)
{
	const struct cal_qattr *a = q->attr;
	char why[256];
	/* the one sequential weight calibd runs: [INT4 blocks, FP8 per tensor]
	 * (W4A8 AWQ; its first stage is classified below) */
	const struct cal_qattr *a2 = q->n_attr == 2 ? &q->attr[1] : NULL;
	int seq_fp8 = a2 && q->role == CAL_QROLE_WEIGHT && a2->enable && a2->fp_e == 4 &&
		      a2->fp_m == 3 && !a2->n_axis && !a2->has_block && !a2->dynamic &&
		      !a2->has_bias && !a2->rotate;
	if (q->n_attr > 1 && !seq_fp8)
		return cal_plan_unsupported(err, r, q, "sequential quantizers (a cfg list) are implemented "
				   "as [INT4 blocks, FP8 per tensor] weights (W4A8 AWQ) only");
	int kv = q->role == CAL_QROLE_K_BMM || q->role == CAL_QROLE_V_BMM;
	if (a->has_bias && !kv)
		return cal_plan_unsupported(err, r, q, "affine quantization (bias) is implemented for the "
				   "KV cache (k_bmm / v_bmm) only");
	if (a->has_bias) {
		int axes = 0; /* the bias keeps heads (-3) and channels (-1): {-2, -4} reduced */
		for (int i = 0; i < a->n_bias_axis; i++)
			axes |= a->bias_axis[i] == -2 ? 1 : a->bias_axis[i] == -4 ? 2 : 4;
		if (axes != 3 || a->bias_dynamic || a->bias_max_min)
			return cal_plan_unsupported(err, r, q, "affine KV cache is implemented with the static "
					   "mean bias per KV head and channel only (bias: {-2: null, "
					   "-4: null, type: static})");
		if (a->use_constant_amax)
			return cal_plan_unsupported(err, r, q, "an affine KV cache with use_constant_amax is "
					   "not implemented");
	}
	if (a->rotate && q->role != CAL_QROLE_K_BMM && q->role != CAL_QROLE_V_BMM)
		return cal_plan_unsupported(err, r, q, "rotation is implemented for the attention bmm "
				   "quantizers (q/k/v_bmm) only");
	if (a->rotate && a->rotate_back)
		return cal_plan_unsupported(err, r, q, "rotate mode rotate_back (fake quantization only) is "
				   "not implemented");
	if (a->is_unsigned || a->narrow_range)
		return cal_plan_unsupported(err, r, q, "unsigned / narrow-range quantization is not implemented");
	if (a->calibrator && strcmp(a->calibrator, "max"))
		return cal_plan_unsupported(err, r, q, "calibrators other than 'max' are not implemented");
	if (a->backend)
		return cal_plan_unsupported(err, r, q, "custom quantization backends are not implemented");
	if (a->four_over_six)
		return cal_plan_unsupported(err, r, q, "four-over-six NVFP4 is not implemented");
	/* per channel (weights, axis 0) / per token (inputs, dynamic, whole
	 * last axis): the rows with per_channel (kernels/qfmt.h) */
	int pc = q->role == CAL_QROLE_WEIGHT && a->n_axis == 1 && a->axis[0] == 0 &&
		 !a->has_block && !a->dynamic;
	pc = pc || (q->role == CAL_QROLE_INPUT && a->dynamic && !a->n_axis && a->has_block &&
		    a->n_block == 1 && a->block_axis[0] == -1 && a->block_size[0] == 0 &&
		    !a->block_dynamic && !a->has_scale_bits && !a->has_scale_block_sizes);
	if (a->dynamic && !pc)
		return cal_plan_unsupported(err, r, q, "dynamic quantization (type: dynamic) is implemented "
				   "for per-token inputs only (block_sizes {-1: null})");
	if (a->n_axis && !pc)
		return cal_plan_unsupported(err, r, q, "per-channel quantization (axis) is implemented for "
				   "weights along axis 0 only");
	int64_t bs = 0;
	/* 2-D blocks {-1: N, -2: N} on weights (qfmt.h block2d) */
	int b2 = q->role == CAL_QROLE_WEIGHT && a->has_block && a->n_block == 2 &&
		 a->block_axis[0] + a->block_axis[1] == -3 && a->block_axis[0] != a->block_axis[1] &&
		 a->block_size[0] > 0 && a->block_size[0] == a->block_size[1] &&
		 !a->has_scale_block_sizes;
	if (b2) {
		bs = a->block_size[0];
	} else if (a->has_block && !pc) {
		if (a->n_block != 1 || a->block_axis[0] != -1 || a->block_size[0] <= 0 ||
		    a->has_scale_block_sizes)
			return cal_plan_unsupported(err, r, q, "only blocks along the last axis (-1: N), and "
					   "square 2-D weight blocks (-1: N, -2: N), are "
					   "implemented");
		bs = a->block_size[0];
	}
	memset(s, 0, sizeof(*s));
	s->enabled = 1;
	const struct cal_qfmt_info *f = cal_plan_select_fmt(a, bs, pc, b2,
							     q->role == CAL_QROLE_WEIGHT);
	if (!f) {
		cal_plan_no_fmt_why(a, why, sizeof(why));
		if (pc)
			snprintf(why, sizeof(why), "per-channel weights are implemented in FP8 E4M3 "
				 "and 8-bit integer, per-token inputs in FP8 E4M3 only");
		if (b2)
			snprintf(why, sizeof(why), "2-D block weights are implemented in FP8 E4M3 "
				 "with static blocks of 128 x 128 and no scale_bits only");
		return cal_plan_unsupported(err, r, q, why);
	}
	s->fmt = f->id;
	s->block = (int)bs;
	if (seq_fp8 && (f->id != CAL_QFMT_INT4_BLOCK || bs != 128))
		return cal_plan_unsupported(err, r, q, "a sequential FP8 stage is implemented after INT4 "
				   "weights in blocks of 128 only (W4A8 AWQ)");
	s->seq_fp8 = seq_fp8;
	s->use_constant_amax = a->use_constant_amax;
	s->has_constant_amax = a->has_constant_amax;
	s->constant_amax = a->constant_amax;
	s->affine = a->has_bias;
	/* role restrictions: the format must serve the role, then the role's own */
	if (q->role == CAL_QROLE_INPUT && !(f->roles & CAL_QFMT_ROLE_INPUT)) {
		snprintf(why, sizeof(why), "%s activation quantization is not implemented", f->title);
		return cal_plan_unsupported(err, r, q, why);
	}
	if (kv && !(f->roles & CAL_QFMT_ROLE_KV)) {
		cal_plan_role_list(CAL_QFMT_ROLE_KV, why, sizeof(why),
				   "KV-cache quantization is implemented in ");
		return cal_plan_unsupported(err, r, q, why);
	}
	const char *refused = role_refusal(q->role, s);
	if (refused)
		return cal_plan_unsupported(err, r, q, refused);
	s->calibrate = f->calibrate && !s->has_constant_amax && !s->use_constant_amax;
	return CAL_OK;
}

/* The Hadamard rotation of Q, K and V (sum.rot_block): one block size per
 * role over the model, on the attention of every layer that has one, along
 * the head dim of cal_model_kv_dims (MLA: Q and K of qk_nope + qk_rope, V
 * of v_head_dim); a rotated disabled q_bmm still rotates (modelopt rotates
 * before it looks at enable).  A head dim with no power-of-two divisor >= 2
 * is refused. */
enum cal_status cal_plan_kv_rotation(struct cal_error *err, struct cal_plan *p)
{
	const struct cal_recipe *r = p->recipe;
	const struct cal_model_desc *d = p->model;
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		int k = q->role == CAL_QROLE_Q_BMM ? 0 : q->role == CAL_QROLE_K_BMM ? 1
		      : q->role == CAL_QROLE_V_BMM ? 2 : -1;
		if (k < 0 || !q->attr || !q->attr->rotate)
			continue;
		int64_t hd = 0;
		cal_model_kv_dims(d, k == 2, NULL, &hd);
		int64_t b = q->attr->rotate_block ? q->attr->rotate_block : (hd & -hd);
		if (q->attr->rotate_back)
			return cal_plan_unsupported(err, r, q, "rotate mode rotate_back (fake quantization "
					   "only) is not implemented");
		if (b < 2 || b > CAL_HADAMARD_MAX_BLOCK || hd % b)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,
					     "%s: rotation block %lld does not divide the head dim %lld "
					     "(or is not in [2, %u])", q->name, (long long)b,
					     (long long)hd, CAL_HADAMARD_MAX_BLOCK);
		if (p->sum.rot_block[k] && p->sum.rot_block[k] != (uint32_t)b)
			return cal_error_set(err, CAL_ERR_INVALID, "%s: rotation block %lld differs "
					     "from other layers' %u", q->name, (long long)b,
					     p->sum.rot_block[k]);
		p->sum.rot_block[k] = (uint32_t)b;
	}
	return CAL_OK;
}
