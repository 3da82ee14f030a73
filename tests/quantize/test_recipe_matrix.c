/*
 * test_recipe_matrix.c — the recipe matrix (docs/recipes.md "The recipe
 * matrix"): every runnable `general/ptq` recipe × every fixture
 * architecture, on the CPU back end.  Each cell either quantizes (plan,
 * calibrate, export) and then passes `calibd verify` (cal_job_verify), or
 * is refused, before anything is written, with the reason the table below
 * gives for it.  A cell that quantizes where the table expects a refusal
 * fails too, so the table (and docs/recipes.md) must follow the engine.
 *
 * Two recipe trees: calibd's own (recipes/, $CALIBD_RECIPES_DIR), always
 * present; and modelopt's (modelopt_recipes/ of the nvidia-modelopt wheel,
 * $CALIBD_MODELOPT_RECIPES, set by meson from -Dmodelopt_recipes or the
 * shared fixtures folder next to the checkout).  modelopt's tree is never
 * copied into the repository: its test skips, saying so, when the tree is
 * absent, and names the recipes of modelopt 0.47 the tree lacks.
 *
 * An architecture the engine does not run yet (cal_job_check refuses it,
 * CAL_JOB_PART_ENGINE) is reported per cell and not counted as a failure:
 * that is the architecture's issue, not the recipe's.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/device.h"
#include "common/util.h"
#include "engine/job.h"
#include "engine/quantize.h"
#include "engine/recipe/recipe.h"
#include "qtest.h"

/* The 24 general/ptq recipes of modelopt 0.47 (commit a2fbac7). */
static const char *const modelopt_ptq[] = {
	"fp8_default-kv_fp8",
	"fp8_default-kv_fp8_cast",
	"int4_blockwise_weight_only",
	"mxfp4_mlp_weight_only",
	"nvfp4_act_headroom-kv_fp8_cast",
	"nvfp4_default-kv_fp8",
	"nvfp4_default-kv_fp8_cast",
	"nvfp4_default-kv_none-gptq",
	"nvfp4_default-kv_nvfp4_cast",
	"nvfp4_experts_only-kv_fp8",
	"nvfp4_experts_only-kv_fp8_cast",
	"nvfp4_experts_only-kv_fp8_layerwise",
	"nvfp4_experts_only-kv_fp8_layerwise_offload",
	"nvfp4_experts_only_input_scale1-kv_fp8_cast",
	"nvfp4_experts_only_mse-kv_fp8_cast",
	"nvfp4_mlp_only-kv_fp8",
	"nvfp4_mlp_only-kv_fp8_cast",
	"nvfp4_mlp_only-novit-kv_fp8",
	"nvfp4_mlp_only_mse-kv_fp8_cast",
	"nvfp4_mlp_weight_only",
	"nvfp4_omlp_only-kv_fp8",
	"nvfp4_omlp_only-kv_fp8_cast",
	"nvfp4_weight_only-kv_fp16",
	"nvfp4_weight_only-kv_fp8_cast",
};

/*
 * The refusals (docs/recipes.md lists each with its reason).  recipe: the
 * name under general/ptq/; arch: fixture architectures separated by
 * spaces, or NULL for every one; reason: a substring of the error.  Every cell not listed here must
 * quantize and verify.
 */
/* The fixtures with routed experts (expert intermediate size 48). */
#define MOE_ARCHS                                                                    \
	"qwen3_moe qwen2_moe mixtral olmoe qwen3_next qwen3_5_moe qwen3_5_moe_text " \
	"deepseek_v3 gpt_oss"

struct refusal {
	const char *recipe, *arch, *reason;
};

