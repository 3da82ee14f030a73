/*
 * fwdcases.c — back-end comparison cases of the forward-pass ops (see
 * fwdcases.h).  Shapes derive from (rows, units) so the unit suite's shape
 * list covers edge cases (1 row, odd k, tails of the 2x4 GEMM kernel).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fwdcases.h"
#include "testrng.h"

struct fbuf {
	void *a, *b;
	size_t n;
};

struct fctx {
	struct opcase_env *env;
	const char *op;
	uint64_t rows, units, seed;
	struct fbuf bufs[12];
	int nbufs;
	int failed;
	int exact; /* both back ends are CPU */
};

static void ffail(struct fctx *c, const char *msg)
{
	if (!c->failed)
		fprintf(stderr, "MISMATCH op %s shape [%" PRIu64 " x %" PRIu64 " units] seed %" PRIu64
			" (%s vs %s): %s\n", c->op, c->rows, c->units, c->seed, c->env->a->name,
			c->env->b->name, msg);
	c->failed = 1;
}

static struct fbuf *fnew(struct fctx *c, size_t n, const void *host)
{
	struct fbuf *p = &c->bufs[c->nbufs++];
	struct cal_error err = {0};
	void *h = calloc(1, n ? n : 1);
	if (!h)
		abort();
	if (host)
		memcpy(h, host, n);
	p->n = n;
	p->a = p->b = NULL;
	if (cal_backend_alloc(c->env->a, n ? n : 1, &p->a, &err) < 0 ||
	    cal_backend_upload(c->env->a, p->a, h, n, &err) < 0 ||
	    cal_backend_alloc(c->env->b, n ? n : 1, &p->b, &err) < 0 ||
	    cal_backend_upload(c->env->b, p->b, h, n, &err) < 0)
		ffail(c, cal_error_msg(&err));
	cal_error_clear(&err);
	free(h);
	return p;
}

static void fdown(struct fctx *c, struct fbuf *p, void **ha, void **hb)
{
	struct cal_error err = {0};
	*ha = calloc(1, p->n ? p->n : 1);
	*hb = calloc(1, p->n ? p->n : 1);
	if (!*ha || !*hb)
		abort();
	if (!c->failed && (cal_backend_download(c->env->a, *ha, p->a, p->n, &err) < 0 ||
			   cal_backend_download(c->env->b, *hb, p->b, p->n, &err) < 0))
		ffail(c, cal_error_msg(&err));
	cal_error_clear(&err);
}

/* Compares bf16 (f32 = 0) or f32 outputs: exactly between CPU back ends,
 * else |x - y| <= atol + rtol |x| for all but `allow` elements. */
static void fcheck(struct fctx *c, struct fbuf *p, int f32, float rtol, float atol,
		   uint64_t allow, const char *what)
{
	void *ha, *hb;
	char msg[256];
	fdown(c, p, &ha, &hb);
	if (c->failed)
		goto out;
	if (c->exact || rtol < 0) {
		for (size_t i = 0; i < p->n; i++)
			if (((unsigned char *)ha)[i] != ((unsigned char *)hb)[i]) {
				snprintf(msg, sizeof(msg), "%s: byte %zu of %zu differs", what, i, p->n);
				ffail(c, msg);
				goto out;
			}
		goto out;
	}
	uint64_t n = p->n / (f32 ? 4 : 2), bad = 0;
	for (uint64_t i = 0; i < n; i++) {
		float x = f32 ? ((float *)ha)[i] : cal_nf_float((uint32_t)((uint16_t *)ha)[i] << 16);
		float y = f32 ? ((float *)hb)[i] : cal_nf_float((uint32_t)((uint16_t *)hb)[i] << 16);
		if (!(fabsf(x - y) <= atol + rtol * fabsf(x)) && ++bad > allow) {
			snprintf(msg, sizeof(msg), "%s: element %" PRIu64 ": %g vs %g", what, i,
				 (double)x, (double)y);
			ffail(c, msg);
			goto out;
		}
	}
out:
	free(ha);
	free(hb);
}

static int fdone(struct fctx *c)
{
	for (int i = 0; i < c->nbufs; i++) {
		cal_backend_dealloc(c->env->a, c->bufs[i].a);
		cal_backend_dealloc(c->env->b, c->bufs[i].b);
	}
	return c->failed ? -1 : 0;
}

