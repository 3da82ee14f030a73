/*
 * calib.h — the calibration engine: the model's own forward pass, layer by
 * layer, with observers (docs/architecture.md "The path of a job",
 * docs/calibration.md).
 *
 * A calibration run embeds every calibration token, then for each decoder
 * layer in order (the next layer's weights uploading while the current one
 * computes, docs/calibration.md "Memory and streaming") brings that layer's
 * weights into the canonical in-memory
 * layout (routed experts as W13 [E, 2I, H] gate rows then up rows, and
 * W2 [E, H, I], whatever the on-disk layout), runs all tokens through it in
 * micro-batches of whole sequences, and records, for every quantizer the
 * plan enables:
 *   - input quantizers: running max|x| of the module's input (q/k/v share
 *     one input, recorded once);
 *   - k_bmm / v_bmm: max|K| after k_proj (+bias), k_norm and RoPE, and
 *     max|V| after v_proj (+bias), before any GQA repeat;
 *   - routed experts: per expert the max|x| of the rows routed to it (gate_up
 *     and down_proj inputs) and the token count; the shared fused-experts
 *     input quantizer gets the layer maximum, as modelopt;
 *   - weight quantizers: max|W| from the weights (never from routing).
 * After the layer the statistics of that layer are final and the
 * on_layer callback runs (export quantizes and writes the layer while the
 * next one computes).  A NaN or Inf in any observed activation fails the
 * run with CAL_ERR_NUMERIC naming the layer and module.
 *
 * Sequences are packed without padding (positions and attention restart per
 * sequence).  opts.pad_like_modelopt reproduces modelopt's batches instead:
 * every sequence left-padded with the EOS id to the longest one, positions
 * 0..S-1 over the padded row, pads masked as attention keys (a pad query
 * sees nothing and outputs zeros, as SDPA's fully-masked rows) but flowing
 * through every linear, router and expert and counted in every amax
 * (docs/calibration.md).
 *
 * Ownership: cal_calib_open() returns an engine that owns the checkpoint
 * mapping, the catalog, the back end and every buffer; the plan (and its
 * model description) and tokens passed in are borrowed and must outlive it.
 * cal_calib_open_src() borrows the checkpoint, catalog and back end of a
 * job instead (engine/job.h, the way quantize and calibrate run).
 */
#ifndef CAL_CALIB_H
#define CAL_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/status.h"
#include "engine/model/catalog.h"
#include "engine/model/model.h"
#include "engine/recipe/plan.h"
#include "kernels/backend.h"
#include "kernels/ops.h"

/* Calibration token sequences: sequence i is ids[off[i] .. off[i+1]). */
struct cal_calib_tokens {
	size_t n;
	size_t *off;           /* n + 1 */
	uint32_t *ids;
	size_t n_tokens;
};

/* Bounds on client-controlled token files. */
#define CAL_CALIB_MAX_SEQS ((size_t)1 << 24)
#define CAL_CALIB_MAX_SEQ_LEN ((size_t)1 << 20)
#define CAL_CALIB_MAX_TOKENS ((size_t)1 << 31)
#define CAL_CALIB_MAX_TOKEN_FILE ((size_t)4 << 30)
/* Most ranks of one job (expert parallelism, docs/expert_parallel.md). */
#define CAL_CALIB_MAX_RANKS 64

/*
 * Reads a token file: JSONL lines {"input_ids": [...]} or one JSON object
 * {"input_ids": [[...], ...]}.  Every id must be < vocab (vocab 0: no
 * check); empty sequences are refused.  *ret is owned by the caller
 * (cal_calib_tokens_free).  Errors: CAL_ERR_NOTFOUND / CAL_ERR_IO,
 * CAL_ERR_FORMAT (line or sequence named), CAL_ERR_RANGE (bounds above).
 */
enum cal_status cal_calib_tokens_load(const char *path, uint64_t vocab,
				      struct cal_calib_tokens **ret, struct cal_error *err);
/* Same from memory (`name` for messages). */
enum cal_status cal_calib_tokens_parse(const char *name, const char *text, size_t len,
				       uint64_t vocab, struct cal_calib_tokens **ret,
				       struct cal_error *err);
void cal_calib_tokens_free(struct cal_calib_tokens *t);

/* Sequence s's fingerprint: 64-bit FNV-1a over its token ids (uint32,
 * little-endian).  Two sequences with equal ids have equal fingerprints;
 * calibd eval compares them with the calibration set's (docs/eval.md). */
