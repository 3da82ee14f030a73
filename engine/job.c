/*
 * job.c — the engine's entry point (engine/job.h, docs/engine.md): opening a
 * job once, the capability query, the calibration tokens, and the stages
 * that borrow from the job (calibration engine, export, verify).
 */
#include "engine/job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "engine/eval.h"
#include "engine/export/export.h"
#include "engine/tokenizer/dataset.h"
#include "engine/tokenizer/tokenizer.h"

#define DEFAULT_SAMPLES 512
#define DEFAULT_SEQ_LEN 512
#define INLINE_RECIPE "<inline recipe>"

struct cal_job {
	struct cal_job_opts o;
	struct cal_recipe *recipe;
	struct cal_model_desc *d;
	struct cal_plan *plan;
	struct cal_checkpoint *ck;
	struct cal_catalog *cat;
	struct cal_backend *be;
	char device[32];
	double open_s;             /* seconds cal_job_open() took */
};

/* ---- open / close ---------------------------------------------------------- */

static enum cal_status check_opts(const struct cal_job_opts *o, struct cal_error *err)
{
	if (!o->model_dir || !*o->model_dir)
		return cal_error_set(err, CAL_ERR_INVALID, "job: a model directory is required");
	if (!!(o->recipe && *o->recipe) == !!o->recipe_yaml)
		return cal_error_set(err, CAL_ERR_INVALID, "job: give exactly one of a recipe "
				     "name/file and an inline recipe");
	if (!(o->moe_calib_experts_ratio >= 0.0 && o->moe_calib_experts_ratio <= 1.0))
		return cal_error_set(err, CAL_ERR_INVALID, "job: moe_calib_experts_ratio %g not in "
				     "[0, 1]", o->moe_calib_experts_ratio);
	if (o->n_datasets && !o->datasets)
		return cal_error_set(err, CAL_ERR_INVALID, "job: %zu datasets without a list",
				     o->n_datasets);
	if (o->has_pad_id && o->pad_id < 0)
		return cal_error_set(err, CAL_ERR_INVALID, "job: pad id %lld is negative",
				     (long long)o->pad_id);
	if (o->devices.kind == CAL_DEVICE_CUDA && (o->devices.n < 1 || o->devices.n > CAL_DEVICES_MAX))
		return cal_error_set(err, CAL_ERR_INVALID, "job: %zu CUDA devices", o->devices.n);
	if (!cal_job_local_ranks(&o->ranks, &o->devices))
		return cal_error_set(err, CAL_ERR_INVALID, "job: %u ranks do not fit the %zu CUDA "
				     "devices (one rank per device)", o->ranks.local, o->devices.n);
	unsigned local = cal_job_local_ranks(&o->ranks, &o->devices);
	unsigned world = o->ranks.world ? o->ranks.world : local;
	if (local > CAL_CALIB_MAX_RANKS || world > CAL_CALIB_MAX_RANKS ||
	    (uint64_t)o->ranks.first + local > world)
		return cal_error_set(err, CAL_ERR_INVALID, "job: ranks %u..%u of %u (at most %d)",
				     o->ranks.first, o->ranks.first + local - 1, world,
				     CAL_CALIB_MAX_RANKS);
	if (world > local && !o->ranks.rendezvous)
		return cal_error_set(err, CAL_ERR_INVALID, "job: %u of %u ranks in this process "
				     "need a rendezvous", local, world);
	return CAL_OK;
}

/* The exporter's checks of every planned output tensor against the
 * checkpoint (formats, dtypes, shapes), without a writer or back end. */
static enum cal_status export_check(const struct cal_job *j, struct cal_error *err)
{
	struct cal_exporter *ex = NULL;
	struct cal_export_opts eo = {
		.model_dir = j->o.model_dir,
		.recipe_name = cal_job_recipe_name(j),
		.div = j->o.div,
		.max_shard_bytes = j->o.max_shard_bytes,
		.per_expert_input_amax = j->o.per_expert_input_amax,
		.check_only = 1,
	};
	return cal_exporter_open(j->d, j->ck, j->cat, j->plan, NULL, &eo, &ex, err);
}

/* The plan-size estimate the API bounds (quantizers per layer: four per
 * expert plus the attention and dense ones). */
static uint64_t plan_estimate(const struct cal_model_desc *d)
{
	return (uint64_t)d->num_layers * ((uint64_t)d->num_experts * 4 + 32) + 16;
}

