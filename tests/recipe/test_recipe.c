/*
 * test_recipe.c — recipe loading, imports, validation errors, fnmatch, and
 * the plan (enumeration + matching) for small model descriptions.
 *
 * modelopt's own recipes are read from the shared fixtures folder (path
 * from meson, CAL_MODELOPT_RECIPES); those tests skip when it is absent.
 * calibd's tree is CAL_TEST_RECIPES_DIR.  Nothing here is random.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/recipe/ytree.h"
#include "engine/model/model.h"
#include "engine/recipe/plan.h"
#include "engine/recipe/qformat.h"
#include "engine/recipe/recipe.h"

static int have_modelopt(void)
{
	struct stat sb;
	return stat(CAL_MODELOPT_RECIPES "/general/ptq", &sb) == 0;
}

static struct cal_recipe *load_ok(const char *dir, const char *name)
{
	struct cal_recipe_opts o = {.builtin_dir = dir, .no_filesystem = 1};
	struct cal_recipe *r = NULL;
	struct cal_error err = {0};
	enum cal_status st = cal_recipe_load(name, &o, &r, &err);
	cr_assert(st == CAL_OK, "%s: %s", name, cal_error_msg(&err));
	cal_error_clear(&err);
	return r;
}

/* Parses inline YAML as a recipe with options o; returns status and the
 * message. */
static enum cal_status parse_opts(const struct cal_recipe_opts *o, const char *yaml, char **msg,
				  struct cal_recipe **ret)
{
	struct cal_recipe *r = NULL;
	struct cal_error err = {0};
	enum cal_status st = cal_recipe_parse("t.yaml", yaml, strlen(yaml), o, &r, &err);
	*msg = strdup(cal_error_msg(&err));
	cal_error_clear(&err);
	if (ret)
		*ret = r;
	else
		cal_recipe_free(r);
	return st;
}

/* Same in the daemon's mode: the source recipe tree, no filesystem. */
static enum cal_status parse_msg(const char *yaml, char **msg, struct cal_recipe **ret)
{
	struct cal_recipe_opts o = {.builtin_dir = CAL_TEST_RECIPES_DIR, .no_filesystem = 1};
	return parse_opts(&o, yaml, msg, ret);
}

static void expect_error(const char *yaml, enum cal_status want, const char *needle)
{
	char *msg = NULL;
	enum cal_status st = parse_msg(yaml, &msg, NULL);
	cr_assert(st == want, "status %s, want %s (%s)", cal_status_str(st), cal_status_str(want),
		  msg);
	cr_assert(strstr(msg, needle), "message '%s' lacks '%s'", msg, needle);
	free(msg);
}

/* ---- fnmatch ------------------------------------------------------------ */

Test(fnmatch, python_semantics)
{
	cr_assert(cal_fnmatch("*", "a.b.c"));
	cr_assert(cal_fnmatch("*.experts.*weight_quantizer",
			      "model.layers.3.mlp.experts.gate_up_proj_weight_quantizer"));
	cr_assert(!cal_fnmatch("*.experts.*weight_quantizer",
			       "model.layers.3.mlp.experts.gate_up_proj_weight_quantizers.7"));
	cr_assert(cal_fnmatch("*[kv]_bmm_quantizer", "model.layers.0.self_attn.k_bmm_quantizer"));
	cr_assert(!cal_fnmatch("*[kv]_bmm_quantizer", "model.layers.0.self_attn.q_bmm_quantizer"));
	cr_assert(cal_fnmatch("*[!q]_bmm*", "x.v_bmm_quantizer"));
	cr_assert(!cal_fnmatch("*[!q]_bmm*", "x.q_bmm_quantizer"));
	cr_assert(cal_fnmatch("a?c", "a.c"));
	cr_assert(cal_fnmatch("a[", "a["));             /* unclosed: literal */
	cr_assert(cal_fnmatch("[a-c]x", "bx"));
	cr_assert(!cal_fnmatch("[c-a]x", "bx"));       /* reversed range: empty */
	cr_assert(cal_fnmatch("[^a]", "^"));           /* '^' is not a negation */
	cr_assert(!cal_fnmatch("A*", "a"));            /* case-sensitive */
	cr_assert(cal_fnmatch("a\\b", "a\\b"));        /* no escapes */
	cr_assert(cal_fnmatch("mtp.*", "mtp.layers.0.x"));
	cr_assert(!cal_fnmatch("mtp.*", "model.mtp.x"));
	cr_assert(cal_fnmatch("*mlp.gate.*", "model.layers.0.mlp.gate.weight_quantizer"));
	cr_assert(!cal_fnmatch("*mlp.gate.*", "model.layers.0.mlp.gate_proj.weight_quantizer"));
}

/* ---- golden entry lists (docs/recipes.md "The experts-only recipe") --- */

#define NVFP4 "{num_bits: (2, 1), block_sizes: {-1: 16, type: 'dynamic', scale_bits: (4, 3)}, effective_bits: 4.5}"
#define FP8 "{num_bits: (4, 3), axis: null}"

static const char *const default_disabled[] = {
	"'*block_sparse_moe.gate*' enable=false", "'*linear_attn.conv1d*' enable=false",
	"'*linear_attn.in_proj_a*' enable=false", "'*linear_attn.in_proj_b*' enable=false",
	"'*lm_head*' enable=false", "'*mixer.conv1d*' enable=false",
	"'*mlp.gate.*' enable=false", "'*mlp.shared_expert_gate.*' enable=false",
	"'*output_layer*' enable=false", "'*proj_out.*' enable=false",
	"'*router*' enable=false", "'mtp.*' enable=false", "'output.*' enable=false",
	"'*embed_vision*' enable=false", "'*vision_tower*' enable=false",
	"'*visual*' enable=false", "'*vision_model*' enable=false",
	"'*multi_modal_projector*' enable=false",
	"'*' parent_class=nn.BatchNorm1d enable=false",
	"'*' parent_class=nn.BatchNorm2d enable=false",
	"'*' parent_class=nn.BatchNorm3d enable=false",
	"'*' parent_class=nn.LeakyReLU enable=false",
	"'*' parent_class=nn.Embedding enable=false",
};

static void check_entries(const struct cal_recipe *r, const char *const *head, size_t nh)
{
	size_t nd = CAL_ARRAY_LEN(default_disabled);
	cr_assert_eq(r->n_entries, nh + nd, "%s: %zu entries, want %zu", r->source, r->n_entries,
		     nh + nd);
	for (size_t i = 0; i < r->n_entries; i++) {
		const char *want = i < nh ? head[i] : default_disabled[i - nh];
		cr_assert_str_eq(r->entries[i].text, want, "%s entry %zu", r->source, i);
	}
}

static const char *const experts_only_head[] = {
	"'*' enable=false",
	"'*.experts.*weight_quantizer' cfg=" NVFP4 " enable=true",
	"'*.experts.*input_quantizer' cfg=" NVFP4 " enable=true",
	"'*block_sparse_moe*weight_quantizer' cfg=" NVFP4 " enable=true",
	"'*block_sparse_moe*input_quantizer' cfg=" NVFP4 " enable=true",
	"'*[kv]_bmm_quantizer' cfg=" FP8 " enable=true",
};
static const char *const nvfp4_default_head[] = {
	"'*' enable=false",
	"'*weight_quantizer' cfg=" NVFP4 " enable=true",
	"'*input_quantizer' cfg=" NVFP4 " enable=true",
	"'*[kv]_bmm_quantizer' cfg=" FP8 " enable=true",
};
static const char *const fp8_default_head[] = {
	"'*' enable=false",
	"'*weight_quantizer' cfg=" FP8 " enable=true",
	"'*input_quantizer' cfg=" FP8 " enable=true",
	"'*[kv]_bmm_quantizer' cfg=" FP8 " enable=true",
};

static void golden_in(const char *dir)
{
	struct cal_recipe *r = load_ok(dir, "general/ptq/nvfp4_experts_only-kv_fp8");
	check_entries(r, experts_only_head, CAL_ARRAY_LEN(experts_only_head));
	cr_assert_eq(r->algo.method, CAL_CALIB_MAX);
	cr_assert_eq(r->algo.layerwise, 0);
	cr_assert_str_eq(r->recipe_type, "ptq");
	cal_recipe_free(r);
	r = load_ok(dir, "general/ptq/nvfp4_default-kv_fp8");
	check_entries(r, nvfp4_default_head, CAL_ARRAY_LEN(nvfp4_default_head));
	cal_recipe_free(r);
	r = load_ok(dir, "general/ptq/fp8_default-kv_fp8.yaml");
	check_entries(r, fp8_default_head, CAL_ARRAY_LEN(fp8_default_head));
	cal_recipe_free(r);
}