uint64_t cal_calib_tokens_hash(const struct cal_calib_tokens *t, size_t s);
/* Every sequence's fingerprint in order, as a new array of sequences
 * x 16 lowercase hex digits (NULL when out of memory). */
char *cal_calib_tokens_hashes(const struct cal_calib_tokens *t);

struct cal_calib;

/* Called when layer `layer` is done; its statistics are final.  Returning
 * an error stops the run (the error is passed through). */
typedef enum cal_status (*cal_calib_layer_fn)(void *ctx, const struct cal_calib *c,
					      int32_t layer, struct cal_error *err);

/* Tests and parity: the residual stream after layer `layer` for every
 * token, bf16 [n_tokens, hidden] in packed (or padded) token order, host
 * memory valid during the call.  With opts.hidden_feedback the callback may
 * overwrite it and the next layer starts from what it wrote (parity tests
 * feed the reference's hidden states: "teacher forcing", so each layer is
 * compared from the same input). */
typedef enum cal_status (*cal_calib_hidden_fn)(void *ctx, int32_t layer, uint16_t *hidden,
					       uint64_t n_tokens, uint64_t hidden_size,
					       struct cal_error *err);

/* Progress: layer done (0-based) of n_layers, and the throughput so far in
 * token-layers per second (tokens x layers done / elapsed seconds). */
typedef void (*cal_calib_progress_fn)(void *ctx, int32_t layer, int32_t n_layers,
				      double tokens_per_s);

/*
 * What every rank of a job over several ranks runs besides the calibration
 * (the export's per-rank stage, docs/expert_parallel.md "Export"), each on
 * the rank's own thread (c: that rank's engine).  start runs once the
 * rank's endpoint is up, before the first layer; layer after each layer's
 * statistics are final on every rank (before on_layer); end after the last
 * layer.  start and end may call collectives on comm (every rank calls
 * them, so every rank must make the same calls).  An error fails the rank
 * (and aborts the world).  Not called on a one-rank job.
 */
struct cal_comm;
struct cal_calib_rank_hooks {
	enum cal_status (*start)(void *ctx, struct cal_calib *c, struct cal_comm *comm,
				 struct cal_error *err);
	enum cal_status (*layer)(void *ctx, struct cal_calib *c, int32_t layer,
				 struct cal_error *err);
	enum cal_status (*end)(void *ctx, struct cal_calib *c, struct cal_comm *comm,
			       struct cal_error *err);
	void *ctx;
};

struct cal_calib_opts {
	enum cal_backend_kind backend;     /* CPU (default) or CUDA */
	int cuda_device;
	unsigned cpu_threads;              /* 0: all online CPUs */
	uint64_t max_mem;                  /* cap on engine buffers of the back end, bytes
					    * (0: none); enforced, sizes micro-batches, and
					    * on the CPU makes the weights stream like on a GPU */
	uint64_t micro_batch_tokens;       /* 0: from the free device memory and max_mem
					    * (CPU without max_mem: 4096) */
	int pad_like_modelopt;
	int64_t pad_id;                    /* < 0: EOS of generation_config.json / config.json */
	int per_expert_input_amax;         /* keep per-expert input amax (JSON) */
	double moe_calib_experts_ratio;    /* 0: off; (0, 1]: route to max(k, round(r E)) */
	enum cal_combine_mode combine;     /* default CAL_COMBINE_EAGER (modelopt forces eager) */
	enum cal_div_mode div;             /* GPTQ's fake quantizers: as the export's --div */
	cal_calib_layer_fn on_layer;
	cal_calib_hidden_fn on_hidden;
	int hidden_feedback;               /* on_hidden's writes are the next layer's input */
	cal_calib_progress_fn progress;
	void *ctx;                         /* passed to the callbacks */
	int profile;                       /* sync at phase boundaries to time each phase
					    * (cal_calib_perf; slows the run a little) */
	/* expert parallelism (docs/expert_parallel.md): ranks run by this
	 * process, one thread and one back end each (0, 1: one rank); CUDA:
	 * rank i on cuda_devices[i] (NULL: cuda_device + i); CPU: cpu_threads
	 * shared out.  rank_first / rank_world: the global layout (0: this
	 * process alone), rendezvous: where processes meet (kernels/comm.h). */
	unsigned ranks;
	unsigned rank_first, rank_world;
	const char *rendezvous;
	const int *cuda_devices;
	unsigned comm_timeout_ms;          /* deadline of each collective (0: comm.h's) */
	const struct cal_calib_rank_hooks *rank_hooks; /* every rank's (above), or NULL */
};

