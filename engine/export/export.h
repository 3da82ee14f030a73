/*
 * export.h — writes a modelopt-compatible ("unified HF") quantized
 * checkpoint (docs/numerics.md, docs/export.md), layer by layer.
 *
 * cal_exporter_open() derives the complete output tensor list (names,
 * dtypes, shapes) from the model description, the tensor catalog and the
 * quantization plan, declares it to the crash-safe writer (engine/st) and
 * checks the free disk space before the first byte.  The calibration engine
 * then calls cal_exporter_layer(L, stats) as soon as layer L's statistics
 * are final: the layer's weights are quantized through the op table of the
 * given back end and handed to the writer.  cal_exporter_finish() writes the
 * model-level tensors, config.json (with quantization_config),
 * hf_quant_config.json, generation_config.json, the tokenizer and chat
 * template files of the source, calibd_report.json, and publishes the
 * directory atomically.  Nothing ever appears under out_dir unless finish
 * succeeded; an existing out_dir is never touched.
 *
 * Output naming: tensors keep their source names, except routed experts,
 * which are always written per expert under the architecture's hub names
 * (<prefix>layers.L.<mlp|block_sparse_moe>.experts.E.<gate_proj|up_proj|
 * down_proj or w1|w3|w2>), whatever the source layout, and MoE routers that
 * follow the hub block name.  Statistics come through struct cal_stats
 * (stats.h): the amax of every enabled input / KV quantizer by its modelopt
 * name; weight amax is taken from the weights.
 *
 * Ownership: the exporter references the description, checkpoint, catalog,
 * plan and back end (all must outlive it) and owns everything else.
 */
#ifndef CAL_EXPORT_H
#define CAL_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/status.h"
#include "engine/export/stats.h"
#include "engine/model/catalog.h"
#include "engine/model/model.h"
#include "engine/recipe/plan.h"
#include "engine/st/safetensors.h"
#include "kernels/backend.h"
#include "kernels/numfmt.h"

struct cal_st_publish;

struct cal_export_opts {
	const char *model_dir;      /* source directory (side files); required */
	const char *out_dir;        /* final directory; must not exist */
	const char *recipe_name;    /* for the report and messages */
	/* amax / constant semantics (docs/numerics.md "Division semantics"):
	 * CAL_DIV_RECIP (default, modelopt's GPU run) or CAL_DIV_EXACT
	 * (modelopt on CPU). */
	enum cal_div_mode div;
	uint64_t max_shard_bytes;   /* 0: 10 GB like modelopt */
	/* fused-expert input amax per expert (stats names
	 * "...experts.<proj>_input_quantizers.<e>") instead of the shared one */
	int per_expert_input_amax;
	/* temporary name tag and publish hooks (st_writer.h), or NULL */
	const struct cal_st_publish *publish;
	/* the job's capability query (engine/job.h): plan every output tensor
	 * and run every check, then return CAL_OK with *ret NULL: no writer,
	 * nothing on disk, no back end needed (be may be NULL; out_dir too) */
	int check_only;
	/* expert parallelism (docs/expert_parallel.md "Export"): this exporter
	 * is rank `rank` of `world` (world 0 or 1: one rank, every tensor).
	 * Rank 0, the leader, opens, writes and publishes out_dir and
	 * quantizes everything except the other ranks' routed experts; rank
	 * r > 0, a part, plans the same output, creates nothing, and quantizes
	 * and writes only its experts E r / world .. E (r + 1) / world - 1 into
	 * the leader's temporary directory (cal_exporter_attach). */
	unsigned rank, world;
};

struct cal_exporter;

/* Whether the exporter reads d's source weights: bf16/f16/f32, and gpt_oss
 * MXFP4 experts (docs/gpt_oss.md); else CAL_ERR_UNSUPPORTED naming the
 * source format. */
enum cal_status cal_export_check_source(const struct cal_model_desc *d, struct cal_error *err);

/*
 * Plans the output and opens the writer.  Errors: CAL_ERR_EXISTS (out_dir
 * exists), CAL_ERR_NOSPACE (not enough free space for everything),
 * CAL_ERR_UNSUPPORTED (a format or source the exporter cannot write, named),
 * CAL_ERR_FORMAT (a planned weight missing from the checkpoint),
 * CAL_ERR_IO, CAL_ERR_NOMEM.
 */
enum cal_status cal_exporter_open(const struct cal_model_desc *d,
				  const struct cal_checkpoint *ck,
				  const struct cal_catalog *cat, const struct cal_plan *plan,
				  struct cal_backend *be, const struct cal_export_opts *opts,
				  struct cal_exporter **ret, struct cal_error *err);

