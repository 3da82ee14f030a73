/*
 * test_calib.c — the calibration engine (engine/calib.h) end to end on the
 * CPU back end, on tiny fixtures of every supported architecture: it runs,
 * statistics are finite and complete, token counts add up to tokens * k,
 * moe_calib_experts_ratio and per_expert_input_amax behave as documented,
 * the thread count does not change a single byte, padding like modelopt
 * counts the pads, a NaN/Inf in an activation fails naming the layer and
 * module, token files are validated.  Token ids come from a fixed seed
 * (printed on failure through the messages).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calib_env.h"

#define SEED 20260901u

static void make_model(struct calib_env *e, const char *arch, enum cal_fixture_layout lay)
{
	struct cal_fixture_opts fo = {.arch = arch, .layout = lay, .seed = 7};
	calib_env_model(e, "calib-test", &fo);
}

/* The fixture arch (layout lay), the plan of recipe, n_seq token sequences
 * of lengths in [min_len, max_len] from seed. */
static void setup(struct calib_env *e, const char *arch, enum cal_fixture_layout lay,
		  const char *recipe, size_t n_seq, size_t min_len, size_t max_len, uint64_t seed)
{
	make_model(e, arch, lay);
	calib_env_plan(e, recipe);
	calib_env_tokens(e, n_seq, min_len, max_len, seed);
}

static enum cal_status count_layer(void *ctx, const struct cal_calib *c, int32_t layer,
				   struct cal_error *err)
{
	struct calib_env *e = ctx;
	(void)c;
	if (layer != e->layers_seen)
		return cal_error_set(err, CAL_ERR_INTERNAL, "layer %d out of order", layer);
	e->layers_seen++;
	return CAL_OK;
}

static enum cal_status run(struct calib_env *e, struct cal_calib_opts *o, struct cal_error *err)
{
	enum cal_status st;
	o->on_hidden = calib_env_keep_hidden;
	o->on_layer = count_layer;
	o->ctx = e;
	e->layers_seen = 0;
	cal_calib_free(e->c);
	e->c = NULL;
	st = cal_calib_open(e->model, e->p, o, &e->c, err);
	if (st < 0)
		return st;
	return cal_calib_run(e->c, e->tk, err);
}

/* run() that must succeed (the test stops with the error otherwise). */
static void run_ok(struct calib_env *e, struct cal_calib_opts *o)
{
	struct cal_error err = {0};
	cr_assert_eq(run(e, o, &err), CAL_OK, "%s", cal_error_msg(&err));
}

/* The hidden states of the last run, now the caller's to free. */
static uint16_t *take_hidden(struct calib_env *e)
{
	uint16_t *h = e->last_hidden;
	e->last_hidden = NULL;
	return h;
}

/* Every enabled calibrated quantizer has a finite amax > 0 (weights and
 * activations), and token counts sum to tokens * k per MoE layer. */
static void check_complete(struct calib_env *e, uint64_t kk)
{
	const struct cal_plan *p = e->p;
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		float a;
		if (!q->spec.enabled || !q->spec.calibrate || q->spec.use_constant_amax ||
		    q->role == CAL_QROLE_OUTPUT || q->role == CAL_QROLE_Q_BMM ||
		    q->role == CAL_QROLE_P_BMM)
			continue;
		cr_expect(cal_calib_q_amax(e->c, i, &a), "%s: no amax", q->name);
		cr_expect(isfinite(a) && a > 0, "%s: amax %g", q->name, (double)a);
	}
	for (int32_t L = 0; L < e->d->num_layers; L++) {
		const struct cal_calib_moe_stats *m = cal_calib_moe(e->c, L);
		uint64_t sum = 0;
		if (e->d->layers[L].ffn != CAL_FFN_MOE) {
			cr_expect_null(m);
			continue;
		}
		cr_assert_not_null(m);
		for (int64_t x = 0; x < m->n_experts; x++) {
			sum += m->tokens[x];
			cr_expect((m->tokens[x] == 0) == (m->gate_up_amax[x] < 0),
				  "layer %d expert %lld: tokens %llu amax %g", L, (long long)x,
				  (unsigned long long)m->tokens[x], (double)m->gate_up_amax[x]);
		}
		cr_expect_eq(sum, cal_calib_tokens_processed(e->c) * kk, "layer %d: %llu pairs", L,
			     (unsigned long long)sum);
	}
	cr_expect_eq(e->layers_seen, e->d->num_layers);
}

