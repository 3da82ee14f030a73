/*
 * test_config_compat.c — config.json spellings (docs/config_compat.md):
 *
 *   - every supported model type in its hub 4.x-era spelling
 *     (configs/hub/) and as transformers 5 save_pretrained writes it
 *     (configs/tf5/) gives the identical model description;
 *   - every tiny fixture and its transformers-saved config.json
 *     (configs/fixtures/) give the identical `calibd inspect --json`;
 *   - aliases, contradictions and missing required keys.
 *
 * configs/ is written by configs/make_configs.py (needs transformers).
 * Env: CONFIGS_DIR, CALIBD (the binary).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "engine/model/model.h"
#include "tests/fixtures/fixture.h"
#include "testutil.h"

static const char *const types[] = {
	"qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "qwen3_next", "qwen3_5_moe",
	"qwen3_5_moe_text", "deepseek_v3", "gpt_oss", "llama", "qwen2", "qwen3",
};

static struct cal_model_desc *load(const char *sub, const char *type)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s/%s.json", getenv("CONFIGS_DIR"), sub, type);
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s missing (configs/make_configs.py)", path);
	static char buf[1 << 20];
	size_t n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	struct cal_model_desc *d = NULL;
	struct cal_error err = {0};
	cr_assert_eq(cal_model_desc_parse(path, buf, n, &d, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	return d;
}

static int str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && !strcmp(a, b));
}

/* Every field equal: the strings by content, the rest bytewise (both
 * descriptions are calloc'ed, so padding is zero in both). */
static void assert_same(const struct cal_model_desc *a, const struct cal_model_desc *b,
			const char *what)
{
	cr_assert(str_eq(a->model_type, b->model_type), "%s: model_type", what);
	cr_assert(str_eq(a->architecture, b->architecture), "%s: architectures", what);
	cr_assert(str_eq(a->dtype, b->dtype), "%s: dtype '%s' vs '%s'", what,
		  a->dtype ? a->dtype : "-", b->dtype ? b->dtype : "-");
	cr_assert_eq(a->n_not_convert, b->n_not_convert, "%s: modules_to_not_convert", what);
	for (size_t i = 0; i < a->n_not_convert; i++)
		cr_assert_str_eq(a->not_convert[i], b->not_convert[i], "%s", what);
	cr_assert_eq(a->num_layers, b->num_layers, "%s: num_hidden_layers", what);
	cr_assert(!memcmp(a->layers, b->layers, (size_t)a->num_layers * sizeof(*a->layers)),
		  "%s: layer kinds differ", what);
	struct cal_model_desc x, y;
	memcpy(&x, a, sizeof(x));
	memcpy(&y, b, sizeof(y));
	x.model_type = y.model_type = x.architecture = y.architecture = NULL;
	x.dtype = y.dtype = NULL;
	x.not_convert = y.not_convert = NULL;
	x.layers = y.layers = NULL;
	cr_assert_eq(x.num_experts, y.num_experts, "%s: experts %lld vs %lld", what,
		     (long long)x.num_experts, (long long)y.num_experts);
	cr_assert_eq(x.top_k, y.top_k, "%s: top_k", what);
	cr_assert(!memcmp(&x.rope, &y.rope, sizeof(x.rope)), "%s: rope differs", what);
	cr_assert(!memcmp(&x, &y, sizeof(x)), "%s: descriptions differ", what);
}

Test(config_compat, hub_and_transformers5_spellings_agree)
{
	for (size_t i = 0; i < CAL_ARRAY_LEN(types); i++) {
		struct cal_model_desc *h = load("hub", types[i]), *t = load("tf5", types[i]);
		assert_same(h, t, types[i]);
		cr_assert(h->num_layers > 1, "%s", types[i]);
		cal_model_desc_free(h);
		cal_model_desc_free(t);
	}
}

