/*
 * test_quantize.c — suite 'unit' tests of `calibd quantize` (engine/quantize.h,
 * cli/cmd_quantize.c) on the CPU back end: every MoE architecture the
 * calibration engine runs (qwen3_moe per-expert and fused, mixtral and its
 * fused layout, qwen2_moe, olmoe, the Gated DeltaNet qwen3_next and
 * qwen3_5_moe, gpt_oss from bf16 and from MXFP4, DeepSeek-V3 per-expert, fused,
 * from FP8 block weights and V2-style without q_lora) and two dense ones
 * (llama, qwen3), each with the
 * experts-only NVFP4, default NVFP4, FP8 and W4A16 recipes, fed a JSONL text
 * dataset through the fixture's tokenizer; every output passes
 * `calibd verify --source` and every routed expert projection carries an
 * input_scale where the format has one.  Also: a token file with the MoE
 * options and the progress lines, an inline recipe through the C API,
 * cancellation from a progress callback (nothing published; SIGTERM is in
 * test_quantize_signal.c), an existing output (exit 3 before any compute), a full disk (exit 4, nothing left), `calibd calibrate --calib`
 * and `calibd export --stats` of its output, and bad command lines.
 *
 * Runs the calibd binary named by $CALIBD (meson sets it).  Fixture seed 7.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/model/model.h"
#include "engine/quantize.h"
#include "engine/st/safetensors.h"
#include "fixture.h"
#include "qtest.h"

/* A small JSONL text dataset ({"text": ...} records). */
static char *make_data(const char *root)
{
	static const char *const lines[] = {
		"the quick brown fox jumps over the lazy dog, then there is nothing here",
		"in the beginning there were tokens, and the tokens were many and short",
		"another record: where the router sends each token is what we measure",
		"numbers 12345 67890, punctuation !?;: and whitespace\\tand\\nnewlines",
		"short",
		"the rain in spain stays mainly in the plain, or so the rhyme goes on",
		"calibration data should look like what the model will see in use",
		"one more line of text to make eight records in all, the end",
	};
	char *p = path2(root, "data.jsonl");
	FILE *f = fopen(p, "w");
	cr_assert(f);
	for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
		fprintf(f, "{\"text\": \"%s\"}\n", lines[i]);
	cr_assert_eq(fclose(f), 0);
	return p;
}

/* A test's directory (root) with fixture arch/layout (src), the dataset of
 * make_data (data), and the paths of the output (dst) and of stderr (errf),
 * neither made yet; rm_rf(root) frees them. */
struct qdirs {
	char *root, *src, *data, *dst, *errf;
};

static struct qdirs qdirs_make(const char *arch, const char *layout)
{
	struct qdirs q = {.root = tmpdir()};
	q.src = make_model(q.root, arch, layout);
	q.data = make_data(q.root);
	q.dst = path2(q.root, "out");
	q.errf = path2(q.root, "stderr");
	return q;
}

/* ---- every architecture x recipe ----------------------------------------- */

struct recipe_case {
	const char *name;
	const char *quant_algo;
	int expert_input_scale;     /* every routed expert projection has one */
	int experts_only;
};

static const struct recipe_case RECIPES[] = {
	{"general/ptq/nvfp4_experts_only-kv_fp8", "NVFP4", 1, 1},
	{"general/ptq/nvfp4_default-kv_fp8", "NVFP4", 1, 0},
	{"general/ptq/fp8_default-kv_fp8", "FP8", 1, 0},
	{"general/ptq/nvfp4_weight_only-kv_fp16", "W4A16_NVFP4", 0, 0},
};

static void check_output(const char *src, const char *dst, const char *label,
			 const struct recipe_case *rc, const char *report_path)
{
	struct cal_error err = {0};
	struct cal_model_desc *d = NULL;
	struct cal_checkpoint *ck = NULL;
	cr_assert_eq(cal_model_desc_load(src, &d, &err), CAL_OK);
	cr_assert_eq(cal_checkpoint_open(dst, &ck, &err), CAL_OK, "%s: %s", label,
		     cal_error_msg(&err));
	size_t n_in = 0, n_other_q = 0;
	for (size_t i = 0; i < cal_checkpoint_count(ck); i++) {
		const char *n = cal_checkpoint_tensor(ck, i)->name;
		size_t l = strlen(n);
		if (strstr(n, ".experts.") && l > 12 && !strcmp(n + l - 12, ".input_scale"))
			n_in++;
		else if (strstr(n, ".experts.") && l > 12 && !strcmp(n + l - 12, "_input_scale"))
			n_in++; /* gpt_oss: one per projection (docs/gpt_oss.md) */
		else if (!strstr(n, ".experts.") && l > 13 && !strcmp(n + l - 13, ".weight_scale"))
			n_other_q++;
	}
	uint64_t per_layer = d->act == CAL_ACT_SWIGLU_OAI ? 2 : (uint64_t)d->num_experts * 3;
	uint64_t want = rc->expert_input_scale ? (uint64_t)d->n_moe_layers * per_layer : 0;
	cr_assert_eq(n_in, want, "%s: %zu expert input_scale tensors, want %llu", label, n_in,
		     (unsigned long long)want);
	if (rc->experts_only)
		cr_assert_eq(n_other_q, 0, "%s: experts-only quantized %zu other weights", label,
			     n_other_q);
	else
		cr_assert(n_other_q > 0, "%s: nothing but experts quantized", label);
	/* the summary */
	json_error_t je;
	json_t *r = json_load_file(report_path, 0, &je);
	cr_assert(r, "%s: report: %s", label, je.text);
	json_t *qa = json_object_get(r, "quant_algo");
	if (d->n_moe_layers || !rc->experts_only)
		cr_assert_str_eq(json_string_value(qa), rc->quant_algo, "%s", label);
	cr_assert_str_eq(json_string_value(json_object_get(r, "output")), dst);
	cr_assert(json_integer_value(json_object_get(r, "bytes")) > 0);
	cr_assert(json_array_size(json_object_get(r, "files")) >= 3);
	cr_assert(json_is_integer(json_object_get(r, "experts_without_tokens_total")));
	json_t *ph = json_object_get(r, "phases_s");
	cr_assert(json_is_number(json_object_get(ph, "calibrate")), "%s: phases", label);
	cr_assert(json_is_number(json_object_get(ph, "export_layers")), "%s: phases", label);
	cr_assert_eq(json_integer_value(json_object_get(json_object_get(r, "calibration"), "samples")),
		     8, "%s", label);
	json_decref(r);
	cal_checkpoint_free(ck);
	cal_model_desc_free(d);
}

