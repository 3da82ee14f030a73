/*
 * opcases.c — one back-end comparison case per op (see opcases.h).
 * Inputs come from a splitmix64 stream seeded by the caller (printed on
 * failure); weights span many binades with zero blocks, tiny blocks and
 * exact ties mixed in; observers optionally get NaN/inf.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opcases.h"
#include "fwdcases.h"
#include "testrng.h"

#define GUARD 64
#define GUARD_BYTE 0xA5
#define FILL_BYTE 0x5A

struct pair {
	void *a, *b;       /* what the op sees (base + misalignment) */
	void *base_a, *base_b;
	size_t n; /* payload bytes (guard follows) */
};

struct ctx {
	struct opcase_env *env;
	const char *op;
	uint64_t rows, units, seed;
	struct pair bufs[8];
	int nbufs;
	int failed;
};

/* bf16 weights: per-16-block magnitude 2^[-12, 6], some zero blocks, tiny
 * blocks, exact small grid values (ties) and negative tiny values. */
static void fill_weights(uint16_t *w, uint64_t n, uint64_t *s)
{
	for (uint64_t i = 0; i < n; i += 16) {
		uint64_t kind = cal_test_splitmix(s) % 16;
		float scale = ldexpf(1.0f, (int)(cal_test_splitmix(s) % 19) - 12);
		for (uint64_t k = i; k < i + 16 && k < n; k++) {
			float v;
			if (kind == 0)
				v = 0.0f;
			else if (kind == 1)
				v = cal_test_unit(s) * 1e-30f;
			else if (kind == 2)
				v = (float)((int)(cal_test_splitmix(s) % 25) - 12) * 0.25f * scale;
			else
				v = cal_test_unit(s) * scale;
			w[k] = cal_nf_f32_to_bf16(v);
		}
	}
}

