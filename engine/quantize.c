/*
 * quantize.c — one quantization job end to end (engine/quantize.h): the
 * model, recipe and plan, the calibration tokens, then the calibration
 * engine and the exporter in one streaming pass — each layer is quantized
 * and written from the engine's on_layer callback as soon as its statistics
 * are final, and the directory is published after the last layer.  Also the
 * token-source helper that `calibd quantize` and `calibd calibrate` share.
 * docs/quantize.md.
 */
#include "engine/quantize.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"
#include "engine/calib.h"
#include "engine/export/export.h"
#include "engine/model/catalog.h"
#include "engine/model/model.h"
#include "engine/recipe/plan.h"
#include "engine/recipe/recipe.h"
#include "engine/st/safetensors.h"
#include "engine/tokenizer/dataset.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/backend.h"

#define DEFAULT_SAMPLES 512
#define DEFAULT_SEQ_LEN 512

/* ---- calibration tokens ------------------------------------------------- */

/* The first `keep` sequences of t, each cut to seq_len (0: as they are). */
static enum cal_status tokens_trim(struct cal_calib_tokens *t, size_t keep, size_t seq_len,
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
	return CAL_OK;
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

enum cal_status cal_quantize_tokens_load(const char *model_dir, uint64_t vocab,
					 const struct cal_token_source *src,
					 struct cal_calib_tokens **ret,
					 struct cal_token_info *ret_info, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	struct cal_token_info info = {0};
	struct cal_calib_tokens *t = NULL;
	struct cal_tokenizer *tok = NULL;
	struct cal_calib_source *srcs = NULL;
	struct cal_dataset *ds = NULL;
	size_t n_src = 0;

	*ret = NULL;
	if (!!src->calib == !!src->tokens)
		return cal_error_set(err, CAL_ERR_INVALID, "calibration data: give exactly one of "
				     "--calib FILE[:N],... and --calib-tokens FILE");
	if (src->seq_len > CAL_CALIB_MAX_SEQ_LEN)
		return cal_error_set(err, CAL_ERR_RANGE, "--seq-len %zu is over the limit %zu",
				     src->seq_len, CAL_CALIB_MAX_SEQ_LEN);
	if (src->samples > CAL_CALIB_MAX_SEQS)
		return cal_error_set(err, CAL_ERR_RANGE, "--samples %zu is over the limit %zu",
				     src->samples, CAL_CALIB_MAX_SEQS);
	if (src->tokens) {
		CAL_TRY(cal_calib_tokens_load(src->tokens, vocab, &t, err));
		size_t asked = src->samples;
		info.shortfall = asked > t->n ? asked - t->n : 0;
		CAL_TRY(tokens_trim(t, asked, src->seq_len, &info.truncated));
		info.seq_len = src->seq_len;
		if (!info.seq_len)
			for (size_t i = 0; i < t->n; i++)
				if (t->off[i + 1] - t->off[i] > info.seq_len)
					info.seq_len = t->off[i + 1] - t->off[i];
	} else {
		CAL_TRY(cal_calib_sources_parse(src->calib, &srcs, &n_src, err));
		struct cal_dataset_opts o = {
			.samples = src->samples,
			.seq_len = src->seq_len ? src->seq_len : DEFAULT_SEQ_LEN,
			.shuffle = src->seed != 0,
			.seed = src->seed,
		};
		if (!o.samples) {
			/* every source counted (FILE:N): their sum; else 512 in all */
			size_t explicit_sum = 0, n_implicit = 0;
			for (size_t i = 0; i < n_src; i++) {
				if (srcs[i].has_n)
					explicit_sum += srcs[i].n;
				else
					n_implicit++;
			}
			if (n_implicit)
				o.samples = explicit_sum + n_implicit > DEFAULT_SAMPLES ?
					    explicit_sum + n_implicit : DEFAULT_SAMPLES;
		}
		CAL_TRY(cal_tokenizer_load(model_dir, &tok, err));
		CAL_TRY(cal_dataset_build(tok, srcs, n_src, &o, &ds, err));
		CAL_TRY(tokens_from_dataset(ds, vocab, &t, err));
		info.seq_len = o.seq_len;
		info.shortfall = ds->shortfall;
		info.truncated = ds->truncated;
		info.dropped_empty = ds->dropped_empty;
	}
	if (!t->n || !t->n_tokens) {
		st = cal_error_set(err, CAL_ERR_INVALID, "calibration data %s gave no token",
				   src->calib ? src->calib : src->tokens);
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
	cal_dataset_free(ds);
	cal_calib_sources_free(srcs, n_src);
	cal_tokenizer_free(tok);
	return st;
}

/* ---- the job ------------------------------------------------------------- */

struct job {
	const struct cal_quantize_opts *o;
	cal_progress_fn progress;
	void *pctx;
	const struct cal_model_desc *d;
	const struct cal_plan *plan;
	struct cal_exporter *ex;
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
			      (json_int_t)(j->ex ? cal_exporter_bytes_written(j->ex) : 0));
	if (!o)
		return;
	if (eta >= 0) /* absent until a layer is done */
		json_object_set_new(o, "eta_s", json_real(eta));
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	if (s)
		j->progress(j->pctx, s);
	free(s);
	json_decref(o);
}

/*
 * The statistics of `layer` (-1: model-level quantizers such as lm_head's
 * input) into j->stats: every enabled non-weight quantizer's amax, the
 * per-expert input amax (per_expert_input_amax) and the expert token counts.
 */
static enum cal_status layer_stats(struct job *j, const struct cal_calib *c, int32_t layer,
				   struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	const struct cal_plan *p = j->plan;
	char *name = NULL;
	for (size_t i = 0; i < p->n_q; i++) {
		const struct cal_plan_q *q = &p->q[i];
		float a;
		if (q->role == CAL_QROLE_WEIGHT || p->modules[q->module].layer != layer ||
		    !q->spec.enabled || !cal_calib_q_amax(c, i, &a))
			continue;
		CAL_TRY(cal_stats_set(j->stats, q->name, a, err));
	}
	const struct cal_calib_moe_stats *m = layer >= 0 ? cal_calib_moe(c, layer) : NULL;
	if (!m)
		return CAL_OK;
	CAL_TRY(cal_stats_set_expert_tokens(j->stats, layer, m->n_experts, m->tokens, err));
	if (!j->o->per_expert_input_amax)
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
			CAL_TRY(cal_stats_set(j->stats, name, v[e], err));
		}
	}