/*
 * Quantizes and writes every tensor of decoder layer `layer` (once per
 * layer, any order).  Errors: CAL_ERR_INVALID (layer out of range or done
 * twice; an enabled input / KV quantizer without amax in stats, named),
 * CAL_ERR_NUMERIC (a scale that would be zero, NaN or inf, naming the
 * tensor), CAL_ERR_UNSUPPORTED, CAL_ERR_DEVICE, CAL_ERR_IO, CAL_ERR_NOSPACE.
 * After an error the exporter is dead: only free() is allowed.
 */
enum cal_status cal_exporter_layer(struct cal_exporter *ex, int32_t layer,
				   const struct cal_stats *stats, struct cal_error *err);

/* GPTQ (docs/gptq.md), AWQ (docs/awq.md): quantize plan module `mod` (a
 * non-expert static NVFP4 or INT4 linear with a bf16 source) of a layer not
 * yet exported from the updated bf16 weight w (numel = out * in, copied)
 * instead of the source.  Static NVFP4 (GPTQ): the scales still come from
 * the source weight; INT4 (AWQ): from w.  pqs: the bf16 pre_quant_scale
 * [in] (copied), given exactly for the linears the exporter planned one
 * for (an awq_lite recipe: o_proj, down_proj, shared experts), else NULL.
 * Errors: CAL_ERR_INVALID (no such linear, layer done),
 * CAL_ERR_UNSUPPORTED, CAL_ERR_INTERNAL (pqs against the plan),
 * CAL_ERR_NOMEM. */
enum cal_status cal_exporter_set_weight(struct cal_exporter *ex, size_t mod, const uint16_t *w,
				       uint64_t numel, const uint16_t *pqs, struct cal_error *err);

/* awq_full (docs/awq.md "awq_full"): the INT4 block amax [out * in / 128]
 * (n, copied) module `mod`'s weight set with cal_exporter_set_weight is
 * quantized with, instead of its own (awq_clip's clipped amax).  Errors:
 * CAL_ERR_INVALID (no updated weight, layer done), CAL_ERR_UNSUPPORTED
 * (not INT4 in blocks of 128, n against the shape), CAL_ERR_NOMEM. */
enum cal_status cal_exporter_set_block_amax(struct cal_exporter *ex, size_t mod,
					    const float *amax, uint64_t n,
					    struct cal_error *err);

/* AWQ (docs/awq.md "Export"): layer `layer`'s input (post_attention 0) or
 * post-attention norm weight is written from w (bf16, numel elements,
 * copied) instead of the source's.  Errors: CAL_ERR_INVALID (no such norm,
 * layer done), CAL_ERR_UNSUPPORTED (not a bf16 source of numel elements),
 * CAL_ERR_NOMEM. */
enum cal_status cal_exporter_set_norm(struct cal_exporter *ex, int32_t layer, int post_attention,
				      const uint16_t *w, uint64_t numel, struct cal_error *err);

/* The calibration algorithm's own report (GPTQ: per linear, the layers
 * that fell back; docs/gptq.md), written under "gptq" in the report;
 * referenced, not stolen. */
void cal_exporter_set_algorithm_report(struct cal_exporter *ex, json_t *report);

/* Wall-clock seconds to add to the report under phase `name` (e.g.
 * "calibrate"); the exporter times its own phases itself. */
void cal_exporter_add_phase(struct cal_exporter *ex, const char *name, double seconds);

/* One point of the calibration's throughput for the report
 * ("calibration_timeline": seconds since the forward pass started, the
 * layer just done, token-layers per second so far; the report page plots
 * it, docs/eval.md). */
void cal_exporter_add_timeline(struct cal_exporter *ex, double t, int32_t layer,
			       double tokens_per_s);

/* The calibration's expert parallelism for the report ("ranks": {ranks,
 * comm_bytes, comm_bytes_per_layer}, docs/expert_parallel.md); value is
 * stolen. */
struct json_t;
void cal_exporter_set_ranks(struct cal_exporter *ex, struct json_t *value);

/* Bytes of tensor data written so far, and in total (progress). */
uint64_t cal_exporter_bytes_written(const struct cal_exporter *ex);
uint64_t cal_exporter_bytes_total(const struct cal_exporter *ex);

/*
 * Writes the model-level tensors and every side file, then publishes.
 * Every layer must have been exported.  On success *ret_report (if not
 * NULL) receives calibd_report.json's text (caller frees).  Errors as
 * above plus CAL_ERR_INVALID (a layer not exported).
 */
enum cal_status cal_exporter_finish(struct cal_exporter *ex, const struct cal_stats *stats,
				    char **ret_report, struct cal_error *err);

/* Removes the temporary directory unless published; NULL is a no-op. */
void cal_exporter_free(struct cal_exporter *ex);