#define FRUN(c, opname, aa, ab)                                                \
	do {                                                                   \
		struct cal_error e_ = {0};                                     \
		if (!(c)->failed &&                                            \
		    (cal_op_##opname((c)->env->a, &(aa), &e_) < 0 ||           \
		     cal_backend_sync((c)->env->a, &e_) < 0 ||                 \
		     cal_op_##opname((c)->env->b, &(ab), &e_) < 0 ||           \
		     cal_backend_sync((c)->env->b, &e_) < 0))                  \
			ffail((c), cal_error_msg(&e_));                        \
		cal_error_clear(&e_);                                          \
	} while (0)

static void fctx_init(struct fctx *c, struct opcase_env *env, const char *op, uint64_t rows,
		      uint64_t units, uint64_t seed)
{
	*c = (struct fctx){.env = env, .op = op, .rows = rows, .units = units, .seed = seed,
			   .exact = env->a->kind == CAL_BACKEND_CPU &&
				    env->b->kind == CAL_BACKEND_CPU};
}

static uint16_t *bf_rand(uint64_t n, float scale, uint64_t *s)
{
	uint16_t *p = malloc((n ? n : 1) * 2);
	if (!p)
		abort();
	for (uint64_t i = 0; i < n; i++)
		p[i] = cal_nf_f32_to_bf16(cal_test_unit(s) * scale);
	return p;
}

int fwdcase_gemm(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, m = rows < 300 ? rows : 300 + rows % 7;
	uint64_t n = (units % 97) * 3 + 1, k = (units % 61) * 5 + 3;
	uint32_t G = rows >= 4 ? 3 : 1;
	int with_bias = (seed & 1) != 0;
	fctx_init(&c, env, "gemm", rows, units, seed);
	uint16_t *x = bf_rand(m * k, 1.0f, &s), *w = bf_rand(G * n * k, 0.5f, &s);
	uint16_t *bias = bf_rand(G * n, 0.25f, &s);
	uint32_t off[4] = {0, (uint32_t)(m / 3), (uint32_t)(m / 3), (uint32_t)m};
	struct fbuf *bx = fnew(&c, m * k * 2, x), *bw = fnew(&c, G * n * k * 2, w);
	struct fbuf *bb = fnew(&c, G * n * 2, bias), *by = fnew(&c, m * n * 2, NULL);
	struct fbuf *bo = fnew(&c, sizeof(off), off);
	struct cal_gemm_args aa = {.x = bx->a, .w = bw->a, .bias = with_bias ? bb->a : NULL,
				   .y = by->a, .m = m, .n = n, .k = k, .n_groups = G,
				   .offsets = G > 1 ? bo->a : NULL, .w_stride = n * k,
				   .bias_stride = n, .bias_after_round = (seed & 2) != 0};
	struct cal_gemm_args ab = aa;
	ab.x = bx->b;
	ab.w = bw->b;
	ab.bias = with_bias ? bb->b : NULL;
	ab.y = by->b;
	ab.offsets = G > 1 ? bo->b : NULL;
	FRUN(&c, gemm, aa, ab);
	fcheck(&c, by, 0, 1.0f / 64, 1e-2f, 0, "y");
	free(x);
	free(w);
	free(bias);
	return fdone(&c);
}

int fwdcase_gather_rows(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, src_rows = units % 1000 + 2, cols = (units % 1000) * 2 + 1, n = rows;
	fctx_init(&c, env, "gather_rows", rows, units, seed);
	uint16_t *src = bf_rand(src_rows * cols, 1.0f, &s);
	uint32_t *idx = malloc(n * 4);
	for (uint64_t i = 0; i < n; i++)
		idx[i] = (uint32_t)(cal_test_splitmix(&s) % (src_rows * 2));
	struct fbuf *bs = fnew(&c, src_rows * cols * 2, src), *bi = fnew(&c, n * 4, idx);
	struct fbuf *bo = fnew(&c, n * cols * 2, NULL);
	struct cal_gather_rows_args aa = {bs->a, src_rows, cols, bi->a, n, 2, bo->a};
	struct cal_gather_rows_args ab = {bs->b, src_rows, cols, bi->b, n, 2, bo->b};
	FRUN(&c, gather_rows, aa, ab);
	fcheck(&c, bo, 0, -1, 0, 0, "out");
	free(src);
	free(idx);
	return fdone(&c);
}

