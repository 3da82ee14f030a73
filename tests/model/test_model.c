/*
 * test_model.c — config.json parsing into struct cal_model_desc, for every
 * architecture: defaults, explicit head_dim, layer kinds, both RoPE key
 * generations, VLM nesting, refusals.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "engine/model/model.h"

static struct cal_model_desc *parse_ok(const char *json)
{
	struct cal_model_desc *d = NULL;
	struct cal_error err = {0};
	enum cal_status st = cal_model_desc_parse("test", json, strlen(json), &d, &err);
	cr_assert_eq(st, CAL_OK, "parse failed: %s", cal_error_msg(&err));
	cal_error_clear(&err);
	return d;
}

/* Parses and expects failure with `code`; the message must contain `needle`. */
static void parse_fails(const char *json, enum cal_status code, const char *needle)
{
	struct cal_model_desc *d = NULL;
	struct cal_error err = {0};
	enum cal_status st = cal_model_desc_parse("test", json, strlen(json), &d, &err);
	cr_assert_eq(st, code, "expected %s, got %s (%s)", cal_status_str(code),
		     cal_status_str(st), cal_error_msg(&err));
	cr_assert_null(d);
	cr_assert(strstr(cal_error_msg(&err), needle), "message '%s' lacks '%s'",
		  cal_error_msg(&err), needle);
	cal_error_clear(&err);
}

/* The keys every MoE config must state (no class default is assumed). */
#define MOE_KEYS "\"num_experts\":8,\"num_experts_per_tok\":2,\"moe_intermediate_size\":64"
#define NEXT_KEYS MOE_KEYS ",\"shared_expert_intermediate_size\":512"
#define DS_KEYS "\"n_routed_experts\":256,\"num_experts_per_tok\":8,\"moe_intermediate_size\":2048"

/* A numeric member of the parsed description d and the value it must
 * have: W(rope.theta, 1e6).  One rule compares both kinds: a relative
 * difference below 1e-9, which leaves integers (all below 10^9 here) no
 * room, so they compare exactly. */
struct want {
	const char *field;
	double got, want;
};
#define W(f, v) {#f, (double)(d->f), (double)(v)}

static void check_wants(const struct want *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		cr_assert(fabs(w[i].got - w[i].want) < 1e-9 * fmax(1.0, fabs(w[i].want)),
			  "%s = %.17g, want %.17g", w[i].field, w[i].got, w[i].want);
}

/* Checks each W(...) of the list against d. */
#define CHECK(...)                                           \
	do {                                                 \
		const struct want w_[] = {__VA_ARGS__};      \
		check_wants(w_, CAL_ARRAY_LEN(w_));          \
	} while (0)

Test(model, qwen3_moe_hub_config)
{
	/* Qwen3-30B-A3B: head_dim (128) != hidden/heads (64) */
	struct cal_model_desc *d = parse_ok(
		"{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"model_type\":\"qwen3_moe\","
		"\"hidden_size\":2048,\"num_hidden_layers\":48,\"num_attention_heads\":32,"
		"\"num_key_value_heads\":4,\"head_dim\":128,\"num_experts\":128,"
		"\"num_experts_per_tok\":8,\"moe_intermediate_size\":768,\"norm_topk_prob\":true,"
		"\"rope_theta\":1000000.0,\"rope_scaling\":null,\"torch_dtype\":\"bfloat16\","
		"\"sliding_window\":null,\"use_sliding_window\":false,\"mlp_only_layers\":[],"
		"\"decoder_sparse_step\":1}");
	cr_assert_str_eq(d->architecture, "Qwen3MoeForCausalLM");
	cr_assert_str_eq(d->dtype, "bfloat16");
	CHECK(W(arch->id, CAL_ARCH_QWEN3_MOE), W(head_dim, 128),
	      W(vocab_size, 151936) /* class default */, W(num_experts, 128), W(top_k, 8),
	      W(norm_topk_prob, 1), W(n_moe_layers, 48), W(qk_norm, CAL_QK_NORM_HEAD),
	      W(norm, CAL_NORM_RMS), W(rms_norm_eps, 1e-6), W(rope.type, CAL_ROPE_DEFAULT),
	      W(rope.theta, 1e6), W(rope.rotary_dim, 128), W(attn_scaling, 1.0 / sqrt(128.0)),
	      W(qkv_bias, 0), W(sliding_window, 0), W(n_sliding_layers, 0));
	cal_model_desc_free(d);
}