/*
 * Expert parallelism (opts.rank, opts.world).  The leader's output, for
 * its parts: the temporary directory's name (relative to out_dir's parent)
 * and the layout hash (engine/st/st_writer.h).  A part attaches to them
 * before its first layer (errors: CAL_ERR_INTERNAL when it planned another
 * layout, CAL_ERR_NOTFOUND, CAL_ERR_IO), then takes its layers through
 * cal_exporter_layer() like the leader, and after the last one
 * cal_exporter_part_done() waits for its writes, fsyncs them and returns
 * its report for the leader (*ret, caller frees: its linears' weight amax
 * and SQNR sums, the tensors it wrote, its counters).  The leader takes
 * each part's report with cal_exporter_add_part() (copied) before
 * cal_exporter_finish(), which refuses to publish unless every part
 * reported and the reports fit its plan.
 */
const char *cal_exporter_tmp_name(const struct cal_exporter *ex);
uint64_t cal_exporter_layout_hash(const struct cal_exporter *ex);
enum cal_status cal_exporter_attach(struct cal_exporter *ex, const char *tmp_name,
				    uint64_t layout_hash, struct cal_error *err);
enum cal_status cal_exporter_part_done(struct cal_exporter *ex, void **ret, size_t *ret_bytes,
				       struct cal_error *err);
enum cal_status cal_exporter_add_part(struct cal_exporter *ex, unsigned rank, const void *data,
				      size_t n, struct cal_error *err);

/*
 * Whole export from a finished statistics table: opens model_dir (config,
 * checkpoint, catalog), loads the recipe, builds the plan, exports every
 * layer and finishes.  `recipe` is a built-in name or a path.
 */
enum cal_status cal_export_run(const char *recipe, const struct cal_stats *stats,
			       struct cal_backend *be, const struct cal_export_opts *opts,
			       char **ret_report, struct cal_error *err);

/*
 * modelopt's exclude_modules summarisation (docs/export.md "exclude_modules",
 * quant_utils._prefix_wildcard_summarize_exclude_modules), exactly: for
 * each unquantized name in order, the first dot-boundary candidate
 * ["p*"] or ["p", "p.*"] (then [name]) none of whose elements is a prefix
 * wildcard of a quantized name; a candidate already fully in the result adds
 * nothing; a pair is emitted as "p.*" only.  *ret is the sorted result
 * (strcmp order = Python's for ASCII/UTF-8), *ret_n its length; free with
 * cal_exclude_free().  Errors: CAL_ERR_NOMEM.
 */
enum cal_status cal_exclude_summarize(const char *const *unquantized, size_t n_unq,
				      const char *const *quantized, size_t n_q, char ***ret,
				      size_t *ret_n, struct cal_error *err);
void cal_exclude_free(char **list, size_t n);

/*
 * MTP (multi-token-prediction) layers as hf_ptq detects them (docs/export.md
 * "MTP layers"): a checkpoint tensor is an MTP tensor when its name contains
 * "mtp" or it lies in an inlined MTP layer model.layers.<i>.* with
 * num_layers <= i < num_layers + n_nextn (config num_nextn_predict_layers).
 * MTP tensors are copied unquantized and left out of the summary above;
 * instead "<prefix>*" is appended to exclude_modules for every prefix of
 * cal_mtp_prefixes(): of each separately stored MTP tensor its first name
 * component (unless "model") and its first "...layers.<digits>" prefix, plus
 * every inlined layer "model.layers.<i>" when any MTP tensor exists.  *ret
 * is sorted (free with cal_exclude_free()).  Errors: CAL_ERR_NOMEM.
 */
int cal_is_mtp_tensor(const char *name, int64_t num_layers, int64_t n_nextn);
enum cal_status cal_mtp_prefixes(const char *const *names, size_t n, int64_t num_layers,
				 int64_t n_nextn, char ***ret, size_t *ret_n,
				 struct cal_error *err);

/*
 * Verifies an exported checkpoint the way a loader reads it (verify.c):
 * tensor names, dtypes and shapes per format, every expected scale present,
 * finite and positive, gate/up weight_scale_2 equal per expert, every
 * quantized expert projection with an input_scale (W4A4 / FP8),
 * hf_quant_config.json and config.json consistent with each other and with
 * the tensors.  With source_dir, every quantized weight is dequantized (op
 * table of `be`) and its SQNR against the source reported.  *ret_report
 * (caller frees) is a JSON object {"ok":bool,"violations":[...],
 * "weights":[{"name","format","sqnr_db"}...],...}.  Returns CAL_OK when the
 * checkpoint is valid, CAL_ERR_FORMAT when violations were found (the first
 * is in err, naming the tensor), other errors when it could not be read.
 */
enum cal_status cal_export_verify(const char *out_dir, const char *source_dir,
				  struct cal_backend *be, char **ret_report,
				  struct cal_error *err);

#endif
