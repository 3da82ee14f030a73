/*
 * weights.c — a layer's weights for the calibration engine: the weight
 * amax of its quantizers (host, or the back end for streamed and decoded
 * weights), the bound of one layer's bytes, and the upload of a staged
 * layer into a back-end arena through the pinned ring (calib.c's header
 * describes the streaming).
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"

#define COPY_CHUNK ((uint64_t)64 << 10)


static float host_amax(struct cal_calib *c, const uint16_t *w, uint64_t n)
{
	float a = 0.0f;
	struct cal_nonfinite nf = {0, CAL_NONFINITE_NONE};
	struct cal_amax_args args = {CAL_DTYPE_BF16, w, n, 0, &a, &nf};
	if (cal_op_amax(c->host, &args, NULL) < 0)
		return NAN;
	return nf.count ? NAN : a;
}

/* Weight quantizers of layer L (and lm_head when L < 0): amax from weights. */
/* The weight of quantizer e of plan module m in a staged layer (host or,
 * with lh holding back-end pointers, device): *ret / *ret_n, NULL when the
 * layer has none (or it is still to be decoded). */
static void weight_src(const struct cal_calib *c, const struct cal_plan_module *m, int64_t e,
		       const struct cal_layer_host *lh, const uint16_t **ret, uint64_t *ret_n)
{
	const struct cal_layer_w *w = &lh->w;
	uint64_t H = c->H, qd = c->nh * c->hd, kd = c->nkv * c->hd, I = (uint64_t)c->I;
	const uint16_t *base = NULL;
	uint64_t at = 0, n = 0;
	const char *pr = m->proj;
	switch (m->kind) {
	case CAL_MOD_ATTN_PROJ:
		if (c->d->attn == CAL_ATTN_MLA)
			cal_mla_weight(c, lh, pr, &base, &n);
		else if (!strcmp(pr, "q_proj")) /* gated: query and gate rows */
			base = w->wq, n = qd * H * (c->d->attn == CAL_ATTN_GATED_GQA ? 2 : 1);
		else if (!strcmp(pr, "k_proj"))
			base = w->wk, n = kd * H;
		else if (!strcmp(pr, "v_proj"))
			base = w->wv, n = kd * H;
		else if (!strcmp(pr, "o_proj"))
			base = w->wo, n = H * qd;
		break;
	case CAL_MOD_MLP_PROJ:
	case CAL_MOD_SHARED_PROJ: {
		int sh = m->kind == CAL_MOD_SHARED_PROJ;
		uint64_t n13 = sh ? lh->n_s13 : lh->n_w13;
		if (!strcmp(pr, "gate_proj") || !strcmp(pr, "up_proj"))
			base = sh ? w->s13 : w->w13, n = n13 / 2, at = strcmp(pr, "up_proj") ? 0 : n;
		else if (!strcmp(pr, "down_proj"))
			base = sh ? w->s2 : w->w2, n = sh ? lh->n_s2 : lh->n_w2;
		break;
	}
	case CAL_MOD_SHARED_GATE:
		base = w->sgate, n = H;
		break;
	case CAL_MOD_LINATTN_PROJ:
		cal_gdn_weight(c, w, pr, &base, &n);
		break;
	case CAL_MOD_EXPERTS_GATE_UP: /* this rank's experts only (ranks.c) */
		if (e >= c->e0 && e < c->e0 + c->El)
			base = w->e13, at = (uint64_t)(e - c->e0) * 2 * I * H, n = 2 * I * H;
		break;
	case CAL_MOD_EXPERTS_DOWN:
		if (e >= c->e0 && e < c->e0 + c->El)
			base = w->e2, at = (uint64_t)(e - c->e0) * H * I, n = H * I;
		break;
	default:
		break;
	}
	*ret = base ? base + at : NULL;
	*ret_n = n;
}

