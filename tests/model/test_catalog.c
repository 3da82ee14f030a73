/*
 * test_catalog.c — the tensor catalog on generated fixtures: every
 * architecture and expert layout, expert lookups, hand-computed parameter
 * counts, missing / mis-shaped / unexpected tensors reported by name, and
 * the `calibd inspect --json` golden file.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/model/catalog.h"
#include "engine/model/model.h"
#include "engine/st/safetensors.h"
#include "fixture.h"
#include "testutil.h"

#define SEED 1

static char *tmp_root;

static void setup(void)
{
	tmp_root = cal_test_tmpdir("test-catalog");
}

static void teardown(void)
{
	cal_test_rm_rf(tmp_root);
	free(tmp_root);
}

/* Generates a fixture; returns its directory (caller frees). */
static char *gen(const char *arch, enum cal_fixture_layout lay, uint64_t shard)
{
	char *dir = NULL;
	static int n;
	cr_assert(asprintf(&dir, "%s/%s-%d-%d", tmp_root, arch, (int)lay, n++) > 0);
	struct cal_fixture_opts o = {.arch = arch, .layout = lay, .seed = SEED,
				     .shard_bytes = shard};
	struct cal_error err = {0};
	cr_assert_eq(cal_fixture_write(&o, dir, &err), CAL_OK, "fixture %s: %s", arch,
		     cal_error_msg(&err));
	return dir;
}

struct opened {
	struct cal_model_desc *d;
	struct cal_checkpoint *ck;
	struct cal_catalog *c;
};

static enum cal_status open_model(const char *dir, const char *config_override,
				  struct opened *o, struct cal_error *err)
{
	memset(o, 0, sizeof(*o));
	enum cal_status st = config_override
		? cal_model_desc_parse("override", config_override, strlen(config_override), &o->d, err)
		: cal_model_desc_load(dir, &o->d, err);
	cr_assert_eq(st, CAL_OK, "config: %s", cal_error_msg(err));
	st = cal_checkpoint_open(dir, &o->ck, err);
	cr_assert_eq(st, CAL_OK, "checkpoint: %s", cal_error_msg(err));
	return cal_catalog_build(o->d, o->ck, &o->c, err);
}

static void close_model(struct opened *o)
{
	cal_catalog_free(o->c);
	cal_checkpoint_free(o->ck);
	cal_model_desc_free(o->d);
}

/* Checks the expert lookup of every MoE layer, expert and projection. */
static void check_experts(const struct opened *o, enum cal_expert_layout want)
{
	const struct cal_model_desc *d = o->d;
	for (int32_t L = 0; L < d->num_layers; L++) {
		if (d->layers[L].ffn != CAL_FFN_MOE) {
			cr_assert_eq(cal_catalog_layout(o->c, L), CAL_LAYOUT_NONE);
			continue;
		}
		cr_assert_eq(cal_catalog_layout(o->c, L), want, "layer %d: %s", L,
			     cal_expert_layout_name(cal_catalog_layout(o->c, L)));
		for (int32_t e = 0; e < d->num_experts; e++) {
			struct cal_expert_slice s[3];
			for (int p = 0; p < 3; p++) {
				cr_assert_eq(cal_catalog_expert(o->c, L, e, (enum cal_proj)p, &s[p], NULL),
					     CAL_OK);
				int64_t out = p == 2 ? d->hidden_size : d->moe_intermediate_size;
				int64_t in = p == 2 ? d->moe_intermediate_size : d->hidden_size;
				cr_assert_eq(s[p].out, out);
				cr_assert_eq(s[p].in, in);
				uint64_t last = cal_expert_slice_index(&s[p], out - 1, in - 1);
				cr_assert_lt(last, s[p].t->numel, "L%d e%d p%d", L, e, p);
				if (s[p].expert_index < 0) {
					/* per-expert tensor: its name carries the expert number */
					char needle[32];
					snprintf(needle, sizeof(needle), ".experts.%d.", e);
					cr_assert(strstr(s[p].t->name, needle), "%s", s[p].t->name);
				}
			}
			/* gate and up never select the same element */
			if (s[0].t == s[1].t)
				cr_assert_neq(cal_expert_slice_index(&s[0], 0, 0),
					      cal_expert_slice_index(&s[1], 0, 0));
		}
	}
	struct cal_error err = {0};
	struct cal_expert_slice s;
	cr_assert_eq(cal_catalog_expert(o->c, 0, (int32_t)d->num_experts, CAL_PROJ_UP, &s, &err),
		     CAL_ERR_INVALID);
	cal_error_clear(&err);
}

