/*
 * cmd_inspect.c — `calibd inspect MODEL_DIR [--json]`: reads config.json
 * and the safetensors headers (no tensor data), validates that they agree,
 * and describes the model: architecture, layers by kind, experts, parameter
 * counts, dtypes, bytes on disk, expert layout.  The --json form is a
 * stable interface documented key by key in docs/inspect.md.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common/dtype.h"
#include "common/util.h"
#include "engine/model/catalog.h"
#include "engine/model/model.h"
#include "engine/st/safetensors.h"

static void inspect_usage(FILE *o)
{
	fprintf(o, "usage: calibd inspect MODEL_DIR [--json]\n"
		   "Describes a Hugging Face checkpoint directory (config.json + safetensors)\n"
		   "without loading tensor data.  --json prints the description as JSON\n"
		   "(keys documented in docs/inspect.md).\n");
}

static json_t *inspect_json(const char *dir, const struct cal_model_desc *d,
			    const struct cal_catalog *cat, const struct cal_checkpoint *ck,
			    const struct cal_param_counts *pc)
{
	json_t *j = json_object();
	json_t *mix = json_array(), *ffn = json_array();
	for (int64_t L = 0; L < d->num_layers; L++) {
		json_array_append_new(mix, json_string(cal_mixer_name(d->layers[L].mixer)));
		json_array_append_new(ffn, json_string(cal_ffn_name(d->layers[L].ffn)));
	}
	json_object_set_new(j, "model_dir", json_string(dir));
	json_object_set_new(j, "model_type", json_string(d->model_type));
	json_object_set_new(j, "arch", json_string(d->arch->model_type));
	json_object_set_new(j, "architecture",
			    d->architecture ? json_string(d->architecture) : json_null());
	json_object_set_new(j, "is_vlm", json_boolean(d->is_vlm));
	json_object_set_new(j, "tensor_prefix", json_string(cal_catalog_prefix(cat)));
	json_object_set_new(j, "dtype", d->dtype ? json_string(d->dtype) : json_null());
	json_object_set_new(j, "vocab_size", json_integer(d->vocab_size));
	json_object_set_new(j, "hidden_size", json_integer(d->hidden_size));
	json_object_set_new(j, "intermediate_size", json_integer(d->intermediate_size));
	json_object_set_new(j, "num_layers", json_integer(d->num_layers));
	json_object_set_new(j, "tie_word_embeddings", json_boolean(d->tie_word_embeddings));
	json_object_set_new(j, "layer_counts",
			    json_pack("{s:I, s:I, s:I, s:I, s:I}", "moe",
				      (json_int_t)d->n_moe_layers, "dense",
				      (json_int_t)d->n_dense_layers, "full_attention",
				      (json_int_t)d->n_full_layers, "sliding_attention",
				      (json_int_t)d->n_sliding_layers, "linear_attention",
				      (json_int_t)d->n_linear_layers));
	json_object_set_new(j, "layer_mixers", mix);
	json_object_set_new(j, "layer_ffn", ffn);
	json_object_set_new(j, "attention",
			    json_pack("{s:s, s:I, s:I, s:I, s:b, s:b, s:s, s:b, s:I}", "kind",
				      cal_attn_kind_name(d->attn), "num_heads",
				      (json_int_t)d->num_heads, "num_kv_heads",
				      (json_int_t)d->num_kv_heads, "head_dim",
				      (json_int_t)d->head_dim, "qkv_bias", d->qkv_bias, "o_bias",
				      d->o_bias, "qk_norm", cal_qk_norm_name(d->qk_norm), "sinks",
				      d->has_sinks, "sliding_window",
				      (json_int_t)d->sliding_window));
	json_object_set_new(j, "norm", json_pack("{s:s, s:f}", "kind",
						 cal_norm_kind_name(d->norm), "eps",
						 d->rms_norm_eps));
	json_object_set_new(j, "rope",
			    json_pack("{s:s, s:f, s:f, s:I, s:f, s:f}", "type",
				      cal_rope_type_name(d->rope.type), "theta", d->rope.theta,
				      "partial_rotary_factor", d->rope.partial_rotary_factor,
				      "rotary_dim", (json_int_t)d->rope.rotary_dim, "factor",
				      d->rope.factor, "attention_factor",
				      d->rope.attention_factor));
	if (d->num_experts > 0 && d->n_moe_layers > 0)
		json_object_set_new(
			j, "experts",
			json_pack("{s:I, s:I, s:I, s:s, s:b, s:f, s:{s:I, s:I, s:b}, s:s}",
				  "count", (json_int_t)d->num_experts, "top_k",
				  (json_int_t)d->top_k, "intermediate_size",
				  (json_int_t)d->moe_intermediate_size, "router",
				  cal_router_kind_name(d->router), "renormalize",
				  d->norm_topk_prob, "routed_scaling_factor",
				  d->routed_scaling_factor, "shared", "count",
				  (json_int_t)d->n_shared_experts, "intermediate_size",
				  (json_int_t)d->shared_intermediate_size, "gated",
				  d->shared == CAL_SHARED_GATED, "layout",
				  cal_expert_layout_name(cal_catalog_model_layout(cat))));
	else
		json_object_set_new(j, "experts", json_null());
	json_object_set_new(j, "source_quantization",
			    json_string(cal_src_quant_name(d->src_quant)));
	json_object_set_new(
		j, "parameters",
		json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "total",
			  (json_int_t)pc->total, "active", (json_int_t)pc->active,
			  "routed_experts", (json_int_t)pc->routed_experts, "shared_experts",
			  (json_int_t)pc->shared_experts, "embedding", (json_int_t)pc->embedding,
			  "lm_head", (json_int_t)pc->lm_head, "scale_elements",
			  (json_int_t)pc->scale_elems, "ignored", (json_int_t)pc->ignored));
	json_object_set_new(j, "tensors",
			    json_pack("{s:I, s:I}", "model", (json_int_t)pc->tensors, "ignored",
				      (json_int_t)pc->ignored_tensors));
	json_t *dt = json_object();
	for (int t = 0; t < CAL_DTYPE_COUNT; t++)
		if (pc->dtype_tensors[t])
			json_object_set_new(dt, cal_dtype_name((enum cal_dtype)t),
					    json_pack("{s:I, s:I}", "tensors",
						      (json_int_t)pc->dtype_tensors[t], "bytes",
						      (json_int_t)pc->dtype_bytes[t]));
	json_object_set_new(j, "dtypes", dt);
	json_object_set_new(j, "tensor_bytes", json_integer((json_int_t)pc->tensor_bytes));
	json_object_set_new(j, "disk_bytes", json_integer((json_int_t)pc->disk_bytes));
	json_object_set_new(j, "files", json_integer((json_int_t)cal_checkpoint_file_count(ck)));
	return j;
}

/* "1.23 M" style, for humans. */
static const char *human(uint64_t v, char *buf, size_t cap)
{
	return cal_fmt_scaled(buf, cap, (double)v, 1000, 2, "");
}

