/*
 * qformat.c — hf_ptq.py's --qformat names and the built-in recipes they
 * map to (qformat.h, docs/recipes.md "qformat names").
 */
#include "engine/recipe/qformat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "engine/recipe/recipe.h"

/* hf_ptq.py's QUANT_CFG_CHOICES (modelopt 0.47), in its order.  The KV
 * cache is hf_ptq's default --kv_cache_qformat, fp8_cast. */
static const struct cal_qformat qformats[] = {
	{"int8", "general/ptq/int8_default-kv_fp8_cast", NULL},
	{"int8_sq", "general/ptq/int8_sq-kv_fp8_cast", NULL},
	{"int8_wo", "general/ptq/int8_weight_only-kv_fp8_cast", NULL},
	{"fp8", "general/ptq/fp8_default-kv_fp8_cast", NULL},
	{"int4_awq", "general/ptq/int4_awq-kv_fp8_cast", NULL},
	{"w4a8_awq", "general/ptq/w4a8_awq-kv_fp8_cast", NULL},
	{"nvfp4", "general/ptq/nvfp4_default-kv_fp8_cast", NULL},
	{"nvfp4_awq", "general/ptq/nvfp4_awq-kv_fp8_cast", NULL},
	{"nvfp4_mse", "general/ptq/nvfp4_w4a4_weight_mse_fp8_sweep-kv_fp8_cast", NULL},
	{"fp8_pb_wo", "general/ptq/fp8_2d_blockwise_weight_only-kv_fp8_cast", NULL},
	{"fp8_pc_pt", "general/ptq/fp8_per_channel_per_token-kv_fp8_cast", NULL},
	{"w4a8_nvfp4_fp8", "general/ptq/w4a8_nvfp4_fp8-kv_fp8_cast", NULL},
	{"w4a8_mxfp4_fp8", "general/ptq/w4a8_mxfp4_fp8-kv_fp8_cast", NULL},
	{"nvfp4_mlp_only", "general/ptq/nvfp4_mlp_only-kv_fp8_cast", NULL},
	{"nvfp4_experts_only", "general/ptq/nvfp4_experts_only-kv_fp8_cast", NULL},
	{"nvfp4_omlp_only", "general/ptq/nvfp4_omlp_only-kv_fp8_cast", NULL},
	{"nvfp4_svdquant", NULL, "algorithm 'svdquant' is not implemented"},
	{"mxfp8", "general/ptq/mxfp8-kv_fp8_cast", NULL},
	{"nvfp4_local_hessian", NULL, "algorithm 'local_hessian' is not implemented"},
};

const struct cal_qformat *cal_qformat_list(size_t *n)
{
	*n = CAL_ARRAY_LEN(qformats);
	return qformats;
}

enum cal_status cal_qformat_recipe(const char *name, const char **ret, struct cal_error *err)
{
	*ret = NULL;
	for (size_t i = 0; i < CAL_ARRAY_LEN(qformats); i++) {
		if (strcmp(qformats[i].name, name))
			continue;
		if (!qformats[i].recipe)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "qformat '%s' is refused: %s",
					     name, qformats[i].reason);
		*ret = qformats[i].recipe;
		return CAL_OK;
	}
	char names[512] = "";
	for (size_t i = 0; i < CAL_ARRAY_LEN(qformats); i++)
		snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? ", " : "",
			 qformats[i].name);
	return cal_error_set(err, CAL_ERR_NOTFOUND,
			     "unknown qformat '%.64s' (hf_ptq.py's --qformat names: %s)", name, names);
}

/* hf_ptq.py's --kv_cache_qformat choices: "none", then modelopt 0.47's
 * configs/ptq/presets/kv/ (each one unit of configs/ptq/units/). */
static const struct cal_kv_qformat kv_qformats[] = {
	{"none", NULL},
	{"fp8", "configs/ptq/units/kv_fp8"},
	{"fp8_affine", "configs/ptq/units/kv_fp8_affine"},
	{"fp8_cast", "configs/ptq/units/kv_fp8_cast"},
	{"nvfp4", "configs/ptq/units/kv_nvfp4"},
	{"nvfp4_affine", "configs/ptq/units/kv_nvfp4_affine"},
	{"nvfp4_cast", "configs/ptq/units/kv_nvfp4_cast"},
	{"nvfp4_rotate", "configs/ptq/units/kv_nvfp4_rotate"},
};

const struct cal_kv_qformat *cal_kv_qformat_list(size_t *n)
{
	*n = CAL_ARRAY_LEN(kv_qformats);
	return kv_qformats;
}

enum cal_status cal_kv_qformat_apply(struct cal_recipe *r, const char *name,
				     const struct cal_recipe_opts *opts, struct cal_error *err)
{
	const struct cal_kv_qformat *k = NULL;
	for (size_t i = 0; i < CAL_ARRAY_LEN(kv_qformats) && !k; i++)
		if (!strcmp(kv_qformats[i].name, name))
			k = &kv_qformats[i];
	if (!k) {
		char names[256] = "";
		for (size_t i = 0; i < CAL_ARRAY_LEN(kv_qformats); i++)
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
				 i ? ", " : "", kv_qformats[i].name);
		return cal_error_set(err, CAL_ERR_NOTFOUND, "unknown kv_cache_qformat '%.64s' "
				     "(hf_ptq.py's --kv_cache_qformat names: %s)", name, names);
	}
	char text[512];
	if (k->unit)
		snprintf(text, sizeof(text), "imports:\n  kv: %s\nmetadata:\n  recipe_type: ptq\n"
			 "quantize:\n  algorithm: max\n  quant_cfg:\n    - $import: kv\n", k->unit);
	else
		snprintf(text, sizeof(text), "metadata:\n  recipe_type: ptq\nquantize:\n"
			 "  algorithm: max\n  quant_cfg:\n    - quantizer_name: '*[kv]_bmm_quantizer'\n"
			 "      enable: false\n");
	char display[96];
	snprintf(display, sizeof(display), "kv_cache_qformat %s", name);
	struct cal_recipe *kv = NULL;
	CAL_TRY_RET(cal_recipe_parse(display, text, strlen(text), opts, &kv, err));
	struct cal_qentry *e = realloc(r->entries, (r->n_entries + kv->n_entries + 1) * sizeof(*e));
	if (!e) {
		cal_recipe_free(kv);
		return cal_error_set(err, CAL_ERR_NOMEM, "recipe: out of memory");
	}
	memcpy(e + r->n_entries, kv->entries, kv->n_entries * sizeof(*e));
	r->entries = e;
	r->n_entries += kv->n_entries;
	kv->n_entries = 0; /* moved */
	cal_recipe_free(kv);
	return CAL_OK;
}
