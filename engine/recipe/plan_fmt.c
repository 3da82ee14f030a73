/*
 * plan_fmt.c — the plan's format selection: which row of kernels/qfmt.def a
 * quantizer's resolved attributes select, and the texts that say what
 * calibd implements when none does (plan_fmt.h).
 */
#include "plan_fmt.h"

#include <stdio.h>

#include "common/util.h"

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