enum cal_backend_kind cal_job_backend_kind(const struct cal_devices *devices, int *ret_ordinal)
{
	*ret_ordinal = 0;
	switch (devices->kind) {
	case CAL_DEVICE_AUTO:
		return cal_backend_cuda_available() ? CAL_BACKEND_CUDA : CAL_BACKEND_CPU;
	case CAL_DEVICE_CUDA:
		/* several GPUs: the engine runs on the first one for now */
		*ret_ordinal = devices->n ? devices->ids[0] : 0;
		return CAL_BACKEND_CUDA;
	case CAL_DEVICE_CPU:
		break;
	}
	return CAL_BACKEND_CPU;
}

enum cal_status cal_job_backend_open(const struct cal_devices *devices, unsigned cpu_threads,
				     struct cal_backend **ret, struct cal_error *err)
{
	struct cal_backend_opts bo = {.cpu_threads = cpu_threads};
	enum cal_backend_kind kind = cal_job_backend_kind(devices, &bo.cuda_device);
	return cal_backend_init(kind, &bo, ret, err);
}

enum cal_status cal_job_open(const struct cal_job_opts *opts, unsigned flags, struct cal_job **ret,
			     enum cal_job_part *ret_part, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	enum cal_job_part part = CAL_JOB_PART_OPTIONS;
	struct cal_job *j = calloc(1, sizeof(*j));
	double t0 = cal_now();

	*ret = NULL;
	if (!j) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "job: out of memory");
		goto fail;
	}
	j->o = *opts;
	CAL_TRY(check_opts(opts, err));

	part = CAL_JOB_PART_RECIPE;
	if (opts->recipe_yaml)
		CAL_TRY(cal_recipe_parse(cal_job_recipe_name(j), opts->recipe_yaml,
					 strlen(opts->recipe_yaml), &opts->recipe_opts, &j->recipe,
					 err));
	else
		CAL_TRY(cal_recipe_load(opts->recipe, &opts->recipe_opts, &j->recipe, err));
	if (opts->kv_cache_qformat)
		CAL_TRY(cal_kv_qformat_apply(j->recipe, opts->kv_cache_qformat, &opts->recipe_opts,
					     err));

	part = CAL_JOB_PART_MODEL;
	CAL_TRY(cal_model_desc_load(opts->model_dir, &j->d, err));
	if (opts->max_quantizers && plan_estimate(j->d) > opts->max_quantizers) {
		st = cal_error_set(err, CAL_ERR_RANGE, "%lld layers x %lld experts is too large to "
				   "plan here (limit %llu quantizers); use `calibd plan`",
				   (long long)j->d->num_layers, (long long)j->d->num_experts,
				   (unsigned long long)opts->max_quantizers);
		goto fail;
	}

	part = CAL_JOB_PART_PLAN;
	CAL_TRY(cal_plan_build(j->d, j->recipe, &j->plan, err));

	part = CAL_JOB_PART_ENGINE;
	CAL_TRY(cal_job_check(j, (flags >> 4) & CAL_JOB_QUANTIZE, err));

	part = CAL_JOB_PART_CHECKPOINT;
	if (!(flags & CAL_JOB_OPEN_NO_CHECKPOINT)) {
		CAL_TRY(cal_checkpoint_open(opts->model_dir, &j->ck, err));
		CAL_TRY(cal_catalog_build(j->d, j->ck, &j->cat, err));
		/* the exporter's checks need the checkpoint's tensors */
		part = CAL_JOB_PART_EXPORT;
		if ((flags >> 4) & CAL_JOB_EXPORT)
			CAL_TRY(export_check(j, err));
	}

	part = CAL_JOB_PART_DEVICE;
	if (!(flags & (CAL_JOB_OPEN_NO_BACKEND | CAL_JOB_OPEN_NO_CHECKPOINT))) {
		CAL_TRY(cal_job_backend_open(&opts->devices, opts->cpu_threads, &j->be, err));
		if (j->be->kind == CAL_BACKEND_CUDA)
			snprintf(j->device, sizeof(j->device), "cuda:%d", j->be->cuda_device);
		else
			snprintf(j->device, sizeof(j->device), "cpu");
	} else {
		cal_devices_format(&opts->devices, j->device, sizeof(j->device));
	}
	j->open_s = cal_now() - t0;
	*ret = j;
	return CAL_OK;
fail:
	if (ret_part)
		*ret_part = part;
	cal_job_close(j);
	return st;
}

