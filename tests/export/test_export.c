/*
 * test_export.c — suite 'unit' tests of engine/export: exclude_modules
 * summarisation against hand-derived lists, every MoE fixture architecture
 * and expert layout exported with four recipes (experts-only NVFP4, default
 * NVFP4, FP8, W4A16) from synthetic statistics, each output verified and its
 * quantized tensors compared byte for byte with a deliberately simple
 * re-implementation of docs/numerics.md written here (no kernels/ code), a
 * kill -9 in the middle of an export, and a full disk.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/export/export.h"
#include "engine/export/stats.h"
#include "engine/job.h"
#include "engine/st/st_writer.h"
#include "fixture.h"
#include "testrng.h"
#include "testutil.h"

#define SEED 20260521ull

/* ---- exclude_modules ---------------------------------------------------- */

/* A list of names a call returns, with its error */
struct got_names {
	char **v;
	size_t n;
	struct cal_error err;
};

/* rc must be CAL_OK and g's names (freed here) exactly want */
static void expect_names(int rc, struct got_names *g, const char *const *want, size_t nw)
{
	cr_assert_eq(rc, CAL_OK);
	cr_assert_eq(g->n, nw, "got %zu names, want %zu", g->n, nw);
	for (size_t i = 0; i < g->n; i++)
		cr_assert_str_eq(g->v[i], want[i], "item %zu", i);
	cal_exclude_free(g->v, g->n);
}

static void check_exclude(const char *const *unq, size_t nu, const char *const *q, size_t nq,
			  const char *const *want, size_t nw)
{
	struct got_names g = {0};
	expect_names(cal_exclude_summarize(unq, nu, q, nq, &g.v, &g.n, &g.err), &g, want, nw);
}

Test(exclude, doc_example)
{
	/* docs/export.md "exclude_modules": Qwen3-MoE, 2 layers, experts-only
	 */
	const char *unq[] = {
		"model.embed_tokens",
		"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
		"model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj",
		"model.layers.0.mlp.gate",
		"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
		"model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj",
		"model.layers.1.mlp.gate", "lm_head"};
	const char *q[] = {"model.layers.0.mlp.experts", "model.layers.1.mlp.experts"};
	const char *want[] = {"lm_head", "model.embed_tokens", "model.layers.0.mlp.gate",
			      "model.layers.0.self_attn*", "model.layers.1.mlp.gate",
			      "model.layers.1.self_attn*"};
	check_exclude(unq, 12, q, 2, want, 6);
}

Test(exclude, hand_derived)
{
	/* a hand-derived case: layer8 alone */
	const char *u1[] = {"layer8"};
	const char *q1[] = {"layer1", "layer2"};
	const char *w1[] = {"layer8"};
	check_exclude(u1, 1, q1, 2, w1, 1);
	/* "a.b*" is negative (a.bc quantized) -> the pair "a.b", "a.b.*" -> "a.b.*";
	 * then a.b itself: "a*" "a" "a.*" "a.b*" negative, pair ["a.b","a.b.*"]:
	 * "a.b" not in the result (only "a.b.*" is) -> added again as "a.b.*" */
	const char *u2[] = {"a.b.c", "a.b"};
	const char *q2[] = {"a.bc"};
	const char *w2[] = {"a.b", "a.b.*"};
	/* a.b: candidates at dots: "a*" neg; ["a","a.*"] neg ("a.*" prefix of
	 * a.bc); final [name] = ["a.b"] not negative -> "a.b" */
	check_exclude(u2, 2, q2, 1, w2, 2);
	/* nothing quantized: everything collapses to the first component */
	const char *u3[] = {"model.x.y", "model.z", "lm_head"};
	const char *w3[] = {"lm_head", "model*"};
	check_exclude(u3, 3, NULL, 0, w3, 2);
	/* an unquantized name equal to a quantized prefix can only be itself */
	const char *u4[] = {"m.experts.gate", "m.experts"};
	const char *q4[] = {"m.experts.0"};
	const char *w4[] = {"m.experts", "m.experts.gate"};
	check_exclude(u4, 2, q4, 1, w4, 2);
}

static void check_mtp(const char *const *names, size_t n, int64_t layers, int64_t nextn,
		      const char *const *want, size_t nw)
{
	struct got_names g = {0};
	expect_names(cal_mtp_prefixes(names, n, layers, nextn, &g.v, &g.n, &g.err), &g, want, nw);
}