struct case_ {
	const char *arch;
	enum cal_fixture_layout lay;
	enum cal_expert_layout want;
};

static const struct case_ cases[] = {
	{"qwen3_moe", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_PER_EXPERT},
	{"qwen3_moe", CAL_FIXTURE_LAYOUT_FUSED, CAL_LAYOUT_FUSED},
	{"qwen2_moe", CAL_FIXTURE_LAYOUT_PER_EXPERT, CAL_LAYOUT_PER_EXPERT},
	{"qwen2_moe", CAL_FIXTURE_LAYOUT_FUSED, CAL_LAYOUT_FUSED},
	{"mixtral", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_MIXTRAL},
	{"mixtral", CAL_FIXTURE_LAYOUT_FUSED, CAL_LAYOUT_FUSED},
	{"olmoe", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_PER_EXPERT},
	{"olmoe", CAL_FIXTURE_LAYOUT_FUSED, CAL_LAYOUT_FUSED},
	{"qwen3_next", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_PER_EXPERT},
	{"qwen3_next", CAL_FIXTURE_LAYOUT_FUSED, CAL_LAYOUT_FUSED},
	{"qwen3_5_moe", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_FUSED},
	{"qwen3_5_moe", CAL_FIXTURE_LAYOUT_PER_EXPERT, CAL_LAYOUT_PER_EXPERT},
	{"qwen3_5_moe_text", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_FUSED},
	{"deepseek_v3", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_PER_EXPERT},
	{"deepseek_v3", CAL_FIXTURE_LAYOUT_FUSED, CAL_LAYOUT_FUSED},
	{"gpt_oss", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_FUSED_OAI},
	{"llama", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_NONE},
	{"qwen2", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_NONE},
	{"qwen3", CAL_FIXTURE_LAYOUT_DEFAULT, CAL_LAYOUT_NONE},
};

Test(catalog, every_arch_and_layout, .init = setup, .fini = teardown)
{
	cr_log_info("fixture seed %d", SEED);
	/* every generator arch is covered by a case */
	for (size_t a = 0; a < cal_fixture_arch_count(); a++) {
		int found = 0;
		for (size_t i = 0; i < CAL_ARRAY_LEN(cases); i++)
			found |= !strcmp(cases[i].arch, cal_fixture_arch_name(a));
		cr_assert(found, "no case for %s", cal_fixture_arch_name(a));
	}
	for (size_t i = 0; i < CAL_ARRAY_LEN(cases); i++) {
		/* every other case sharded, to cover the index path */
		char *dir = gen(cases[i].arch, cases[i].lay, i % 2 ? 60000 : 0);
		struct opened o;
		struct cal_error err = {0};
		cr_assert_eq(open_model(dir, NULL, &o, &err), CAL_OK, "%s: %s", dir,
			     cal_error_msg(&err));
		cr_assert_eq(cal_catalog_model_layout(o.c), cases[i].want, "%s", dir);
		check_experts(&o, cases[i].want);
		/* the model-level tensors are found by role */
		cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_EMBED, CAL_PART_WEIGHT, -1, -1));
		cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_FINAL_NORM, CAL_PART_WEIGHT, -1, -1));
		cr_assert_eq(!cal_catalog_find(o.c, CAL_ROLE_LM_HEAD, CAL_PART_WEIGHT, -1, -1),
			     o.d->tie_word_embeddings);
		cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_INPUT_NORM, CAL_PART_WEIGHT,
						    (int32_t)o.d->num_layers - 1, -1));
		/* every catalogued entry has a role and is in name order */
		for (size_t k = 1; k < cal_catalog_count(o.c); k++)
			cr_assert_lt(strcmp(cal_catalog_entry(o.c, k - 1)->t->name,
					    cal_catalog_entry(o.c, k)->t->name), 0);
		close_model(&o);
		free(dir);
	}
}

