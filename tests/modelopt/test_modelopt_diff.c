/*
 * test_modelopt_diff.c — the differential test against real modelopt
 * (docs/modelopt_diff.md), without torch: for every (case, recipe) of
 * cases.txt, generates the tiny fixture, runs `calibd calibrate` on the
 * parity case's tokens and `calibd export --div exact` (or one `calibd
 * quantize --div exact` when the fingerprint says "calibd_run": "quantize":
 * smoothquant, whose folded weights exist only inside a run), and compares the
 * export with the committed modelopt fingerprint
 * (fingerprints/<case>/<recipe>.json, written by modelopt_fingerprints.py):
 *
 *   - the same tensor names, dtypes and shapes;
 *   - every tensor byte-equal (SHA-256), except the activation scales
 *     (input_scale, k_scale, v_scale), which come from our own forward pass:
 *     relative error median <= 1 %, worst <= 5 % per export (the parity
 *     test's amax tolerances), the worst printed;
 *   - hf_quant_config.json's "quantization" object equal (the producer
 *     differs by design: "calibd" vs "modelopt").
 *
 *   test_modelopt_diff TESTS_MODELOPT_DIR PARITY_DIR   (env CALIBD = the binary)
 *
 * A table without any fingerprint is a SKIP (exit 77); a row without its
 * fingerprint fails.
 */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/sha256.h"
#include "common/fsutil.h"
#include "common/util.h"
#include "tests/fixtures/fixture.h"

#define ACT_MEDIAN_TOL 0.01
#define ACT_WORST_TOL 0.05
#define MAX_RECIPES 8

static const char *const recipes_all[] = {
	"general/ptq/nvfp4_experts_only-kv_fp8",
	"general/ptq/nvfp4_default-kv_fp8",
	"general/ptq/fp8_default-kv_fp8",
};

struct row {
	char case_name[64], arch[64], layout[32], recipes[1024];
	const char *parity_case; /* "case:parity" in cases.txt, else case_name */
};

static int is_act_scale(const char *name)
{
	/* "_input_scale": gpt_oss's BMM experts (docs/gpt_oss.md) */
	static const char *const suf[] = {".input_scale", "_input_scale", ".k_scale", ".v_scale"};
	size_t l = strlen(name);
	for (size_t i = 0; i < CAL_ARRAY_LEN(suf); i++) {
		size_t s = strlen(suf[i]);
		if (l > s && !strcmp(name + l - s, suf[i]))
			return 1;
	}
	return 0;
}

static int ends_with(const char *s, const char *suf)
{
	size_t l = strlen(s), n = strlen(suf);
	return l > n && !strcmp(s + l - n, suf);
}

/* SmoothQuant (docs/smoothquant.md "Differential test"): a pre_quant_scale
 * comes from the per-channel activation amax of our own forward pass, whose
 * bf16 values may differ from transformers' in a few ulps (summation order).
 * Where it differs, the median of its elements' relative errors must be
 * within SQ_PQS_MEDIAN_TOL and the worst within SQ_PQS_WORST_TOL (a channel
 * whose max comes from a token routed differently in an MoE layer can move
 * more), and the module's weight and weight_scale (folded with it) are
 * reported, not compared; where it is byte-equal, they must be byte-equal
 * too. */
#define SQ_PQS_MEDIAN_TOL 0.01
#define SQ_PQS_WORST_TOL 0.25

/* Affine KV biases (k_bias / v_bias, docs/modelopt_diff.md): the first
 * layer's equal modelopt's to one bf16 ulp per value (GQA's are
 * byte-equal; MLA's V passes kv_a_proj, a norm and kv_b_proj, where one
 * element of calibd's forward can differ from torch's by a rounding, which
 * moves that channel's mean by one ulp); later layers' are
 * means of activations calibd's forward reproduces to rounding, so each
 * value must be within KV_BIAS_TOL of max|bias| of its tensor
 * (KV_BIAS_TOL_MLA for DeepSeek-V3's MLA, whose plain v_scale already
 * differs by 0.8% in layer 2). */
#define KV_BIAS_TOL 0.02
#define KV_BIAS_TOL_MLA 0.04