Test(exclude, mtp_prefixes_as_hf_ptq)
{
	/* Qwen3.5 / Qwen3-Next: a separately stored head */
	const char *q35[] = {"model.language_model.layers.0.mlp.gate.weight", "mtp.fc.weight",
			     "mtp.layers.0.self_attn.q_proj.weight", "mtp.norm.weight",
			     "mtp.layers.0.mlp.experts.1.up_proj.weight"};
	const char *w35[] = {"mtp", "mtp.layers.0"};
	check_mtp(q35, 5, 40, 0, w35, 2);
	/* only the head's fc: no layer prefix */
	const char *fc[] = {"mtp.fc.weight"};
	check_mtp(fc, 1, 4, 0, w35, 1);
	/* DeepSeek-V3: layer 61 inlined; layers below stay, 62 is not MTP */
	const char *ds[] = {"model.layers.60.mlp.gate.weight", "model.layers.61.enorm.weight",
			    "model.layers.61.eh_proj.weight", "model.layers.62.x.weight"};
	const char *wds[] = {"model.layers.61"};
	check_mtp(ds, 4, 61, 1, wds, 1);
	cr_assert(cal_is_mtp_tensor("model.layers.61.enorm.weight", 61, 1));
	cr_assert(!cal_is_mtp_tensor("model.layers.61.enorm.weight", 61, 0));
	cr_assert(!cal_is_mtp_tensor("model.layers.6.enorm.weight", 61, 1));
	cr_assert(!cal_is_mtp_tensor("model.layers.610.x", 61, 1));
	/* "mtp" anywhere in the name; "model" is never a prefix (it would cover
	 * the backbone), its first layers.<i> is */
	const char *sub[] = {"model.mtp_block.layers.3.w.weight"};
	const char *wsub[] = {"model.mtp_block.layers.3"};
	check_mtp(sub, 1, 4, 0, wsub, 1);
	/* inlined layers all count once any MTP tensor exists */
	const char *two[] = {"model.layers.4.x.weight"};
	const char *wtwo[] = {"model.layers.4", "model.layers.5"};
	check_mtp(two, 1, 4, 2, wtwo, 2);
	/* nothing MTP: nothing */
	const char *none[] = {"model.layers.0.self_attn.q_proj.weight"};
	check_mtp(none, 1, 4, 1, NULL, 0);
}

/* ---- fixtures ------------------------------------------------------------ */

static char *make_model(const char *root, const char *arch, const char *layout)
{
	struct cal_fixture_opts fo = {.arch = arch, .seed = SEED};
	if (strcmp(layout, "default"))
		cr_assert_eq(cal_fixture_layout_parse(layout, &fo.layout), 0);
	char *dir = NULL;
	cr_assert(asprintf(&dir, "%s/src-%s-%s", root, arch, layout) > 0);
	struct cal_error err = {0};
	cr_assert_eq(cal_fixture_write(&fo, dir, &err), CAL_OK, "%s", cal_error_msg(&err));
	return dir;
}

/* ---- synthetic statistics ------------------------------------------------ */

/* A deterministic amax per quantizer name, in [0.5, 10.5). */
static float synth_amax(const char *name)
{
	uint64_t s = cal_test_fnv1a(SEED, name);
	return 0.5f + (float)(cal_test_splitmix(&s) % 1000) / 100.0f;
}

static struct cal_stats *synth_stats(const struct cal_plan *p)
{
	struct cal_stats *s = NULL;
	cr_assert_eq(cal_stats_init(&s, NULL), CAL_OK);
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		if (q->spec.enabled && q->spec.calibrate && q->role != CAL_QROLE_WEIGHT)
			cr_assert_eq(cal_stats_set(s, q->name, synth_amax(q->name), NULL), CAL_OK);
	}
	for (int32_t L = 0; L < (int32_t)p->model->num_layers; L++) {
		if (p->model->layers[L].ffn != CAL_FFN_MOE)
			continue;
		uint64_t t[256] = {0};
		for (int64_t e = 0; e < p->model->num_experts; e++)
			t[e] = e == 1 ? 0 : (uint64_t)(10 + e * 3);
		cr_assert_eq(cal_stats_set_expert_tokens(s, L, p->model->num_experts, t, NULL), CAL_OK);
	}
	struct cal_stats_calib c = {4, 16, 64, NULL};
	cal_stats_set_calib(s, &c);
	return s;
}

/* ---- a job's parts ------------------------------------------------------ */

/* A job opened by the engine (cal_job_open) on the CPU, its parts, and
 * synthetic statistics for its plan. */
struct job {
	struct cal_job *job;
	const struct cal_model_desc *d;
	const struct cal_checkpoint *ck;
	const struct cal_catalog *cat;
	const struct cal_plan *p;
	struct cal_backend *be;
	struct cal_stats *stats;
};

static void job_open(struct job *j, const char *src, const char *recipe)
{
	struct cal_job_opts o = {.model_dir = src, .recipe = recipe,
				 .devices = {.kind = CAL_DEVICE_CPU}};
	struct cal_error e0 = {0};
	memset(j, 0, sizeof(*j));
	cr_assert_eq(cal_job_open(&o, CAL_JOB_OPEN_FOR(CAL_JOB_EXPORT), &j->job, NULL, &e0), CAL_OK,
		     "%s", cal_error_msg(&e0));
	j->d = cal_job_model(j->job);
	j->ck = cal_job_checkpoint(j->job);
	j->cat = cal_job_catalog(j->job);
	j->p = cal_job_plan(j->job);
	j->be = cal_job_backend(j->job);
	j->stats = synth_stats(j->p);
}

static void job_close(struct job *j)
{
	cal_stats_free(j->stats);
	cal_job_close(j->job);
}

/* ---- the independent reference (docs/numerics.md, CUDA semantics) ------- */

static float e4m3_value(int c)
{
	int e = (c >> 3) & 15, m = c & 7;
	return e ? ldexpf(1.0f + (float)m / 8.0f, e - 7) : ldexpf((float)m / 8.0f, -6);
}

static uint8_t ref_e4m3(float x)
{
	uint8_t sign = signbit(x) ? 0x80 : 0;
	double a = fabs((double)x);
	if (isnan(x) || a > 464.0)
		return sign | 0x7f;
	if (a >= 448.0)
		return sign | 0x7e;
	int best = 0;
	double bd = INFINITY;
	for (int c = 0; c < 127; c++) {
		double dd = fabs(a - (double)e4m3_value(c));
		if (dd < bd || (dd == bd && !(c & 1))) {
			bd = dd;
			best = c;
		}
	}
	return sign | (uint8_t)best;
}