Test(recipe, modelopt_fixture_golden)
{
	if (!have_modelopt()) {
		cr_skip_test("modelopt recipes not found at %s", CAL_MODELOPT_RECIPES);
		return;
	}
	golden_in(CAL_MODELOPT_RECIPES);
	struct cal_recipe *r = load_ok(CAL_MODELOPT_RECIPES, "general/ptq/nvfp4_experts_only-kv_fp8_layerwise");
	check_entries(r, experts_only_head, CAL_ARRAY_LEN(experts_only_head));
	cr_assert_eq(r->algo.layerwise, 1);
	cal_recipe_free(r);
}

/* Every modelopt general/ptq recipe loads unchanged. */
Test(recipe, modelopt_fixture_all_load)
{
	if (!have_modelopt()) {
		cr_skip_test("modelopt recipes not found");
		return;
	}
	struct cal_recipe_info *list = NULL;
	size_t n = 0;
	struct cal_error err = {0};
	cr_assert_eq(cal_recipe_list(CAL_MODELOPT_RECIPES, &list, &n, &err), CAL_OK);
	cr_assert(n >= 4);
	for (size_t i = 0; i < n; i++) {
		cr_assert(strncmp(list[i].description, "(error", 6), "%s: %s", list[i].name,
			  list[i].description);
		cal_recipe_free(load_ok(CAL_MODELOPT_RECIPES, list[i].name));
	}
	cal_recipe_list_free(list, n);
}

/* calibd's own tree resolves the shared recipes to the same entry lists. */
Test(recipe, builtin_golden)
{
	golden_in(CAL_TEST_RECIPES_DIR);
}

Test(recipe, builtin_all_load)
{
	static const char *const want[] = {
		"general/ptq/nvfp4_default-kv_fp8", "general/ptq/nvfp4_experts_only-kv_fp8",
		"general/ptq/nvfp4_experts_only-kv_fp8_cast", "general/ptq/nvfp4_mlp_only-kv_fp8",
		"general/ptq/nvfp4_omlp_only-kv_fp8", "general/ptq/nvfp4_weight_only-kv_fp16",
		"general/ptq/fp8_default-kv_fp8", "general/ptq/fp8_default-kv_fp8_cast",
		"general/ptq/mxfp8", "general/ptq/int4_blockwise_weight_only",
		"general/ptq/nvfp4_experts_only_mse-kv_fp8_cast",
	};
	struct cal_recipe_info *list = NULL;
	size_t n = 0;
	struct cal_error err = {0};
	cr_assert_eq(cal_recipe_list(CAL_TEST_RECIPES_DIR, &list, &n, &err), CAL_OK);
	for (size_t i = 0; i < CAL_ARRAY_LEN(want); i++) {
		size_t j = 0;
		while (j < n && strcmp(list[j].name, want[i]))
			j++;
		cr_assert(j < n, "%s missing", want[i]);
		cr_assert(*list[j].description && list[j].description[0] != '(', "%s: %s", want[i],
			  list[j].description);
	}
	cal_recipe_list_free(list, n);
	struct cal_recipe *r = load_ok(CAL_TEST_RECIPES_DIR, "general/ptq/mxfp8");
	cr_assert_eq(r->algo.method, CAL_CALIB_NONE);
	cal_recipe_free(r);
	r = load_ok(CAL_TEST_RECIPES_DIR, "general/ptq/nvfp4_experts_only_mse-kv_fp8_cast");
	cr_assert_eq(r->algo.method, CAL_CALIB_MSE);
	cr_assert_eq(r->algo.fp8_scale_sweep, 1);
	cal_recipe_free(r);
}

/* ---- loader behaviours and errors --------------------------------------- */

Test(recipe, inline_override_and_imports)
{
	char *msg = NULL;
	struct cal_recipe *r = NULL;
	const char *y =
		"imports:\n"
		"  fp8: configs/numerics/fp8\n"
		"  kv: configs/ptq/units/kv_fp8_cast\n"
		"metadata: {recipe_type: ptq, description: d}\n"
		"quantize:\n"
		"  algorithm: {method: max, moe_calib_experts_ratio: 0.5,\n"
		"              sync_expert_weight_amax: true}\n"
		"  quant_cfg:\n"
		"    - quantizer_name: '*weight_quantizer'\n"
		"      cfg: {$import: fp8, num_bits: e2m1, use_constant_amax: true}\n"
		"    - $import: kv\n"
		"    - quantizer_name: '*x'\n"
		"      cfg: {num_bits: 4, block_sizes: {-1: 128, type: static}}\n"
		"      enable: false\n";
	cr_assert_eq(parse_msg(y, &msg, &r), CAL_OK, "%s", msg);
	free(msg);
	cr_assert_eq(r->n_entries, 3);
	cr_assert_str_eq(r->entries[0].text, "'*weight_quantizer' cfg={num_bits: (2, 1), axis: null, "
			 "use_constant_amax: true} enable=true");
	cr_assert_str_eq(r->entries[1].text, "'*[kv]_bmm_quantizer' cfg={num_bits: (4, 3), axis: null, "
			 "use_constant_amax: true} enable=true");
	cr_assert_eq(r->entries[2].cfg[0].enable, 0);
	cr_assert_eq(r->entries[2].cfg[0].block_size[0], 128);
	cr_assert_eq(r->algo.has_moe_calib_experts_ratio, 1);
	cr_assert_eq(r->algo.sync_expert_weight_amax, 1);
	cal_recipe_free(r);
}

Test(recipe, errors_point_at_file_line_col)
{
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n    - quantizer_name: '*'\n"
		     "      enabel: false\n",
		     CAL_ERR_FORMAT, "t.yaml:5:7: quantize.quant_cfg[0].enabel: unknown key");
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n    - quantizer_name: '*'\n",
		     CAL_ERR_FORMAT, "t.yaml:4:7: quantize.quant_cfg[0]: an entry needs 'cfg' or 'enable'");
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n"
		     "    - {quantizer_name: '*', cfg: {num_bits: e9m9}}\n",
		     CAL_ERR_FORMAT, "quantize.quant_cfg[0].cfg.num_bits: (9, 9) is not");
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n"
		     "    - {quantizer_name: '*', cfg: {}}\n",
		     CAL_ERR_FORMAT, "an empty cfg needs 'enable: false'");
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n"
		     "    - {quantizer_name: '*', enable: 'no'}\n",
		     CAL_ERR_FORMAT, "t.yaml:4:37: quantize.quant_cfg[0].enable: expected true or false");
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n"
		     "    - {quantizer_name: '*', cfg: {axis: 0, block_sizes: {-1: 16}}}\n",
		     CAL_ERR_FORMAT, "axis and block_sizes cannot both be set");
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg: [\n", CAL_ERR_FORMAT,
		     "t.yaml:4:1:");
	expect_error("metadata: {recipe_type: ptq}\nquantize: {quant_cfg: [], algorithm: {method: max, foo: 1}}\n",
		     CAL_ERR_FORMAT, "quantize.algorithm.foo: unknown key");
	expect_error("metadata: {recipe_type: speculative_eagle}\n", CAL_ERR_UNSUPPORTED,
		     "ptq only");
	expect_error("metadata: {recipe_type: ptq}\n", CAL_ERR_FORMAT, "needs a top-level 'quantize'");
	expect_error("quantize: {}\n", CAL_ERR_FORMAT, "metadata.recipe_type is missing");
	expect_error("metadata: {recipe_type: ptq}\nmetadata: {recipe_type: ptq}\n", CAL_ERR_FORMAT,
		     "duplicate key");
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n    - $import: nope\n",
		     CAL_ERR_FORMAT, "'nope' is not declared under imports");
	expect_error("imports: {x: configs/does/not/exist}\nmetadata: {recipe_type: ptq}\nquantize: {}\n",
		     CAL_ERR_NOTFOUND, "import 'configs/does/not/exist' not found");
	expect_error("imports: {n: configs/numerics/nvfp4}\nmetadata: {recipe_type: ptq}\n"
		     "quantize:\n  quant_cfg:\n    - $import: n\n",
		     CAL_ERR_FORMAT, "cannot be spliced into or appended to a list of QuantizerCfgEntry");
	expect_error("x: !!python/object foo\n", CAL_ERR_FORMAT, "t.yaml:1:4: YAML tags");
	/* a non-string key after a string one (fuzz_recipe found a leak here) */
	expect_error("metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n"
		     "    - {quantizer_name: '*', .NAN: 1}\n",
		     CAL_ERR_FORMAT, "quantize.quant_cfg[0]: keys must be strings");
	expect_error("metadata: {recipe_type: ptq}\nquantize: {quant_cfg: [], algorithm: "
		     "{method: max, layerwise: {enable: true, 1: 2}}}\n",
		     CAL_ERR_FORMAT, "layerwise: keys must be strings");
	expect_error("metadata: {recipe_type: ptq}\nquantize: {quant_cfg: [], algorithm: "
		     "{method: max, distributed_sync: true, 1: 2}}\n",
		     CAL_ERR_FORMAT, "quantize.algorithm: keys must be strings");
}

