/*
 * export_internal.h — the exporter's private structures, shared by
 * export.c (tensor plan, per-layer quantization), export_files.c (config
 * files, report) and verify.c (format helpers).
 */
#ifndef CAL_EXPORT_INTERNAL_H
#define CAL_EXPORT_INTERNAL_H

#include <jansson.h>
#include <pthread.h>

#include "engine/export/export.h"
#include "engine/st/st_writer.h"

/* One output Linear (a weight [out, in] and its scales). */
struct xlin {
	char *name;                     /* output module name */
	int32_t layer;                  /* -1: model-level */
	long mod;                       /* plan module, -1 none */
	int64_t expert;                 /* routed expert index, else -1 */
	enum cal_proj proj;
	const struct cal_st_tensor *w;  /* non-expert: the source weight */
	struct cal_expert_slice sl;     /* routed expert: where it lives */
	int64_t out, in;
	enum cal_dtype dtype;           /* source dtype (bf16 for FP8 block sources) */
	const struct cal_st_tensor *si; /* FP8 block source: weight_scale_inv (the
					 * weight is decoded to bf16 when gathered) */
	const struct cal_plan_q *wq;    /* enabled weight quantizer or NULL */
	const struct cal_plan_q *iq;    /* enabled input quantizer or NULL */
	enum cal_qfmt fmt;              /* CAL_QFMT_NONE: written unquantized */
	int group;                      /* sibling group within the layer, 0 none */
	float wamax, iamax;
	int has_input_scale;            /* an input_scale tensor is written */
	float scale;                    /* weight_scale_2 (NVFP4) / weight_scale (FP8) */
	float iscale;                   /* input_scale */
	size_t qidx;                    /* pipeline: index among the layer's quantized */
	uint64_t woff, ooff, soff;      /* pipeline: offsets in the layer buffers */
	/* gpt_oss (export_bmm in export.c, docs/gpt_oss.md): every expert of one
	 * projection as modelopt's single 3-D BMM weight.  Here [E * bmm_rows,
	 * in] (out = E * bmm_rows, rows in the checkpoint's order, gate/up
	 * interleaved); written [E, in, bmm_rows] under "<name>", its scales
	 * under "<name>_weight_scale" etc.  sl: expert 0's slice (tensor,
	 * MXFP4 scales). */
	int bmm;
	int64_t bmm_rows;
	/* GPTQ (docs/gptq.md): the updated bf16 weight the layer is quantized
	 * from (owned; freed once quantized); the scales still come from the
	 * source weight */
	uint16_t *gw;
	/* AWQ (docs/awq.md "Export"): a pre_quant_scale tensor is written
	 * (awq_pqs), from pqs (bf16 [in], owned, set with the folded weight;
	 * gw is then also the source of the block amax) */
	int awq_pqs;
	uint16_t *pqs;
	/* awq_full / awq_clip: the INT4 block amax gw is quantized with, or
	 * NVFP4's global amax [1] (owned, set after gw; freed with it), or
	 * NULL: gw's own */
	float *bamax;
};

/* A tensor copied byte for byte (maybe renamed). */
struct xcopy {
	char *name;
	const struct cal_st_tensor *t;
	int32_t layer;
	int to_bf16;                    /* F32 written as bf16 (gpt_oss norms, as modelopt) */
	int to_f32;                     /* written as F32 (DeepSeek's router weight, which
					 * transformers keeps in fp32) */
	int role;                       /* enum cal_role of the source tensor */
	uint16_t *data;                 /* owned: bytes written instead of t's (an AWQ-fused
					 * norm, same dtype and shape) */
};

/* KV-cache scales of one attention module. */
struct xkv {
	char *attn;                     /* output attention module name */
	int32_t layer;
	const struct cal_plan_q *k, *v;
	float kscale, vscale;           /* from the statistics (cal_exporter_layer) */
	const uint16_t *bias[2];        /* affine: K, V bias bf16 [H_kv * head_dim], owned by
					 * the statistics (cal_exporter_layer) */
};

/* Per-module quantization config of hf_quant_config (plan order). */
struct xmodcfg {
	char *name;                     /* output (hub) module name */
	int quantized;
	char *algo;                     /* quant_algo string, NULL when not quantized */
	int group_size;                 /* 0: none */
	int awq_keys;                   /* has_zero_point/pre_quant_scale keys */
};

