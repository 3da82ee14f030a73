/*
 * test_algo.c — suite unit, the calibration algorithms on single linears.
 * GPTQ: the `hessian` op against a naive double sum,
 * GPTQ (engine/gptq.h) on synthetic linears (better than plain rounding,
 * values on the NVFP4 grid, dead columns, the identity fallback, bad
 * arguments), and the differential test against real modelopt's GPTQ
 * (docs/gptq.md): the fingerprints in tests/modelopt/gptq/ hold modelopt's
 * updated weight for a generated linear; the block scales must be
 * byte-equal, the layer-output MSE on the calibration tokens no worse than
 * modelopt's; the share of differing codes is printed.
 * SmoothQuant (docs/smoothquant.md): against tests/modelopt/smoothquant/,
 * every output byte-equal.  AWQ-lite (docs/awq.md): against
 * tests/modelopt/awq/: the same alpha chosen, its outputs byte-equal, the
 * search's losses printed beside modelopt's; the export fold (AWQ and
 * SmoothQuant) against tests/modelopt/awq_export/, byte-equal.  MODELOPT_ALGO_DIR names tests/modelopt.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sha256.h"
#include "engine/awq.h"
#include "engine/gptq.h"
#include "engine/headroom.h"
#include "engine/smoothquant.h"
#include "kernels/ops.h"

static struct cal_backend *cpu(unsigned threads)
{
	struct cal_backend_opts o = {0};
	struct cal_backend *be = NULL;
	struct cal_error err = {0};
	o.cpu_threads = threads;
	cr_assert_eq(cal_backend_init(CAL_BACKEND_CPU, &o, &be, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	return be;
}

/* The generator of tests/modelopt/gptq_fingerprint.py. */
static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

static float gen_u(uint64_t *s)
{
	return (float)((double)(splitmix(s) >> 40) / (double)(1u << 24) * 2.0 - 1.0);
}

struct lin {
	uint64_t rows, cols, tokens;
	uint16_t *w, *x;
};

static void lin_gen(struct lin *l, uint64_t rows, uint64_t cols, uint64_t tokens, uint64_t seed,
		    uint64_t dead)
{
	uint64_t s = seed;
	l->rows = rows, l->cols = cols, l->tokens = tokens;
	l->w = malloc(rows * cols * 2);
	l->x = malloc(tokens * cols * 2);
	for (uint64_t i = 0; i < rows * cols; i++) {
		float v = gen_u(&s) * 0.05f;
		l->w[i] = cal_nf_f32_to_bf16(i % cols == dead ? 0.0f : v);
	}
	s = seed + 1;
	for (uint64_t i = 0; i < tokens * cols; i++)
		l->x[i] = cal_nf_f32_to_bf16(gen_u(&s) * ((i % cols) % 11 == 0 ? 4.0f : 1.0f));
}

static void lin_free(struct lin *l)
{
	free(l->w);
	free(l->x);
}