Test(model, qwen3_moe_sparse_step_and_mlp_only)
{
	struct cal_model_desc *d = parse_ok(
		"{\"model_type\":\"qwen3_moe\",\"hidden_size\":64,\"num_hidden_layers\":6,"
		"\"num_attention_heads\":4,\"num_key_value_heads\":2,\"decoder_sparse_step\":2,"
		"\"mlp_only_layers\":[3],\"intermediate_size\":96," MOE_KEYS "}");
	/* MoE iff L not in [3] and (L+1) % 2 == 0: layers 1 and 5 */
	const enum cal_ffn want[6] = {CAL_FFN_DENSE, CAL_FFN_MOE, CAL_FFN_DENSE,
				      CAL_FFN_DENSE, CAL_FFN_DENSE, CAL_FFN_MOE};
	for (int L = 0; L < 6; L++)
		cr_assert_eq(d->layers[L].ffn, want[L], "layer %d", L);
	CHECK(W(n_moe_layers, 2), W(head_dim, 16) /* no head_dim key: H / nh */,
	      W(norm_topk_prob, 0) /* class default false */);
	cal_model_desc_free(d);
	parse_fails("{\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":4,\"mlp_only_layers\":[4],"
		    MOE_KEYS "}",
		    CAL_ERR_RANGE, "mlp_only_layers");
}

Test(model, qwen2_moe_defaults)
{
	struct cal_model_desc *d = parse_ok(
		"{\"model_type\":\"qwen2_moe\",\"hidden_size\":2048,\"num_attention_heads\":16,"
		"\"num_key_value_heads\":16,\"num_experts\":60,\"num_experts_per_tok\":4,"
		"\"moe_intermediate_size\":1408,\"shared_expert_intermediate_size\":5632}");
	CHECK(W(qkv_bias, 1) /* qkv_bias absent -> true */, W(o_bias, 0),
	      W(shared, CAL_SHARED_GATED), W(shared_intermediate_size, 5632),
	      W(moe_intermediate_size, 1408), W(norm_topk_prob, 0));
	cal_model_desc_free(d);
}

Test(model, mixtral_defaults)
{
	struct cal_model_desc *d = parse_ok(
		"{\"model_type\":\"mixtral\",\"hidden_size\":4096,\"intermediate_size\":14336,"
		"\"num_local_experts\":8,\"num_experts_per_tok\":2,\"sliding_window\":null}");
	CHECK(W(rope.theta, 1e6), W(num_experts, 8), W(moe_intermediate_size, 14336),
	      W(norm_topk_prob, 1) /* always renormalised */, W(rms_norm_eps, 1e-5),
	      W(n_sliding_layers, 0));
	cr_assert_str_eq(d->arch->moe_block, "block_sparse_moe");
	cr_assert_str_eq(d->arch->expert_proj[0], "w1");
	cr_assert_str_eq(d->arch->expert_proj[1], "w3");
	cr_assert_str_eq(d->arch->expert_proj[2], "w2");
	cal_model_desc_free(d);
	/* a sliding_window makes every layer sliding */
	d = parse_ok("{\"model_type\":\"mixtral\",\"num_hidden_layers\":2,\"sliding_window\":4096,"
		     "\"num_local_experts\":8,\"num_experts_per_tok\":2,\"intermediate_size\":64}");
	CHECK(W(n_sliding_layers, 2), W(sliding_window, 4096));
	cal_model_desc_free(d);
}

Test(model, olmoe_kv_heads_default_and_full_qk_norm)
{
	struct cal_model_desc *d = parse_ok(
		"{\"model_type\":\"olmoe\",\"hidden_size\":2048,\"num_attention_heads\":16,"
		"\"num_key_value_heads\":null,\"intermediate_size\":1024,\"clip_qkv\":8.0,"
		"\"num_experts\":64,\"num_experts_per_tok\":8}");
	CHECK(W(num_kv_heads, 16), W(qk_norm, CAL_QK_NORM_FULL), W(moe_intermediate_size, 1024),
	      W(clip_qkv, 8.0), W(num_experts, 64));
	cal_model_desc_free(d);
}

