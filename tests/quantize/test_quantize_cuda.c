/*
 * test_quantize_cuda.c — gpu suite: `calibd quantize --device cuda` (the
 * export pipeline on the CUDA back end: pinned staging and ring, quantize
 * and SQNR on the GPU, the writer thread) writes the same bytes as
 * `--device cpu` for every tensor that does not come from activations
 * (input_scale, k_scale, v_scale, k_bias, v_bias, and with GPTQ, AWQ or
 * SmoothQuant the linears the search changed and AWQ's fused norms:
 * counted and printed), one file and sharded, and `calibd eval` of both
 * exports gives a close KL; with GPTQ the report's linears (rows seen,
 * dead columns, fallbacks, damping) agree; with AWQ and SmoothQuant the
 * report's linears (and AWQ's rows seen) agree, the exports have the same
 * tensors (names, dtypes, shapes: the same linears keep a pre_quant_scale)
 * and the same unquantized tensors differ from the source (the fused
 * norms); the alphas may differ (printed).  `calibd eval --device cuda`
 * gives the CPU's KL on CPU-made exports with affine, rotated and NVFP4 KV
 * caches and with INT8 weights and inputs (SmoothQuant's pre_quant_scale).
 * The cases name the CUDA paths they cover.  A plain main (no
 * Criterion, no fork after CUDA); exits 77 (meson: SKIP) without a GPU.
 *
 * CALIBD_TEST_CUDA_AS_CPU=1 runs the quantize cases with `--device cpu`
 * standing in for cuda (and skips the eval-on-cuda cases): a check of the
 * test's own logic on a machine without a GPU, which says STAND-IN and
 * exits 77 when every case passed (never a pass of the GPU test).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "engine/st/safetensors.h"
#include "fixture.h"
#include "kernels/backend.h"

static int run(const char *fmt, const char *a, const char *b, const char *c, const char *d)
{
	char *args = NULL, *cmd = NULL;
	if (asprintf(&args, fmt, a, b, c, d) < 0 ||
	    asprintf(&cmd, "'%s' %s", getenv("CALIBD"), args) < 0)
		return -1;
	int ws = system(cmd);
	free(args);
	free(cmd);
	return WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
}

/* input_scale, k_scale, v_scale, k_bias, v_bias come from the
 * calibration's activations, whose CPU and CUDA forward passes are not
 * bit-identical through the layers; so do the tensors of the linears GPTQ
 * updated (lin: the report's gptq.linears, or NULL); everything else is the
 * exporter's and must match. */
static int from_activations(const char *name, const json_t *lin, int norms)
{
	static const char *const tails[] = {".input_scale", ".k_scale", ".v_scale", ".k_bias",
					    ".v_bias"};
	size_t l = strlen(name), i;
	json_t *o;
	for (i = 0; i < sizeof(tails) / sizeof(tails[0]); i++)
		if (l > strlen(tails[i]) && !strcmp(name + l - strlen(tails[i]), tails[i]))
			return 1;
	if (norms && l > 11 && !strcmp(name + l - 11, "norm.weight")) /* AWQ's fused norms */
		return 1;
	json_array_foreach(lin, i, o) {
		const char *m = json_string_value(json_object_get(o, "module"));
		if (m && !strncmp(name, m, strlen(m)) && name[strlen(m)] == '.')
			return 1;
	}
	return 0;
}

/* Every weight tensor of a equals b's, byte for byte (norms: AWQ's norms
 * excepted); returns the failures. */