Test(catalog, experts_in_numeric_order_and_deterministic, .init = setup, .fini = teardown)
{
	/* 12 experts: string order would put 10 and 11 before 2 */
	char *dir = NULL;
	cr_assert(asprintf(&dir, "%s/e12", tmp_root) > 0);
	struct cal_fixture_opts fo = {.arch = "qwen3_moe", .seed = SEED, .num_experts = 12};
	struct cal_error err = {0};
	cr_assert_eq(cal_fixture_write(&fo, dir, &err), CAL_OK, "%s", cal_error_msg(&err));
	struct opened o;
	cr_assert_eq(open_model(dir, NULL, &o, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(o.d->num_experts, 12);
	check_experts(&o, CAL_LAYOUT_PER_EXPERT); /* names carry the asked number */
	close_model(&o);

	/* same seed, same bytes; another seed, other bytes */
	char *a = gen("mixtral", CAL_FIXTURE_LAYOUT_DEFAULT, 0);
	char *b = gen("mixtral", CAL_FIXTURE_LAYOUT_DEFAULT, 0);
	char *c = NULL;
	cr_assert(asprintf(&c, "%s/seed2", tmp_root) > 0);
	fo = (struct cal_fixture_opts){.arch = "mixtral", .seed = 2};
	cr_assert_eq(cal_fixture_write(&fo, c, &err), CAL_OK, "%s", cal_error_msg(&err));
	char *cmd = NULL;
	cr_assert(asprintf(&cmd, "cmp -s '%s/model.safetensors' '%s/model.safetensors' && "
			   "cmp -s '%s/config.json' '%s/config.json' && "
			   "! cmp -s '%s/model.safetensors' '%s/model.safetensors'",
			   a, b, a, b, a, c) > 0);
	cr_assert_eq(system(cmd), 0, "fixtures are not deterministic by seed");
	free(cmd);
	free(a);
	free(b);
	free(c);
	free(dir);
}

Test(catalog, roles_of_special_tensors, .init = setup, .fini = teardown)
{
	char *dir = gen("qwen3_5_moe", CAL_FIXTURE_LAYOUT_DEFAULT, 0);
	struct opened o;
	struct cal_error err = {0};
	cr_assert_eq(open_model(dir, NULL, &o, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_str_eq(cal_catalog_prefix(o.c), "model.language_model.");
	size_t ignored = 0;
	for (size_t k = 0; k < cal_catalog_count(o.c); k++) {
		const struct cal_cat_entry *e = cal_catalog_entry(o.c, k);
		if (e->role == CAL_ROLE_IGNORED) {
			ignored++;
			cr_assert(!strncmp(e->t->name, "mtp.", 4) ||
				  !strncmp(e->t->name, "model.visual.", 13), "%s", e->t->name);
		}
	}
	cr_assert_eq(ignored, 23); /* 21 vision-tower tensors + 2 MTP */
	cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_GDN_IN_QKV, CAL_PART_WEIGHT, 0, -1));
	cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_GDN_A_LOG, CAL_PART_PARAM, 2, -1));
	cr_assert_null(cal_catalog_find(o.c, CAL_ROLE_GDN_IN_QKV, CAL_PART_WEIGHT, 3, -1));
	cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_Q_NORM, CAL_PART_WEIGHT, 3, -1));
	cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_SHARED_EXPERT_GATE, CAL_PART_WEIGHT, 1, -1));
	const struct cal_st_tensor *q = cal_catalog_find(o.c, CAL_ROLE_Q_PROJ, CAL_PART_WEIGHT, 3, -1);
	cr_assert_eq(q->shape[0], 2 * 4 * 16); /* gated q_proj is twice as wide */
	close_model(&o);
	free(dir);

	dir = gen("gpt_oss", CAL_FIXTURE_LAYOUT_DEFAULT, 0);
	cr_assert_eq(open_model(dir, NULL, &o, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_ROUTER, CAL_PART_BIAS, 0, -1));
	cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_SINKS, CAL_PART_PARAM, 1, -1));
	struct cal_expert_slice s;
	cr_assert_eq(cal_catalog_expert(o.c, 1, 3, CAL_PROJ_UP, &s, NULL), CAL_OK);
	/* [E,H,2I] interleaved: up of expert 3, W[o][i] = gu[3][i][2o+1] */
	cr_assert(s.transposed);
	cr_assert_not_null(s.bias);
	int64_t H = 64, I2 = 2 * o.d->moe_intermediate_size;
	cr_assert_eq(cal_expert_slice_index(&s, 5, 7), (uint64_t)(3 * H * I2 + 7 * I2 + 2 * 5 + 1));
	close_model(&o);
	free(dir);

	dir = gen("qwen3_moe", CAL_FIXTURE_LAYOUT_FUSED, 0);
	cr_assert_eq(open_model(dir, NULL, &o, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_catalog_expert(o.c, 2, 6, CAL_PROJ_UP, &s, NULL), CAL_OK);
	/* [E,2I,H] gate|up: up of expert 6, W[o][i] = gu[6][I+o][i] */
	int64_t I = o.d->moe_intermediate_size;
	cr_assert_eq(cal_expert_slice_index(&s, 5, 7), (uint64_t)(6 * 2 * I * H + (I + 5) * H + 7));
	cr_assert_eq(cal_catalog_layout(o.c, 1), CAL_LAYOUT_NONE); /* mlp_only_layers [1] */
	cr_assert_not_null(cal_catalog_find(o.c, CAL_ROLE_MLP_DOWN, CAL_PART_WEIGHT, 1, -1));
	close_model(&o);
	free(dir);
}