Test(model, qwen3_next_hybrid_and_both_rope_forms)
{
	const char *legacy =
		"{\"model_type\":\"qwen3_next\",\"num_hidden_layers\":8,\"hidden_size\":2048,"
		"\"head_dim\":256,\"rope_theta\":10000000,\"partial_rotary_factor\":0.25," NEXT_KEYS "}";
	const char *v5 =
		"{\"model_type\":\"qwen3_next\",\"num_hidden_layers\":8,\"hidden_size\":2048,"
		"\"head_dim\":256,\"rope_parameters\":{\"rope_type\":\"default\","
		"\"rope_theta\":10000000,\"partial_rotary_factor\":0.25}," NEXT_KEYS "}";
	struct cal_model_desc *d = parse_ok(legacy), *b = parse_ok(v5);
	cr_assert(!memcmp(&d->rope, &b->rope, sizeof(d->rope)), "legacy and v5 RoPE differ");
	for (int L = 0; L < 8; L++)
		cr_assert_eq(d->layers[L].mixer, (L + 1) % 4 ? CAL_MIXER_LINEAR : CAL_MIXER_FULL);
	CHECK(W(rope.rotary_dim, 64), W(rope.theta, 1e7), W(n_linear_layers, 6),
	      W(norm, CAL_NORM_RMS_1P), W(attn, CAL_ATTN_GATED_GQA), W(gdn, CAL_GDN_FUSED),
	      W(linear_num_value_heads, 32), W(norm_topk_prob, 1));
	cal_model_desc_free(d);
	cal_model_desc_free(b);
	/* partial_rotary_factor default 0.25 when absent */
	d = parse_ok("{\"model_type\":\"qwen3_next\",\"num_hidden_layers\":4," NEXT_KEYS "}");
	cr_assert_eq(d->rope.rotary_dim, 64);
	cal_model_desc_free(d);
}

Test(model, qwen3_5_moe_vlm_nesting)
{
	struct cal_model_desc *d = parse_ok(
		"{\"architectures\":[\"Qwen3_5MoeForConditionalGeneration\"],"
		"\"model_type\":\"qwen3_5_moe\",\"tie_word_embeddings\":false,"
		"\"text_config\":{\"model_type\":\"qwen3_5_moe_text\",\"hidden_size\":2048,"
		"\"num_hidden_layers\":4,\"tie_word_embeddings\":true,\"dtype\":\"bfloat16\","
		"\"num_experts\":256,\"num_experts_per_tok\":8,\"moe_intermediate_size\":512,"
		"\"shared_expert_intermediate_size\":512,"
		"\"layer_types\":[\"linear_attention\",\"linear_attention\",\"linear_attention\","
		"\"full_attention\"],\"rope_parameters\":{\"rope_type\":\"default\","
		"\"rope_theta\":10000000,\"partial_rotary_factor\":0.25,\"mrope_interleaved\":true,"
		"\"mrope_section\":[11,11,10]}},\"vision_config\":{\"depth\":27}}");
	CHECK(W(arch->id, CAL_ARCH_QWEN3_5_MOE), W(is_vlm, 1),
	      W(tie_word_embeddings, 0) /* top level wins */, W(hidden_size, 2048),
	      W(num_layers, 4), W(n_full_layers, 1), W(n_linear_layers, 3), W(num_experts, 256),
	      W(norm_topk_prob, 1), W(gdn, CAL_GDN_SPLIT), W(rope.has_mrope, 1),
	      W(rope.mrope_interleaved, 1), W(rope.mrope_section[2], 10));
	cr_assert_str_eq(d->prefix, "model.language_model.");
	cr_assert_str_eq(d->dtype, "bfloat16");
	cal_model_desc_free(d);
	parse_fails("{\"model_type\":\"qwen3_5_moe\",\"text_config\":{\"model_type\":\"llama\"}}",
		    CAL_ERR_UNSUPPORTED, "llama");
}