/* The bf16 bits of a value that is a bf16. */
static uint32_t bf16_bits(double v)
{
	float f = (float)v;
	uint32_t u;
	memcpy(&u, &f, 4);
	return u >> 16;
}

/* The bias's check (tol: the later layers' tolerance): 0 when it passes,
 * else 1 (printed). */
static int kv_bias_check(const char *k, json_t *rv, json_t *mv, double tol, size_t *n_diff,
			 double *worst)
{
	size_t n = json_array_size(rv), ulps = 0;
	double top = 0, e = 0;
	if (!rv || !mv || n != json_array_size(mv)) {
		printf("    FAIL: %s: bytes differ from modelopt's (no values)\n", k);
		return 1;
	}
	for (size_t i = 0; i < n; i++)
		top = fmax(top, fabs(json_number_value(json_array_get(rv, i))));
	for (size_t i = 0; i < n; i++) {
		double d = fabs(json_number_value(json_array_get(rv, i)) -
				json_number_value(json_array_get(mv, i)));
		uint32_t a = bf16_bits(json_number_value(json_array_get(rv, i))),
			 b = bf16_bits(json_number_value(json_array_get(mv, i)));
		*n_diff += d != 0;
		ulps += d != 0 && ((a ^ b) & 0x8000u || (a > b ? a - b : b - a) > 1);
		e = fmax(e, d / fmax(top, 1e-30));
	}
	*worst = fmax(*worst, e);
	if (strstr(k, "layers.0.") && ulps) {
		printf("    FAIL: %s: %zu values of the first layer's bias differ from modelopt's "
		       "by more than one bf16 ulp\n", k, ulps);
		return 1;
	}
	if (e > tol) {
		printf("    FAIL: %s: worst difference %.3e of max|bias| (tolerance %.0e)\n", k, e,
		       tol);
		return 1;
	}
	return 0;
}

/* "<module>" of "<module>.weight" / ".weight_scale" when that module's
 * pre_quant_scale differs (listed in pqs_diff). */
static int follows_pqs(const char *k, json_t *pqs_diff)
{
	static const char *const suf[] = {".weight", ".weight_scale"};
	for (size_t i = 0; i < CAL_ARRAY_LEN(suf); i++) {
		size_t l = strlen(k), n = strlen(suf[i]);
		if (l > n && !strcmp(k + l - n, suf[i])) {
			char mod[512];
			snprintf(mod, sizeof(mod), "%.*s", (int)(l - n), k);
			if (json_object_get(pqs_diff, mod))
				return 1;
		}
	}
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Adds every tensor of one safetensors file to `out` as
 * name -> {dtype, shape, sha256, values (F32 only)}; 0 ok, -1 error. */
static int read_st(const char *path, json_t *out)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -1;
	uint8_t hb[8];
	int rc = -1;
	char *hdr = NULL;
	uint8_t *data = NULL;
	json_t *h = NULL;
	if (fread(hb, 1, 8, f) != 8)
		goto out;
	uint64_t n = 0;
	for (int i = 7; i >= 0; i--)
		n = n << 8 | hb[i];
	if (n > (1u << 30) || !(hdr = malloc(n)) || fread(hdr, 1, n, f) != n)
		goto out;
	if (!(h = json_loadb(hdr, n, 0, NULL)))
		goto out;
	const char *k;
	json_t *v;
	json_object_foreach(h, k, v) {
		if (!strcmp(k, "__metadata__"))
			continue;
		json_t *off = json_object_get(v, "data_offsets");
		uint64_t a = (uint64_t)json_integer_value(json_array_get(off, 0));
		uint64_t b = (uint64_t)json_integer_value(json_array_get(off, 1));
		free(data);
		data = malloc(b - a + 1);
		if (!data || fseek(f, (long)(8 + n + a), SEEK_SET) ||
		    fread(data, 1, b - a, f) != b - a)
			goto out;
		uint8_t d[CAL_SHA256_LEN];
		char hex[65];
		cal_sha256(data, b - a, d);
		cal_sha256_hex(d, hex);
		json_t *e = json_pack("{s:O, s:O, s:s}", "dtype", json_object_get(v, "dtype"),
				      "shape", json_object_get(v, "shape"), "sha256", hex);
		if (!strcmp(json_string_value(json_object_get(v, "dtype")), "F32") &&
		    (b - a) / 4 <= 64) {
			json_t *vals = json_array();
			for (uint64_t i = 0; i < (b - a) / 4; i++) {
				float x;
				memcpy(&x, data + 4 * i, 4);
				json_array_append_new(vals, json_real(x));
			}
			json_object_set_new(e, "values", vals);
		} else if (!strcmp(json_string_value(json_object_get(v, "dtype")), "BF16") &&
			   (ends_with(k, ".pre_quant_scale") || ends_with(k, ".k_bias") ||
			    ends_with(k, ".v_bias")) && (b - a) / 2 <= 4096) {
			json_t *vals = json_array();
			for (uint64_t i = 0; i < (b - a) / 2; i++) {
				uint32_t u = (uint32_t)(data[2 * i] | data[2 * i + 1] << 8) << 16;
				float x;
				memcpy(&x, &u, 4);
				json_array_append_new(vals, json_real(x));
			}
			json_object_set_new(e, "values", vals);
		}
		json_object_set_new(out, k, e);
	}
	rc = 0;
out:
	json_decref(h);
	free(hdr);
	free(data);
	fclose(f);
	return rc;
}