void cal_job_close(struct cal_job *j)
{
	if (!j)
		return;
	cal_backend_free(j->be);
	cal_catalog_free(j->cat);
	cal_checkpoint_free(j->ck);
	cal_plan_free(j->plan);
	cal_model_desc_free(j->d);
	cal_recipe_free(j->recipe);
	free(j);
}

/* ---- what the engine runs ----------------------------------------------------- */

enum cal_status cal_job_check(const struct cal_job *j, unsigned ops, struct cal_error *err)
{
	const struct cal_model_desc *d = j->d;
	if (ops & CAL_JOB_CALIBRATE) {
		enum cal_status st = cal_calib_check_model(d, err);
		if (st >= 0)
			st = cal_calib_check_gptq(j->plan, err);
		if (st >= 0)
			st = cal_calib_check_awq(j->plan, err);
		if (st >= 0)
			st = cal_calib_check_sq(j->plan, err);
		enum cal_calib_method m = j->recipe->algo.method;
		if (st >= 0 && (m == CAL_CALIB_AWQ_LITE || m == CAL_CALIB_SMOOTHQUANT) &&
		    cal_job_ranks_world(j) > 1)
			st = cal_error_set(err, CAL_ERR_UNSUPPORTED,
					   "algorithm %s runs on one rank: what it gathers per "
					   "linear is not combined across ranks yet (docs/%s.md); "
					   "run it with one GPU or --ranks 1", j->recipe->algo.name,
					   m == CAL_CALIB_AWQ_LITE ? "awq" : "smoothquant");
		if (st < 0)
			return st;
	}
	if (!(ops & CAL_JOB_EXPORT))
		return CAL_OK;
	enum cal_status st = cal_export_check_source(d, err);
	if (st < 0)
		return st;
	return j->ck ? export_check(j, err) : CAL_OK;
}

/* ---- accessors ----------------------------------------------------------------- */

const struct cal_job_opts *cal_job_options(const struct cal_job *j)
{
	return &j->o;
}

const struct cal_model_desc *cal_job_model(const struct cal_job *j)
{
	return j->d;
}

const struct cal_recipe *cal_job_recipe(const struct cal_job *j)
{
	return j->recipe;
}

const struct cal_plan *cal_job_plan(const struct cal_job *j)
{
	return j->plan;
}

const struct cal_checkpoint *cal_job_checkpoint(const struct cal_job *j)
{
	return j->ck;
}

const struct cal_catalog *cal_job_catalog(const struct cal_job *j)
{
	return j->cat;
}

struct cal_backend *cal_job_backend(struct cal_job *j)
{
	return j->be;
}

const char *cal_job_recipe_name(const struct cal_job *j)
{
	if (!j->o.recipe_yaml)
		return j->o.recipe;
	return j->o.recipe_display ? j->o.recipe_display : INLINE_RECIPE;
}

const char *cal_job_device(const struct cal_job *j)
{
	return j->device;
}

unsigned cal_job_ranks_local(const struct cal_job *j)
{
	return cal_job_local_ranks(&j->o.ranks, &j->o.devices);
}

unsigned cal_job_ranks_world(const struct cal_job *j)
{
	return j->o.ranks.world ? j->o.ranks.world : cal_job_ranks_local(j);
}

double cal_job_open_seconds(const struct cal_job *j)
{
	return j->open_s;
}

/* ---- calibration tokens ------------------------------------------------------ */