/*
 * What the calibration engine runs: CAL_OK, or CAL_ERR_UNSUPPORTED (or
 * CAL_ERR_FORMAT for inconsistent dimensions) naming the model type and
 * the feature it does not run yet (GPT-OSS sinks and experts, MXFP4
 * source checkpoints, MLA with attention_bias, ...).  Only the description is
 * read: no file, no back end.  The job's capability query (engine/job.h
 * cal_job_check) asks this.
 */
enum cal_status cal_calib_check_model(const struct cal_model_desc *d, struct cal_error *err);

/* For a plan whose recipe's algorithm is gptq: CAL_OK, or
 * CAL_ERR_UNSUPPORTED naming what the engine's GPTQ does not run (the
 * model's attention kind, Gated DeltaNet layers, quantized KV cache, ...;
 * docs/gptq.md).  CAL_OK for every other algorithm. */
enum cal_status cal_calib_check_gptq(const struct cal_plan *plan, struct cal_error *err);
/* Likewise for awq_lite (docs/awq.md). */
enum cal_status cal_calib_check_awq(const struct cal_plan *plan, struct cal_error *err);
/* Likewise for smoothquant (docs/smoothquant.md). */
enum cal_status cal_calib_check_sq(const struct cal_plan *plan, struct cal_error *err);

/*
 * Opens the checkpoint in model_dir for calibration with `plan` (which must
 * have been built for the same model description; its model is used).
 * Refuses what cal_calib_check_model() refuses.  The engine opens its own
 * checkpoint mapping, catalog and back end (opts->backend, cuda_device,
 * cpu_threads).  *ret is owned by the caller (cal_calib_free).
 */
enum cal_status cal_calib_open(const char *model_dir, const struct cal_plan *plan,
			       const struct cal_calib_opts *opts, struct cal_calib **ret,
			       struct cal_error *err);

/* What cal_calib_open_src() borrows: each of ck, cat, be that is not NULL
 * is used as it is (and must outlive the engine; opts->backend /
 * cuda_device / cpu_threads are then ignored), the others are opened as by
 * cal_calib_open(). */
struct cal_calib_src {
	const char *model_dir;             /* for generation_config.json (pad id) */
	const struct cal_checkpoint *ck;
	const struct cal_catalog *cat;
	struct cal_backend *be;
};
enum cal_status cal_calib_open_src(const struct cal_calib_src *src, const struct cal_plan *plan,
				   const struct cal_calib_opts *opts, struct cal_calib **ret,
				   struct cal_error *err);

/* Runs the whole calibration over `tokens` (ids checked against the vocab).
 * Errors: CAL_ERR_NUMERIC (non-finite activation: layer and module named),
 * CAL_ERR_NOMEM / CAL_ERR_DEVICE, or a callback's error. */
enum cal_status cal_calib_run(struct cal_calib *c, const struct cal_calib_tokens *tokens,
			      struct cal_error *err);

void cal_calib_free(struct cal_calib *c);

/* ---- statistics (valid for layers already finished) -------------------- */

/* The amax export uses for plan quantizer `q` (index into plan->q):
 * 1 and *ret when known (calibrated, from weights, or a constant), 0 when
 * the quantizer is disabled, needs no amax, or saw no data. */
int cal_calib_q_amax(const struct cal_calib *c, size_t q, float *ret);
/* The calibrated bias of affine KV quantizer q (plan index): bf16
 * [KV heads x head_dim] (*ret_n values) owned by the engine, or NULL (not
 * affine, or its layer is not done).  docs/numerics.md "Affine KV cache". */
const uint16_t *cal_calib_q_bias(const struct cal_calib *c, size_t q, uint64_t *ret_n);

/* Per-expert statistics of MoE layer `layer` (NULL for dense layers):
 * arrays of num_experts entries owned by the engine. gu/down amax are
 * negative for experts that received no token. */
struct cal_calib_moe_stats {
	int64_t n_experts;
	const uint64_t *tokens;        /* (token, slot) pairs routed to each expert */
	const float *gate_up_amax;     /* max|x| of the rows routed to e */
	const float *down_amax;        /* max|act| of those rows */
};
const struct cal_calib_moe_stats *cal_calib_moe(const struct cal_calib *c, int32_t layer);

/* Where the time and memory of the last cal_calib_run() went.  The
 * per-phase times are measured with opts.profile only (else 0). */
