/*
 * quantize.c — one quantization job end to end (engine/quantize.h): the
 * model, recipe and plan, the calibration tokens, then the calibration
 * engine and the exporter in one streaming pass — each layer is quantized
 * and written from the engine's on_layer callback as soon as its statistics
 * are final, and the directory is published after the last layer.  The
 * model, recipe, plan, checkpoint and back end are the job's (engine/job.h).
 * docs/quantize.md.
 */
#include "engine/quantize.h"
#include "engine/quantize_internal.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"
#include "engine/calib.h"
#include "engine/export/export.h"
#include "engine/job.h"

/* ---- the job ------------------------------------------------------------- */

struct job {
	const struct cal_quantize_opts *o;
	int per_expert_input_amax;
	cal_progress_fn progress;
	void *pctx;
	const struct cal_model_desc *d;
	const struct cal_plan *plan;
	struct cal_exporter *ex;
	struct cal_qranks *qr;      /* the export's other ranks in this process */
	struct cal_stats *stats;
	uint64_t n_tokens;          /* calibration tokens (pads included) */
	double t_job, t_run;        /* starts of the job and of the forward pass */
	double t_export;            /* seconds spent exporting inside on_layer */
	double tps;                 /* token-layers per second so far */
	int32_t layers_done;
};

static int cancelled(const struct job *j)
{
	return j->o->cancel && *j->o->cancel;
}

static enum cal_status interrupted(const struct job *j, struct cal_error *err)
{
	return cal_error_set(err, CAL_ERR_INTERRUPTED, "cancelled after %d of %lld layers; nothing "
			     "was published under %s", (int)j->layers_done,
			     (long long)(j->d ? j->d->num_layers : 0), j->o->out_dir);
}

/* One progress line (see quantize.h); tokens_* count token-layers (calibration
 * tokens x layers), as the engine's throughput does. */
static void emit(struct job *j, const char *phase, int32_t layer)
{
	if (!j->progress)
		return;
	uint64_t layers = j->d ? (uint64_t)j->d->num_layers : 0;
	uint64_t total = j->n_tokens * layers, done = j->n_tokens * (uint64_t)j->layers_done;
	double eta = j->tps > 0 ? (double)(total - done) / j->tps : -1.0;
	json_t *o = json_pack("{s:s, s:i, s:I, s:I, s:I, s:f, s:I}", "phase", phase, "layer",
			      (int)layer, "layers", (json_int_t)layers, "tokens_done",
			      (json_int_t)done, "tokens_total", (json_int_t)total, "tokens_per_s",
			      j->tps, "bytes_written",
			      (json_int_t)((j->ex ? cal_exporter_bytes_written(j->ex) : 0) +
					   cal_qranks_bytes_written(j->qr)));
	if (!o)
		return;
	if (eta >= 0) /* absent until a layer is done */
		json_object_set_new(o, "eta_s", json_real(eta));
	j->progress(j->pctx, o);
	json_decref(o);
}

enum cal_status cal_quantize_layer_stats(const struct cal_plan *p, int per_expert_input_amax,
					 const struct cal_calib *c, int32_t layer,
					 struct cal_stats *stats, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	char *name = NULL;
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		float a;
		if (q->role == CAL_QROLE_WEIGHT || p->modules[q->module].layer != layer ||
		    !q->spec.enabled || !cal_calib_q_amax(c, i, &a))
			continue;
		CAL_TRY(cal_stats_set(stats, q->name, a, err));
		uint64_t nb = 0;
		const uint16_t *b = cal_calib_q_bias(c, i, &nb);
		if (b)
			CAL_TRY(cal_stats_set_bias(stats, q->name, b, nb, err));
	}
	const struct cal_calib_moe_stats *m = layer >= 0 ? cal_calib_moe(c, layer) : NULL;
	if (!m)
		return CAL_OK;
	CAL_TRY(cal_stats_set_expert_tokens(stats, layer, m->n_experts, m->tokens, err));
	if (!per_expert_input_amax)
		return CAL_OK;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		const struct cal_plan_module *pm = &p->modules[mi];
		if (pm->layer != layer || pm->iq < 0 || (pm->kind != CAL_MOD_EXPERTS_GATE_UP &&
							 pm->kind != CAL_MOD_EXPERTS_DOWN))
			continue;
		const struct cal_plan_q *iq = &p->q[pm->iq];
		const float *v = pm->kind == CAL_MOD_EXPERTS_DOWN ? m->down_amax : m->gate_up_amax;
		if (!iq->spec.enabled)
			continue;
		for (int64_t e = 0; e < m->n_experts; e++) {
			if (!m->tokens[e] || !(v[e] >= 0.0f))
				continue;
			/* the exporter's per-expert name: "<...>_input_quantizers.<e>" */
			free(name);
			if (asprintf(&name, "%ss.%lld", iq->name, (long long)e) < 0) {
				name = NULL;
				st = cal_error_set(err, CAL_ERR_NOMEM, "quantize: out of memory");
				goto fail;
			}
			CAL_TRY(cal_stats_set(stats, name, v[e], err));
		}
	}