/* Hessian sum over the tokens, in batches of `batch` rows (one op call each). */
static float *lin_hessian(struct cal_backend *be, const struct lin *l, uint64_t batch)
{
	struct cal_error err = {0};
	float *h = calloc(l->cols * l->cols, sizeof(float));
	for (uint64_t t = 0; t < l->tokens; t += batch) {
		uint64_t n = t + batch <= l->tokens ? batch : l->tokens - t;
		struct cal_hessian_args a = {CAL_DTYPE_BF16, l->x + t * l->cols, n, l->cols, NULL, 0, h};
		cr_assert_eq(cal_op_hessian(be, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
	}
	return h;
}

/* Per-16-block amax of the weight and the global amax (their max). */
static float *lin_amax(struct cal_backend *be, const struct lin *l, float *global)
{
	struct cal_error err = {0};
	struct cal_nonfinite nf = {0, CAL_NONFINITE_NONE};
	uint64_t nb = l->rows * l->cols / 16;
	float *am = calloc(nb, sizeof(float));
	struct cal_amax_blocks_args a = {CAL_DTYPE_BF16, l->w, l->rows, l->cols, 16, 0, am, &nf};
	cr_assert_eq(cal_op_amax_blocks(be, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
	*global = 0.0f;
	for (uint64_t b = 0; b < nb; b++)
		*global = am[b] > *global ? am[b] : *global;
	return am;
}

/* mean over tokens and outputs of (x (w1 - w0)^T)^2, double. */
static double out_mse(const struct lin *l, const uint16_t *w1)
{
	double s = 0.0;
	double *d = malloc(l->cols * sizeof(double));
	for (uint64_t r = 0; r < l->rows; r++) {
		for (uint64_t c = 0; c < l->cols; c++)
			d[c] = (double)cal_nf_bf16_to_f32(w1[r * l->cols + c]) -
			       (double)cal_nf_bf16_to_f32(l->w[r * l->cols + c]);
		for (uint64_t t = 0; t < l->tokens; t++) {
			double y = 0.0;
			for (uint64_t c = 0; c < l->cols; c++)
				y += (double)cal_nf_bf16_to_f32(l->x[t * l->cols + c]) * d[c];
			s += y * y;
		}
	}
	free(d);
	return s / (double)(l->rows * l->tokens);
}

/* Static NVFP4 codes and scales of a weight (the export's quantizer). */
static void quant(struct cal_backend *be, const struct lin *l, const uint16_t *w,
		  const float *am, float g, uint8_t *packed, uint8_t *scales)
{
	struct cal_error err = {0};
	struct cal_nvfp4_static_quant_args a = {0};
	a.w = w, a.rows = l->rows, a.cols = l->cols, a.block_amax = am, a.global_amax = g;
	a.norm_max = 448.0f, a.div = CAL_DIV_EXACT, a.packed = packed, a.scales = scales;
	cr_assert_eq(cal_op_nvfp4_static_quant(be, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
}

/* Number of the n packed E2M1 codes that differ in value (-0 == +0: the
 * fake quantizer keeps the sign of a negative value rounded to zero). */
static uint64_t codes_differing(const uint8_t *a, const uint8_t *b, uint64_t n)
{
	uint64_t d = 0;
	for (uint64_t i = 0; i < n; i++) {
		unsigned x = (a[i / 2] >> (4 * (i & 1))) & 15u, y = (b[i / 2] >> (4 * (i & 1))) & 15u;
		d += x != y && ((x | y) & 7u) != 0;
	}
	return d;
}

/* Plain rounding with the fixed scales, back to bf16. */
static uint16_t *rtn(struct cal_backend *be, const struct lin *l, const float *am, float g)
{
	struct cal_error err = {0};
	uint64_t n = l->rows * l->cols;
	uint8_t *p = malloc(n / 2), *sc = malloc(n / 16);
	uint16_t *out = malloc(n * 2);
	quant(be, l, l->w, am, g, p, sc);
	struct cal_nvfp4_dequant_args d = {0};
	d.packed = p, d.scales = sc, d.rows = l->rows, d.cols = l->cols;
	d.scale2 = cal_nvfp4_static_scale2(g, 448.0f, CAL_DIV_EXACT);
	d.out_dtype = CAL_DTYPE_BF16, d.out = out;
	cr_assert_eq(cal_op_nvfp4_dequant(be, &d, &err), CAL_OK, "%s", cal_error_msg(&err));
	free(p);
	free(sc);
	return out;
}

Test(hessian, matches_double_sum_and_gather)
{
	struct cal_backend *be = cpu(3);
	struct cal_error err = {0};
	struct lin l;
	lin_gen(&l, 1, 48, 37, 11, 99);
	float *h = lin_hessian(be, &l, 10);
	for (uint64_t i = 0; i < l.cols; i++)
		for (uint64_t j = 0; j < l.cols; j++) {
			double s = 0.0;
			for (uint64_t t = 0; t < l.tokens; t++)
				s += (double)cal_nf_bf16_to_f32(l.x[t * l.cols + i]) *
				     cal_nf_bf16_to_f32(l.x[t * l.cols + j]);
			cr_assert(fabs(h[i * l.cols + j] - s) <= 1e-5 * (fabs(s) + 1.0),
				  "h[%lu][%lu] = %g, want %g", (unsigned long)i, (unsigned long)j,
				  (double)h[i * l.cols + j], s);
			cr_assert_eq(h[i * l.cols + j], h[j * l.cols + i]);
		}
	/* gathered rows (one out of range, skipped) == the same rows copied */
	uint32_t idx[5] = {3, 36, 1000, 3, 0};
	uint16_t *g = malloc(4 * l.cols * 2);
	memcpy(g, l.x + 3 * l.cols, l.cols * 2);
	memcpy(g + l.cols, l.x + 36 * l.cols, l.cols * 2);
	memcpy(g + 2 * l.cols, l.x + 3 * l.cols, l.cols * 2);
	memcpy(g + 3 * l.cols, l.x, l.cols * 2);
	float *h1 = calloc(l.cols * l.cols, 4), *h2 = calloc(l.cols * l.cols, 4);
	struct cal_hessian_args a = {CAL_DTYPE_BF16, l.x, l.tokens, l.cols, idx, 5, h1};
	struct cal_hessian_args b = {CAL_DTYPE_BF16, g, 4, l.cols, NULL, 0, h2};
	cr_assert_eq(cal_op_hessian(be, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_op_hessian(be, &b, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(memcmp(h1, h2, l.cols * l.cols * 4), 0);
	/* bad arguments are named */
	a.cols = 70000;
	cr_assert_eq(cal_op_hessian(be, &a, &err), CAL_ERR_RANGE);
	cr_assert(strstr(cal_error_msg(&err), "cols"));
	cal_error_clear(&err);
	free(g), free(h), free(h1), free(h2);
	lin_free(&l);
	cal_backend_free(be);
}

Test(gptq, beats_rounding_on_grid_dead_columns)
{
	struct cal_backend *be = cpu(2);
	struct cal_error err = {0};
	struct lin l;
	lin_gen(&l, 24, 96, 200, 5, 17);
	float *h = lin_hessian(be, &l, 64), g;
	float *am = lin_amax(be, &l, &g);
	struct cal_gptq_opts o = {CAL_GPTQ_PERC_DAMP, 32, 0};
	struct cal_gptq_nvfp4 q = {am, g, 448.0f, CAL_DIV_EXACT};
	struct cal_gptq_stats st;
	uint16_t *w1 = malloc(l.rows * l.cols * 2);
	cr_assert_eq(cal_gptq_nvfp4(be, l.w, l.rows, l.cols, h, l.tokens, &o, &q, w1, &st, &err),
		     CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(st.fallback, 0);
	cr_assert_eq(st.dead_cols, 1);
	uint16_t *w0 = rtn(be, &l, am, g);
	double m1 = out_mse(&l, w1), m0 = out_mse(&l, w0);
	cr_assert(m1 < 0.9 * m0, "gptq MSE %g, rounding %g", m1, m0);
	/* on the grid: exporting the update and reading it back moves no value
	 * by more than bf16 rounding (the scale products round differently) */
	struct lin l1 = l;
	l1.w = w1;
	uint16_t *back = rtn(be, &l1, am, g);
	for (uint64_t i = 0; i < l.rows * l.cols; i++) {
		float a = cal_nf_bf16_to_f32(back[i]), b = cal_nf_bf16_to_f32(w1[i]);
		cr_assert(fabsf(a - b) <= fabsf(b) / 128.0f, "w[%lu]: %g read back as %g",
			  (unsigned long)i, (double)b, (double)a);
	}
	/* the same bytes on one thread */
	struct cal_backend *be1 = cpu(1);
	uint16_t *w2 = malloc(l.rows * l.cols * 2);
	cr_assert_eq(cal_gptq_nvfp4(be1, l.w, l.rows, l.cols, h, l.tokens, &o, &q, w2, &st, &err),
		     CAL_OK);
	cr_assert_eq(memcmp(w1, w2, l.rows * l.cols * 2), 0);
	/* a Hessian that is not positive definite: identity, i.e. plain rounding */
	for (uint64_t k = 0; k < l.cols * l.cols; k++)
		h[k] = k % (l.cols + 1) == 0 ? -1.0f : 0.0f;
	cr_assert_eq(cal_gptq_nvfp4(be, l.w, l.rows, l.cols, h, l.tokens, &o, &q, w2, &st, &err),
		     CAL_OK);
	cr_assert_eq(st.fallback, 1);
	uint64_t nq = l.rows * l.cols;
	uint8_t *pa = malloc(nq / 2), *pb = malloc(nq / 2), *sa = malloc(nq / 16), *sb = malloc(nq / 16);
	quant(be, &l, l.w, am, g, pa, sa);
	quant(be, &l, w2, am, g, pb, sb);
	cr_assert_eq(codes_differing(pa, pb, nq), 0, "the fallback is not plain rounding");
	free(pa), free(pb), free(sa), free(sb);
	/* bad options are named */
	o.block_size = 24;
	cr_assert_eq(cal_gptq_nvfp4(be, l.w, l.rows, l.cols, h, l.tokens, &o, &q, w2, &st, &err),
		     CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "block_size"));
	cal_error_clear(&err);
	o.block_size = 32, o.perc_damp = 0.0;
	cr_assert_eq(cal_gptq_nvfp4(be, l.w, l.rows, l.cols, h, l.tokens, &o, &q, w2, &st, &err),
		     CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "perc_damp"));
	cal_error_clear(&err);
	free(h), free(am), free(w0), free(w1), free(w2), free(back);
	lin_free(&l);
	cal_backend_free(be);
	cal_backend_free(be1);
}

static int unhex(const char *s, void *out, size_t n)
{
	if (!s || strlen(s) != 2 * n)
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		((uint8_t *)out)[i] = (uint8_t)v;
	}
	return 0;
}

static void sha_hex(const void *p, size_t n, char out[65])
{
	uint8_t d[CAL_SHA256_LEN];
	cal_sha256(p, n, d);
	cal_sha256_hex(d, out);
}

/* Opens a fingerprint and regenerates its linear (the weight's hash, and
 * the tokens' where recorded, must match what modelopt was given); *batch
 * is the calibration batch.  The caller frees with json_decref/lin_free. */
static json_t *fp_open(const char *path, struct lin *l, uint64_t *batch)
{
	json_error_t je;
	json_t *fp = json_load_file(path, 0, &je);
	cr_assert(fp, "%s: %s", path, je.text);
	json_t *gen = json_object_get(fp, "generator");
	uint64_t cols = json_integer_value(json_object_get(gen, "cols"));
	uint64_t tokens = json_integer_value(json_object_get(gen, "tokens"));
	lin_gen(l, json_integer_value(json_object_get(gen, "rows")), cols, tokens,
		json_integer_value(json_object_get(gen, "seed")),
		json_integer_value(json_object_get(gen, "dead_col")));
	*batch = json_integer_value(json_object_get(gen, "batch"));
	char hx[65];
	sha_hex(l->w, l->rows * cols * 2, hx);
	cr_assert_str_eq(hx, json_string_value(json_object_get(fp, "w_orig_sha256")),
			 "%s: the generated weight differs from modelopt's input", path);
	const char *xs = json_string_value(json_object_get(fp, "x_sha256"));
	if (xs) {
		sha_hex(l->x, tokens * cols * 2, hx);
		cr_assert_str_eq(hx, xs, "%s: the generated tokens differ from modelopt's", path);
	}
	return fp;
}

static void diff_one(struct cal_backend *be, const char *path)
{
	struct cal_error err = {0};
	struct lin l;
	uint64_t batch;
	json_t *fp = fp_open(path, &l, &batch), *alg = json_object_get(fp, "algorithm");
	uint64_t rows = l.rows, cols = l.cols, tokens = l.tokens;

	/* the scales: block amax and global amax byte-equal */
	float g, *am = lin_amax(be, &l, &g), *am_mo = malloc(rows * cols / 16 * 4);
	cr_assert_eq(unhex(json_string_value(json_object_get(fp, "block_amax_hex")), am_mo,
			   rows * cols / 16 * 4), 0);
	cr_assert_eq(memcmp(am, am_mo, rows * cols / 16 * 4), 0, "%s: block amax differ", path);
	cr_assert_eq(g, (float)json_real_value(json_object_get(fp, "global_amax")));

	float *h = lin_hessian(be, &l, batch);
	struct cal_gptq_opts o = {json_real_value(json_object_get(alg, "perc_damp")),
				  (uint32_t)json_integer_value(json_object_get(alg, "block_size")), 0};
	struct cal_gptq_nvfp4 q = {am, g, 448.0f, CAL_DIV_EXACT};
	struct cal_gptq_stats st;
	uint16_t *w1 = malloc(rows * cols * 2), *wmo = malloc(rows * cols * 2);
	cr_assert_eq(cal_gptq_nvfp4(be, l.w, rows, cols, h, tokens, &o, &q, w1, &st, &err), CAL_OK,
		     "%s", cal_error_msg(&err));
	cr_assert_eq(unhex(json_string_value(json_object_get(fp, "weight_bf16_hex")), wmo,
			   rows * cols * 2), 0);

	/* codes and scales of both updated weights, as exported */
	uint8_t *p1 = malloc(rows * cols / 2), *p2 = malloc(rows * cols / 2);
	uint8_t *s1 = malloc(rows * cols / 16), *s2 = malloc(rows * cols / 16);
	quant(be, &l, w1, am, g, p1, s1);
	quant(be, &l, wmo, am, g, p2, s2);
	cr_assert_eq(memcmp(s1, s2, rows * cols / 16), 0, "%s: weight_scale differs", path);
	uint64_t diff = codes_differing(p1, p2, rows * cols), wdiff = 0;
	for (uint64_t i = 0; i < rows * cols; i++)
		wdiff += w1[i] != wmo[i];
	uint16_t *w0 = rtn(be, &l, am, g);
	double m1 = out_mse(&l, w1), mmo = out_mse(&l, wmo), m0 = out_mse(&l, w0);
	double pct = 100.0 * (double)diff / (double)(rows * cols);
	printf("gptq diff %s: layer-output MSE calibd %.6e, modelopt %.6e (%+.2f%%), "
	       "round-to-nearest %.6e; codes differing %.2f%% (%llu of %llu), updated bf16 "
	       "weights differing %llu; rel err %.4e; fallback %d, dead columns %llu\n",
	       strrchr(path, '/') + 1, m1, mmo, 100.0 * (m1 / mmo - 1.0), m0, pct,
	       (unsigned long long)diff, (unsigned long long)(rows * cols),
	       (unsigned long long)wdiff, st.rel_err, st.fallback,
	       (unsigned long long)st.dead_cols);
	cr_assert(m1 <= mmo, "%s: calibd's GPTQ MSE %g is worse than modelopt's %g", path, m1, mmo);
	cr_assert(m1 < m0);
	free(am), free(am_mo), free(h), free(w1), free(wmo), free(w0);
	free(p1), free(p2), free(s1), free(s2);
	lin_free(&l);
	json_decref(fp);
}

/* Runs fn on every *.json under $MODELOPT_ALGO_DIR/sub but the whole-model
 * ones (model_*.json, gptq_model_diff.py's); fails on none. */
static void each_fingerprint(const char *sub, void (*fn)(struct cal_backend *, const char *))
{
	const char *root = getenv("MODELOPT_ALGO_DIR");
	cr_assert(root, "MODELOPT_ALGO_DIR is not set");
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/%s", root, sub);
	DIR *d = opendir(dir);
	cr_assert(d, "%s: cannot open", dir);
	struct cal_backend *be = cpu(0);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		if (len < 6 || strcmp(e->d_name + len - 5, ".json") || !strncmp(e->d_name, "model_", 6))
			continue;
		char path[8192];
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		fn(be, path);
		n++;
	}
	closedir(d);
	cal_backend_free(be);
	cr_assert(n > 0, "%s: no fingerprint", dir);
}

Test(gptq, modelopt_diff)
{
	each_fingerprint("gptq", diff_one);
}

/* Differing elements between calibd's smoothing / AWQ outputs and the
 * fingerprint's pre_quant_scale_bf16_hex, weight_bf16_hex and
 * weight_amax_f32_hex (n_amax values). */
struct fold_diff {
	uint64_t pqs, w, amax;
};

static struct fold_diff fold_compare(json_t *fp, uint64_t rows, uint64_t cols, uint64_t n_amax,
				     const uint16_t *pqs, const uint16_t *w, const float *amax)
{
	uint16_t *p = malloc(cols * 2), *wm = malloc(rows * cols * 2);
	float *am = malloc(n_amax * 4);
	struct fold_diff d = {0, 0, 0};
	cr_assert(!pqs || !unhex(json_string_value(json_object_get(fp, "pre_quant_scale_bf16_hex")),
				 p, cols * 2));
	cr_assert_eq(unhex(json_string_value(json_object_get(fp, "weight_bf16_hex")), wm,
			   rows * cols * 2), 0);
	cr_assert_eq(unhex(json_string_value(json_object_get(fp, "weight_amax_f32_hex")), am,
			   n_amax * 4), 0);
	for (uint64_t c = 0; pqs && c < cols; c++) /* awq_clip alone: none */
		d.pqs += p[c] != pqs[c];
	for (uint64_t i = 0; i < rows * cols; i++)
		d.w += wm[i] != w[i];
	for (uint64_t b = 0; b < n_amax; b++)
		d.amax += am[b] != amax[b];
	free(p), free(wm), free(am);
	return d;
}

static void sq_one(struct cal_backend *be, const char *path)
{
	struct cal_error err = {0};
	struct lin l;
	uint64_t batch;
	json_t *fp = fp_open(path, &l, &batch);
	uint64_t rows = l.rows, cols = l.cols, tokens = l.tokens;
	float alpha = (float)json_real_value(json_object_get(fp, "alpha"));
	(void)be;
	/* per-channel activation amax over the tokens */
	float *act = calloc(cols, 4), *act_mo = malloc(cols * 4);
	for (uint64_t t = 0; t < tokens; t++)
		for (uint64_t c = 0; c < cols; c++) {
			float v = fabsf(cal_nf_bf16_to_f32(l.x[t * cols + c]));
			act[c] = v > act[c] ? v : act[c];
		}
	cr_assert_eq(unhex(json_string_value(json_object_get(fp, "act_amax_f32_hex")), act_mo,
			   cols * 4), 0);
	cr_assert_eq(memcmp(act, act_mo, cols * 4), 0, "%s: activation amax differ", path);
	struct cal_sq_out o = {malloc(cols * 2), malloc(rows * cols * 2), malloc(rows * 4), 0.0f};
	cr_assert_eq(cal_smoothquant(l.w, rows, cols, act, alpha, &o, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	struct fold_diff d = fold_compare(fp, rows, cols, rows, o.pre_quant_scale, o.w, o.w_amax);
	uint64_t dp = d.pqs, dw = d.w, da = d.amax;
	float in_mo = (float)json_real_value(json_object_get(fp, "input_amax_f32"));
	printf("smoothquant diff %s (alpha %g): pre_quant_scale differing %llu of %llu, smoothed "
	       "weights %llu of %llu, weight amax %llu of %llu, input amax %g vs modelopt %g\n",
	       strrchr(path, '/') + 1, (double)alpha, (unsigned long long)dp,
	       (unsigned long long)cols, (unsigned long long)dw, (unsigned long long)(rows * cols),
	       (unsigned long long)da, (unsigned long long)rows, (double)o.in_amax, (double)in_mo);
	cr_assert(dp == 0 && dw == 0 && da == 0 && o.in_amax == in_mo, "%s differs from modelopt",
		  path);
	free(act), free(act_mo);
	free(o.pre_quant_scale), free(o.w), free(o.w_amax);
	lin_free(&l);
	json_decref(fp);
}

Test(smoothquant, modelopt_diff)
{
	each_fingerprint("smoothquant", sq_one);
}

Test(smoothquant, bad_input_and_dead_channels)
{
	struct cal_error err = {0};
	uint16_t w[2 * 4], pq[4], wo[8];
	float am[2], act[4] = {1.0f, 0.0f, 2.0f, 0.5f};
	for (int i = 0; i < 8; i++)
		w[i] = cal_nf_f32_to_bf16(0.25f * (float)(i + 1));
	struct cal_sq_out o = {pq, wo, am, 0.0f};
	cr_assert_eq(cal_smoothquant(w, 2, 4, act, 1.5f, &o, &err), CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "alpha"));
	cal_error_clear(&err);
	act[1] = NAN;
	cr_assert_eq(cal_smoothquant(w, 2, 4, act, 1.0f, &o, &err), CAL_ERR_NUMERIC);
	cr_assert(strstr(cal_error_msg(&err), "channel 1"));
	cal_error_clear(&err);
	/* a channel that saw only zeros: its scale is not 1/0 but clamped (no
	 * scale is <= 2^-31, so modelopt's mask does not apply): 1e4 */
	act[1] = 0.0f;
	cr_assert_eq(cal_smoothquant(w, 2, 4, act, 1.0f, &o, &err), CAL_OK);
	cr_assert_eq(pq[1], cal_nf_f32_to_bf16(1e4f));
	cr_assert_eq(pq[0], cal_nf_f32_to_bf16(1.0f));
	cr_assert_eq(pq[2], cal_nf_f32_to_bf16(0.5f));
}

static uint16_t *hex_bf16(json_t *o, const char *key, uint64_t n);

/* awq_clip (docs/awq.md "awq_full", "awq_clip") on modelopt's state before
 * the clip (after awq_lite's fold for awq_full: its folded weight w and
 * pre_quant_scale pqs; the source weight and no pqs for awq_clip alone):
 * the ratios, and calibd's weight amax (amax, in: INT4 block amax, or
 * NVFP4's global amax, amax[0]) must be modelopt's before the clip; amax
 * becomes the clipped amax, which awq_one compares with the fingerprint's
 * (the exported weight amax).  NVFP4 also compares each ratio's loss. */
static void awq_clip_diff(struct cal_backend *be, const char *path, json_t *clip,
			  const struct lin *l, uint64_t batch, const uint16_t *pqs,
			  const uint16_t *w, float *amax, int nvfp4)
{
	struct cal_error err = {0};
	uint64_t nb = nvfp4 ? 1 : l->rows * l->cols / 128, clipped = 0;
	struct cal_awq_clip_opts co = {
		(uint64_t)json_integer_value(json_object_get(clip, "max_tokens_per_batch")),
		json_real_value(json_object_get(clip, "min_clip_ratio")),
		json_real_value(json_object_get(clip, "shrink_step")),
		/* modelopt's weight amax dtype (older fingerprints: fp32) */
		json_object_get(clip, "w_amax_dtype") &&
			!strcmp(json_string_value(json_object_get(clip, "w_amax_dtype")), "bfloat16")};
	float ratios[CAL_AWQ_MAX_RATIOS], *wa_mo = malloc(nb * 4);
	double loss[CAL_AWQ_MAX_RATIOS], worst = 0.0;
	unsigned nr = cal_awq_clip_ratios(co.min_ratio, co.step, ratios), i = 0;
	json_t *mr = json_object_get(clip, "ratios"), *v;
	size_t k;
	/* modelopt's ratios are dict keys: a repeated 1.0 appears once */
	cr_assert(json_array_size(mr) == nr || (json_array_size(mr) + 1 == nr &&
						ratios[nr - 2] == 1.0f), "%s: %u clip ratios, "
		  "modelopt %zu", path, nr, json_array_size(mr));
	json_array_foreach(mr, k, v)
		cr_assert_eq(ratios[i++], (float)json_real_value(v), "%s: clip ratio %zu", path, k);
	cr_assert_eq(unhex(json_string_value(json_object_get(clip, "w_amax_f32_hex")), wa_mo,
			   nb * 4), 0);
	uint64_t pre = 0;
	for (uint64_t b = 0; b < nb; b++)
		pre += amax[b] != wa_mo[b];
	struct cal_awq_dev dev = {be, be, 0};
	enum cal_status st = nvfp4 ? cal_awq_clip_nvfp4(&dev, w, l->rows, l->cols, l->x, l->tokens,
							batch, pqs, &co, amax, loss, &err)
				   : cal_awq_clip_int4(be, w, l->rows, l->cols, l->x, l->tokens,
						       batch, pqs, &co, amax, &err);
	cr_assert_eq(st, CAL_OK, "%s", cal_error_msg(&err));
	for (uint64_t b = 0; b < nb; b++)
		clipped += amax[b] < wa_mo[b];
	json_array_foreach(nvfp4 ? json_object_get(clip, "loss_f32_hex") : NULL, k, v) {
		float lm;
		cr_assert_eq(unhex(json_string_value(v), &lm, 4), 0);
		worst = fmax(worst, fabs(loss[k] / lm - 1.0));
	}
	printf("awq_clip diff %s: %u ratios, %llu of %llu %s clipped (losses within %.2e of "
	       "modelopt's); amax before the clip differing %llu\n", strrchr(path, '/') + 1, nr,
	       (unsigned long long)clipped, (unsigned long long)nb,
	       nvfp4 ? "global amax" : "blocks", worst, (unsigned long long)pre);
	cr_assert_eq(pre, 0, "%s: the weight amax before the clip differs", path);
	cr_assert(clipped > 0, "%s: nothing clipped: the test exercises nothing", path);
	free(wa_mo);
}

/* Without an awq_lite search (awq_clip alone): o's weight is the source,
 * its amax the source's (INT4 / W4A8 blocks of 128, or NVFP4's global
 * amax), no pre_quant_scale. */
static void awq_no_search(const struct lin *l, int nvfp4, struct cal_awq_out *o)
{
	uint64_t n = l->rows * l->cols, blk = nvfp4 ? n : 128;
	memcpy(o->w, l->w, n * 2);
	free(o->pre_quant_scale);
	o->pre_quant_scale = NULL;
	for (uint64_t b = 0; b < n / blk; b++) {
		o->w_amax[b] = 0.0f;
		for (uint64_t k = b * blk; k < (b + 1) * blk; k++)
			o->w_amax[b] = fmaxf(o->w_amax[b], fabsf(cal_nf_bf16_to_f32(l->w[k])));
	}
}

static void awq_one(struct cal_backend *be, const char *path)
{
	struct lin l;
	uint64_t batch;
	json_t *fp = fp_open(path, &l, &batch);
	double step = json_real_value(json_object_get(fp, "alpha_step"));
	const char *wf = json_string_value(json_object_get(fp, "weight_format"));
	int nvfp4 = wf && !strcmp(wf, "nvfp4"); /* nvfp4_awq: W4A4, global weight amax */
	int w4a8 = wf && !strcmp(wf, "w4a8"); /* w4a8_awq: INT4 search, FP8 inputs */
	json_t *ml = json_object_get(fp, "loss"); /* NULL: awq_clip alone, no search */
	json_t *clip = json_object_get(fp, "clip"); /* awq_full or awq_clip */
	uint64_t rows = l.rows, cols = l.cols, tokens = l.tokens;
	uint64_t nb = rows * cols / (nvfp4 ? 16 : 128);
	struct cal_error err = {0};
	double loss[CAL_AWQ_MAX_ALPHAS];
	float in_amax = 0.0f, in_mo = 0.0f;
	struct cal_awq_out o = {malloc(cols * 2), malloc(rows * cols * 2), malloc(nb * 4), loss, 0, 0};
	/* a linear with a bias (GPT-OSS's attention): inside both outputs */
	uint16_t *bias = json_object_get(fp, "bias_bf16_hex") ? hex_bf16(fp, "bias_bf16_hex", rows)
							       : NULL;
	struct cal_awq_dev dev = {be, be, 0};
	if (ml)
		cr_assert_eq(cal_awq_lite_bias(&dev, nvfp4 ? CAL_AWQ_WQ_NVFP4 : CAL_AWQ_WQ_INT4, l.w,
					       bias, rows, cols, l.x, tokens, batch, step, &o,
					       nvfp4 || w4a8 ? &in_amax : NULL, &err),
			     CAL_OK, "%s", cal_error_msg(&err));
	else
		awq_no_search(&l, nvfp4, &o);
	free(bias);
	/* a quantized input after the clip pass: max |bf16(x * pqs)|, the raw
	 * max without a search */
	if ((nvfp4 || w4a8) && (clip || !ml))
		in_amax = cal_awq_in_amax(l.x, tokens, cols, o.pre_quant_scale);
	if (nvfp4 || w4a8)
		cr_assert_eq(unhex(json_string_value(json_object_get(fp, "input_amax_f32_hex")),
				   &in_mo, 4), 0);
	if (nvfp4 && ml) {
		for (uint64_t b = 1; b < nb; b++)
			o.w_amax[0] = o.w_amax[b] > o.w_amax[0] ? o.w_amax[b] : o.w_amax[0];
	}
	nb = nvfp4 ? 1 : nb;
	cr_assert_eq(json_object_size(ml), ml ? o.n_alpha : 0, "%s: %u alphas, modelopt searched "
		     "%zu", path, o.n_alpha, json_object_size(ml));
	const char *key;
	json_t *val;
	unsigned i = 0;
	double worst = 0.0;
	json_object_foreach(ml, key, val) {
		double r = fabs(loss[i] / json_real_value(val) - 1.0);
		worst = r > worst ? r : worst;
		i++;
	}
	struct fold_diff d = fold_compare(fp, rows, cols, nb, o.pre_quant_scale, o.w, o.w_amax);
	if (clip && !w4a8) { /* from modelopt's state before the clip: the clip step alone
			      * (W4A8: modelopt's closing max calibration discards it) */
		uint16_t *pq_mo = ml ? hex_bf16(fp, "pre_quant_scale_bf16_hex", cols) : NULL;
		uint16_t *w_mo = hex_bf16(fp, "weight_bf16_hex", rows * cols);
		awq_clip_diff(be, path, clip, &l, batch, pq_mo, w_mo, o.w_amax, nvfp4);
		d.amax = fold_compare(fp, rows, cols, nb, o.pre_quant_scale, o.w, o.w_amax).amax;
		free(pq_mo), free(w_mo);
	}
	uint64_t dp = d.pqs, dw = d.w, da = d.amax;
	if (w4a8) {
		float m = 0.0f, mo;
		for (uint64_t k = 0; k < rows * cols; k++)
			m = fmaxf(m, fabsf(cal_nf_bf16_to_f32(o.w[k])));
		cr_assert_eq(unhex(json_string_value(json_object_get(fp, "weight_amax2_f32_hex")),
				   &mo, 4), 0);
		da += m != mo;
	}
	json_t *ba = json_object_get(fp, "best_alpha");
	float best_mo = ba ? (float)json_real_value(ba) : 0.0f;
	printf("awq_lite diff %s: alpha %g (modelopt %g), search losses within %.2e of modelopt's; "
	       "pre_quant_scale differing %llu of %llu, folded weights %llu of %llu, %s amax "
	       "%llu of %llu, input amax %g (modelopt %g)\n",
	       strrchr(path, '/') + 1, (double)o.best_alpha, (double)best_mo, worst,
	       (unsigned long long)dp, (unsigned long long)cols, (unsigned long long)dw,
	       (unsigned long long)(rows * cols), nvfp4 ? "global" : "block",
	       (unsigned long long)da, (unsigned long long)nb, (double)in_amax, (double)in_mo);
	/* the losses to the GEMM's summation order (1e-3; a search without the
	 * bias of a *_bias* fingerprint is off by several per cent) */
	cr_assert(o.best_alpha == best_mo && dp == 0 && dw == 0 && da == 0 && in_amax == in_mo &&
		  worst < 1e-3, "%s differs from modelopt", path);
	free(o.pre_quant_scale), free(o.w), free(o.w_amax);
	lin_free(&l);
	json_decref(fp);
}

Test(awq_lite, modelopt_diff)
{
	each_fingerprint("awq", awq_one);
}

/* The search in token chunks (cal_awq_dev.max_bytes: one token, 7 (cutting
 * batches), one batch, 37) and on a 1- or 3-thread back end gives the
 * bytes of one chunk: every alpha's loss, the scale, the folded weight and
 * its amax; INT4 and NVFP4, with a bias, a last batch shorter than the
 * others. */
Test(awq_lite, chunks_same_bytes)
{
	struct lin l;
	const uint64_t R = 48, C = 256, T = 75, B = 16;
	lin_gen(&l, R, C, T, 7, 3);
	uint16_t bias[48];
	uint64_t s = 99;
	for (uint64_t r = 0; r < R; r++)
		bias[r] = cal_nf_f32_to_bf16(gen_u(&s));
	struct cal_backend *b1 = cpu(1), *b3 = cpu(3);
	struct cal_error err = {0};
	for (int nv = 0; nv < 2; nv++) {
		uint64_t nb = R * C / (nv ? 16 : 128);
		double loss[2][CAL_AWQ_MAX_ALPHAS];
		uint16_t pq[2][256], w[2][48 * 256];
		float am[2][48 * 16];
		/* one chunk on 1 thread; then chunks of 1, 7, 16 and 37 tokens on 3 */
		uint64_t per = 4 * (R + C) + 16, maxb[5] = {0, 1, 7 * per, B * per + 1, 37 * per};
		for (int k = 0; k < 5; k++) {
			int j = k ? 1 : 0;
			struct cal_awq_out o = {pq[j], w[j], am[j], loss[j], 0, 0.0f};
			struct cal_awq_dev dev = {k ? b3 : b1, k ? b3 : b1, maxb[k]};
			cr_assert_eq(cal_awq_lite_bias(&dev, nv ? CAL_AWQ_WQ_NVFP4 : CAL_AWQ_WQ_INT4,
						       l.w, bias, R, C, l.x, T, B, 0.1, &o, NULL,
						       &err),
				     CAL_OK, "%s", cal_error_msg(&err));
			cr_assert_eq(o.n_alpha, 11);
			if (!k)
				continue;
			cr_assert_eq(memcmp(loss[0], loss[1], 11 * sizeof(double)), 0,
				     "%s, %llu bytes a chunk: the losses differ", nv ? "nvfp4" : "int4",
				     (unsigned long long)maxb[k]);
			cr_assert_eq(memcmp(pq[0], pq[1], C * 2), 0);
			cr_assert_eq(memcmp(w[0], w[1], R * C * 2), 0);
			cr_assert_eq(memcmp(am[0], am[1], nb * sizeof(float)), 0);
		}
		int differ = 0; /* the losses tell the alphas apart */
		for (int i = 1; i < 11; i++)
			differ |= loss[0][i] != loss[0][0];
		cr_assert(differ && loss[0][0] > 0.0);
	}
	cal_backend_free(b1);
	cal_backend_free(b3);
	lin_free(&l);
}

Test(awq_lite, bad_input)
{
	struct cal_error err = {0};
	struct cal_backend *be = cpu(1);
	struct cal_awq_dev dev = {be, be, 0};
	uint16_t w[2 * 128] = {0}, x[3 * 128] = {0}, pq[128], wo[256];
	float am[2];
	struct cal_awq_out o = {pq, wo, am, NULL, 0, 0};
	cr_assert_eq(cal_awq_lite_int4(be, w, 2, 128, x, 3, 2, 0.0, &o, &err), CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "alpha_step"));
	cal_error_clear(&err);
	cr_assert_eq(cal_awq_lite_int4(be, w, 4, 64, x, 3, 2, 0.1, &o, &err), CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "128"));
	cal_error_clear(&err);
	/* all-zero weight and inputs: no NaN, every scale finite */
	cr_assert_eq(cal_awq_lite_int4(be, w, 2, 128, x, 3, 2, 0.5, &o, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	cr_assert_eq(o.n_alpha, 3);
	for (int k = 0; k < 128; k++)
		cr_assert(isfinite(cal_nf_bf16_to_f32(pq[k])));
	/* awq_clip per tensor (NVFP4): the block of 16 and the options named;
	 * an all-zero weight keeps amax 0 */
	struct cal_awq_clip_opts co = {64, 0.5, 0.05, 1};
	cr_assert_eq(cal_awq_clip_nvfp4(&dev, w, 2, 24, x, 3, 2, NULL, &co, am, NULL, &err),
		     CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "NVFP4 block (16)"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	co.min_ratio = 0.0;
	cr_assert_eq(cal_awq_clip_nvfp4(&dev, w, 2, 128, x, 3, 2, NULL, &co, am, NULL, &err),
		     CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "min_clip_ratio"), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	co.min_ratio = 0.5;
	am[0] = -1.0f;
	cr_assert_eq(cal_awq_clip_nvfp4(&dev, w, 2, 128, x, 3, 2, pq, &co, am, NULL, &err), CAL_OK,
		     "%s", cal_error_msg(&err));
	cr_assert_eq(am[0], 0.0f);
	cr_assert_eq(cal_awq_in_amax(x, 3, 128, NULL), 0.0f);
	cal_backend_free(be);
}

/* nvfp4_act_headroom (docs/numerics.md "Activation headroom"): against
 * tests/modelopt/headroom/, the generated linear's tokens scaled as
 * headroom_fingerprint.py does, counted per calibration batch with the
 * amax_hist op; the input amax must be modelopt's bits. */
static void hr_one(struct cal_backend *be, const char *path)
{
	struct cal_error err = {0};
	struct lin l;
	uint64_t batch, C;
	json_t *fp = fp_open(path, &l, &batch), *alg = json_object_get(fp, "algorithm");
	uint64_t h[CAL_HIST_BINS] = {0};
	float mx = 0;
	char hx[65];
	C = l.cols;
	for (uint64_t t = 0; t < l.tokens; t++)
		for (uint64_t c = 0; c < C; c++) {
			float v = cal_nf_bf16_to_f32(l.x[t * C + c]);
			v *= t % 37 ? ldexpf(1.0f, (int)(t % 29) - 14) : 0.0f; /* -0 kept */
			l.x[t * C + c] = cal_nf_f32_to_bf16(v);
			mx = fabsf(v) > mx ? fabsf(v) : mx;
		}
	sha_hex(l.x, l.tokens * C * 2, hx);
	cr_assert_str_eq(hx, json_string_value(json_object_get(fp, "x_scaled_sha256")),
			 "%s: the scaled tokens differ from modelopt's", path);
	for (uint64_t t = 0; t < l.tokens; t += batch) {
		uint64_t n = t + batch <= l.tokens ? batch : l.tokens - t;
		struct cal_amax_hist_args a = {CAL_DTYPE_BF16, l.x + t * C, n, C, 16, h};
		cr_assert_eq(cal_op_amax_hist(be, &a, &err), CAL_OK, "%s", cal_error_msg(&err));
	}
	float am = cal_hr_amax(h, mx,
			       json_real_value(json_object_get(alg, "anchor_percentile")),
			       json_real_value(json_object_get(alg, "upper_percentile")),
			       json_real_value(json_object_get(alg, "rho")));
	uint32_t bits = cal_nf_bits(am);
	char got[9];
	snprintf(got, sizeof(got), "%02x%02x%02x%02x", bits & 0xff, (bits >> 8) & 0xff,
		 (bits >> 16) & 0xff, bits >> 24);
	printf("headroom diff %s: input amax %.9g (max %.9g)\n", path, am, mx);
	cr_assert_str_eq(got, json_string_value(json_object_get(fp, "input_amax_f32_hex")),
			 "%s: input amax %.9g, modelopt %.9g", path, am,
			 json_real_value(json_object_get(fp, "input_amax_f32")));
	json_decref(fp);
	lin_free(&l);
}

Test(headroom, modelopt_diff)
{
	each_fingerprint("headroom", hr_one);
}

/* the rule's branches on hand-made histograms */
Test(headroom, rule)
{
	uint64_t h[CAL_HIST_BINS] = {0};
	/* empty: the running max */
	cr_assert_eq(cal_hr_amax(h, 3.0f, 1, 99.99, 16384), 3.0f);
	/* one bin (256: log2 centre -40 + 256.5 * 80 / 512 = 0.078125) */
	h[256] = 10;
	cr_assert_eq(cal_hr_amax(h, 1.0f, 1, 99.99, 16384), (float)(16384 * pow(2, 0.078125)));
	/* rho * anchor below upper: upper */
	cr_assert_eq(cal_hr_amax(h, 1.0f, 1, 99.99, 0.5), (float)pow(2, 0.078125));
	/* upper_percentile 100: the running max */
	cr_assert_eq(cal_hr_amax(h, 7.0f, 1, 100, 0.5), 7.0f);
	/* bins below upper / 1e6 do not count for the anchor */
	h[0] = 1000;
	cr_assert_eq(cal_hr_amax(h, 1.0f, 1, 99.99, 16384), (float)(16384 * pow(2, 0.078125)));
}

/* bf16 [n] from the fingerprint's hex field `key` of object o (malloc'd). */
static uint16_t *hex_bf16(json_t *o, const char *key, uint64_t n)
{
	uint16_t *v = malloc(n * 2);
	cr_assert_eq(unhex(json_string_value(json_object_get(o, key)), v, n * 2), 0, "%s", key);
	return v;
}

/* modelopt's export fold (docs/awq.md "Export", docs/smoothquant.md
 * "Export"): from each linear's pre_quant_scale and folded weight before,
 * the shared scale, the re-folded weights, their amax, the fused norm
 * (AWQ) or the group's input amax (SmoothQuant), byte-equal. */
static void awq_export_one(struct cal_backend *be, const char *path)
{
	(void)be;
	json_error_t je;
	json_t *fp = json_load_file(path, 0, &je);
	cr_assert(fp, "%s: %s", path, je.text);
	json_t *before = json_object_get(fp, "before"), *after = json_object_get(fp, "after");
	size_t n = json_array_size(before);
	uint64_t cols = (uint64_t)json_integer_value(
		json_object_get(json_object_get(fp, "generator"), "cols"));
	int plus_one = json_is_true(json_object_get(fp, "plus_one"));
	cr_assert(n >= 2 && n <= 8 && json_array_size(after) == n);
	uint16_t *w[8], *p[8];
	float *am[8], ia[8], ia_mo[8];
	uint64_t rows[8], dw = 0, da = 0, nw = 0, na = 0, dp = 0, dn = 0, di = 0;
	uint64_t blk = (uint64_t)json_integer_value(json_object_get(fp, "amax_block"));
	int sq = !strcmp(json_string_value(json_object_get(fp, "algorithm")), "smoothquant");
	for (size_t i = 0; i < n; i++) {
		json_t *b = json_array_get(before, i);
		rows[i] = (uint64_t)json_integer_value(json_object_get(b, "rows"));
		w[i] = hex_bf16(b, "weight_bf16_hex", rows[i] * cols);
		p[i] = hex_bf16(b, "pre_quant_scale_bf16_hex", cols);
		am[i] = malloc(rows[i] * cols / blk * 4);
		if (sq) {
			cr_assert_eq(unhex(json_string_value(json_object_get(b, "input_amax_f32_hex")),
					   &ia[i], 4), 0);
			cr_assert_eq(unhex(json_string_value(json_object_get(
					   json_array_get(after, i), "input_amax_f32_hex")), &ia_mo[i], 4), 0);
		}
	}
	uint16_t *avg = malloc(cols * 2), *norm = hex_bf16(fp, "norm_before_bf16_hex", cols);
	struct cal_error err = {0};
	cr_assert_eq(cal_resmooth_group(w, rows, n, cols, blk, (const uint16_t *const *)p, avg, am,
				       sq ? ia : NULL, &err),
		     CAL_OK, "%s", cal_error_msg(&err));
	if (!sq) /* modelopt fuses into the norm for awq formats only */
		cal_awq_fuse_norm(norm, avg, cols, plus_one);
	uint16_t *avg_mo = hex_bf16(fp, "pre_quant_scale_bf16_hex", cols);
	uint16_t *norm_mo = hex_bf16(fp, "norm_after_bf16_hex", cols);
	for (uint64_t c = 0; c < cols; c++)
		dp += avg[c] != avg_mo[c], dn += norm[c] != norm_mo[c];
	for (size_t i = 0; i < n; i++) {
		json_t *a = json_array_get(after, i);
		uint64_t nb = rows[i] * cols / blk;
		di += sq && ia[i] != ia_mo[i];
		uint16_t *wm = hex_bf16(a, "weight_bf16_hex", rows[i] * cols);
		float *amm = malloc(nb * 4);
		cr_assert_eq(unhex(json_string_value(json_object_get(a, "weight_amax_f32_hex")), amm,
				   nb * 4), 0);
		for (uint64_t j = 0; j < rows[i] * cols; j++)
			dw += wm[j] != w[i][j];
		for (uint64_t b = 0; b < nb; b++)
			da += amm[b] != am[i][b];
		nw += rows[i] * cols, na += nb;
		free(wm), free(amm), free(w[i]), free(p[i]), free(am[i]);
	}
	printf("%s export fold diff %s: %zu linears, plus_one %d; shared pre_quant_scale differing "
	       "%llu of %llu, re-folded weights %llu of %llu, weight amax %llu of %llu, norm "
	       "%llu of %llu, input amax %llu\n", sq ? "smoothquant" : "awq_lite",
	       strrchr(path, '/') + 1, n, plus_one, (unsigned long long)dp,
	       (unsigned long long)cols, (unsigned long long)dw, (unsigned long long)nw,
	       (unsigned long long)da, (unsigned long long)na, (unsigned long long)dn,
	       (unsigned long long)cols, (unsigned long long)di);
	cr_assert(!json_is_true(json_object_get(fp, "pre_quant_scale_left")));
	cr_assert(dp == 0 && dw == 0 && da == 0 && dn == 0 && di == 0, "%s differs from modelopt",
		  path);
	free(avg), free(norm), free(avg_mo), free(norm_mo);
	json_decref(fp);
}

Test(awq_lite, export_fold_modelopt_diff)
{
	each_fingerprint("awq_export", awq_export_one);
}

Test(awq_lite, export_fold_bad_input)
{
	struct cal_error err = {0};
	uint16_t w0[64] = {0}, p0[64] = {0}, avg[64];
	uint16_t *w[1] = {w0};
	const uint16_t *p[1] = {p0};
	float a0[1], *am[1] = {a0};
	uint64_t rows[1] = {1};
	cr_assert_eq(cal_resmooth_group(w, rows, 1, 64, 128, p, avg, am, NULL, &err),
		     CAL_ERR_INVALID);
	cr_assert(strstr(cal_error_msg(&err), "128"));
	cal_error_clear(&err);
	cr_assert_eq(cal_resmooth_group(w, rows, 0, 128, 128, p, avg, am, NULL, &err),
		     CAL_ERR_INVALID);
	cal_error_clear(&err);
}