static enum cal_status weight_amax(struct cal_calib *c, int32_t L, const struct cal_layer_host *lh,
				   int skip_experts, struct cal_error *err)
{
	const struct cal_plan *p = c->plan;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L || m->wq < 0)
			continue;
		if (skip_experts &&
		    (m->kind == CAL_MOD_EXPERTS_GATE_UP || m->kind == CAL_MOD_EXPERTS_DOWN))
			continue; /* on the device: cal_w_expert_amax_enqueue */
		for (int64_t e = 0; e < m->count; e++) {
			size_t qi = (size_t)m->wq + (size_t)e;
			const struct cal_qspec *sp = &p->q[qi].spec;
			const uint16_t *src = NULL;
			uint64_t n = 0;
			if (!sp->enabled || !sp->calibrate)
				continue;
			if (sp->has_constant_amax) {
				c->q_amax[qi] = (float)sp->constant_amax;
				c->q_has[qi] = 1;
				continue;
			}
			weight_src(c, m, e, lh, &src, &n);
			if (!src)
				continue; /* FP8 source decoded by the back end: cal_w_fp8_amax_enqueue */
			float a = host_amax(c, src, n);
			if (!(a == a))
				return cal_error_set(err, CAL_ERR_NUMERIC,
						     "weight of %s%s%lld has non-finite values", m->name,
						     m->count > 1 ? " expert " : "",
						     (long long)(m->count > 1 ? e : 0));
			c->q_amax[qi] = a;
			c->q_has[qi] = 1;
		}
	}
	return CAL_OK;
}

void cal_w_lm_head_amax(struct cal_calib *c)
{
	const struct cal_plan *p = c->plan;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->kind != CAL_MOD_LM_HEAD || m->wq < 0)
			continue;
		const struct cal_qspec *sp = &p->q[m->wq].spec;
		if (!sp->enabled || !sp->calibrate)
			continue;
		const struct cal_st_tensor *t = cal_catalog_find(c->cat, CAL_ROLE_LM_HEAD,
								 CAL_PART_WEIGHT, -1, -1);
		if (!t)
			t = cal_catalog_find(c->cat, CAL_ROLE_EMBED, CAL_PART_WEIGHT, -1, -1);
		if (sp->has_constant_amax) {
			c->q_amax[m->wq] = (float)sp->constant_amax;
			c->q_has[m->wq] = 1;
		} else if (t && t->dtype == CAL_DTYPE_BF16) {
			c->q_amax[m->wq] = host_amax(c, t->data, t->numel);
			c->q_has[m->wq] = c->q_amax[m->wq] == c->q_amax[m->wq];
		}
	}
}

/* Upper bound of one layer's weights in an arena (norm weights counted as
 * f32, biases as present). */
/* A cold checkpoint: the staging thread's first touches fault the mapping
 * in a readahead window at a time, one thread deep, which reads a disk far
 * below its speed; asked for the whole layer a layer ahead, the kernel
 * reads it with many requests in flight while the layer before is staged
 * (docs/calibration.md "Reading the checkpoint"). */
void cal_w_prefetch(const struct cal_calib *c, int32_t L)
{
	const char *off = getenv("CALIBD_NO_PREFETCH"); /* benchmarks: the reads without it */
	if (L < 0 || L >= c->d->num_layers || (off && *off && strcmp(off, "0")))
		return;
	for (size_t i = 0, n = cal_catalog_count(c->cat); i < n; i++) {
		const struct cal_cat_entry *e = cal_catalog_entry(c->cat, i);
		if (e->layer == L && (e->expert < 0 || (e->expert >= c->e0 && e->expert < c->e0 + c->El)))
			cal_st_tensor_willneed(e->t);
	}
}