Test(recipe, limits_and_billion_laughs)
{
	const char *laughs =
		"a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
		"b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
		"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
		"f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
		"h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	expect_error(laughs, CAL_ERR_FORMAT, "t.yaml:1:4: YAML anchors");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	cr_assert(ms < 10, "billion laughs took %.2f ms", ms);
	expect_error("a: *x\n", CAL_ERR_FORMAT, "YAML aliases");
	/* nesting 65 deep */
	char deep[200];
	size_t k = 0;
	for (int i = 0; i < 65; i++)
		deep[k++] = '[';
	for (int i = 0; i < 65; i++)
		deep[k++] = ']';
	deep[k] = 0;
	expect_error(deep, CAL_ERR_RANGE, "nesting deeper than 64");
	/* > 1 MiB */
	size_t big = (1u << 20) + 10;
	char *s = malloc(big + 1);
	memset(s, '#', big);
	s[big] = 0;
	expect_error(s, CAL_ERR_RANGE, "exceeds the recipe limit");
	free(s);
}

/* A recipe of one flow mapping of n keys; returns the best of three parse
 * times in seconds (the parse fails on the unknown key a0). */
/* Key comparisons made while reading (and refusing) a flow mapping of
 * nkeys keys. */
static unsigned long count_key_compares(size_t nkeys)
{
	size_t cap = nkeys * 16 + 64, k = 0;
	char *y = malloc(cap);
	cr_assert(y);
	k += (size_t)snprintf(y + k, cap - k, "{");
	for (size_t i = 0; i < nkeys; i++)
		k += (size_t)snprintf(y + k, cap - k, "%sa%zu: b", i ? ", " : "", i);
	snprintf(y + k, cap - k, "}");
	unsigned long before = cal_ykeys_compares;
	expect_error(y, CAL_ERR_FORMAT, "a0: unknown key");
	free(y);
	return cal_ykeys_compares - before;
}

/* Cost is linear in the input: mapping keys are looked up through a hash
 * index, both when a file is read (duplicate keys) and when its tree is
 * resolved (map_set).  When each key was compared with every earlier one,
 * 8 times the keys cost about 40 times the time (20,000 keys: 1.2 s),
 * and 64 times the comparisons. */
Test(recipe, many_keys_cost_linear)
{
	/* counted, not timed (a loaded machine is no clock): 8 times the keys
	 * must cost about 8 times the comparisons, not 64 */
	unsigned long small = count_key_compares(2500), large = count_key_compares(20000);
	cr_assert(small > 0 && large < 12 * small, "2,500 keys: %lu comparisons, 20,000 keys: %lu (x%.1f for 8x the keys)",
		  small, large, (double)large / (double)small);
	char *y = malloc(4096);
	cr_assert(y);
	size_t cap = 4096, k;
	/* duplicates are still found past the small-map scan (16 keys) */
	k = 0;
	for (size_t i = 0; i < 100; i++)
		k += (size_t)snprintf(y + k, cap - k, "k%zu: 1\n", i);
	snprintf(y + k, cap - k, "k50: 2\n");
	expect_error(y, CAL_ERR_FORMAT, "t.yaml:101:1: key 'k50': duplicate key (first at line 51)");
	expect_error("{1: a, 2: b, 3: c, 4: d, 5: e, 6: f, 7: g, 8: h, 9: i, 10: j, 11: k, 12: l, 13: m, 14: n,"
		     " 15: o, 16: p, 17: q, 0x11: r}", CAL_ERR_FORMAT, "duplicate key");
	free(y);
}