Test(config_compat, hub_values_read_right)
{
	/* the counts the releases state, whatever the spelling */
	static const struct {
		const char *type;
		int64_t experts, top_k, layers, nextn;
	} want[] = {
		{"qwen3_moe", 128, 8, 48, 0},  {"qwen2_moe", 60, 4, 24, 0},
		{"mixtral", 8, 2, 32, 0},      {"olmoe", 64, 8, 16, 0},
		{"qwen3_next", 512, 10, 48, 0}, {"qwen3_5_moe", 256, 8, 40, 0},
		{"deepseek_v3", 256, 8, 61, 1}, {"gpt_oss", 32, 4, 24, 0},
		{"llama", 0, 0, 32, 0},
	};
	for (size_t i = 0; i < CAL_ARRAY_LEN(want); i++) {
		for (int s = 0; s < 2; s++) {
			struct cal_model_desc *d = load(s ? "tf5" : "hub", want[i].type);
			cr_assert_eq(d->num_experts, want[i].experts, "%s", want[i].type);
			cr_assert_eq(d->top_k, want[i].top_k, "%s", want[i].type);
			cr_assert_eq(d->num_layers, want[i].layers, "%s", want[i].type);
			cr_assert_eq(d->num_nextn_predict_layers, want[i].nextn, "%s",
				     want[i].type);
			cal_model_desc_free(d);
		}
	}
}

static char *inspect(const char *dir)
{
	char cmd[8192];
	snprintf(cmd, sizeof(cmd), "'%s' inspect '%s' --json", getenv("CALIBD"), dir);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	size_t r;
	while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
		n += r;
		if (n + 1 == cap)
			buf = realloc(buf, cap *= 2);
	}
	buf[n] = 0;
	cr_assert_eq(pclose(p), 0, "calibd inspect %s failed", dir);
	return buf;
}

Test(config_compat, fixtures_in_transformers_form_inspect_the_same)
{
	char tmpl[] = "/tmp/calibd-cfgcompat-XXXXXX";
	char *tmp = mkdtemp(tmpl);
	cr_assert_not_null(tmp);
	for (size_t i = 0; i < cal_fixture_arch_count(); i++) {
		const char *arch = cal_fixture_arch_name(i);
		char dir[4096], cfg[4200], saved[4096], cmd[16384];
		snprintf(dir, sizeof(dir), "%s/%s", tmp, arch);
		struct cal_fixture_opts o = {.arch = arch, .seed = 1};
		struct cal_error err = {0};
		cr_assert_eq(cal_fixture_write(&o, dir, &err), CAL_OK, "%s", cal_error_msg(&err));
		char *a = inspect(dir);
		snprintf(cfg, sizeof(cfg), "%s/config.json", dir);
		snprintf(saved, sizeof(saved), "%s/fixtures/%s.json", getenv("CONFIGS_DIR"), arch);
		cr_assert_eq(access(saved, R_OK), 0, "%s missing (configs/make_configs.py)", saved);
		snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", saved, cfg);
		cr_assert_eq(system(cmd), 0);
		char *b = inspect(dir);
		json_t *ja = json_loads(a, 0, NULL), *jb = json_loads(b, 0, NULL);
		cr_assert(ja && jb, "%s: inspect output is not JSON", arch);
		cr_assert(json_equal(ja, jb), "%s: inspect differs for the transformers-saved "
			  "config.json:\n%s\n---\n%s", arch, a, b);
		json_decref(ja);
		json_decref(jb);
		free(a);
		free(b);
	}
	cal_test_rm_rf(tmp);
}

/* ---- aliases, contradictions, required keys -------------------------------- */

static enum cal_status parse(const char *json, struct cal_model_desc **d, struct cal_error *err)
{
	return cal_model_desc_parse("test", json, strlen(json), d, err);
}

static void expect_error(const char *json, const char *n1, const char *n2)
{
	struct cal_model_desc *d = NULL;
	struct cal_error err = {0};
	cr_assert_eq(parse(json, &d, &err), CAL_ERR_FORMAT, "%s", json);
	cr_assert_null(d);
	cr_assert(strstr(cal_error_msg(&err), n1), "'%s' lacks %s", cal_error_msg(&err), n1);
	if (n2)
		cr_assert(strstr(cal_error_msg(&err), n2), "'%s' lacks %s", cal_error_msg(&err),
			  n2);
	cal_error_clear(&err);
}