uint64_t cal_w_layer_bytes(const struct cal_calib *c, int32_t L)
{
	uint64_t H = c->H, qd = c->nh * c->hd, kd = c->nkv * c->hd;
	uint64_t b = 2 * cal_al256(4 * H) + cal_al256(4 * qd) + cal_al256(4 * kd) + cal_al256(2 * qd * H) +
		     2 * cal_al256(2 * kd * H) + cal_al256(2 * H * qd) + cal_al256(2 * qd) + 2 * cal_al256(2 * kd) +
		     cal_al256(2 * H);
	if (c->d->attn == CAL_ATTN_GATED_GQA)
		b += cal_al256(2 * qd * H) + cal_al256(2 * qd);
	b += cal_mla_layer_bytes(c);
	if (c->d->router == CAL_ROUTER_SIGMOID_GROUP && c->d->layers[L].ffn == CAL_FFN_MOE)
		b += cal_al256(4 * (uint64_t)c->E * H) + cal_al256(4 * (uint64_t)c->E);
	if (c->d->layers[L].mixer == CAL_MIXER_LINEAR) {
		struct cal_gdn_dims g;
		cal_gdn_dims(c->d, &g);
		b += cal_al256(2 * (g.cd + g.vd + 2 * g.nv) * H) + cal_al256(2 * g.cd * g.kern) +
		     cal_al256(2 * g.dv) + cal_al256(2 * H * g.vd) + 2 * cal_al256(4 * g.nv);
	}
	if (c->d->layers[L].ffn == CAL_FFN_MOE) {
		/* the router sees every expert, the rank holds El of them (ranks.c) */
		uint64_t E = c->E, El = c->El, I = c->I, S = c->Is;
		b += cal_al256(2 * E * H) + cal_al256(4 * El * I * H) + cal_al256(2 * El * H * I);
		if (c->d->act == CAL_ACT_SWIGLU_OAI) /* router and expert biases, sinks */
			b += cal_al256(2 * E) + cal_al256(4 * El * I) + cal_al256(2 * El * H) +
			     cal_al256(4 * (uint64_t)c->nh);
		if (c->fp8_dev) /* FP8 codes and scale grids next to the decoded experts */
			b += cal_al256(3 * El * I * H) +
			     cal_al256(4 * El * (2 * cal_fp8_grid(c->d, I, H) + cal_fp8_grid(c->d, H, I)));
		if (S)
			b += cal_al256(4 * S * H) + cal_al256(2 * H * S) + cal_al256(2 * H);
	} else {
		b += cal_al256(4 * (uint64_t)c->Id * H) + cal_al256(2 * H * (uint64_t)c->Id);
	}
	if (c->fp8_dev) /* codes (half of bf16) and grids of the other FP8 linears */
		b += b / 2 + (uint64_t)CAL_FP8_JOBS * 512;
	return b;
}

/* A parallel gather-copy: dst[0 .. n) = bytes base .. base + n of the
 * concatenation of nseg pieces of `piece` bytes at src[0..nseg). */
struct par_copy {
	char *dst;
	const char *const *src;
	uint64_t piece, base, n;
};

static void par_copy_range(void *p, uint64_t b, uint64_t e, unsigned slot)
{
	const struct par_copy *pc = p;
	uint64_t lo = b * COPY_CHUNK, hi = e * COPY_CHUNK < pc->n ? e * COPY_CHUNK : pc->n;
	(void)slot;
	while (lo < hi) {
		uint64_t at = pc->base + lo, sg = at / pc->piece, o = at % pc->piece;
		uint64_t take = pc->piece - o < hi - lo ? pc->piece - o : hi - lo;
		memcpy(pc->dst + lo, pc->src[sg] + o, take);
		lo += take;
	}
}

/* On the host back end's threads (reading the mapping is the slow part:
 * page faults and cache misses parallelise). */
static enum cal_status par_copy(struct cal_calib *c, void *dst, const char *const *src,
				uint64_t piece, uint64_t base, uint64_t n, struct cal_error *err)
{
	struct par_copy pc = {dst, src, piece, base, n};
	return cal_cpu_parallel(c->host, (n + COPY_CHUNK - 1) / COPY_CHUNK, 16, par_copy_range, &pc,
				err);
}

/* host -> back end: nseg pieces of `piece` bytes, concatenated at dst.  On
 * a device through the pinned ring with asynchronous uploads (a slot is
 * refilled once its previous upload is done), a parallel copy on the CPU. */
static enum cal_status copy_in_segs(struct cal_calib *c, char *dst, const char *const *src,
				    uint64_t nseg, uint64_t piece, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	uint64_t n = nseg * piece;
	if (!c->on_device)
		return par_copy(c, dst, src, piece, 0, n, err);
	for (uint64_t done = 0; done < n;) {
		uint64_t win = n - done < c->ring_bytes ? n - done : c->ring_bytes;
		unsigned s = c->ring_next;
		c->ring_next = (s + 1) % CAL_RING_SLOTS;
		if (c->ring_used[s])
			CAL_TRY(cal_backend_upload_mark_sync(c->be, s, err));
		CAL_TRY(par_copy(c, c->ring[s], src, piece, done, win, err));
		CAL_TRY(cal_backend_upload_async(c->be, dst + done, c->ring[s], win, err));
		CAL_TRY(cal_backend_upload_mark(c->be, s, err));
		c->ring_used[s] = 1;
		done += win;
	}
fail:
	return st;
}

