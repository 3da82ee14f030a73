/*
 * kvcache.c — the KV-cache quantizers' extras in the calibration engine:
 * the Hadamard rotation of Q / K / V before attention and the affine
 * (static bias) KV cache's running mean (docs/numerics.md "KV-cache
 * rotation", "Affine KV cache"; docs/calibration.md "What is recorded").
 *
 * A forward, for the affine bias, is one calibration sequence: modelopt's
 * running average counts its calibration forwards, and calibd matches a
 * forward loop that runs one sequence per forward (hf_ptq --batch_size 1,
 * the differential test's loop).  The sequences of a layer are folded in
 * calibration order, so the bias does not depend on how calibd packs
 * micro-batches; runs over several ranks (micro-batches on different
 * ranks) and pad_like_modelopt (padded batches) are refused.
 *
 * GQA layers rotate and observe q / kb / vb (layer.c), MLA layers the
 * per-head mq / mk / mv (mla.c): K and V of cal_model_kv_dims' widths, the
 * bias of a layer [K width | V width].
 */
#include <stdlib.h>
#include <string.h>

#include "engine/calib/calib_internal.h"

/* The widths of K (kw[0]) and V (kw[1]); returns their sum. */
static uint64_t kv_widths(const struct cal_calib *c, uint64_t kw[2])
{
	kw[0] = (uint64_t)cal_model_kv_dims(c->d, 0, NULL, NULL);
	kw[1] = (uint64_t)cal_model_kv_dims(c->d, 1, NULL, NULL);
	return kw[0] + kw[1];
}

enum cal_status cal_kv_alloc(struct cal_calib *c, struct cal_error *err)
{
	const struct cal_plan_summary *s = &c->plan->sum;
	uint64_t kw[2], kd = kv_widths(c, kw);
	if (!s->kv_affine)
		return CAL_OK;
	if (c->nranks > 1 || c->o.pad_like_modelopt)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "the affine KV cache's running bias follows the calibration "
				     "sequences in order: it is not implemented over %s",
				     c->nranks > 1 ? "several ranks" : "pad_like_modelopt batches");
	if (c->plan->recipe->algo.method != CAL_CALIB_MAX &&
	    c->plan->recipe->algo.method != CAL_CALIB_MSE &&
	    c->plan->recipe->algo.method != CAL_CALIB_HEADROOM)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "the affine KV cache is implemented with the max, mse and "
				     "nvfp4_act_headroom algorithms only (the others run extra "
				     "calibration forwards that modelopt folds into the bias)");
	if (!c->kv_bias_host) {
		c->kv_bias_host = calloc((size_t)c->d->num_layers * kd + 1, 2);
		if (!c->kv_bias_host)
			return cal_error_set(err, CAL_ERR_NOMEM, "out of memory");
	}
	return cal_be_alloc(c, kd * 2, &c->kv_bias, err);
}

void cal_kv_free(struct cal_calib *c)
{
	if (c->be && c->kv_bias)
		cal_be_free(c, c->kv_bias);
	c->kv_bias = NULL;
}

/* Rotates Q, K and V of the micro-batch (T tokens) in place: x and cols
 * as cal_kv_observe's. */
static enum cal_status rotate(struct cal_calib *c, uint64_t T, uint16_t *const x[3],
			      const uint64_t cols[3], struct cal_error *err)
{
	const uint32_t *rb = cal_eval_kv_rot(c);
	for (int i = 0; i < 3; i++) {
		if (!rb[i])
			continue;
		struct cal_hadamard_args a = {x[i], T, cols[i], rb[i]};
		CAL_TRY_RET(cal_op_hadamard(c->be, &a, err));
	}
	return CAL_OK;
}

enum cal_status cal_kv_observe(struct cal_calib *c, const struct cal_mb *mb,
			       struct cal_error *err)
{
	uint64_t T = mb->n_tok, kw[2];
	int mla = c->d->attn == CAL_ATTN_MLA;
	kv_widths(c, kw);
	uint16_t *const x[3] = {mla ? c->mq : c->q, mla ? c->mk : c->kb, mla ? c->mv : c->vb};
	const uint64_t cols[3] = {mla ? kw[0] : (uint64_t)(c->nh * c->hd), kw[0], kw[1]};
	CAL_TRY_RET(rotate(c, T, x, cols, err));
	if (!c->plan->sum.kv_affine) {
		CAL_TRY_RET(cal_layer_observe(c, x[1], T, kw[0], mb->tok0, S_K, err));
		return cal_layer_observe(c, x[2], T, kw[1], mb->tok0, S_V, err);
	}
	for (int v = 0; v < 2; v++) {
		int slot = v ? S_V : S_K;
		struct cal_kv_affine_args a = {x[1 + v], T, kw[v], c->meta + mb->meta_off,
					       mb->n_seq, c->kv_fwd, c->kv_bias + (v ? kw[0] : 0),
					       mb->tok0 * kw[v], c->obs_amax + slot, c->obs_nf + slot};
		CAL_TRY_RET(cal_op_kv_affine(c->be, &a, err));
	}
	c->kv_fwd += mb->n_seq;
	return CAL_OK;
}

enum cal_status cal_kv_read_back(struct cal_calib *c, int32_t L, struct cal_error *err)
{
	uint64_t kw[2], kd = kv_widths(c, kw);
	uint64_t fwd = c->kv_fwd;
	c->kv_fwd = 0;
	if (!c->kv_bias || L < 0 || c->d->layers[L].mixer == CAL_MIXER_LINEAR || !fwd)
		return CAL_OK;
	return cal_backend_download(c->be, c->kv_bias_host + (uint64_t)L * kd, c->kv_bias,
				    kd * 2, err);
}

const uint16_t *cal_calib_q_bias(const struct cal_calib *c, size_t q, uint64_t *ret_n)
{
	const struct cal_plan *p = c->plan;
	if (!c->kv_bias_host || q >= p->n_q || !p->q[q].spec.enabled || !p->q[q].spec.affine)
		return NULL;
	const struct cal_plan_q *pq = &p->q[q];
	int32_t L = p->modules[pq->module].layer;
	if (L < 0 || L >= c->done_layers)
		return NULL;
	uint64_t kw[2], kd = kv_widths(c, kw);
	int v = pq->role == CAL_QROLE_V_BMM;
	*ret_n = kw[v];
	return c->kv_bias_host + (uint64_t)L * kd + (v ? kw[0] : 0);
}