static const struct refusal refusals[] = {
	/* AWQ-lite runs on plain and gated GQA, MLA, Gated DeltaNet layers and
	 * GPT-OSS with dense or routed-expert MLPs (docs/awq.md): no refusal */
	/* numerics calibd does not implement yet */
	/* a block format on an input dimension that is not a multiple of the
	 * block: the fixtures' hidden size is 64 (INT4 block 128) and their
	 * expert intermediate size 48 (MXFP4 block 32) */
	{"int4_blockwise_weight_only", NULL, "is not a multiple of the INT4 block size 128"},
	{"int4_awq-kv_fp8_cast", NULL, "is not a multiple of the INT4 block size 128"},
	{"int4_awq_full-kv_fp8_cast", NULL, "is not a multiple of the INT4 block size 128"},
	{"int4_awq_clip-kv_fp8_cast", NULL, "is not a multiple of the INT4 block size 128"},
	{"w4a8_awq-kv_fp8_cast", NULL, "is not a multiple of the W4A8 AWQ (INT4 then FP8) block "
	 "size 128"},
	{"mxfp4_mlp_weight_only", MOE_ARCHS, "is not a multiple of the MXFP4 block size 32"},
	{"nvfp4_mlp_weight_only", MOE_ARCHS, "is not a multiple of the NVFP4 bs32 block size 32"},
	/* calibd's own MXFP8 recipe, same shape rule (deepseek_v3's q_b_proj
	 * has input 48 too) */
	{"mxfp8", MOE_ARCHS, "is not a multiple of the MXFP8 block size 32"},
	{"mxfp8-kv_fp8_cast", MOE_ARCHS, "is not a multiple of the MXFP8 block size 32"},
	/* calibd's INT8 recipes (hf_ptq's int8, int8_wo, int8_sq): GPT-OSS's
	 * fused BMM experts have no INT8 export (qfmt.def: bmm 0; modelopt's
	 * export fails on them too, docs/smoothquant.md "GPT-OSS"); SmoothQuant
	 * runs on plain and gated GQA, MLA, Gated DeltaNet layers and GPT-OSS,
	 * as AWQ */
	{"int8_default-kv_fp8_cast", "gpt_oss", "GPT-OSS experts in int8 are not exported"},
	{"int8_weight_only-kv_fp8_cast", "gpt_oss", "GPT-OSS experts in int8 are not exported"},
	{"int8_sq-kv_fp8_cast", "gpt_oss", "GPT-OSS experts in int8 are not exported"},
	/* calibd's recipes of hf_ptq's W4A8 qformats: block 32 weights, as
	 * nvfp4_mlp_weight_only / mxfp4_mlp_weight_only */
	{"w4a8_nvfp4_fp8-kv_fp8_cast", MOE_ARCHS,
	 "is not a multiple of the W4A8 NVFP4 bs32 / FP8 block size 32"},
	{"w4a8_mxfp4_fp8-kv_fp8_cast", MOE_ARCHS,
	 "is not a multiple of the W4A8 MXFP4 / FP8 block size 32"},
	/* FP8 2-D blocks on GPT-OSS's fused experts: not compared with
	 * modelopt, refused (kernels/qfmt.def) */
	{"fp8_2d_blockwise_weight_only-kv_fp8_cast", "gpt_oss",
	 "GPT-OSS experts in fp8_pb_wo are not exported"},
};

/* Whether `w` is one of the space-separated words of `list`. */
static int word_in(const char *w, const char *list)
{
	size_t n = strlen(w);
	for (const char *p = list; (p = strstr(p, w)); p += n)
		if ((p == list || p[-1] == ' ') && (p[n] == ' ' || !p[n]))
			return 1;
	return 0;
}

static const char *expected_refusal(const char *recipe, const char *arch, const char *layout)
{
	const char *base = strrchr(recipe, '/') ? strrchr(recipe, '/') + 1 : recipe;
	if (!strcmp(layout, "wide")) /* only the INT4 (and W4A8 AWQ) recipes run there, and
				      * must quantize; GPT-OSS's fused experts have no INT4
				      * export (nor in modelopt 0.47: docs/awq.md "GPT-OSS") */
		return strcmp(arch, "gpt_oss") ? NULL : "GPT-OSS experts in";
	for (size_t i = 0; i < CAL_ARRAY_LEN(refusals); i++)
		if (!strcmp(refusals[i].recipe, base) &&
		    (!refusals[i].arch || word_in(arch, refusals[i].arch)))
			return refusals[i].reason;
	return NULL;
}

/* Fixture layouts: every one an architecture offers beyond its default;
 * "wide": the default layout with every linear input a multiple of 128
 * (cal_fixture_opts.wide, every decoder), where only the INT4 (and W4A8
 * AWQ) recipes run (the narrow fixtures refuse them for the block size). */
static const char *const layouts[] = {"default", "per-expert", "mixtral", "fused", "wide"};

struct tally {
	unsigned ok, refused, arch_not_run, failed;
};

/* One cell: quantize `recipe` (tree `dir`) on `model` into `out`, then
 * verify; compares with the table. */