static void fill_obs(enum cal_dtype dt, void *x, uint64_t n, uint64_t *s, int specials)
{
	for (uint64_t i = 0; i < n; i++) {
		float v = cal_test_unit(s) * ldexpf(1.0f, (int)(cal_test_splitmix(s) % 30) - 15);
		if (specials && cal_test_splitmix(s) % 997 == 0)
			v = (cal_test_splitmix(s) & 1) ? NAN : ((cal_test_splitmix(s) & 1) ? INFINITY : -INFINITY);
		if (dt == CAL_DTYPE_BF16)
			((uint16_t *)x)[i] = cal_nf_f32_to_bf16(v);
		else
			((float *)x)[i] = v;
	}
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fprintf(stderr, "out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

static void fail(struct ctx *c, const char *fmt, const char *detail)
{
	if (!c->failed)
		fprintf(stderr, "MISMATCH op %s shape [%" PRIu64 " x %" PRIu64 " units] seed %" PRIu64
			" (%s vs %s): ",
			c->op, c->rows, c->units, c->seed, c->env->a->name, c->env->b->name);
	fprintf(stderr, fmt, detail);
	fprintf(stderr, "\n");
	c->failed = 1;
}

/* Allocates a buffer on both back ends; host (may be NULL: FILL_BYTE) is
 * uploaded to both, followed by GUARD guard bytes. */
static struct pair *pair_new_at(struct ctx *c, size_t n, const void *host, unsigned off)
{
	struct pair *p = &c->bufs[c->nbufs++];
	struct cal_error err = {0};
	unsigned char *h = xmalloc(n + GUARD);
	if (host)
		memcpy(h, host, n);
	else
		memset(h, FILL_BYTE, n);
	memset(h + n, GUARD_BYTE, GUARD);
	p->n = n;
	p->a = p->b = p->base_a = p->base_b = NULL;
	if (cal_backend_alloc(c->env->a, n + GUARD + off, &p->base_a, &err) < 0 ||
	    cal_backend_alloc(c->env->b, n + GUARD + off, &p->base_b, &err) < 0) {
		fail(c, "allocation: %s", cal_error_msg(&err));
	} else {
		p->a = (char *)p->base_a + off;
		p->b = (char *)p->base_b + off;
		if (cal_backend_upload(c->env->a, p->a, h, n + GUARD, &err) < 0 ||
		    cal_backend_upload(c->env->b, p->b, h, n + GUARD, &err) < 0)
			fail(c, "upload: %s", cal_error_msg(&err));
	}
	cal_error_clear(&err);
	free(h);
	return p;
}

/* Data buffers: misaligned by env->misalign bytes when asked (exercises the
 * scalar paths of vectorised kernels). */
static struct pair *pair_new(struct ctx *c, size_t n, const void *host)
{
	return pair_new_at(c, n, host, c->env->misalign);
}

/* Running statistics: always aligned (64-bit atomics). */
static struct pair *pair_new_stat(struct ctx *c, size_t n, const void *host)
{
	return pair_new_at(c, n, host, 0);
}

/* Downloads both copies and compares guards and payload: byte for byte
 * (rtol < 0) or as values of es bytes (8: f64, 4: f32) within rtol
 * relative plus atol (at least 1e-300). */
static void pair_compare_es(struct ctx *c, struct pair *p, const char *what, double rtol,
			    double atol, size_t es)
{
	struct cal_error err = {0};
	unsigned char *ha = xmalloc(p->n + GUARD), *hb = xmalloc(p->n + GUARD);
	char msg[256];
	if (c->failed)
		goto out;
	if (cal_backend_download(c->env->a, ha, p->a, p->n + GUARD, &err) < 0 ||
	    cal_backend_download(c->env->b, hb, p->b, p->n + GUARD, &err) < 0) {
		fail(c, "download: %s", cal_error_msg(&err));
		goto out;
	}
	for (size_t i = 0; i < GUARD; i++) {
		if (ha[p->n + i] != GUARD_BYTE || hb[p->n + i] != GUARD_BYTE) {
			snprintf(msg, sizeof(msg), "%s: guard byte %zu overwritten (%02x / %02x)",
				 what, i, ha[p->n + i], hb[p->n + i]);
			fail(c, "%s", msg);
			goto out;
		}
	}
	for (size_t i = 0; rtol >= 0 && i + es <= p->n; i += es) {
		double x, y;
		if (es == 4) {
			float fx, fy;
			memcpy(&fx, ha + i, 4);
			memcpy(&fy, hb + i, 4);
			x = fx;
			y = fy;
		} else {
			memcpy(&x, ha + i, 8);
			memcpy(&y, hb + i, 8);
		}
		if (!(fabs(x - y) <= rtol * fabs(x) + atol + 1e-300) && !(isnan(x) && isnan(y))) {
			snprintf(msg, sizeof(msg), "%s: value %zu of %zu differs: %.17g vs %.17g",
				 what, i / es, p->n / es, x, y);
			fail(c, "%s", msg);
			goto out;
		}
	}
	for (size_t i = 0; rtol < 0 && i < p->n; i++) {
		if (ha[i] != hb[i]) {
			snprintf(msg, sizeof(msg), "%s: byte %zu of %zu differs: %02x vs %02x",
				 what, i, p->n, ha[i], hb[i]);
			fail(c, "%s", msg);
			goto out;
		}
	}
out:
	cal_error_clear(&err);
	free(ha);
	free(hb);
}

static void pair_compare(struct ctx *c, struct pair *p, const char *what, double rtol)
{
	pair_compare_es(c, p, what, rtol, 0.0, 8);
}

static void pair_check(struct ctx *c, struct pair *p, const char *what)
{
	pair_compare(c, p, what, -1);
}

static void ctx_free(struct ctx *c)
{
	for (int i = 0; i < c->nbufs; i++) {
		cal_backend_dealloc(c->env->a, c->bufs[i].base_a);
		cal_backend_dealloc(c->env->b, c->bufs[i].base_b);
	}
}

/* Runs the op on A and B with argument structs differing only in pointers. */
#define RUN_BOTH(c, opname, args_a, args_b)                                    \
	do {                                                                   \
		struct cal_error e_ = {0};                                     \
		if (!(c)->failed &&                                            \
		    (cal_op_##opname((c)->env->a, &(args_a), &e_) < 0 ||       \
		     cal_backend_sync((c)->env->a, &e_) < 0 ||                 \
		     cal_op_##opname((c)->env->b, &(args_b), &e_) < 0 ||       \
		     cal_backend_sync((c)->env->b, &e_) < 0))                  \
			fail((c), "op failed: %s", cal_error_msg(&e_));        \
		cal_error_clear(&e_);                                          \
	} while (0)

#define CTX(name) struct ctx c = {env, #name, rows, units, seed, {{0}}, 0, 0}; uint64_t s = seed

static int finish(struct ctx *c)
{
	ctx_free(c);
	return c->failed ? -1 : 0;
}

static const struct cal_nonfinite nf_init = {0, CAL_NONFINITE_NONE};

/* ---- observers ----------------------------------------------------------- */

static int case_amax(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(amax);
	enum cal_dtype dt = seed & 1 ? CAL_DTYPE_F32 : CAL_DTYPE_BF16;
	uint64_t n = rows * units;
	size_t es = cal_dtype_size(dt);
	void *x = xmalloc(n * es);
	float am0 = 0.0f;
	fill_obs(dt, x, n, &s, env->specials);
	struct pair *px = pair_new(&c, n * es, x), *pa = pair_new_stat(&c, 4, &am0),
		    *pn = pair_new_stat(&c, sizeof(nf_init), &nf_init);
	/* two batches into the same running statistics */
	for (int batch = 0; batch < 2; batch++) {
		uint64_t half = n / 2, off = batch ? half : 0, len = batch ? n - half : half;
		struct cal_amax_args A = {dt, (char *)px->a + off * es, len, off, pa->a, pn->a};
		struct cal_amax_args B = {dt, (char *)px->b + off * es, len, off, pa->b, pn->b};
		RUN_BOTH(&c, amax, A, B);
	}
	pair_check(&c, pa, "amax");
	pair_check(&c, pn, "nonfinite");
	free(x);
	return finish(&c);
}

static int case_amax_rows(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(amax_rows);
	enum cal_dtype dt = seed & 1 ? CAL_DTYPE_F32 : CAL_DTYPE_BF16;
	uint64_t n = rows * units, nidx = rows / 2 + 1;
	size_t es = cal_dtype_size(dt);
	void *x = xmalloc(n * es);
	uint32_t *idx = xmalloc(nidx * 4);
	float am0 = 0.0f;
	fill_obs(dt, x, n, &s, env->specials);
	for (uint64_t k = 0; k < nidx; k++)
		idx[k] = (uint32_t)(cal_test_splitmix(&s) % (rows + (k == 0))); /* one may be out of range */
	struct pair *px = pair_new(&c, n * es, x), *pi = pair_new(&c, nidx * 4, idx),
		    *pa = pair_new_stat(&c, 4, &am0), *pn = pair_new_stat(&c, sizeof(nf_init), &nf_init);
	struct cal_amax_rows_args A = {dt, px->a, rows, units, pi->a, nidx, 7, pa->a, pn->a};
	struct cal_amax_rows_args B = {dt, px->b, rows, units, pi->b, nidx, 7, pa->b, pn->b};
	RUN_BOTH(&c, amax_rows, A, B);
	pair_check(&c, pa, "amax");
	pair_check(&c, pn, "nonfinite");
	free(x);
	free(idx);
	return finish(&c);
}

static int case_hessian(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(hessian);
	enum cal_dtype dt = seed & 1 ? CAL_DTYPE_F32 : CAL_DTYPE_BF16;
	uint64_t cols = units > 300 ? 300 : units; /* the output is cols^2 */
	uint64_t n = rows * cols, nidx = seed & 2 ? rows / 2 + 1 : 0;
	size_t es = cal_dtype_size(dt);
	void *x = xmalloc(n * es);
	uint32_t *idx = xmalloc(nidx * 4 + 4);
	float *h0 = xmalloc(cols * cols * 4);
	fill_obs(dt, x, n, &s, env->specials);
	for (uint64_t k = 0; k < nidx; k++)
		idx[k] = (uint32_t)(cal_test_splitmix(&s) % (rows + (k == 0))); /* one may be out of range */
	for (uint64_t k = 0; k < cols * cols; k++)
		h0[k] = (float)(k % 5) * 0.25f;
	struct pair *px = pair_new(&c, n * es, x), *pi = pair_new(&c, nidx * 4 + 4, idx),
		    *ph = pair_new(&c, cols * cols * 4, h0);
	struct cal_hessian_args A = {dt, px->a, rows, cols, nidx ? pi->a : NULL, nidx, ph->a};
	struct cal_hessian_args B = {dt, px->b, rows, cols, nidx ? pi->b : NULL, nidx, ph->b};
	RUN_BOTH(&c, hessian, A, B);
	pair_check(&c, ph, "h");
	free(x);
	free(idx);
	free(h0);
	return finish(&c);
}

static int case_amax_segments(struct opcase_env *env, uint64_t rows, uint64_t units,
			      uint64_t seed)
{
	CTX(amax_segments);
	enum cal_dtype dt = seed & 1 ? CAL_DTYPE_F32 : CAL_DTYPE_BF16;
	uint64_t n = rows * units;
	uint32_t nseg = (uint32_t)(cal_test_splitmix(&s) % 70) + 1;
	size_t es = cal_dtype_size(dt);
	void *x = xmalloc(n * es);
	uint32_t *off = xmalloc((nseg + 1) * 4);
	float *am0 = xmalloc(nseg * 4);
	fill_obs(dt, x, n, &s, env->specials);
	/* non-decreasing offsets with empty segments, starting >= 0 */
	off[0] = (uint32_t)(cal_test_splitmix(&s) % 2 ? 0 : cal_test_splitmix(&s) % (rows + 1));
	for (uint32_t i = 1; i <= nseg; i++) {
		uint64_t left = rows - off[i - 1];
		off[i] = off[i - 1] + (uint32_t)(left && cal_test_splitmix(&s) % 3 ? cal_test_splitmix(&s) % (left / 2 + 2) % (left + 1) : 0);
	}
	for (uint32_t i = 0; i < nseg; i++)
		am0[i] = (float)(i % 3) * 0.125f;
	struct pair *px = pair_new(&c, n * es, x), *po = pair_new(&c, (nseg + 1) * 4, off),
		    *pa = pair_new(&c, nseg * 4, am0), *pn = pair_new_stat(&c, sizeof(nf_init), &nf_init);
	struct cal_amax_segments_args A = {dt, px->a, rows, units, po->a, nseg, 0, pa->a, pn->a};
	struct cal_amax_segments_args B = {dt, px->b, rows, units, po->b, nseg, 0, pa->b, pn->b};
	RUN_BOTH(&c, amax_segments, A, B);
	pair_check(&c, pa, "amax");
	pair_check(&c, pn, "nonfinite");
	free(x);
	free(off);
	free(am0);
	return finish(&c);
}

/* blocks of 16/32 with a ragged row tail, bins on top of nonzero counts */
static int case_amax_hist(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(amax_hist);
	enum cal_dtype dt = seed & 1 ? CAL_DTYPE_F32 : CAL_DTYPE_BF16;
	uint32_t bs = seed & 2 ? 32 : 16;
	uint64_t cols = units * bs + (seed % 3 ? seed % bs : 0), n = rows * cols;
	size_t es = cal_dtype_size(dt);
	void *x = xmalloc(n * es);
	uint64_t h0[CAL_HIST_BINS];
	fill_obs(dt, x, n, &s, env->specials);
	for (unsigned i = 0; i < CAL_HIST_BINS; i++)
		h0[i] = i % 7 ? 0 : i;
	struct pair *px = pair_new(&c, n * es, x), *ph = pair_new_stat(&c, sizeof(h0), h0);
	struct cal_amax_hist_args A = {dt, px->a, rows, cols, bs, ph->a};
	struct cal_amax_hist_args B = {dt, px->b, rows, cols, bs, ph->b};
	RUN_BOTH(&c, amax_hist, A, B);
	pair_check(&c, ph, "hist");
	free(x);
	return finish(&c);
}

static int case_amax_blocks(struct opcase_env *env, uint64_t rows, uint64_t units,
			    uint64_t seed)
{
	CTX(amax_blocks);
	static const uint32_t blocks[] = {16, 32, 64, 128};
	enum cal_dtype dt = seed & 1 ? CAL_DTYPE_F32 : CAL_DTYPE_BF16;
	uint32_t bs = blocks[(seed >> 1) % 4];
	uint64_t cols = units * bs, n = rows * cols, nb = n / bs;
	size_t es = cal_dtype_size(dt);
	void *x = xmalloc(n * es);
	float *am0 = xmalloc(nb * 4);
	fill_obs(dt, x, n, &s, env->specials);
	for (uint64_t i = 0; i < nb; i++)
		am0[i] = i % 5 ? 0.0f : 0.5f;
	struct pair *px = pair_new(&c, n * es, x), *pa = pair_new(&c, nb * 4, am0),
		    *pn = pair_new_stat(&c, sizeof(nf_init), &nf_init);
	struct cal_amax_blocks_args A = {dt, px->a, rows, cols, bs, 0, pa->a, pn->a};
	struct cal_amax_blocks_args B = {dt, px->b, rows, cols, bs, 0, pa->b, pn->b};
	RUN_BOTH(&c, amax_blocks, A, B);
	pair_check(&c, pa, "amax");
	pair_check(&c, pn, "nonfinite");
	free(x);
	free(am0);
	return finish(&c);
}

static int case_amax_cols(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(amax_cols);
	uint64_t cols = units * 3 + seed % 7, n = rows * cols;
	uint16_t *x = xmalloc(n * 2 + 2);
	float *am0 = xmalloc(cols * 4 + 4);
	fill_obs(CAL_DTYPE_BF16, x, n, &s, env->specials);
	for (uint64_t i = 0; i < cols; i++)
		am0[i] = i % 5 ? 0.0f : 0.5f;
	struct pair *px = pair_new(&c, n * 2, x), *pa = pair_new(&c, cols * 4, am0),
		    *pn = pair_new_stat(&c, sizeof(nf_init), &nf_init);
	struct cal_amax_cols_args A = {px->a, rows, cols, 7, pa->a, pn->a};
	struct cal_amax_cols_args B = {px->b, rows, cols, 7, pa->b, pn->b};
	RUN_BOTH(&c, amax_cols, A, B);
	pair_check(&c, pa, "amax");
	pair_check(&c, pn, "nonfinite");
	free(x);
	free(am0);
	return finish(&c);
}

static int case_kv_affine(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(kv_affine);
	uint64_t cols = units, n = rows * cols;
	uint32_t nseq = (uint32_t)(cal_test_splitmix(&s) % 9) + 1;
	uint16_t *x = xmalloc(n * 2 + 2), *b0 = xmalloc(cols * 2 + 2);
	uint32_t *cu = xmalloc((nseq + 1) * 4);
	float am0 = 0.25f;
	fill_obs(CAL_DTYPE_BF16, x, n, &s, env->specials);
	fill_weights(b0, cols, &s);
	/* forward boundaries with empty forwards; the last may end before rows */
	cu[0] = 0;
	for (uint32_t i = 1; i <= nseq; i++)
		cu[i] = i == nseq && seed % 3 ? (uint32_t)rows
			: cu[i - 1] + (uint32_t)(cal_test_splitmix(&s) % (rows / nseq + 2)) % (uint32_t)(rows - cu[i - 1] + 1);
	uint64_t n0 = seed % 4;
	struct pair *px = pair_new(&c, n * 2, x), *pc = pair_new(&c, (nseq + 1) * 4, cu),
		    *pb = pair_new(&c, cols * 2, b0), *pa = pair_new(&c, 4, &am0),
		    *pn = pair_new_stat(&c, sizeof(nf_init), &nf_init);
	struct cal_kv_affine_args A = {px->a, rows, cols, pc->a, nseq, n0, pb->a, 3, pa->a, pn->a};
	struct cal_kv_affine_args B = {px->b, rows, cols, pc->b, nseq, n0, pb->b, 3, pa->b, pn->b};
	RUN_BOTH(&c, kv_affine, A, B);
	pair_check(&c, pb, "bias");
	pair_check(&c, pa, "amax");
	pair_check(&c, pn, "nonfinite");
	free(x);
	free(b0);
	free(cu);
	return finish(&c);
}

/* ---- quantizers ---------------------------------------------------------- */

static uint16_t *weights(uint64_t n, uint64_t *s)
{
	uint16_t *w = xmalloc(n * 2);
	fill_weights(w, n, s);
	return w;
}

static float weights_amax(const uint16_t *w, uint64_t n)
{
	float m = 0.0f;
	for (uint64_t i = 0; i < n; i++) {
		float a = fabsf(cal_nf_bf16_to_f32(w[i]));
		m = a > m ? a : m;
	}
	return m;
}

static float *block_amax(const uint16_t *w, uint64_t n, uint64_t bs, uint64_t *s)
{
	float *a = xmalloc(n / bs * 4);
	for (uint64_t b = 0; b < n / bs; b++) {
		a[b] = 0.0f;
		for (uint64_t k = b * bs; k < (b + 1) * bs; k++) {
			float v = fabsf(cal_nf_bf16_to_f32(w[k]));
			a[b] = v > a[b] ? v : a[b];
		}
		if (cal_test_splitmix(s) % 8 == 0) /* sometimes a calibrated amax != the weight's */
			a[b] = cal_fmul(a[b], 0.75f);
	}
	return a;
}

static int case_nvfp4_quant(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(nvfp4_quant);
	uint64_t cols = units * 16, n = rows * cols;
	uint32_t bs = cols % 32 == 0 && seed % 3 == 1 ? 32 : 16; /* nvfp4_bs32 too */
	uint16_t *w = weights(n, &s);
	float s2 = cal_nvfp4_scale2(weights_amax(w, n), seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP);
	if (seed % 7 == 3)
		s2 = cal_fmul(s2, 0.25f); /* stale scale: block scales clamp at 448 */
	struct pair *pw = pair_new(&c, n * 2, w), *pp = pair_new(&c, n / 2, NULL),
		    *ps = pair_new(&c, n / bs, NULL);
	struct cal_nvfp4_quant_args A = {pw->a, rows, cols, s2, pp->a, ps->a, bs};
	struct cal_nvfp4_quant_args B = {pw->b, rows, cols, s2, pp->b, ps->b, bs};
	RUN_BOTH(&c, nvfp4_quant, A, B);
	pair_check(&c, pp, "packed");
	pair_check(&c, ps, "scales");
	free(w);
	return finish(&c);
}

/* A symmetric matrix of n = units (at most 300) columns, diagonally
 * dominant (positive definite) unless seed & 4 makes one pivot negative
 * (*bad; then only the flags are compared); seed & 8: a batch of 3 such
 * matrices (the pivot, if any, in the last). */
static int case_chol_inv(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(chol_inv);
	uint64_t n = units > 300 ? 300 : units, nn = n * n;
	uint32_t batch = seed & 8 ? 3 : 0, nm = batch ? batch : 1;
	double *a = xmalloc(nm * nn * 8);
	for (uint64_t m = 0; m < nm; m++)
		for (uint64_t i = 0; i < n; i++)
			for (uint64_t j = 0; j <= i; j++)
				a[m * nn + i * n + j] = a[m * nn + j * n + i] =
					i == j ? (double)n * (1.0 + cal_test_unit(&s) * 0.25)
					       : (double)cal_test_unit(&s) * 0.5;
	int neg = (seed & 4) != 0;
	if (neg)
		a[(nm - 1) * nn + (n / 2) * n + n / 2] = -1.0;
	/* f64 buffers aligned (the device loads 8 bytes at a time) */
	struct pair *pa = pair_new_stat(&c, nm * nn * 8, a),
		    *py = pair_new_stat(&c, nm * nn * 8, NULL), *pb = pair_new_stat(&c, nm * 4, NULL),
		    *pw = pair_new_stat(&c, nm * (n + 32) * 32 * 8, NULL);
	struct cal_chol_inv_args A = {pa->a, n, py->a, pb->a, pw->a, batch};
	struct cal_chol_inv_args B = {pa->b, n, py->b, pb->b, pw->b, batch};
	(void)rows;
	RUN_BOTH(&c, chol_inv, A, B);
	pair_check(&c, pb, "bad");
	if (!neg) {
		pair_check(&c, pa, "a (L)");
		pair_check(&c, py, "y (L^-1)");
	}
	free(a);
	return finish(&c);
}

/* GPTQ's factor from Hessian sums: hsum = X^T X of units + 3 random rows
 * (n = units, at most 300, columns; every 7th column dead when seed & 2),
 * seed & 4: a negative diagonal (not positive definite: only the flags
 * compared), seed & 8: a batch of 3.  H and damp are one arithmetic (bytes);
 * U is cuSOLVER's on CUDA: equal within 1e-5 relative plus 1e-6 of
 * max |U| (f32 rounding of f64 factors of different term order). */
static int case_gptq_factor(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(gptq_factor);
	uint64_t n = units > 300 ? 300 : units, nn = n * n, m = n + 3;
	uint32_t batch = seed & 8 ? 3 : 0, nm = batch ? batch : 1;
	float *h = xmalloc(nm * nn * 4), *x = xmalloc(m * n * 4);
	uint8_t *dead = xmalloc(nm * n);
	double scale[3];
	int neg = (seed & 4) != 0;
	for (uint32_t b = 0; b < nm; b++) {
		for (uint64_t k = 0; k < m * n; k++)
			x[k] = cal_test_unit(&s) * ldexpf(1.0f, (int)(k % n % 5));
		for (uint64_t i = 0; i < n; i++)
			for (uint64_t j = 0; j < n; j++) {
				float t = 0.0f;
				for (uint64_t r = 0; r < m; r++)
					t += x[r * n + i] * x[r * n + j];
				h[b * nn + i * n + j] = t;
			}
		for (uint64_t i = 0; i < n; i++)
			dead[b * n + i] = (seed & 2) && i % 7 == 3;
		scale[b] = 2.0 / (double)m;
	}
	uint64_t pv = n / 2 + ((seed & 2) && n / 2 % 7 == 3); /* a live column */
	if (neg && pv < n)
		h[(nm - 1) * nn + pv * n + pv] = -1e6f;
	uint64_t wd = cal_gptq_factor_work(n, 0); /* the CPU's, the larger */
	struct pair *ph = pair_new(&c, nm * nn * 4, h), *pd = pair_new(&c, nm * n, dead),
		    *ps = pair_new_stat(&c, nm * 8, scale), *pu = pair_new_stat(&c, nm * nn * 4, NULL),
		    *pp = pair_new_stat(&c, nm * 8, NULL), *pb = pair_new_stat(&c, nm * 4, NULL),
		    *pw = pair_new_stat(&c, wd * 8, NULL);
	struct cal_gptq_factor_args A = {ph->a, pd->a, ps->a, n, 0.01, pu->a, pp->a, pb->a, pw->a,
					 batch};
	struct cal_gptq_factor_args B = {ph->b, pd->b, ps->b, n, 0.01, pu->b, pp->b, pb->b, pw->b,
					 batch};
	(void)rows;
	RUN_BOTH(&c, gptq_factor, A, B);
	pair_check(&c, pb, "bad");
	if (!neg) {
		float *u = xmalloc(nm * nn * 4), umax = 0.0f;
		struct cal_error e = {0};
		if (!c.failed && cal_backend_download(env->a, u, pu->a, nm * nn * 4, &e) < 0)
			fail(&c, "download: %s", cal_error_msg(&e));
		for (uint64_t k = 0; k < nm * nn; k++)
			umax = fabsf(u[k]) > umax ? fabsf(u[k]) : umax;
		pair_check(&c, pp, "damp");
		pair_compare_es(&c, pu, "u", 1e-5, 1e-6 * umax, 4);
		free(u);
	}
	free(h);
	free(x);
	free(dead);
	return finish(&c);
}

static int case_gptq_update(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(gptq_update);
	uint64_t cols = (units > 24 ? 24 : units) * 16, n = rows * cols; /* U is cols^2 */
	uint32_t bs = seed & 2 ? 32 : 128;
	uint16_t *w = weights(n, &s);
	float *ba = block_amax(w, n, 16, &s);
	float g = weights_amax(w, n);
	enum cal_div_mode div = seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP;
	if (!(g > 0.0f))
		g = 1.0f;
	/* an upper-triangular factor: positive diagonal, small coupling */
	float *u = xmalloc(cols * cols * 4);
	for (uint64_t i = 0; i < cols; i++)
		for (uint64_t j = 0; j < cols; j++)
			u[i * cols + j] = j < i ? 0.0f : j == i ? 0.5f + (float)(cal_test_splitmix(&s) % 64) / 32.0f
						  : cal_test_unit(&s) * 0.125f;
	struct pair *pw = pair_new(&c, n * 2, w), *pb = pair_new(&c, n / 16 * 4, ba),
		    *pu = pair_new(&c, cols * cols * 4, u),
		    *pk = pair_new(&c, (cols + bs) * rows * 4, NULL), *po = pair_new(&c, n * 2, NULL);
	struct cal_gptq_update_args A = {pw->a, rows, cols, pu->a, pb->a, g, 448.0f, div, bs,
					 pk->a, po->a};
	struct cal_gptq_update_args B = {pw->b, rows, cols, pu->b, pb->b, g, 448.0f, div, bs,
					 pk->b, po->b};
	RUN_BOTH(&c, gptq_update, A, B);
	pair_check(&c, po, "w_out");
	free(w);
	free(ba);
	free(u);
	return finish(&c);
}

static int case_nvfp4_static_quant(struct opcase_env *env, uint64_t rows, uint64_t units,
				   uint64_t seed)
{
	CTX(nvfp4_static_quant);
	uint64_t cols = units * 16, n = rows * cols;
	uint16_t *w = weights(n, &s);
	float *ba = block_amax(w, n, 16, &s);
	float g = weights_amax(w, n);
	float m = seed % 3 == 0 ? 256.0f : 448.0f;
	enum cal_div_mode div = seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP;
	if (!(g > 0.0f))
		g = 1.0f;
	struct pair *pw = pair_new(&c, n * 2, w), *pb = pair_new(&c, n / 16 * 4, ba),
		    *pp = pair_new(&c, n / 2, NULL), *ps = pair_new(&c, n / 16, NULL);
	struct cal_nvfp4_static_quant_args A = {pw->a, rows, cols, pb->a, g, m, div, pp->a, ps->a};
	struct cal_nvfp4_static_quant_args B = {pw->b, rows, cols, pb->b, g, m, div, pp->b, ps->b};
	RUN_BOTH(&c, nvfp4_static_quant, A, B);
	pair_check(&c, pp, "packed");
	pair_check(&c, ps, "scales");
	free(w);
	free(ba);
	return finish(&c);
}

static int case_nvfp4_mse_sweep(struct opcase_env *env, uint64_t rows, uint64_t units,
				uint64_t seed)
{
	CTX(nvfp4_mse_sweep);
	uint64_t cols = units * 16, n = rows * cols;
	uint16_t *w = weights(n, &s);
	float g = weights_amax(w, n);
	enum cal_div_mode div = seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP;
	if (!(g > 0.0f))
		g = 1.0f;
	struct pair *pw = pair_new(&c, n * 2, w), *pb = pair_new(&c, n / 16 * 4, NULL);
	struct cal_nvfp4_mse_sweep_args A = {pw->a, rows, cols, g, 448.0f, div, pb->a};
	struct cal_nvfp4_mse_sweep_args B = {pw->b, rows, cols, g, 448.0f, div, pb->b};
	RUN_BOTH(&c, nvfp4_mse_sweep, A, B);
	pair_check(&c, pb, "block_amax");
	free(w);
	return finish(&c);
}

static int case_fp8_quant(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(fp8_quant);
	uint64_t n = rows * units;
	uint16_t *w = weights(n, &s);
	enum cal_div_mode div = seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP;
	float sc = cal_fp8_scale(weights_amax(w, n), div);
	if (seed % 5 == 2)
		sc = cal_fmul(sc, 0.5f); /* overflowing values -> NaN codes */
	struct pair *pw = pair_new(&c, n * 2, w), *pq = pair_new(&c, n, NULL);
	int single = seed % 3 == 1; /* gpt_oss stacked experts: one rounding */
	/* FP8 per channel (a scale per row of `units` elements) or 2-D blocks
	 * (tiles of 4 x 4 or 128 x 128, ragged at the ends) */
	uint32_t tile = seed % 8 == 7 ? (seed & 16 ? 128 : 4) : 0;
	struct pair *prs = seed % 4 == 3 ? pair_new(&c, cal_fp8_tiles(rows, units, tile) * 4, NULL)
					 : NULL;
	struct cal_fp8_quant_args A = {pw->a, n, sc, div, pq->a, single,
				       prs ? prs->a : NULL, units, tile};
	struct cal_fp8_quant_args B = {pw->b, n, sc, div, pq->b, single,
				       prs ? prs->b : NULL, units, tile};
	RUN_BOTH(&c, fp8_quant, A, B);
	pair_check(&c, pq, "q");
	if (prs)
		pair_check(&c, prs, "row_scale");
	free(w);
	return finish(&c);
}

static int case_mxfp8_quant(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(mxfp8_quant);
	uint64_t cols = units * 32, n = rows * cols;
	uint16_t *w = weights(n, &s);
	enum cal_div_mode div = seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP;
	struct pair *pw = pair_new(&c, n * 2, w), *pq = pair_new(&c, n, NULL),
		    *ps = pair_new(&c, n / 32, NULL);
	struct cal_mxfp8_quant_args A = {pw->a, rows, cols, div, pq->a, ps->a};
	struct cal_mxfp8_quant_args B = {pw->b, rows, cols, div, pq->b, ps->b};
	RUN_BOTH(&c, mxfp8_quant, A, B);
	pair_check(&c, pq, "q");
	pair_check(&c, ps, "scales");
	free(w);
	return finish(&c);
}

static int case_mxfp4_quant(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(mxfp4_quant);
	uint64_t cols = units * 32, n = rows * cols;
	uint16_t *w = weights(n, &s);
	enum cal_div_mode div = seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP;
	struct pair *pw = pair_new(&c, n * 2, w), *pq = pair_new(&c, n / 2, NULL),
		    *ps = pair_new(&c, n / 32, NULL);
	struct cal_mxfp4_quant_args A = {pw->a, rows, cols, div, pq->a, ps->a};
	struct cal_mxfp4_quant_args B = {pw->b, rows, cols, div, pq->b, ps->b};
	RUN_BOTH(&c, mxfp4_quant, A, B);
	pair_check(&c, pq, "packed");
	pair_check(&c, ps, "scales");
	free(w);
	return finish(&c);
}

static int case_int4_quant(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(int4_quant);
	uint64_t r2 = rows * 2, cols = units * 128, n = r2 * cols;
	uint16_t *w = weights(n, &s);
	float *ba = block_amax(w, n, 128, &s);
	enum cal_div_mode div = seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP;
	struct pair *pw = pair_new(&c, n * 2, w), *pb = pair_new(&c, n / 128 * 4, ba),
		    *pp = pair_new(&c, n / 2, NULL), *ps = pair_new(&c, n / 128 * 4, NULL);
	struct cal_int4_quant_args A = {pw->a, r2, cols, pb->a, div, pp->a, ps->a};
	struct cal_int4_quant_args B = {pw->b, r2, cols, pb->b, div, pp->b, ps->b};
	RUN_BOTH(&c, int4_quant, A, B);
	pair_check(&c, pp, "packed");
	pair_check(&c, ps, "scales");
	free(w);
	free(ba);
	return finish(&c);
}

static int case_int8_quant(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(int8_quant);
	uint64_t cols = units * 7 + (seed % 5), n = rows * cols;
	uint16_t *w = weights(n, &s);
	if (rows > 1 && cols)
		memset(w + cols, 0, cols * 2); /* a zero row: scale 1 */
	enum cal_div_mode div = seed & 1 ? CAL_DIV_EXACT : CAL_DIV_RECIP;
	/* every third seed: one static scale (an activation's input_scale),
	 * small enough that codes saturate, no per-row scales written */
	int stat = seed % 3 == 2;
	float scale = stat ? ldexpf(1.0f + cal_test_unit(&s) * 0.5f,
				    (int)(cal_test_splitmix(&s) % 16) - 14) : 0.0f;
	struct pair *pw = pair_new(&c, n * 2, w), *pq = pair_new(&c, n, NULL),
		    *ps = pair_new(&c, rows * 4, NULL);
	struct cal_int8_quant_args A = {pw->a, rows, cols, div, pq->a, stat ? NULL : ps->a, scale};
	struct cal_int8_quant_args B = {pw->b, rows, cols, div, pq->b, stat ? NULL : ps->b, scale};
	RUN_BOTH(&c, int8_quant, A, B);
	pair_check(&c, pq, "q");
	pair_check(&c, ps, "scales");
	free(w);
	return finish(&c);
}

/* ---- dequantizers: random codes and scales -------------------------------- */

static uint8_t *rand_bytes(uint64_t n, uint64_t *s)
{
	uint8_t *b = xmalloc(n ? n : 1);
	for (uint64_t i = 0; i < n; i++)
		b[i] = (uint8_t)cal_test_splitmix(s);
	return b;
}

#define OUT_DT(seed) ((seed) & 1 ? CAL_DTYPE_BF16 : CAL_DTYPE_F32)

static int case_nvfp4_dequant(struct opcase_env *env, uint64_t rows, uint64_t units,
			      uint64_t seed)
{
	CTX(nvfp4_dequant);
	uint64_t cols = units * 16, n = rows * cols;
	uint32_t bs = cols % 32 == 0 && seed % 3 == 1 ? 32 : 16; /* nvfp4_bs32 too */
	enum cal_dtype dt = OUT_DT(seed);
	uint8_t *q = rand_bytes(n / 2, &s), *sc = rand_bytes(n / bs, &s);
	float s2 = ldexpf(1.0f + cal_test_unit(&s) * 0.5f, -10);
	struct pair *pq = pair_new(&c, n / 2, q), *ps = pair_new(&c, n / bs, sc),
		    *po = pair_new(&c, n * cal_dtype_size(dt), NULL);
	struct cal_nvfp4_dequant_args A = {pq->a, ps->a, rows, cols, s2, dt, po->a, bs};
	struct cal_nvfp4_dequant_args B = {pq->b, ps->b, rows, cols, s2, dt, po->b, bs};
	RUN_BOTH(&c, nvfp4_dequant, A, B);
	pair_check(&c, po, "out");
	free(q);
	free(sc);
	return finish(&c);
}

static int case_fp8_dequant(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(fp8_dequant);
	uint64_t n = rows * units;
	enum cal_dtype dt = OUT_DT(seed);
	uint8_t *q = rand_bytes(n, &s);
	float sc = ldexpf(1.0f + cal_test_unit(&s) * 0.5f, -8);
	struct pair *pq = pair_new(&c, n, q), *po = pair_new(&c, n * cal_dtype_size(dt), NULL);
	float *rs = NULL; /* FP8 per channel: a scale per row of `units` elements */
	struct pair *prs = NULL;
	uint32_t tile = seed % 6 == 5 ? 4 : 0; /* 2-D blocks, else per row */
	uint64_t nt = cal_fp8_tiles(rows, units, tile);
	if (seed % 3 == 2) {
		rs = malloc(nt * 4 + 4);
		for (uint64_t r = 0; rs && r < nt; r++)
			rs[r] = ldexpf(1.0f + cal_test_unit(&s) * 0.5f, -8 - (int)(r % 5));
		prs = rs ? pair_new(&c, nt * 4, rs) : NULL;
	}
	struct cal_fp8_dequant_args A = {pq->a, n, sc, dt, po->a, prs ? prs->a : NULL, units, tile};
	struct cal_fp8_dequant_args B = {pq->b, n, sc, dt, po->b, prs ? prs->b : NULL, units, tile};
	RUN_BOTH(&c, fp8_dequant, A, B);
	pair_check(&c, po, "out");
	free(rs);
	free(q);
	return finish(&c);
}

static int case_mxfp8_dequant(struct opcase_env *env, uint64_t rows, uint64_t units,
			      uint64_t seed)
{
	CTX(mxfp8_dequant);
	uint64_t cols = units * 32, n = rows * cols;
	enum cal_dtype dt = OUT_DT(seed);
	uint8_t *q = rand_bytes(n, &s), *sc = rand_bytes(n / 32, &s);
	struct pair *pq = pair_new(&c, n, q), *ps = pair_new(&c, n / 32, sc),
		    *po = pair_new(&c, n * cal_dtype_size(dt), NULL);
	struct cal_mxfp8_dequant_args A = {pq->a, ps->a, rows, cols, dt, po->a};
	struct cal_mxfp8_dequant_args B = {pq->b, ps->b, rows, cols, dt, po->b};
	RUN_BOTH(&c, mxfp8_dequant, A, B);
	pair_check(&c, po, "out");
	free(q);
	free(sc);
	return finish(&c);
}

static int case_mxfp4_dequant(struct opcase_env *env, uint64_t rows, uint64_t units,
			      uint64_t seed)
{
	CTX(mxfp4_dequant);
	uint64_t cols = units * 32, n = rows * cols;
	enum cal_dtype dt = OUT_DT(seed);
	uint8_t *q = rand_bytes(n / 2, &s), *sc = rand_bytes(n / 32, &s);
	struct pair *pq = pair_new(&c, n / 2, q), *ps = pair_new(&c, n / 32, sc),
		    *po = pair_new(&c, n * cal_dtype_size(dt), NULL);
	struct cal_mxfp4_dequant_args A = {pq->a, ps->a, rows, cols, dt, po->a};
	struct cal_mxfp4_dequant_args B = {pq->b, ps->b, rows, cols, dt, po->b};
	RUN_BOTH(&c, mxfp4_dequant, A, B);
	pair_check(&c, po, "out");
	free(q);
	free(sc);
	return finish(&c);
}

static int case_int4_dequant(struct opcase_env *env, uint64_t rows, uint64_t units,
			     uint64_t seed)
{
	CTX(int4_dequant);
	uint64_t r2 = rows * 2, cols = units * 128, n = r2 * cols;
	enum cal_dtype dt = OUT_DT(seed);
	uint8_t *q = rand_bytes(n / 2, &s);
	float *sc = xmalloc(n / 128 * 4);
	for (uint64_t i = 0; i < n / 128; i++)
		sc[i] = ldexpf(1.0f + cal_test_unit(&s) * 0.5f, (int)(cal_test_splitmix(&s) % 20) - 12);
	struct pair *pq = pair_new(&c, n / 2, q), *ps = pair_new(&c, n / 128 * 4, sc),
		    *po = pair_new(&c, n * cal_dtype_size(dt), NULL);
	struct cal_int4_dequant_args A = {pq->a, ps->a, r2, cols, dt, po->a};
	struct cal_int4_dequant_args B = {pq->b, ps->b, r2, cols, dt, po->b};
	RUN_BOTH(&c, int4_dequant, A, B);
	pair_check(&c, po, "out");
	free(q);
	free(sc);
	return finish(&c);
}

static int case_int8_dequant(struct opcase_env *env, uint64_t rows, uint64_t units,
			     uint64_t seed)
{
	CTX(int8_dequant);
	uint64_t cols = units * 7 + (seed % 5), n = rows * cols;
	enum cal_dtype dt = OUT_DT(seed);
	uint8_t *q = rand_bytes(n, &s);
	float *sc = xmalloc(rows * 4 + 4);
	for (uint64_t i = 0; i < rows; i++)
		sc[i] = ldexpf(1.0f + cal_test_unit(&s) * 0.5f, (int)(cal_test_splitmix(&s) % 20) - 12);
	struct pair *pq = pair_new(&c, n, q), *ps = pair_new(&c, rows * 4, sc),
		    *po = pair_new(&c, n * cal_dtype_size(dt), NULL);
	int stat = seed % 3 == 2; /* one scale for every row */
	float one = rows ? sc[0] : 1.0f;
	struct cal_int8_dequant_args A = {pq->a, stat ? NULL : ps->a, rows, cols, dt, po->a, one};
	struct cal_int8_dequant_args B = {pq->b, stat ? NULL : ps->b, rows, cols, dt, po->b, one};
	RUN_BOTH(&c, int8_dequant, A, B);
	pair_check(&c, po, "out");
	free(q);
	free(sc);
	return finish(&c);
}

/* ---- export statistics ----------------------------------------------------- */

static int case_sqnr_rows(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(sqnr_rows);
	uint64_t cols = units * 3, n = rows * cols;
	uint16_t *x = xmalloc(n * 2);
	float *y = xmalloc(n * 4);
	fill_weights(x, n, &s);
	for (uint64_t i = 0; i < n; i++)
		y[i] = cal_nf_bf16_to_f32(x[i]) * (1.0f + cal_test_unit(&s) * 0.0625f);
	struct pair *px = pair_new(&c, n * 2, x), *py = pair_new(&c, n * 4, y),
		    *po = pair_new_stat(&c, rows * 16, NULL);
	struct cal_sqnr_rows_args A = {px->a, py->a, rows, cols, po->a};
	struct cal_sqnr_rows_args B = {px->b, py->b, rows, cols, po->b};
	RUN_BOTH(&c, sqnr_rows, A, B);
	pair_check(&c, po, "sums");
	free(x);
	free(y);
	return finish(&c);
}

/* ---- evaluation ------------------------------------------------------------ */

/* Logits of a few binades around 0 with ties (the first maximum must win on
 * both back ends); the second model's a perturbed copy; some rows without a
 * next token. */
static int case_logit_kl(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(logit_kl);
	uint64_t V = units * 37 + 1, n = rows * V;
	uint16_t *lo = xmalloc(n * 2), *lq = xmalloc(n * 2);
	uint32_t *next = xmalloc(rows * 4 + 4);
	for (uint64_t i = 0; i < n; i++) {
		float v = cal_test_splitmix(&s) % 11 == 0 ? 4.0f : cal_test_unit(&s) * ldexpf(1.0f, (int)(cal_test_splitmix(&s) % 5));
		lo[i] = cal_nf_f32_to_bf16(v);
		lq[i] = cal_nf_f32_to_bf16(v * (1.0f + cal_test_unit(&s) * 0.125f));
	}
	for (uint64_t r = 0; r < rows; r++)
		next[r] = cal_test_splitmix(&s) % 5 == 0 ? UINT32_MAX : (uint32_t)(cal_test_splitmix(&s) % V);
	struct pair *po = pair_new(&c, n * 2, lo), *pq = pair_new(&c, n * 2, lq),
		    *pn = pair_new(&c, rows * 4, next), *pr = pair_new_stat(&c, rows * 24, NULL),
		    *pa = pair_new_stat(&c, rows * 8, NULL);
	const uint32_t *na = seed % 2 ? pn->a : NULL, *nb = seed % 2 ? pn->b : NULL;
	struct cal_logit_kl_args A = {po->a, pq->a, rows, V, na, pr->a, pa->a};
	struct cal_logit_kl_args B = {po->b, pq->b, rows, V, nb, pr->b, pa->b};
	RUN_BOTH(&c, logit_kl, A, B);
	pair_compare(&c, pr, "out", 1e-9);
	pair_check(&c, pa, "argmax");
	free(lo);
	free(lq);
	free(next);
	return finish(&c);
}

/* a, b = a perturbed, in = a further from b; odd seeds without in. */
static int case_err_rows(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed)
{
	CTX(err_rows);
	uint64_t cols = units * 5, n = rows * cols;
	uint16_t *a = xmalloc(n * 2), *b = xmalloc(n * 2), *in = xmalloc(n * 2);
	fill_weights(a, n, &s);
	for (uint64_t i = 0; i < n; i++) {
		float v = cal_nf_bf16_to_f32(a[i]);
		b[i] = cal_nf_f32_to_bf16(v * (1.0f + cal_test_unit(&s) * 0.0625f));
		in[i] = cal_nf_f32_to_bf16(v * cal_test_unit(&s));
	}
	struct pair *pa = pair_new(&c, n * 2, a), *pb = pair_new(&c, n * 2, b),
		    *pi = pair_new(&c, n * 2, in), *po = pair_new_stat(&c, rows * 16, NULL);
	const uint16_t *ia = seed % 2 ? NULL : pi->a, *ib = seed % 2 ? NULL : pi->b;
	struct cal_err_rows_args A = {ia, pa->a, pb->a, rows, cols, po->a};
	struct cal_err_rows_args B = {ib, pa->b, pb->b, rows, cols, po->b};
	RUN_BOTH(&c, err_rows, A, B);
	pair_check(&c, po, "sums");
	free(a);
	free(b);
	free(in);
	return finish(&c);
}

const opcase_fn opcase_table[CAL_OP_COUNT] = {
	[CAL_OPID_AMAX] = case_amax,
	[CAL_OPID_AMAX_ROWS] = case_amax_rows,
	[CAL_OPID_AMAX_SEGMENTS] = case_amax_segments,
	[CAL_OPID_AMAX_BLOCKS] = case_amax_blocks,
	[CAL_OPID_AMAX_HIST] = case_amax_hist,
	[CAL_OPID_AMAX_COLS] = case_amax_cols,
	[CAL_OPID_KV_AFFINE] = case_kv_affine,
	[CAL_OPID_HESSIAN] = case_hessian,
	[CAL_OPID_GPTQ_UPDATE] = case_gptq_update,
	[CAL_OPID_CHOL_INV] = case_chol_inv,
	[CAL_OPID_GPTQ_FACTOR] = case_gptq_factor,
	[CAL_OPID_NVFP4_QUANT] = case_nvfp4_quant,
	[CAL_OPID_NVFP4_STATIC_QUANT] = case_nvfp4_static_quant,
	[CAL_OPID_NVFP4_MSE_SWEEP] = case_nvfp4_mse_sweep,
	[CAL_OPID_FP8_QUANT] = case_fp8_quant,
	[CAL_OPID_MXFP8_QUANT] = case_mxfp8_quant,
	[CAL_OPID_MXFP4_QUANT] = case_mxfp4_quant,
	[CAL_OPID_INT4_QUANT] = case_int4_quant,
	[CAL_OPID_INT8_QUANT] = case_int8_quant,
	[CAL_OPID_NVFP4_DEQUANT] = case_nvfp4_dequant,
	[CAL_OPID_FP8_DEQUANT] = case_fp8_dequant,
	[CAL_OPID_MXFP8_DEQUANT] = case_mxfp8_dequant,
	[CAL_OPID_MXFP4_DEQUANT] = case_mxfp4_dequant,
	[CAL_OPID_INT4_DEQUANT] = case_int4_dequant,
	[CAL_OPID_INT8_DEQUANT] = case_int8_dequant,
	[CAL_OPID_SQNR_ROWS] = case_sqnr_rows,
	[CAL_OPID_LOGIT_KL] = case_logit_kl,
	[CAL_OPID_ERR_ROWS] = case_err_rows,
	[CAL_OPID_GEMM] = fwdcase_gemm,
	[CAL_OPID_GATHER_ROWS] = fwdcase_gather_rows,
	[CAL_OPID_RMSNORM] = fwdcase_rmsnorm,
	[CAL_OPID_ROPE] = fwdcase_rope,
	[CAL_OPID_HADAMARD] = fwdcase_hadamard,
	[CAL_OPID_ATTENTION] = fwdcase_attention,
	[CAL_OPID_ROUTER] = fwdcase_router,
	[CAL_OPID_MOE_SORT] = fwdcase_moe_sort,
	[CAL_OPID_MOE_COMBINE] = fwdcase_moe_combine,
	[CAL_OPID_EWISE] = fwdcase_ewise,
	[CAL_OPID_RMSNORM_GATED] = fwdcase_rmsnorm_gated,
	[CAL_OPID_GDN_CONV] = fwdcase_gdn_conv,
	[CAL_OPID_GATED_DELTA] = fwdcase_gated_delta,
	[CAL_OPID_MLA_KV] = fwdcase_mla_kv,
	[CAL_OPID_ROUTER_GROUP] = fwdcase_router_group,
	[CAL_OPID_FP8_BLOCK_DEQUANT] = fwdcase_fp8_block_dequant,
};

int opcase_run(struct opcase_env *env, enum cal_op_id id, uint64_t rows, uint64_t units,
	       uint64_t seed)
{
	if ((unsigned)id >= CAL_OP_COUNT || !opcase_table[id]) {
		fprintf(stderr, "op %s has no back-end comparison case\n",
			cal_op_name(id) ? cal_op_name(id) : "?");
		return -1;
	}
	return opcase_table[id](env, rows, units, seed);
}
