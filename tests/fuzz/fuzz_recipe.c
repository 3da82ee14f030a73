/*
 * fuzz_recipe.c — libFuzzer target: the input is a recipe (YAML).  Parses
 * it with imports confined to a directory that does not exist (no file
 * system access), and when it loads, resolves it against a small fixed
 * MoE model so that matching and validation run too.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model.h"
#include "engine/recipe/plan.h"
#include "engine/recipe/recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char cfg[] =
	"{\"model_type\":\"qwen3_moe\",\"hidden_size\":32,\"moe_intermediate_size\":16,"
	"\"num_hidden_layers\":2,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
	"\"head_dim\":16,\"num_experts\":3,\"num_experts_per_tok\":1,\"vocab_size\":32,"
	"\"mlp_only_layers\":[0],\"intermediate_size\":48}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct cal_model_desc *d;
	if (!d && cal_model_desc_parse("cfg", cfg, sizeof(cfg) - 1, &d, NULL) < 0)
		abort();
	struct cal_recipe_opts o = {.builtin_dir = "/nonexistent/calibd-fuzz", .no_filesystem = 1};
	struct cal_recipe *r = NULL;
	struct cal_error err = {0};
	if (cal_recipe_parse("fuzz.yaml", (const char *)data, size, &o, &r, &err) == CAL_OK) {
		struct cal_plan *p = NULL;
		if (cal_plan_build(d, r, &p, &err) == CAL_OK) {
			free(cal_plan_text(p, "fuzz"));
			free(cal_plan_json(p, "fuzz"));
		}
		cal_plan_free(p);
	}
	cal_recipe_free(r);
	cal_error_clear(&err);
	return 0;
}
