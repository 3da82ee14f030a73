/*
 * plan_fmt.h — the plan's format selection (plan_fmt.c), internal to
 * engine/recipe: plan.c classifies each enabled quantizer through it.
 */
#ifndef CAL_RECIPE_PLAN_FMT_H
#define CAL_RECIPE_PLAN_FMT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/qfmt.h"
#include "recipe.h"

/* "calibd implements NVFP4 W4A4 and W4A16, ...": the rows of
 * kernels/qfmt.def, into out[n]. */
void cal_plan_implemented(char *out, size_t n);

/* The row of kernels/qfmt.def that attributes `a` of a weight (`weight`
 * 1) or another quantizer select (block bs along -1, or bs x bs along -1
 * and -2 with b2; pc: per channel / per token, kernels/qfmt.h), or NULL.
 * Mixed W4A8 rows are never selected here; per_channel rows with
 * input_per_tensor take per-tensor inputs (INT8). */
const struct cal_qfmt_info *cal_plan_select_fmt(const struct cal_qattr *a, int64_t bs, int pc,
						 int b2, int weight);

/* "<prefix>NVFP4, FP8 only": the titles of the rows allowed in `role`. */
void cal_plan_role_list(int role, char *out, size_t n, const char *prefix);

/* Why no row matches `a`: names the element type and what exists for it. */
void cal_plan_no_fmt_why(const struct cal_qattr *a, char *why, size_t n);

struct cal_error;
struct cal_plan;
struct cal_plan_q;
struct cal_qspec;

/* A CAL_ERR_UNSUPPORTED error for quantizer q of recipe r: why, the
 * quant_cfg entry that enabled it, and what calibd implements. */
enum cal_status cal_plan_unsupported(struct cal_error *err, const struct cal_recipe *r,
				     const struct cal_plan_q *q, const char *why);

/* Classifies the attributes of enabled quantizer q into s (format, block,
 * amax settings, affine), refusing what calibd does not implement. */
enum cal_status cal_plan_classify(struct cal_error *err, const struct cal_recipe *r,
				  const struct cal_plan_q *q, struct cal_qspec *s);

/* The Hadamard rotation of Q, K and V over the plan (sum.rot_block). */
enum cal_status cal_plan_kv_rotation(struct cal_error *err, struct cal_plan *p);

#endif
