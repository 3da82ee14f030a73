/*
 * backend_cpu.c — the CPU back end: struct cal_backend_i over plain host
 * memory (256-byte aligned), the op table of the reference kernels
 * (kernels/<op>.c) and the thread splitter they run on.
 *
 * The reference code runs on N threads (pthreads started per op call: ops
 * are large, so the start cost is noise, and there is no pool to leak or to
 * fork with).  With 1 thread it *is* the reference.  Copies are synchronous
 * memmove, so the "asynchronous" uploads are done when they return and the
 * upload marks have nothing to wait for.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/backend_impl.h"
#include "kernels/ops.h"

const struct cal_ops cal_cpu_ops = {
#define CAL_OP(name, NAME, desc) .name = cal_cpu_##name,
#include "kernels/ops.def"
#undef CAL_OP
};

static enum cal_status cpu_init(struct cal_backend *be, struct cal_error *err)
{
	(void)be;
	(void)err;
	return CAL_OK;
}

static void cpu_fini(struct cal_backend *be)
{
	(void)be;
}

static const char *cpu_describe(struct cal_backend *be)
{
	return be->cpu_threads == 1 ? "cpu, 1 thread (reference)" : "cpu, multi-threaded";
}

static int cpu_supports_op(const struct cal_backend *be, enum cal_op_id op)
{
	(void)be;
	return (unsigned)op < CAL_OP_COUNT; /* every op has its reference */
}

static int cpu_supports(const struct cal_backend *be, enum cal_backend_feature f)
{
	(void)be;
	return f == CAL_BACKEND_FEATURE_HOST_MEMORY;
}

/* 256-byte aligned host memory; 0 or the errno. */
static int cpu_aligned_alloc(size_t bytes, void **ret)
{
	int rc = posix_memalign(ret, 256, bytes);
	if (rc)
		*ret = NULL;
	return rc;
}

static enum cal_status cpu_alloc(struct cal_backend *be, size_t bytes, void **ret,
				 struct cal_error *err)
{
	int rc = cpu_aligned_alloc(bytes, ret);
	(void)be;
	if (rc)
		return cal_error_set(err, CAL_ERR_NOMEM, "alloc: %zu bytes of host memory: %s",
				     bytes, strerror(rc));
	return CAL_OK;
}

static void cpu_dealloc(struct cal_backend *be, void *p)
{
	(void)be;
	free(p);
}

static enum cal_status cpu_memcpy(struct cal_backend *be, void *dst, const void *src, size_t n,
				  enum cal_copy_kind kind, struct cal_error *err)
{
	(void)be;
	(void)kind;
	(void)err;
	memmove(dst, src, n);
	return CAL_OK;
}

static enum cal_status cpu_memset(struct cal_backend *be, void *dst, int byte, size_t n,
				  struct cal_error *err)
{
	(void)be;
	(void)err;
	memset(dst, byte, n);
	return CAL_OK;
}

/* Nothing is ever queued: sync, upload_wait/_sync and the marks. */
static enum cal_status cpu_nothing_queued(struct cal_backend *be, struct cal_error *err)
{
	(void)be;
	(void)err;
	return CAL_OK;
}

static enum cal_status cpu_mark(struct cal_backend *be, unsigned slot, struct cal_error *err)
{
	(void)slot;
	return cpu_nothing_queued(be, err);
}

static enum cal_status cpu_host_alloc(struct cal_backend *be, size_t bytes, void **ret,
				      struct cal_error *err)
{
	int rc = cpu_aligned_alloc(bytes, ret);
	(void)be;
	if (rc)
		return cal_error_set(err, CAL_ERR_NOMEM, "host alloc: %zu bytes: %s", bytes,
				     strerror(rc));
	return CAL_OK;
}

static enum cal_status cpu_mem_info(struct cal_backend *be, uint64_t *ret_free,
				    uint64_t *ret_total, struct cal_error *err)
{
	long pg = sysconf(_SC_PAGESIZE), av = sysconf(_SC_AVPHYS_PAGES), tot = sysconf(_SC_PHYS_PAGES);
	(void)be;
	(void)err;
	*ret_free = pg > 0 && av > 0 ? (uint64_t)pg * (uint64_t)av : 0;
	*ret_total = pg > 0 && tot > 0 ? (uint64_t)pg * (uint64_t)tot : 0;
	return CAL_OK;
}

static enum cal_status cpu_upload_async(struct cal_backend *be, void *dst, const void *src,
					size_t n, struct cal_error *err)
{
	return cpu_memcpy(be, dst, src, n, CAL_COPY_H2D, err);
}

const struct cal_backend_i cal_cpu_backend_i = {
	.name = "cpu",
	.ops = &cal_cpu_ops,
	.init = cpu_init,
	.fini = cpu_fini,
	.describe = cpu_describe,
	.supports_op = cpu_supports_op,
	.supports = cpu_supports,
	.alloc = cpu_alloc,
	.dealloc = cpu_dealloc,
	.memcpy = cpu_memcpy,
	.memset = cpu_memset,
	.sync = cpu_nothing_queued,
	.host_alloc = cpu_host_alloc,
	.host_free = cpu_dealloc,
	.mem_info = cpu_mem_info,
	.upload_async = cpu_upload_async,
	.upload_wait = cpu_nothing_queued,
	.upload_sync = cpu_nothing_queued,
	.upload_mark = cpu_mark,
	.upload_mark_sync = cpu_mark,
};

/* ---- CPU splitter ------------------------------------------------------- */

struct cal_cpu_job {
	cal_cpu_range_fn fn;
	void *ctx;
	uint64_t begin, end;
	unsigned slot;
};

static void *cpu_job_main(void *p)
{
	struct cal_cpu_job *j = p;
	j->fn(j->ctx, j->begin, j->end, j->slot);
	return NULL;
}

unsigned cal_cpu_slots(const struct cal_backend *be, uint64_t n_items, uint64_t min_items)
{
	/* the back end's override (tests force splits with 1), else the op's */
	uint64_t per = be->cpu_min_items ? be->cpu_min_items : min_items;
	uint64_t k;
	if (per == 0)
		per = 1;
	k = n_items / per;
	if (k > be->cpu_threads)
		k = be->cpu_threads;
	return k ? (unsigned)k : 1u;
}

enum cal_status cal_cpu_parallel(const struct cal_backend *be, uint64_t n_items,
				 uint64_t min_items, cal_cpu_range_fn fn, void *ctx,
				 struct cal_error *err)
{
	unsigned k = cal_cpu_slots(be, n_items, min_items);
	struct cal_cpu_job jobs[CAL_CPU_MAX_THREADS];
	pthread_t tids[CAL_CPU_MAX_THREADS];
	int started[CAL_CPU_MAX_THREADS];

	(void)err;
	if (n_items == 0)
		return CAL_OK;
	for (unsigned i = 0; i < k; i++) {
		jobs[i].fn = fn;
		jobs[i].ctx = ctx;
		jobs[i].begin = n_items / k * i + (i < n_items % k ? i : n_items % k);
		jobs[i].end = jobs[i].begin + n_items / k + (i < n_items % k ? 1 : 0);
		jobs[i].slot = i;
		started[i] = 0;
	}
	for (unsigned i = 1; i < k; i++)
		started[i] = pthread_create(&tids[i], NULL, cpu_job_main, &jobs[i]) == 0;
	cpu_job_main(&jobs[0]);
	for (unsigned i = 1; i < k; i++) {
		if (started[i])
			pthread_join(tids[i], NULL);
		else
			cpu_job_main(&jobs[i]); /* could not start: run it here */
	}
	return CAL_OK;
}