static int same(const char *a_dir, const char *b_dir, const char *label, const json_t *lin,
		int norms)
{
	struct cal_error err = {0};
	struct cal_checkpoint *a = NULL, *b = NULL;
	int bad = 0;
	if (cal_checkpoint_open(a_dir, &a, &err) < 0 || cal_checkpoint_open(b_dir, &b, &err) < 0) {
		fprintf(stderr, "FAIL %s: %s\n", label, cal_error_msg(&err));
		cal_error_clear(&err);
		cal_checkpoint_free(a);
		return 1;
	}
	if (cal_checkpoint_count(a) != cal_checkpoint_count(b)) {
		fprintf(stderr, "FAIL %s: %zu vs %zu tensors\n", label, cal_checkpoint_count(a),
			cal_checkpoint_count(b));
		bad++;
	}
	size_t act = 0, act_diff = 0;
	for (size_t i = 0; i < cal_checkpoint_count(a); i++) {
		const struct cal_st_tensor *ta = cal_checkpoint_tensor(a, i);
		const struct cal_st_tensor *tb = cal_checkpoint_find(b, ta->name);
		int differs = !tb || tb->nbytes != ta->nbytes ||
			      memcmp(ta->data, tb->data, ta->nbytes);
		if (from_activations(ta->name, lin, norms)) {
			act++;
			act_diff += differs;
			continue;
		}
		if (differs && bad++ < 10)
			fprintf(stderr, "FAIL %s: %s differs between cpu and cuda\n", label, ta->name);
	}
	cal_checkpoint_free(a);
	cal_checkpoint_free(b);
	printf("%s: %s; tensors from activations: %zu of %zu differ (calibration, not export)\n",
	       label, bad ? "FAIL" : "every weight tensor has the same bytes on cpu and cuda",
	       act_diff, act);
	return bad != 0;
}

/* dir/name as JSON, or NULL. */
static json_t *load(const char *dir, const char *name)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return json_load_file(path, 0, NULL);
}

/* Field k of report entries x and y: present in either and not equal. */
static int field_differs(const json_t *x, const json_t *y, const char *k)
{
	const json_t *a = json_object_get(x, k), *b = json_object_get(y, k);
	return (a || b) && !json_equal(a, b);
}

/* Field k of x and y more than 5 % apart (absent from x: 0). */
static int field_far(const json_t *x, const json_t *y, const char *k)
{
	if (!json_object_get(x, k))
		return 0;
	double a = json_number_value(json_object_get(x, k));
	double b = json_number_value(json_object_get(y, k));
	return !(fabs(a - b) <= 0.05 * fabs(a));
}

/* The search's report (calibd_report.json <key>.linears; key "gptq",
 * "awq_lite" or "smoothquant") of the CUDA run against the CPU's: the same
 * linears and rows seen (where reported); GPTQ: the same dead columns and
 * fallbacks, the damping within 5 %; SmoothQuant: the input amax within
 * 5 % (both come from the activations); AWQ: the alphas differing are
 * counted, not failed.  *lin = the CPU's linears.  Returns the failures. */
static int same_linears(const char *a_dir, const char *b_dir, const char *label, const char *key,
			json_t **lin)
{
	json_t *a = load(a_dir, "calibd_report.json"), *b = load(b_dir, "calibd_report.json");
	json_t *la = json_object_get(json_object_get(a, key), "linears");
	json_t *lb = json_object_get(json_object_get(b, key), "linears");
	int bad = 0;
	size_t i, fb = 0, alpha = 0;
	*lin = NULL;
	if (!json_array_size(la) || json_array_size(la) != json_array_size(lb)) {
		fprintf(stderr, "FAIL %s: %s.linears: %zu on cpu, %zu on cuda\n", label, key,
			json_array_size(la), json_array_size(lb));
		json_decref(a);
		json_decref(b);
		return 1;
	}
	for (i = 0; i < json_array_size(la); i++) {
		json_t *x = json_array_get(la, i), *y = json_array_get(lb, i);
		const char *m = json_string_value(json_object_get(x, "module"));
		fb += json_is_true(json_object_get(y, "fallback"));
		alpha += field_differs(x, y, "alpha");
		if (!m || field_differs(x, y, "module") || field_differs(x, y, "n_samples") ||
		    field_differs(x, y, "dead_columns") || field_differs(x, y, "fallback") ||
		    field_far(x, y, "damp") || field_far(x, y, "input_amax")) {
			fprintf(stderr, "FAIL %s: %s linear %zu (%s) differs between cpu and cuda\n",
				label, key, i, m ? m : "?");
			bad++;
		}
	}
	printf("%s: %s: %zu linears, %zu fallbacks, %zu alphas differ on cuda: %s\n", label, key,
	       json_array_size(la), fb, alpha,
	       bad ? "FAIL" : "the report's linears agree with the cpu's");
	*lin = json_incref(la);
	json_decref(a);
	json_decref(b);
	return bad;
}

/* AWQ / SmoothQuant: the exports a and b have the same tensors (names,
 * dtypes, shapes), and the same of their tensors that the source src has
 * unquantized (same size) differ from it (the norms the search fused).
 * Returns the failures. */
