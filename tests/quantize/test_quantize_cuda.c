/*
 * test_quantize_cuda.c — gpu suite: `calibd quantize --device cuda` (the
 * export pipeline on the CUDA back end: pinned staging and ring, quantize
 * and SQNR on the GPU, the writer thread) writes the same bytes as
 * `--device cpu` for every tensor that does not come from activations
 * (input_scale, k_scale, v_scale, k_bias, v_bias, and with GPTQ the updated
 * linears: counted and printed), one file and sharded, and `calibd eval`
 * of both exports gives a close KL; with GPTQ the report's linears (rows
 * seen, dead columns, fallbacks, damping) agree.  `calibd eval --device
 * cuda` gives the CPU's KL on CPU-made exports with affine, rotated and
 * NVFP4 KV caches.  The cases name the CUDA paths they cover.  A plain main
 * (no Criterion, no fork after CUDA); exits 77 (meson: SKIP) without a GPU.
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
static int from_activations(const char *name, const json_t *lin)
{
	static const char *const tails[] = {".input_scale", ".k_scale", ".v_scale", ".k_bias",
					    ".v_bias"};
	size_t l = strlen(name), i;
	json_t *o;
	for (i = 0; i < sizeof(tails) / sizeof(tails[0]); i++)
		if (l > strlen(tails[i]) && !strcmp(name + l - strlen(tails[i]), tails[i]))
			return 1;
	json_array_foreach(lin, i, o) {
		const char *m = json_string_value(json_object_get(o, "module"));
		if (m && !strncmp(name, m, strlen(m)) && name[strlen(m)] == '.')
			return 1;
	}
	return 0;
}

/* Every weight tensor of a equals b's, byte for byte; returns the failures. */
static int same(const char *a_dir, const char *b_dir, const char *label, const json_t *lin)
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
		if (from_activations(ta->name, lin)) {
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

/* GPTQ's report (calibd_report.json gptq.linears) of the CUDA run against
 * the CPU's: the same linears, rows seen, dead columns and fallbacks, the
 * damping within 5 % (it comes from the activations); *lin = the CPU's
 * linears.  Returns the failures. */
static int same_gptq(const char *a_dir, const char *b_dir, const char *label, json_t **lin)
{
	json_t *a = load(a_dir, "calibd_report.json"), *b = load(b_dir, "calibd_report.json");
	json_t *la = json_object_get(json_object_get(a, "gptq"), "linears");
	json_t *lb = json_object_get(json_object_get(b, "gptq"), "linears");
	int bad = 0;
	size_t i, fb = 0;
	*lin = NULL;
	if (!json_array_size(la) || json_array_size(la) != json_array_size(lb)) {
		fprintf(stderr, "FAIL %s: gptq.linears: %zu on cpu, %zu on cuda\n", label,
			json_array_size(la), json_array_size(lb));
		json_decref(a);
		json_decref(b);
		return 1;
	}
	for (i = 0; i < json_array_size(la); i++) {
		json_t *x = json_array_get(la, i), *y = json_array_get(lb, i);
		const char *m = json_string_value(json_object_get(x, "module"));
		double da = json_number_value(json_object_get(x, "damp")),
		       db = json_number_value(json_object_get(y, "damp"));
		fb += json_is_true(json_object_get(y, "fallback"));
		if (!m || !json_equal(json_object_get(x, "module"), json_object_get(y, "module")) ||
		    !json_equal(json_object_get(x, "n_samples"), json_object_get(y, "n_samples")) ||
		    !json_equal(json_object_get(x, "dead_columns"), json_object_get(y, "dead_columns")) ||
		    !json_equal(json_object_get(x, "fallback"), json_object_get(y, "fallback")) ||
		    !(fabs(da - db) <= 0.05 * fabs(da))) {
			fprintf(stderr, "FAIL %s: gptq linear %zu (%s) differs between cpu and cuda "
				"(damp %g / %g)\n", label, i, m ? m : "?", da, db);
			bad++;
		}
	}
	printf("%s: gptq: %zu linears, %zu fallbacks on cuda: %s\n", label, json_array_size(la), fb,
	       bad ? "FAIL" : "the report's linears agree with the cpu's");
	*lin = json_incref(la);
	json_decref(a);
	json_decref(b);
	return bad;
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
 * whose updated weights come from the activations, no worse than 1.5 x). */
static const struct qcase {
	const char *arch, *layout, *recipe;
	int no_eval; /* calibd eval refuses the export (an NVFP4 KV cache of head_dim 24) */
} qcases[] = {
	{"qwen3_moe", "fused", "general/ptq/nvfp4_experts_only-kv_fp8", 0},
	{"qwen3_moe", "per-expert", "general/ptq/nvfp4_default-kv_fp8", 0},
	{"llama", NULL, "general/ptq/fp8_default-kv_fp8", 0},
	/* MLA's affine and rotated KV cache (kvcache.c with mla.c's per-head K / V) */
	{"deepseek_v3", NULL, "general/ptq/fp8_default-kv_fp8_affine", 0},
	{"deepseek_v3", NULL, "general/ptq/nvfp4_default-kv_nvfp4_rotate", 1},
	/* GPTQ: the Hessian and gptq_factor ops, factor_chunk / solve_layer */
	{"llama", NULL, "general/ptq/nvfp4_default-kv_none-gptq", 0},
};

/* calibd eval on the CUDA back end against the CPU's for exports made on
 * the CPU: the affine KV bias (ewise ADD_ROW), MLA's bias, the NVFP4 KV
 * cache with and without the Hadamard rotation. */
static const struct qcase ecases[] = {
	{"llama", NULL, "general/ptq/fp8_default-kv_fp8_affine", 0},
	{"llama", NULL, "general/ptq/nvfp4_default-kv_nvfp4_affine", 0},
	{"gpt_oss", NULL, "general/ptq/nvfp4_default-kv_nvfp4_rotate", 0},
	{"gpt_oss", NULL, "general/ptq/nvfp4_default-kv_nvfp4_cast", 0},
	{"deepseek_v3", NULL, "general/ptq/fp8_default-kv_fp8_affine", 0},
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
	if (!cal_backend_cuda_available()) {
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
		int rc = run("quantize --model %s --recipe %s --calib-tokens %s --out %s --device cuda "
			     "--max-shard-size 50KB --quiet >/dev/null", src, q->recipe, tok, gpu);
		if (rc != 0) {
			fprintf(stderr, "FAIL %s: calibd quantize --device cuda exited %d\n", label, rc);
			bad++;
			continue;
		}
		json_t *lin = NULL;
		int gptq = strstr(q->recipe, "gptq") != NULL;
		if (gptq) {
			bad += same_gptq(cpu, gpu, label, &lin);
			if (!lin)
				continue;
		}
		bad += same(cpu, gpu, label, lin);
		json_decref(lin);
		if (q->no_eval)
			continue;
		double a = eval_kl(src, cpu, "cpu", held, root), b = eval_kl(src, gpu, "cpu", held, root);
		int ok = a >= 0 && b >= 0 &&
			 (gptq ? b <= 1.5 * a + 1e-3 : fabs(b - a) <= 0.25 * a + 1e-3);
		printf("%s: calibd eval (cpu) KL mean %.4g of the cpu export, %.4g of the cuda "
		       "export: %s\n", label, a, b, ok ? "ok" : "FAIL");
		bad += !ok;
	}
	for (size_t k = 0; k < sizeof(ecases) / sizeof(ecases[0]); k++) {
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
	return bad ? 1 : 0;
}
