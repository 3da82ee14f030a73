/*
 * test_quantize_cuda.c — gpu suite: `calibd quantize --device cuda` (the
 * export pipeline on the CUDA back end: pinned staging and ring, quantize
 * and SQNR on the GPU, the writer thread) writes the same bytes as
 * `--device cpu` for every tensor that does not come from activations
 * (input_scale, k_scale, v_scale: counted and printed), one file and
 * sharded.  A plain main (no
 * Criterion, no fork after CUDA); exits 77 (meson: SKIP) without a GPU.
 */
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

/* input_scale, k_scale, v_scale come from the calibration's activations,
 * whose CPU and CUDA forward passes are not bit-identical through the
 * layers; everything else is the exporter's and must match. */
static int from_activations(const char *name)
{
	size_t l = strlen(name);
	return (l > 12 && !strcmp(name + l - 12, ".input_scale")) ||
	       (l > 8 && (!strcmp(name + l - 8, ".k_scale") || !strcmp(name + l - 8, ".v_scale")));
}

/* Every weight tensor of a equals b's, byte for byte; returns the failures. */
static int same(const char *a_dir, const char *b_dir, const char *label)
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
		if (from_activations(ta->name)) {
			act++;
			act_diff += differs;
			continue;
		}
		if (differs && bad++ < 10)
			fprintf(stderr, "FAIL %s: %s differs between cpu and cuda\n", label, ta->name);
	}
	cal_checkpoint_free(a);
	cal_checkpoint_free(b);
	printf("%s: %s; scales from activations: %zu of %zu differ (calibration, not export)\n",
	       label, bad ? "FAIL" : "every weight tensor has the same bytes on cpu and cuda",
	       act_diff, act);
	return bad != 0;
}

int main(void)
{
	if (!cal_backend_cuda_available()) {
		printf("SKIP: no CUDA device (or built without CUDA)\n");
		return 77;
	}
	char root[] = "/tmp/calibd-qcuda-XXXXXX";
	if (!mkdtemp(root) || !getenv("CALIBD"))
		return 1;
	static const struct {
		const char *arch, *layout, *recipe;
	} cases[] = {
		{"qwen3_moe", "fused", "general/ptq/nvfp4_experts_only-kv_fp8"},
		{"qwen3_moe", "per-expert", "general/ptq/nvfp4_default-kv_fp8"},
		{"llama", NULL, "general/ptq/fp8_default-kv_fp8"},
	};
	int bad = 0;
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		char src[256], tok[256], cpu[256], gpu[256], label[128];
		struct cal_error err = {0};
		struct cal_fixture_opts o = {.arch = cases[k].arch, .seed = 7};
		snprintf(src, sizeof(src), "%s/m%zu", root, k);
		snprintf(tok, sizeof(tok), "%s/t%zu.jsonl", root, k);
		snprintf(cpu, sizeof(cpu), "%s/cpu%zu", root, k);
		snprintf(gpu, sizeof(gpu), "%s/gpu%zu", root, k);
		snprintf(label, sizeof(label), "%s %s %s", cases[k].arch,
			 cases[k].layout ? cases[k].layout : "default", cases[k].recipe);
		if ((cases[k].layout && cal_fixture_layout_parse(cases[k].layout, &o.layout) < 0) ||
		    cal_fixture_write(&o, src, &err) < 0) {
			fprintf(stderr, "FAIL %s: fixture: %s\n", label, cal_error_msg(&err));
			cal_error_clear(&err);
			bad++;
			continue;
		}
		FILE *f = fopen(tok, "w");
		if (!f)
			return 1;
		for (int i = 0; i < 6; i++) {
			fputs("{\"input_ids\": [", f);
			for (int j = 0; j < 40; j++)
				fprintf(f, "%s%d", j ? "," : "", (i * 37 + j * 11) % 256);
			fputs("]}\n", f);
		}
		fclose(f);
		const char *fmt = "quantize --model %s --recipe %s --calib-tokens %s --out %s "
				  "--device cpu --quiet >/dev/null";
		int rc_cpu = run(fmt, src, cases[k].recipe, tok, cpu);
		int rc = run("quantize --model %s --recipe %s --calib-tokens %s --out %s --device cuda "
			     "--max-shard-size 50KB --quiet >/dev/null", src, cases[k].recipe, tok, gpu);
		if (rc_cpu != 0 || rc != 0) {
			fprintf(stderr, "FAIL %s: calibd quantize exited %d (cpu) / %d (cuda)\n", label,
				rc_cpu, rc);
			bad++;
			continue;
		}
		bad += same(cpu, gpu, label);
	}
	if (cal_rmtree(root, NULL) < 0)
		fprintf(stderr, "could not remove %s\n", root);
	return bad ? 1 : 0;
}