static void inspect_print(const char *dir, const struct cal_model_desc *d,
			  const struct cal_catalog *cat, const struct cal_checkpoint *ck,
			  const struct cal_param_counts *pc)
{
	char b1[32], b2[32];
	printf("model:          %s\n", dir);
	printf("architecture:   %s (%s)%s\n", d->model_type,
	       d->architecture ? d->architecture : "no architectures key",
	       d->is_vlm ? ", vision-language: text model only" : "");
	printf("layers:         %lld: %lld MoE, %lld dense; %lld full attention, %lld sliding, "
	       "%lld linear (Gated DeltaNet)\n",
	       (long long)d->num_layers, (long long)d->n_moe_layers,
	       (long long)d->n_dense_layers, (long long)d->n_full_layers,
	       (long long)d->n_sliding_layers, (long long)d->n_linear_layers);
	printf("hidden size:    %lld (vocab %lld; %s attention, %lld heads, %lld kv heads, "
	       "head_dim %lld)\n",
	       (long long)d->hidden_size, (long long)d->vocab_size, cal_attn_kind_name(d->attn),
	       (long long)d->num_heads, (long long)d->num_kv_heads, (long long)d->head_dim);
	if (d->num_experts > 0 && d->n_moe_layers > 0) {
		printf("experts:        %lld routed, top-%lld, intermediate %lld, router %s%s",
		       (long long)d->num_experts, (long long)d->top_k,
		       (long long)d->moe_intermediate_size, cal_router_kind_name(d->router),
		       d->norm_topk_prob ? " (renormalised)" : "");
		if (d->shared != CAL_SHARED_NONE)
			printf("; shared: %lld x intermediate %lld%s\n",
			       (long long)d->n_shared_experts,
			       (long long)d->shared_intermediate_size,
			       d->shared == CAL_SHARED_GATED ? " (sigmoid-gated)" : "");
		else
			printf("; shared: none\n");
		printf("expert layout:  %s\n",
		       cal_expert_layout_name(cal_catalog_model_layout(cat)));
	} else {
		printf("experts:        none (dense model)\n");
	}
	printf("parameters:     total %s (%llu), active per token %s (%llu)\n",
	       human(pc->total, b1, sizeof(b1)), (unsigned long long)pc->total,
	       human(pc->active, b2, sizeof(b2)), (unsigned long long)pc->active);
	if (pc->ignored_tensors)
		printf("ignored:        %llu tensors, %llu elements (vision tower / MTP / extra "
		       "layers; not in total)\n",
		       (unsigned long long)pc->ignored_tensors, (unsigned long long)pc->ignored);
	printf("dtypes:        ");
	for (int t = 0; t < CAL_DTYPE_COUNT; t++)
		if (pc->dtype_tensors[t])
			printf(" %s: %llu tensors, %sB;", cal_dtype_name((enum cal_dtype)t),
			       (unsigned long long)pc->dtype_tensors[t],
			       human(pc->dtype_bytes[t], b1, sizeof(b1)));
	printf("\n");
	printf("on disk:        %sB in %zu file(s)\n", human(pc->disk_bytes, b1, sizeof(b1)),
	       cal_checkpoint_file_count(ck));
	printf("norm:           %s, eps %g; rope %s, theta %g, rotary dim %lld\n",
	       cal_norm_kind_name(d->norm), d->rms_norm_eps, cal_rope_type_name(d->rope.type),
	       d->rope.theta, (long long)d->rope.rotary_dim);
	if (d->src_quant != CAL_SRC_QUANT_NONE)
		printf("source quant:   %s\n", cal_src_quant_name(d->src_quant));
}