static unsigned ref_e2m1(float q)
{
	static const float bounds[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
	float a = fabsf(q);
	unsigned idx = 0;
	for (int k = 0; k < 7; k++)
		idx += bounds[k] < a;
	if (a == 0.75f || a == 1.75f || a == 3.5f)
		idx++;
	return idx | (q < 0.0f ? 8u : 0u);
}

static float bf(uint16_t h)
{
	return cal_bf16_to_f32(h);
}

static void ref_nvfp4(const uint16_t *w, int64_t o, int64_t in, float amax, uint8_t *packed,
		      uint8_t *scales, float *s2)
{
	float S2 = amax * (1.0f / 2688.0f);
	float D = 6.0f * S2;
	*s2 = S2;
	for (int64_t r = 0; r < o; r++) {
		for (int64_t b = 0; b < in / 16; b++) {
			const uint16_t *x = w + r * in + b * 16;
			float a = 0;
			for (int k = 0; k < 16; k++)
				a = fmaxf(a, fabsf(bf(x[k])));
			float s = a / D;
			if (s == 0.0f)
				s = 1.0f;
			s = fminf(fmaxf(s, 0.001953125f), 448.0f);
			uint8_t E = ref_e4m3(s);
			scales[r * (in / 16) + b] = E;
			float T = e4m3_value(E) * S2;
			for (int k = 0; k < 16; k += 2) {
				unsigned lo = ref_e2m1(bf(x[k]) / T), hi = ref_e2m1(bf(x[k + 1]) / T);
				packed[(r * in + b * 16 + k) / 2] = (uint8_t)(lo | hi << 4);
			}
		}
	}
}

static void ref_fp8(const uint16_t *w, uint64_t n, float amax, uint8_t *q, float *scale)
{
	float S = amax * (1.0f / 448.0f);
	float dv = cal_round_bf16(S);
	*scale = S;
	for (uint64_t k = 0; k < n; k++)
		q[k] = ref_e4m3(cal_round_bf16(bf(w[k]) / dv));
}

/* ---- comparing an export with the reference ----------------------------- */

/* One case: its label (in messages), the job it was exported from (the
 * source model, its tensors, the stats) and the export. */
struct ctx {
	const char *label;
	const struct job *j;
	const struct cal_checkpoint *out;
};

static const struct cal_st_tensor *oget(const struct ctx *c, const char *mod, const char *suf)
{
	char name[1200];
	snprintf(name, sizeof(name), "%s.%s", mod, suf);
	return cal_checkpoint_find(c->out, name);
}

/* Source weight of an output module (bf16 [o, in], malloc), via the catalog. */
static uint16_t *src_weight(const struct ctx *c, const char *mod, int64_t *o, int64_t *in)
{
	const char *pre = cal_catalog_prefix(c->j->cat);
	const char *e = strstr(mod, ".experts.");
	if (e) {
		int L = atoi(mod + strlen(pre) + 7);
		char *end;
		long ex = strtol(e + 9, &end, 10);
		int proj = -1;
		for (int k = 0; k < 3; k++)
			if (!strcmp(end + 1, c->j->d->arch->expert_proj[k]))
				proj = k;
		cr_assert(proj >= 0, "%s", mod);
		struct cal_expert_slice sl;
		cr_assert_eq(cal_catalog_expert(c->j->cat, L, (int32_t)ex, (enum cal_proj)proj, &sl,
						NULL), CAL_OK);
		uint16_t *w = malloc((size_t)(sl.out * sl.in) * 2);
		const uint16_t *s = sl.t->data;
		for (int64_t r = 0; r < sl.out; r++)
			for (int64_t k = 0; k < sl.in; k++)
				w[r * sl.in + k] = s[cal_expert_slice_index(&sl, r, k)];
		*o = sl.out;
		*in = sl.in;
		return w;
	}
	char name[1200];
	snprintf(name, sizeof(name), "%s.weight", mod);
	const struct cal_checkpoint *ck = NULL;
	(void)ck;
	const struct cal_st_tensor *t = NULL;
	for (size_t i = 0; i < cal_catalog_count(c->j->cat) && !t; i++)
		if (!strcmp(cal_catalog_entry(c->j->cat, i)->t->name, name))
			t = cal_catalog_entry(c->j->cat, i)->t;
	cr_assert(t, "%s: no source weight", name);
	*o = t->shape[0];
	*in = t->shape[1];
	uint16_t *w = malloc(t->nbytes);
	memcpy(w, t->data, t->nbytes);
	return w;
}

static float amax_bf16(const uint16_t *w, uint64_t n)
{
	float m = 0;
	for (uint64_t k = 0; k < n; k++)
		m = fmaxf(m, fabsf(bf(w[k])));
	return m;
}

/* Members of mod's sibling group (docs/export.md "Sibling groups") as output
 * module names; experts: gate+up of the same expert.  Returns the count. */
static int siblings(const struct ctx *c, const char *mod, char out[4][1200])
{
	static const char *const groups[][4] = {
		{"q_proj", "k_proj", "v_proj", NULL},
		{"q_a_proj", "kv_a_proj_with_mqa", NULL, NULL},
		{"gate_proj", "up_proj", NULL, NULL},
		{"w1", "w3", NULL, NULL},
		{"in_proj_qkvz", "in_proj_ba", NULL, NULL},
		{"in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"},
	};
	const char *dot = strrchr(mod, '.');
	for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
		for (int k = 0; k < 4 && groups[g][k]; k++) {
			if (strcmp(dot + 1, groups[g][k]))
				continue;
			int n = 0;
			for (int j = 0; j < 4 && groups[g][j]; j++) {
				snprintf(out[n], 1200, "%.*s.%s", (int)(dot - mod), mod, groups[g][j]);
				const struct cal_st_tensor *t = oget(c, out[n], "weight");
				if (t && (t->dtype == CAL_DTYPE_U8 || t->dtype == CAL_DTYPE_F8_E4M3))
					n++;
			}
			/* MLA without q_lora: q_proj joins kv_a */
			return n;
		}
	}
	snprintf(out[0], 1200, "%s", mod);
	return 1;
}