enum cal_status cal_job_datasets_parse(const char *spec, struct cal_job_dataset **ret,
				       size_t *ret_n, struct cal_error *err)
{
	struct cal_calib_source *src = NULL;
	size_t n = 0;
	*ret = NULL;
	*ret_n = 0;
	if (!spec)
		return CAL_OK;
	enum cal_status st = cal_calib_sources_parse(spec, &src, &n, err);
	if (st < 0)
		return st;
	struct cal_job_dataset *ds = calloc(n ? n : 1, sizeof(*ds));
	if (!ds) {
		cal_calib_sources_free(src, n);
		return cal_error_set(err, CAL_ERR_NOMEM, "calibration data: out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		ds[i].path = src[i].path; /* ownership moves to ds */
		src[i].path = NULL;
		ds[i].samples = src[i].has_n ? src[i].n : 0;
	}
	cal_calib_sources_free(src, n);
	*ret = ds;
	*ret_n = n;
	return CAL_OK;
}

void cal_job_datasets_free(struct cal_job_dataset *ds, size_t n)
{
	for (size_t i = 0; ds && i < n; i++)
		free((char *)ds[i].path);
	free(ds);
}

/* The first `keep` sequences of t, each cut to seq_len (0: as they are). */
static void tokens_trim(struct cal_calib_tokens *t, size_t keep, size_t seq_len,
			size_t *ret_truncated)
{
	size_t w = 0, n = keep && keep < t->n ? keep : t->n;
	*ret_truncated = 0;
	for (size_t i = 0; i < n; i++) {
		size_t a = t->off[i], len = t->off[i + 1] - a;
		if (seq_len && len > seq_len) {
			len = seq_len;
			(*ret_truncated)++;
		}
		memmove(t->ids + w, t->ids + a, len * sizeof(*t->ids));
		t->off[i] = w;
		w += len;
	}
	t->off[n] = w;
	t->n = n;
	t->n_tokens = w;
}

/* Copies a dataset (int32 ids) into engine token sequences. */
static enum cal_status tokens_from_dataset(const struct cal_dataset *ds, uint64_t vocab,
					   struct cal_calib_tokens **ret, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	struct cal_calib_tokens *t = calloc(1, sizeof(*t));
	if (ds->n > CAL_CALIB_MAX_SEQS || ds->n_tokens > CAL_CALIB_MAX_TOKENS) {
		free(t);
		return cal_error_set(err, CAL_ERR_RANGE, "calibration set: %zu sequences / %zu tokens "
				     "exceed the limits (%zu / %zu)", ds->n, ds->n_tokens,
				     CAL_CALIB_MAX_SEQS, CAL_CALIB_MAX_TOKENS);
	}
	if (!t || !(t->off = malloc((ds->n + 1) * sizeof(*t->off))) ||
	    !(t->ids = malloc((ds->n_tokens ? ds->n_tokens : 1) * sizeof(*t->ids)))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "calibration tokens: out of memory");
		goto fail;
	}
	for (size_t i = 0; i <= ds->n; i++)
		t->off[i] = ds->off[i];
	for (size_t i = 0; i < ds->n_tokens; i++) {
		int32_t id = ds->ids[i];
		if (id < 0 || (vocab && (uint64_t)id >= vocab)) {
			st = cal_error_set(err, CAL_ERR_RANGE, "calibration token %zu: id %d is outside "
					   "the model's vocabulary (%llu)", i, (int)id,
					   (unsigned long long)vocab);
			goto fail;
		}
		t->ids[i] = (uint32_t)id;
	}
	t->n = ds->n;
	t->n_tokens = ds->n_tokens;
	*ret = t;
	return CAL_OK;
fail:
	cal_calib_tokens_free(t);
	return st;
}

/* The datasets through the model's tokenizer. */
static enum cal_status tokens_from_datasets(const struct cal_job *j, struct cal_calib_tokens **ret,
					    struct cal_token_info *info, struct cal_error *err)
{
	const struct cal_job_opts *o = &j->o;
	enum cal_status st = CAL_OK;
	struct cal_tokenizer *tok = NULL;
	struct cal_dataset *ds = NULL;
	struct cal_calib_source *srcs = calloc(o->n_datasets, sizeof(*srcs));
	struct cal_dataset_opts dop = {
		.samples = o->samples,
		.seq_len = o->seq_len ? o->seq_len : DEFAULT_SEQ_LEN,
		.shuffle = o->seed != 0,
		.seed = o->seed,
	};
	size_t explicit_sum = 0, n_implicit = 0;
	if (!srcs)
		return cal_error_set(err, CAL_ERR_NOMEM, "calibration data: out of memory");
	for (size_t i = 0; i < o->n_datasets; i++) {
		if (!o->datasets[i].path || !*o->datasets[i].path) {
			st = cal_error_set(err, CAL_ERR_INVALID, "calibration dataset %zu has no path", i);
			goto fail;
		}
		/* borrowed: never freed here */
		srcs[i].path = (char *)o->datasets[i].path;
		srcs[i].n = o->datasets[i].samples;
		srcs[i].has_n = o->datasets[i].samples > 0;
		if (srcs[i].has_n)
			explicit_sum += srcs[i].n;
		else
			n_implicit++;
	}
	/* every source counted: their sum; else 512 in all */
	if (!dop.samples && n_implicit)
		dop.samples = explicit_sum + n_implicit > DEFAULT_SAMPLES ? explicit_sum + n_implicit
									   : DEFAULT_SAMPLES;
	CAL_TRY(cal_tokenizer_load(o->model_dir, &tok, err));
	CAL_TRY(cal_dataset_build(tok, srcs, o->n_datasets, &dop, &ds, err));
	CAL_TRY(tokens_from_dataset(ds, (uint64_t)j->d->vocab_size, ret, err));
	info->seq_len = dop.seq_len;
	info->shortfall = ds->shortfall;
	info->truncated = ds->truncated;
	info->dropped_empty = ds->dropped_empty;
fail:
	cal_dataset_free(ds);
	free(srcs);
	cal_tokenizer_free(tok);
	return st;
}