static void arch_case(const char *arch, enum cal_fixture_layout lay)
{
	struct calib_env e = {0};
	struct cal_error err = {0};
	struct cal_calib_opts o = {.cpu_threads = 2};
	setup(&e, arch, lay, "general/ptq/nvfp4_default-kv_fp8", 5, 3, 19, SEED);
	cr_assert_eq(run(&e, &o, &err), CAL_OK, "%s: %s", arch, cal_error_msg(&err));
	check_complete(&e, (uint64_t)e.d->top_k);
	char *js = cal_calib_stats_json(e.c);
	cr_assert_not_null(js);
	json_t *j = json_loads(js, 0, NULL);
	cr_assert_not_null(j, "stats JSON does not parse");
	/* KV statistics for the attention layers only (not Gated DeltaNet ones) */
	cr_expect(json_object_size(json_object_get(j, "kv_amax")) ==
		  (size_t)(e.d->num_layers - e.d->n_linear_layers));
	cr_expect(json_object_size(json_object_get(j, "input_amax")) > 0);
	json_decref(j);
	free(js);
	cal_error_clear(&err);
	calib_env_free(&e);
}

#define CALIB_ARCH(name, arch, layout) \
	Test(calib, name) { arch_case(arch, CAL_FIXTURE_LAYOUT_##layout); }
#include "arch_cases.def"
#undef CALIB_ARCH

/* Gated DeltaNet with modelopt's padding: HF zeroes the pad rows of the GDN
 * input, so the linear_attn statistics (and the real tokens' hidden states)
 * are those of the packed run. */
Test(calib, gdn_pads_are_masked)
{
	struct calib_env e = {0};
	struct cal_calib_opts o = {.cpu_threads = 2};
	setup(&e, "qwen3_5_moe_text", CAL_FIXTURE_LAYOUT_DEFAULT,
	      "general/ptq/nvfp4_default-kv_fp8", 4, 3, 21, SEED + 5);
	run_ok(&e, &o);
	char *js = cal_calib_stats_json(e.c);
	json_t *packed = json_loads(js, 0, NULL);
	free(js);
	o.pad_like_modelopt = 1;
	o.pad_id = 0;
	run_ok(&e, &o);
	js = cal_calib_stats_json(e.c);
	json_t *padded = json_loads(js, 0, NULL);
	free(js);
	cr_assert(packed && padded);
	json_t *a = json_object_get(packed, "input_amax"), *b = json_object_get(padded, "input_amax");
	const char *k;
	json_t *v;
	int n = 0;
	json_object_foreach(a, k, v) {
		if (!strstr(k, "linear_attn"))
			continue;
		n++;
		cr_expect(json_number_value(json_object_get(b, k)) == json_number_value(v),
			  "%s: packed %g, padded %g", k, json_number_value(v),
			  json_number_value(json_object_get(b, k)));
	}
	cr_expect_eq(n, 3 * 5, "linear_attn entries: %d", n);
	json_decref(packed);
	json_decref(padded);
	calib_env_free(&e);
}

/* 1 thread (the reference) and 3 threads give the same bytes. */
Test(calib, threads_do_not_change_results)
{
	struct calib_env e = {0};
	struct cal_calib_opts o1 = {.cpu_threads = 1}, o3 = {.cpu_threads = 3, .micro_batch_tokens = 20};
	setup(&e, "qwen2_moe", CAL_FIXTURE_LAYOUT_DEFAULT,
	      "general/ptq/nvfp4_default-kv_fp8", 6, 2, 17, SEED + 2);
	run_ok(&e, &o1);
	char *j1 = cal_calib_stats_json(e.c);
	uint16_t *h1 = take_hidden(&e);
	run_ok(&e, &o3);
	char *j3 = cal_calib_stats_json(e.c);
	cr_expect(memcmp(h1, e.last_hidden, e.hidden_n * 2) == 0, "hidden states differ");
	cr_expect_str_eq(j1, j3);
	free(j1);
	free(j3);
	free(h1);
	calib_env_free(&e);
}

/* moe_calib_experts_ratio: statistics over max(k, round(r E)) experts per
 * token, the output (hidden states) from the real top-k. */
Test(calib, experts_ratio)
{
	struct calib_env e = {0};
	struct cal_calib_opts o = {.cpu_threads = 2}, orat = {.cpu_threads = 2,
							      .moe_calib_experts_ratio = 1.0};
	setup(&e, "qwen3_moe", CAL_FIXTURE_LAYOUT_DEFAULT,
	      "general/ptq/nvfp4_experts_only-kv_fp8", 4, 5, 9, SEED + 3);
	run_ok(&e, &o);
	uint16_t *h = take_hidden(&e);
	run_ok(&e, &orat);
	check_complete(&e, (uint64_t)e.d->num_experts); /* r = 1: every expert sees every token */
	cr_expect(memcmp(h, e.last_hidden, e.hidden_n * 2) == 0,
		  "the ratio changed the forward output");
	free(h);
	calib_env_free(&e);
}

/* Default: one input amax per projection type = max over experts; with
 * per_expert_input_amax the JSON keeps per-expert values and fills experts
 * without tokens from the layer maximum, listing them. */
Test(calib, per_expert_input_amax)
{
	struct calib_env e = {0};
	struct cal_calib_opts o = {.cpu_threads = 2, .per_expert_input_amax = 1};
	/* 2 tokens x top-2: some experts idle */
	setup(&e, "qwen3_moe", CAL_FIXTURE_LAYOUT_DEFAULT,
	      "general/ptq/nvfp4_experts_only-kv_fp8", 1, 2, 2, SEED + 4);
	run_ok(&e, &o);
	const struct cal_calib_moe_stats *m = cal_calib_moe(e.c, 0);
	cr_assert_not_null(m);
	float mx = -1;
	int idle = 0;
	for (int64_t x = 0; x < m->n_experts; x++) {
		mx = m->gate_up_amax[x] > mx ? m->gate_up_amax[x] : mx;
		idle += m->tokens[x] == 0;
	}
	cr_assert(idle > 0, "expected idle experts");
	const struct cal_plan_q *q = cal_plan_find(e.p, "model.layers.0.mlp.experts.gate_up_proj_input_quantizer");
	cr_assert_not_null(q);
	float a = 0;
	cr_assert(cal_calib_q_amax(e.c, (size_t)(q - e.p->q), &a));
	cr_expect_eq(a, mx);
	char *js = cal_calib_stats_json(e.c);
	json_t *j = json_loads(js, 0, NULL);
	json_t *ml = json_object_get(json_object_get(j, "moe"), "model.layers.0.mlp.experts");
	json_t *filled = json_object_get(ml, "filled_from_layer_max");
	json_t *per = json_object_get(ml, "per_expert_gate_up_input_amax");
	cr_expect_eq(json_array_size(filled), (size_t)idle);
	cr_expect_eq(json_array_size(per), (size_t)m->n_experts);
	for (size_t i = 0; i < json_array_size(filled); i++) {
		json_int_t x = json_integer_value(json_array_get(filled, i));
		cr_expect_eq((float)json_real_value(json_array_get(per, (size_t)x)), mx);
	}
	json_decref(j);
	free(js);
	calib_env_free(&e);
}

/* pad_like_modelopt: sequences padded to the longest with EOS; pads count
 * (tokens = n * longest, expert pairs = that * k), and the last real token
 * of the longest sequence ends as in the packed run (pads before a
 * sequence that needs none change nothing). */
Test(calib, pad_like_modelopt)
{
	struct calib_env e = {0};
	struct cal_calib_opts o = {.cpu_threads = 2, .pad_like_modelopt = 1, .pad_id = -1};
	setup(&e, "mixtral", CAL_FIXTURE_LAYOUT_DEFAULT,
	      "general/ptq/nvfp4_default-kv_fp8", 3, 4, 11, SEED + 5);
	size_t longest = 0;
	for (size_t i = 0; i < e.tk->n; i++)
		longest = e.tk->off[i + 1] - e.tk->off[i] > longest ? e.tk->off[i + 1] - e.tk->off[i] : longest;
	run_ok(&e, &o);
	cr_expect_eq(cal_calib_tokens_processed(e.c), e.tk->n * longest);
	check_complete(&e, (uint64_t)e.d->top_k);
	calib_env_free(&e);
}

/* Patches one bf16 element of a tensor in the fixture's safetensors file. */
static void patch_tensor(const char *model, const char *tensor, uint16_t value)
{
	char path[256];
	unsigned char hdr8[8];
	snprintf(path, sizeof(path), "%s/model.safetensors", model);
	FILE *f = fopen(path, "r+b");
	cr_assert_not_null(f);
	cr_assert_eq(fread(hdr8, 1, 8, f), 8u);
	uint64_t n = 0;
	for (int i = 7; i >= 0; i--)
		n = n << 8 | hdr8[i];
	char *h = malloc(n + 1);
	cr_assert_eq(fread(h, 1, n, f), n);
	h[n] = 0;
	json_t *j = json_loads(h, 0, NULL);
	cr_assert_not_null(j);
	json_t *t = json_object_get(j, tensor);
	cr_assert_not_null(t, "no tensor %s", tensor);
	uint64_t off = (uint64_t)json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
	cr_assert_eq(fseek(f, (long)(8 + n + off), SEEK_SET), 0);
	unsigned char b[2] = {(unsigned char)(value & 0xff), (unsigned char)(value >> 8)};
	cr_assert_eq(fwrite(b, 1, 2, f), 2u);
	fclose(f);
	json_decref(j);
	free(h);
}

Test(calib, nonfinite_activation_names_layer_and_module)
{
	struct calib_env e = {0};
	struct cal_error err = {0};
	struct cal_calib_opts o = {.cpu_threads = 2};
	make_model(&e, "qwen3_moe", CAL_FIXTURE_LAYOUT_DEFAULT);
	/* +Inf in layer 1's o_proj weight (not quantized by this recipe, so only
	 * the activations carry it) */
	patch_tensor(e.model, "model.layers.1.self_attn.o_proj.weight", 0x7f80);
	calib_env_plan(&e, "general/ptq/nvfp4_experts_only-kv_fp8");
	calib_env_tokens(&e, 2, 4, 6, SEED + 6);
	enum cal_status st = run(&e, &o, &err);
	cr_assert_eq(st, CAL_ERR_NUMERIC, "got %s: %s", cal_status_str(st), cal_error_msg(&err));
	cr_expect(strstr(cal_error_msg(&err), "layer 1"), "%s", cal_error_msg(&err));
	cr_expect(strstr(cal_error_msg(&err), "model.layers.1."), "%s", cal_error_msg(&err));
	cr_expect_eq(e.layers_seen, 1, "layer 0 should have completed");
	cal_error_clear(&err);
	calib_env_free(&e);
}

/* CALIBD_TEST_SITE_DUMP=DIR (engine/calib/lin_run.c; tests/modelopt/search_inputs.py):
 * each linear-run site's input rows appended to
 * DIR/L<layer>_s<site>_e<expert>_c<cols>.bf16; a folder it cannot write
 * fails the run naming the file. */
Test(calib, site_dump_writes_the_search_inputs)
{
	struct calib_env e = {0};
	struct cal_error err = {0};
	struct cal_calib_opts o = {.cpu_threads = 2};
	char dir[4096], fn[4200];
	struct stat sb;
	setup(&e, "llama", CAL_FIXTURE_LAYOUT_DEFAULT, "general/ptq/nvfp4_awq-kv_fp8_cast", 3, 8, 8,
	      SEED + 9);
	snprintf(dir, sizeof dir, "%s/dump", e.dir);
	cr_assert_eq(mkdir(dir, 0700), 0);
	cr_assert_eq(setenv("CALIBD_TEST_SITE_DUMP", dir, 1), 0);
	enum cal_status st = run(&e, &o, &err);
	cr_assert_eq(st, CAL_OK, "%s", cal_error_msg(&err));
	/* layer 0's q/k/v input (site 0): every one of the 3 x 8 tokens */
	uint64_t H = (uint64_t)e.d->hidden_size;
	snprintf(fn, sizeof fn, "%s/L0_s0_e-1_c%llu.bf16", dir, (unsigned long long)H);
	cr_assert_eq(stat(fn, &sb), 0, "%s not written", fn);
	cr_expect_eq((uint64_t)sb.st_size, 24 * H * 2, "%s: %lld bytes", fn, (long long)sb.st_size);
	snprintf(dir, sizeof dir, "%s/missing", e.dir);
	cr_assert_eq(setenv("CALIBD_TEST_SITE_DUMP", dir, 1), 0);
	st = run(&e, &o, &err);
	unsetenv("CALIBD_TEST_SITE_DUMP");
	cr_assert_eq(st, CAL_ERR_IO, "got %s: %s", cal_status_str(st), cal_error_msg(&err));
	cr_expect(strstr(cal_error_msg(&err), "missing/L0_s0_e-1_c"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	calib_env_free(&e);
}

Test(calib, token_files_are_validated)
{
	struct cal_calib_tokens *t = NULL;
	struct cal_error err = {0};
	const char *one = "{\"input_ids\": [[1, 2, 3], [4]]}";
	cr_assert_eq(cal_calib_tokens_parse("t", one, strlen(one), 10, &t, &err), CAL_OK);
	cr_expect_eq(t->n, 2u);
	cr_expect_eq(t->n_tokens, 4u);
	cal_calib_tokens_free(t);
	const char *bad[] = {"{\"input_ids\": [1, 99]}\n", "{\"input_ids\": []}\n", "{\"x\": [1]}\n",
			     "not json\n", "{\"input_ids\": [1, -2]}\n", ""};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		t = NULL;
		cr_expect_eq(cal_calib_tokens_parse("t", bad[i], strlen(bad[i]), 10, &t, &err),
			     CAL_ERR_FORMAT, "case %zu", i);
		cr_expect_null(t);
		cr_expect(strstr(cal_error_msg(&err), "t"), "message names the file");
		cal_error_clear(&err);
	}
}

/* FP8 block source (docs/deepseek.md): streamed weights (a memory cap) carry
 * the experts as E4M3 codes decoded by the back end when the layer starts;
 * without streaming the host decodes them while staging.  Same statistics
 * either way, and the same as the bf16 decode of the weights would give. */
Test(calib, deepseek_v3_fp8_source_decoded_on_the_back_end)
{
	struct calib_env e = {0};
	struct cal_fixture_opts fo = {.arch = "deepseek_v3", .seed = 7, .fp8_block = 16};
	calib_env_model(&e, "calib-test", &fo);
	calib_env_plan(&e, "general/ptq/nvfp4_default-kv_fp8");
	calib_env_tokens(&e, 5, 3, 19, SEED);
	char *js[2];
	for (int streamed = 0; streamed < 2; streamed++) {
		struct cal_calib_opts o = {.cpu_threads = 2, .max_mem = streamed ? 64u << 20 : 0};
		run_ok(&e, &o);
		check_complete(&e, (uint64_t)e.d->top_k);
		js[streamed] = cal_calib_stats_json(e.c);
		cr_assert_not_null(js[streamed]);
	}
	cr_expect_str_eq(js[0], js[1], "statistics differ between host and back-end FP8 decode");
	free(js[0]);
	free(js[1]);
	cal_calib_free(e.c);
	e.c = NULL;
	calib_env_free(&e);
}

Test(calib, unsupported_architectures_are_refused)
{
	struct calib_env e = {0};
	struct cal_error err = {0};
	struct cal_calib_opts o = {0};
	char path[300];
	make_model(&e, "deepseek_v3", CAL_FIXTURE_LAYOUT_DEFAULT);
	/* MLA with attention_bias: not run (no released checkpoint has it) */
	snprintf(path, sizeof(path), "%s/config.json", e.model);
	json_t *cfg = json_load_file(path, 0, NULL);
	cr_assert_not_null(cfg);
	json_object_set_new(cfg, "attention_bias", json_true());
	cr_assert_eq(json_dump_file(cfg, path, 0), 0);
	json_decref(cfg);
	cal_model_desc_free(e.d);
	cr_assert_eq(cal_model_desc_load(e.model, &e.d, &err), CAL_OK, "%s", cal_error_msg(&err));
	calib_env_plan(&e, "general/ptq/nvfp4_experts_only-kv_fp8");
	cr_expect_eq(cal_calib_open(e.model, e.p, &o, &e.c, &err), CAL_ERR_UNSUPPORTED);
	cr_expect(strstr(cal_error_msg(&err), "attention_bias"), "%s", cal_error_msg(&err));
	cr_expect_null(e.c);
	cal_error_clear(&err);
	calib_env_free(&e);
}
