/*
 * eval.h — what quantization did to a model: the original and the quantized
 * model run side by side, layer by layer, on held-out tokens through the
 * calibration engine's forward (engine/calib.h), the quantized one as a
 * serving engine runs the exported checkpoint (weights dequantized from the
 * exported tensors, activations and the KV cache fake-quantized with the
 * exported scales).  docs/eval.md describes the numerics and the report.
 */
#ifndef CAL_EVAL_H
#define CAL_EVAL_H

#include <jansson.h>

#include "common/status.h"
#include "engine/calib.h"
#include "engine/st/safetensors.h"

/*
 * Checks that the exported checkpoint in quant_dir was made from the source
 * model_dir (checkpoint src): the configs agree (quantization_config aside),
 * and the source fingerprint recorded in its calibd_report.json, when there
 * is one, is the source's.  Tensor shapes and the bytes of unquantized
 * tensors are checked as the evaluation reads them.  Errors:
 * CAL_ERR_INVALID naming what differs, CAL_ERR_NOTFOUND / CAL_ERR_FORMAT
 * for a missing or malformed file.
 */
enum cal_status cal_eval_check_source(const char *model_dir, const struct cal_checkpoint *src,
				      const char *quant_dir, struct cal_error *err);

/*
 * Runs the evaluation over `tokens` with the engine `c` (opened on the
 * source, without pad_like_modelopt) and the exported checkpoint `quant`.
 * *ret: the report (docs/eval.md), a new reference.  Errors: the engine's,
 * CAL_ERR_UNSUPPORTED for a format or layer kind the evaluation does not
 * run (named), CAL_ERR_INVALID for an exported tensor that does not fit
 * the source.
 */
struct cal_eval_opts {
	/* tests: the quantized model's logits, bf16 [tokens, vocab] in data
	 * order, raw little-endian, into this file (NULL: none) */
	const char *logits_out;
	const char *logits_orig_out;  /* the same of the original model */
	/* per-layer KL (the logit lens, docs/eval.md) on at most this many
	 * predicted positions, evenly spread (0: CAL_EVAL_LAYER_KL_POSITIONS) */
	uint64_t layer_kl_positions;
};
#define CAL_EVAL_LAYER_KL_POSITIONS 4096
enum cal_status cal_eval_run(struct cal_calib *c, const struct cal_checkpoint *quant,
			     const struct cal_calib_tokens *tokens, const struct cal_eval_opts *opts,
			     json_t **ret, struct cal_error *err);

/*
 * Adds "calibration_overlap" to the evaluation report rep: how many of the
 * evaluated sequences equal a calibration sequence (their fingerprints,
 * cal_calib_tokens_hash, against the sequence_hashes the exporter recorded
 * in quant_dir/calibd_report.json), or {"unknown": why}.
 */
void cal_eval_overlap(const char *quant_dir, const struct cal_calib_tokens *tk, json_t *rep);

#endif
