/*
 * backend.h — compute back ends (cpu, cuda) and how buffers are addressed.
 *
 * A struct cal_backend owns one execution context: the CPU back end a
 * thread count, the CUDA back end a device and a stream.  Every pointer that
 * an op receives lives in the back end's memory: plain host memory for cpu,
 * device memory (cudaMalloc) for cuda.  Buffers are obtained with
 * cal_backend_alloc() and moved with cal_backend_upload()/_download()/_copy().
 * Ops on the CUDA back end are asynchronous on the back end's stream;
 * cal_backend_sync() waits and reports errors of work already queued; the
 * upload/download/copy functions are synchronous.
 *
 * Nothing here touches CUDA until cal_backend_init(CAL_BACKEND_CUDA) or
 * cal_backend_cuda_device_count() is called (never in a constructor), and a
 * CUDA failure is returned as CAL_ERR_DEVICE with CUDA's error string; the
 * process is never aborted.  A build without CUDA answers CAL_ERR_UNSUPPORTED.
 */
#ifndef CAL_KERNELS_BACKEND_H
#define CAL_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum cal_backend_kind {
	CAL_BACKEND_CPU = 0,
	CAL_BACKEND_CUDA = 1,
};

struct cal_backend_opts {
	unsigned cpu_threads;   /* cpu: worker threads, 0 = online CPUs (max 256) */
	uint64_t cpu_min_items; /* cpu: smallest work share per thread in the op's
				   items, 0 = the op's default (~256 KiB of input);
				   tests set 1 to force splitting small inputs */
	int cuda_device;        /* cuda: device ordinal */
};

/* What a caller may ask a back end before relying on it
 * (cal_backend_supports; ops: cal_backend_supports_op in ops.h). */
enum cal_backend_feature {
	CAL_BACKEND_FEATURE_HOST_MEMORY = 0,  /* buffers are host memory the caller may read */
	CAL_BACKEND_FEATURE_PINNED_HOST,      /* cal_backend_host_alloc gives page-locked memory */
	CAL_BACKEND_FEATURE_ASYNC_UPLOAD,     /* cal_backend_upload_async overlaps with ops */
	CAL_BACKEND_FEATURE_COUNT
};

struct cal_ops;
struct cal_backend_i;

struct cal_backend {
	enum cal_backend_kind kind;
	const char *name;           /* "cpu" or "cuda" */
	const struct cal_backend_i *iface; /* the implementation (backend_impl.h) */
	const struct cal_ops *ops;  /* the op table of this back end */
	unsigned cpu_threads;       /* cpu: threads used by ops (1 = the reference) */
	uint64_t cpu_min_items;
	int cuda_device;
	void *impl;                 /* cuda: stream and device properties */
	void *mem;                  /* allocation accounting (backend.c) */
};

/* Parses "cpu" / "cuda"; returns 0, or -1 for anything else. */
int cal_backend_kind_from_name(const char *name, enum cal_backend_kind *ret);

/*
 * Creates a back end (opts may be NULL for defaults).  *ret is owned by the
 * caller (cal_backend_free).  Errors: CAL_ERR_UNSUPPORTED (built without
 * CUDA), CAL_ERR_DEVICE (no such device, driver error), CAL_ERR_NOMEM.
 */
enum cal_status cal_backend_init(enum cal_backend_kind kind, const struct cal_backend_opts *opts,
				 struct cal_backend **ret, struct cal_error *err);

/* Waits for queued work, destroys the back end; NULL is a no-op. */
void cal_backend_free(struct cal_backend *be);

/* 1 when this build has the CUDA back end (says nothing about devices). */
int cal_backend_cuda_built(void);

/*
 * Number of CUDA devices (initialises the CUDA runtime: call it in main or a
 * worker, never before fork()).  No driver / no device gives 0 and CAL_OK;
 * a build without CUDA gives 0.
 */
enum cal_status cal_backend_cuda_device_count(int *ret, struct cal_error *err);

/* 1 when the CUDA back end is built and at least one device is present. */
int cal_backend_cuda_available(void);

/* One line describing the device ("NVIDIA H100 80GB HBM3, sm_90, 132 SMs"
 * or "cpu, 8 threads"); owned by be. */
const char *cal_backend_describe(struct cal_backend *be);

/* 1 when be has feature f, else 0 (also for an unknown f). */
int cal_backend_supports(const struct cal_backend *be, enum cal_backend_feature f);

/* Allocates bytes (> 0) of back-end memory, 256-byte aligned.  *ret is freed
 * with cal_backend_dealloc. */
enum cal_status cal_backend_alloc(struct cal_backend *be, size_t bytes, void **ret,
				  struct cal_error *err);
/* Frees memory from cal_backend_alloc; NULL is a no-op. */
void cal_backend_dealloc(struct cal_backend *be, void *p);
/* host -> back end, back end -> host, back end -> back end; synchronous. */
enum cal_status cal_backend_upload(struct cal_backend *be, void *dst, const void *src, size_t n,
				   struct cal_error *err);