static void cell(const char *dir, const char *recipe, const char *arch, const char *layout,
		 const char *model, const char *tok, const char *out, struct tally *t)
{
	const char *want = expected_refusal(recipe, arch, layout);
	struct cal_job_opts o = {.model_dir = model, .recipe = recipe,
				 .recipe_opts = {.builtin_dir = dir, .no_filesystem = 1},
				 .tokens = tok, .devices = {.kind = CAL_DEVICE_CPU},
				 .cpu_threads = 2};
	struct cal_error err = {0};
	struct cal_job *j = NULL;
	enum cal_job_part part = CAL_JOB_PART_OPTIONS;
	enum cal_status st = cal_job_open(&o, CAL_JOB_OPEN_FOR(CAL_JOB_QUANTIZE), &j, &part, &err);
	if (st == CAL_OK) {
		struct cal_quantize_opts qo = {.out_dir = out};
		st = cal_quantize_run(j, &qo, NULL, NULL, NULL, &err);
		cal_job_close(j);
		if (st == CAL_OK) {
			struct cal_devices cpu = {.kind = CAL_DEVICE_CPU};
			st = cal_job_verify(out, NULL, &cpu, NULL, &err);
			if (st != CAL_OK) {
				printf("  FAIL %s × %s/%s: exported but verify fails: %s\n", recipe,
				       arch, layout, cal_error_msg(&err));
				t->failed++;
			} else if (want) {
				printf("  FAIL %s × %s/%s: quantizes, the table expects a refusal "
				       "(\"%s\"): update the table and docs/recipes.md\n",
				       recipe, arch, layout, want);
				t->failed++;
			} else {
				t->ok++;
			}
			cal_test_rm_rf(out);
			cal_error_clear(&err);
			return;
		}
	}
	const char *msg = cal_error_msg(&err);
	if (want && strstr(msg, want)) {
		t->refused++;
	} else if (st == CAL_ERR_UNSUPPORTED && part == CAL_JOB_PART_ENGINE) {
		t->arch_not_run++;
	} else {
		printf("  FAIL %s × %s/%s: %s (status %d): %s\n", recipe, arch, layout,
		       want ? "refused for another reason than the table's" : "refused", st, msg);
		t->failed++;
	}
	cr_assert(!cal_test_exists(out), "%s × %s: a refused job left %s", recipe, arch, out);
	cal_error_clear(&err);
}

/* The whole matrix of the recipes `names` (n) in tree `dir`. */
static void matrix(const char *dir, const char *const *names, size_t n)
{
	char *root = tmpdir();
	char *tok = make_tokens(root, "tok.jsonl", 2, 16);
	char *out = path2(root, "out");
	struct tally t = {0};
	for (size_t a = 0; a < cal_fixture_arch_count(); a++) {
		const char *arch = cal_fixture_arch_name(a);
		for (size_t l = 0; l < CAL_ARRAY_LEN(layouts); l++) {
			struct cal_fixture_opts fo = {.arch = arch, .seed = SEED};
			int wide = !strcmp(layouts[l], "wide");
			fo.wide = wide;
			if (l && !wide && cal_fixture_layout_parse(layouts[l], &fo.layout))
				continue;
			char *model = NULL;
			cr_assert(asprintf(&model, "%s/%s-%s", root, arch, layouts[l]) > 0);
			track(model);
			struct cal_error err = {0};
			enum cal_status st = cal_fixture_write(&fo, model, &err);
			cal_error_clear(&err);
			if (st == CAL_ERR_INVALID && l)
				continue; /* the architecture has no such layout */
			cr_assert_eq(st, CAL_OK, "fixture %s/%s", arch, layouts[l]);
			unsigned before = t.arch_not_run;
			for (size_t r = 0; r < n; r++)
				if (!wide || strstr(names[r], "int4") || strstr(names[r], "w4a8_awq"))
					cell(dir, names[r], arch, layouts[l], model, tok, out, &t);
			if (t.arch_not_run > before)
				printf("  %s/%s: %u cells not run (the engine does not run the "
				       "architecture yet)\n",
				       arch, layouts[l], t.arch_not_run - before);
		}
	}
	printf("%s: %u quantized and verified, %u refused as documented, %u not run "
	       "(architecture), %u failed\n",
	       dir, t.ok, t.refused, t.arch_not_run, t.failed);
	fflush(stdout);
	rm_rf(root);
	cr_assert_eq(t.failed, 0, "%u cells of the recipe matrix failed (see the output)",
		     t.failed);
	cr_assert(t.ok > 0);
}