enum cal_status cal_job_tokens(const struct cal_job *j, struct cal_calib_tokens **ret,
			       struct cal_token_info *ret_info, struct cal_error *err)
{
	const struct cal_job_opts *o = &j->o;
	enum cal_status st = CAL_OK;
	struct cal_token_info info = {0};
	struct cal_calib_tokens *t = NULL;

	*ret = NULL;
	if (!!o->n_datasets == !!o->tokens)
		return cal_error_set(err, CAL_ERR_INVALID, "calibration data: give exactly one of "
				     "datasets (--calib FILE[:N],...) and a token file (--calib-tokens)");
	if (o->seq_len > CAL_CALIB_MAX_SEQ_LEN)
		return cal_error_set(err, CAL_ERR_RANGE, "--seq-len %zu is over the limit %zu",
				     o->seq_len, CAL_CALIB_MAX_SEQ_LEN);
	if (o->samples > CAL_CALIB_MAX_SEQS)
		return cal_error_set(err, CAL_ERR_RANGE, "--samples %zu is over the limit %zu",
				     o->samples, CAL_CALIB_MAX_SEQS);
	if (o->tokens) {
		CAL_TRY(cal_calib_tokens_load(o->tokens, (uint64_t)j->d->vocab_size, &t, err));
		info.shortfall = o->samples > t->n ? o->samples - t->n : 0;
		tokens_trim(t, o->samples, o->seq_len, &info.truncated);
		info.seq_len = o->seq_len;
		if (!info.seq_len)
			for (size_t i = 0; i < t->n; i++)
				if (t->off[i + 1] - t->off[i] > info.seq_len)
					info.seq_len = t->off[i + 1] - t->off[i];
	} else {
		CAL_TRY(tokens_from_datasets(j, &t, &info, err));
	}
	if (!t->n || !t->n_tokens) {
		st = cal_error_set(err, CAL_ERR_INVALID, "calibration data %s gave no token",
				   o->tokens ? o->tokens : o->datasets[0].path);
		goto fail;
	}
	info.samples = t->n;
	info.tokens = t->n_tokens;
	if (ret_info)
		*ret_info = info;
	*ret = t;
	t = NULL;
fail:
	cal_calib_tokens_free(t);
	return st;
}

/* ---- stages ------------------------------------------------------------------------ */

static enum cal_status need(const struct cal_job *j, const char *what, struct cal_error *err)
{
	if (j->ck && j->be)
		return CAL_OK;
	return cal_error_set(err, CAL_ERR_INVALID, "job: %s needs a job opened with its "
			     "checkpoint and back end", what);
}

enum cal_status cal_job_calib_open(struct cal_job *j, const struct cal_job_hooks *hooks,
				   struct cal_calib **ret, struct cal_error *err)
{
	const struct cal_job_opts *o = &j->o;
	*ret = NULL;
	enum cal_status st = need(j, "calibration", err);
	if (st < 0)
		return st;
	struct cal_calib_opts co = {
		.cpu_threads = o->cpu_threads,
		.max_mem = o->max_mem,
		.micro_batch_tokens = o->micro_batch_tokens,
		.pad_like_modelopt = o->pad_like_modelopt,
		.pad_id = o->has_pad_id ? o->pad_id : -1,
		.per_expert_input_amax = o->per_expert_input_amax,
		.moe_calib_experts_ratio = o->moe_calib_experts_ratio,
		.combine = o->combine,
		.ranks = cal_job_ranks_local(j),
		.rank_first = o->ranks.first,
		.rank_world = o->ranks.world,
		.rendezvous = o->ranks.rendezvous,
		.comm_timeout_ms = o->ranks.timeout_ms,
		.cuda_devices = o->devices.kind == CAL_DEVICE_CUDA ? o->devices.ids : NULL,
		.div = o->div,
	};
	if (co.moe_calib_experts_ratio == 0.0 && j->recipe->algo.has_moe_calib_experts_ratio)
		co.moe_calib_experts_ratio = j->recipe->algo.moe_calib_experts_ratio;
	if (hooks && hooks->one_rank) {
		co.ranks = 0;
		co.rank_first = co.rank_world = 0;
	}
	if (hooks) {
		co.on_layer = hooks->on_layer;
		co.progress = hooks->progress;
		co.ctx = hooks->ctx;
		co.profile = hooks->profile;
		co.rank_hooks = hooks->rank_hooks;
	}
	struct cal_calib_src src = {o->model_dir, j->ck, j->cat, j->be};
	return cal_calib_open_src(&src, j->plan, &co, ret, err);
}