enum cal_status cal_backend_download(struct cal_backend *be, void *dst, const void *src, size_t n,
				     struct cal_error *err);
/* A new buffer of n bytes (at least 1) holding a copy of host memory src. */
enum cal_status cal_backend_alloc_upload(struct cal_backend *be, const void *src, size_t n,
					 void **ret, struct cal_error *err);
enum cal_status cal_backend_copy(struct cal_backend *be, void *dst, const void *src, size_t n,
				 struct cal_error *err);
enum cal_status cal_backend_memset(struct cal_backend *be, void *dst, int byte, size_t n,
				   struct cal_error *err);
/* Waits until queued ops finished; reports asynchronous device errors. */
enum cal_status cal_backend_sync(struct cal_backend *be, struct cal_error *err);

/* --- memory accounting, staging and overlapped uploads ------------------ */

/*
 * Page-locked host memory for staging uploads (cudaHostAlloc on CUDA, so
 * that cal_backend_upload_async from it runs at full bus speed without
 * blocking the caller; 256-byte aligned malloc on the CPU).  Not counted in
 * the back end's memory statistics.  Freed with cal_backend_host_free (NULL:
 * no-op).  Errors: CAL_ERR_NOMEM, CAL_ERR_DEVICE.
 */
enum cal_status cal_backend_host_alloc(struct cal_backend *be, size_t bytes, void **ret,
				       struct cal_error *err);
void cal_backend_host_free(struct cal_backend *be, void *p);

/* Free and total memory of the back end's device (cudaMemGetInfo); on the
 * CPU the available and total physical memory. */
enum cal_status cal_backend_mem_info(struct cal_backend *be, uint64_t *ret_free,
				     uint64_t *ret_total, struct cal_error *err);

/* Bytes currently held through cal_backend_alloc, the most held at once
 * since the back end was created (or the last reset), and the cap. */
struct cal_backend_mem {
	uint64_t current, peak, limit;
};
void cal_backend_mem_stats(struct cal_backend *be, struct cal_backend_mem *ret);
void cal_backend_mem_reset_peak(struct cal_backend *be);
/* Caps cal_backend_alloc: an allocation that would take the bytes held
 * above `bytes` fails with CAL_ERR_NOMEM naming the cap (0: no cap).  On the
 * CPU this emulates a GPU smaller than the model. */
void cal_backend_set_mem_limit(struct cal_backend *be, uint64_t bytes);

/*
 * host -> back end on the back end's copy stream, asynchronous: returns
 * before the copy is done.  src must stay unchanged until
 * cal_backend_upload_sync() returned (best from cal_backend_host_alloc;
 * other host memory makes the copy synchronous).  The CPU back end copies at
 * once.  cal_backend_upload_wait() makes every op queued after it wait for
 * the uploads queued before it, without blocking the caller;
 * cal_backend_upload_sync() blocks until they are done.  Uploads may be
 * queued from another thread than the one running ops.
 */
enum cal_status cal_backend_upload_async(struct cal_backend *be, void *dst, const void *src,
					 size_t n, struct cal_error *err);
enum cal_status cal_backend_upload_wait(struct cal_backend *be, struct cal_error *err);
enum cal_status cal_backend_upload_sync(struct cal_backend *be, struct cal_error *err);
/* Staging rings: cal_backend_upload_mark() remembers the copy stream's
 * position under `slot` (< CAL_BACKEND_UPLOAD_MARKS);
 * cal_backend_upload_mark_sync() blocks until the uploads queued before
 * that mark are done, so the host buffer they read can be refilled while
 * later uploads still run.  No-ops on the CPU. */
#define CAL_BACKEND_UPLOAD_MARKS 8
enum cal_status cal_backend_upload_mark(struct cal_backend *be, unsigned slot,
					struct cal_error *err);
enum cal_status cal_backend_upload_mark_sync(struct cal_backend *be, unsigned slot,
					     struct cal_error *err);

/* --- CPU back end internals shared by kernels/<op>.c ------------------- */

/* fn(ctx, begin, end, slot): process items [begin, end); slot < threads. */
typedef void (*cal_cpu_range_fn)(void *ctx, uint64_t begin, uint64_t end, unsigned slot);

/* Number of slots cal_cpu_parallel will use for n_items (>= 1). */
unsigned cal_cpu_slots(const struct cal_backend *be, uint64_t n_items, uint64_t min_items);

/* Runs fn over [0, n_items) split into cal_cpu_slots() contiguous ranges, one
 * per thread (the caller's thread takes the first).  Errors: CAL_ERR_NOMEM
 * when a thread cannot be started (then nothing ran partially: the ranges
 * of threads that could not start run on the caller's thread). */
enum cal_status cal_cpu_parallel(const struct cal_backend *be, uint64_t n_items,
				 uint64_t min_items, cal_cpu_range_fn fn, void *ctx,
				 struct cal_error *err);

#ifdef __cplusplus
}
#endif

#endif
