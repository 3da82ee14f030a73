/*
 * parts.c — one export over several ranks (docs/expert_parallel.md,
 * "Export").
 *
 * Every rank of a job has an exporter with the same plan, so the same
 * tensor list, shard layout and offsets.  Rank r quantizes and writes the
 * routed experts it owns in the calibration, E r / R .. E (r + 1) / R - 1 of
 * every MoE layer, on its own back end (its pipeline, pipeline.c, skips
 * every other linear: cal_export_mine); rank 0, the leader, also
 * everything else (attention, routers, norms, dense and shared experts,
 * copies, KV scales, the model-level tensors, GPT-OSS's fused BMM experts,
 * whose one weight amax spans every expert), opens the output and
 * publishes it.  The other ranks' exporters (parts) open no directory:
 * their writer attaches to the leader's temporary directory and pwrites
 * their tensors at the planned offsets (engine/st/st_writer.h).
 *
 * A part's report (cal_exporter_part_done) is one flat buffer, native
 * byte order (every rank of a job runs the same build on the same kind of
 * machine):
 *   struct part_head
 *   n_sums x {signal, noise, weight amax} (double) for each quantized
 *     linear it owns, in the plan's order
 *   n_put x u64: the indices, in declaration order, of the tensors it wrote
 * The leader takes it at finish (cal_export_parts_merge): the amax and the
 * SQNR sums go where its own stage would have put them, so the report's
 * weight_sqnr — entries, minimum and mean summed in one fixed order — is
 * the one-rank report; the tensors count as written, so commit() checks
 * that every declared tensor was written by some rank.
 */
#include "export_internal.h"

#include <stdlib.h>
#include <string.h>

#define PART_MAGIC 0x315452505843414cull /* "LACXPRT1" */

struct part_head {
	uint64_t magic, rank, layout, bytes, weights, n_sums, n_put;
	double quantize_s;
};

enum cal_status cal_export_parts_init(struct cal_exporter *ex, struct cal_error *err)
{
	struct xparts *xp = &ex->xp;
	unsigned world = ex->opts.world ? ex->opts.world : 1, rank = ex->opts.rank;
	uint64_t E = ex->d->num_experts > 0 ? (uint64_t)ex->d->num_experts : 0;
	if (rank >= world)
		return cal_error_set(err, CAL_ERR_INVALID, "export: rank %u of %u", rank, world);
	xp->rank = rank;
	xp->world = world;
	xp->lo = (int64_t)(E * rank / world);
	xp->hi = (int64_t)(E * (rank + 1) / world);
	if (world > 1 && rank == 0) {
		xp->res = calloc(world, sizeof(*xp->res));
		xp->res_n = calloc(world, sizeof(*xp->res_n));
		if (!xp->res || !xp->res_n)
			return cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
	}
	return CAL_OK;
}

void cal_export_parts_free(struct cal_exporter *ex)
{
	struct xparts *xp = &ex->xp;
	for (unsigned r = 0; xp->res && r < xp->world; r++)
		free(xp->res[r]);
	free(xp->res);
	free(xp->res_n);
	xp->res = NULL;
	xp->res_n = NULL;
}

const char *cal_exporter_tmp_name(const struct cal_exporter *ex)
{
	return ex->w && !ex->xp.rank ? cal_st_writer_tmp_name(ex->w) : NULL;
}

uint64_t cal_exporter_layout_hash(const struct cal_exporter *ex)
{
	return ex->w ? cal_st_writer_layout_hash(ex->w) : 0;
}

enum cal_status cal_exporter_attach(struct cal_exporter *ex, const char *tmp_name,
				    uint64_t layout_hash, struct cal_error *err)
{
	if (!ex->xp.rank || ex->dead)
		return cal_error_set(err, CAL_ERR_INVALID, "export: attach() is for a live part");
	enum cal_status st = cal_st_writer_attach(ex->w, tmp_name, layout_hash, err);
	if (st < 0)
		ex->dead = 1;
	return st;
}

/* Whether x is a quantized linear of the experts [lo, hi). */
static int owned_q(const struct xlin *x, int64_t lo, int64_t hi)
{
	return x->expert >= lo && x->expert < hi && x->fmt != CAL_QFMT_NONE;
}

enum cal_status cal_exporter_part_done(struct cal_exporter *ex, void **ret, size_t *ret_bytes,
				       struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	struct xparts *xp = &ex->xp;
	*ret = NULL;
	*ret_bytes = 0;
	if (!xp->rank || ex->dead || ex->published)
		return cal_error_set(err, CAL_ERR_INVALID, "export: part_done() is for a live part");
	for (int64_t L = 0; L < ex->d->num_layers; L++)
		if (!ex->layer_done[L]) {
			st = cal_error_set(err, CAL_ERR_INVALID, "export: layer %lld was never "
					   "exported", (long long)L);
			goto fail;
		}
	CAL_TRY(cal_export_pipe_drain(ex, err));
	CAL_TRY(cal_st_writer_part_close(ex->w, err));
	size_t n_sums = 0, n_put = cal_st_writer_put_indices(ex->w, NULL);
	for (size_t i = 0; i < ex->n_lin; i++)
		n_sums += owned_q(&ex->lin[i], xp->lo, xp->hi);
	size_t n = sizeof(struct part_head) + n_sums * 3 * sizeof(double) + n_put * 8;
	unsigned char *b = malloc(n);
	if (!b) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
		goto fail;
	}
	struct part_head h = {PART_MAGIC, xp->rank, cal_st_writer_layout_hash(ex->w),
			      cal_export_pipe_written(ex), ex->pipe.n_quantized, n_sums, n_put,
			      ex->pipe.t_quant};
	memcpy(b, &h, sizeof(h));
	double *s = (double *)(b + sizeof(h));
	for (size_t i = 0, k = 0; i < ex->n_lin; i++) {
		if (!owned_q(&ex->lin[i], xp->lo, xp->hi))
			continue;
		s[3 * k] = ex->pipe.sq[2 * i];
		s[3 * k + 1] = ex->pipe.sq[2 * i + 1];
		s[3 * k + 2] = (double)ex->lin[i].wamax;
		k++;
	}
	cal_st_writer_put_indices(ex->w, (uint64_t *)(s + 3 * n_sums));
	ex->published = 1; /* done: only free() is left */
	*ret = b;
	*ret_bytes = n;
	return CAL_OK;