int fwdcase_rmsnorm(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, cols = (units % 1000) * 4 + 1;
	enum cal_rms_kind kind = (enum cal_rms_kind)(seed % 3);
	int f32 = kind != CAL_RMS_PLAIN;
	fctx_init(&c, env, "rmsnorm", rows, units, seed);
	uint16_t *x = bf_rand(rows * cols, 3.0f, &s);
	float *wf = malloc(cols * 4);
	uint16_t *wb = malloc(cols * 2);
	for (uint64_t j = 0; j < cols; j++) {
		wf[j] = 1.0f + 0.1f * cal_test_unit(&s);
		wb[j] = cal_nf_f32_to_bf16(wf[j]);
	}
	struct fbuf *bx = fnew(&c, rows * cols * 2, x), *by = fnew(&c, rows * cols * 2, NULL);
	struct fbuf *bw = f32 ? fnew(&c, cols * 4, wf) : fnew(&c, cols * 2, wb);
	struct cal_rmsnorm_args aa = {kind, bx->a, by->a, rows, cols, bw->a,
				      f32 ? CAL_DTYPE_F32 : CAL_DTYPE_BF16, 1e-6f};
	struct cal_rmsnorm_args ab = aa;
	ab.x = bx->b;
	ab.y = by->b;
	ab.w = bw->b;
	FRUN(&c, rmsnorm, aa, ab);
	fcheck(&c, by, 0, 1.0f / 64, 1e-3f, 0, "y");
	free(x);
	free(wf);
	free(wb);
	return fdone(&c);
}

int fwdcase_rope(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed;
	uint32_t heads = 2, hd = (uint32_t)(units % 8) * 2 + 4, rd = seed & 1 ? hd : hd / 2;
	rd &= ~1u;
	/* DeepSeek MLA: interleaved pairs at an offset within the head */
	uint32_t il = (seed & 2) != 0, off = il ? (hd - rd) / 2 : 0;
	fctx_init(&c, env, "rope", rows, units, seed);
	uint16_t *x = bf_rand(rows * heads * hd, 2.0f, &s);
	uint32_t *pos = malloc(rows * 4);
	float *inv = malloc((rd / 2 + 1) * 4);
	for (uint64_t r = 0; r < rows; r++)
		pos[r] = (uint32_t)(cal_test_splitmix(&s) % 4096);
	for (uint32_t j = 0; j < rd / 2; j++)
		inv[j] = 1.0f / powf(10000.0f, (float)(2 * j) / (float)rd);
	struct fbuf *bx = fnew(&c, rows * heads * hd * 2, x), *bp = fnew(&c, rows * 4, pos);
	struct fbuf *bi = fnew(&c, (rd / 2 + 1) * 4, inv);
	struct cal_rope_args aa = {bx->a, rows, heads, hd, rd, bp->a, bi->a, 1.0f, off, (int)il};
	struct cal_rope_args ab = {bx->b, rows, heads, hd, rd, bp->b, bi->b, 1.0f, off, (int)il};
	FRUN(&c, rope, aa, ab);
	fcheck(&c, bx, 0, 1.0f / 32, 2e-2f, rows * heads * hd / 50, "x");
	free(x);
	free(pos);
	free(inv);
	return fdone(&c);
}

int fwdcase_hadamard(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed;
	uint32_t block = 1u << (seed % 9); /* 1 .. 256 */
	uint64_t cols = (units % 4 + 1) * block;
	fctx_init(&c, env, "hadamard", rows, units, seed);
	uint16_t *x = bf_rand(rows * cols, 2.0f, &s);
	struct fbuf *bx = fnew(&c, rows * cols * 2, x);
	struct cal_hadamard_args aa = {bx->a, rows, cols, block};
	struct cal_hadamard_args ab = {bx->b, rows, cols, block};
	FRUN(&c, hadamard, aa, ab);
	fcheck(&c, bx, 0, -1, 0, 0, "x"); /* the same fp32 butterfly: exact */
	free(x);
	return fdone(&c);
}

