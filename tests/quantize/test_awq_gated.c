/*
 * test_awq_gated.c — AWQ and SmoothQuant on gated attention and Gated
 * DeltaNet layers (docs/awq.md "Qwen3-Next and Qwen3.5-MoE",
 * docs/smoothquant.md): `calibd quantize` on the qwen3_next and
 * qwen3_5_moe_text fixtures, then the exported folds checked against the
 * source weights.
 *
 * A searched linear's exported weight What, dequantized, times its scale s
 * (its pre_quant_scale, or for a group fused into a (1 + weight) norm the
 * ratio (1 + exported norm) / (1 + source norm)) must give back the source
 * weight W in the checkpoint's row order, up to the 4- or 8-bit rounding:
 * sum (What s - W)^2 / sum W^2 small.  Rows in the engine's order (gated
 * q_proj, Qwen3-Next's in_proj_qkvz) or a norm folded as weight * s (what
 * modelopt 0.47 writes for these norms) give a larger error.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/st/safetensors.h"
#include "qtest.h"

static struct cal_st_file *open_st(const char *dir)
{
	struct cal_st_file *f = NULL;
	struct cal_error err = {0};
	cr_assert_eq(cal_st_file_open(path2(dir, "model.safetensors"), &f, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	return f;
}

static const struct cal_st_tensor *tensor(const struct cal_st_file *f, const char *lin,
					  const char *what)
{
	char name[512];
	snprintf(name, sizeof name, "%s.%s", lin, what);
	return cal_st_file_find(f, name);
}

static float e4m3(uint8_t c)
{
	int e = c >> 3 & 15, m = c & 7;
	float v = e ? ldexpf(1.0f + (float)m / 8.0f, e - 7) : ldexpf((float)m / 8.0f, -6);
	return c & 0x80 ? -v : v;
}

/* Element [r, k] of the exported linear lin (NVFP4 or INT8), dequantized. */
static double dequant(const struct cal_st_file *f, const char *lin, uint64_t r, uint64_t k)
{
	static const float e2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
	const struct cal_st_tensor *w = tensor(f, lin, "weight"), *s = tensor(f, lin, "weight_scale");
	cr_assert(w && s, "%s: no weight / weight_scale", lin);
	uint64_t cols = (uint64_t)s->shape[s->ndim - 1] * 16;
	if (w->dtype == CAL_DTYPE_I8) /* INT8: per-row fp32 scale */
		return ((const int8_t *)w->data)[r * (uint64_t)w->shape[1] + k] *
		       (double)((const float *)s->data)[r];
	uint8_t q = ((const uint8_t *)w->data)[(r * cols + k) / 2];
	q = k & 1 ? q >> 4 : q & 15;
	const struct cal_st_tensor *s2 = tensor(f, lin, "weight_scale_2");
	double v = e2m1[q & 7] * (double)e4m3(((const uint8_t *)s->data)[(r * cols + k) / 16]) *
		   (double)*(const float *)s2->data;
	return q & 8 ? -v : v;
}

/* sum (What s - W)^2 / sum W^2 of linear lin; s[cols] (NULL: its
 * pre_quant_scale). */
static double fold_err(const struct cal_st_file *src, const struct cal_st_file *out,
		       const char *lin, const double *s)
{
	const struct cal_st_tensor *w = tensor(src, lin, "weight");
	const struct cal_st_tensor *pq = tensor(out, lin, "pre_quant_scale");
	cr_assert(w && (s || pq), "%s: no source weight or pre_quant_scale", lin);
	uint64_t rows = (uint64_t)w->shape[0], cols = (uint64_t)w->shape[1];
	double num = 0.0, den = 0.0;
	for (uint64_t r = 0; r < rows; r++)
		for (uint64_t k = 0; k < cols; k++) {
			double sk = s ? s[k] : cal_bf16_to_f32(((const uint16_t *)pq->data)[k]);
			double ws = cal_bf16_to_f32(((const uint16_t *)w->data)[r * cols + k]);
			double d = dequant(out, lin, r, k) * sk - ws;
			num += d * d;
			den += ws * ws;
		}
	return num / den;
}

/* The scale fused into (1 + weight) norm `norm`, (1 + n_out) / (1 + n_src)
 * into s[n]; alt[n]: what folding it as n_src * s (modelopt 0.47's rule for
 * norms it does not know as 1 + weight) would give. */
static void norm_scale(const struct cal_st_file *src, const struct cal_st_file *out,
		       const char *norm, double *s, double *alt, uint64_t n)
{
	const struct cal_st_tensor *a = cal_st_file_find(src, norm), *b = cal_st_file_find(out, norm);
	cr_assert(a && b && a->numel == n && b->numel == n, "%s", norm);
	for (uint64_t k = 0; k < n; k++) {
		double ns = cal_bf16_to_f32(((const uint16_t *)a->data)[k]);
		double no = cal_bf16_to_f32(((const uint16_t *)b->data)[k]);
		s[k] = (1.0 + no) / (1.0 + ns);
		alt[k] = (1.0 + ns * s[k]) / (1.0 + ns);
	}
}

/* Quantizes fixture arch with qformat; *src and *out opened. */
static void quantize(const char *arch, const char *qformat, struct cal_st_file **src,
		     struct cal_st_file **out, char **root)
{
	*root = tmpdir();
	char *model = make_model(*root, arch, "default");
	char *tok = make_tokens(*root, "tok.jsonl", 4, 48);
	char *dst = path2(*root, "out"), *errf = path2(*root, "stderr");
	int rc = run(NULL, errf, "quantize --model %s --qformat %s --calib-tokens %s --out %s "
		     "--device cpu --quiet", model, qformat, tok, dst);
	expect_exit(rc, 0, errf);
	*src = open_st(model);
	*out = open_st(dst);
}