fail:
	free(name);
	return st;
}

/* The statistics of `layer` into j->stats (quantize_internal.h). */
static enum cal_status layer_stats(struct job *j, const struct cal_calib *c, int32_t layer,
				   struct cal_error *err)
{
	return cal_quantize_layer_stats(j->plan, j->per_expert_input_amax, c, layer, j->stats, err);
}

/* The engine's per-layer callback: statistics, then export of the layer. */
static enum cal_status on_layer(void *ctx, const struct cal_calib *c, int32_t layer,
				struct cal_error *err)
{
	struct job *j = ctx;
	enum cal_status st;
	if (cancelled(j))
		return interrupted(j, err);
	double t0 = cal_now();
	CAL_TRY(layer_stats(j, c, layer, err));
	/* GPTQ, AWQ, SmoothQuant: the layer's updated weights (AWQ: pre_quant_
	 * scales and fused norms; SmoothQuant: pre_quant_scales) replace the
	 * source's in the export */
	const struct cal_plan *p = j->plan;
	for (size_t mi = 0; mi < p->n_modules; mi++) {
		uint64_t n = 0;
		const uint16_t *pqs = NULL, *w = NULL;
		if (p->modules[mi].layer == layer)
			w = cal_calib_lin_weight(c, mi, &n, &pqs);
		if (w)
			CAL_TRY(cal_exporter_set_weight(j->ex, mi, w, n, pqs, err));
		const float *clip = w ? cal_calib_awq_clip(c, mi, &n) : NULL;
		if (clip) /* awq_full / awq_clip: the clipped block (NVFP4: global) amax */
			CAL_TRY(cal_exporter_set_block_amax(j->ex, mi, clip, n, err));
	}
	for (int k = 0; k < 2; k++) {
		uint64_t n = 0;
		const uint16_t *nw = cal_calib_awq_norm(c, k, &n);
		if (nw)
			CAL_TRY(cal_exporter_set_norm(j->ex, layer, k, nw, n, err));
	}
	CAL_TRY(cal_exporter_layer(j->ex, layer, j->stats, err));
	double t1 = cal_now();
	j->t_export += t1 - t0;
	j->layers_done = layer + 1;
	j->tps = t1 > j->t_run ? (double)j->n_tokens * j->layers_done / (t1 - j->t_run) : 0.0;
	cal_exporter_add_timeline(j->ex, t1 - j->t_run, layer, j->tps);
	emit(j, "calibrate", layer);
	if (cancelled(j))
		return interrupted(j, err);
fail:
	return st;
}

/* Names (sorted) and total size of the regular files under dir (recursive). */
static void list_files(const char *dir, const char *rel, json_t *names, uint64_t *bytes)
{
	DIR *dp = opendir(dir);
	struct dirent *e;
	if (!dp)
		return;
	while ((e = readdir(dp))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char *p = cal_path_join(dir, e->d_name), *r = NULL;
		struct stat sb;
		if (p)
			r = rel ? cal_path_join(rel, e->d_name) : strdup(e->d_name);
		if (p && r && !lstat(p, &sb)) {
			if (S_ISDIR(sb.st_mode)) {
				list_files(p, r, names, bytes);
			} else if (S_ISREG(sb.st_mode)) {
				json_array_append_new(names, json_string(r));
				*bytes += (uint64_t)sb.st_size;
			}
		}
		free(p);
		free(r);
	}
	closedir(dp);
}

static int cmp_json_str(const void *a, const void *b)
{
	return strcmp(json_string_value(*(json_t *const *)a), json_string_value(*(json_t *const *)b));
}