int fwdcase_attention(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, t = rows;
	uint32_t nkv = 2, nh = 4, hd = (uint32_t)(units % 5) * 8 + 8;
	/* the tensor-core path of CUDA takes head_dim 16/32/64/128/256 (256:
	 * Qwen3.5 / Qwen3-Next full attention, its own key tile width) */
	if (units % 4 == 0)
		hd = units % 8 != 0 ? 64 : units % 32 == 0 && units % 64 != 0 ? 256 : 128;
	/* DeepSeek MLA: v head dim other than q/k's (seed bit 5; never with
	 * gpt_oss sinks, bit 3: no model has both) */
	uint32_t vd = (seed & 32) ? hd / 2 + 8 : hd;
	if (t > 2048)
		t = 2048 + t % 5; /* attention is quadratic on the CPU side */
	uint32_t cu[4], ks[3], n_seq = t >= 3 ? 3 : 1;
	fctx_init(&c, env, "attention", rows, units, seed);
	cu[0] = 0;
	if (n_seq == 3) {
		cu[1] = (uint32_t)(t / 3);
		cu[2] = (uint32_t)(2 * t / 3);
		cu[3] = (uint32_t)t;
		if (cu[1] == 0 || cu[1] == cu[2]) {
			n_seq = 1;
			cu[1] = (uint32_t)t;
		}
	} else {
		cu[1] = (uint32_t)t;
	}
	for (uint32_t i = 0; i < n_seq; i++)
		ks[i] = (seed & 2) ? (cu[i + 1] - cu[i]) / 3 : 0;
	uint16_t *q = bf_rand(t * nh * hd, 2.0f, &s), *k = bf_rand(t * nkv * hd, 2.0f, &s);
	uint16_t *v = bf_rand(t * nkv * vd, 1.0f, &s);
	struct fbuf *bq = fnew(&c, t * nh * hd * 2, q), *bk = fnew(&c, t * nkv * hd * 2, k);
	struct fbuf *bv = fnew(&c, t * nkv * vd * 2, v), *bo = fnew(&c, t * nh * vd * 2, NULL);
	struct fbuf *bc = fnew(&c, sizeof(cu), cu), *bs = fnew(&c, sizeof(ks), ks);
	/* gpt_oss sinks on every other seed (one per query head) */
	float sk[4] = {cal_test_unit(&s) * 3.0f, cal_test_unit(&s) * 3.0f, 8.0f, -8.0f};
	struct fbuf *bsk = fnew(&c, sizeof(sk), sk);
	int sinks = (seed & 8) != 0 && vd == hd;
	struct cal_attention_args aa = {bq->a, bk->a, bv->a, bo->a, t, nh, nkv, hd, bc->a, n_seq,
					(seed & 2) ? bs->a : NULL, (seed & 4) ? 3u : 0u,
					1.0f / sqrtf((float)hd), sinks ? bsk->a : NULL, sinks && (seed & 16), vd};
	struct cal_attention_args ab = {bq->b, bk->b, bv->b, bo->b, t, nh, nkv, hd, bc->b, n_seq,
					(seed & 2) ? bs->b : NULL, (seed & 4) ? 3u : 0u,
					1.0f / sqrtf((float)hd), sinks ? bsk->b : NULL, sinks && (seed & 16), vd};
	FRUN(&c, attention, aa, ab);
	fcheck(&c, bo, 0, 1.0f / 32, 1e-2f, 0, "out");
	free(q);
	free(k);
	free(v);
	return fdone(&c);
}

int fwdcase_router(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed;
	uint32_t e = (uint32_t)(units % 200) + 3, kt = e >= 4 ? 3 : 2, k = 2;
	fctx_init(&c, env, "router", rows, units, seed);
	uint16_t *l = bf_rand(rows * e, 4.0f, &s);
	struct fbuf *bl = fnew(&c, rows * e * 2, l), *bi = fnew(&c, rows * kt * 4, NULL);
	struct fbuf *bw = fnew(&c, rows * k * 4, NULL);
	enum cal_router_mode mode = (seed & 2) ? CAL_ROUTER_MODE_TOPK_SOFTMAX
					       : CAL_ROUTER_MODE_SOFTMAX_TOPK;
	int bfw = (int)((seed >> 2) & 1); /* bf16 weights (Qwen / OLMoE routers) */
	struct cal_router_args aa = {bl->a, rows, e, k, kt, (int)(seed & 1), bi->a, bw->a, mode, bfw};
	struct cal_router_args ab = {bl->b, rows, e, k, kt, (int)(seed & 1), bi->b, bw->b, mode, bfw};
	FRUN(&c, router, aa, ab);
	fcheck(&c, bi, 1, -1, 0, 0, "idx");
	fcheck(&c, bw, 1, 1e-5f, 1e-7f, 0, "weight");
	free(l);
	return fdone(&c);
}

