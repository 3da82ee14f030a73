/*
 * stats.c — the calibration engine's statistics: the observers' per-layer
 * reset and read-back with non-finite checks, the mapping from observed
 * tensors to the plan's quantizers, and the statistics JSON
 * (cal_calib_stats; docs/calibration.md "What is recorded").
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp.h"
#include "common/util.h"
#include "engine/calib/calib_internal.h"

/* ---- per-layer observers --------------------------------------------------- */

enum cal_status cal_obs_reset(struct cal_calib *c, struct cal_error *err)
{
	enum cal_status st = cal_backend_memset(c->be, c->obs_amax, 0, c->n_slots * sizeof(float), err);
	if (st < 0)
		return st;
	/* {count 0, first all-ones} */
	struct cal_nonfinite *nf = malloc(c->n_slots * sizeof(*nf));
	if (!nf)
		return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	for (uint64_t i = 0; i < c->n_slots; i++)
		nf[i] = (struct cal_nonfinite){0, CAL_NONFINITE_NONE};
	st = cal_backend_upload(c->be, c->obs_nf, nf, c->n_slots * sizeof(*nf), err);
	if (st >= 0 && c->w_nf)
		st = cal_backend_upload(c->be, c->w_nf, nf, 2 * sizeof(*nf), err);
	if (st >= 0 && c->w_amax)
		st = cal_backend_memset(c->be, c->w_amax, 0, 2 * (size_t)c->El * sizeof(float), err);
	if (st >= 0)
		st = cal_hr_reset(c, err);
	free(nf);
	return st;
}

/* ---- per-layer read-back ---------------------------------------------------- */

static const char *slot_module(int s)
{
	switch (s) {
	case S_QKV: return "self_attn.q_proj/k_proj/v_proj (input)";
	case S_O: return "self_attn.o_proj (input)";
	case S_K: return "self_attn (K after k_proj/k_norm/RoPE)";
	case S_V: return "self_attn (V after v_proj)";
	case S_MLP_GU: return "mlp.gate_proj/up_proj (input)";
	case S_MLP_DOWN: return "mlp.down_proj (input)";
	case S_MOE_IN: return "mlp (router and shared expert input)";
	case S_SH_DOWN: return "mlp.shared_expert.down_proj (input)";
	case S_OUT: return "residual stream (layer output)";
	case S_LMHEAD: return "lm_head (input)";
	case S_QB: return "self_attn.q_b_proj (input)";
	case S_KVB: return "self_attn.kv_b_proj (input)";
	default: return "?";
	}
}

enum cal_status cal_obs_read_back(struct cal_calib *c, int32_t L, struct cal_error *err)
{
	uint64_t n = c->n_slots, E = (uint64_t)c->E;
	float *am = malloc(n * sizeof(float));
	struct cal_nonfinite *nf = malloc(n * sizeof(*nf));
	enum cal_status st = CAL_OK;
	const char *P = c->d->prefix;
	if (!am || !nf) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
		goto fail;
	}
	CAL_TRY(cal_backend_download(c->be, am, c->obs_amax, n * sizeof(float), err));
	CAL_TRY(cal_backend_download(c->be, nf, c->obs_nf, n * sizeof(*nf), err));
	if (c->nranks > 1) /* every rank's, combined exactly (ranks.c) */
		CAL_TRY(cal_ep_reduce_obs(c, L, am, nf, err));
	for (uint64_t s = 0; s < n; s++) {
		if (!nf[s].count)
			continue;
		if (s == S_LMHEAD) {
			st = cal_error_set(err, CAL_ERR_NUMERIC,
					   "final norm (lm_head input): %llu non-finite values (first at "
					   "token %llu)", (unsigned long long)nf[s].count,
					   (unsigned long long)(nf[s].first / (uint64_t)c->H));
		} else if (s < S_FIXED) {
			int lin = c->d->layers[L].mixer == CAL_MIXER_LINEAR;
			struct cal_gdn_dims g;
			cal_gdn_dims(c->d, &g);
			uint64_t cols = (s == S_O) ? (lin ? g.vd : (uint64_t)(c->nh * c->hd))
				      : (s == S_K || s == S_V) ? (uint64_t)(c->nkv * c->hd)
				      : s == S_MLP_DOWN ? (uint64_t)c->Id
				      : s == S_SH_DOWN ? (uint64_t)c->Is : (uint64_t)c->H;
			const char *mod = !lin ? slot_module((int)s)
					: s == S_QKV ? "linear_attn.in_proj_* (input)"
					: s == S_O ? "linear_attn.out_proj (input)" : slot_module((int)s);
			st = cal_error_set(err, CAL_ERR_NUMERIC,
					   "layer %d, module %slayers.%d.%s: %llu non-finite values "
					   "(NaN/Inf), first at token %llu", L, P, L, mod,
					   (unsigned long long)nf[s].count,
					   (unsigned long long)(nf[s].first / (cols ? cols : 1)));
		} else {
			int down = s >= S_FIXED + E;
			st = cal_error_set(err, CAL_ERR_NUMERIC,
					   "layer %d, module %slayers.%d.mlp.experts (%s input of the "
					   "routed experts): %llu non-finite values (NaN/Inf)", L, P, L,
					   down ? "down_proj" : "gate_up_proj",
					   (unsigned long long)nf[s].count);
		}
		goto fail;
	}
	if (L < 0) {
		c->lmhead_amax = am[S_LMHEAD];
		goto fail;
	}
	CAL_TRY(cal_hr_read_back(c, L, am, c->moe[L].tokens, err));
	for (int s = 0; s < S_FIXED; s++)
		c->l_amax[(uint64_t)L * S_FIXED + s] = am[s];
	if (c->d->layers[L].ffn == CAL_FFN_MOE) {
		struct cal_moe_host *m = &c->moe[L];
		for (uint64_t e = 0; e < E; e++) {
			m->gu[e] = m->tokens[e] ? am[S_FIXED + e] : -1.0f;
			m->down[e] = m->tokens[e] ? am[S_FIXED + E + e] : -1.0f;
		}
	}