/* The report summary (quantize.h) from the exporter's calibd_report.json. */
static json_t *summary(const struct cal_quantize_opts *o, const struct cal_job *job,
		       const struct cal_token_info *ti, json_t *rep, json_t *phases, double wall)
{
	const struct cal_model_desc *d = cal_job_model(job);
	json_t *s = json_object(), *files = json_array(), *ewt = json_array();
	json_t *out = NULL;
	uint64_t bytes = 0, n_without = 0;
	if (!s || !files || !ewt)
		goto done;
	list_files(o->out_dir, NULL, files, &bytes);
	size_t nf = json_array_size(files);
	json_t **fv = nf ? malloc(nf * sizeof(*fv)) : NULL;
	if (fv) {
		for (size_t i = 0; i < nf; i++)
			fv[i] = json_incref(json_array_get(files, i));
		qsort(fv, nf, sizeof(*fv), cmp_json_str);
		json_array_clear(files);
		for (size_t i = 0; i < nf; i++)
			json_array_append_new(files, fv[i]);
		free(fv);
	}
	json_t *res = json_object_get(rep, "resolved");
	size_t i;
	json_t *x;
	json_array_foreach(json_object_get(rep, "experts"), i, x) {
		json_t *none = json_object_get(x, "experts_without_tokens");
		if (json_array_size(none)) {
			n_without += json_array_size(none);
			json_array_append_new(ewt, json_pack("{s:O, s:O}", "layer",
							     json_object_get(x, "layer"), "experts", none));
		}
	}
	/* phases: ours (load, tokenize, calibrate) and the exporter's */
	const char *k;
	json_object_foreach(json_object_get(rep, "phases_s"), k, x)
		if (!json_object_get(phases, k))
			json_object_set(phases, k, x);
	json_t *sq = json_object_get(rep, "weight_sqnr");
	json_object_set_new(s, "output", json_string(o->out_dir));
	json_object_set_new(s, "files", files);
	files = NULL;
	json_object_set_new(s, "bytes", json_integer((json_int_t)bytes));
	json_object_set_new(s, "tensor_bytes",
			    json_incref(json_object_get(json_object_get(rep, "output"), "tensor_bytes")));
	json_object_set_new(s, "source", json_string(cal_job_options(job)->model_dir));
	json_object_set_new(s, "model_type", json_string(d->model_type));
	json_object_set_new(s, "recipe", json_string(cal_job_recipe_name(job)));
	json_object_set_new(s, "quant_algo", json_incref(json_object_get(res, "quant_algo")));
	json_object_set_new(s, "kv_cache_quant_algo",
			    json_incref(json_object_get(res, "kv_cache_quant_algo")));
	json_object_set_new(s, "quantized_weights",
			    json_incref(json_object_get(res, "quantized_weights")));
	json_object_set_new(s, "device", json_string(cal_job_device(job)));
	json_object_set_new(s, "layers", json_integer(d->num_layers));
	json_object_set_new(s, "calibration", json_pack("{s:I, s:I, s:I, s:I, s:I}", "samples",
		(json_int_t)ti->samples, "seq_len", (json_int_t)ti->seq_len, "tokens",
		(json_int_t)ti->tokens, "shortfall", (json_int_t)ti->shortfall, "truncated",
		(json_int_t)ti->truncated));
	json_object_set_new(s, "experts_without_tokens", ewt);
	ewt = NULL;
	json_object_set_new(s, "experts_without_tokens_total", json_integer((json_int_t)n_without));
	json_object_set_new(s, "fallbacks",
			    json_integer((json_int_t)json_array_size(json_object_get(rep, "fallbacks"))));
	if (json_object_get(rep, "gptq")) /* docs/gptq.md: linears that fell back */
		json_object_set(s, "gptq_fallback",
				json_object_get(json_object_get(rep, "gptq"), "fallback"));
	json_object_set_new(s, "weight_sqnr_min_db", json_incref(json_object_get(sq, "min_db")));
	json_object_set_new(s, "weight_sqnr_mean_db", json_incref(json_object_get(sq, "mean_db")));
	json_object_set(s, "phases_s", phases);
	json_object_set_new(s, "wall_s", json_real(wall));
	json_object_set_new(s, "report_file", json_string("calibd_report.json"));
	out = s;
	s = NULL;
done:
	CAL_EACH(json_decref, json_t, files, ewt, s);
	return out;
}

static void phase_add(json_t *phases, const char *name, double seconds)
{
	json_t *old = json_object_get(phases, name);
	json_object_set_new(phases, name,
			    json_real((old ? json_number_value(old) : 0.0) + seconds));
}

enum cal_status cal_quantize_check_output(const char *out_dir, struct cal_error *err)
{
	struct stat sb;
	if (!out_dir || !*out_dir)
		return cal_error_set(err, CAL_ERR_INVALID, "quantize: an output directory is required");
	if (!lstat(out_dir, &sb))
		return cal_error_set(err, CAL_ERR_EXISTS, "output %s already exists (it is never "
				     "overwritten)", out_dir);
	return CAL_OK;
}