fail:
	ex->dead = 1;
	return st;
}

enum cal_status cal_exporter_add_part(struct cal_exporter *ex, unsigned rank, const void *data,
				      size_t n, struct cal_error *err)
{
	struct xparts *xp = &ex->xp;
	if (xp->rank || !xp->res || rank == 0 || rank >= xp->world || xp->res[rank])
		return cal_error_set(err, CAL_ERR_INVALID, "export: a report of rank %u %s", rank,
				     xp->res && rank && rank < xp->world && xp->res[rank] ?
				     "came twice" : "is not expected here");
	if (!(xp->res[rank] = malloc(n ? n : 1)))
		return cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
	memcpy(xp->res[rank], data, n);
	xp->res_n[rank] = n;
	return CAL_OK;
}

/* Rank r's report into the leader's tables; appends its counters. */
static enum cal_status merge_one(struct cal_exporter *ex, unsigned r, json_t *cnt[3],
				 struct cal_error *err)
{
	const struct xparts *xp = &ex->xp;
	const unsigned char *b = xp->res[r];
	size_t n = xp->res_n[r];
	struct part_head h;
	if (!b)
		return cal_error_set(err, CAL_ERR_INTERNAL, "export: rank %u did not report its "
				     "part", r);
	if (n >= sizeof(h))
		memcpy(&h, b, sizeof(h));
	if (n < sizeof(h) || h.magic != PART_MAGIC || h.rank != r || h.n_sums > n || h.n_put > n ||
	    n != sizeof(h) + h.n_sums * 3 * sizeof(double) + h.n_put * 8)
		return cal_error_set(err, CAL_ERR_INTERNAL, "export: the report of rank %u is "
				     "malformed", r);
	if (h.layout != cal_st_writer_layout_hash(ex->w))
		return cal_error_set(err, CAL_ERR_INTERNAL, "export: rank %u planned another output "
				     "layout", r);
	uint64_t E = ex->d->num_experts > 0 ? (uint64_t)ex->d->num_experts : 0;
	int64_t lo = (int64_t)(E * r / xp->world), hi = (int64_t)(E * (r + 1) / xp->world);
	const double *s = (const double *)(b + sizeof(h));
	uint64_t k = 0;
	for (size_t i = 0; i < ex->n_lin; i++) {
		struct xlin *x = &ex->lin[i];
		if (!owned_q(x, lo, hi))
			continue;
		if (k == h.n_sums)
			break;
		ex->pipe.sq[2 * i] = s[3 * k];
		ex->pipe.sq[2 * i + 1] = s[3 * k + 1];
		x->wamax = (float)s[3 * k + 2];
		k++;
	}
	size_t want = 0;
	for (size_t i = 0; i < ex->n_lin; i++)
		want += owned_q(&ex->lin[i], lo, hi);
	if (k != h.n_sums || want != h.n_sums)
		return cal_error_set(err, CAL_ERR_INTERNAL, "export: rank %u reported %llu quantized "
				     "linears, its experts have %zu", r,
				     (unsigned long long)h.n_sums, want);
	CAL_TRY_RET(cal_st_writer_put_elsewhere(ex->w, (const uint64_t *)(s + 3 * h.n_sums),
						(size_t)h.n_put, err));
	__atomic_add_fetch(&ex->pipe.written, h.bytes, __ATOMIC_RELAXED);
	json_array_append_new(cnt[0], json_integer((json_int_t)h.bytes));
	json_array_append_new(cnt[1], json_integer((json_int_t)h.weights));
	json_array_append_new(cnt[2], json_real(h.quantize_s));
	return CAL_OK;
}

enum cal_status cal_export_parts_merge(struct cal_exporter *ex, struct cal_error *err)
{
	enum cal_status st = CAL_OK;
	const struct xparts *xp = &ex->xp;
	static const char *const keys[3] = {"export_bytes", "export_weights", "export_quantize_s"};
	json_t *cnt[3] = {json_array(), json_array(), json_array()};
	if (xp->world <= 1)
		goto fail; /* st == CAL_OK: nothing to merge */
	if (!ex->ranks)
		ex->ranks = json_object();
	if (!cnt[0] || !cnt[1] || !cnt[2] || !ex->ranks) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
		goto fail;
	}
	/* the leader's own share first, before the others' bytes count */
	json_array_append_new(cnt[0], json_integer((json_int_t)cal_export_pipe_written(ex)));
	json_array_append_new(cnt[1], json_integer((json_int_t)ex->pipe.n_quantized));
	json_array_append_new(cnt[2], json_real(ex->pipe.t_quant));
	for (unsigned r = 1; r < xp->world; r++)
		CAL_TRY(merge_one(ex, r, cnt, err));
	for (int k = 0; k < 3; k++) {
		json_object_set_new(ex->ranks, keys[k], cnt[k]);
		cnt[k] = NULL;
	}
fail:
	for (int k = 0; k < 3; k++)
		json_decref(cnt[k]);
	return st;
}