/* Input quantizer name (plan naming) of an output module. */
static void input_qname(const struct ctx *c, const char *mod, char *buf, size_t len)
{
	const char *e = strstr(mod, ".experts.");
	if (e) {
		const char *end = strchr(e + 9, '.') + 1;
		int down = !strcmp(end, c->j->d->arch->expert_proj[2]);
		const char *pre = cal_catalog_prefix(c->j->cat);
		int L = atoi(mod + strlen(pre) + 7);
		snprintf(buf, len, "%slayers.%d.mlp.experts.%s_input_quantizer", c->j->d->prefix, L,
			 down ? "down_proj" : "gate_up_proj");
		return;
	}
	snprintf(buf, len, "%s.input_quantizer", mod);
}

static int check_module(const struct ctx *c, const char *mod, int nvfp4)
{
	int64_t o, in;
	uint16_t *w = src_weight(c, mod, &o, &in);
	char sib[4][1200];
	int ns = siblings(c, mod, sib);
	float wamax = 0, iamax = 0;
	int has_in = oget(c, mod, "input_scale") != NULL;
	for (int k = 0; k < ns; k++) {
		int64_t o2, i2;
		uint16_t *w2 = src_weight(c, sib[k], &o2, &i2);
		int unify = nvfp4 || strstr(mod, ".experts.");
		if (unify || !strcmp(sib[k], mod))
			wamax = fmaxf(wamax, amax_bf16(w2, (uint64_t)(o2 * i2)));
		char qn[5000];
		float a;
		input_qname(c, sib[k], qn, sizeof(qn));
		if ((nvfp4 || !strcmp(sib[k], mod)) && cal_stats_get(c->j->stats, qn, &a))
			iamax = fmaxf(iamax, a);
		free(w2);
	}
	uint64_t n = (uint64_t)(o * in);
	const struct cal_st_tensor *tw = oget(c, mod, "weight"), *ts = oget(c, mod, "weight_scale");
	cr_assert(tw && ts, "%s: %s tensors missing", c->label, mod);
	if (nvfp4) {
		uint8_t *pk = malloc(n / 2), *sc = malloc(n / 16);
		float s2;
		ref_nvfp4(w, o, in, wamax, pk, sc, &s2);
		cr_assert_eq(tw->nbytes, n / 2);
		cr_assert(!memcmp(tw->data, pk, n / 2), "%s: %s.weight differs", c->label, mod);
		cr_assert(!memcmp(ts->data, sc, n / 16), "%s: %s.weight_scale differs", c->label, mod);
		const struct cal_st_tensor *t2 = oget(c, mod, "weight_scale_2");
		cr_assert(t2 && !memcmp(t2->data, &s2, 4), "%s: %s.weight_scale_2 differs", c->label,
			  mod);
		if (has_in) {
			float is = iamax * (1.0f / 2688.0f);
			cr_assert(!memcmp(oget(c, mod, "input_scale")->data, &is, 4),
				  "%s: %s.input_scale differs", c->label, mod);
		}
		free(pk);
		free(sc);
	} else {
		uint8_t *q = malloc(n);
		float s;
		ref_fp8(w, n, wamax, q, &s);
		cr_assert(!memcmp(tw->data, q, n), "%s: %s.weight differs", c->label, mod);
		cr_assert(!memcmp(ts->data, &s, 4), "%s: %s.weight_scale differs", c->label, mod);
		cr_assert(has_in, "%s: %s.input_scale missing", c->label, mod);
		float is = iamax * (1.0f / 448.0f);
		cr_assert(!memcmp(oget(c, mod, "input_scale")->data, &is, 4),
			  "%s: %s.input_scale differs", c->label, mod);
		free(q);
	}
	free(w);
	return 1;
}

/* GPT-OSS experts (docs/gpt_oss.md): one BMM tensor per projection,
 * [E, cols, R] on disk for rows [E * R, C]; transposes back to rows. */
static void *bmm_rows(const void *t, int64_t E, int64_t cols, int64_t R, size_t es)
{
	unsigned char *o = malloc((size_t)(E * cols * R) * es);
	const unsigned char *s = t;
	for (int64_t e = 0; e < E; e++)
		for (int64_t j = 0; j < cols; j++)
			for (int64_t r = 0; r < R; r++)
				memcpy(o + ((e * R + r) * cols + j) * es, s + ((e * cols + j) * R + r) * es,
				       es);
	return o;
}

/* The source experts of projection `proj_name` in layer L as bf16 [E * R, C]:
 * the bf16 [E, C, R] parameter, or MXFP4 blocks decoded with a table. */