fail:
	free(am);
	free(nf);
	return st;
}


/* The amax of plan quantizers that come from the forward pass of layer L. */
void cal_obs_map_layer(struct cal_calib *c, int32_t L)
{
	const struct cal_plan *p = c->plan;
	const float *la0 = L >= 0 ? c->l_amax + (uint64_t)L * S_FIXED : NULL;
	const float *hl = L >= 0 && c->hr_amax ? c->hr_amax + (uint64_t)L * c->n_slots : NULL;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *m = &p->modules[mi];
		if (m->layer != L)
			continue;
		long qs[3] = {m->iq, m->kb, m->vb};
		for (int r = 0; r < 3; r++) {
			if (qs[r] < 0)
				continue;
			size_t qi = (size_t)qs[r];
			const struct cal_qspec *sp = &p->q[qi].spec;
			float a = -1.0f;
			/* nvfp4_act_headroom: NVFP4 inputs take the histogram's amax */
			int hr = r == 0 && hl && cal_hr_quantizer(c, sp);
			const float *la = hr ? hl : la0;
			if (!sp->enabled || !sp->calibrate || sp->use_constant_amax)
				continue;
			if (sp->has_constant_amax) {
				c->q_amax[qi] = (float)sp->constant_amax;
				c->q_has[qi] = 1;
				continue;
			}
			if (r == 1)
				a = la ? la[S_K] : -1.0f;
			else if (r == 2)
				a = la ? la[S_V] : -1.0f;
			else if (m->kind == CAL_MOD_ATTN_PROJ && c->d->attn == CAL_ATTN_MLA)
				a = la ? la[cal_mla_input_slot(m->proj)] : -1.0f;
			else if (m->kind == CAL_MOD_ATTN_PROJ)
				a = la ? la[strcmp(m->proj, "o_proj") ? S_QKV : S_O] : -1.0f;
			else if (m->kind == CAL_MOD_LINATTN_PROJ) /* in_proj_*: the norm output */
				a = la ? la[strcmp(m->proj, "out_proj") ? S_QKV : S_O] : -1.0f;
			else if (m->kind == CAL_MOD_MLP_PROJ)
				a = la[strcmp(m->proj, "down_proj") ? S_MLP_GU : S_MLP_DOWN];
			else if (m->kind == CAL_MOD_SHARED_PROJ)
				a = la[strcmp(m->proj, "down_proj") ? S_MOE_IN : S_SH_DOWN];
			else if (m->kind == CAL_MOD_SHARED_GATE || m->kind == CAL_MOD_ROUTER)
				a = la[S_MOE_IN];
			else if (m->kind == CAL_MOD_EXPERTS_GATE_UP &&
				 c->d->act == CAL_ACT_SWIGLU_OAI)
				/* gpt_oss: modelopt's one gate_up input quantizer sees
				 * every token before routing (docs/gpt_oss.md) */
				a = la[S_MOE_IN];
			else if (m->kind == CAL_MOD_EXPERTS_GATE_UP || m->kind == CAL_MOD_EXPERTS_DOWN) {
				const struct cal_moe_host *mh = &c->moe[L];
				const float *v = m->kind == CAL_MOD_EXPERTS_DOWN ? mh->down : mh->gu;
				if (hr)
					v = hl + S_FIXED +
					    (m->kind == CAL_MOD_EXPERTS_DOWN ? (uint64_t)c->E : 0);
				for (int64_t e = 0; mh->tokens && e < c->E; e++)
					a = v[e] > a ? v[e] : a;
			} else if (m->kind == CAL_MOD_LM_HEAD)
				a = c->lmhead_amax;
			if (a >= 0) {
				c->q_amax[qi] = a;
				c->q_has[qi] = 1;
			}
		}
	}
}