#define Q3 "\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":2,\"moe_intermediate_size\":8," \
	   "\"num_experts_per_tok\":2,"

Test(config_compat, aliases_and_contradictions)
{
	struct cal_model_desc *d = NULL;
	struct cal_error err = {0};
	cr_assert_eq(parse("{" Q3 "\"num_local_experts\":16}", &d, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_assert_eq(d->num_experts, 16);
	cal_model_desc_free(d);
	cr_assert_eq(parse("{" Q3 "\"num_local_experts\":16,\"num_experts\":16.0}", &d, &err),
		     CAL_OK, "%s", cal_error_msg(&err));
	cal_model_desc_free(d);
	expect_error("{" Q3 "\"num_experts\":8,\"num_local_experts\":16}", "'num_experts' (8)",
		     "'num_local_experts' (16)");
	expect_error("{\"model_type\":\"qwen3_moe\",\"num_experts\":8,\"moe_intermediate_size\":8}",
		     "num_experts_per_tok", "missing");
	expect_error("{\"model_type\":\"qwen3_moe\",\"num_experts_per_tok\":2}", "'num_experts'",
		     "'num_local_experts'");
	expect_error("{\"model_type\":\"olmoe\",\"num_experts\":8,\"num_experts_per_tok\":2}",
		     "intermediate_size", "missing");
	expect_error("{\"model_type\":\"deepseek_v3\",\"n_routed_experts\":8,"
		     "\"num_local_experts\":4}", "n_routed_experts", "num_local_experts");
	expect_error("{\"model_type\":\"gpt_oss\",\"num_local_experts\":8,\"intermediate_size\":8,"
		     "\"num_experts_per_tok\":4,\"experts_per_token\":2}", "'num_experts_per_tok' (4)",
		     "'experts_per_token' (2)");
	expect_error("{" Q3 "\"num_experts\":8,\"dtype\":\"bfloat16\",\"torch_dtype\":\"float16\"}",
		     "'dtype'", "'torch_dtype'");
	/* RoPE: both forms, each field once or agreeing */
	cr_assert_eq(parse("{" Q3 "\"num_experts\":8,\"rope_theta\":1e6,\"rope_scaling\":{\"type\":"
			   "\"linear\",\"factor\":2},\"rope_parameters\":{\"rope_type\":\"linear\","
			   "\"factor\":2.0,\"rope_theta\":1000000}}", &d, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_assert_eq(d->rope.type, CAL_ROPE_LINEAR);
	cr_assert_eq(d->rope.theta, 1e6);
	cal_model_desc_free(d);
	expect_error("{" Q3 "\"num_experts\":8,\"rope_scaling\":{\"type\":\"linear\",\"factor\":2},"
		     "\"rope_parameters\":{\"rope_type\":\"linear\",\"factor\":4}}",
		     "rope_scaling.factor", "rope_parameters.factor");
	expect_error("{" Q3 "\"num_experts\":8,\"rope_scaling\":{\"type\":\"yarn\"},"
		     "\"rope_parameters\":{\"rope_type\":\"linear\"}}", "rope_scaling.type",
		     "rope_parameters.rope_type");
	expect_error("{" Q3 "\"num_experts\":8,\"rope_theta\":10000,\"rope_parameters\":"
		     "{\"rope_theta\":1000000}}", "'rope_theta' (10000)",
		     "rope_parameters.rope_theta");
	expect_error("{" Q3 "\"num_experts\":8,\"rope_scaling\":{\"type\":\"yarn\",\"rope_type\":"
		     "\"linear\"}}", "rope_scaling.type", "rope_scaling.rope_type");
	/* num_nextn_predict_layers and its alias */
	cr_assert_eq(parse("{\"model_type\":\"deepseek_v3\",\"n_routed_experts\":8,"
			   "\"num_experts_per_tok\":2,\"moe_intermediate_size\":8,\"n_group\":1,"
			   "\"topk_group\":1,\"num_hidden_layers\":4,\"num_mtp_layers\":1}", &d,
			   &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(d->num_nextn_predict_layers, 1);
	cal_model_desc_free(d);
}