static uint16_t *bmm_src(const struct ctx *c, int L, int down, int64_t *R, int64_t *C)
{
	static const float lut[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -.5f, -1, -1.5f, -2, -3,
				      -4, -6};
	int64_t E = c->j->d->num_experts, H = c->j->d->hidden_size, I = c->j->d->moe_intermediate_size;
	*R = down ? H : 2 * I;
	*C = down ? I : H;
	enum cal_role role = down ? CAL_ROLE_EXPERTS_DOWN : CAL_ROLE_EXPERTS_GATE_UP;
	uint16_t *w = malloc((size_t)(E * *R * *C) * 2);
	const struct cal_st_tensor *t = cal_catalog_find(c->j->cat, role, CAL_PART_WEIGHT, L, -1);
	if (t) {
		uint16_t *r = bmm_rows(t->data, E, *C, *R, 2); /* [E, C, R] -> [E * R, C] */
		memcpy(w, r, (size_t)(E * *R * *C) * 2);
		free(r);
		return w;
	}
	const struct cal_st_tensor *b = cal_catalog_find(c->j->cat, role, CAL_PART_BLOCKS, L, -1);
	const struct cal_st_tensor *sc = cal_catalog_find(c->j->cat, role, CAL_PART_SCALES, L, -1);
	cr_assert(b && sc, "layer %d: no source experts", L);
	const uint8_t *pk = b->data, *sv = sc->data;
	for (int64_t k = 0; k < E * *R * *C; k++) {
		unsigned code = (pk[k / 2] >> (4 * (k & 1))) & 15u;
		w[k] = cal_f32_to_bf16(lut[code] * ldexpf(1.0f, (int)sv[k / 32] - 127));
	}
	return w;
}

static void check_bmm(const struct ctx *c, const struct cal_st_tensor *t, int nvfp4, int w4a16)
{
	const char *pre = cal_catalog_prefix(c->j->cat);
	int L = atoi(t->name + strlen(pre) + 7), down = strstr(t->name, ".down_proj") != NULL;
	int64_t R, C, E = c->j->d->num_experts;
	uint16_t *w = bmm_src(c, L, down, &R, &C);
	uint64_t n = (uint64_t)(E * R * C);
	char nm[1200], qn[1300];
	const struct cal_st_tensor *ts, *t2, *ti;
	float iamax = 0;
	snprintf(qn, sizeof(qn), "%slayers.%d.mlp.experts.%s_input_quantizer", c->j->d->prefix, L,
		 down ? "down_proj" : "gate_up_proj");
	cr_assert(w4a16 || cal_stats_get(c->j->stats, qn, &iamax), "%s: %s", c->label, qn);
#define BT(suf) (snprintf(nm, sizeof(nm), "%s_%s", t->name, suf), cal_checkpoint_find(c->out, nm))
	ts = BT("weight_scale");
	t2 = BT("weight_scale_2");
	ti = BT("input_scale");
	cr_assert(ts, "%s: %s_weight_scale missing", c->label, t->name);
	cr_assert_eq(ti != NULL, !w4a16, "%s: %s_input_scale", c->label, t->name);
	float wamax = amax_bf16(w, n);
	if (nvfp4) {
		uint8_t *pk = malloc(n / 2), *sc = malloc(n / 16);
		float s2;
		ref_nvfp4(w, E * R, C, wamax, pk, sc, &s2);
		cr_assert(t->ndim == 3 && t->shape[0] == E && t->shape[1] == C / 2 && t->shape[2] == R,
			  "%s: %s shape", c->label, t->name);
		uint8_t *got = bmm_rows(t->data, E, C / 2, R, 1), *gs = bmm_rows(ts->data, E, C / 16, R, 1);
		cr_assert(!memcmp(got, pk, n / 2), "%s: %s differs", c->label, t->name);
		cr_assert(!memcmp(gs, sc, n / 16), "%s: %s_weight_scale differs", c->label, t->name);
		cr_assert(t2 && !memcmp(t2->data, &s2, 4), "%s: %s_weight_scale_2", c->label, t->name);
		if (ti) {
			float is = iamax * (1.0f / 2688.0f);
			cr_assert(!memcmp(ti->data, &is, 4), "%s: %s_input_scale", c->label, t->name);
		}
		free(got);
		free(gs);
		free(pk);
		free(sc);
	} else {
		uint8_t *q = malloc(n);
		float s = wamax * (1.0f / 448.0f);
		/* stacked 3-D weights: the quotient stays fp32, one rounding */
		for (uint64_t k = 0; k < n; k++)
			q[k] = ref_e4m3(bf(w[k]) / s);
		uint8_t *got = bmm_rows(t->data, E, C, R, 1);
		cr_assert(!memcmp(got, q, n), "%s: %s differs", c->label, t->name);
		cr_assert(!memcmp(ts->data, &s, 4), "%s: %s_weight_scale differs", c->label, t->name);
		float is = iamax * (1.0f / 448.0f);
		cr_assert(ti && !memcmp(ti->data, &is, 4), "%s: %s_input_scale", c->label, t->name);
		free(got);
		free(q);
	}
#undef BT
	free(w);
}

struct recipe_case {
	const char *name;
	int nvfp4;          /* else FP8 */
	int w4a16;
	int experts_only;
	int kv;             /* calibrated FP8 KV scales expected */
};

static const struct recipe_case RECIPES[] = {
	{"general/ptq/nvfp4_experts_only-kv_fp8", 1, 0, 1, 1},
	{"general/ptq/nvfp4_default-kv_fp8", 1, 0, 0, 1},
	{"general/ptq/fp8_default-kv_fp8", 0, 0, 0, 1},
	{"general/ptq/nvfp4_weight_only-kv_fp16", 1, 1, 0, 0},
};

