/*
 * export_algo.c — what a calibration algorithm hands the exporter before a
 * layer is exported: GPTQ's updated weights (docs/gptq.md), AWQ's folded
 * weights with their pre_quant_scale and the norms the scales were fused
 * into (docs/awq.md).  The exporter quantizes them in place of the source's
 * tensors (pipeline.c).
 */
#include "export_internal.h"

#include <stdlib.h>
#include <string.h>

/* *dst becomes a heap copy of the n bf16 elements at src (its old buffer
 * freed); untouched when out of memory. */
static enum cal_status keep_copy(uint16_t **dst, const uint16_t *src, uint64_t n,
				 struct cal_error *err)
{
	uint16_t *c = malloc(n * 2);
	if (!c)
		return cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
	memcpy(c, src, n * 2);
	free(*dst);
	*dst = c;
	return CAL_OK;
}

enum cal_status cal_exporter_set_weight(struct cal_exporter *ex, size_t mod, const uint16_t *w,
				       uint64_t numel, const uint16_t *pqs, struct cal_error *err)
{
	for (size_t i = 0; i < ex->n_lin; i++) {
		struct xlin *x = &ex->lin[i];
		if (x->mod < 0 || (size_t)x->mod != mod || x->expert >= 0)
			continue;
		if (x->layer >= 0 && ex->layer_done[x->layer])
			return cal_error_set(err, CAL_ERR_INVALID, "export: %s: layer %d was already "
					     "exported", x->name, (int)x->layer);
		/* AWQ and SmoothQuant fold the dequantized weight of an FP8 block
		 * source (docs/awq.md "MLA"); GPTQ needs the source's grid */
		int fp8 = x->si && ex->plan->recipe->algo.method != CAL_CALIB_GPTQ;
		if ((x->fmt != CAL_QFMT_NVFP4_STATIC && x->fmt != CAL_QFMT_INT4_BLOCK &&
		     x->fmt != CAL_QFMT_W4A8_AWQ &&
		     x->fmt != CAL_QFMT_NVFP4 && x->fmt != CAL_QFMT_INT8) ||
		    (!fp8 && (x->dtype != CAL_DTYPE_BF16 || x->si)) || x->bmm ||
		    numel != (uint64_t)x->out * (uint64_t)x->in)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "export: %s: an updated (GPTQ, "
					     "AWQ, SmoothQuant) weight needs an NVFP4, INT4 or INT8 "
					     "linear with a bf16 source of %lld x %lld elements (got %llu)", x->name,
					     (long long)x->out, (long long)x->in,
					     (unsigned long long)numel);
		if (!pqs != !x->awq_pqs)
			return cal_error_set(err, CAL_ERR_INTERNAL, "export: %s: a pre_quant_scale "
					     "was %s", x->name, pqs ? "given but not planned"
								  : "planned but not given");
		if (pqs)
			CAL_TRY_RET(keep_copy(&x->pqs, pqs, (uint64_t)x->in, err));
		return keep_copy(&x->gw, w, numel, err);
	}
	return cal_error_set(err, CAL_ERR_INVALID, "export: plan module %zu is not an exported "
			     "linear", mod);
}

enum cal_status cal_exporter_set_block_amax(struct cal_exporter *ex, size_t mod,
					    const float *amax, uint64_t n, struct cal_error *err)
{
	for (size_t i = 0; i < ex->n_lin; i++) {
		struct xlin *x = &ex->lin[i];
		if (x->mod < 0 || (size_t)x->mod != mod || x->expert >= 0)
			continue;
		if (!x->gw || (x->layer >= 0 && ex->layer_done[x->layer]))
			return cal_error_set(err, CAL_ERR_INVALID, "export: %s: a block amax needs "
					     "an updated weight of a layer not yet exported", x->name);
		if (x->fmt == CAL_QFMT_NVFP4 ? n != 1
					      : x->fmt != CAL_QFMT_INT4_BLOCK ||
						n * 128 != (uint64_t)x->out * (uint64_t)x->in)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "export: %s: a given amax "
					     "needs INT4 in blocks of 128 (one per block) or NVFP4 "
					     "(one per tensor; %llu given)", x->name,
					     (unsigned long long)n);
		float *c = malloc(n * sizeof(float));
		if (!c)
			return cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
		memcpy(c, amax, n * sizeof(float));
		free(x->bamax);
		x->bamax = c;
		return CAL_OK;
	}
	return cal_error_set(err, CAL_ERR_INVALID, "export: plan module %zu is not an exported "
			     "linear", mod);
}

enum cal_status cal_exporter_set_norm(struct cal_exporter *ex, int32_t layer, int post_attention,
				      const uint16_t *w, uint64_t numel, struct cal_error *err)
{
	int role = post_attention ? CAL_ROLE_POST_ATTN_NORM : CAL_ROLE_INPUT_NORM;
	for (size_t i = 0; i < ex->n_cp; i++) {
		struct xcopy *c = &ex->cp[i];
		if (c->layer != layer || c->role != role)
			continue;
		if (ex->layer_done[layer])
			return cal_error_set(err, CAL_ERR_INVALID, "export: %s: layer %d was already "
					     "exported", c->name, (int)layer);
		/* gpt_oss's fp32 norms are written as bf16 (to_bf16), the fused one too */
		if ((c->t->dtype != CAL_DTYPE_BF16 && !c->to_bf16) || c->to_f32 ||
		    c->t->numel != numel)
			return cal_error_set(err, CAL_ERR_UNSUPPORTED, "export: %s: a fused (AWQ) norm "
					     "needs a bf16 source of %llu elements", c->name,
					     (unsigned long long)numel);
		return keep_copy(&c->data, w, numel, err);
	}
	return cal_error_set(err, CAL_ERR_INVALID, "export: layer %d has no %s norm weight",
			     (int)layer, post_attention ? "post-attention" : "input");
}