/* ---- the export pipeline (pipeline.c) ---- */

#define XQUEUE 8                        /* layers queued + the one in work */
#define XSLOTS 4                        /* output ring slots */
#define XDBUF 9                         /* back-end scratch buffers */
#define CAL_XSTATIC (-2)                /* stage "layer": model-level tensors
					   that need no statistics */

/* One tensor for the writer thread. */
struct xitem {
	char *name;                     /* full tensor name (owned) */
	const void *data;               /* in the slot, the source mapping, or owned */
	uint64_t n;
	void *owned;                    /* freed once written (gpt_oss transposes) */
};

struct xslot {
	unsigned char *buf;             /* pinned, slot_bytes */
	uint64_t used;
	struct xitem *items;
	size_t n_items, cap_items;
	int state;                      /* free / filling / full (under mu) */
};

struct xpipe {
	int inited, q_started, w_started;
	pthread_t qt, wt;
	pthread_mutex_t mu;
	pthread_cond_t cv;              /* every state change broadcasts */
	int32_t queue[XQUEUE];
	size_t q_head, q_n;
	int closing, abort, q_done;
	int static_queued;              /* the CAL_XSTATIC job was queued */
	enum cal_status st;             /* first error of any thread */
	struct cal_error err;
	struct xslot slot[XSLOTS];
	int fill;                       /* slot being filled by the quantize stage, -1 none */
	unsigned next_fill;
	uint64_t slot_bytes, stage_bytes;
	void *stage[2];                 /* pinned staging for uploads */
	struct cal_backend *cpu;        /* threads for gathering the source */
	struct cal_backend *be;         /* the stage's own back end (kind and device
					   of the exporter's), created at the first layer */
	uint64_t written;               /* tensor bytes written (atomic) */
	int32_t fail_layer;             /* test fault injection: layer + 2, 0 off */
	double t_quant, t_write, t_wait, t_drain;
	double *sq;                     /* [2 n_lin]: each quantized linear's SQNR sums
					   (signal, noise), for the report (finish) */
	uint64_t n_quantized;           /* linears this exporter quantized */
};

/* Expert parallelism (parts.c, docs/expert_parallel.md "Export"): this
 * exporter is rank `rank` of `world` and quantizes and writes the routed
 * experts [lo, hi); rank 0 (the leader) also everything else and publishes. */
struct xparts {
	unsigned rank, world;           /* world 1: one rank */
	int64_t lo, hi;
	/* leader: what each rank reported (cal_exporter_add_part), [world] */
	void **res;
	size_t *res_n;
};

struct cal_exporter {
	const struct cal_model_desc *d;
	const struct cal_checkpoint *ck;
	const struct cal_catalog *cat;
	const struct cal_plan *plan;
	struct cal_backend *be;
	struct cal_export_opts opts;
	char *model_dir, *out_dir, *recipe_name;
	const char *cprefix;            /* catalog (checkpoint) prefix */
	int mse_sweep;                  /* static NVFP4 weights get the MSE FP8 sweep */

	struct xlin *lin;
	size_t n_lin, cap_lin;
	struct xcopy *cp;
	size_t n_cp, cap_cp;
	struct xkv *kv;
	size_t n_kv, cap_kv;
	struct xmodcfg *mc;
	size_t n_mc, cap_mc;
	char **ignored_mods;            /* unquantized names from ignored tensors */
	size_t n_ignored_mods;

	struct cal_st_writer *w;
	uint64_t bytes_total;
	unsigned char *layer_done;      /* num_layers flags */
	int dead, published;

	/* scratch: host and back-end buffers (owned by the quantize stage) */
	void *hbuf[4];
	size_t hcap[4];
	void *dbuf[XDBUF];
	size_t dcap[XDBUF];
	struct xpipe pipe;
	struct xparts xp;

	/* report */
	json_t *weights;                /* array of {name, layer, format, amax, sqnr_db} */
	json_t *fallbacks;              /* array */
	json_t *phases;                 /* object name -> seconds */
	json_t *timeline;               /* [{t, layer, tokens_per_s}] (NULL: none given) */
	json_t *ranks;                  /* expert parallelism (NULL: one rank) */
	json_t *algorithm;              /* the calibration algorithm's report (GPTQ), or NULL */
	double t_layers;
	double sqnr_min, sqnr_sum;
	size_t sqnr_n;
};