int fwdcase_moe_sort(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, n = rows * 3;
	uint32_t e = (uint32_t)(units % 300) + 1;
	fctx_init(&c, env, "moe_sort", rows, units, seed);
	uint32_t *idx = malloc(n * 4);
	for (uint64_t i = 0; i < n; i++)
		idx[i] = (uint32_t)(cal_test_splitmix(&s) % e);
	struct fbuf *bi = fnew(&c, n * 4, idx), *bo = fnew(&c, (e + 1) * 4, NULL);
	struct fbuf *bs = fnew(&c, n * 4, NULL), *bp = fnew(&c, n * 4, NULL);
	struct cal_moe_sort_args aa = {bi->a, n, e, bo->a, bs->a, bp->a};
	struct cal_moe_sort_args ab = {bi->b, n, e, bo->b, bs->b, bp->b};
	FRUN(&c, moe_sort, aa, ab);
	fcheck(&c, bo, 1, -1, 0, 0, "offsets");
	fcheck(&c, bs, 1, -1, 0, 0, "sorted_pair");
	fcheck(&c, bp, 1, -1, 0, 0, "pair_pos");
	free(idx);
	return fdone(&c);
}

int fwdcase_moe_combine(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, t = rows, h = (units % 500) * 2 + 1;
	uint32_t k = 2, kt = 3, e = 5;
	uint64_t np = t * kt;
	fctx_init(&c, env, "moe_combine", rows, units, seed);
	uint16_t *y = bf_rand(np * h, 2.0f, &s);
	uint32_t *pp = malloc(np * 4), *idx = malloc(np * 4);
	float *w = malloc(t * k * 4);
	for (uint64_t p = 0; p < np; p++) {
		pp[p] = (uint32_t)((p * 7 + 3) % np);
		idx[p] = (uint32_t)(cal_test_splitmix(&s) % e);
	}
	for (uint64_t i = 0; i < t * k; i++)
		w[i] = (cal_test_unit(&s) + 1.0f) * 0.5f;
	struct fbuf *by = fnew(&c, np * h * 2, y), *bp = fnew(&c, np * 4, pp);
	struct fbuf *bi = fnew(&c, np * 4, idx), *bw = fnew(&c, t * k * 4, w);
	struct fbuf *bo = fnew(&c, t * h * 2, NULL);
	enum cal_combine_mode mode = (enum cal_combine_mode)(seed & 1);
	struct cal_moe_combine_args aa = {by->a, np, bp->a, bi->a, bw->a, t, h, k, kt, mode, bo->a};
	struct cal_moe_combine_args ab = {by->b, np, bp->b, bi->b, bw->b, t, h, k, kt, mode, bo->b};
	FRUN(&c, moe_combine, aa, ab);
	fcheck(&c, bo, 0, 1.0f / 64, 1e-3f, 0, "out");
	free(y);
	free(pp);
	free(idx);
	free(w);
	return fdone(&c);
}

int fwdcase_ewise(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, cols = units % 1000 + 1;
	enum cal_ewise_mode mode = (enum cal_ewise_mode)(seed % (CAL_EWISE_SUB + 1));
	fctx_init(&c, env, "ewise", rows, units, seed);
	uint16_t *a = bf_rand(rows * cols * 2, 6.0f, &s), *b = bf_rand(rows * cols * 2, 2.0f, &s);
	struct fbuf *ba = fnew(&c, rows * cols * 4, a), *bb = fnew(&c, rows * cols * 4, b);
	struct fbuf *bo = fnew(&c, rows * cols * 2, NULL);
	int glu = mode == CAL_EWISE_SWIGLU || mode == CAL_EWISE_SWIGLU_OAI;
	uint64_t lda = glu ? 2 * cols : cols;
	struct cal_ewise_args aa = {mode, ba->a, bb->a, bb->a, bo->a, rows, cols, lda, lda, 2 * cols,
				    cols, mode == CAL_EWISE_SWIGLU_OAI ? 7.0f : 1.5f, 1.702f};
	struct cal_ewise_args ab = aa;
	ab.a = ba->b;
	ab.b = bb->b;
	ab.g = bb->b;
	ab.out = bo->b;
	if (glu)
		ab.b = (const uint16_t *)bb->b + cols, aa.b = (const uint16_t *)bb->a + cols;
	FRUN(&c, ewise, aa, ab);
	fcheck(&c, bo, 0, 1.0f / 64, 1e-3f, 0, "out");
	free(a);
	free(b);
	return fdone(&c);
}