struct cal_calib_perf {
	double total_s;          /* the whole cal_calib_run() */
	double embed_s;          /* token layout, upload and embedding */
	double stage_s;          /* host staging of weights (parallel to compute) */
	double stage_wait_s;     /* compute waiting for the staging (not hidden) */
	double upload_s, attn_s, router_s, experts_s, dense_s, observers_s, readback_s,
	       hidden_io_s, other_s; /* opts.profile */
	double linattn_s;        /* opts.profile: Gated DeltaNet layers' token mixer */
	uint64_t peak_mem;       /* most back-end memory held at once, bytes */
	uint64_t mem_budget;     /* what micro-batches were sized for, bytes */
	uint64_t max_layer_bytes;  /* largest layer's weights (arena size) */
	uint64_t model_weight_bytes; /* all decoder layers' weights */
	uint64_t mb_tokens;      /* micro-batch size, tokens */
	size_t n_mb;             /* micro-batches per layer */
	int hidden_on_host;      /* hidden states kept in pinned host memory */
	int streamed;            /* weights copied layer by layer into two arenas */
	/* expert parallelism (docs/expert_parallel.md) */
	unsigned ranks;          /* global ranks of the run (1: none) */
	uint64_t comm_bytes;     /* bytes this process's ranks sent to other ranks */
	const uint64_t *comm_layer_bytes; /* [n_layers + 1] of them per layer (last: the
					   * final norm); owned by the engine, NULL with
					   * one rank */
	int32_t n_layers;
};
void cal_calib_perf(const struct cal_calib *c, struct cal_calib_perf *ret);

/* GPTQ, AWQ-lite, SmoothQuant (docs/gptq.md, docs/awq.md,
 * docs/smoothquant.md), valid during the layer's on_layer callback: the
 * bf16 weight [out, in] of plan module `mod` the algorithm made (GPTQ's
 * update, AWQ's and SmoothQuant's fold; *numel elements) and in *pqs its
 * bf16 pre_quant_scale [in] to export, or NULL (GPTQ; AWQ's scale fused
 * into a norm or the previous linear); NULL when the algorithm did not
 * rewrite the module.  _awq_norm: the layer's fused input (post_attention
 * 0) or post-attention norm weight, bf16, NULL when not fused. */
const uint16_t *cal_calib_lin_weight(const struct cal_calib *c, size_t mod, uint64_t *numel,
				     const uint16_t **pqs);
const uint16_t *cal_calib_awq_norm(const struct cal_calib *c, int post_attention,
				   uint64_t *numel);
/* awq_full / awq_clip (docs/awq.md "awq_full", "awq_clip"), valid as
 * _weight: module `mod`'s clipped INT4 block amax [out * in / 128] or
 * NVFP4 global amax [1] (*n), the exported one; NULL when not clipped (not
 * awq_full / awq_clip, no tokens, W4A8, or re-folded by its group's shared
 * pre_quant_scale or the next linear's, whose amax is re-taken). */
const float *cal_calib_awq_clip(const struct cal_calib *c, size_t mod, uint64_t *n);

/* Number of tokens the run processed (pads included with pad_like_modelopt). */
uint64_t cal_calib_tokens_processed(const struct cal_calib *c);

/* One line describing the back end the engine runs on (owned by c). */
const char *cal_calib_backend_describe(const struct cal_calib *c);

/* Model description and catalog of the opened checkpoint. */
const struct cal_model_desc *cal_calib_model(const struct cal_calib *c);

/*
 * The statistics as JSON text (heap, owned by the caller; NULL on
 * allocation failure): "quantizers" (every enabled quantizer with the amax
 * export will use), "input_amax" / "tokens_seen" / "kv_amax" keyed like
 * tools/hf_reference.py (fused experts per expert as
 * "<...>.experts.<e>.gate_up_proj" / ".down_proj"), "moe" per MoE layer
 * (per-expert amax and token counts; with per_expert_input_amax the filled
 * experts are listed), and the run's settings.
 */
char *cal_calib_stats_json(const struct cal_calib *c);

/* The same as a JSON object (new reference; NULL on allocation failure),
 * and the text cal_calib_stats_json() makes of it (heap, caller frees). */
json_t *cal_calib_stats(const struct cal_calib *c);
char *cal_calib_stats_dump(const json_t *stats);

/* Expert parallelism of the last run (new reference): {"ranks": R,
 * "comm_bytes": sent by this process's ranks, "comm_bytes_per_layer":
 * [per decoder layer], "comm_bytes_final_norm"}; NULL with one rank. */
json_t *cal_calib_ranks_json(const struct cal_calib *c);

/* This engine's global rank; *ret_world (may be NULL): the job's rank count. */
unsigned cal_calib_rank(const struct cal_calib *c, unsigned *ret_world);

#endif