/* The job's export options (docs/export.md). */
static struct cal_export_opts export_opts(const struct cal_job *job,
					  const struct cal_quantize_opts *opts)
{
	const struct cal_job_opts *jo = cal_job_options(job);
	return (struct cal_export_opts){
		.model_dir = jo->model_dir,
		.out_dir = opts->out_dir,
		.recipe_name = cal_job_recipe_name(job),
		.div = jo->div,
		.max_shard_bytes = jo->max_shard_bytes,
		.per_expert_input_amax = jo->per_expert_input_amax,
		.publish = opts->publish,
		.world = cal_job_ranks_world(job),
	};
}

/* A process of a job over several processes that does not host global
 * rank 0 (docs/expert_parallel.md): its ranks calibrate with the others and
 * quantize and write their experts into global rank 0's output (the same
 * out_dir, as this process sees it), which rank 0's process publishes. */
static enum cal_status follower_run(struct cal_job *job, const struct cal_quantize_opts *opts,
				    json_t **ret_report, struct cal_error *err)
{
	struct cal_calib_tokens *tk = NULL;
	struct cal_calib *cal = NULL;
	struct cal_qranks *qr = NULL;
	enum cal_status st = CAL_OK;
	double t = cal_now();
	struct cal_export_opts eo = export_opts(job, opts);
	CAL_TRY(cal_job_check(job, CAL_JOB_CALIBRATE, err));
	if (!opts->out_dir || !*opts->out_dir) {
		st = cal_error_set(err, CAL_ERR_INVALID, "quantize: an output directory is required");
		goto fail;
	}
	CAL_TRY(cal_job_tokens(job, &tk, NULL, err));
	CAL_TRY(cal_qranks_new(job, &eo, NULL, &qr, err));
	struct cal_job_hooks hooks = {.rank_hooks = cal_qranks_hooks(qr)};
	CAL_TRY(cal_job_calib_open(job, &hooks, &cal, err));
	CAL_TRY(cal_calib_run(cal, tk, err));
	if (ret_report) {
		json_t *r = cal_calib_ranks_json(cal);
		*ret_report = json_pack("{s:i, s:f, s:I, s:o}", "rank_first",
					(int)cal_job_options(job)->ranks.first, "calibrate_s",
					cal_now() - t, "export_bytes",
					(json_int_t)cal_qranks_bytes_written(qr), "ranks",
					r ? r : json_null());
	}
fail:
	cal_calib_free(cal);
	cal_qranks_free(qr);
	cal_calib_tokens_free(tk);
	return st;
}