/* Packed sequences over t rows: 1 to 3 sequences (seed picks), with a
 * length that is not a multiple of the GDN chunk when t allows. */
static uint32_t split_seqs(uint64_t t, uint64_t seed, uint32_t cu[4])
{
	uint32_t n = t >= 3 ? (uint32_t)(seed % 3) + 1 : 1;
	cu[0] = 0;
	for (uint32_t i = 1; i < n; i++)
		cu[i] = (uint32_t)(t * i / n + (i == 1 && t > 200 ? 7 : 0));
	cu[n] = (uint32_t)t;
	for (uint32_t i = 1; i <= n; i++)
		if (cu[i] <= cu[i - 1]) {
			cu[1] = (uint32_t)t;
			return 1;
		}
	return n;
}

int fwdcase_rmsnorm_gated(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, cols = (units % 300) + 1;
	fctx_init(&c, env, "rmsnorm_gated", rows, units, seed);
	uint16_t *x = bf_rand(rows * cols, 3.0f, &s), *z = bf_rand(rows * cols, 4.0f, &s);
	uint16_t *w = bf_rand(cols, 1.0f, &s);
	for (uint64_t j = 0; j < cols; j++)
		w[j] = cal_nf_f32_to_bf16(1.0f + 0.1f * cal_nf_float((uint32_t)w[j] << 16));
	struct fbuf *bx = fnew(&c, rows * cols * 2, x), *bz = fnew(&c, rows * cols * 2, z);
	struct fbuf *bw = fnew(&c, cols * 2, w), *by = fnew(&c, rows * cols * 2, NULL);
	struct cal_rmsnorm_gated_args aa = {bx->a, bz->a, by->a, rows, cols, bw->a, 1e-6f};
	struct cal_rmsnorm_gated_args ab = {bx->b, bz->b, by->b, rows, cols, bw->b, 1e-6f};
	FRUN(&c, rmsnorm_gated, aa, ab);
	fcheck(&c, by, 0, 1.0f / 64, 1e-3f, 0, "y");
	free(x);
	free(z);
	free(w);
	return fdone(&c);
}

int fwdcase_gdn_conv(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, t = rows, ch = (units % 200) * 3 + 1;
	uint32_t kernel = (uint32_t)(units % 5) + 1, cu[4];
	fctx_init(&c, env, "gdn_conv", rows, units, seed);
	uint32_t n_seq = split_seqs(t, seed, cu);
	uint16_t *x = bf_rand(t * ch, 3.0f, &s), *w = bf_rand(ch * kernel, 0.7f, &s);
	struct fbuf *bx = fnew(&c, t * ch * 2, x), *bw = fnew(&c, ch * kernel * 2, w);
	struct fbuf *by = fnew(&c, t * ch * 2, NULL), *bc = fnew(&c, sizeof(cu), cu);
	struct cal_gdn_conv_args aa = {bx->a, bw->a, by->a, t, (uint32_t)ch, kernel, bc->a, n_seq};
	struct cal_gdn_conv_args ab = {bx->b, bw->b, by->b, t, (uint32_t)ch, kernel, bc->b, n_seq};
	FRUN(&c, gdn_conv, aa, ab);
	fcheck(&c, by, 0, 1.0f / 64, 1e-3f, 0, "y");
	free(x);
	free(w);
	return fdone(&c);
}

/* Inputs of the gated delta rule: conv output qkv, b, a, a_log, dt_bias. */
struct gd_in {
	uint16_t *qkv, *b, *a;
	float *alog, *dt;
};