static int run(const char *cmd)
{
	int r = system(cmd);
	if (r != 0)
		printf("    FAIL: `%s` exited %d\n", cmd, WIFEXITED(r) ? WEXITSTATUS(r) : -1);
	return r == 0 ? 0 : -1;
}

/* Compares calibd's export `out` with the fingerprint fp; prints and returns
 * the number of problems. */
static int compare(const char *out, json_t *fp)
{
	int bad = 0;
	json_t *mine = json_object();
	char path[8192];
	DIR *dh = opendir(out);
	struct dirent *de;
	int n_files = 0;
	while (dh && (de = readdir(dh)) != NULL) {
		size_t l = strlen(de->d_name);
		if (l < 12 || strcmp(de->d_name + l - 12, ".safetensors"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", out, de->d_name);
		n_files++;
		if (read_st(path, mine) < 0) {
			printf("    FAIL: cannot read %s\n", path);
			bad++;
		}
	}
	if (dh)
		closedir(dh);
	if (!n_files) {
		printf("    FAIL: no safetensors file in %s\n", out);
		bad++;
	}
	json_t *ref = json_object_get(fp, "tensors");
	size_t n_ref = json_object_size(ref), n_act = 0, n_eq = 0;
	double *rel = calloc(n_ref + 1, sizeof(double)), worst = 0;
	const char *worst_name = "-";
	const char *k;
	json_t *r;
	json_t *pqs_diff = json_object();
	size_t n_pqs = 0, n_pqs_elems = 0, n_follow = 0, n_bias = 0, n_bias_vals = 0;
	double pqs_worst = 0, bias_worst = 0;
	const char *arch = json_string_value(json_object_get(json_object_get(fp, "fixture"), "arch"));
	int mla = arch && !strcmp(arch, "deepseek_v3");
	json_object_foreach(ref, k, r) {
		json_t *m = json_object_get(mine, k);
		if (m && ends_with(k, ".pre_quant_scale") &&
		    strcmp(json_string_value(json_object_get(r, "sha256")),
			   json_string_value(json_object_get(m, "sha256")))) {
			char mod[512];
			snprintf(mod, sizeof(mod), "%.*s", (int)(strlen(k) - 16), k);
			json_object_set_new(pqs_diff, mod, json_true());
		}
	}
	json_object_foreach(ref, k, r) {
		json_t *m = json_object_get(mine, k);
		if (!m) {
			if (bad++ < 20)
				printf("    FAIL: %s: written by modelopt, not by calibd\n", k);
			continue;
		}
		if (!json_equal(json_object_get(r, "dtype"), json_object_get(m, "dtype")) ||
		    !json_equal(json_object_get(r, "shape"), json_object_get(m, "shape"))) {
			if (bad++ < 20)
				printf("    FAIL: %s: dtype/shape differ\n", k);
			continue;
		}
		if (!strcmp(json_string_value(json_object_get(r, "sha256")),
			    json_string_value(json_object_get(m, "sha256")))) {
			n_eq++;
			if (!is_act_scale(k))
				continue;
		}
		json_t *rv = json_object_get(r, "values"), *mv = json_object_get(m, "values");
		if (is_act_scale(k) && rv && mv && json_array_size(rv) == json_array_size(mv)) {
			double e = 0;
			for (size_t i = 0; i < json_array_size(rv); i++) {
				double a = json_number_value(json_array_get(rv, i));
				double b = json_number_value(json_array_get(mv, i));
				double d = fabs(a - b) / fmax(fabs(a), 1e-30);
				e = d > e ? d : e;
			}
			rel[n_act++] = e;
			if (e > worst) {
				worst = e;
				worst_name = k;
			}
			continue;
		}
		if (ends_with(k, ".pre_quant_scale") && rv && mv &&
		    json_array_size(rv) == json_array_size(mv)) {
			size_t ne = json_array_size(rv);
			double *er = calloc(ne + 1, sizeof(double));
			for (size_t i = 0; er && i < ne; i++) {
				double a = json_number_value(json_array_get(rv, i));
				double b = json_number_value(json_array_get(mv, i));
				er[i] = fabs(a - b) / fmax(fabs(a), 1e-30);
				n_pqs_elems += a != b;
			}
			if (er)
				qsort(er, ne, sizeof(double), cmp_double);
			double med = er && ne ? er[ne / 2] : 1, e = er && ne ? er[ne - 1] : 1;
			free(er);
			n_pqs++;
			pqs_worst = e > pqs_worst ? e : pqs_worst;
			if ((med > SQ_PQS_MEDIAN_TOL || e > SQ_PQS_WORST_TOL) && bad++ < 20)
				printf("    FAIL: %s: relative error median %.3e, worst %.3e (tolerance "
				       "%.0e, %.0e)\n", k, med, e, SQ_PQS_MEDIAN_TOL,
				       SQ_PQS_WORST_TOL);
			continue;
		}
		if (ends_with(k, ".k_bias") || ends_with(k, ".v_bias")) {
			n_bias++;
			bad += kv_bias_check(k, rv, mv, mla ? KV_BIAS_TOL_MLA : KV_BIAS_TOL,
					     &n_bias_vals, &bias_worst);
			continue;
		}
		if (follows_pqs(k, pqs_diff)) {
			n_follow++;
			continue;
		}
		if (bad++ < 20)
			printf("    FAIL: %s: bytes differ from modelopt's\n", k);
	}
	if (n_pqs)
		printf("    smoothquant: %zu pre_quant_scales differ (%zu values, worst rel. error "
		       "%.3e: our forward's activations), %zu weight / weight_scale tensors "
		       "folded with them not compared\n", n_pqs, n_pqs_elems, pqs_worst, n_follow);
	if (n_bias)
		printf("    affine KV: %zu k/v biases differ from modelopt's (%zu values, worst %.3e "
		       "of max|bias|)\n", n_bias, n_bias_vals, bias_worst);
	json_decref(pqs_diff);
	json_object_foreach(mine, k, r) {
		if (!json_object_get(ref, k) && bad++ < 20)
			printf("    FAIL: %s: written by calibd, not by modelopt\n", k);
	}
	double median = 0;
	if (n_act) {
		qsort(rel, n_act, sizeof(double), cmp_double);
		median = rel[n_act / 2];
	}
	printf("    tensors: %zu (%zu byte-equal); activation scales: %zu, median rel. "
	       "error %.3e, worst %.3e (%s)\n", n_ref, n_eq, n_act, median, worst, worst_name);
	if (median > ACT_MEDIAN_TOL || worst > ACT_WORST_TOL) {
		printf("    FAIL: activation scales beyond tolerance (median %.0e, worst %.0e)\n",
		       ACT_MEDIAN_TOL, ACT_WORST_TOL);
		bad++;
	}
	free(rel);

	snprintf(path, sizeof(path), "%s/hf_quant_config.json", out);
	json_t *hq = json_load_file(path, 0, NULL);
	json_t *want = json_object_get(json_object_get(fp, "hf_quant_config"), "quantization");
	json_t *got = hq ? json_object_get(hq, "quantization") : NULL;
	if (!got || !json_equal(want, got)) {
		char *a = json_dumps(want, JSON_SORT_KEYS | JSON_COMPACT);
		char *b = got ? json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
		printf("    FAIL: hf_quant_config.json differs\n      modelopt: %s\n      calibd:   "
		       "%s\n", a ? a : "?", b ? b : "(missing)");
		free(a);
		free(b);
		bad++;
	} else {
		printf("    hf_quant_config.json: quantization equal\n");
	}
	json_decref(hq);
	json_decref(mine);
	return bad;
}

/* The built-in recipe `calibd quantize --qformat name` runs, from
 * `calibd recipes --json` (engine/recipe/qformat.c), or NULL; the caller
 * frees it. */
static char *qformat_recipe(const char *calibd, const char *name)
{
	char cmd[4200];
	snprintf(cmd, sizeof(cmd), "'%s' recipes --json", calibd);
	FILE *p = popen(cmd, "r");
	if (!p)
		return NULL;
	json_t *doc = json_loadf(p, 0, NULL);
	pclose(p);
	char *ret = NULL;
	size_t i;
	json_t *q;
	json_array_foreach(json_object_get(doc, "qformats"), i, q) {
		const char *r = json_string_value(json_object_get(q, "recipe"));
		if (r && !strcmp(json_string_value(json_object_get(q, "name")), name))
			ret = strdup(r);
	}
	json_decref(doc);
	return ret;
}

/* One recipe item of cases.txt: a built-in recipe name, "qformat:NAME"
 * (hf_ptq.py --qformat NAME, modelopt_fingerprints.py), whose fingerprint
 * is qformat_NAME.json and which calibd runs as the recipe the qformat maps
 * to, or "test:NAME", the test's own recipe file dir/recipes/NAME.yaml
 * (fingerprint test_NAME.json). */
static int do_case(const char *dir, const char *parity, const char *calibd,
		   const struct row *rw, const char *item, int *have_any)
{
	char path[4096], cmd[16384], base[128];
	const char *recipe = item;
	char *mapped = NULL;
	if (!strncmp(item, "qformat:", 8)) {
		snprintf(base, sizeof(base), "qformat_%s", item + 8);
		if (!(mapped = qformat_recipe(calibd, item + 8))) {
			printf("== %s %s\n    FAIL: `calibd recipes --json` maps qformat %s to no "
			       "recipe\n", rw->case_name, item, item + 8);
			return 1;
		}
		recipe = mapped;
	} else if (!strncmp(item, "test:", 5)) {
		snprintf(base, sizeof(base), "test_%s", item + 5);
		size_t len = strlen(dir) + strlen(item) + 32;
		if (!(mapped = malloc(len)))
			return 1;
		snprintf(mapped, len, "%s/recipes/%s.yaml", dir, item + 5);
		recipe = mapped;
	} else {
		snprintf(base, sizeof(base), "%s",
			 strrchr(item, '/') ? strrchr(item, '/') + 1 : item);
	}
	snprintf(path, sizeof(path), "%s/fingerprints/%s/%s.json", dir, rw->case_name, base);
	printf("== %s %s%s%s\n", rw->case_name, item, mapped ? " -> " : "", mapped ? mapped : "");
	json_t *fp = json_load_file(path, 0, NULL);
	if (!fp) {
		printf("    FAIL: no fingerprint %s (tests/modelopt/make_fingerprints.sh)\n", path);
		free(mapped);
		return 1;
	}
	*have_any = 1;
	char tmpl[] = "/tmp/calibd-mdiff-XXXXXX";
	char *tmp = mkdtemp(tmpl);
	int bad = 0;
	if (!tmp) {
		json_decref(fp);
		printf("    FAIL: mkdtemp\n");
		free(mapped);
		return 1;
	}
	char fx[4200], stats[4200], out[4200];
	snprintf(fx, sizeof(fx), "%s/fixture", tmp);
	snprintf(stats, sizeof(stats), "%s/stats.json", tmp);
	snprintf(out, sizeof(out), "%s/out", tmp);
	struct cal_fixture_opts fo = {.arch = rw->arch,
				      .seed = (uint64_t)json_integer_value(json_object_get(
					      json_object_get(fp, "fixture"), "seed"))};
	struct cal_error err = {0};
	fo.wide = !strcmp(rw->layout, "wide"); /* every linear input a multiple of 128 */
	if (strcmp(rw->layout, "default") && !fo.wide &&
	    cal_fixture_layout_parse(rw->layout, &fo.layout) < 0) {
		printf("    FAIL: unknown layout %s\n", rw->layout);
		bad++;
	} else if (cal_fixture_write(&fo, fx, &err) < 0) {
		printf("    FAIL: fixture: %s\n", cal_error_msg(&err));
		bad++;
	} else if (json_string_value(json_object_get(fp, "calibd_run")) &&
		   !strcmp(json_string_value(json_object_get(fp, "calibd_run")), "quantize")) {
		/* an algorithm that changes the weights (smoothquant): one run */
		snprintf(cmd, sizeof(cmd),
			 "'%s' quantize --model '%s' --recipe '%s' --calib-tokens "
			 "'%s/%s/tokens.jsonl' --out '%s' --div exact --quiet >/dev/null",
			 calibd, fx, recipe, parity, rw->parity_case, out);
		bad += run(cmd) < 0 ? 1 : compare(out, fp);
	} else {
		snprintf(cmd, sizeof(cmd),
			 "'%s' calibrate --model '%s' --recipe '%s' --calib-tokens "
			 "'%s/%s/tokens.jsonl' --stats-out '%s' --quiet",
			 calibd, fx, recipe, parity, rw->parity_case, stats);
		if (run(cmd) < 0) {
			bad++;
		} else {
			snprintf(cmd, sizeof(cmd),
				 "'%s' export --model '%s' --recipe '%s' --stats '%s' --out '%s' "
				 "--div exact >/dev/null", calibd, fx, recipe, stats, out);
			bad += run(cmd) < 0 ? 1 : compare(out, fp);
		}
	}
	cal_error_clear(&err);
	if (cal_rmtree(tmp, NULL) < 0)
		printf("    (could not remove %s)\n", tmp);
	json_decref(fp);
	free(mapped);
	return bad;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: test_modelopt_diff TESTS_MODELOPT_DIR PARITY_DIR\n");
		return 2;
	}
	const char *calibd = getenv("CALIBD");
	if (!calibd) {
		fprintf(stderr, "test_modelopt_diff: set CALIBD to the calibd binary\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	char path[4096];
	snprintf(path, sizeof(path), "%s/cases.txt", argv[1]);
	FILE *f = fopen(path, "r");
	if (!f) {
		perror(path);
		return 1;
	}
	char line[2048];
	int fails = 0, have_any = 0, n_runs = 0;
	while (fgets(line, sizeof(line), f)) {
		char *h = strchr(line, '#');
		if (h)
			*h = 0;
		struct row rw;
		if (sscanf(line, "%63s %63s %31s %1023s", rw.case_name, rw.arch, rw.layout,
			   rw.recipes) != 4)
			continue;
		char *colon = strchr(rw.case_name, ':');
		rw.parity_case = colon ? colon + 1 : rw.case_name;
		if (colon)
			*colon = '\0';
		if (!strcmp(rw.recipes, "all")) {
			for (size_t i = 0; i < CAL_ARRAY_LEN(recipes_all); i++, n_runs++)
				fails += do_case(argv[1], argv[2], calibd, &rw, recipes_all[i],
						 &have_any) != 0;
			continue;
		}
		for (char *save = NULL, *r = strtok_r(rw.recipes, ",", &save); r;
		     r = strtok_r(NULL, ",", &save), n_runs++)
			fails += do_case(argv[1], argv[2], calibd, &rw, r, &have_any) != 0;
	}
	fclose(f);
	if (!have_any) {
		printf("SKIP: no modelopt fingerprints under %s/fingerprints\n", argv[1]);
		return 77;
	}
	printf("%d of %d exports differ from modelopt's\n", fails, n_runs);
	return fails ? 1 : 0;
}