static int same_layout(const char *src, const char *a_dir, const char *b_dir, const char *label)
{
	struct cal_error err = {0};
	struct cal_checkpoint *s = NULL, *a = NULL, *b = NULL;
	int bad = 0;
	size_t changed = 0;
	if (cal_checkpoint_open(src, &s, &err) < 0 || cal_checkpoint_open(a_dir, &a, &err) < 0 ||
	    cal_checkpoint_open(b_dir, &b, &err) < 0) {
		fprintf(stderr, "FAIL %s: %s\n", label, cal_error_msg(&err));
		cal_error_clear(&err);
		cal_checkpoint_free(s);
		cal_checkpoint_free(a);
		return 1;
	}
	bad += cal_checkpoint_count(a) != cal_checkpoint_count(b);
	for (size_t i = 0; i < cal_checkpoint_count(a); i++) {
		const struct cal_st_tensor *ta = cal_checkpoint_tensor(a, i);
		const struct cal_st_tensor *tb = cal_checkpoint_find(b, ta->name);
		const struct cal_st_tensor *ts = cal_checkpoint_find(s, ta->name);
		if (!tb || tb->dtype != ta->dtype || tb->ndim != ta->ndim ||
		    memcmp(tb->shape, ta->shape, (size_t)ta->ndim * sizeof(ta->shape[0]))) {
			if (bad++ < 10)
				fprintf(stderr, "FAIL %s: %s: not the same tensor on cpu and cuda\n",
					label, ta->name);
			continue;
		}
		if (!ts || ts->nbytes != ta->nbytes || ts->nbytes != tb->nbytes)
			continue;
		int ca = memcmp(ts->data, ta->data, ta->nbytes) != 0;
		changed += ca;
		if (ca != (memcmp(ts->data, tb->data, tb->nbytes) != 0) && bad++ < 10)
			fprintf(stderr, "FAIL %s: %s changed from the source on %s only\n", label,
				ta->name, ca ? "cpu" : "cuda");
	}
	cal_checkpoint_free(s);
	cal_checkpoint_free(a);
	cal_checkpoint_free(b);
	printf("%s: %s; %zu unquantized tensors changed from the source on both\n", label,
	       bad ? "FAIL" : "the same tensors on cpu and cuda", changed);
	return bad != 0;
}

/* calibd eval of export q against src on dev (held: the tokens): the KL
 * mean of its report, or -1 (printed). */
static double eval_kl(const char *src, const char *q, const char *dev, const char *held,
		      const char *root)
{
	char fmt[512], out[256];
	snprintf(out, sizeof(out), "%s/eval.json", root);
	remove(out);
	snprintf(fmt, sizeof(fmt), "eval --model %%s --quantized %%s --device %%s --data-tokens %%s "
		 "--out %s --quiet >/dev/null", out);
	int rc = run(fmt, src, q, dev, held);
	json_t *j = rc == 0 ? json_load_file(out, 0, NULL) : NULL;
	json_t *m = json_object_get(json_object_get(j, "kl"), "mean");
	double kl = json_is_number(m) ? json_number_value(m) : -1.0;
	if (kl < 0)
		fprintf(stderr, "FAIL calibd eval --device %s of %s: exit %d, KL mean %s\n", dev, q,
			rc, m ? "not a number" : "missing");
	json_decref(j);
	return kl;
}

/* The quantize cases: the CUDA export's tensors against the CPU's (same()),
 * and calibd eval on the CPU of both exports: KL within 25 % (with GPTQ,
 * AWQ or SmoothQuant, whose searched weights come from the activations, no
 * worse than 1.5 x). */