static void arch_case(const char *arch, const char *layout)
{
	printf("fixture seed %u\n", SEED);
	char *root = tmpdir();
	char *src = make_model(root, arch, layout);
	char *data = make_data(root);
	for (size_t k = 0; k < sizeof(RECIPES) / sizeof(RECIPES[0]); k++) {
		char *dst = NULL, *rep = NULL, *errf = NULL, label[128];
		snprintf(label, sizeof(label), "%s-%s-%zu", arch, layout, k);
		cr_assert(asprintf(&dst, "%s/out-%zu", root, k) > 0);
		cr_assert(asprintf(&rep, "%s/report-%zu.json", root, k) > 0);
		cr_assert(asprintf(&errf, "%s/stderr-%zu", root, k) > 0);
		int rc = run(rep, errf, "quantize --model %s --recipe %s --calib %s --samples 8 "
			     "--seq-len 48 --device cpu --out %s --json", src, RECIPES[k].name, data,
			     dst);
		if (rc) {
			char *e = slurp(errf);
			cr_assert_fail("%s: calibd quantize exited %d: %s", label, rc, e);
		}
		rc = run(NULL, errf, "verify %s --source %s", dst, src);
		if (rc) {
			char *e = slurp(errf);
			cr_assert_fail("%s: calibd verify exited %d: %s", label, rc, e);
		}
		check_output(src, dst, label, &RECIPES[k], rep);
		free(dst);
		free(rep);
		free(errf);
	}
	rm_rf(root);
}

Test(quantize, qwen3_moe_per_expert, .timeout = 120) { arch_case("qwen3_moe", "per-expert"); }
Test(quantize, qwen3_moe_fused, .timeout = 120) { arch_case("qwen3_moe", "fused"); }
Test(quantize, mixtral, .timeout = 120) { arch_case("mixtral", "mixtral"); }
Test(quantize, mixtral_fused, .timeout = 120) { arch_case("mixtral", "fused"); }
Test(quantize, qwen2_moe, .timeout = 120) { arch_case("qwen2_moe", "per-expert"); }
Test(quantize, olmoe, .timeout = 120) { arch_case("olmoe", "per-expert"); }
Test(quantize, qwen3_next, .timeout = 120) { arch_case("qwen3_next", "per-expert"); }
Test(quantize, qwen3_5_moe, .timeout = 120) { arch_case("qwen3_5_moe", "fused"); }
Test(quantize, gpt_oss, .timeout = 120) { arch_case("gpt_oss", "default"); }
Test(quantize, gpt_oss_mxfp4, .timeout = 120) { arch_case("gpt_oss", "mxfp4"); }
/* DeepSeek-V3: per-expert, fused, FP8 128x128-style block source weights
 * (16x16 here: partial edge blocks), V2-style q_proj */
Test(quantize, deepseek_v3, .timeout = 300)
{
	static const char *const layouts[] = {"per-expert", "fused", "fp8-block16", "q-lora-null"};
	for (size_t i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++)
		arch_case("deepseek_v3", layouts[i]);
}
Test(quantize, llama_dense, .timeout = 120) { arch_case("llama", "default"); }
Test(quantize, qwen3_dense, .timeout = 120) { arch_case("qwen3", "default"); }

/* ---- token file, MoE options, progress lines ------------------------------ */

Test(quantize, token_file_options_progress, .timeout = 120)
{
	char *root = tmpdir();
	char *src = make_model(root, "qwen3_moe", "fused");
	char *tok = make_tokens(root, "tok.jsonl", 6, 40);
	char *dst = path2(root, "out"), *rep = path2(root, "rep.json"), *prog = path2(root, "prog");
	char *errf = path2(root, "stderr");
	/* --progress-fd 3 >prog: 3 is opened by the shell for calibd */
	char *args = NULL;
	cr_assert(asprintf(&args, "quantize --model %s --recipe general/ptq/nvfp4_experts_only-kv_fp8 "
			   "--calib-tokens %s --samples 4 --seq-len 32 --per-expert-input-amax "
			   "--moe-calib-experts-ratio 1 --out %s --json --progress-fd 3 3>%s", src, tok,
			   dst, prog) > 0);
	track(args);
	int rc = run(rep, errf, "%s", args);
	expect_exit(rc, 0, errf);
	cr_assert_eq(run(NULL, NULL, "verify %s --source %s", dst, src), 0);
	json_t *r = json_load_file(rep, 0, NULL);
	cr_assert(r);
	/* every expert saw tokens (ratio 1 routes each token to all of them) */
	cr_assert_eq(json_integer_value(json_object_get(r, "experts_without_tokens_total")), 0);
	json_t *cal = json_object_get(r, "calibration");
	cr_assert_eq(json_integer_value(json_object_get(cal, "samples")), 4);
	cr_assert_eq(json_integer_value(json_object_get(cal, "tokens")), 4 * 32);
	json_decref(r);
	/* the exporter's report took the options */
	r = json_load_file(path2(dst, "calibd_report.json"), 0, NULL);
	cr_assert(r);
	cr_assert(json_is_true(json_object_get(json_object_get(r, "resolved"),
					       "per_expert_input_amax")));
	json_t *ex = json_object_get(r, "experts");
	cr_assert_eq(json_array_size(ex), 2, "two MoE layers");
	cr_assert(json_is_array(json_object_get(json_array_get(ex, 0), "tokens")));
	cr_assert_eq(json_array_size(json_object_get(r, "fallbacks")), 0);
	json_decref(r);
	/* progress: JSON lines, one per layer in order, all keys */
	FILE *f = fopen(prog, "r");
	cr_assert(f);
	char line[4096];
	int next_layer = 0, finish = 0;
	json_int_t written = 0;
	while (fgets(line, sizeof(line), f)) {
		json_t *j = json_loads(line, 0, NULL);
		cr_assert(j, "progress line is not JSON: %s", line);
		static const char *const keys[] = {"phase", "layer", "layers", "tokens_done",
						   "tokens_total", "tokens_per_s", "bytes_written"};
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
			cr_assert(json_object_get(j, keys[k]), "progress without %s: %s", keys[k], line);
		const char *ph = json_string_value(json_object_get(j, "phase"));
		int L = (int)json_integer_value(json_object_get(j, "layer"));
		if (!strcmp(ph, "calibrate") && L >= 0) {
			cr_assert_eq(L, next_layer, "layer %d after %d", L, next_layer - 1);
			cr_assert(json_is_number(json_object_get(j, "eta_s")));
			next_layer++;
		}
		/* the writer runs behind the calibration: bytes only grow, and
		 * everything is written when the job is done */
		json_int_t w = json_integer_value(json_object_get(j, "bytes_written"));
		if (w < written)
			cr_assert_fail("bytes_written went back: %s", line);
		written = w;
		if (!strcmp(ph, "done") && w <= 0)
			cr_assert_fail("nothing written at the end: %s", line);
		finish |= !strcmp(ph, "finish");
		json_decref(j);
	}
	fclose(f);
	cr_assert_eq(next_layer, 3, "progress for %d of 3 layers", next_layer);
	cr_assert(finish);
	rm_rf(root);
}