Test(recipe, import_cycle_and_name_resolution)
{
	char dir[] = "/tmp/cal_recipe_test_XXXXXX";
	cr_assert(mkdtemp(dir));
	char *a = cal_path_join(dir, "a.yaml"), *b = cal_path_join(dir, "b.yaml");
	FILE *f = fopen(a, "w");
	fprintf(f, "# modelopt-schema: modelopt.torch.quantization.config.QuantizerCfgListConfig\n"
		   "imports: {b: %s/b}\n---\n- $import: b\n", dir);
	fclose(f);
	f = fopen(b, "w");
	fprintf(f, "# modelopt-schema: modelopt.torch.quantization.config.QuantizerCfgListConfig\n"
		   "imports: {a: %s/a}\n---\n- $import: a\n", dir);
	fclose(f);
	char *y = NULL, *msg = NULL;
	cr_assert(asprintf(&y, "imports: {a: %s/a}\nmetadata: {recipe_type: ptq}\n"
			       "quantize: {quant_cfg: [{$import: a}]}\n", dir) > 0);
	/* absolute imports: filesystem mode only */
	struct cal_recipe_opts fso = {.builtin_dir = CAL_TEST_RECIPES_DIR};
	cr_assert_eq(parse_opts(&fso, y, &msg, NULL), CAL_ERR_FORMAT, "%s", msg);
	cr_assert(strstr(msg, "import cycle"), "%s", msg);
	free(msg);
	free(y);
	/* a filesystem recipe is found when not built-in; built-in wins otherwise */
	char *r = cal_path_join(dir, "r.yaml");
	f = fopen(r, "w");
	fprintf(f, "metadata: {recipe_type: ptq, description: mine}\nquantize: {quant_cfg: []}\n");
	fclose(f);
	struct cal_recipe_opts o = {.builtin_dir = CAL_TEST_RECIPES_DIR};
	struct cal_recipe *rec = NULL;
	struct cal_error err = {0};
	char *noext = NULL;
	cr_assert(asprintf(&noext, "%s/r", dir) > 0);
	cr_assert_eq(cal_recipe_load(noext, &o, &rec, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_str_eq(rec->description, "mine");
	cal_recipe_free(rec);
	cr_assert_eq(cal_recipe_load("general/ptq/nope", &o, &rec, &err), CAL_ERR_NOTFOUND);
	cr_assert(strstr(cal_error_msg(&err), "not found"));
	cal_error_clear(&err);
	unlink(a);
	unlink(b);
	unlink(r);
	rmdir(dir);
	free(a);
	free(b);
	free(r);
	free(noext);
}

/* Writes text to dir/rel (parents must exist). */
static void put(const char *dir, const char *rel, const char *text)
{
	char *p = cal_path_join(dir, rel);
	FILE *f = fopen(p, "w");
	cr_assert(f, "%s", p);
	fputs(text, f);
	fclose(f);
	free(p);
}

/* Expects inline `yaml` (no_filesystem, tree `tree`) to fail with status
 * want and a message holding every needle (NULL-terminated). */
static void expect_refused(const char *tree, const char *yaml, enum cal_status want, ...)
{
	struct cal_recipe_opts o = {.builtin_dir = tree, .no_filesystem = 1};
	char *msg = NULL;
	enum cal_status st = parse_opts(&o, yaml, &msg, NULL);
	cr_assert_eq(st, want, "status %s, want %s (%s)\n%s", cal_status_str(st),
		     cal_status_str(want), msg, yaml);
	va_list ap;
	va_start(ap, want);
	for (const char *n; (n = va_arg(ap, const char *));)
		cr_assert(strstr(msg, n), "message '%s' lacks '%s'", msg, n);
	va_end(ap);
	free(msg);
}

static const char snippet[] =
	"# modelopt-schema: modelopt.torch.quantization.config.QuantizerCfgListConfig\n"
	"- {quantizer_name: '*', enable: false}\n";

Test(recipe, no_filesystem_confines_to_tree)
{
	char top[] = "/tmp/cal_recipe_tree_XXXXXX";
	cr_assert(mkdtemp(top));
	char *tree = cal_path_join(top, "tree"), *cfgs = cal_path_join(tree, "configs"),
	     *gen = cal_path_join(tree, "general");
	cr_assert(mkdir(tree, 0755) == 0 && mkdir(cfgs, 0755) == 0 && mkdir(gen, 0755) == 0);
	put(top, "outside.yaml", snippet);
	put(top, "outside_recipe.yaml", "metadata: {recipe_type: ptq}\nquantize: {quant_cfg: []}\n");
	put(cfgs, "ok.yaml", snippet);
	put(cfgs, "nested.yaml",
	    "# modelopt-schema: modelopt.torch.quantization.config.QuantizerCfgListConfig\n"
	    "imports: {o: ../../outside}\n---\n- $import: o\n");
	put(gen, "r.yaml", "imports: {ok: configs/ok}\nmetadata: {recipe_type: ptq}\n"
			   "quantize: {quant_cfg: [{$import: ok}]}\n");
	/* symlinks inside the tree: a file and a directory leading out of it */
	char *evil = cal_path_join(cfgs, "evil.yaml"), *lnk = cal_path_join(tree, "lnk"),
	     *evil_r = cal_path_join(gen, "evil.yaml"), *inner = cal_path_join(cfgs, "inner.yaml");
	cr_assert(symlink("../../outside.yaml", evil) == 0);
	cr_assert(symlink(top, lnk) == 0);
	cr_assert(symlink("../../outside_recipe.yaml", evil_r) == 0);
	cr_assert(symlink("ok.yaml", inner) == 0); /* stays inside: fine */

	const char *body = "metadata: {recipe_type: ptq}\nquantize: {quant_cfg: [{$import: x}]}\n";
	char *y = NULL;
	/* absolute import */
	cr_assert(asprintf(&y, "imports: {x: %s/outside}\n%s", top, body) > 0);
	expect_refused(tree, y, CAL_ERR_INVALID, "t.yaml:1:14: ", "import '", "/outside'",
		       "absolute path", NULL);
	free(y);
	/* imports refused, and what the message says (n2 may be NULL) */
	static const struct {
		const char *imports, *n1, *n2;
	} refused[] = {
		/* ".." out of the tree, directly or after descending */
		{"imports: {x: ../outside}\n", "t.yaml:1:14: import '../outside'",
		 "leaves the recipe tree"},
		{"imports:\n  x: configs/../../outside.yaml\n",
		 "t.yaml:2:6: import 'configs/../../outside.yaml'", NULL},
		/* a symlinked file, a path through a symlinked directory */
		{"imports: {x: configs/evil}\n", "t.yaml:1:14: import 'configs/evil'",
		 "configs/evil.yaml leads outside the recipe tree"},
		{"imports: {x: lnk/outside}\n", "t.yaml:1:14: import 'lnk/outside'",
		 "outside the recipe tree"},
		/* an import inside an imported file points at that file */
		{"imports: {x: configs/nested}\n", "t.yaml:1:14: imports.x: ",
		 "configs/nested.yaml:2:14: import '../../outside'"},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(refused); i++) {
		cr_assert(asprintf(&y, "%s%s", refused[i].imports, body) > 0);
		expect_refused(tree, y, CAL_ERR_INVALID, refused[i].n1, refused[i].n2, NULL);
		free(y);
	}
	/* inside the tree: plain, with a ".." that stays inside, via an inner link */
	const char *fine[] = {"configs/ok", "configs/../configs/ok.yaml", "./configs/inner"};
	struct cal_recipe_opts o = {.builtin_dir = tree, .no_filesystem = 1};
	for (size_t i = 0; i < CAL_ARRAY_LEN(fine); i++) {
		char *msg = NULL;
		struct cal_recipe *r = NULL;
		cr_assert(asprintf(&y, "imports: {x: %s}\n%s", fine[i], body) > 0);
		cr_assert_eq(parse_opts(&o, y, &msg, &r), CAL_OK, "%s: %s", fine[i], msg);
		cr_assert_eq(r->n_entries, 1);
		cal_recipe_free(r);
		free(msg);
		free(y);
	}
	/* recipe names */
	struct cal_recipe *r = NULL;
	struct cal_error err = {0};
	char *abs = cal_path_join(top, "outside_recipe.yaml");
	cr_assert_eq(cal_recipe_load(abs, &o, &r, &err), CAL_ERR_INVALID, "%s", cal_error_msg(&err));
	cr_assert(strstr(cal_error_msg(&err), "absolute path"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_assert_eq(cal_recipe_load("../outside_recipe", &o, &r, &err), CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "leaves the recipe tree"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_assert_eq(cal_recipe_load("general/evil", &o, &r, &err), CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "general/evil.yaml: leads outside the recipe tree"),
		  "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cr_assert_eq(cal_recipe_load("general/r", &o, &r, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_recipe_free(r);
	/* the filesystem mode still takes absolute paths */
	struct cal_recipe_opts fso = {.builtin_dir = tree};
	cr_assert_eq(cal_recipe_load(abs, &fso, &r, &err), CAL_OK, "%s", cal_error_msg(&err));
	cal_recipe_free(r);
	/* the listing shows the escaping recipe as an error, the others load */
	struct cal_recipe_info *list = NULL;
	size_t n = 0;
	cr_assert_eq(cal_recipe_list(tree, &list, &n, &err), CAL_OK);
	cr_assert_eq(n, 2);
	cr_assert_str_eq(list[0].name, "general/evil");
	cr_assert(strstr(list[0].description, "outside the recipe tree"), "%s", list[0].description);
	cr_assert_str_eq(list[1].name, "general/r");
	cal_recipe_list_free(list, n);

	const char *rm[] = {evil, lnk, evil_r, inner};
	for (size_t i = 0; i < CAL_ARRAY_LEN(rm); i++)
		unlink(rm[i]);
	char *files[] = {cal_path_join(cfgs, "ok.yaml"), cal_path_join(cfgs, "nested.yaml"),
			 cal_path_join(gen, "r.yaml"), cal_path_join(top, "outside.yaml"),
			 cal_path_join(top, "outside_recipe.yaml")};
	for (size_t i = 0; i < CAL_ARRAY_LEN(files); i++) {
		unlink(files[i]);
		free(files[i]);
	}
	rmdir(cfgs);
	rmdir(gen);
	rmdir(tree);
	rmdir(top);
	free(evil);
	free(lnk);
	free(evil_r);
	free(inner);
	free(abs);
	free(cfgs);
	free(gen);
	free(tree);
}

/* ---- plans -------------------------------------------------------------- */

static struct cal_model_desc *model(const char *json)
{
	struct cal_model_desc *d = NULL;
	struct cal_error err = {0};
	cr_assert_eq(cal_model_desc_parse("config.json", json, strlen(json), &d, &err), CAL_OK,
		     "%s", cal_error_msg(&err));
	return d;
}

static const char qwen3_moe[] =
	"{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"model_type\":\"qwen3_moe\","
	"\"hidden_size\":64,\"intermediate_size\":128,\"moe_intermediate_size\":32,"
	"\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
	"\"head_dim\":16,\"num_experts\":4,\"num_experts_per_tok\":2,\"vocab_size\":256,"
	"\"mlp_only_layers\":[0]}";
static const char mixtral[] =
	"{\"model_type\":\"mixtral\",\"hidden_size\":64,\"intermediate_size\":32,"
	"\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
	"\"num_local_experts\":4,\"num_experts_per_tok\":2,\"vocab_size\":256}";
static const char deepseek[] =
	"{\"model_type\":\"deepseek_v3\",\"hidden_size\":64,\"intermediate_size\":128,"
	"\"moe_intermediate_size\":32,\"num_hidden_layers\":3,\"num_attention_heads\":4,"
	"\"num_key_value_heads\":4,\"n_routed_experts\":4,\"num_experts_per_tok\":2,"
	"\"n_shared_experts\":1,\"first_k_dense_replace\":1,\"q_lora_rank\":32,"
	"\"kv_lora_rank\":32,\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":16,\"v_head_dim\":16,"
	"\"n_group\":1,\"topk_group\":1,\"vocab_size\":256}";
static const char qwen3_next[] =
	"{\"model_type\":\"qwen3_next\",\"hidden_size\":64,\"intermediate_size\":128,"
	"\"moe_intermediate_size\":32,\"shared_expert_intermediate_size\":32,"
	"\"num_hidden_layers\":4,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
	"\"head_dim\":16,\"num_experts\":4,\"num_experts_per_tok\":2,\"vocab_size\":256,"
	"\"linear_num_key_heads\":2,\"linear_num_value_heads\":4,\"linear_key_head_dim\":16,"
	"\"linear_value_head_dim\":16,\"linear_conv_kernel_dim\":4,\"full_attention_interval\":4}";

static struct cal_plan *plan_of(struct cal_model_desc *d, struct cal_recipe *r)
{
	struct cal_plan *p = NULL;
	struct cal_error err = {0};
	enum cal_status st = cal_plan_build(d, r, &p, &err);
	cr_assert_eq(st, CAL_OK, "%s", cal_error_msg(&err));
	return p;
}

/* A model, a recipe of CAL_TEST_RECIPES_DIR, and its plan for the model. */
struct planned {
	struct cal_model_desc *d;
	struct cal_recipe *r;
	struct cal_plan *p;
};

/* Replaces x's recipe and plan with those of recipe, for x's model. */
static struct cal_plan *plan_again(struct planned *x, const char *recipe)
{
	cal_plan_free(x->p);
	cal_recipe_free(x->r);
	x->r = load_ok(CAL_TEST_RECIPES_DIR, recipe);
	x->p = plan_of(x->d, x->r);
	return x->p;
}

/* The plan of recipe for the model of config cfg (x zeroed before). */
static struct cal_plan *plan_open(struct planned *x, const char *cfg, const char *recipe)
{
	x->d = model(cfg);
	return plan_again(x, recipe);
}

static void planned_free(struct planned *x)
{
	cal_plan_free(x->p);
	cal_recipe_free(x->r);
	cal_model_desc_free(x->d);
}

/* The quantizer name of p; asserts that p has it and that it is enabled
 * (or not). */
static const struct cal_plan_q *quantizer(const struct cal_plan *p, const char *name, int enabled)
{
	const struct cal_plan_q *q = cal_plan_find(p, name);
	cr_assert(q, "no quantizer %s", name);
	cr_assert_eq(q->spec.enabled, enabled, "%s: enabled %d", name, q->spec.enabled);
	return q;
}

/* Asserts that p's text summary contains needle. */
static void expect_plan_text(const struct cal_plan *p, const char *needle)
{
	char *t = cal_plan_text(p, "x");
	cr_assert(strstr(t, needle), "%s", t);
	free(t);
}

/* Every enabled quantizer is a routed-expert or k/v quantizer and every
 * routed-expert weight/input quantizer is enabled. */
static void check_experts_only(const struct cal_plan *p, int kv)
{
	size_t experts = 0;
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		const struct cal_plan_module *m = &p->modules[q->module];
		int is_exp = m->kind == CAL_MOD_EXPERTS_GATE_UP || m->kind == CAL_MOD_EXPERTS_DOWN;
		int is_kv = q->role == CAL_QROLE_K_BMM || q->role == CAL_QROLE_V_BMM;
		if (is_exp) {
			experts++;
			cr_assert(q->spec.enabled && q->spec.fmt == CAL_QFMT_NVFP4, "%s", q->name);
			cr_assert(strstr(q->name, ".mlp.experts."), "%s", q->name);
		} else if (is_kv && kv) {
			cr_assert(q->spec.enabled && q->spec.fmt == CAL_QFMT_FP8, "%s", q->name);
		} else {
			cr_assert(!q->spec.enabled, "%s must stay unquantized", q->name);
		}
	}
	cr_assert(experts > 0);
}

/* check_experts_only on the plan of recipe r for the config cfg. */
static void check_experts_only_on(const char *cfg, struct cal_recipe *r)
{
	struct cal_model_desc *d = model(cfg);
	struct cal_plan *p = plan_of(d, r);
	check_experts_only(p, 1);
	cal_plan_free(p);
	cal_model_desc_free(d);
}

Test(plan, qwen3_moe_experts_only)
{
	struct planned x = {0};
	struct cal_plan *p = plan_open(&x, qwen3_moe, "general/ptq/nvfp4_experts_only-kv_fp8");
	check_experts_only(p, 1);
	const struct cal_plan_q *q =
		quantizer(p, "model.layers.1.mlp.experts.gate_up_proj_weight_quantizers.3", 1);
	cr_assert(q->spec.block == 16 && q->spec.calibrate);
	cr_assert_eq(q->expert, 3);
	quantizer(p, "model.layers.2.mlp.experts.down_proj_input_quantizer", 1);
	quantizer(p, "model.layers.0.mlp.gate_proj.weight_quantizer", 0); /* dense layer 0 */
	cr_assert_null(cal_plan_find(p, "model.layers.1.mlp.gate.weight_quantizer")); /* TopKRouter */
	q = quantizer(p, "model.layers.1.self_attn.k_bmm_quantizer", 1);
	cr_assert(q->spec.fmt == CAL_QFMT_FP8);
	cr_assert_eq(p->sum.kv_fmt, CAL_QFMT_FP8);
	char *t = cal_plan_text(p, "x");
	cr_assert(strstr(t, "layer 0          mlp BF16 | attention BF16 | KV FP8"), "%s", t);
	cr_assert(strstr(t, "layers 1-2       experts 4x(gate,up,down) NVFP4 W4A4 | attention BF16 | "
			    "router BF16 | KV FP8"), "%s", t);
	free(t);
	char *js = cal_plan_json(p, "x");
	json_error_t je;
	json_t *j = json_loads(js, 0, &je);
	cr_assert(j, "%s", je.text);
	cr_assert_eq(json_array_size(json_object_get(j, "quantizers")), p->n_q);
	json_t *q0 = json_array_get(json_object_get(j, "quantizers"), 0);
	cr_assert_str_eq(json_string_value(json_object_get(q0, "name")),
			 "model.embed_tokens.input_quantizer");
	json_decref(j);
	free(js);
	/* cast variant: same selection, KV without calibration */
	p = plan_again(&x, "general/ptq/nvfp4_experts_only-kv_fp8_cast");
	check_experts_only(p, 1);
	cr_assert(p->sum.kv_cast);
	q = cal_plan_find(p, "model.layers.1.self_attn.v_bmm_quantizer");
	cr_assert(q->spec.use_constant_amax && !q->spec.calibrate);
	planned_free(&x);
}

/* Formats added through kernels/qfmt.def alone: NVFP4 block 32 weights and
 * the NVFP4 KV cache. */
Test(plan, nvfp4_bs32_and_nvfp4_kv)
{
	struct planned x = {0};
	struct cal_plan *p = plan_open(&x, qwen3_moe, "general/ptq/nvfp4_mlp_weight_only");
	const struct cal_plan_q *q =
		quantizer(p, "model.layers.1.mlp.experts.down_proj_weight_quantizers.2", 1);
	cr_assert(q->spec.fmt == CAL_QFMT_NVFP4_BS32);
	cr_assert(q->spec.block == 32 && q->spec.calibrate);
	cr_assert_str_eq(cal_qfmt_name(q->spec.fmt), "nvfp4_bs32");
	quantizer(p, "model.layers.1.mlp.experts.down_proj_input_quantizer", 0);
	q = quantizer(p, "model.layers.0.mlp.gate_proj.weight_quantizer", 1);
	cr_assert(q->spec.fmt == CAL_QFMT_NVFP4_BS32);
	quantizer(p, "model.layers.0.self_attn.q_proj.weight_quantizer", 0);
	cr_assert_eq(p->sum.kv_fmt, CAL_QFMT_NONE);
	expect_plan_text(p, "NVFP4-bs32 W4A16");
	p = plan_again(&x, "general/ptq/nvfp4_default-kv_nvfp4_cast");
	q = quantizer(p, "model.layers.2.self_attn.k_bmm_quantizer", 1);
	cr_assert(q->spec.fmt == CAL_QFMT_NVFP4);
	cr_assert(q->spec.use_constant_amax && !q->spec.calibrate);
	cr_assert(p->sum.kv_fmt == CAL_QFMT_NVFP4 && p->sum.kv_cast);
	expect_plan_text(p, "KV NVFP4 (cast)");
	planned_free(&x);
}

Test(plan, experts_only_other_archs)
{
	const char *cfgs[] = {mixtral, deepseek, qwen3_next};
	struct cal_recipe *r = load_ok(CAL_TEST_RECIPES_DIR, "general/ptq/nvfp4_experts_only-kv_fp8");
	for (size_t i = 0; i < CAL_ARRAY_LEN(cfgs); i++)
		check_experts_only_on(cfgs[i], r);
	if (have_modelopt()) {
		struct cal_recipe *m = load_ok(CAL_MODELOPT_RECIPES, "general/ptq/nvfp4_experts_only-kv_fp8");
		check_experts_only_on(mixtral, m);
		cal_recipe_free(m);
	}
	cal_recipe_free(r);
}

Test(plan, defaults_keep_routers_heads_and_gdn_small_projections)
{
	struct planned x = {0};
	struct cal_plan *p = plan_open(&x, qwen3_next, "general/ptq/nvfp4_default-kv_fp8");
	static const char *const off[] = {
		"lm_head.weight_quantizer", "model.embed_tokens.weight_quantizer",
		"model.layers.0.linear_attn.in_proj_ba.weight_quantizer",
		"model.layers.0.linear_attn.conv1d.weight_quantizer",
		"model.layers.0.mlp.shared_expert_gate.weight_quantizer",
	};
	static const char *const on[] = {
		"model.layers.0.linear_attn.in_proj_qkvz.weight_quantizer",
		"model.layers.0.linear_attn.out_proj.input_quantizer",
		"model.layers.0.mlp.shared_expert.down_proj.weight_quantizer",
		"model.layers.3.self_attn.q_proj.weight_quantizer",
		"model.layers.3.self_attn.k_bmm_quantizer",
		"model.layers.3.mlp.experts.gate_up_proj_weight_quantizers.0",
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(off); i++)
		quantizer(p, off[i], 0);
	for (size_t i = 0; i < CAL_ARRAY_LEN(on); i++)
		quantizer(p, on[i], 1);
	cr_assert(p->sum.bits_per_param < 16 && p->sum.bytes_after < p->sum.bytes_before,
		  "%.2f bits, %llu -> %llu bytes", p->sum.bits_per_param,
		  (unsigned long long)p->sum.bytes_before, (unsigned long long)p->sum.bytes_after);
	char *t = cal_plan_text(p, "nvfp4_default-kv_fp8");
	cr_log_info("%s", t);
	cr_assert(strstr(t, "layers 0-2       experts 4x(gate,up,down) NVFP4 W4A4 | shared expert "
			    "gate,up,down NVFP4 W4A4, shared_expert_gate BF16 | linear-attention "
			    "in_proj_qkvz,out_proj NVFP4 W4A4, in_proj_ba,conv1d BF16 | router BF16\n"), "%s", t);
	cr_assert(strstr(t, "layer 3 "), "%s", t);
	free(t);
	planned_free(&x);
}

static void plan_fails(const char *cfg, const char *yaml, enum cal_status want, const char *needle)
{
	struct cal_model_desc *d = model(cfg);
	char *msg = NULL;
	struct cal_recipe *r = NULL;
	cr_assert_eq(parse_msg(yaml, &msg, &r), CAL_OK, "%s", msg);
	free(msg);
	struct cal_plan *p = NULL;
	struct cal_error err = {0};
	enum cal_status st = cal_plan_build(d, r, &p, &err);
	cr_assert_eq(st, want, "%s: %s", cal_status_str(st), cal_error_msg(&err));
	cr_assert(strstr(cal_error_msg(&err), needle), "'%s' lacks '%s'", cal_error_msg(&err), needle);
	cal_error_clear(&err);
	cal_recipe_free(r);
	cal_model_desc_free(d);
}

#define HEAD "imports: {nvfp4: configs/numerics/nvfp4}\nmetadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n    - {quantizer_name: '*', enable: false}\n"

Test(plan, refusals)
{
	/* gate and up of one expert differently (legacy alias names) */
	plan_fails(qwen3_moe, HEAD "    - {quantizer_name: '*experts.*.gate_proj.weight_quantizer', cfg: {$import: nvfp4}}\n",
		   CAL_ERR_INVALID, "gate and up projections of an expert are one fused weight");
	plan_fails(mixtral, HEAD "    - {quantizer_name: '*block_sparse_moe.experts.*.w1.*', cfg: {$import: nvfp4}}\n",
		   CAL_ERR_INVALID, "model.layers.0.block_sparse_moe.experts.0.w1.");
	/* one expert's shared input */
	plan_fails(qwen3_moe, HEAD "    - {quantizer_name: '*.experts.*weight_quantizer', cfg: {$import: nvfp4}}\n"
				   "    - {quantizer_name: '*experts.2.*input_quantizer', cfg: {$import: nvfp4}}\n",
		   CAL_ERR_INVALID, "share one input quantizer");
	/* formats calibd does not implement */
	plan_fails(qwen3_moe, HEAD "    - {quantizer_name: '*o_proj.weight_quantizer', cfg: {num_bits: 8, axis: null}}\n",
		   CAL_ERR_UNSUPPORTED, "8-bit integer quantization is not implemented");
	plan_fails(qwen3_moe, HEAD "    - {quantizer_name: '*o_proj.weight_quantizer', cfg: {num_bits: 8, axis: null}}\n",
		   CAL_ERR_UNSUPPORTED, "calibd implements NVFP4 W4A4");
	plan_fails(qwen3_moe, "metadata: {recipe_type: ptq}\nquantize: {quant_cfg: []}\n",
		   CAL_ERR_UNSUPPORTED, "modelopt's default is 8-bit integer");
	plan_fails(qwen3_moe, HEAD "    - {quantizer_name: '*output_quantizer', cfg: {$import: nvfp4}}\n",
		   CAL_ERR_UNSUPPORTED, "output quantizers");
	plan_fails(qwen3_moe, "metadata: {recipe_type: ptq}\nquantize: {algorithm: awq_mse, quant_cfg: []}\n",
		   CAL_ERR_UNSUPPORTED, "algorithm 'awq_mse' is not implemented");
	/* GPTQ options calibd does not run are named (docs/gptq.md) */
	plan_fails(qwen3_moe, "metadata: {recipe_type: ptq}\nquantize: {algorithm: {method: gptq, "
				   "fused: true, layerwise: {enable: true}}, quant_cfg: []}\n",
		   CAL_ERR_UNSUPPORTED, "algorithm gptq: option fused: true");
	plan_fails(qwen3_moe, "metadata: {recipe_type: ptq}\nquantize: {algorithm: {method: gptq}, "
				   "quant_cfg: []}\n",
		   CAL_ERR_UNSUPPORTED, "option layerwise.enable: false");
	plan_fails(qwen3_moe, "metadata: {recipe_type: ptq}\nquantize: {algorithm: {method: gptq, "
				   "block_size: 24, layerwise: {enable: true}}, quant_cfg: []}\n",
		   CAL_ERR_UNSUPPORTED, "block_size not a multiple");
	plan_fails(qwen3_moe, "imports: {fp8: configs/numerics/fp8}\nmetadata: {recipe_type: ptq}\n"
				   "quantize:\n  algorithm: {method: gptq, layerwise: {enable: true}}\n"
				   "  quant_cfg:\n    - {quantizer_name: '*', enable: false}\n"
				   "    - {quantizer_name: '*o_proj.weight_quantizer', cfg: {$import: fp8}}\n",
		   CAL_ERR_UNSUPPORTED, "gptq is implemented for static NVFP4 weights only");
	/* block size vs input dim: moe_intermediate 40 is not a multiple of 16 */
	plan_fails("{\"model_type\":\"qwen3_moe\",\"hidden_size\":64,\"moe_intermediate_size\":40,"
		   "\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
		   "\"head_dim\":16,\"num_experts\":2,\"num_experts_per_tok\":1,\"vocab_size\":64}",
		   HEAD "    - {quantizer_name: '*.experts.*weight_quantizer', cfg: {$import: nvfp4}}\n",
		   CAL_ERR_INVALID, "model.layers.0.mlp.experts (experts): input dimension 40 is not a "
		   "multiple of the NVFP4 block size 16");
}

/* INT8 (docs/numerics.md "INT8") and SmoothQuant (docs/smoothquant.md):
 * axis 0 on weights selects the per-channel INT8 row, per-tensor INT8
 * inputs pair with it; smoothquant takes `alpha` and names anything else. */
#define INT8_HEAD                                                                        \
	"metadata: {recipe_type: ptq}\nquantize:\n  algorithm: %s\n  quant_cfg:\n"       \
	"    - {quantizer_name: '*', enable: false}\n"                                   \
	"    - {quantizer_name: '*layers.*weight_quantizer', cfg: {num_bits: 8, axis: %s}}\n" \
	"    - {quantizer_name: '*layers.*input_quantizer', cfg: {num_bits: 8, axis: %s}}\n"

static char *int8_yaml(const char *algo, const char *waxis, const char *iaxis)
{
	char *y = NULL;
	cr_assert(asprintf(&y, INT8_HEAD, algo, waxis, iaxis) > 0);
	return y;
}

/* awq_full (docs/awq.md "awq_full"): awq_lite's method with awq_clip set,
 * its four options read, defaults as AWQClipCalibConfig's; awq_lite does
 * not take them. */
Test(recipe, awq_full_options)
{
	char *y = int8_yaml("{method: awq_full, alpha_step: 0.2, min_clip_ratio: 0.4, "
			    "shrink_step: 0.1, max_tokens_per_batch: 32, max_co_batch_size: 7}",
			    "0", "null"), *msg = NULL;
	struct cal_recipe *r = NULL;
	cr_assert_eq(parse_msg(y, &msg, &r), CAL_OK, "%s", msg);
	free(msg);
	cr_expect_eq(r->algo.method, CAL_CALIB_AWQ_LITE);
	cr_expect(r->algo.awq_clip);
	cr_expect_str_eq(r->algo.name, "awq_full");
	cr_expect_float_eq(r->algo.alpha_step, 0.2, 1e-12);
	cr_expect_float_eq(r->algo.clip_min_ratio, 0.4, 1e-12);
	cr_expect_float_eq(r->algo.clip_shrink_step, 0.1, 1e-12);
	cr_expect_eq(r->algo.clip_max_tokens, 32);
	cr_expect_eq(r->algo.clip_max_co_batch, 7);
	cal_recipe_free(r);
	free(y);
	y = int8_yaml("awq_full", "0", "null");
	cr_assert_eq(parse_msg(y, &msg, &r), CAL_OK, "%s", msg);
	free(msg);
	cr_expect(r->algo.awq_clip);
	cr_expect_float_eq(r->algo.clip_min_ratio, 0.5, 1e-12);
	cr_expect_float_eq(r->algo.clip_shrink_step, 0.05, 1e-12);
	cr_expect_eq(r->algo.clip_max_tokens, 64);
	cal_recipe_free(r);
	free(y);
	static const char *const bad[][2] = {
		{"{method: awq_lite, min_clip_ratio: 0.4}", "min_clip_ratio"},
		{"{method: awq_full, clip_ratio: 0.4}", "shrink_step"}, /* the keys listed */
	};
	for (size_t k = 0; k < CAL_ARRAY_LEN(bad); k++) {
		y = int8_yaml(bad[k][0], "0", "null");
		expect_error(y, CAL_ERR_FORMAT, bad[k][1]);
		free(y);
	}
}

Test(plan, int8_and_smoothquant)
{
	static const char dense[] =
		"{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":96,"
		"\"num_hidden_layers\":1,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
		"\"vocab_size\":64}";
	char *y = int8_yaml("{method: smoothquant, alpha: 0.5}", "0", "null"), *msg = NULL;
	struct cal_recipe *r = NULL;
	cr_assert_eq(parse_msg(y, &msg, &r), CAL_OK, "%s", msg);
	free(msg);
	cr_expect_eq(r->algo.method, CAL_CALIB_SMOOTHQUANT);
	cr_expect_float_eq(r->algo.sq_alpha, 0.5, 1e-12);
	struct cal_model_desc *d = model(dense);
	struct cal_plan *p = plan_of(d, r);
	size_t n_w = 0, n_in = 0;
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		if (!q->spec.enabled)
			continue;
		cr_expect_eq(q->spec.fmt, CAL_QFMT_INT8, "%s", q->name);
		n_w += q->role == CAL_QROLE_WEIGHT;
		n_in += q->role == CAL_QROLE_INPUT;
	}
	cr_expect(n_w > 0 && n_w == n_in, "%zu weight and %zu input quantizers", n_w, n_in);
	cal_plan_free(p);
	cal_recipe_free(r);
	cal_model_desc_free(d);
	free(y);
	/* the default alpha is 1.0 (SmoothQuantCalibConfig) */
	y = int8_yaml("smoothquant", "0", "null");
	cr_assert_eq(parse_msg(y, &msg, &r), CAL_OK, "%s", msg);
	free(msg);
	cr_expect_float_eq(r->algo.sq_alpha, 1.0, 1e-12);
	cal_recipe_free(r);
	free(y);
	/* refused when parsed (at_plan 0) or when planned for dense (1) */
	static const struct {
		const char *algo, *waxis, *iaxis;
		int at_plan;
		enum cal_status want;
		const char *needle;
	} bad[] = {
		/* unknown and out-of-range options are refused, named */
		{"{method: smoothquant, alpha: 0.5, migration: 2}", "0", "null", 0, CAL_ERR_FORMAT, "migration"},
		{"{method: smoothquant, alpha: 1.5}", "0", "null", 0, CAL_ERR_FORMAT, "must be in [0, 1]"},
		/* per-channel along another axis, per-channel inputs, weight-only */
		{"max", "1", "null", 1, CAL_ERR_UNSUPPORTED, "implemented for weights along axis 0 only"},
		{"max", "0", "-1", 1, CAL_ERR_UNSUPPORTED,
		 "per-channel quantization (axis) is implemented for weights"},
		{"smoothquant", "null", "null", 1, CAL_ERR_UNSUPPORTED,
		 "8-bit integer quantization is not implemented"},
		/* INT8 inputs are static per tensor: per-token ones select no row */
		{"max", "0", "null, type: dynamic, block_sizes: {-1: null}", 1, CAL_ERR_UNSUPPORTED,
		 "per-token inputs in FP8 E4M3 only"},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(bad); i++) {
		y = int8_yaml(bad[i].algo, bad[i].waxis, bad[i].iaxis);
		if (bad[i].at_plan)
			plan_fails(dense, y, bad[i].want, bad[i].needle);
		else
			expect_error(y, bad[i].want, bad[i].needle);
		free(y);
	}
	plan_fails(dense, "imports: {fp8: configs/numerics/fp8}\nmetadata: {recipe_type: ptq}\n"
			  "quantize:\n  algorithm: smoothquant\n  quant_cfg:\n"
			  "    - {quantizer_name: '*', enable: false}\n"
			  "    - {quantizer_name: '*layers.*weight_quantizer', cfg: {$import: fp8}}\n"
			  "    - {quantizer_name: '*layers.*input_quantizer', cfg: {$import: fp8}}\n",
		   CAL_ERR_UNSUPPORTED, "smoothquant is implemented for INT8 weights with INT8 inputs");
	plan_fails(dense, "metadata: {recipe_type: ptq}\nquantize:\n"
			  "  algorithm: {method: smoothquant, layerwise: {enable: true}}\n"
			  "  quant_cfg: []\n",
		   CAL_ERR_UNSUPPORTED, "algorithm smoothquant: option layerwise");
}

/* hf_ptq's fp8_pc_pt, fp8_pb_wo and W4A8 qformats (kernels/qfmt.def rows
 * with per_channel, block2d, weight_of), and what stays refused around
 * them. */
Test(plan, fp8_channel_block_and_w4a8)
{
	static const struct {
		const char *recipe, *wq, *iq;
		enum cal_qfmt w, in;
		int block, w_calib, in_calib;
	} ok[] = {
		{"general/ptq/fp8_per_channel_per_token-kv_fp8_cast",
		 "model.layers.1.mlp.experts.gate_up_proj_weight_quantizers.0",
		 "model.layers.1.mlp.experts.gate_up_proj_input_quantizer", CAL_QFMT_FP8_PC_PT,
		 CAL_QFMT_FP8_PC_PT, 0, 0, 0},
		{"general/ptq/fp8_2d_blockwise_weight_only-kv_fp8_cast",
		 "model.layers.0.self_attn.q_proj.weight_quantizer",
		 "model.layers.0.self_attn.q_proj.input_quantizer", CAL_QFMT_FP8_PB_WO, CAL_QFMT_NONE,
		 128, 1, 0},
		{"general/ptq/w4a8_nvfp4_fp8-kv_fp8_cast",
		 "model.layers.0.mlp.down_proj.weight_quantizer",
		 "model.layers.0.mlp.down_proj.input_quantizer", CAL_QFMT_W4A8_NVFP4_FP8, CAL_QFMT_FP8,
		 32, 1, 1},
		{"general/ptq/w4a8_mxfp4_fp8-kv_fp8_cast",
		 "model.layers.1.mlp.experts.down_proj_weight_quantizers.3",
		 "model.layers.1.mlp.experts.down_proj_input_quantizer", CAL_QFMT_W4A8_MXFP4_FP8,
		 CAL_QFMT_FP8, 32, 0, 1},
	};
	struct cal_model_desc *d = model(qwen3_moe);
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct cal_recipe *r = load_ok(CAL_TEST_RECIPES_DIR, ok[i].recipe);
		struct cal_plan *p = plan_of(d, r);
		const struct cal_plan_q *w = cal_plan_find(p, ok[i].wq), *in = cal_plan_find(p, ok[i].iq);
		cr_assert(w && w->spec.enabled && w->spec.fmt == ok[i].w, "%s: %s is %s", ok[i].recipe,
			  ok[i].wq, w ? cal_qfmt_name(w->spec.fmt) : "missing");
		cr_assert_eq(w->spec.block, ok[i].block, "%s", ok[i].recipe);
		cr_assert_eq(w->spec.calibrate, ok[i].w_calib, "%s", ok[i].recipe);
		cr_assert(in && (in->spec.enabled ? in->spec.fmt : CAL_QFMT_NONE) == ok[i].in, "%s",
			  ok[i].recipe);
		cr_assert(!in->spec.enabled || in->spec.calibrate == ok[i].in_calib, "%s",
			  ok[i].recipe);
		cal_plan_free(p);
		cal_recipe_free(r);
	}
	cal_model_desc_free(d);
#define FP8H "imports: {fp8: configs/numerics/fp8, nvfp4: configs/numerics/nvfp4}\n" \
	"metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n" \
	"    - {quantizer_name: '*', enable: false}\n"
	plan_fails(qwen3_moe, FP8H "    - {quantizer_name: '*o_proj.weight_quantizer', "
				   "cfg: {$import: fp8, axis: 1}}\n",
		   CAL_ERR_UNSUPPORTED, "implemented for weights along axis 0 only");
	plan_fails(qwen3_moe, FP8H "    - {quantizer_name: '*o_proj.weight_quantizer', "
				   "cfg: {$import: fp8, axis: 0}}\n"
				   "    - {quantizer_name: '*o_proj.input_quantizer', "
				   "cfg: {$import: fp8, type: dynamic}}\n",
		   CAL_ERR_UNSUPPORTED, "per-token inputs only");
	plan_fails(qwen3_moe, FP8H "    - {quantizer_name: '*o_proj.weight_quantizer', "
				   "cfg: {$import: fp8, block_sizes: {-1: 64, -2: 64}}}\n",
		   CAL_ERR_UNSUPPORTED, "2-D block weights are implemented in FP8 E4M3 with static "
		   "blocks of 128 x 128");
	plan_fails(qwen3_moe, FP8H "    - {quantizer_name: '*o_proj.weight_quantizer', "
				   "cfg: {$import: nvfp4}}\n"
				   "    - {quantizer_name: '*o_proj.input_quantizer', cfg: {$import: fp8}}\n",
		   CAL_ERR_UNSUPPORTED, "NVFP4 weights with FP8 inputs are not implemented");
	plan_fails(qwen3_moe, FP8H "    - {quantizer_name: '*o_proj.weight_quantizer', "
				   "cfg: {$import: fp8}}\n"
				   "    - {quantizer_name: '*o_proj.input_quantizer', cfg: {$import: fp8, "
				   "type: dynamic, block_sizes: {-1: null}}}\n",
		   CAL_ERR_UNSUPPORTED, "FP8 weights with FP8 per-channel/per-token inputs");
#undef FP8H
}

/* The KV-cache units of hf_ptq's --kv_cache_qformat (docs/recipes.md
 * "KV-cache formats"): affine and rotated plans, the kv_cache_qformat
 * layering over a recipe, and what stays refused around them. */
Test(plan, kv_affine_rotate_and_kv_qformat)
{
	struct cal_model_desc *d = model(qwen3_moe);
	struct cal_recipe *r = load_ok(CAL_TEST_RECIPES_DIR, "general/ptq/nvfp4_default-kv_nvfp4_affine");
	struct cal_plan *p = plan_of(d, r);
	const struct cal_plan_q *k = cal_plan_find(p, "model.layers.1.self_attn.k_bmm_quantizer");
	cr_assert(k && k->spec.enabled && k->spec.affine && k->spec.fmt == CAL_QFMT_NVFP4);
	cr_assert(p->sum.kv_affine && !p->sum.rot_block[0] && !p->sum.rot_block[1]);
	cal_plan_free(p);
	cal_recipe_free(r);

	r = load_ok(CAL_TEST_RECIPES_DIR, "general/ptq/nvfp4_default-kv_nvfp4_rotate");
	p = plan_of(d, r);
	/* head_dim 16: one block of 16; Q rotates with its quantizer off, V not */
	cr_assert(!p->sum.kv_affine && p->sum.rot_block[0] == 16 && p->sum.rot_block[1] == 16 &&
		  p->sum.rot_block[2] == 0);
	cr_assert(!cal_plan_find(p, "model.layers.0.self_attn.q_bmm_quantizer")->spec.enabled);
	cal_plan_free(p);
	cal_recipe_free(r);

	/* --kv-cache-qformat over a recipe: the last unit wins; on MLA too, as modelopt 0.47
	 * (rot: Q and K rotate along qk_nope + qk_rope, the fixture's 24 in blocks of 8) */
	static const struct {
		const char *kv, *text; /* text: calibd plan's KV label */
		enum cal_qfmt fmt;
		int cast, affine, rot;
	} kvs[] = {
		{"fp8_affine", "| KV FP8 (affine)\n", CAL_QFMT_FP8, 0, 1, 0},
		{"nvfp4_rotate", "| KV NVFP4 (rotated K)\n", CAL_QFMT_NVFP4, 0, 0, 1},
		{"nvfp4_cast", "| KV NVFP4 (cast)\n", CAL_QFMT_NVFP4, 1, 0, 0},
		{"none", "| KV BF16\n", CAL_QFMT_NONE, 0, 0, 0}, {"fp8", "| KV FP8\n", CAL_QFMT_FP8, 0, 0, 0},
	};
	struct cal_recipe_opts o = {.builtin_dir = CAL_TEST_RECIPES_DIR, .no_filesystem = 1};
	struct cal_model_desc *ds = model(deepseek), *ms[2] = {d, ds};
	for (size_t i = 0; i < 2 * sizeof(kvs) / sizeof(kvs[0]); i++) {
		struct cal_error err = {0};
		int64_t hd = 0, rot = kvs[i / 2].rot;
		cal_model_kv_dims(ms[i % 2], 0, NULL, &hd);
		r = load_ok(CAL_TEST_RECIPES_DIR, "general/ptq/nvfp4_default-kv_fp8_cast");
		cr_assert_eq(cal_kv_qformat_apply(r, kvs[i / 2].kv, &o, &err), CAL_OK, "%s: %s",
			     kvs[i / 2].kv, cal_error_msg(&err));
		p = plan_of(ms[i % 2], r);
		cr_assert(p->sum.kv_fmt == kvs[i / 2].fmt && p->sum.kv_cast == kvs[i / 2].cast &&
			  p->sum.kv_affine == kvs[i / 2].affine && p->sum.rot_block[1] == (rot ? hd & -hd : 0),
			  "%s on %s: %s", kvs[i / 2].kv, ms[i % 2]->model_type, cal_qfmt_name(p->sum.kv_fmt));
		expect_plan_text(p, kvs[i / 2].text);
		cal_plan_free(p);
		cal_recipe_free(r);
	}
	struct cal_error err = {0};
	r = load_ok(CAL_TEST_RECIPES_DIR, "general/ptq/nvfp4_default-kv_fp8_cast");
	cr_assert_eq(cal_kv_qformat_apply(r, "fp16", &o, &err), CAL_ERR_NOTFOUND);
	cr_assert(strstr(cal_error_msg(&err), "nvfp4_rotate"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	cal_recipe_free(r);
	cal_model_desc_free(d);
	cal_model_desc_free(ds);

	/* refused: bias off the KV cache, other bias kinds, rotate_back */
#define KVH "imports: {fp8: configs/numerics/fp8}\n" \
	"metadata: {recipe_type: ptq}\nquantize:\n  quant_cfg:\n" \
	"    - {quantizer_name: '*', enable: false}\n"
	plan_fails(qwen3_moe, KVH "    - {quantizer_name: '*o_proj.input_quantizer', "
				  "cfg: {$import: fp8, bias: {-2: null, -4: null}}}\n",
		   CAL_ERR_UNSUPPORTED, "for the KV cache (k_bmm / v_bmm) only");
	plan_fails(qwen3_moe, KVH "    - {quantizer_name: '*[kv]_bmm_quantizer', "
				  "cfg: {$import: fp8, bias: {-1: null, type: static}}}\n",
		   CAL_ERR_UNSUPPORTED, "static mean bias per KV head and channel");
	plan_fails(qwen3_moe, KVH "    - {quantizer_name: '*[kv]_bmm_quantizer', "
				  "cfg: {$import: fp8, bias: {-2: null, -4: null, type: dynamic}}}\n",
		   CAL_ERR_UNSUPPORTED, "static mean bias per KV head and channel");
	plan_fails(qwen3_moe, KVH "    - {quantizer_name: '*k_bmm_quantizer', "
				  "cfg: {$import: fp8, rotate: {enable: true, mode: rotate_back}}}\n",
		   CAL_ERR_UNSUPPORTED, "rotate_back");
	plan_fails(qwen3_moe, KVH "    - {quantizer_name: '*[kv]_bmm_quantizer', "
				  "cfg: {$import: fp8, rotate: {enable: true, block_size: 32}}}\n",
		   CAL_ERR_UNSUPPORTED, "does not divide the head dim 16");
	plan_fails(qwen3_moe, KVH "    - {quantizer_name: '*k_bmm_quantizer', "
				  "cfg: {$import: fp8, bias: {-2: null, -4: null}}}\n"
				  "    - {quantizer_name: '*v_bmm_quantizer', cfg: {$import: fp8}}\n",
		   CAL_ERR_INVALID, "KV-cache quantizers disagree");
#undef KVH
}