/* "NVFP4", "W4A16_NVFP4", ... for a module's weight/input formats; sets
 * *group_size (0 none) and *awq (W4A16_AWQ keys). */
const char *cal_export_algo(enum cal_qfmt w, int input_on, int block, int *group_size,
			    int *awq);

/* Builds hf_quant_config.json's object (new reference) and sets
 * *ret_exclude to its exclude list (borrowed from the object) or NULL. */
enum cal_status cal_export_hf_quant_config(struct cal_exporter *ex, json_t **ret,
					   struct cal_error *err);
/* quantization_config of config.json from the hf_quant_config object. */
json_t *cal_export_hf_to_config(json_t *hfq);
/* Writes every side file (configs, tokenizer, report) into the writer. */
enum cal_status cal_export_side_files(struct cal_exporter *ex, const struct cal_stats *stats,
				      char **ret_report, struct cal_error *err);
/* Sibling unification (docs/export.md, "Numerics") of layer L's non-expert groups. */
void cal_export_unify_groups(struct cal_exporter *ex, int32_t L);
/* A scale that must be finite and > 0, else CAL_ERR_NUMERIC naming it. */
enum cal_status cal_export_check_scale(const char *name, const char *what, float v,
				       struct cal_error *err);

/* The pipeline (pipeline.c): init at open; push queues a prepared layer
 * (starting the threads the first time); check returns a stage's error;
 * drain waits for every queued layer to be written and joins the threads;
 * stage_layer quantizes and writes one layer on the calling thread (the
 * quantize thread's work; CAL_XSTATIC: the model-level tensors without
 * statistics; -1: the quantized model-level linears, from finish); free
 * stops everything. */
enum cal_status cal_export_pipe_init(struct cal_exporter *ex, struct cal_error *err);
enum cal_status cal_export_pipe_push(struct cal_exporter *ex, int32_t L, struct cal_error *err);
enum cal_status cal_export_pipe_check(struct cal_exporter *ex, struct cal_error *err);
enum cal_status cal_export_pipe_drain(struct cal_exporter *ex, struct cal_error *err);
enum cal_status cal_export_stage_layer(struct cal_exporter *ex, int32_t L, struct cal_error *err);
uint64_t cal_export_pipe_written(const struct cal_exporter *ex);
void cal_export_pipe_free(struct cal_exporter *ex);
/* The report's weight_sqnr entries of every quantized linear, in layer
 * order (model-level last), from the sums kept by the stages (finish). */
enum cal_status cal_export_pipe_report(struct cal_exporter *ex, struct cal_error *err);

/* Expert parallelism (parts.c): init sets the expert range from opts (at
 * open); mine says whether this exporter quantizes and writes x; merge
 * (leader, finish, after the drain) takes every other rank's report: its
 * linears' amax and SQNR sums, its tensors as written, its counters into
 * "ranks"; free releases the reports. */
enum cal_status cal_export_parts_init(struct cal_exporter *ex, struct cal_error *err);
static inline int cal_export_mine(const struct cal_exporter *ex, const struct xlin *x)
{
	return x->expert < 0 ? ex->xp.rank == 0 : x->expert >= ex->xp.lo && x->expert < ex->xp.hi;
}
enum cal_status cal_export_parts_merge(struct cal_exporter *ex, struct cal_error *err);
void cal_export_parts_free(struct cal_exporter *ex);

/* gpt_oss BMM experts (export.c): the source of one projection as bf16
 * [E * R, C] (sl: expert 0's slice; MXFP4 decoded as HF does), and the
 * per-expert transpose [E, R, cols] -> [E, cols, R] of es-byte elements
 * (its own inverse with R and cols swapped). */
void cal_export_bmm_source(const struct cal_expert_slice *sl, uint64_t E, uint64_t R, uint64_t C,
			   uint16_t *dst);
void cal_export_bmm_transpose(void *dst, const void *src, uint64_t E, uint64_t R, uint64_t cols,
			      uint64_t es);
/* gpt_oss BMM experts: "<name>" for the weight, "<name>_<suffix>" for the
 * rest (caller frees). */
char *cal_export_bmm_name(const struct xlin *x, const char *suffix);

/* Source side files copied verbatim when present. */
extern const char *const cal_export_copy_files[];

#endif