enum cal_status cal_w_copy_in(struct cal_calib *c, char *dst, const char *src, uint64_t n,
			      struct cal_error *err)
{
	return copy_in_segs(c, dst, &src, 1, n, err);
}

/* Field dst of dw is an FP8 weight the back end decodes (lh->dfr). */
static int deferred(const struct cal_layer_host *lh, const struct cal_layer_w *dw, const void **dst)
{
	size_t f = (size_t)((const char *)dst - (const char *)dw);
	for (int k = 0; k < lh->n_dfr; k++)
		if (lh->dfr[k].field == f)
			return 1;
	return 0;
}

/* Copies the staged layer into arena `slot` (weights streamed); without
 * streaming (CPU, no cap) the staged host pointers are used as they are. */
static enum cal_status upload_layer(struct cal_calib *c, int32_t L, const struct cal_layer_host *lh,
				    struct cal_layer_w *dw, int slot, struct cal_error *err)
{
	const struct cal_layer_w *w = &lh->w;
	uint64_t H = c->H, qd = c->nh * c->hd, kd = c->nkv * c->hd;
	uint64_t nqn = c->d->qk_norm == CAL_QK_NORM_HEAD ? (uint64_t)c->hd : qd;
	uint64_t nkn = c->d->qk_norm == CAL_QK_NORM_HEAD ? (uint64_t)c->hd : kd;
	uint64_t qo = qd * (c->d->attn == CAL_ATTN_GATED_GQA ? 2 : 1); /* gated: + gate rows */
	struct cal_gdn_dims g;
	cal_gdn_dims(c->d, &g);
	uint64_t ml_qr = (uint64_t)c->d->q_lora_rank, ml_kvr = (uint64_t)c->d->kv_lora_rank;
	uint64_t ml_dr = (uint64_t)c->d->qk_rope_head_dim;
	uint64_t ml_kvb = (uint64_t)c->nh * (uint64_t)(c->d->qk_nope_head_dim + c->d->v_head_dim);
	struct {
		const void **dst;
		const void *src;
		uint64_t bytes;
	} it[] = {
		{(const void **)&dw->in_norm, w->in_norm, H * (w->in_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->post_norm, w->post_norm,
		 H * (w->post_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->q_norm, w->q_norm, nqn * (w->q_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->k_norm, w->k_norm, nkn * (w->k_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->wq, w->wq, (lh->n_wq ? lh->n_wq : qo * H) * 2},
		{(const void **)&dw->wk, w->wk, kd * H * 2},
		{(const void **)&dw->wv, w->wv, kd * H * 2},
		{(const void **)&dw->wo, w->wo, (lh->n_wo ? lh->n_wo : H * qd) * 2},
		{(const void **)&dw->bq, w->bq, qo * 2},
		{(const void **)&dw->bk, w->bk, kd * 2},
		{(const void **)&dw->bv, w->bv, kd * 2},
		{(const void **)&dw->bo, w->bo, H * 2},
		{(const void **)&dw->w13, w->w13, lh->n_w13 * 2},
		{(const void **)&dw->w2, w->w2, lh->n_w2 * 2},
		{(const void **)&dw->router, w->router, (uint64_t)c->E * H * 2},
		{(const void **)&dw->e13, w->e13, lh->n_e13 * 2},
		{(const void **)&dw->e2, w->e2, lh->n_e2 * 2},
		{(const void **)&dw->s13, w->s13, lh->n_s13 * 2},
		{(const void **)&dw->s2, w->s2, lh->n_s2 * 2},
		{(const void **)&dw->sgate, w->sgate, H * 2},
		/* Gated DeltaNet (gdn.c) */
		{(const void **)&dw->lqkv, w->lqkv, g.cd * H * 2},
		{(const void **)&dw->lz, w->lz, g.vd * H * 2},
		{(const void **)&dw->lb, w->lb, g.nv * H * 2},
		{(const void **)&dw->la, w->la, g.nv * H * 2},
		{(const void **)&dw->lconv, w->lconv, g.cd * g.kern * 2},
		{(const void **)&dw->lnorm, w->lnorm, g.dv * 2},
		{(const void **)&dw->lout, w->lout, H * g.vd * 2},
		{(const void **)&dw->a_log, w->a_log, g.nv * 4},
		{(const void **)&dw->dt_bias, w->dt_bias, g.nv * 4},
		/* gpt_oss (gpt_oss.c) */
		{(const void **)&dw->sinks, w->sinks, (uint64_t)c->nh * 4},
		{(const void **)&dw->router_b, w->router_b, (uint64_t)c->E * 2},
		{(const void **)&dw->eb13, w->eb13, (uint64_t)c->El * 2 * (uint64_t)c->I * 2},
		{(const void **)&dw->eb2, w->eb2, (uint64_t)c->El * H * 2},
		/* DeepSeek MLA (mla.c) and router */
		{(const void **)&dw->wqa, w->wqa, ml_qr * H * 2},
		{(const void **)&dw->wkva, w->wkva, (ml_kvr + ml_dr) * H * 2},
		{(const void **)&dw->wkvb, w->wkvb, ml_kvb * ml_kvr * 2},
		{(const void **)&dw->qa_norm, w->qa_norm, ml_qr * (w->qa_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->kva_norm, w->kva_norm,
		 ml_kvr * (w->kva_norm_dt == CAL_DTYPE_F32 ? 4 : 2)},
		{(const void **)&dw->router_f32, w->router_f32, (uint64_t)c->E * H * 4},
		{(const void **)&dw->corr_bias, w->corr_bias, (uint64_t)c->E * 4},
	};
	uint64_t total = 0, off = 0;
	uint64_t E = (uint64_t)c->El, g13 = cal_fp8_grid(c->d, (uint64_t)c->I, H); /* rank's experts */
	uint64_t g2 = cal_fp8_grid(c->d, H, (uint64_t)c->I);
	enum cal_status st;
	*dw = *w;
	if (!c->stream_weights)
		return CAL_OK;
	for (size_t i = 0; i < CAL_ARRAY_LEN(it); i++)
		if (it[i].src || (it[i].dst == (const void **)&dw->e13 && lh->e13_seg) ||
		    (it[i].dst == (const void **)&dw->e2 && lh->e2_seg) || deferred(lh, dw, it[i].dst))
			total += cal_al256(it[i].bytes);
	for (int k = 0; k < lh->n_dfr; k++)
		total += cal_al256(lh->dfr[k].t->nbytes) + cal_al256(lh->dfr[k].si->nbytes);
	if (lh->q13_seg) /* decoded experts, their codes and scale grids */
		total += cal_al256(lh->n_e13 * 2) + cal_al256(lh->n_e2 * 2) + cal_al256(lh->n_e13) +
			 cal_al256(lh->n_e2) + cal_al256(2 * E * g13 * 4) + cal_al256(E * g2 * 4);
	if (total > c->arena_bytes[slot]) {
		/* a layer kind the bound does not know: grow this arena */
		cal_be_free(c, c->arena[slot]);
		c->arena[slot] = NULL;
		c->arena_bytes[slot] = 0;
		st = cal_be_alloc(c, total, &c->arena[slot], err);
		if (st < 0)
			return cal_error_wrap(err, st, "layer %d: weights (%llu bytes)", L,
					      (unsigned long long)total);
		c->arena_bytes[slot] = total;
	}
	char *arena = c->arena[slot];
	for (size_t i = 0; i < CAL_ARRAY_LEN(it); i++) {
		const uint16_t **seg = it[i].dst == (const void **)&dw->e13 ? lh->e13_seg
				     : it[i].dst == (const void **)&dw->e2 ? lh->e2_seg : NULL;
		if (seg && lh->n_e13) {
			/* experts left in the mapping: one copy per expert matrix */
			uint64_t n = it[i].dst == (const void **)&dw->e13 ? 2 * E : E;
			st = copy_in_segs(c, arena + off, (const char *const *)seg, n, it[i].bytes / n,
					  err);
			if (st < 0)
				return cal_error_wrap(err, st, "layer %d: expert weights upload", L);
			*it[i].dst = arena + off;
			off += cal_al256(it[i].bytes);
			continue;
		}
		if (!it[i].src) {
			*it[i].dst = NULL;
			if (deferred(lh, dw, it[i].dst)) { /* decoded here from FP8 codes */
				*it[i].dst = arena + off;
				off += cal_al256(it[i].bytes);
			}
			continue;
		}
		st = cal_w_copy_in(c, arena + off, it[i].src, it[i].bytes, err);
		if (st < 0)
			return cal_error_wrap(err, st, "layer %d: weights upload", L);
		*it[i].dst = arena + off;
		off += cal_al256(it[i].bytes);
	}
	dw->n_fjob = 0;
	for (int k = 0; k < lh->n_dfr; k++) {
		/* other FP8 linears: codes and grid, decoded into their field's slot */
		const struct cal_st_tensor *t = lh->dfr[k].t, *si = lh->dfr[k].si;
		struct cal_fp8_job *j = &dw->fjob[dw->n_fjob++];
		j->out = *(uint16_t *const *)((const char *)dw + lh->dfr[k].field) + lh->dfr[k].at;
		j->rows = (uint64_t)t->shape[0];
		j->cols = (uint64_t)t->shape[1];
		st = cal_w_copy_in(c, arena + off, t->data, t->nbytes, err);
		if (st >= 0) {
			j->q = (const uint8_t *)(arena + off);
			off += cal_al256(t->nbytes);
			st = cal_w_copy_in(c, arena + off, si->data, si->nbytes, err);
		}
		if (st < 0)
			return cal_error_wrap(err, st, "layer %d: FP8 weights upload (%s)", L, t->name);
		j->s = (const float *)(arena + off);
		off += cal_al256(si->nbytes);
	}
	if (lh->q13_seg) {
		/* FP8 experts: room for the decoded W13 / W2, then codes and grids */
		struct {
			const void **dst;
			const char *const *seg;
			uint64_t n, piece;
		} f[] = {
			{(const void **)&dw->e13, NULL, 0, lh->n_e13 * 2},
			{(const void **)&dw->e2, NULL, 0, lh->n_e2 * 2},
			{(const void **)&dw->fq13, (const char *const *)lh->q13_seg, 2 * E,
			 (uint64_t)c->I * H},
			{(const void **)&dw->fq2, (const char *const *)lh->q2_seg, E, H * (uint64_t)c->I},
			{(const void **)&dw->fs13, (const char *const *)lh->s13_seg, 2 * E, g13 * 4},
			{(const void **)&dw->fs2, (const char *const *)lh->s2_seg, E, g2 * 4},
		};
		for (size_t i = 0; i < CAL_ARRAY_LEN(f); i++) {
			if (f[i].seg) {
				st = copy_in_segs(c, arena + off, f[i].seg, f[i].n, f[i].piece, err);
				if (st < 0)
					return cal_error_wrap(err, st, "layer %d: FP8 expert upload", L);
			}
			*f[i].dst = arena + off;
			off += cal_al256(f[i].seg ? f[i].n * f[i].piece : f[i].piece);
		}
	}
	return CAL_OK;
}

/* FP8 block source weights of a streamed layer: decoded into their slots
 * (experts: W13 / W2) on the back end's compute stream, once the layer's
 * uploads are done. */
enum cal_status cal_w_fp8_decode(struct cal_calib *c, const struct cal_layer_w *w,
				 struct cal_error *err)
{
	uint64_t E = (uint64_t)c->El, I = (uint64_t)c->I, H = (uint64_t)c->H; /* rank's experts */
	uint64_t g13 = cal_fp8_grid(c->d, I, H), g2 = cal_fp8_grid(c->d, H, I);
	uint32_t br = (uint32_t)c->d->quant_block[0], bc = (uint32_t)c->d->quant_block[1];
	enum cal_status st = CAL_OK;
	for (int k = 0; k < w->n_fjob && st >= 0; k++) {
		const struct cal_fp8_job *j = &w->fjob[k];
		struct cal_fp8_block_dequant_args a = {j->q, j->s, j->rows, j->cols, br, bc, j->out};
		st = cal_op_fp8_block_dequant(c->be, &a, err);
	}
	if (!w->fq13)
		return st;
	for (uint64_t m = 0; m < 3 * E && st >= 0; m++) {
		int down = m >= 2 * E;
		uint64_t j = down ? m - 2 * E : m;
		struct cal_fp8_block_dequant_args a = {
			down ? w->fq2 + j * H * I : w->fq13 + j * I * H,
			down ? w->fs2 + j * g2 : w->fs13 + j * g13, down ? H : I, down ? I : H, br, bc,
			(uint16_t *)(down ? w->e2 + j * H * I : w->e13 + j * I * H)};
		st = cal_op_fp8_block_dequant(c->be, &a, err);
	}
	return st;
}

/* Stages layer L into arena `slot`: canonical layout, weight amax, copy. */
enum cal_status cal_w_stage(struct cal_calib *c, int32_t L, struct cal_layer_host *lh,
			    struct cal_layer_w *dw, int slot, struct cal_error *err)
{
	double t0 = cal_now();
	enum cal_status st = cal_layer_stage(c, L, lh, err);
	if (st >= 0)
		st = weight_amax(c, L, lh, c->on_device || lh->q13_seg, err);
	if (st >= 0)
		st = upload_layer(c, L, lh, dw, slot, err);
	c->stage_s += cal_now() - t0;
	return st;
}

void *cal_w_stage_main(void *p)
{
	struct stage_job *j = p;
	j->st = cal_w_stage(j->c, j->L, j->lh, j->dw, j->slot, &j->err);
	return NULL;
}

/* Weight amax of the quantizers whose FP8 weights the back end decoded
 * (not the routed experts: cal_w_expert_amax_enqueue), into c->fp8_wamax; read
 * back by cal_w_fp8_amax_finish. */
enum cal_status cal_w_fp8_amax_enqueue(struct cal_calib *c, int32_t L,
				       const struct cal_layer_host *lh, const struct cal_layer_w *dw,
				       struct cal_error *err)
{
	const struct cal_plan *p = c->plan;
	struct cal_layer_host dev;
	enum cal_status st = CAL_OK;
	if (!lh->n_dfr)
		return CAL_OK;
	memcpy(&dev, lh, sizeof(dev));
	dev.w = *dw;
	cal_prof(c, PH_OBS);
	for (size_t mi = 0; mi < p->n_modules && st >= 0; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L || m->wq < 0 || m->kind == CAL_MOD_EXPERTS_GATE_UP ||
		    m->kind == CAL_MOD_EXPERTS_DOWN)
			continue;
		for (int64_t e = 0; e < m->count && st >= 0; e++) {
			size_t qi = (size_t)m->wq + (size_t)e;
			const struct cal_qspec *sp = &p->q[qi].spec;
			const uint16_t *hs = NULL, *ds = NULL;
			uint64_t n = 0;
			if (!sp->enabled || !sp->calibrate || sp->has_constant_amax)
				continue;
			weight_src(c, m, e, lh, &hs, &n);
			weight_src(c, m, e, &dev, &ds, &n);
			if (hs || !ds)
				continue; /* measured on the host while staging */
			struct cal_amax_args a = {CAL_DTYPE_BF16, ds, n, 0, c->fp8_wamax + qi, c->fp8_wnf};
			st = cal_op_amax(c->be, &a, err);
			c->fp8_wpend[qi] = 1;
		}
	}
	cal_prof(c, PH_OTHER);
	return st;
}

enum cal_status cal_w_fp8_amax_finish(struct cal_calib *c, struct cal_error *err)
{
	size_t n = c->plan->n_q;
	struct cal_nonfinite nf;
	enum cal_status st = CAL_OK;
	float *am = NULL;
	int any = 0;
	for (size_t i = 0; i < n && c->fp8_wpend; i++)
		any |= c->fp8_wpend[i];
	if (!any)
		return CAL_OK;
	am = malloc(n * sizeof(float));
	if (!am)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	CAL_TRY(cal_backend_download(c->be, am, c->fp8_wamax, n * sizeof(float), err));
	CAL_TRY(cal_backend_download(c->be, &nf, c->fp8_wnf, sizeof(nf), err));
	if (nf.count) {
		st = cal_error_set(err, CAL_ERR_NUMERIC, "decoded FP8 weights have %llu non-finite "
				   "values", (unsigned long long)nf.count);
		goto fail;
	}
	for (size_t i = 0; i < n; i++)
		if (c->fp8_wpend[i]) {
			c->q_amax[i] = am[i];
			c->q_has[i] = 1;
			c->fp8_wpend[i] = 0;
		}
	CAL_TRY(cal_backend_memset(c->be, c->fp8_wamax, 0, n * sizeof(float), err));
	CAL_TRY(cal_nonfinite_reset(c->be, c->fp8_wnf, err));
fail:
	free(am);
	return st;
}

/* Expert weight amax of layer L on the device (amax_segments over the
 * experts' rows of W13 and W2), read back by cal_w_expert_amax_finish. */
enum cal_status cal_w_expert_amax_enqueue(struct cal_calib *c, int32_t L,
					  const struct cal_layer_w *w, struct cal_error *err)
{
	uint64_t E = c->El, H = c->H, I = c->I; /* this rank's experts */
	enum cal_status st = CAL_OK;
	if (!c->w_amax || c->d->layers[L].ffn != CAL_FFN_MOE || !E)
		return CAL_OK;
	cal_prof(c, PH_OBS);
	struct cal_amax_segments_args a = {CAL_DTYPE_BF16, w->e13, E * 2 * I, H, c->w_off,
					   (uint32_t)E, 0, c->w_amax, c->w_nf};
	struct cal_amax_segments_args b = {CAL_DTYPE_BF16, w->e2, E * H, I, c->w_off + E + 1,
					   (uint32_t)E, 0, c->w_amax + E, c->w_nf + 1};
	CAL_TRY(cal_op_amax_segments(c->be, &a, err));
	CAL_TRY(cal_op_amax_segments(c->be, &b, err));
	cal_prof(c, PH_OTHER);
fail:
	return st;
}

enum cal_status cal_w_expert_amax_finish(struct cal_calib *c, int32_t L, struct cal_error *err)
{
	const struct cal_plan *p = c->plan;
	uint64_t E = c->El, e0 = c->e0; /* this rank's experts */
	struct cal_nonfinite nf[2];
	enum cal_status st = CAL_OK;
	float *am = NULL;
	if (!c->w_amax || c->d->layers[L].ffn != CAL_FFN_MOE || !E)
		return CAL_OK;
	am = malloc(2 * E * sizeof(float));
	if (!am)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	CAL_TRY(cal_backend_download(c->be, am, c->w_amax, 2 * E * sizeof(float), err));
	CAL_TRY(cal_backend_download(c->be, nf, c->w_nf, sizeof(nf), err));
	for (int i = 0; i < 2; i++)
		if (nf[i].count) {
			st = cal_error_set(err, CAL_ERR_NUMERIC,
					   "layer %d: the %s weights of the routed experts have %llu "
					   "non-finite values", L, i ? "down_proj" : "gate_up_proj",
					   (unsigned long long)nf[i].count);
			goto fail;
		}
	for (size_t mi = cal_plan_next_experts(p, L, 0); mi < p->n_modules;
	     mi = cal_plan_next_experts(p, L, mi + 1)) {
		const struct cal_plan_module *m = &p->modules[mi];
		for (int64_t e = 0; e < m->count && (uint64_t)e < E; e++) {
			size_t qi = (size_t)m->wq + e0 + (size_t)e;
			const struct cal_qspec *sp = &p->q[qi].spec;
			if (!sp->enabled || !sp->calibrate)
				continue;
			if (sp->has_constant_amax) {
				c->q_amax[qi] = (float)sp->constant_amax;
			} else {
				c->q_amax[qi] = am[(m->kind == CAL_MOD_EXPERTS_DOWN ? E : 0) + (uint64_t)e];
			}
			c->q_has[qi] = 1;
		}
	}
fail:
	free(am);
	return st;
}