/* ---- C API: inline recipe, cancel from a progress callback ----------------- */

static const char INLINE_RECIPE[] =
	"imports:\n"
	"  base_disable_all: configs/ptq/units/base_disable_all\n"
	"  experts_nvfp4: configs/ptq/units/experts_nvfp4\n"
	"metadata:\n"
	"  recipe_type: ptq\n"
	"  description: inline experts-only test recipe\n"
	"quantize:\n"
	"  algorithm: max\n"
	"  quant_cfg:\n"
	"    - $import: base_disable_all\n"
	"    - $import: experts_nvfp4\n";

static void count_progress(void *ctx, const json_t *event)
{
	(void)event;
	(*(int *)ctx)++;
}

/* A job on the CPU (engine/job.h); the test frees it. */
static struct cal_job *open_job(const struct cal_job_opts *jo)
{
	struct cal_job *job = NULL;
	struct cal_error err = {0};
	cr_assert_eq(cal_job_open(jo, 0, &job, NULL, &err), CAL_OK, "%s", cal_error_msg(&err));
	return job;
}

Test(quantize, api_inline_recipe, .timeout = 60)
{
	struct qdirs q = qdirs_make("olmoe", "fused");
	struct cal_job_dataset ds = {q.data, 0};
	struct cal_job_opts jo = {.model_dir = q.src, .recipe_yaml = INLINE_RECIPE, .datasets = &ds,
				  .n_datasets = 1, .samples = 8, .seq_len = 32, .seed = 3,
				  .devices = {.kind = CAL_DEVICE_CPU}};
	struct cal_job *job = open_job(&jo);
	struct cal_quantize_opts o = {.out_dir = q.dst};
	struct cal_error err = {0};
	json_t *r = NULL;
	int n = 0;
	cr_assert_eq(cal_quantize_run(job, &o, count_progress, &n, &r, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_assert(n >= 2 + 2, "%d progress lines", n);
	cr_assert(json_is_object(r));
	cr_assert_str_eq(json_string_value(json_object_get(r, "quant_algo")), "NVFP4");
	cr_assert_str_eq(json_string_value(json_object_get(r, "recipe")), "<inline recipe>");
	cr_assert_str_eq(json_string_value(json_object_get(r, "device")), "cpu");
	json_decref(r);
	cr_assert_eq(run(NULL, NULL, "verify %s --source %s", q.dst, q.src), 0);
	/* the same output again: refused, untouched */
	cr_assert_eq(cal_quantize_run(job, &o, NULL, NULL, &r, &err), CAL_ERR_EXISTS);
	cr_assert_null(r);
	cal_error_clear(&err);
	cal_job_close(job);
	rm_rf(q.root);
}

struct cancel_ctx {
	volatile int flag;
	int after_layer;
};

static void cancel_after(void *ctx, const json_t *j)
{
	struct cancel_ctx *c = ctx;
	if (!strcmp(json_string_value(json_object_get(j, "phase")), "calibrate") &&
	    json_integer_value(json_object_get(j, "layer")) == c->after_layer)
		c->flag = 1;
}

Test(quantize, cancel_from_progress_publishes_nothing, .timeout = 60)
{
	char *root = tmpdir();
	char *src = make_model(root, "mixtral", "mixtral");
	char *tok = make_tokens(root, "tok.jsonl", 4, 24);
	char *dst = path2(root, "out");
	size_t before = cal_test_count_entries(root);
	struct cancel_ctx cc = {0, 0};
	struct cal_job_opts jo = {.model_dir = src, .recipe = "general/ptq/nvfp4_default-kv_fp8",
				  .tokens = tok, .devices = {.kind = CAL_DEVICE_CPU}};
	struct cal_job *job = open_job(&jo);
	struct cal_quantize_opts o = {.out_dir = dst, .cancel = &cc.flag};
	struct cal_error err = {0};
	json_t *report = NULL;
	enum cal_status st = cal_quantize_run(job, &o, cancel_after, &cc, &report, &err);
	cr_assert_eq(st, CAL_ERR_INTERRUPTED, "%d: %s", st, cal_error_msg(&err));
	cr_assert(strstr(cal_error_msg(&err), "after 1 of 2 layers"), "%s", cal_error_msg(&err));
	cr_assert_null(report);
	cr_assert(!cal_test_exists(dst), "a cancelled job published %s", dst);
	cr_assert_eq(cal_test_count_entries(root), before, "a temporary directory was left behind");
	cal_error_clear(&err);
	/* a run that is not cancelled publishes */
	cc = (struct cancel_ctx){0, -5};
	cr_assert_eq(cal_quantize_run(job, &o, cancel_after, &cc, &report, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	json_decref(report);
	cal_job_close(job);
	rm_rf(root);
}

/* ---- the command: existing output, full disk, usage -------------------------- */

Test(quantize, existing_output_refused_before_compute, .timeout = 60)
{
	struct qdirs q = qdirs_make("qwen2_moe", "per-expert");
	cr_assert_eq(mkdir(q.dst, 0755), 0);
	char *marker = path2(q.dst, "keep");
	FILE *f = fopen(marker, "w");
	cr_assert(f);
	fclose(f);
	int rc = run(NULL, q.errf, "quantize --model %s --recipe general/ptq/fp8_default-kv_fp8 "
		     "--calib %s --out %s --device cpu", q.src, q.data, q.dst);
	char *e = expect_exit(rc, 3, q.errf);
	cr_assert(strstr(e, "already exists"), "%s", e);
	cr_assert(!strstr(e, "quantize: load") && !strstr(e, "layer"), "work was done: %s", e);
	cr_assert(cal_test_exists(marker));
	cr_assert_eq(cal_test_count_entries(q.dst), 1);
	rm_rf(q.root);
}

/* A recipe file with an awq_lite algorithm line and weight numerics. */
static char *awq_recipe(const char *root, const char *name, const char *algo, const char *wcfg)
{
	char *p = path2(root, name);
	FILE *f = fopen(p, "w");
	cr_assert(f);
	fprintf(f, "metadata: {recipe_type: ptq}\nquantize:\n  algorithm: %s\n  quant_cfg:\n"
		   "    - quantizer_name: '*'\n      enable: false\n"
		   "    - quantizer_name: '*_proj.weight_quantizer'\n      cfg: %s\n", algo, wcfg);
	cr_assert_eq(fclose(f), 0);
	return p;
}

/* One --qformat end to end: the fixture arch/layout quantized with qf on
 * the CPU, then verified; hf_quant_config.json names quant_algo; the
 * model.safetensors header holds each of tensors (space-separated names)
 * and none of those with a leading '!'; then more() checks what is the
 * format's own (NULL: nothing more). */
struct qformat_case {
	const char *arch, *layout, *qf, *quant_algo, *tensors;
	void (*more)(const char *root, const char *dst, const char *src, const char *tok);
};

/* --kv-cache-qformat nvfp4_affine over --qformat nvfp4 (docs/recipes.md
 * "KV-cache formats"): NVFP4_AFFINE with BF16 [1, H_kv, 1, head_dim] k/v
 * biases.  calibrate (given --qformat nvfp4), then export (given the recipe
 * nvfp4 maps to), with the flag, write the same tensors; plan (--qformat)
 * shows the affine KV cache; each command refuses an unknown name naming
 * the choices (exit 3), nothing written; calibrate, export and plan refuse
 * an unknown --qformat (exit 3) and --qformat with --recipe (exit 2). */
static void kv_affine_more(const char *root, const char *dst, const char *src, const char *tok)
{
	static const char *const R = "general/ptq/nvfp4_default-kv_fp8_cast";
	char *cfg = slurp(path2(dst, "hf_quant_config.json"));
	cr_assert(strstr(cfg, "\"kv_cache_quant_algo\": \"NVFP4_AFFINE\""), "%s", cfg);
	const char *hdr = slurp(path2(dst, "model.safetensors")) + 8;
	cr_assert(strstr(hdr, "\"model.layers.1.self_attn.k_proj.k_bias\":{\"dtype\":\"BF16\","
			 "\"shape\":[1,2,1,16]"), "%.400s", hdr);
	char *errf = path2(root, "stderr"), *outf = path2(root, "stdout");
	char *stats = path2(root, "stats.json"), *d2 = path2(root, "out2");
	int rc = run(NULL, errf, "calibrate --model %s --qformat nvfp4 --kv-cache-qformat nvfp4_affine "
		     "--calib-tokens %s --stats-out %s --quiet", src, tok, stats);
	expect_exit(rc, 0, errf);
	cr_assert(strstr(slurp(stats), "\"bias\""), "no k/v bias in the statistics");
	rc = run(NULL, errf, "export --model %s --recipe %s --kv-cache-qformat nvfp4_affine "
		 "--stats %s --out %s", src, R, stats, d2);
	expect_exit(rc, 0, errf);
	size_t n1 = 0, n2 = 0;
	char *a = track(cal_test_slurp(path2(dst, "model.safetensors"), &n1));
	char *b = track(cal_test_slurp(path2(d2, "model.safetensors"), &n2));
	cr_assert(n1 == n2 && !memcmp(a, b, n1), "calibrate + export differ from quantize");
	rc = run(outf, errf, "plan --model %s --qformat nvfp4 --kv-cache-qformat nvfp4_affine", src);
	expect_exit(rc, 0, errf);
	cr_assert(strstr(slurp(outf), "KV NVFP4 (affine)"), "%s", slurp(outf));
	/* an unknown name: every command refuses it the same way */
	static const struct {
		const char *cmd, *data, *out; /* data: --stats of export, else a token file */
	} bad[] = {
		{"quantize --qformat nvfp4", "--calib-tokens", "--out"},
		{"calibrate --recipe general/ptq/nvfp4_default-kv_fp8_cast", "--calib-tokens",
		 "--stats-out"},
		{"export --recipe general/ptq/nvfp4_default-kv_fp8_cast", "--stats", "--out"},
		{"plan --recipe general/ptq/nvfp4_default-kv_fp8_cast", NULL, NULL},
	};
	char *d3 = path2(root, "out3");
	for (size_t i = 0; i < CAL_ARRAY_LEN(bad); i++) {
		int st = bad[i].data && !strcmp(bad[i].data, "--stats");
		rc = run(NULL, errf, "%s --model %s %s %s %s %s --kv-cache-qformat fp4", bad[i].cmd,
			 src, bad[i].data ? bad[i].data : "", bad[i].data ? (st ? stats : tok) : "",
			 bad[i].out ? bad[i].out : "", bad[i].out ? d3 : "");
		char *e = expect_exit(rc, 3, errf);
		cr_assert(strstr(e, "unknown kv_cache_qformat 'fp4'") && strstr(e, "nvfp4_rotate"),
			  "%s: %s", bad[i].cmd, e);
		cr_assert(!cal_test_exists(d3), "%s wrote its output", bad[i].cmd);
	}
	/* --qformat: an unknown name lists the names; with --recipe, a usage error */
	static const char *const bad_qf[][2] = {
		{"calibrate", "--calib-tokens %s --stats-out %s"},
		{"export", "--stats %s --out %s"},
		{"plan", ""},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(bad_qf); i++) {
		const char *cmd = bad_qf[i][0];
		int ex = !strcmp(cmd, "export");
		char args[4096];
		snprintf(args, sizeof args, bad_qf[i][1], ex ? stats : tok, d3);
		rc = run(NULL, errf, "%s --model %s --qformat nvfp5 %s", cmd, src, args);
		char *e = expect_exit(rc, 3, errf);
		cr_assert(strstr(e, "--qformat: unknown qformat 'nvfp5'") && strstr(e, "nvfp4_awq"),
			  "%s: %s", cmd, e);
		rc = run(NULL, errf, "%s --model %s --qformat nvfp4 --recipe %s %s", cmd, src, R, args);
		e = expect_exit(rc, 2, errf);
		cr_assert(strstr(e, "--recipe and --qformat exclude each other"), "%s: %s", cmd, e);
		cr_assert(!cal_test_exists(d3), "%s wrote its output", cmd);
	}
}

/* int4_awq's report has the search's alphas; bad awq_lite options and
 * formats are refused naming them. */
static void int4_awq_more(const char *root, const char *dst, const char *src, const char *tok)
{
	char *errf = path2(root, "stderr"), *e;
	int rc;
	char *cfg = slurp(path2(dst, "hf_quant_config.json"));
	cr_assert(strstr(cfg, "\"pre_quant_scale\": true"), "%s", cfg);
	json_t *rep = json_loads(slurp(path2(dst, "calibd_report.json")), 0, NULL);
	cr_assert(rep);
	json_t *lins = json_object_get(json_object_get(rep, "awq_lite"), "linears");
	cr_assert(json_array_size(lins) > 0);
	size_t i;
	json_t *l;
	json_array_foreach(lins, i, l)
		cr_assert(json_is_real(json_object_get(l, "alpha")), "linear %zu not searched", i);
	json_decref(rep);

	static const struct {
		const char *algo, *wcfg, *needle;
	} bad[] = {
		{"{method: awq_lite, alpha_step: 0}", "{num_bits: 4, block_sizes: {-1: 128, type: "
		 "static}}", "alpha_step: must be in (0, 1]"},
		{"{method: awq_lite, debug: true}", "{num_bits: 4, block_sizes: {-1: 128, type: "
		 "static}}", "debug"},
		{"{method: awq_lite}", "{num_bits: [4, 3]}",
		 "awq_lite is implemented for INT4 block, W4A8 AWQ and NVFP4 weights only"},
		/* awq_full (docs/awq.md "awq_full") */
		{"{method: awq_full, min_clip_ratio: 0}", "{num_bits: 4, block_sizes: {-1: 128, "
		 "type: static}}", "min_clip_ratio: must be in (0, 1]"},
		{"{method: awq_full, max_tokens_per_batch: 0}", "{num_bits: 4, block_sizes: {-1: "
		 "128, type: static}}", "max_tokens_per_batch: expected a positive integer"},
		{"{method: awq_lite, shrink_step: 0.1}", "{num_bits: 4, block_sizes: {-1: 128, "
		 "type: static}}", "shrink_step"},
		{"{method: awq_full}", "{num_bits: 4, block_sizes: {-1: 64, type: static}}",
		 "awq_full and awq_clip are implemented for INT4 (and W4A8) weights in blocks of 128 "
		 "and NVFP4"},
		{"{method: awq_clip, alpha_step: 0.1}", "{num_bits: 4, block_sizes: {-1: 128, type: "
		 "static}}", "alpha_step"},
	};
	for (size_t k = 0; k < CAL_ARRAY_LEN(bad); k++) {
		char nm[32];
		snprintf(nm, sizeof(nm), "bad%zu.yaml", k);
		char *r = awq_recipe(root, nm, bad[k].algo, bad[k].wcfg);
		char *d2 = path2(root, nm + 1);
		rc = run(NULL, errf, "quantize --model %s --recipe %s --calib-tokens %s --out %s "
			 "--device cpu", src, r, tok, d2);
		e = slurp(errf);
		cr_assert_eq(rc, 3, "%s: exit %d: %s", nm, rc, e);
		cr_assert(strstr(e, bad[k].needle), "%s: %s", nm, e);
		cr_assert(!cal_test_exists(d2));
	}
}

/* awq_full / awq_clip (docs/awq.md "awq_full", "awq_clip"): the report
 * names the clip options and, per searched linear, its clipped blocks
 * (NVFP4: its tensor; some clipped). */
static void awq_full_more(const char *root, const char *dst, const char *src, const char *tok)
{
	(void)root, (void)src, (void)tok;
	json_t *rep = json_loads(slurp(path2(dst, "calibd_report.json")), 0, NULL);
	json_t *aw = json_object_get(rep, "awq_full");
	aw = aw ? aw : json_object_get(rep, "awq_clip");
	json_t *lins = json_object_get(aw, "linears");
	cr_assert_eq(json_integer_value(json_object_get(json_object_get(aw, "clip"),
							"max_tokens_per_batch")), 64);
	json_int_t clipped = 0;
	size_t i;
	json_t *l;
	cr_assert(json_array_size(lins) > 0);
	json_array_foreach(lins, i, l) {
		cr_assert(json_is_integer(json_object_get(l, "clipped_blocks")), "linear %zu", i);
		clipped += json_integer_value(json_object_get(l, "clipped_blocks"));
	}
	cr_assert(clipped > 0);
	json_decref(rep);
}

/* int8_sq's report lists the smoothed linears with alpha 1.0; two ranks
 * are refused. */
static void int8_sq_more(const char *root, const char *dst, const char *src, const char *tok)
{
	char *errf = path2(root, "stderr");
	json_t *rep = json_loads(slurp(path2(dst, "calibd_report.json")), 0, NULL);
	cr_assert(rep);
	json_t *sq = json_object_get(rep, "smoothquant");
	cr_assert_float_eq(json_number_value(json_object_get(sq, "alpha")), 1.0, 1e-12);
	cr_assert(json_array_size(json_object_get(sq, "linears")) > 0);
	json_decref(rep);
	char *d2 = path2(root, "out2");
	int rc = run(NULL, errf, "quantize --model %s --qformat int8_sq --calib-tokens %s --out %s "
		     "--device cpu --ranks 2", src, tok, d2);
	char *e = expect_exit(rc, 3, errf);
	cr_assert(strstr(e, "algorithm smoothquant runs on one rank"), "%s", e);
	cr_assert(!cal_test_exists(d2));
}

/* nvfp4_awq's configs: group size 16 with a pre_quant_scale; config.json
 * has no config_groups (modelopt writes none for NVFP4_AWQ). */
static void nvfp4_awq_more(const char *root, const char *dst, const char *src, const char *tok)
{
	char *cfg = slurp(path2(dst, "hf_quant_config.json"));
	cr_assert(strstr(cfg, "\"group_size\": 16") && strstr(cfg, "\"pre_quant_scale\": true"),
		  "%s", cfg);
	char *cj = slurp(path2(dst, "config.json"));
	cr_assert(strstr(cj, "\"NVFP4_AWQ\"") && !strstr(cj, "config_groups"), "%s", cj);
}

/* Whether tensor `name` of checkpoint a has the bytes of b's (both present). */
static int same_tensor(struct cal_checkpoint *a, struct cal_checkpoint *b, const char *name)
{
	const struct cal_st_tensor *ta = cal_checkpoint_find(a, name);
	const struct cal_st_tensor *tb = cal_checkpoint_find(b, name);
	cr_assert(ta && tb, "%s is missing", name);
	return ta->nbytes == tb->nbytes && !memcmp(ta->data, tb->data, ta->nbytes);
}

/* MLA (docs/awq.md "MLA"): AWQ fuses the q_a / kv_a group's scale into
 * input_layernorm (q_proj / kv_a without q_lora_rank) and the dense MLP's
 * gate/up into post_attention_layernorm; q_a_layernorm and kv_a_layernorm
 * (read by q_b_proj / kv_b_proj alone, which keep a pre_quant_scale) and an
 * MoE layer's post_attention_layernorm (router and routed experts read it
 * too; the shared expert keeps its scale) keep the source's bytes.
 * SmoothQuant: the q_a / kv_a group shares one pre_quant_scale and input
 * amax, q_b_proj has its own. */
static void mla_more(const char *root, const char *dst, const char *src, const char *tok)
{
	(void)root, (void)tok;
	struct cal_error err = {0};
	struct cal_checkpoint *o = NULL, *s = NULL;
	cr_assert_eq(cal_checkpoint_open(dst, &o, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_checkpoint_open(src, &s, &err), CAL_OK, "%s", cal_error_msg(&err));
	int sq = cal_checkpoint_find(o, "model.layers.0.self_attn.kv_a_proj_with_mqa."
				     "pre_quant_scale") != NULL;
	int lora = cal_checkpoint_find(s, "model.layers.0.self_attn.q_a_proj.weight") != NULL;
	const char *q = lora ? "q_a_proj" : "q_proj";
	for (int L = 0; L < 3; L++) {
		char n[128];
		snprintf(n, sizeof n, "model.layers.%d.input_layernorm.weight", L);
		cr_assert(same_tensor(o, s, n) == sq, "%s: fused %d", n, !sq);
		snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm.weight", L);
		cr_assert(same_tensor(o, s, n) == (sq || L > 0), "%s", n);
		snprintf(n, sizeof n, "model.layers.%d.self_attn.kv_a_layernorm.weight", L);
		cr_assert(same_tensor(o, s, n), "%s", n);
		if (lora) {
			snprintf(n, sizeof n, "model.layers.%d.self_attn.q_a_layernorm.weight", L);
			cr_assert(same_tensor(o, s, n), "%s", n);
		}
		if (!sq)
			continue;
		static const char *const keys[] = {"pre_quant_scale", "input_scale"};
		for (int k = 0; k < 2; k++) {
			char a[128];
			snprintf(a, sizeof a, "model.layers.%d.self_attn.%s.%s", L, q, keys[k]);
			snprintf(n, sizeof n, "model.layers.%d.self_attn.kv_a_proj_with_mqa.%s", L,
				 keys[k]);
			const struct cal_st_tensor *ta = cal_checkpoint_find(o, a);
			const struct cal_st_tensor *tb = cal_checkpoint_find(o, n);
			cr_assert(ta && tb && ta->nbytes == tb->nbytes &&
				  !memcmp(ta->data, tb->data, ta->nbytes), "%s != %s", a, n);
		}
	}
	cal_checkpoint_free(o);
	cal_checkpoint_free(s);
}

static const struct qformat_case qformat_cases[] = {
	/* int4_awq (docs/awq.md) on a wide MoE fixture with a shared expert:
	 * o_proj and the shared expert carry a pre_quant_scale, q/k/v (fused
	 * into input_layernorm) do not */
	{"qwen2_moe", "wide", "int4_awq", "W4A16_AWQ",
	 "model.layers.0.self_attn.o_proj.pre_quant_scale "
	 "model.layers.1.mlp.shared_expert.gate_proj.pre_quant_scale "
	 "model.layers.1.mlp.shared_expert.down_proj.pre_quant_scale "
	 "!q_proj.pre_quant_scale !experts.0.down_proj.pre_quant_scale", int4_awq_more},
	/* hf_ptq's int8_sq (docs/smoothquant.md): every smoothed linear
	 * (attention, dense MLP, shared expert) exports INT8 codes,
	 * per-channel weight_scale, input_scale and pre_quant_scale; the
	 * routed experts are INT8 without one */
	{"qwen2_moe", "per-expert", "int8_sq", "W8A8_SQ_PER_CHANNEL",
	 "model.layers.0.self_attn.q_proj.pre_quant_scale model.layers.0.self_attn.o_proj."
	 "pre_quant_scale model.layers.1.mlp.shared_expert.gate_proj.pre_quant_scale "
	 "model.layers.1.mlp.shared_expert.down_proj.pre_quant_scale model.layers.1.mlp."
	 "experts.0.down_proj.input_scale !experts.0.down_proj.pre_quant_scale", int8_sq_more},
	/* nvfp4_awq (docs/awq.md) on a dense llama fixture (GQA): o_proj keeps
	 * its pre_quant_scale (GQA: not folded into v_proj), down_proj's is
	 * folded into up_proj's rows, q/k/v and gate/up fused into the norms;
	 * every linear has its input_scale */
	{"llama", "default", "nvfp4_awq", "NVFP4_AWQ",
	 "model.layers.0.self_attn.o_proj.pre_quant_scale model.layers.0.mlp.down_proj.input_scale "
	 "model.layers.0.self_attn.q_proj.input_scale !down_proj.pre_quant_scale "
	 "!q_proj.pre_quant_scale !up_proj.pre_quant_scale", nvfp4_awq_more},
	/* qwen3 without GQA: o_proj's scale folds into v_proj's rows too, so
	 * no linear keeps a pre_quant_scale */
	{"qwen3", "mha", "nvfp4_awq", "NVFP4_AWQ",
	 "model.layers.0.self_attn.o_proj.input_scale !pre_quant_scale", NULL},
	/* calibd's awq_full recipe (a built-in recipe: run with --recipe) */
	{"qwen2_moe", "wide", "general/ptq/int4_awq_full-kv_fp8_cast", "W4A16_AWQ",
	 "model.layers.0.self_attn.o_proj.pre_quant_scale", awq_full_more},
	/* awq_clip alone (docs/awq.md "awq_clip"): no pre_quant_scale anywhere */
	{"qwen2_moe", "wide", "general/ptq/int4_awq_clip-kv_fp8_cast", "W4A16_AWQ",
	 "model.layers.0.self_attn.o_proj.weight_scale !pre_quant_scale", awq_full_more},
	/* NVFP4 awq_full / awq_clip: the per-tensor clip; awq_clip alone exports
	 * plain NVFP4 */
	{"llama", "default", "general/ptq/nvfp4_awq_full-kv_fp8_cast", "NVFP4_AWQ",
	 "model.layers.0.self_attn.o_proj.pre_quant_scale model.layers.0.self_attn.q_proj.input_scale "
	 "!q_proj.pre_quant_scale", awq_full_more},
	{"llama", "default", "general/ptq/nvfp4_awq_clip-kv_fp8_cast", "NVFP4",
	 "model.layers.0.self_attn.q_proj.weight_scale_2 !pre_quant_scale", awq_full_more},
	/* w4a8_awq (docs/awq.md "w4a8_awq"): per searched linear the INT4
	 * weight, weight_scale_2 (the FP8 stage) and input_scale; the
	 * pre_quant_scale where int4_awq has one */
	{"qwen2_moe", "wide", "w4a8_awq", "W4A8_AWQ",
	 "model.layers.0.self_attn.o_proj.pre_quant_scale model.layers.0.self_attn.o_proj."
	 "weight_scale_2 model.layers.0.self_attn.q_proj.input_scale model.layers.1.mlp."
	 "shared_expert.down_proj.weight_scale_2 !q_proj.pre_quant_scale", NULL},
	/* DeepSeek-V3's MLA (docs/awq.md "MLA"): q_b_proj, kv_b_proj, o_proj
	 * and the shared expert keep a pre_quant_scale; q_a / kv_a (fused into
	 * input_layernorm; without q_lora_rank q_proj / kv_a) and the dense
	 * MLP's gate/up do not; int4_awq on the wide fixture, nvfp4 awq_full
	 * without q_lora_rank, nvfp4_awq on an FP8 block source (the
	 * dequantized weights folded), int8_sq (every linear keeps one) */
#define MLA_PQS "model.layers.0.self_attn.q_b_proj.pre_quant_scale " \
	"model.layers.1.self_attn.kv_b_proj.pre_quant_scale model.layers.2.self_attn.o_proj." \
	"pre_quant_scale model.layers.1.mlp.shared_experts.gate_proj.pre_quant_scale "
#define MLA_FUSED "!q_a_proj.pre_quant_scale !kv_a_proj_with_mqa.pre_quant_scale " \
	"!layers.0.mlp.gate_proj.pre_quant_scale !experts.0.gate_proj.pre_quant_scale"
	{"deepseek_v3", "default", "nvfp4_awq", "NVFP4_AWQ", MLA_PQS MLA_FUSED, mla_more},
	{"deepseek_v3", "wide", "int4_awq", "W4A16_AWQ", MLA_PQS MLA_FUSED, mla_more},
	{"deepseek_v3", "q-lora-null", "general/ptq/nvfp4_awq_full-kv_fp8_cast", "NVFP4_AWQ",
	 "model.layers.0.self_attn.kv_b_proj.pre_quant_scale !q_proj.pre_quant_scale", mla_more},
	{"deepseek_v3", "fp8-block16", "nvfp4_awq", "NVFP4_AWQ", MLA_PQS MLA_FUSED, mla_more},
	{"deepseek_v3", "default", "int8_sq", "W8A8_SQ_PER_CHANNEL",
	 MLA_PQS "model.layers.0.self_attn.q_a_proj.pre_quant_scale", mla_more},
#undef MLA_PQS
#undef MLA_FUSED
	/* an affine NVFP4 KV cache layered over --qformat nvfp4 */
	{"llama", "default", "nvfp4 --kv-cache-qformat nvfp4_affine", "NVFP4",
	 "model.layers.1.self_attn.k_proj.k_bias model.layers.0.self_attn.v_proj.v_bias",
	 kv_affine_more},
};

/* The parameters are indices into qformat_cases: the test runs in a new
 * process, where the cases' pointers would not hold. */
ParameterizedTestParameters(quantize, qformat_end_to_end)
{
	size_t n = CAL_ARRAY_LEN(qformat_cases), *idx = cr_malloc(n * sizeof(*idx));
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	return cr_make_param_array(size_t, idx, n);
}

ParameterizedTest(const size_t *i, quantize, qformat_end_to_end, .timeout = 120)
{
	const struct qformat_case *c = &qformat_cases[*i];
	char *root = tmpdir();
	char *src = make_model(root, c->arch, c->layout);
	char *tok = make_tokens(root, "tok.jsonl", 2, 16);
	char *dst = path2(root, "out"), *errf = path2(root, "stderr");
	/* qf: a --qformat name (and options), or a built-in recipe (general/...) */
	int rc = run(NULL, errf, "quantize --model %s --%s %s --calib-tokens %s --out %s "
		     "--device cpu", src, strchr(c->qf, '/') ? "recipe" : "qformat", c->qf, tok, dst);
	expect_exit(rc, 0, errf);
	rc = run(NULL, errf, "verify %s --source %s", dst, src);
	expect_exit(rc, 0, errf);
	char *cfg = slurp(path2(dst, "hf_quant_config.json")), *algo = NULL;
	cr_assert(asprintf(&algo, "\"quant_algo\": \"%s\"", c->quant_algo) > 0);
	cr_assert(strstr(cfg, track(algo)), "%s: %s lacks %s", c->qf, cfg, algo);
	const char *hdr = slurp(path2(dst, "model.safetensors")) + 8; /* after the length */
	char *names = strdup(c->tensors), *save = NULL;
	cr_assert(names);
	for (char *t = strtok_r(names, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
		int absent = *t == '!', found = strstr(hdr, t + absent) != NULL;
		cr_assert(found != absent, "%s %s: tensor '%s' %s", c->arch, c->qf, t + absent,
			  found ? "is present" : "is missing");
	}
	free(names);
	if (c->more)
		c->more(root, dst, src, tok);
	rm_rf(root);
}

/* --qformat: hf_ptq's name runs its built-in recipe; a refused one exits 3
 * naming the reason, before any work; with --recipe it is a usage error. */
Test(quantize, qformat_maps_or_refuses, .timeout = 60)
{
	char *root = tmpdir();
	char *src = make_model(root, "qwen3_moe", "per-expert");
	char *tok = make_tokens(root, "tok.jsonl", 2, 16);
	char *dst = path2(root, "out"), *errf = path2(root, "stderr"), *outf = path2(root, "stdout");
	int rc = run(outf, errf, "quantize --model %s --qformat nvfp4 --calib-tokens %s --out %s "
		     "--device cpu --json", src, tok, dst);
	char *e = slurp(errf), *o = slurp(outf);
	cr_assert_eq(rc, 0, "exit %d: %s", rc, e);
	cr_assert(strstr(o, "general/ptq/nvfp4_default-kv_fp8_cast"), "%s", o);
	char *dst2 = path2(root, "out2");
	rc = run(NULL, errf, "quantize --model %s --qformat nvfp4_svdquant --calib-tokens %s "
		 "--out %s --device cpu", src, tok, dst2);
	e = expect_exit(rc, 3, errf);
	cr_assert(strstr(e, "qformat 'nvfp4_svdquant' is refused: algorithm 'svdquant'"), "%s", e);
	cr_assert(!cal_test_exists(dst2));
	rc = run(NULL, errf, "quantize --model %s --qformat nvfp4 --recipe general/ptq/"
		 "fp8_default-kv_fp8 --calib-tokens %s --out %s", src, tok, dst2);
	e = expect_exit(rc, 2, errf);
	cr_assert(strstr(e, "exclude each other"), "%s", e);
	rm_rf(root);
}

Test(quantize, disk_full_exits_4_leaves_nothing, .timeout = 60)
{
	struct qdirs q = qdirs_make("olmoe", "per-expert");
	size_t before = cal_test_count_entries(q.root);
	setenv("CALIBD_TEST_FREE_BYTES", "4096", 1);
	int rc = run(NULL, q.errf, "quantize --model %s --recipe general/ptq/nvfp4_default-kv_fp8 "
		     "--calib %s --out %s --device cpu", q.src, q.data, q.dst);
	unsetenv("CALIBD_TEST_FREE_BYTES");
	char *e = expect_exit(rc, 4, q.errf);
	cr_assert(!cal_test_exists(q.dst));
	cr_assert_eq(cal_test_count_entries(q.root), before + 1 /* stderr */, "something was left behind");
	cr_assert(!strstr(e, "layer"), "calibration ran before the space check: %s", e);
	rm_rf(q.root);
}

Test(quantize, bad_input_and_usage)
{
	struct qdirs q = qdirs_make("qwen3_moe", "per-expert");
	const char *R = "general/ptq/fp8_default-kv_fp8";
	/* usage (2) */
	cr_assert_eq(run(NULL, NULL, "quantize --model %s --recipe %s --calib %s", q.src, R, q.data), 2);
	cr_assert_eq(run(NULL, NULL, "quantize --model %s --recipe %s --calib %s --calib-tokens %s "
			 "--out %s", q.src, R, q.data, q.data, q.dst), 2);
	cr_assert_eq(run(NULL, NULL, "quantize --model %s --recipe %s --calib %s --out %s "
			 "--samples 0", q.src, R, q.data, q.dst), 2);
	cr_assert_eq(run(NULL, NULL, "quantize --model %s --recipe %s --calib %s --out %s "
			 "--device tpu", q.src, R, q.data, q.dst), 2);
	/* bad input (3): model, recipe, data */
	cr_assert_eq(run(NULL, NULL, "quantize --model %s/nope --recipe %s --calib %s --out %s",
			 q.root, R, q.data, q.dst), 3);
	cr_assert_eq(run(NULL, NULL, "quantize --model %s --recipe no/such/recipe --calib %s "
			 "--out %s", q.src, q.data, q.dst), 3);
	cr_assert_eq(run(NULL, NULL, "quantize --model %s --recipe %s --calib %s/none.jsonl "
			 "--out %s", q.src, R, q.root, q.dst), 3);
	cr_assert(!cal_test_exists(q.dst));
	rm_rf(q.root);
}

/* ---- calibrate --calib, and export from its statistics ---------------------- */

Test(quantize, calibrate_datasets_then_export, .timeout = 60)
{
	struct qdirs q = qdirs_make("qwen3_moe", "fused");
	char *stats = path2(q.root, "stats.json");
	const char *R = "general/ptq/nvfp4_experts_only-kv_fp8_cast";
	int rc = run(NULL, q.errf, "calibrate --model %s --recipe %s --calib %s:6 --seq-len 32 "
		     "--seed 5 --stats-out %s --quiet", q.src, R, q.data, stats);
	expect_exit(rc, 0, q.errf);
	json_t *s = json_load_file(stats, 0, NULL);
	cr_assert(s);
	json_t *cal = json_object_get(s, "calibration");
	cr_assert_eq(json_integer_value(json_object_get(cal, "samples")), 6);
	cr_assert_eq(json_integer_value(json_object_get(cal, "seq_len")), 32);
	json_decref(s);
	/* a cast KV recipe leaves null amax in the file; the moe section feeds
	 * the report's token counts and the per-expert input amax */
	rc = run(NULL, q.errf, "export --model %s --recipe %s --stats %s --out %s "
		 "--per-expert-input-amax", q.src, R, stats, q.dst);
	expect_exit(rc, 0, q.errf);
	cr_assert_eq(run(NULL, NULL, "verify %s --source %s", q.dst, q.src), 0);
	json_t *r = json_load_file(path2(q.dst, "calibd_report.json"), 0, NULL);
	cr_assert(r);
	cal = json_object_get(r, "calibration");
	cr_assert_eq(json_integer_value(json_object_get(cal, "samples")), 6);
	size_t i;
	json_t *x;
	json_array_foreach(json_object_get(r, "experts"), i, x) {
		json_t *t = json_object_get(x, "tokens");
		cr_assert(json_is_array(t), "layer %zu: no token counts in the report", i);
		cr_assert_eq(json_array_size(t), 8);
	}
	/* every expert saw tokens or was reported as a fallback, never silently */
	size_t n_without = 0;
	json_array_foreach(json_object_get(r, "experts"), i, x)
		n_without += json_array_size(json_object_get(x, "experts_without_tokens"));
	cr_assert_eq(json_array_size(json_object_get(r, "fallbacks")), n_without);
	json_decref(r);
	/* calibrate refuses both sources at once */
	cr_assert_eq(run(NULL, NULL, "calibrate --model %s --recipe %s --calib %s --calib-tokens %s",
			 q.src, R, q.data, q.data), 2);
	rm_rf(q.root);
}