static void export_and_check(const char *root, const char *src, const char *label,
			     const struct recipe_case *rc)
{
	struct cal_error err = {0};
	struct cal_checkpoint *out = NULL;
	struct job j;
	job_open(&j, src, rc->name);
	const struct cal_model_desc *d = j.d;
	char *dst = NULL, *report = NULL, *vrep = NULL;
	cr_assert(asprintf(&dst, "%s/out-%s", root, label) > 0);
	struct cal_export_opts eo = {.model_dir = src, .out_dir = dst, .recipe_name = rc->name};
	enum cal_status st = cal_export_run(rc->name, j.stats, j.be, &eo, &report, &err);
	cr_assert_eq(st, CAL_OK, "%s: %s", label, cal_error_msg(&err));
	st = cal_export_verify(dst, src, j.be, &vrep, &err);
	cr_assert_eq(st, CAL_OK, "%s: verify: %s", label, cal_error_msg(&err));
	/* byte comparison of every quantized module */
	cr_assert_eq(cal_checkpoint_open(dst, &out, &err), CAL_OK);
	struct ctx c = {label, &j, out};
	size_t nq = 0, nexp = 0;
	for (size_t i = 0; i < cal_checkpoint_count(out); i++) {
		const struct cal_st_tensor *t = cal_checkpoint_tensor(out, i);
		size_t l = strlen(t->name);
		if (t->ndim == 3 && c.j->d->act == CAL_ACT_SWIGLU_OAI &&
		    (!strcmp(t->name + l - 13, ".gate_up_proj") || !strcmp(t->name + l - 10, ".down_proj")) &&
		    (t->dtype == CAL_DTYPE_U8 || t->dtype == CAL_DTYPE_F8_E4M3)) {
			check_bmm(&c, t, rc->nvfp4, rc->w4a16); /* gpt_oss */
			nq++;
			nexp++;
			continue;
		}
		if (l < 8 || strcmp(t->name + l - 7, ".weight") ||
		    (t->dtype != CAL_DTYPE_U8 && t->dtype != CAL_DTYPE_F8_E4M3))
			continue;
		char *mod = strndup(t->name, l - 7);
		nq += (size_t)check_module(&c, mod, rc->nvfp4);
		if (strstr(mod, ".experts.")) {
			nexp++;
			cr_assert_eq(oget(&c, mod, "input_scale") != NULL, !rc->w4a16,
				     "%s: %s input_scale", label, mod);
		} else {
			cr_assert(!rc->experts_only, "%s: %s quantized by experts-only", label, mod);
		}
		free(mod);
	}
	cr_assert_eq(nexp, (size_t)(d->n_moe_layers * (d->act == CAL_ACT_SWIGLU_OAI ? 2 :
							d->num_experts * 3)),
		     "%s: %zu experts", label, nexp);
	/* KV scales */
	size_t nk = 0;
	for (size_t i = 0; i < cal_checkpoint_count(out); i++)
		nk += strstr(cal_checkpoint_tensor(out, i)->name, ".k_proj.k_scale") != NULL;
	cr_assert_eq(nk, rc->kv ? (size_t)(d->n_full_layers + d->n_sliding_layers) : 0,
		     "%s: %zu k_scale", label, nk);
	/* hf_quant_config: algo and exclude list */
	char *hp = cal_path_join(dst, "hf_quant_config.json");
	json_t *hq = json_load_file(hp, 0, NULL);
	cr_assert(hq, "%s: hf_quant_config.json", label);
	json_t *q = json_object_get(hq, "quantization");
	cr_assert_str_eq(json_string_value(json_object_get(q, "quant_algo")),
			 rc->w4a16 ? "W4A16_NVFP4" : rc->nvfp4 ? "NVFP4" : "FP8", "%s", label);
	json_t *ex = json_object_get(q, "exclude_modules");
	cr_assert(json_is_array(ex));
	int has_lm = 0;
	size_t k;
	json_t *v;
	json_array_foreach(ex, k, v) {
		has_lm |= !strcmp(json_string_value(v), "lm_head");
		/* no pattern may match a quantized module */
		for (size_t i = 0; i < cal_checkpoint_count(out); i++) {
			const char *tn = cal_checkpoint_tensor(out, i)->name;
			size_t l = strlen(tn);
			if (l > 13 && !strcmp(tn + l - 13, ".weight_scale")) {
				char *mod = strndup(tn, l - 13);
				cr_assert(!cal_fnmatch(json_string_value(v), mod) &&
					  strcmp(json_string_value(v), mod),
					  "%s: %s excludes quantized %s", label, json_string_value(v), mod);
				free(mod);
			}
		}
	}
	cr_assert(has_lm, "%s: lm_head not excluded", label);
	json_decref(hq);
	free(hp);
	cr_assert(nq > 0);
	free(vrep);
	free(report);
	free(dst);
	cal_checkpoint_free(out);
	job_close(&j);
}

struct arch_case {
	const char *arch, *layout;
};

