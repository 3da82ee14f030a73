/*
 * stats.h — the calibration statistics the exporter consumes: a table from
 * modelopt quantizer name (plan.h naming, e.g.
 * "model.layers.3.mlp.experts.gate_up_proj_input_quantizer") to the amax the
 * export uses, plus per-MoE-layer token counts per expert and the size of the
 * calibration set (for the report).
 *
 * The calibration engine fills one in memory layer by layer
 * (cal_stats_set), or the table is read from a stats JSON file
 * (cal_stats_load; format in docs/export.md).  Weight quantizers need no
 * entry: the exporter takes their amax from the weights, as modelopt does.
 *
 * Ownership: a struct cal_stats owns copies of every name; cal_stats_free().
 * Not thread-safe for writers; concurrent readers are fine.
 */
#ifndef CAL_EXPORT_STATS_H
#define CAL_EXPORT_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Largest stats JSON read. */
#define CAL_STATS_MAX_FILE (512u * 1024u * 1024u)

struct cal_stats;

/* Size of the calibration set (0 when unknown). */
struct cal_stats_calib {
	int64_t samples;
	int64_t seq_len;
	uint64_t tokens;
	/* the sequences' fingerprints (cal_calib_tokens_hashes: 16 hex digits
	 * each, concatenated; NULL: unknown), for calibd eval's overlap check;
	 * cal_stats_set_calib copies it */
	const char *sequence_hashes;
};

/* Empty table.  Errors: CAL_ERR_NOMEM. */
enum cal_status cal_stats_init(struct cal_stats **ret, struct cal_error *err);
void cal_stats_free(struct cal_stats *s);

/*
 * Records amax for quantizer `name` (replacing an earlier value).
 * amax must be finite and >= 0.  Errors: CAL_ERR_NUMERIC (naming the
 * quantizer), CAL_ERR_INVALID (empty name), CAL_ERR_NOMEM.
 */
enum cal_status cal_stats_set(struct cal_stats *s, const char *name, float amax,
			      struct cal_error *err);
/* 1 and *ret when `name` has an amax, else 0. */
int cal_stats_get(const struct cal_stats *s, const char *name, float *ret);
size_t cal_stats_count(const struct cal_stats *s);

/* The bias of affine KV quantizer `name` (bf16 values, n of them, copied;
 * the quantizer needs an amax first).  Errors: CAL_ERR_INVALID (no amax
 * for it, n 0), CAL_ERR_NOMEM. */
enum cal_status cal_stats_set_bias(struct cal_stats *s, const char *name, const uint16_t *bias,
				   uint64_t n, struct cal_error *err);
/* Its bias (*ret_n values) or NULL. */
const uint16_t *cal_stats_bias(const struct cal_stats *s, const char *name, uint64_t *ret_n);
/* Its bias of exactly n values in *ret; else CAL_ERR_INVALID naming it. */
enum cal_status cal_stats_need_bias(const struct cal_stats *s, const char *name, uint64_t n,
				    const uint16_t **ret, struct cal_error *err);

/* Token counts of MoE layer `layer` (n_experts values, copied). */
enum cal_status cal_stats_set_expert_tokens(struct cal_stats *s, int32_t layer,
					    int64_t n_experts, const uint64_t *tokens,
					    struct cal_error *err);
/* Counts of `layer` (*ret_n experts) or NULL when none were recorded. */
const uint64_t *cal_stats_expert_tokens(const struct cal_stats *s, int32_t layer,
					int64_t *ret_n);

void cal_stats_set_calib(struct cal_stats *s, const struct cal_stats_calib *c);
const struct cal_stats_calib *cal_stats_calib(const struct cal_stats *s);

/*
 * Reads a stats JSON file (docs/export.md).  Errors: CAL_ERR_NOTFOUND /
 * CAL_ERR_IO (the file), CAL_ERR_FORMAT (not JSON, wrong types: the message
 * names the key), CAL_ERR_NUMERIC (negative or non-finite amax), CAL_ERR_NOMEM.
 */
enum cal_status cal_stats_load(const char *path, struct cal_stats **ret, struct cal_error *err);

/* The table as stats JSON (heap string owned by the caller), NULL on no memory. */
char *cal_stats_json(const struct cal_stats *s);

#endif