/* Hand-computed (V=320, H=64, nh=4, nkv=2, hd=16, I=48, dense I=96):
 *   embed = lm_head = 320*64 = 20480; final norm 64
 *   GQA attention q,o 64*64, k,v 32*64 = 12288; 2 norms 128
 *   expert 3*48*64 = 9216; router E*64; dense MLP 3*96*64 = 18432 */
Test(catalog, parameter_counts, .init = setup, .fini = teardown)
{
	static const struct {
		const char *arch;
		uint64_t total, active, routed, ignored;
	} want[] = {
		/* qwen3_moe, 3 layers (1 dense), E=8, k=2, q/k norm [16]:
		 * 40960+64 + 3*(12288+32+128) + 2*(512+8*9216) + 18432 */
		{"qwen3_moe", 245280, 245280 - 147456 + 2 * 2 * 9216, 2 * 8 * 9216, 0},
		/* qwen2_moe, 2 layers, E=4, qkv bias 128, shared 3*48*64 + gate 64:
		 * 41024 + 2*(12288+128+128 + 256+4*9216 + 9216+64) */
		{"qwen2_moe", 158912, 158912 - 73728 + 2 * 2 * 9216, 2 * 4 * 9216, 0},
		/* deepseek_v3, 3 layers (layer 0 dense), MLA 18512 + norms 128,
		 * MoE: router 512 + corr 8 + 8 experts + shared 9216; MTP 64 ignored:
		 * 41024 + 3*18640 + 18432 + 2*(520+73728+9216) */
		{"deepseek_v3", 282304, 282304 - 147456 + 2 * 2 * 9216, 2 * 8 * 9216, 64},
		/* llama, tied: 20480+64 + 2*(12288+128+18432) */
		{"llama", 82240, 82240, 0, 0},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(want); i++) {
		char *dir = gen(want[i].arch, CAL_FIXTURE_LAYOUT_DEFAULT, 0);
		struct opened o;
		struct cal_error err = {0};
		cr_assert_eq(open_model(dir, NULL, &o, &err), CAL_OK, "%s", cal_error_msg(&err));
		struct cal_param_counts pc;
		cal_catalog_counts(o.c, &pc);
		cr_assert_eq(pc.total, want[i].total, "%s total %llu", want[i].arch,
			     (unsigned long long)pc.total);
		cr_assert_eq(pc.active, want[i].active, "%s active %llu", want[i].arch,
			     (unsigned long long)pc.active);
		cr_assert_eq(pc.routed_experts, want[i].routed, "%s", want[i].arch);
		cr_assert_eq(pc.ignored, want[i].ignored, "%s", want[i].arch);
		cr_assert_eq(pc.embedding, 20480);
		cr_assert_eq(pc.lm_head, o.d->tie_word_embeddings ? 0 : 20480);
		/* bf16 everywhere except deepseek's fp32 correction biases */
		uint64_t bytes = 0;
		for (int t = 0; t < CAL_DTYPE_COUNT; t++)
			bytes += pc.dtype_bytes[t];
		cr_assert_eq(bytes, pc.tensor_bytes);
		cr_assert_gt(pc.disk_bytes, pc.tensor_bytes);
		close_model(&o);
		free(dir);
	}
}

/* Rewrites one key of a fixture's config.json text (simple string edit). */
static char *config_with(const char *dir, const char *from, const char *to)
{
	char *path = cal_path_join(dir, "config.json"), *buf = NULL;
	size_t len;
	cr_assert_eq(cal_read_file(path, 1 << 20, &buf, &len, NULL), CAL_OK);
	free(path);
	char *at = strstr(buf, from);
	cr_assert_not_null(at, "'%s' not in config", from);
	char *out = NULL;
	cr_assert(asprintf(&out, "%.*s%s%s", (int)(at - buf), buf, to, at + strlen(from)) > 0);
	free(buf);
	return out;
}