static const struct arch_case ARCHS[] = {
	{"qwen3_moe", "per-expert"}, {"qwen3_moe", "fused"},
	{"qwen2_moe", "per-expert"}, {"qwen2_moe", "fused"},
	{"mixtral", "mixtral"}, {"mixtral", "fused"},
	{"olmoe", "per-expert"}, {"olmoe", "fused"},
	{"qwen3_next", "per-expert"}, {"qwen3_next", "fused"},
	{"qwen3_5_moe", "fused"}, {"qwen3_5_moe", "per-expert"},
	{"qwen3_5_moe_text", "fused"}, {"qwen3_5_moe_text", "per-expert"},
	{"deepseek_v3", "per-expert"}, {"deepseek_v3", "fused"},
	{"gpt_oss", "default"}, {"gpt_oss", "mxfp4"},
};

Test(export, every_arch_layout_recipe, .timeout = 600)
{
	printf("seed %llu\n", (unsigned long long)SEED);
	char *root = cal_test_tmpdir("export");
	for (size_t a = 0; a < sizeof(ARCHS) / sizeof(ARCHS[0]); a++) {
		char *src = make_model(root, ARCHS[a].arch, ARCHS[a].layout);
		for (size_t r = 0; r < sizeof(RECIPES) / sizeof(RECIPES[0]); r++) {
			char label[256];
			snprintf(label, sizeof(label), "%s-%s-%zu", ARCHS[a].arch, ARCHS[a].layout, r);
			export_and_check(root, src, label, &RECIPES[r]);
		}
		free(src);
	}
	cal_test_rm_rf(root);
	free(root);
}

/* ---- failure paths ------------------------------------------------------- */

/* The end of a failure-path test: err cleared, j closed, root (with src
 * and dst in it) removed, the three paths freed. */
static void job_done(struct job *j, struct cal_error *err, char *root, char *src, char *dst)
{
	cal_error_clear(err);
	job_close(j);
	cal_test_rm_rf(root);
	free(dst);
	free(src);
	free(root);
}

static int exists(const char *p)
{
	struct stat sb;
	return stat(p, &sb) == 0;
}

Test(export, killed_midway_publishes_nothing)
{
	char *root = cal_test_tmpdir("export");
	char *src = make_model(root, "qwen3_moe", "per-expert");
	char *dst = NULL;
	cr_assert(asprintf(&dst, "%s/out-killed", root) > 0);
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		struct job j;
		job_open(&j, src, "general/ptq/nvfp4_experts_only-kv_fp8");
		struct cal_export_opts eo = {.model_dir = src, .out_dir = dst};
		struct cal_exporter *ex = NULL;
		if (cal_exporter_open(j.d, j.ck, j.cat, j.p, j.be, &eo, &ex, NULL) < 0 ||
		    cal_exporter_layer(ex, 0, j.stats, NULL) < 0)
			_exit(2);
		char ok = 1;
		if (write(fds[1], &ok, 1) != 1)
			_exit(3);
		pause(); /* killed here, in the middle of the export */
		_exit(4);
	}
	close(fds[1]);
	char b = 0;
	cr_assert_eq(read(fds[0], &b, 1), 1, "the child failed before layer 0 was written");
	cr_assert_eq(kill(pid, SIGKILL), 0);
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(WIFSIGNALED(ws));
	cr_assert(!exists(dst), "a killed export left %s", dst);
	/* an export to the same place still works afterwards */
	struct job j;
	job_open(&j, src, "general/ptq/nvfp4_experts_only-kv_fp8");
	struct cal_export_opts eo = {.model_dir = src, .out_dir = dst};
	struct cal_error err = {0};
	cr_assert_eq(cal_export_run("general/ptq/nvfp4_experts_only-kv_fp8", j.stats, j.be, &eo,
				    NULL, &err), CAL_OK, "%s", cal_error_msg(&err));
	cr_assert_eq(cal_export_verify(dst, NULL, j.be, NULL, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	/* and an existing output is never overwritten */
	cr_assert_eq(cal_export_run("general/ptq/nvfp4_experts_only-kv_fp8", j.stats, j.be, &eo,
				    NULL, &err), CAL_ERR_EXISTS);
	close(fds[0]);
	job_done(&j, &err, root, src, dst);
}

static size_t count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	size_t n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		n += e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."));
	if (d)
		closedir(d);
	return n;
}

Test(export, disk_full_leaves_nothing)
{
	char *root = cal_test_tmpdir("export");
	char *src = make_model(root, "mixtral", "mixtral");
	char *dst = NULL;
	cr_assert(asprintf(&dst, "%s/out-full", root) > 0);
	size_t before = count_entries(root);
	struct job j;
	job_open(&j, src, "general/ptq/nvfp4_experts_only-kv_fp8");
	struct cal_export_opts eo = {.model_dir = src, .out_dir = dst};
	struct cal_error err = {0};
	setenv("CALIBD_TEST_FREE_BYTES", "4096", 1);
	enum cal_status st = cal_export_run("general/ptq/nvfp4_experts_only-kv_fp8", j.stats, j.be,
					    &eo, NULL, &err);
	unsetenv("CALIBD_TEST_FREE_BYTES");
	cr_assert_eq(st, CAL_ERR_NOSPACE, "%s", cal_error_msg(&err));
	cr_assert(!exists(dst));
	cr_assert_eq(count_entries(root), before, "a temporary directory was left behind");
	job_done(&j, &err, root, src, dst);
}