int cal_cmd_inspect(int argc, char **argv)
{
	const char *dir = NULL;
	int as_json = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			as_json = 1;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			inspect_usage(stdout);
			return CAL_EXIT_OK;
		} else if (argv[i][0] == '-' || dir) {
			fprintf(stderr, "calibd inspect: unexpected argument '%s'\n", argv[i]);
			inspect_usage(stderr);
			return CAL_EXIT_USAGE;
		} else {
			dir = argv[i];
		}
	}
	if (!dir) {
		inspect_usage(stderr);
		return CAL_EXIT_USAGE;
	}

	struct cal_error err = {0};
	struct cal_model_desc *d = NULL;
	struct cal_checkpoint *ck = NULL;
	struct cal_catalog *cat = NULL;
	enum cal_status st;
	int rc = CAL_EXIT_OK;
	CAL_TRY(cal_model_desc_load(dir, &d, &err));
	CAL_TRY(cal_checkpoint_open(dir, &ck, &err));
	CAL_TRY(cal_catalog_build(d, ck, &cat, &err));
	struct cal_param_counts pc;
	cal_catalog_counts(cat, &pc);
	if (as_json) {
		json_t *j = inspect_json(dir, d, cat, ck, &pc);
		if (!j || json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15)) < 0) {
			json_decref(j);
			st = cal_error_set(&err, CAL_ERR_NOMEM, "cannot write JSON");
			goto fail;
		}
		json_decref(j);
		printf("\n");
	} else {
		inspect_print(dir, d, cat, ck, &pc);
	}
	goto out;
fail:
	rc = cal_cli_fail("inspect", &err, cal_exit_from_status(st));
out:
	cal_error_clear(&err);
	cal_catalog_free(cat);
	cal_checkpoint_free(ck);
	cal_model_desc_free(d);
	return rc;
}