fail:
	free(name);
	return st;
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
	CAL_TRY(cal_exporter_layer(j->ex, layer, j->stats, err));
	double t1 = cal_now();
	j->t_export += t1 - t0;
	j->layers_done = layer + 1;
	j->tps = t1 > j->t_run ? (double)j->n_tokens * j->layers_done / (t1 - j->t_run) : 0.0;
	emit(j, "calibrate", layer);
	if (cancelled(j))
		return interrupted(j, err);
fail:
	return st;
}

/* "cpu" / "cuda" / "cuda:i[,j...]" / NULL or "auto". */
static enum cal_status parse_device(const char *dev, enum cal_backend_kind *ret_kind,
				    int *ret_index, struct cal_error *err)
{
	*ret_index = 0;
	if (!dev || !*dev || !strcmp(dev, "auto")) {
		*ret_kind = cal_backend_cuda_available() ? CAL_BACKEND_CUDA : CAL_BACKEND_CPU;
		return CAL_OK;
	}
	if (!strcmp(dev, "cpu")) {
		*ret_kind = CAL_BACKEND_CPU;
		return CAL_OK;
	}
	if (!strncmp(dev, "cuda", 4) && (dev[4] == 0 || dev[4] == ':')) {
		*ret_kind = CAL_BACKEND_CUDA;
		if (dev[4] == ':') {
			char *end;
			errno = 0;
			long v = strtol(dev + 5, &end, 10);
			if (end == dev + 5 || errno || v < 0 || v > 1023 || (*end && *end != ','))
				return cal_error_set(err, CAL_ERR_INVALID, "device '%s': expected "
						     "cpu, cuda or cuda:INDEX", dev);
			/* several GPUs: the engine runs on the first one for now */
			*ret_index = (int)v;
		}
		return CAL_OK;
	}
	return cal_error_set(err, CAL_ERR_INVALID, "device '%s': expected cpu, cuda or cuda:INDEX",
			     dev);
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
		if (p && (rel ? asprintf(&r, "%s/%s", rel, e->d_name) : asprintf(&r, "%s", e->d_name)) < 0)
			r = NULL;
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
static char *summary(const struct cal_quantize_opts *o, const struct cal_model_desc *d,
		     const char *recipe_name, const char *device,
		     const struct cal_token_info *ti, const char *export_report,
		     json_t *phases, double wall)
{
	json_t *rep = export_report ? json_loads(export_report, 0, NULL) : NULL;
	json_t *s = json_object(), *files = json_array(), *ewt = json_array();
	char *out = NULL;
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
	json_object_set_new(s, "source", json_string(o->model_dir));
	json_object_set_new(s, "model_type", json_string(d->model_type));
	json_object_set_new(s, "recipe", json_string(recipe_name));
	json_object_set_new(s, "quant_algo", json_incref(json_object_get(res, "quant_algo")));
	json_object_set_new(s, "kv_cache_quant_algo",
			    json_incref(json_object_get(res, "kv_cache_quant_algo")));
	json_object_set_new(s, "quantized_weights",
			    json_incref(json_object_get(res, "quantized_weights")));
	json_object_set_new(s, "device", json_string(device));
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
	json_object_set_new(s, "weight_sqnr_min_db", json_incref(json_object_get(sq, "min_db")));
	json_object_set_new(s, "weight_sqnr_mean_db", json_incref(json_object_get(sq, "mean_db")));
	json_object_set(s, "phases_s", phases);
	json_object_set_new(s, "wall_s", json_real(wall));
	json_object_set_new(s, "report_file", json_string("calibd_report.json"));
	out = json_dumps(s, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
done:
	json_decref(files);
	json_decref(ewt);
	json_decref(s);
	json_decref(rep);
	return out;
}

static void phase_add(json_t *phases, const char *name, double seconds)
{
	json_t *old = json_object_get(phases, name);
	json_object_set_new(phases, name,
			    json_real((old ? json_number_value(old) : 0.0) + seconds));
}

enum cal_status cal_quantize_run(const struct cal_quantize_opts *opts,
				 cal_progress_fn progress, void *progress_ctx,
				 char **ret_report_json, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	struct cal_model_desc *d = NULL;
	struct cal_recipe *r = NULL;
	struct cal_plan *p = NULL;
	struct cal_checkpoint *ck = NULL;
	struct cal_catalog *cat = NULL;
	struct cal_backend *be = NULL;
	struct cal_calib_tokens *tk = NULL;
	struct cal_calib *cal = NULL;
	char *export_report = NULL, *device = NULL;
	json_t *phases = json_object();
	struct cal_token_info ti = {0};
	struct job j = {.o = opts, .progress = progress, .pctx = progress_ctx};
	enum cal_backend_kind kind = CAL_BACKEND_CPU;
	int dev_index = 0;
	struct stat sb;

	if (ret_report_json)
		*ret_report_json = NULL;
	j.t_job = cal_now();
	if (!phases) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "quantize: out of memory");
		goto fail;
	}
	if (!opts->model_dir || !*opts->model_dir || !opts->out_dir || !*opts->out_dir) {
		st = cal_error_set(err, CAL_ERR_INVALID, "quantize: a model directory and an output "
				   "directory are required");
		goto fail;
	}
	if (!!(opts->recipe && *opts->recipe) == !!opts->recipe_yaml) {
		st = cal_error_set(err, CAL_ERR_INVALID, "quantize: give exactly one of a recipe "
				   "name/file and an inline recipe");
		goto fail;
	}
	if (opts->samples < 0 || opts->seq_len < 0) {
		st = cal_error_set(err, CAL_ERR_INVALID, "quantize: samples %d / seq_len %d must not "
				   "be negative", opts->samples, opts->seq_len);
		goto fail;
	}
	if (!(opts->moe_calib_experts_ratio >= 0.0 && opts->moe_calib_experts_ratio <= 1.0)) {
		st = cal_error_set(err, CAL_ERR_INVALID, "quantize: moe_calib_experts_ratio %g not in "
				   "[0, 1]", opts->moe_calib_experts_ratio);
		goto fail;
	}
	/* the cheapest refusals first: an existing output, a bad device */
	if (!lstat(opts->out_dir, &sb)) {
		st = cal_error_set(err, CAL_ERR_EXISTS, "output %s already exists (it is never "
				   "overwritten)", opts->out_dir);
		goto fail;
	}
	CAL_TRY(parse_device(opts->device, &kind, &dev_index, err));
	if (kind == CAL_BACKEND_CUDA ? asprintf(&device, "cuda:%d", dev_index) < 0
				     : !(device = strdup("cpu"))) {
		device = NULL;
		st = cal_error_set(err, CAL_ERR_NOMEM, "quantize: out of memory");
		goto fail;
	}

	/* load: model, recipe, plan, checkpoint, back end */
	double t = cal_now();
	emit(&j, "load", -1);
	CAL_TRY(cal_model_desc_load(opts->model_dir, &d, err));
	j.d = d;
	if (opts->recipe_yaml)
		CAL_TRY(cal_recipe_parse("<inline recipe>", opts->recipe_yaml,
					 strlen(opts->recipe_yaml), NULL, &r, err));
	else
		CAL_TRY(cal_recipe_load(opts->recipe, NULL, &r, err));
	CAL_TRY(cal_plan_build(d, r, &p, err));
	j.plan = p;
	CAL_TRY(cal_checkpoint_open(opts->model_dir, &ck, err));
	CAL_TRY(cal_catalog_build(d, ck, &cat, err));
	struct cal_backend_opts bo = {.cuda_device = dev_index};
	CAL_TRY(cal_backend_init(kind, &bo, &be, err));
	CAL_TRY(cal_stats_init(&j.stats, err));
	/* the exporter before any compute: an existing output or a full disk
	 * fails here (it plans every output tensor and checks the space) */
	struct cal_export_opts eo = {
		.model_dir = opts->model_dir,
		.out_dir = opts->out_dir,
		.recipe_name = opts->recipe_yaml ? "<inline recipe>" : opts->recipe,
		.per_expert_input_amax = opts->per_expert_input_amax,
		.publish = opts->publish,
	};
	CAL_TRY(cal_exporter_open(d, ck, cat, p, be, &eo, &j.ex, err));
	phase_add(phases, "load", cal_now() - t);
	if (cancelled(&j)) {
		st = interrupted(&j, err);
		goto fail;
	}

	/* tokenize */
	t = cal_now();
	emit(&j, "tokenize", -1);
	struct cal_token_source src = {
		.calib = opts->calib,
		.tokens = opts->calib_tokens,
		.samples = (size_t)opts->samples,
		.seq_len = (size_t)opts->seq_len,
		.seed = opts->seed,
	};
	CAL_TRY(cal_quantize_tokens_load(opts->model_dir, (uint64_t)d->vocab_size, &src, &tk, &ti,
					 err));
	phase_add(phases, "tokenize", cal_now() - t);
	if (cancelled(&j)) {
		st = interrupted(&j, err);
		goto fail;
	}

	/* calibrate: each finished layer is exported from on_layer */
	struct cal_calib_opts co = {
		.backend = kind,
		.cuda_device = dev_index,
		.pad_id = -1,
		.per_expert_input_amax = opts->per_expert_input_amax,
		.moe_calib_experts_ratio = opts->moe_calib_experts_ratio,
		.combine = CAL_COMBINE_EAGER,
		.on_layer = on_layer,
		.ctx = &j,
	};
	if (co.moe_calib_experts_ratio == 0.0 && r->algo.has_moe_calib_experts_ratio)
		co.moe_calib_experts_ratio = r->algo.moe_calib_experts_ratio;
	CAL_TRY(cal_calib_open(opts->model_dir, p, &co, &cal, err));
	j.n_tokens = tk->n_tokens;
	struct cal_stats_calib sc = {(int64_t)ti.samples, (int64_t)ti.seq_len, ti.tokens};
	cal_stats_set_calib(j.stats, &sc);
	emit(&j, "calibrate", -1);
	j.t_run = cal_now();
	CAL_TRY(cal_calib_run(cal, tk, err));
	CAL_TRY(layer_stats(&j, cal, -1, err));
	double run_s = cal_now() - j.t_run;
	phase_add(phases, "calibrate", run_s - j.t_export);
	if (cancelled(&j)) {
		st = interrupted(&j, err);
		goto fail;
	}
	/* free the engine's buffers before the finish writes the rest */
	cal_calib_free(cal);
	cal = NULL;

	/* finish: model-level tensors, side files, report, publish */
	emit(&j, "finish", -1);
	cal_exporter_add_phase(j.ex, "load", json_number_value(json_object_get(phases, "load")));
	cal_exporter_add_phase(j.ex, "tokenize",
			       json_number_value(json_object_get(phases, "tokenize")));
	cal_exporter_add_phase(j.ex, "calibrate", run_s - j.t_export);
	CAL_TRY(cal_exporter_finish(j.ex, j.stats, &export_report, err));
	emit(&j, "done", -1);
	if (ret_report_json) {
		*ret_report_json = summary(opts, d, eo.recipe_name, device, &ti, export_report,
					   phases, cal_now() - j.t_job);
		if (!*ret_report_json)
			/* published: report the job's success, not the summary's memory */
			*ret_report_json = strdup("{}");
	}
fail:
	cal_calib_free(cal);
	cal_calib_tokens_free(tk);
	cal_exporter_free(j.ex);
	cal_stats_free(j.stats);
	cal_backend_free(be);
	cal_catalog_free(cat);
	cal_checkpoint_free(ck);
	cal_plan_free(p);
	cal_recipe_free(r);
	cal_model_desc_free(d);
	json_decref(phases);
	free(export_report);
	free(device);
	return st;
}