/* Overwrites the 4 bytes of scalar tensor `name` in dir/model.safetensors. */
static void poke_scalar(const char *dir, const char *name, float v)
{
	char *p = cal_path_join(dir, "model.safetensors");
	FILE *f = fopen(p, "r+b");
	cr_assert(f);
	uint64_t hl;
	cr_assert_eq(fread(&hl, 8, 1, f), 1);
	char *h = malloc(hl + 1);
	cr_assert_eq(fread(h, 1, hl, f), hl);
	h[hl] = 0;
	json_t *j = json_loads(h, 0, NULL);
	json_t *off = json_object_get(json_object_get(j, name), "data_offsets");
	cr_assert(off, "%s not in the file", name);
	long at = (long)(8 + hl + json_integer_value(json_array_get(off, 0)));
	cr_assert_eq(fseek(f, at, SEEK_SET), 0);
	cr_assert_eq(fwrite(&v, 4, 1, f), 1);
	fclose(f);
	json_decref(j);
	free(h);
	free(p);
}

Test(verify, catches_violations)
{
	char *root = cal_test_tmpdir("export");
	char *src = make_model(root, "qwen3_moe", "fused");
	char *dst = NULL;
	cr_assert(asprintf(&dst, "%s/out", root) > 0);
	struct job j;
	job_open(&j, src, "general/ptq/nvfp4_experts_only-kv_fp8");
	struct cal_export_opts eo = {.model_dir = src, .out_dir = dst};
	struct cal_error err = {0};
	char *rep = NULL;
	cr_assert_eq(cal_export_run("general/ptq/nvfp4_experts_only-kv_fp8", j.stats, j.be, &eo,
				    &rep, &err), CAL_OK, "%s", cal_error_msg(&err));
	/* the report names experts without tokens and SQNR per weight */
	json_t *r = json_loads(rep, 0, NULL);
	cr_assert(r);
	json_t *ex0 = json_array_get(json_object_get(r, "experts"), 0);
	cr_assert_eq(json_integer_value(json_array_get(json_object_get(ex0, "experts_without_tokens"),
						       0)), 1);
	cr_assert_eq(json_array_size(json_object_get(json_object_get(r, "weight_sqnr"), "weights")),
		     (size_t)(j.d->n_moe_layers * j.d->num_experts * 3));
	json_decref(r);
	free(rep);
	cr_assert_eq(chmod(dst, 0755), 0);
	/* gate/up weight_scale_2 must agree */
	struct cal_checkpoint *oc = NULL;
	cr_assert_eq(cal_checkpoint_open(dst, &oc, NULL), CAL_OK);
	float orig;
	memcpy(&orig, cal_checkpoint_find(oc, "model.layers.0.mlp.experts.3.up_proj.weight_scale_2")
		      ->data, 4);
	cal_checkpoint_free(oc);
	poke_scalar(dst, "model.layers.0.mlp.experts.3.up_proj.weight_scale_2", 0.25f);
	cr_assert_eq(cal_export_verify(dst, src, j.be, NULL, &err), CAL_ERR_FORMAT);
	cr_assert(strstr(cal_error_msg(&err), "experts.3."), "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	/* a zero input_scale */
	poke_scalar(dst, "model.layers.0.mlp.experts.3.up_proj.weight_scale_2", orig);
	cr_assert_eq(cal_export_verify(dst, src, j.be, NULL, &err), CAL_OK, "%s",
		     cal_error_msg(&err));
	poke_scalar(dst, "model.layers.2.mlp.experts.5.down_proj.input_scale", 0.0f);
	cr_assert_eq(cal_export_verify(dst, NULL, j.be, NULL, &err), CAL_ERR_FORMAT);
	cr_assert(strstr(cal_error_msg(&err), "experts.5.down_proj.input_scale"), "%s",
		  cal_error_msg(&err));
	job_done(&j, &err, root, src, dst);
}

/* An affine KV quantizer's bias goes through the stats JSON and back
 * (docs/export.md); a bias that is not bf16 values is refused naming it. */
Test(stats, kv_bias_round_trip)
{
	struct cal_stats *s = NULL, *t = NULL;
	struct cal_error err = {0};
	const char *q = "model.layers.0.self_attn.k_bmm_quantizer";
	uint16_t b[4] = {0x3f80, 0xbf00, 0x0000, 0x3c23};
	uint64_t n = 0;
	cr_assert_eq(cal_stats_init(&s, &err), CAL_OK);
	cr_assert_eq(cal_stats_set_bias(s, q, b, 4, &err), CAL_ERR_INVALID); /* no amax yet */
	cal_error_clear(&err);
	cr_assert_eq(cal_stats_set(s, q, 2.5f, &err), CAL_OK);
	cr_assert_eq(cal_stats_set_bias(s, q, b, 4, &err), CAL_OK);
	char *text = cal_stats_json(s);
	char path[] = "/tmp/calibd-stats-XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0 && text);
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	cr_assert_eq(cal_stats_load(path, &t, &err), CAL_OK, "%s", cal_error_msg(&err));
	const uint16_t *got = cal_stats_bias(t, q, &n);
	cr_assert(got && n == 4 && !memcmp(got, b, sizeof(b)));
	cal_stats_free(t);
	FILE *f = fopen(path, "w");
	fprintf(f, "{\"quantizers\": {\"%s\": {\"amax\": 1.0, \"bias\": [1.0, 0.1]}}}", q);
	fclose(f);
	cr_assert_eq(cal_stats_load(path, &t, &err), CAL_ERR_FORMAT);
	cr_assert(strstr(cal_error_msg(&err), "bias of model.layers.0.self_attn.k_bmm_quantizer[1]"),
		  "%s", cal_error_msg(&err));
	cal_error_clear(&err);
	unlink(path);
	free(text);
	cal_stats_free(s);
}