/* ---- JSON -------------------------------------------------------------------- */

static void put_amax(json_t *o, const char *key, float a)
{
	if (a >= 0)
		json_object_set_new(o, key, json_real(a));
}

json_t *cal_calib_stats(const struct cal_calib *c)
{
	const struct cal_model_desc *d = c->d;
	json_t *j = json_object(), *qs = json_object(), *in = json_object(), *seen = json_object();
	json_t *kv = json_object(), *moe = json_object();
	char name[512];
	json_t *out = NULL;
	if (!j || !qs || !in || !seen || !kv || !moe)
		goto done;
	for (int32_t L = 0; L < c->done_layers; L++) {
		const float *la = c->l_amax + (uint64_t)L * S_FIXED;
		const char *P = d->prefix;
#define K(fmt, ...) (snprintf(name, sizeof(name), "%slayers.%d." fmt, P, L, ##__VA_ARGS__), name)
		if (d->layers[L].mixer == CAL_MIXER_LINEAR) {
			/* Gated DeltaNet: every in_proj sees the norm output; no KV */
			static const char *const fused[] = {"in_proj_qkvz", "in_proj_ba", NULL};
			static const char *const split[] = {"in_proj_qkv", "in_proj_z", "in_proj_b",
							    "in_proj_a", NULL};
			for (const char *const *pp = d->gdn == CAL_GDN_FUSED ? fused : split; *pp; pp++)
				put_amax(in, K("linear_attn.%s", *pp), la[S_QKV]);
			put_amax(in, K("linear_attn.out_proj"), la[S_O]);
		} else {
			if (d->attn == CAL_ATTN_MLA) { /* mla.c */
				static const char *const mla[] = {"q_a_proj", "q_b_proj",
								  "kv_a_proj_with_mqa", "kv_b_proj", NULL};
				static const char *const mla_v2[] = {"q_proj", "kv_a_proj_with_mqa",
								     "kv_b_proj", NULL};
				for (const char *const *pp = d->q_lora_rank ? mla : mla_v2; *pp; pp++)
					put_amax(in, K("self_attn.%s", *pp), la[cal_mla_input_slot(*pp)]);
			} else {
				put_amax(in, K("self_attn.q_proj"), la[S_QKV]);
				put_amax(in, K("self_attn.k_proj"), la[S_QKV]);
				put_amax(in, K("self_attn.v_proj"), la[S_QKV]);
			}
			put_amax(in, K("self_attn.o_proj"), la[S_O]);
			json_object_set_new(kv, K("self_attn"),
					    json_pack("{s:f, s:f}", "k_amax", (double)la[S_K], "v_amax",
						      (double)la[S_V]));
		}
		if (d->layers[L].ffn == CAL_FFN_DENSE) {
			put_amax(in, K("mlp.gate_proj"), la[S_MLP_GU]);
			put_amax(in, K("mlp.up_proj"), la[S_MLP_GU]);
			put_amax(in, K("mlp.down_proj"), la[S_MLP_DOWN]);
			continue;
		}
		const struct cal_moe_host *m = &c->moe[L];
		put_amax(in, K("mlp.%s", d->arch->router_name ? d->arch->router_name : "gate"),
			 la[S_MOE_IN]);
		if (c->Is) {
			put_amax(in, K("mlp.%s.gate_proj", d->arch->shared_name), la[S_MOE_IN]);
			put_amax(in, K("mlp.%s.up_proj", d->arch->shared_name), la[S_MOE_IN]);
			put_amax(in, K("mlp.%s.down_proj", d->arch->shared_name), la[S_SH_DOWN]);
			if (d->shared == CAL_SHARED_GATED)
				put_amax(in, K("mlp.shared_expert_gate"), la[S_MOE_IN]);
		}
		json_t *tok = json_array(), *gu = json_array(), *dn = json_array();
		json_t *filled = json_array();
		float gmax = -1, dmax = -1;
		for (int64_t e = 0; e < c->E; e++) {
			gmax = m->gu[e] > gmax ? m->gu[e] : gmax;
			dmax = m->down[e] > dmax ? m->down[e] : dmax;
		}
		for (int64_t e = 0; e < c->E; e++) {
			json_array_append_new(tok, json_integer((json_int_t)m->tokens[e]));
			json_array_append_new(gu, m->tokens[e] ? json_real(m->gu[e]) : json_null());
			json_array_append_new(dn, m->tokens[e] ? json_real(m->down[e]) : json_null());
			if (!m->tokens[e])
				json_array_append_new(filled, json_integer(e));
			if (m->tokens[e]) {
				put_amax(in, K("mlp.experts.%lld.gate_up_proj", (long long)e), m->gu[e]);
				json_object_set_new(seen, name, json_integer((json_int_t)m->tokens[e]));
				put_amax(in, K("mlp.experts.%lld.down_proj", (long long)e), m->down[e]);
				json_object_set_new(seen, name, json_integer((json_int_t)m->tokens[e]));
			}
		}
		json_t *ml = json_pack("{s:o, s:o, s:o, s:f, s:f}", "tokens", tok,
				       "gate_up_input_amax", gu, "down_input_amax", dn,
				       "gate_up_input_amax_layer", (double)gmax,
				       "down_input_amax_layer", (double)dmax);
		if (c->o.per_expert_input_amax) {
			/* experts that saw no token take the layer maximum (reported) */
			json_t *gu2 = json_array(), *dn2 = json_array();
			for (int64_t e = 0; e < c->E; e++) {
				json_array_append_new(gu2, json_real(m->tokens[e] ? m->gu[e] : gmax));
				json_array_append_new(dn2, json_real(m->tokens[e] ? m->down[e] : dmax));
			}
			json_object_set_new(ml, "per_expert_gate_up_input_amax", gu2);
			json_object_set_new(ml, "per_expert_down_input_amax", dn2);
			json_object_set_new(ml, "filled_from_layer_max", filled);
		} else {
			json_object_set_new(ml, "experts_without_tokens", filled);
		}
		json_object_set_new(moe, K("mlp.experts"), ml);
#undef K
	}
	put_amax(in, "lm_head", c->lmhead_amax);
	for (size_t i = 0; i < c->plan->n_q; i++) {
		const struct cal_plan_q *q = &c->plan->q[i];
		if (!q->spec.enabled)
			continue;
		json_t *e = json_pack("{s:s, s:s}", "role", cal_qrole_name(q->role), "format",
				      cal_qfmt_name(q->spec.fmt));
		if (c->q_has[i])
			json_object_set_new(e, "amax", json_real(c->q_amax[i]));
		else
			json_object_set_new(e, "amax", json_null());
		uint64_t nb = 0;
		const uint16_t *b = cal_calib_q_bias(c, i, &nb);
		if (b) { /* affine KV cache: the bias, bf16 values (docs/export.md) */
			json_t *ba = json_array();
			for (uint64_t k = 0; k < nb; k++)
				json_array_append_new(ba, json_real(cal_bf16_to_f32(b[k])));
			json_object_set_new(e, "bias", ba);
		}
		if (q->spec.use_constant_amax)
			json_object_set_new(e, "constant", json_true());
		json_object_set_new(qs, q->name, e);
	}
	json_object_set_new(j, "model_type", json_string(d->model_type));
	json_object_set_new(j, "layers_done", json_integer(c->done_layers));
	json_object_set_new(j, "tokens", json_integer((json_int_t)c->n_tok));
	json_object_set_new(j, "pad_like_modelopt", json_boolean(c->o.pad_like_modelopt));
	json_object_set_new(j, "per_expert_input_amax", json_boolean(c->o.per_expert_input_amax));
	json_object_set_new(j, "moe_calib_experts_ratio", json_real(c->o.moe_calib_experts_ratio));
	json_object_set_new(j, "experts_per_token_observed", json_integer(c->kk));
	json_object_set_new(j, "combine", json_string(c->o.combine == CAL_COMBINE_F32 ? "f32"
										       : "eager"));
	json_object_set_new(j, "quantizers", qs);
	json_object_set_new(j, "input_amax", in);
	json_object_set_new(j, "tokens_seen", seen);
	json_object_set_new(j, "kv_amax", kv);
	json_object_set_new(j, "moe", moe);
	/* GPTQ, AWQ-lite, SmoothQuant: per linear (docs/gptq.md: and the layers
	 * that fell back; docs/awq.md: the chosen alpha; docs/smoothquant.md:
	 * the input amax after smoothing) */
	if (c->lr)
		json_object_set_new(j, c->lr->a->key, cal_lin_run_stats(c));
	qs = in = seen = kv = moe = NULL;
	out = j;
	j = NULL;
done:
	CAL_EACH(json_decref, json_t, qs, in, seen, kv, moe, j);
	return out;
}

char *cal_calib_stats_dump(const json_t *stats)
{
	return stats ? json_dumps(stats, JSON_INDENT(1) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9))
		     : NULL;
}

char *cal_calib_stats_json(const struct cal_calib *c)
{
	json_t *j = cal_calib_stats(c);
	char *out = cal_calib_stats_dump(j);
	json_decref(j);
	return out;
}
