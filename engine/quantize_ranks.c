/*
 * quantize_ranks.c — the export of a job over several ranks
 * (docs/expert_parallel.md "Export"), through the calibration's rank hooks
 * (engine/calib.h): each rank r > 0 quantizes and writes its routed
 * experts on its own back end into the output of global rank 0's exporter.
 *
 *   start  rank 0 broadcasts its output's temporary directory name and
 *          layout hash; every other rank opens its part exporter (the same
 *          plan) and attaches to that directory;
 *   layer  a part takes the layer's statistics from its own engine (every
 *          rank holds the same) and queues the layer to its pipeline;
 *   end    every part waits for its writes and fsyncs them, then the parts'
 *          reports go to rank 0 (counts, then alltoallv): rank 0 can only
 *          pass this collective once every rank has finished writing, and a
 *          rank that failed has aborted the world instead, so rank 0's
 *          collective fails and nothing is published.
 */
#include "engine/quantize_internal.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/comm.h"

struct qpart {
	struct cal_exporter *ex;        /* set by the rank's thread (atomic) */
	struct cal_stats *stats;
};

struct cal_qranks {
	const struct cal_job *job;
	struct cal_export_opts eo;
	struct cal_exporter *lead;
	unsigned first, local;
	struct qpart part[CAL_CALIB_MAX_RANKS];
	struct cal_calib_rank_hooks hooks;
};

/* What rank 0 broadcasts at the start. */
struct start_msg {
	uint64_t layout;
	char tmp_name[256];
};

/* host -> collective on a back-end copy -> host (comm.h's buffers live in
 * the rank's back end).  bcast: broadcast from rank 0; else alltoallv. */
static enum cal_status bounce(struct cal_comm *comm, int bcast, void *send, size_t n_send,
			      const uint64_t *sb, void *recv, size_t n_recv, const uint64_t *rb,
			      struct cal_error *err)
{
	struct cal_backend *be = cal_comm_backend(comm);
	void *ds = NULL, *dr = NULL;
	enum cal_status st;
	CAL_TRY(cal_backend_alloc(be, n_send ? n_send : 8, &ds, err));
	if (!bcast)
		CAL_TRY(cal_backend_alloc(be, n_recv ? n_recv : 8, &dr, err));
	if (n_send)
		CAL_TRY(cal_backend_upload(be, ds, send, n_send, err));
	CAL_TRY(bcast ? cal_comm_broadcast(comm, ds, n_send, 0, err)
		      : cal_comm_alltoallv(comm, ds, sb, dr, rb, err));
	if (bcast)
		CAL_TRY(cal_backend_download(be, send, ds, n_send, err));
	else if (n_recv)
		CAL_TRY(cal_backend_download(be, recv, dr, n_recv, err));
fail:
	cal_backend_dealloc(be, ds);
	cal_backend_dealloc(be, dr);
	return st;
}

static enum cal_status rank_start(void *ctx, struct cal_calib *c, struct cal_comm *comm,
				  struct cal_error *err)
{
	struct cal_qranks *q = ctx;
	const struct cal_job *job = q->job;
	unsigned rank = cal_calib_rank(c, NULL);
	struct qpart *p = &q->part[rank - q->first];
	struct start_msg m;
	enum cal_status st = CAL_OK;
	memset(&m, 0, sizeof(m));
	if (rank == 0) {
		const char *tn = cal_exporter_tmp_name(q->lead);
		if (!tn || strlen(tn) >= sizeof(m.tmp_name))
			return cal_error_set(err, CAL_ERR_INVALID, "export: no temporary directory name "
					     "for the ranks (at most %zu bytes)", sizeof(m.tmp_name) - 1);
		strcpy(m.tmp_name, tn);
		m.layout = cal_exporter_layout_hash(q->lead);
	} else {
		struct cal_export_opts eo = q->eo;
		struct cal_exporter *ex = NULL;
		eo.rank = rank;
		CAL_TRY(cal_stats_init(&p->stats, err));
		CAL_TRY(cal_exporter_open(cal_job_model(job), cal_job_checkpoint(job),
					  cal_job_catalog(job), cal_job_plan(job),
					  cal_comm_backend(comm), &eo, &ex, err));
		__atomic_store_n(&p->ex, ex, __ATOMIC_RELEASE);
	}
	CAL_TRY(bounce(comm, 1, &m, sizeof(m), NULL, NULL, 0, NULL, err));
	m.tmp_name[sizeof(m.tmp_name) - 1] = '\0';
	if (rank)
		st = cal_exporter_attach(p->ex, m.tmp_name, m.layout, err);
fail:
	return st;
}