/* The general/ptq recipes of the tree `dir` (sorted); *n of them. */
static char **ptq_names(const char *dir, size_t *n)
{
	struct cal_recipe_info *list = NULL;
	size_t m = 0;
	struct cal_error err = {0};
	cr_assert_eq(cal_recipe_list(dir, &list, &m, &err), CAL_OK, "%s", cal_error_msg(&err));
	char **names = calloc(m + 1, sizeof(*names));
	cr_assert(names);
	*n = 0;
	for (size_t i = 0; i < m; i++)
		if (!strncmp(list[i].name, "general/ptq/", 12))
			cr_assert(names[(*n)++] = strdup(list[i].name));
	cal_recipe_list_free(list, m);
	return names;
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

Test(recipe_matrix, builtin_tree, .timeout = 900)
{
	const char *dir = getenv("CALIBD_RECIPES_DIR");
	cr_assert(dir && *dir, "$CALIBD_RECIPES_DIR (calibd's recipes/) is not set");
	size_t n = 0;
	char **names = ptq_names(dir, &n);
	cr_assert(n >= 11, "%zu general/ptq recipes in %s", n, dir);
	matrix(dir, (const char *const *)names, n);
	free_names(names, n);
}

Test(recipe_matrix, modelopt_tree, .timeout = 600)
{
	const char *dir = getenv("CALIBD_MODELOPT_RECIPES");
	struct stat sb;
	char *ptq = NULL;
	cr_assert(asprintf(&ptq, "%s/general/ptq", dir ? dir : "") > 0);
	int have = dir && *dir && stat(ptq, &sb) == 0;
	free(ptq);
	if (!have) {
		printf("SKIP: modelopt's recipe tree not found ($CALIBD_MODELOPT_RECIPES='%s'; "
		       "configure with -Dmodelopt_recipes=.../site-packages/modelopt_recipes)\n",
		       dir ? dir : "");
		fflush(stdout);
		cr_skip_test("modelopt's recipe tree not found");
		return;
	}
	size_t n = 0;
	char **names = ptq_names(dir, &n);
	/* every name of the table must be a real recipe, and every modelopt
	 * 0.47 recipe is either here or reported missing */
	unsigned missing = 0;
	for (size_t i = 0; i < CAL_ARRAY_LEN(modelopt_ptq); i++) {
		size_t k = 0;
		while (k < n && strcmp(names[k] + 12, modelopt_ptq[i]))
			k++;
		if (k == n) {
			printf("  not in %s: general/ptq/%s\n", dir, modelopt_ptq[i]);
			missing++;
		}
	}
	if (missing)
		printf("PARTIAL: %u of modelopt 0.47's %zu general/ptq recipes are absent from "
		       "%s; the matrix runs the %zu present\n",
		       missing, CAL_ARRAY_LEN(modelopt_ptq), dir, n);
	for (size_t i = 0; i < CAL_ARRAY_LEN(refusals); i++) {
		size_t k = 0;
		while (k < CAL_ARRAY_LEN(modelopt_ptq) && strcmp(modelopt_ptq[k], refusals[i].recipe))
			k++;
		/* calibd's own recipes: mxfp8*, int4_awq-kv_fp8_cast, nvfp4_awq-kv_fp8_cast
		 * (hf_ptq's int4_awq, nvfp4_awq), *_awq_full-kv_fp8_cast (awq_full),
		 * *_awq_clip-kv_fp8_cast (awq_clip),
		 * w4a8_awq-kv_fp8_cast (hf_ptq's w4a8_awq), int8* (hf_ptq's int8, int8_wo, int8_sq),
		 * w4a8_* and fp8_2d_* (hf_ptq's W4A8 and fp8_pb_wo) */
		if (k == CAL_ARRAY_LEN(modelopt_ptq) && strncmp(refusals[i].recipe, "mxfp8", 5) &&
		    strncmp(refusals[i].recipe, "int8", 4) &&
		    strcmp(refusals[i].recipe, "int4_awq-kv_fp8_cast") &&
		    strcmp(refusals[i].recipe, "int4_awq_full-kv_fp8_cast") &&
		    !strstr(refusals[i].recipe, "_awq_full-") && !strstr(refusals[i].recipe, "_awq_clip-") &&
		    strcmp(refusals[i].recipe, "w4a8_awq-kv_fp8_cast") &&
		    strcmp(refusals[i].recipe, "nvfp4_awq-kv_fp8_cast") &&
		    strncmp(refusals[i].recipe, "w4a8_", 5) &&
		    strncmp(refusals[i].recipe, "fp8_2d_", 7))
			cr_assert_fail("refusal for unknown recipe %s", refusals[i].recipe);
	}
	matrix(dir, (const char *const *)names, n);
	free_names(names, n);
}
