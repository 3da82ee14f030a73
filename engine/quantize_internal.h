/*
 * quantize_internal.h — shared by quantize.c (one job end to end) and
 * quantize_ranks.c (its export over several ranks, docs/expert_parallel.md
 * "Export").
 */
#ifndef CAL_QUANTIZE_INTERNAL_H
#define CAL_QUANTIZE_INTERNAL_H

#include "engine/calib.h"
#include "engine/export/export.h"
#include "engine/job.h"

/* The statistics of `layer` (-1: model-level quantizers) from the engine c
 * into stats: every enabled non-weight quantizer's amax, the per-expert
 * input amax (per_expert_input_amax) and the expert token counts. */
enum cal_status cal_quantize_layer_stats(const struct cal_plan *p, int per_expert_input_amax,
					 const struct cal_calib *c, int32_t layer,
					 struct cal_stats *stats, struct cal_error *err);

/*
 * The export's ranks of this process (docs/expert_parallel.md "Export"):
 * every rank r > 0 it hosts gets a part exporter (engine/export/export.h)
 * on its own back end, fed by the calibration's rank hooks: at the start
 * rank 0 broadcasts its output's temporary directory and layout and the
 * parts attach; after each layer a part takes its experts; at the end every
 * part waits for its writes and sends its report to rank 0, which hands it
 * to its exporter (lead) for cal_exporter_finish().  lead: global rank 0's
 * exporter, NULL in a process without rank 0.  eo: the export options
 * (copied; rank and world set here).
 */
struct cal_qranks;
enum cal_status cal_qranks_new(const struct cal_job *job, const struct cal_export_opts *eo,
			       struct cal_exporter *lead, struct cal_qranks **ret,
			       struct cal_error *err);
const struct cal_calib_rank_hooks *cal_qranks_hooks(const struct cal_qranks *q);
/* Tensor bytes the parts of this process have written so far. */
uint64_t cal_qranks_bytes_written(const struct cal_qranks *q);
/* Joins and frees the parts (they remove nothing); NULL is a no-op. */
void cal_qranks_free(struct cal_qranks *q);

#endif