/* Text of an engine report as JSON (the exporter and the verifier write
 * their reports as files: their text is parsed once, here). */
static void report_json(char *text, json_t **ret)
{
	if (ret)
		*ret = text ? json_loads(text, 0, NULL) : NULL;
	free(text);
}

enum cal_status cal_job_export(struct cal_job *j, const struct cal_stats *stats,
			       const char *out_dir, json_t **ret_report, struct cal_error *err)
{
	enum cal_status st = need(j, "export", err);
	struct cal_exporter *ex = NULL;
	char *text = NULL;
	if (ret_report)
		*ret_report = NULL;
	if (st < 0)
		return st;
	if (j->recipe->algo.method == CAL_CALIB_GPTQ || /* docs/gptq.md, docs/awq.md, */
	    j->recipe->algo.method == CAL_CALIB_AWQ_LITE || /* docs/smoothquant.md */
	    j->recipe->algo.method == CAL_CALIB_SMOOTHQUANT)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "export: %s uses algorithm %s, "
				     "whose updated weights exist only during the calibration: "
				     "use quantize (calibration and export in one run)",
				     cal_job_recipe_name(j), j->recipe->algo.name);
	struct cal_export_opts eo = {
		.model_dir = j->o.model_dir,
		.out_dir = out_dir,
		.recipe_name = cal_job_recipe_name(j),
		.div = j->o.div,
		.max_shard_bytes = j->o.max_shard_bytes,
		.per_expert_input_amax = j->o.per_expert_input_amax,
	};
	CAL_TRY(cal_exporter_open(j->d, j->ck, j->cat, j->plan, j->be, &eo, &ex, err));
	for (int32_t L = 0; L < (int32_t)j->d->num_layers; L++)
		CAL_TRY(cal_exporter_layer(ex, L, stats, err));
	CAL_TRY(cal_exporter_finish(ex, stats, ret_report ? &text : NULL, err));
	report_json(text, ret_report);
fail:
	cal_exporter_free(ex);
	return st;
}

enum cal_status cal_job_verify(const char *out_dir, const char *source_dir,
			       const struct cal_devices *devices, json_t **ret_report,
			       struct cal_error *err)
{
	struct cal_backend *be = NULL;
	char *text = NULL;
	if (ret_report)
		*ret_report = NULL;
	enum cal_status st = cal_job_backend_open(devices, 0, &be, err);
	if (st >= 0) {
		st = cal_export_verify(out_dir, source_dir, be, ret_report ? &text : NULL, err);
		report_json(text, ret_report);
	}
	cal_backend_free(be);
	return st;
}

enum cal_status cal_job_eval(struct cal_job *j, const char *quant_dir,
			     const struct cal_eval_opts *opts, json_t **ret, struct cal_error *err)
{
	struct cal_checkpoint *q = NULL;
	struct cal_calib_tokens *tk = NULL;
	struct cal_calib *cal = NULL;
	struct cal_token_info ti = {0};
	struct cal_job_hooks hooks = {.one_rank = 1}; /* evaluation: one rank */
	enum cal_status st;
	*ret = NULL;
	CAL_TRY(cal_eval_check_source(cal_job_options(j)->model_dir, cal_job_checkpoint(j),
				      quant_dir, err));
	CAL_TRY(cal_checkpoint_open(quant_dir, &q, err));
	CAL_TRY(cal_job_tokens(j, &tk, &ti, err));
	CAL_TRY(cal_job_calib_open(j, &hooks, &cal, err));
	CAL_TRY(cal_eval_run(cal, q, tk, opts, ret, err));
	cal_eval_overlap(quant_dir, tk, *ret);
	json_object_set_new(*ret, "data", json_pack("{s:I, s:I, s:I}", "samples",
		(json_int_t)ti.samples, "seq_len", (json_int_t)ti.seq_len, "tokens",
		(json_int_t)ti.tokens));
fail:
	cal_calib_free(cal);
	cal_calib_tokens_free(tk);
	cal_checkpoint_free(q);
	return st;
}