enum cal_status cal_quantize_run(struct cal_job *job, const struct cal_quantize_opts *opts,
				 cal_progress_fn progress, void *progress_ctx,
				 json_t **ret_report, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	const struct cal_job_opts *jo = cal_job_options(job);
	struct cal_calib_tokens *tk = NULL;
	struct cal_calib *cal = NULL;
	char *export_text = NULL;
	json_t *phases = json_object(), *export_report = NULL;
	struct cal_token_info ti = {0};
	struct job j = {.o = opts, .progress = progress, .pctx = progress_ctx,
			.per_expert_input_amax = jo->per_expert_input_amax};

	if (ret_report)
		*ret_report = NULL;
	if (jo->ranks.first != 0) {
		json_decref(phases);
		return follower_run(job, opts, ret_report, err);
	}
	j.t_job = cal_now() - cal_job_open_seconds(job);
	if (!phases) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "quantize: out of memory");
		goto fail;
	}
	/* the cheapest refusals first: an existing output, what the engine
	 * cannot run, a job opened without its checkpoint or back end */
	CAL_TRY(cal_quantize_check_output(opts->out_dir, err));
	CAL_TRY(cal_job_check(job, CAL_JOB_CALIBRATE, err)); /* the exporter checks itself */
	if (!cal_job_checkpoint(job) || !cal_job_backend(job)) {
		st = cal_error_set(err, CAL_ERR_INVALID, "quantize: the job was opened without its "
				   "checkpoint or back end");
		goto fail;
	}

	/* load: the job's (model, recipe, plan, checkpoint, back end), then the
	 * exporter before any compute: an existing output or a full disk fails
	 * here (it plans every output tensor and checks the space) */
	double t = cal_now();
	j.d = cal_job_model(job);
	j.plan = cal_job_plan(job);
	emit(&j, "load", -1);
	CAL_TRY(cal_stats_init(&j.stats, err));
	struct cal_export_opts eo = export_opts(job, opts);
	CAL_TRY(cal_exporter_open(j.d, cal_job_checkpoint(job), cal_job_catalog(job), j.plan,
				  cal_job_backend(job), &eo, &j.ex, err));
	/* over several ranks the others quantize and write their experts */
	if (eo.world > 1)
		CAL_TRY(cal_qranks_new(job, &eo, j.ex, &j.qr, err));
	phase_add(phases, "load", cal_job_open_seconds(job) + cal_now() - t);
	if (cancelled(&j)) {
		st = interrupted(&j, err);
		goto fail;
	}

	/* tokenize */
	t = cal_now();
	emit(&j, "tokenize", -1);
	CAL_TRY(cal_job_tokens(job, &tk, &ti, err));
	phase_add(phases, "tokenize", cal_now() - t);
	if (cancelled(&j)) {
		st = interrupted(&j, err);
		goto fail;
	}

	/* calibrate: each finished layer is exported from on_layer */
	struct cal_job_hooks hooks = {.on_layer = on_layer, .ctx = &j,
				      .rank_hooks = cal_qranks_hooks(j.qr)};
	CAL_TRY(cal_job_calib_open(job, &hooks, &cal, err));
	j.n_tokens = tk->n_tokens;
	char *hashes = cal_calib_tokens_hashes(tk);
	struct cal_stats_calib sc = {(int64_t)ti.samples, (int64_t)ti.seq_len, ti.tokens, hashes};
	cal_stats_set_calib(j.stats, &sc);
	free(hashes);
	emit(&j, "calibrate", -1);
	j.t_run = cal_now();
	CAL_TRY(cal_calib_run(cal, tk, err));
	CAL_TRY(layer_stats(&j, cal, -1, err));
	double run_s = cal_now() - j.t_run;
	cal_exporter_set_ranks(j.ex, cal_calib_ranks_json(cal));
	phase_add(phases, "calibrate", run_s - j.t_export);
	if (cancelled(&j)) {
		st = interrupted(&j, err);
		goto fail;
	}
	{ /* GPTQ's report (docs/gptq.md) goes into calibd_report.json */
		json_t *cs = cal_calib_stats(cal), *gq = cs ? json_object_get(cs, "gptq") : NULL;
		json_t *aw = cs ? json_object_get(cs, "awq_lite") : NULL;
		json_t *sq = cs ? json_object_get(cs, "smoothquant") : NULL;
		if (gq) {
			cal_exporter_set_algorithm_report(j.ex, gq);
			cal_exporter_add_phase(j.ex, "gptq_solve",
					       json_number_value(json_object_get(gq, "solve_s")));
		}
		if (aw) { /* docs/awq.md: per linear, the chosen alpha */
			cal_exporter_set_algorithm_report(j.ex, aw);
			cal_exporter_add_phase(j.ex, "awq_search",
					       json_number_value(json_object_get(aw, "search_s")));
		}
		if (sq) { /* docs/smoothquant.md: per linear, the input amax */
			cal_exporter_set_algorithm_report(j.ex, sq);
			cal_exporter_add_phase(j.ex, "smoothquant",
					       json_number_value(json_object_get(sq, "smooth_s")));
		}
		json_decref(cs);
	}
	/* free the engine's buffers (and the other ranks' exporters, done)
	 * before the finish writes the rest */
	cal_calib_free(cal);
	cal = NULL;
	cal_qranks_free(j.qr);
	j.qr = NULL;

	/* finish: model-level tensors, side files, report, publish */
	emit(&j, "finish", -1);
	cal_exporter_add_phase(j.ex, "load", json_number_value(json_object_get(phases, "load")));
	cal_exporter_add_phase(j.ex, "tokenize",
			       json_number_value(json_object_get(phases, "tokenize")));
	cal_exporter_add_phase(j.ex, "calibrate", run_s - j.t_export);
	double t_fin = cal_now();
	CAL_TRY(cal_exporter_finish(j.ex, j.stats, &export_text, err));
	/* model-level tensors, side files, fsync and rename (docs/quantize.md) */
	phase_add(phases, "finish", cal_now() - t_fin);
	emit(&j, "done", -1);
	if (ret_report) {
		/* the exporter's calibd_report.json, as written */
		export_report = export_text ? json_loads(export_text, 0, NULL) : NULL;
		*ret_report = summary(opts, job, &ti, export_report, phases, cal_now() - j.t_job);
		if (!*ret_report)
			/* published: report the job's success, not the summary's memory */
			*ret_report = json_object();
	}
fail:
	cal_calib_free(cal);
	cal_calib_tokens_free(tk);
	cal_qranks_free(j.qr); /* joined before the leader removes its output */
	cal_exporter_free(j.ex);
	cal_stats_free(j.stats);
	json_decref(phases);
	json_decref(export_report);
	free(export_text);
	return st;
}
