/*
 * qformat.c — hf_ptq.py's --qformat names and the built-in recipes they
 * map to (qformat.h, docs/recipes.md "qformat names").
 */
#include "engine/recipe/qformat.h"

#include <stdio.h>
#include <string.h>

#include "common/util.h"

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