Test(model, deepseek_v3_mla_yarn)
{
	struct cal_model_desc *d = parse_ok(
		"{\"model_type\":\"deepseek_v3\",\"max_position_embeddings\":163840," DS_KEYS ","
		"\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,"
		"\"original_max_position_embeddings\":4096,\"beta_fast\":32,\"beta_slow\":1,"
		"\"mscale\":1.0,\"mscale_all_dim\":1.0},\"quantization_config\":{"
		"\"quant_method\":\"fp8\",\"fmt\":\"e4m3\",\"weight_block_size\":[128,128],"
		"\"activation_scheme\":\"dynamic\"}}");
	double m = 0.1 * log(40.0) + 1.0;
	CHECK(W(attn, CAL_ATTN_MLA), W(q_lora_rank, 1536), W(num_layers, 61),
	      W(n_dense_layers, 3), W(layers[2].ffn, CAL_FFN_DENSE), W(layers[3].ffn, CAL_FFN_MOE),
	      W(rope.type, CAL_ROPE_YARN), W(rope.rotary_dim, 64), W(rope.interleave, 1),
	      W(rope.attention_factor, 1.0), W(attn_scaling, m * m / sqrt(192.0)),
	      W(shared, CAL_SHARED_UNGATED), W(shared_intermediate_size, 2048),
	      W(routed_scaling_factor, 2.5), W(n_group, 8), W(src_quant, CAL_SRC_QUANT_FP8_BLOCK),
	      W(quant_block[1], 128));
	cal_model_desc_free(d);
	/* q_lora_rank: null means a plain q_proj */
	d = parse_ok("{\"model_type\":\"deepseek_v3\",\"q_lora_rank\":null,\"num_hidden_layers\":4,"
		     DS_KEYS "}");
	cr_assert_eq(d->q_lora_rank, 0);
	cal_model_desc_free(d);
}

Test(model, gpt_oss_defaults)
{
	struct cal_model_desc *d = parse_ok(
		"{\"model_type\":\"gpt_oss\",\"num_hidden_layers\":4,\"num_local_experts\":32,"
		"\"intermediate_size\":2880,"
		"\"experts_per_token\":4,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":32.0,"
		"\"beta_fast\":32.0,\"beta_slow\":1.0,\"truncate\":false,"
		"\"original_max_position_embeddings\":4096},\"quantization_config\":{"
		"\"quant_method\":\"mxfp4\",\"modules_to_not_convert\":[\"model.layers.*.self_attn\","
		"\"lm_head\"]}}");
	for (int L = 0; L < 4; L++)
		cr_assert_eq(d->layers[L].mixer, L % 2 ? CAL_MIXER_FULL : CAL_MIXER_SLIDING);
	CHECK(W(rope.theta, 150000.0), W(rope.attention_factor, 0.1 * log(32.0) + 1.0),
	      W(rope.truncate, 0), W(top_k, 4), W(sliding_window, 128), W(qkv_bias, 1),
	      W(o_bias, 1), W(has_sinks, 1), W(norm, CAL_NORM_RMS_F32W),
	      W(router, CAL_ROUTER_TOPK_SOFTMAX), W(act, CAL_ACT_SWIGLU_OAI), W(swiglu_limit, 7.0),
	      W(src_quant, CAL_SRC_QUANT_MXFP4), W(n_not_convert, 2));
	cr_assert_str_eq(d->not_convert[1], "lm_head");
	cal_model_desc_free(d);
}

Test(model, dense_models)
{
	struct cal_model_desc *d = parse_ok(
		"{\"model_type\":\"llama\",\"hidden_size\":2048,\"num_attention_heads\":32,"
		"\"num_key_value_heads\":8,\"num_hidden_layers\":16,\"tie_word_embeddings\":true,"
		"\"rope_theta\":500000.0,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":32.0,"
		"\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
		"\"original_max_position_embeddings\":8192}}");
	CHECK(W(num_experts, 0), W(n_dense_layers, 16), W(rope.type, CAL_ROPE_LLAMA3),
	      W(rope.high_freq_factor, 4.0), W(rope.original_max_pos, 8192),
	      W(tie_word_embeddings, 1), W(router, CAL_ROUTER_NONE));
	cal_model_desc_free(d);
	d = parse_ok("{\"model_type\":\"qwen2\",\"num_hidden_layers\":4,\"use_sliding_window\":true,"
		     "\"sliding_window\":4096,\"max_window_layers\":2}");
	CHECK(W(qkv_bias, 1), W(o_bias, 0), W(layers[1].mixer, CAL_MIXER_FULL),
	      W(layers[2].mixer, CAL_MIXER_SLIDING));
	cal_model_desc_free(d);
	d = parse_ok("{\"model_type\":\"qwen3\",\"dtype\":\"bfloat16\","
		     "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1000000}}");
	CHECK(W(head_dim, 128), W(rope.theta, 1e6), W(qk_norm, CAL_QK_NORM_HEAD));
	cal_model_desc_free(d);
}

