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

#endif