static const struct qcase {
	const char *arch, *layout, *recipe;
	int no_eval;        /* calibd eval refuses the export (an NVFP4 KV cache of head_dim 24) */
	const char *search; /* the report's key of a searched recipe (same_linears) */
} qcases[] = {
	{"qwen3_moe", "fused", "general/ptq/nvfp4_experts_only-kv_fp8", 0, NULL},
	{"qwen3_moe", "per-expert", "general/ptq/nvfp4_default-kv_fp8", 0, NULL},
	{"llama", NULL, "general/ptq/fp8_default-kv_fp8", 0, NULL},
	/* MLA's affine and rotated KV cache (kvcache.c with mla.c's per-head K / V) */
	{"deepseek_v3", NULL, "general/ptq/fp8_default-kv_fp8_affine", 0, NULL},
	{"deepseek_v3", NULL, "general/ptq/nvfp4_default-kv_nvfp4_rotate", 1, NULL},
	/* GPTQ: the Hessian and gptq_factor ops, factor_chunk / solve_layer */
	{"llama", NULL, "general/ptq/nvfp4_default-kv_none-gptq", 0, "gptq"},
	/* AWQ-lite (awq_site's row cache, the search, resmooth and norm fold)
	 * and SmoothQuant (per-channel amax, smooth_one, resmooth) on GQA, MLA,
	 * gated attention with Gated DeltaNet, and GPT-OSS (biases, sinks) */
	{"llama", NULL, "general/ptq/nvfp4_awq-kv_fp8_cast", 0, "awq_lite"},
	{"deepseek_v3", NULL, "general/ptq/nvfp4_awq-kv_fp8_cast", 0, "awq_lite"},
	{"qwen3_next", NULL, "general/ptq/nvfp4_awq-kv_fp8_cast", 0, "awq_lite"},
	{"gpt_oss", NULL, "general/ptq/nvfp4_awq-kv_fp8_cast", 0, "awq_lite"},
	{"llama", NULL, "general/ptq/int8_sq-kv_fp8_cast", 0, "smoothquant"},
	{"deepseek_v3", NULL, "general/ptq/int8_sq-kv_fp8_cast", 0, "smoothquant"},
	{"qwen3_next", NULL, "general/ptq/int8_sq-kv_fp8_cast", 0, "smoothquant"},
};

/* calibd eval on the CUDA back end against the CPU's for exports made on
 * the CPU: the affine KV bias (ewise ADD_ROW), MLA's bias, the NVFP4 KV
 * cache with and without the Hadamard rotation; INT8 weights (int8_dequant)
 * and inputs (int8_quant / int8_dequant with a static scale), the
 * pre_quant_scale (ewise MUL_ROW) and the Gated DeltaNet's unquantized
 * in_proj_ba before the quantizer. */
static const struct qcase ecases[] = {
	{"llama", NULL, "general/ptq/fp8_default-kv_fp8_affine", 0, NULL},
	{"llama", NULL, "general/ptq/nvfp4_default-kv_nvfp4_affine", 0, NULL},
	{"gpt_oss", NULL, "general/ptq/nvfp4_default-kv_nvfp4_rotate", 0, NULL},
	{"gpt_oss", NULL, "general/ptq/nvfp4_default-kv_nvfp4_cast", 0, NULL},
	{"deepseek_v3", NULL, "general/ptq/fp8_default-kv_fp8_affine", 0, NULL},
	{"llama", NULL, "general/ptq/int8_sq-kv_fp8_cast", 0, NULL},
	{"qwen3_next", NULL, "general/ptq/int8_sq-kv_fp8_cast", 0, NULL},
	{"qwen3_moe", "per-expert", "general/ptq/int8_default-kv_fp8_cast", 0, NULL},
	{"qwen3_moe", "per-expert", "general/ptq/int8_weight_only-kv_fp8_cast", 0, NULL},
};

/* 6 sequences of 40 token ids from `off` on. */
static int write_tokens(const char *path, int off)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	for (int i = 0; i < 6; i++) {
		fputs("{\"input_ids\": [", f);
		for (int j = 0; j < 40; j++)
			fprintf(f, "%s%d", j ? "," : "", (i * 37 + j * 11 + off) % 256);
		fputs("]}\n", f);
	}
	return fclose(f);
}

/* The fixture of case q in dir (seed 7). */
static int fixture(const struct qcase *q, const char *dir, const char *label)
{
	struct cal_error err = {0};
	struct cal_fixture_opts o = {.arch = q->arch, .seed = 7};
	if ((q->layout && cal_fixture_layout_parse(q->layout, &o.layout) < 0) ||
	    cal_fixture_write(&o, dir, &err) < 0) {
		fprintf(stderr, "FAIL %s: fixture: %s\n", label, cal_error_msg(&err));
		cal_error_clear(&err);
		return -1;
	}
	return 0;
}