static void gd_in_make(struct gd_in *in, uint64_t t, uint32_t nk, uint32_t nv, uint32_t dk,
		       uint32_t dv, uint64_t *s)
{
	uint64_t cd = 2 * (uint64_t)nk * dk + (uint64_t)nv * dv;
	in->qkv = bf_rand(t * cd, 2.0f, s);
	in->b = bf_rand(t * nv, 3.0f, s);
	in->a = bf_rand(t * nv, 3.0f, s);
	in->alog = malloc(nv * 4);
	in->dt = malloc(nv * 4);
	if (!in->alog || !in->dt)
		abort();
	for (uint32_t h = 0; h < nv; h++) {
		/* A in [0.01, 16] as HF's init: decays from ~1 to fast */
		in->alog[h] = logf(0.01f + 8.0f * (cal_test_unit(s) + 1.0f));
		in->dt[h] = 1.0f + 0.5f * cal_test_unit(s);
	}
}

static void gd_in_free(struct gd_in *in)
{
	free(in->qkv);
	free(in->b);
	free(in->a);
	free(in->alog);
	free(in->dt);
}

int fwdcase_gated_delta(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, t = rows;
	uint32_t nk = (uint32_t)(units % 2) + 1, nv = nk * ((uint32_t)(units / 2 % 2) + 1);
	/* dv 40: two CUDA column slices, the second partial */
	uint32_t dk = (uint32_t)(units % 3) * 8 + 8, dv = (uint32_t)(units % 4) * 12 + 4, cu[4];
	struct gd_in in;
	if (t > 4096)
		t = 4096 + t % 7;
	if (t >= 4096) { /* the long case at the real head dims (CUDA: 4 slices, ~140 KB smem) */
		nk = 1;
		nv = 2;
		dk = dv = 128;
	}
	fctx_init(&c, env, "gated_delta", rows, units, seed);
	uint32_t n_seq = split_seqs(t, seed, cu);
	uint64_t cd = 2 * (uint64_t)nk * dk + (uint64_t)nv * dv;
	gd_in_make(&in, t, nk, nv, dk, dv, &s);
	struct fbuf *bq = fnew(&c, t * cd * 2, in.qkv), *bb = fnew(&c, t * nv * 2, in.b);
	struct fbuf *ba = fnew(&c, t * nv * 2, in.a), *bl = fnew(&c, nv * 4, in.alog);
	struct fbuf *bd = fnew(&c, nv * 4, in.dt), *bc = fnew(&c, sizeof(cu), cu);
	struct fbuf *bo = fnew(&c, t * nv * dv * 2, NULL);
	int chunked = (int)(seed & 1);
	struct cal_gated_delta_args aa = {bq->a, bb->a, ba->a, bl->a, bd->a, bo->a, t, nk, nv,
					  dk, dv, bc->a, n_seq, chunked};
	struct cal_gated_delta_args ab = {bq->b, bb->b, ba->b, bl->b, bd->b, bo->b, t, nk, nv,
					  dk, dv, bc->b, n_seq, chunked};
	FRUN(&c, gated_delta, aa, ab);
	fcheck(&c, bo, 0, 1.0f / 64, 2e-3f, 0, "out");
	gd_in_free(&in);
	return fdone(&c);
}

/* ---- DeepSeek-V3 ops ------------------------------------------------------ */

int fwdcase_mla_kv(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, t = rows < 1000 ? rows : 1000 + rows % 7;
	uint32_t nh = (uint32_t)(units % 5) + 1, dn = (uint32_t)(units % 7) + 1, dr = 2 * (uint32_t)(seed % 3) + 2;
	uint32_t dv = (uint32_t)(units % 11) + 1;
	fctx_init(&c, env, "mla_kv", rows, units, seed);
	uint16_t *kv = bf_rand(t * nh * (dn + dv), 1.0f, &s), *kpe = bf_rand(t * dr, 1.0f, &s);
	struct fbuf *bkv = fnew(&c, t * nh * (dn + dv) * 2, kv), *bpe = fnew(&c, t * dr * 2, kpe);
	struct fbuf *bk = fnew(&c, t * nh * (dn + dr) * 2, NULL), *bv = fnew(&c, t * nh * dv * 2, NULL);
	struct cal_mla_kv_args aa = {bkv->a, bpe->a, bk->a, bv->a, t, nh, dn, dr, dv};
	struct cal_mla_kv_args ab = {bkv->b, bpe->b, bk->b, bv->b, t, nh, dn, dr, dv};
	FRUN(&c, mla_kv, aa, ab);
	fcheck(&c, bk, 0, -1, 0, 0, "k"); /* copies: exact on every back end */
	fcheck(&c, bv, 0, -1, 0, 0, "v");
	free(kv);
	free(kpe);
	return fdone(&c);
}