/* Linears that keep their pre_quant_scale: fold error below thr, and the
 * scale not all ones (a search or smoothing happened; an all-ones scale
 * would fold trivially). */
static void kept_scales(const struct cal_st_file *src, const struct cal_st_file *out,
			const char *const *lins, size_t n, double thr)
{
	for (size_t i = 0; i < n; i++) {
		double e = fold_err(src, out, lins[i], NULL);
		const struct cal_st_tensor *pq = tensor(out, lins[i], "pre_quant_scale");
		uint64_t not_one = 0;
		for (uint64_t k = 0; k < pq->numel; k++)
			not_one += cal_bf16_to_f32(((const uint16_t *)pq->data)[k]) != 1.0f;
		printf("%s: fold error %.6f, %llu of %llu scale values not 1\n", lins[i], e,
		       (unsigned long long)not_one, (unsigned long long)pq->numel);
		cr_expect(e < thr, "%s: fold error %g", lins[i], e);
		cr_expect(not_one > 0, "%s: pre_quant_scale is all ones (no search)", lins[i]);
	}
}

/* The group fused into a (1 + weight) norm: each member's fold error with
 * the norm's scale below 2 %, and below the error of a weight * s fold. */
static void fused_group(const struct cal_st_file *src, const struct cal_st_file *out,
			const char *norm, const char *const *lins, size_t n)
{
	double s[64], alt[64];
	norm_scale(src, out, norm, s, alt, 64);
	for (size_t i = 0; i < n; i++) {
		cr_expect_null(tensor(out, lins[i], "pre_quant_scale"), "%s", lins[i]);
		double e = fold_err(src, out, lins[i], s), e_alt = fold_err(src, out, lins[i], alt);
		printf("%s: fold error %.5f (norm folded as weight * s: %.5f)\n", lins[i], e, e_alt);
		cr_expect(e < 0.02 && e < 0.95 * e_alt, "%s: fold error %g (weight * s: %g)", lins[i],
			  e, e_alt);
	}
}

/* One case: arch quantized with qformat; kept: linears with a
 * pre_quant_scale (fold error below thr); fused: the group fused into norm. */
struct gcase {
	const char *arch, *qformat;
	const char *kept[6];
	double thr;
	const char *norm;
	const char *fused[4];
};

static void run_case(const struct gcase *g)
{
	struct cal_st_file *src, *out;
	char *root;
	size_t nk = 0, nf = 0;
	quantize(g->arch, g->qformat, &src, &out, &root);
	while (nk < CAL_ARRAY_LEN(g->kept) && g->kept[nk])
		nk++;
	while (nf < CAL_ARRAY_LEN(g->fused) && g->fused[nf])
		nf++;
	kept_scales(src, out, g->kept, nk, g->thr);
	if (g->norm)
		fused_group(src, out, g->norm, g->fused, nf);
	/* not quantized (modelopt's defaults): no pre_quant_scale */
	cr_expect_null(tensor(out, "model.layers.0.linear_attn.in_proj_ba", "pre_quant_scale"));
	cr_expect_null(tensor(out, "model.layers.0.linear_attn.in_proj_a", "pre_quant_scale"));
	cal_st_file_free(src);
	cal_st_file_free(out);
	rm_rf(root);
}

static const struct gcase cases[] = {
	/* Gated DeltaNet: in_proj_qkvz alone (in_proj_ba is not quantized)
	 * keeps its pre_quant_scale, as out_proj, o_proj and the shared expert;
	 * gated attention's q/k/v are fused into input_layernorm (1 + weight) */
	{"qwen3_next", "nvfp4_awq",
	 {"model.layers.0.linear_attn.in_proj_qkvz", "model.layers.2.linear_attn.out_proj",
	  "model.layers.3.self_attn.o_proj", "model.layers.1.mlp.shared_expert.gate_proj",
	  "model.layers.1.mlp.shared_expert.down_proj"},
	 0.02, "model.layers.3.input_layernorm.weight",
	 {"model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj",
	  "model.layers.3.self_attn.v_proj"}},
	/* Qwen3.5's split in_proj_qkv / in_proj_z read input_layernorm's
	 * output: a group of two, fused into the norm */
	{"qwen3_5_moe_text", "nvfp4_awq", {"model.layers.1.linear_attn.out_proj"}, 0.02,
	 "model.layers.1.input_layernorm.weight",
	 {"model.layers.1.linear_attn.in_proj_qkv", "model.layers.1.linear_attn.in_proj_z"}},
	/* SmoothQuant: every smoothed linear keeps its pre_quant_scale (INT8:
	 * near exact) */
	{"qwen3_next", "int8_sq",
	 {"model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.o_proj",
	  "model.layers.0.linear_attn.in_proj_qkvz", "model.layers.0.linear_attn.out_proj",
	  "model.layers.0.mlp.shared_expert.up_proj"},
	 1e-3, NULL, {NULL}},
};

/* The parameters are indices into cases (the test runs in a new process). */
ParameterizedTestParameters(awq_gated, folds)
{
	size_t n = CAL_ARRAY_LEN(cases), *idx = cr_malloc(n * sizeof(*idx));
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	return cr_make_param_array(size_t, idx, n);
}

ParameterizedTest(size_t *i, awq_gated, folds, .timeout = 120)
{
	run_case(&cases[*i]);
}