/* Case k's label, fixture root/<tag>k, and its CPU export root/<tag>k.cpu. */
static int setup(const char *root, const char *tag, size_t k, const struct qcase *q,
		 const char *tok, char *src, char *cpu, char *label)
{
	snprintf(src, 256, "%s/%s%zu", root, tag, k);
	snprintf(cpu, 256, "%s/%s%zu.cpu", root, tag, k);
	snprintf(label, 128, "%s %s %s", q->arch, q->layout ? q->layout : "default", q->recipe);
	if (fixture(q, src, label) < 0)
		return -1;
	int rc = run("quantize --model %s --recipe %s --calib-tokens %s --out %s --device cpu "
		     "--quiet >/dev/null", src, q->recipe, tok, cpu);
	if (rc != 0)
		fprintf(stderr, "FAIL %s: calibd quantize --device cpu exited %d\n", label, rc);
	return rc != 0 ? -1 : 0;
}

int main(void)
{
	const char *dev = getenv("CALIBD_TEST_CUDA_AS_CPU") ? "cpu" : "cuda";
	if (!strcmp(dev, "cpu"))
		printf("STAND-IN: --device cpu in place of cuda (checks this test, not CUDA)\n");
	else if (!cal_backend_cuda_available()) {
		printf("SKIP: no CUDA device (or built without CUDA)\n");
		return 77;
	}
	char root[] = "/tmp/calibd-qcuda-XXXXXX", tok[256], held[256];
	if (!mkdtemp(root) || !getenv("CALIBD"))
		return 1;
	snprintf(tok, sizeof(tok), "%s/calib.jsonl", root);
	snprintf(held, sizeof(held), "%s/held.jsonl", root);
	if (write_tokens(tok, 0) < 0 || write_tokens(held, 101) < 0)
		return 1;
	int bad = 0;
	for (size_t k = 0; k < sizeof(qcases) / sizeof(qcases[0]); k++) {
		const struct qcase *q = &qcases[k];
		char src[256], cpu[256], gpu[256], label[128];
		if (setup(root, "m", k, q, tok, src, cpu, label) < 0) {
			bad++;
			continue;
		}
		snprintf(gpu, sizeof(gpu), "%s/m%zu.cuda", root, k);
		char fmt[256];
		snprintf(fmt, sizeof(fmt), "quantize --model %%s --recipe %%s --calib-tokens %%s "
			 "--out %%s --device %s --max-shard-size 50KB --quiet >/dev/null", dev);
		int rc = run(fmt, src, q->recipe, tok, gpu);
		if (rc != 0) {
			fprintf(stderr, "FAIL %s: calibd quantize --device %s exited %d\n", label, dev,
				rc);
			bad++;
			continue;
		}
		json_t *lin = NULL;
		int gptq = q->search && !strcmp(q->search, "gptq");
		if (q->search) {
			bad += same_linears(cpu, gpu, label, q->search, &lin);
			if (!lin)
				continue;
		}
		if (q->search && !gptq)
			bad += same_layout(src, cpu, gpu, label);
		bad += same(cpu, gpu, label, lin, q->search && !gptq);
		json_decref(lin);
		if (q->no_eval)
			continue;
		double a = eval_kl(src, cpu, "cpu", held, root), b = eval_kl(src, gpu, "cpu", held, root);
		int ok = a >= 0 && b >= 0 &&
			 (q->search ? b <= 1.5 * a + 1e-3 : fabs(b - a) <= 0.25 * a + 1e-3);
		printf("%s: calibd eval (cpu) KL mean %.4g of the cpu export, %.4g of the cuda "
		       "export: %s\n", label, a, b, ok ? "ok" : "FAIL");
		bad += !ok;
	}
	for (size_t k = 0; !strcmp(dev, "cuda") && k < sizeof(ecases) / sizeof(ecases[0]); k++) {
		char src[256], cpu[256], label[128];
		if (setup(root, "e", k, &ecases[k], tok, src, cpu, label) < 0) {
			bad++;
			continue;
		}
		double a = eval_kl(src, cpu, "cpu", held, root), b = eval_kl(src, cpu, "cuda", held, root);
		int ok = a >= 0 && b >= 0 && fabs(b - a) <= 0.25 * a + 1e-3;
		printf("%s: calibd eval KL mean %.4g on cpu, %.4g on cuda: %s\n", label, a, b,
		       ok ? "ok" : "FAIL");
		bad += !ok;
	}
	if (cal_rmtree(root, NULL) < 0)
		fprintf(stderr, "could not remove %s\n", root);
	return bad ? 1 : !strcmp(dev, "cpu") ? 77 : 0;
}