int fwdcase_router_group(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, t = rows < 2000 ? rows : 2000 + rows % 7, h = (units % 67) * 3 + 1;
	uint32_t ng = (uint32_t)(units % 4) + 1, gs = (uint32_t)(units % 9) + 2, e = ng * gs;
	uint32_t tg = ng > 1 ? ng - 1 : 1, k = gs < 3 ? gs : 3, kt = k + (uint32_t)(seed & 1);
	if (kt > e)
		kt = e;
	fctx_init(&c, env, "router_group", rows, units, seed);
	uint16_t *x = bf_rand(t * h, 2.0f, &s);
	float *w = malloc((size_t)e * h * 4), *bias = malloc((size_t)e * 4);
	for (uint64_t i = 0; i < (uint64_t)e * h; i++)
		w[i] = cal_test_unit(&s) * 0.5f;
	for (uint32_t i = 0; i < e; i++)
		bias[i] = cal_test_unit(&s) * 0.1f;
	struct fbuf *bx = fnew(&c, t * h * 2, x), *bw = fnew(&c, (size_t)e * h * 4, w);
	struct fbuf *bb = fnew(&c, (size_t)e * 4, bias), *bl = fnew(&c, t * e * 4, NULL);
	struct fbuf *bi = fnew(&c, t * kt * 4, NULL), *bwt = fnew(&c, t * k * 4, NULL);
	int with_bias = (seed & 2) != 0, renorm = (seed & 4) == 0;
	struct cal_router_group_args aa = {bx->a, bw->a, with_bias ? bb->a : NULL, bl->a, t, h, e, k,
					   kt, ng, tg, renorm, 2.5f, bi->a, bwt->a};
	struct cal_router_group_args ab = {bx->b, bw->b, with_bias ? bb->b : NULL, bl->b, t, h, e, k,
					   kt, ng, tg, renorm, 2.5f, bi->b, bwt->b};
	FRUN(&c, router_group, aa, ab);
	/* the logits are summed in the same order on both back ends */
	fcheck(&c, bi, 1, -1, 0, 0, "idx");
	fcheck(&c, bwt, 1, 1e-5f, 1e-7f, 0, "weight");
	free(x);
	free(w);
	free(bias);
	return fdone(&c);
}

int fwdcase_fp8_block_dequant(struct opcase_env *env, uint64_t rows, uint64_t units,
			      uint64_t seed)
{
	struct fctx c;
	uint64_t s = seed, r = rows < 3000 ? rows : 3000 + rows % 7, cols = units % 300 + 1;
	uint32_t br = seed & 1 ? 128 : 7, bc = seed & 2 ? 128 : 5; /* partial edge blocks */
	uint64_t nsr = (r + br - 1) / br, nsc = (cols + bc - 1) / bc;
	fctx_init(&c, env, "fp8_block_dequant", rows, units, seed);
	uint8_t *q = malloc(r * cols + 1);
	float *sc = malloc(nsr * nsc * 4 + 4);
	for (uint64_t i = 0; i < r * cols; i++) {
		q[i] = (uint8_t)cal_test_splitmix(&s);
		if ((q[i] & 0x7f) == 0x7f)
			q[i] ^= 1; /* no NaN codes */
	}
	for (uint64_t i = 0; i < nsr * nsc; i++)
		sc[i] = fabsf(cal_test_unit(&s)) * 1e-3f + 1e-6f;
	struct fbuf *bq = fnew(&c, r * cols, q), *bs = fnew(&c, nsr * nsc * 4, sc);
	struct fbuf *bo = fnew(&c, r * cols * 2, NULL);
	struct cal_fp8_block_dequant_args aa = {bq->a, bs->a, r, cols, br, bc, bo->a};
	struct cal_fp8_block_dequant_args ab = {bq->b, bs->b, r, cols, br, bc, bo->b};
	FRUN(&c, fp8_block_dequant, aa, ab);
	fcheck(&c, bo, 0, -1, 0, 0, "out"); /* one product, one rounding: exact */
	free(q);
	free(sc);
	return fdone(&c);
}