Test(model, refusals_name_the_offender)
{
	parse_fails("{\"model_type\":\"bert\"}", CAL_ERR_UNSUPPORTED, "'bert'");
	parse_fails("{\"hidden_size\":8}", CAL_ERR_FORMAT, "model_type");
	parse_fails("{\"model_type\":\"qwen3_moe\"," MOE_KEYS ",\"quantization_config\":{\"quant_method\":\"gptq\"}}",
		    CAL_ERR_UNSUPPORTED, "gptq");
	parse_fails("{\"model_type\":\"qwen3_moe\"," MOE_KEYS ",\"quantization_config\":{\"quant_method\":\"mxfp4\"}}",
		    CAL_ERR_UNSUPPORTED, "mxfp4");
	parse_fails("{\"model_type\":\"qwen3_moe\",\"hidden_size\":\"big\"}", CAL_ERR_FORMAT,
		    "hidden_size");
	parse_fails("{\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":0}", CAL_ERR_RANGE,
		    "num_hidden_layers");
	parse_fails("{\"model_type\":\"qwen3_moe\",\"num_attention_heads\":6,"
		    "\"num_key_value_heads\":4}", CAL_ERR_FORMAT, "num_key_value_heads");
	parse_fails("{\"model_type\":\"qwen3_moe\"," MOE_KEYS ",\"rope_scaling\":{\"rope_type\":\"longrope\"}}",
		    CAL_ERR_UNSUPPORTED, "longrope");
	parse_fails("{\"model_type\":\"llama\",\"num_hidden_layers\":2,\"layer_types\":[\"full_attention\"]}",
		    CAL_ERR_FORMAT, "layer_types");
	parse_fails("{\"model_type\":\"llama\",\"num_hidden_layers\":1,"
		    "\"layer_types\":[\"linear_attention\"]}", CAL_ERR_UNSUPPORTED, "linear_attention");
	parse_fails("{\"model_type\":\"qwen3_moe\",\"num_experts\":4,\"num_experts_per_tok\":5}",
		    CAL_ERR_RANGE, "num_experts_per_tok");
	parse_fails("not json", CAL_ERR_FORMAT, "test");
	parse_fails("{\"model_type\":\"qwen3_moe\",\"model_type\":\"llama\"}", CAL_ERR_FORMAT,
		    "duplicate");
}

Test(model, table_and_names)
{
	for (int a = 0; a < CAL_ARCH_COUNT; a++) {
		const struct cal_arch_info *i = cal_arch_get((enum cal_arch)a);
		cr_assert_eq((int)i->id, a);
		cr_assert_eq(cal_arch_find(i->model_type), i);
		cr_assert_str_eq(cal_arch_name((enum cal_arch)a), i->model_type);
	}
	cr_assert_null(cal_arch_find("bert"));
	cr_assert_str_eq(cal_expert_layout_name(CAL_LAYOUT_FUSED_OAI), "fused-oai");
	cr_assert_str_eq(cal_mixer_name(CAL_MIXER_LINEAR), "linear");
}

/* Depth and value count are bounded before jansson parses (a deep text
 * would cost jansson its recursion; a wide one, memory). */
Test(model, config_bounded_before_parsing)
{
	char deep[300];
	memset(deep, '[', 100);
	deep[100] = '\0';
	parse_fails(deep, CAL_ERR_RANGE, "nested deeper than 32 levels");
	size_t n = 2 * CAL_MODEL_MAX_CONFIG_VALUES + 64;
	char *wide = malloc(n + 64);
	cr_assert(wide);
	size_t k = (size_t)sprintf(wide, "{\"model_type\":\"qwen3_moe\",\"x\":[");
	while (k < n)
		k += (size_t)sprintf(wide + k, "1,");
	sprintf(wide + k, "1]}");
	parse_fails(wide, CAL_ERR_RANGE, "more than 200000 values");
	free(wide);
	/* brackets inside strings are not structure */
	struct cal_model_desc *d = parse_ok("{\"model_type\":\"mixtral\",\"hidden_size\":4096,"
					    "\"intermediate_size\":14336,\"num_local_experts\":8,"
					    "\"num_experts_per_tok\":2,\"_name_or_path\":"
					    "\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"[[[[\"}");
	cal_model_desc_free(d);
}