static void expect_mismatch(const char *dir, const char *from, const char *to,
			    const char *const *needles)
{
	char *cfg = config_with(dir, from, to);
	struct opened o;
	struct cal_error err = {0};
	cr_assert_eq(open_model(dir, cfg, &o, &err), CAL_ERR_FORMAT, "'%s' -> '%s' accepted",
		     from, to);
	cr_assert_null(o.c);
	for (; *needles; needles++)
		cr_assert(strstr(cal_error_msg(&err), *needles), "message lacks '%s': %s",
			  *needles, cal_error_msg(&err));
	cal_error_clear(&err);
	close_model(&o);
	free(cfg);
}

Test(catalog, mismatches_named, .init = setup, .fini = teardown)
{
	char *dir = gen("qwen3_moe", CAL_FIXTURE_LAYOUT_DEFAULT, 0);
	/* one expert more in the config: its three tensors are missing */
	expect_mismatch(dir, "\"num_experts\": 8", "\"num_experts\": 9",
			(const char *const[]){"missing", "model.layers.0.mlp.experts.8.down_proj.weight",
					      "model.layers.0.mlp.gate.weight is [8,64], expected [9,64]",
					      NULL});
	/* a different expert width: mis-shaped, named with both shapes */
	expect_mismatch(dir, "\"moe_intermediate_size\": 48", "\"moe_intermediate_size\": 32",
			(const char *const[]){"mis-shaped",
					      "model.layers.0.mlp.experts.0.down_proj.weight is [64,48], expected [64,32]",
					      NULL});
	/* layer 0 declared dense: its experts are unexpected, its MLP missing */
	expect_mismatch(dir, "\"mlp_only_layers\": [\n    1\n  ]", "\"mlp_only_layers\": [0, 1]",
			(const char *const[]){"model.layers.0.mlp.down_proj.weight",
					      "unexpected: model.layers.0.mlp.experts.0.down_proj.weight",
					      NULL});
	/* fewer layers: the extra layer is ignored by rule, not an error */
	char *cfg = config_with(dir, "\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2");
	struct opened o;
	struct cal_error err = {0};
	cr_assert_eq(open_model(dir, cfg, &o, &err), CAL_OK, "%s", cal_error_msg(&err));
	struct cal_param_counts pc;
	cal_catalog_counts(o.c, &pc);
	cr_assert_gt(pc.ignored_tensors, 0);
	close_model(&o);
	free(cfg);
	free(dir);
}

Test(catalog, inspect_json_golden, .init = setup, .fini = teardown)
{
	const char *calibd = getenv("CALIBD");
	const char *golden = getenv("GOLDEN_DIR");
	cr_assert(calibd && golden, "CALIBD and GOLDEN_DIR must be set by meson");
	char *dir = gen("qwen3_moe", CAL_FIXTURE_LAYOUT_DEFAULT, 0);
	char *cmd = NULL;
	cr_assert(asprintf(&cmd, "'%s' inspect '%s' --json", calibd, dir) > 0);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	json_error_t je;
	json_t *got = json_loadf(p, 0, &je);
	cr_assert_eq(pclose(p), 0, "%s failed", cmd);
	cr_assert_not_null(got, "inspect output is not JSON: %s", je.text);
	cr_assert_str_eq(json_string_value(json_object_get(got, "model_dir")), dir);
	json_object_del(got, "model_dir");
	char *gpath = cal_path_join(golden, "inspect_qwen3_moe.json");
	json_t *want = json_load_file(gpath, 0, &je);
	cr_assert_not_null(want, "%s: %s", gpath, je.text);
	json_object_del(want, "model_dir");
	if (!json_equal(got, want)) {
		char *g = json_dumps(got, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		cr_assert_fail("inspect --json differs from %s; got:\n%s", gpath, g);
	}
	json_decref(got);
	json_decref(want);
	free(gpath);

	/* a bad model exits 3 and names the problem on stderr */
	free(cmd);
	cr_assert(asprintf(&cmd, "'%s' inspect '%s/nowhere' 2>/dev/null", calibd, tmp_root) > 0);
	int rc = system(cmd);
	cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 3, "exit %d", WEXITSTATUS(rc));
	free(cmd);
	free(dir);
}