static enum cal_status rank_layer(void *ctx, struct cal_calib *c, int32_t layer,
				  struct cal_error *err)
{
	struct cal_qranks *q = ctx;
	unsigned rank = cal_calib_rank(c, NULL);
	struct qpart *p = &q->part[rank - q->first];
	if (rank == 0) /* rank 0's exporter is fed by the job's on_layer */
		return CAL_OK;
	enum cal_status st = cal_quantize_layer_stats(cal_job_plan(q->job),
						      q->eo.per_expert_input_amax, c, layer,
						      p->stats, err);
	return st < 0 ? st : cal_exporter_layer(p->ex, layer, p->stats, err);
}

static enum cal_status rank_end(void *ctx, struct cal_calib *c, struct cal_comm *comm,
				struct cal_error *err)
{
	struct cal_qranks *q = ctx;
	unsigned world, rank = cal_calib_rank(c, &world);
	uint64_t sb[CAL_CALIB_MAX_RANKS] = {0}, rb[CAL_CALIB_MAX_RANKS] = {0}, n_recv = 0;
	void *mine = NULL;
	unsigned char *all = NULL;
	size_t n = 0;
	enum cal_status st;
	if (rank)
		CAL_TRY(cal_exporter_part_done(q->part[rank - q->first].ex, &mine, &n, err));
	/* every part's report to rank 0 */
	sb[0] = n;
	CAL_TRY(cal_comm_alltoall_counts(comm, sb, rb, err));
	for (unsigned r = 0; r < world; r++)
		n_recv += rb[r];
	if (n_recv && !(all = malloc(n_recv))) {
		st = cal_error_set(err, CAL_ERR_NOMEM, "export: out of memory");
		goto fail;
	}
	CAL_TRY(bounce(comm, 0, mine, n, sb, all, n_recv, rb, err));
	for (uint64_t r = 1, at = rb[0]; rank == 0 && r < world; at += rb[r], r++)
		CAL_TRY(cal_exporter_add_part(q->lead, (unsigned)r, all + at, rb[r], err));
fail:
	free(mine);
	free(all);
	return st;
}

enum cal_status cal_qranks_new(const struct cal_job *job, const struct cal_export_opts *eo,
			       struct cal_exporter *lead, struct cal_qranks **ret,
			       struct cal_error *err)
{
	struct cal_qranks *q = calloc(1, sizeof(*q));
	*ret = NULL;
	if (!q)
		return cal_error_set(err, CAL_ERR_NOMEM, "quantize: out of memory");
	q->job = job;
	q->eo = *eo;
	q->eo.world = cal_job_ranks_world(job);
	q->eo.rank = 0;
	q->lead = lead;
	q->first = cal_job_options(job)->ranks.first;
	q->local = cal_job_ranks_local(job);
	q->hooks = (struct cal_calib_rank_hooks){rank_start, rank_layer, rank_end, q};
	*ret = q;
	return CAL_OK;
}

const struct cal_calib_rank_hooks *cal_qranks_hooks(const struct cal_qranks *q)
{
	return q ? &q->hooks : NULL;
}

uint64_t cal_qranks_bytes_written(const struct cal_qranks *q)
{
	uint64_t n = 0;
	for (unsigned i = 0; q && i < q->local; i++) {
		struct cal_exporter *ex = __atomic_load_n(&q->part[i].ex, __ATOMIC_ACQUIRE);
		if (ex)
			n += cal_exporter_bytes_written(ex);
	}
	return n;
}

void cal_qranks_free(struct cal_qranks *q)
{
	if (!q)
		return;
	for (unsigned i = 0; i < q->local; i++) {
		cal_exporter_free(q->part[i].ex);
		cal_stats_free(q->part[i].stats);
	}
	free(q);
}
