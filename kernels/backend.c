/*
 * backend.c — back-end selection, buffer functions, the CPU thread splitter,
 * the op-name table and the op dispatchers (generated from ops.def).
 *
 * The CPU back end runs the reference code of kernels/<op>.c on N threads
 * (pthreads started per op call: ops are large, so the start cost is noise,
 * and there is no pool to leak or to fork with).  With 1 thread it *is* the
 * reference.  CUDA-specific work lives in kernels/cuda/backend.cu.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/backend_impl.h"
#include "kernels/ops.h"

_Static_assert(CAL_OP_COUNT == CAL_OP_COUNT_EXPECTED,
	       "ops.def changed: update CAL_OP_COUNT_EXPECTED, the test case tables "
	       "(tests/numerics, tests/gpu) and docs/numerics.md");

#define CAL_CPU_MAX_THREADS 256u

static const char *const op_names[] = {
#define CAL_OP(name, NAME, desc) #name,
#include "kernels/ops.def"
#undef CAL_OP
};

static const char *const op_descs[] = {
#define CAL_OP(name, NAME, desc) desc,
#include "kernels/ops.def"
#undef CAL_OP
};

const char *cal_op_name(enum cal_op_id id)
{
	return (unsigned)id < CAL_OP_COUNT ? op_names[id] : NULL;
}

const char *cal_op_desc(enum cal_op_id id)
{
	return (unsigned)id < CAL_OP_COUNT ? op_descs[id] : NULL;
}

const struct cal_ops cal_cpu_ops = {
#define CAL_OP(name, NAME, desc) .name = cal_cpu_##name,
#include "kernels/ops.def"
#undef CAL_OP
};

#define CAL_OP(op, NAME, desc)                                                 \
	enum cal_status cal_op_##op(struct cal_backend *be,                    \
				    const struct cal_##op##_args *a,           \
				    struct cal_error *err)                     \
	{                                                                      \
		enum cal_status st;                                            \
		if (!be || !a)                                                 \
			return cal_error_set(err, CAL_ERR_INVALID,             \
					     "op %s: NULL back end or arguments", #op); \
		st = cal_check_##op(a, err);                                   \
		if (st < 0)                                                    \
			return cal_error_wrap(err, st, "op %s", #op);          \
		st = be->ops->op(be, a, err);                                  \
		if (st < 0)                                                    \
			return cal_error_wrap(err, st, "op %s on %s", #op, be->name); \
		return CAL_OK;                                                 \
	}
#include "kernels/ops.def"
#undef CAL_OP

/* ---- back ends ----------------------------------------------------------- */

int cal_backend_kind_from_name(const char *name, enum cal_backend_kind *ret)
{
	if (!strcmp(name, "cpu"))
		*ret = CAL_BACKEND_CPU;
	else if (!strcmp(name, "cuda"))
		*ret = CAL_BACKEND_CUDA;
	else
		return -1;
	return 0;
}

int cal_backend_cuda_built(void)
{
#ifdef CAL_KERNELS_CUDA
	return 1;
#else
	return 0;
#endif
}

enum cal_status cal_backend_cuda_device_count(int *ret, struct cal_error *err)
{
	*ret = 0;
#ifdef CAL_KERNELS_CUDA
	return cal_cuda_device_count(ret, err);
#else
	(void)err;
	return CAL_OK;
#endif
}

int cal_backend_cuda_available(void)
{
	int n = 0;
	if (cal_backend_cuda_device_count(&n, NULL) < 0)
		return 0;
	return n > 0;
}

enum cal_status cal_backend_init(enum cal_backend_kind kind, const struct cal_backend_opts *opts,
				 struct cal_backend **ret, struct cal_error *err)
{
	struct cal_backend *be;
	enum cal_status st = CAL_OK;

	*ret = NULL;
	be = calloc(1, sizeof(*be));
	if (!be)
		return cal_error_set(err, CAL_ERR_NOMEM, "back end: out of memory");
	be->kind = kind;
	if (opts) {
		be->cpu_threads = opts->cpu_threads;
		be->cpu_min_items = opts->cpu_min_items;
		be->cuda_device = opts->cuda_device;
	}
	if (be->cpu_threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		be->cpu_threads = n > 0 ? (unsigned)n : 1u;
	}
	if (be->cpu_threads > CAL_CPU_MAX_THREADS)
		be->cpu_threads = CAL_CPU_MAX_THREADS;

	switch (kind) {
	case CAL_BACKEND_CPU:
		be->name = "cpu";
		be->ops = &cal_cpu_ops;
		break;
	case CAL_BACKEND_CUDA:
		be->name = "cuda";
#ifdef CAL_KERNELS_CUDA
		be->ops = &cal_cuda_ops;
		st = cal_cuda_backend_init(be, err);
		if (st < 0)
			goto fail;
		break;
#else
		st = cal_error_set(err, CAL_ERR_UNSUPPORTED,
				   "back end 'cuda': this calibd was built without CUDA");
		goto fail;
#endif
	default:
		st = cal_error_set(err, CAL_ERR_INVALID, "back end: unknown kind %d", (int)kind);
		goto fail;
	}
	*ret = be;
	return CAL_OK;
fail:
	cal_backend_free(be);
	return st;
}

void cal_backend_free(struct cal_backend *be)
{
	if (!be)
		return;
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA)
		cal_cuda_backend_fini(be);
#endif
	free(be);
}

const char *cal_backend_describe(struct cal_backend *be)
{
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA)
		return cal_cuda_describe(be);
#endif
	return be->cpu_threads == 1 ? "cpu, 1 thread (reference)" : "cpu, multi-threaded";
}

enum cal_status cal_backend_alloc(struct cal_backend *be, size_t bytes, void **ret,
				  struct cal_error *err)
{
	*ret = NULL;
	if (bytes == 0)
		return cal_error_set(err, CAL_ERR_INVALID, "alloc: zero bytes");
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA)
		return cal_cuda_alloc(be, bytes, ret, err);
#endif
	int rc = posix_memalign(ret, 256, bytes);
	if (rc) {
		*ret = NULL;
		return cal_error_set(err, CAL_ERR_NOMEM, "alloc: %zu bytes of host memory: %s",
				     bytes, strerror(rc));
	}
	return CAL_OK;
}

void cal_backend_dealloc(struct cal_backend *be, void *p)
{
	if (!p)
		return;
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA) {
		cal_cuda_dealloc(be, p);
		return;
	}
#endif
	free(p);
}

enum cal_status cal_backend_upload(struct cal_backend *be, void *dst, const void *src, size_t n,
				   struct cal_error *err)
{
	if (n == 0)
		return CAL_OK;
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA)
		return cal_cuda_memcpy(be, dst, src, n, CAL_CUDA_H2D, err);
#endif
	(void)err;
	memmove(dst, src, n);
	return CAL_OK;
}

enum cal_status cal_backend_download(struct cal_backend *be, void *dst, const void *src, size_t n,
				     struct cal_error *err)
{
	if (n == 0)
		return CAL_OK;
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA)
		return cal_cuda_memcpy(be, dst, src, n, CAL_CUDA_D2H, err);
#endif
	(void)err;
	memmove(dst, src, n);
	return CAL_OK;
}

enum cal_status cal_backend_copy(struct cal_backend *be, void *dst, const void *src, size_t n,
				 struct cal_error *err)
{
	if (n == 0)
		return CAL_OK;
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA)
		return cal_cuda_memcpy(be, dst, src, n, CAL_CUDA_D2D, err);
#endif
	(void)err;
	memmove(dst, src, n);
	return CAL_OK;
}

enum cal_status cal_backend_memset(struct cal_backend *be, void *dst, int byte, size_t n,
				   struct cal_error *err)
{
	if (n == 0)
		return CAL_OK;
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA)
		return cal_cuda_memset(be, dst, byte, n, err);
#endif
	(void)err;
	memset(dst, byte, n);
	return CAL_OK;
}

enum cal_status cal_backend_sync(struct cal_backend *be, struct cal_error *err)
{
#ifdef CAL_KERNELS_CUDA
	if (be->kind == CAL_BACKEND_CUDA)
		return cal_cuda_sync(be, err);
#endif
	(void)be;
	(void)err;
	return CAL_OK;
}

enum cal_status cal_nonfinite_reset(struct cal_backend *be, struct cal_nonfinite *nf,
				    struct cal_error *err)
{
	const struct cal_nonfinite init = {0, CAL_NONFINITE_NONE};
	return cal_backend_upload(be, nf, &init, sizeof(init), err);
}

enum cal_status cal_nvfp4_input_scale(float amax, enum cal_div_mode mode, float *ret,
				      struct cal_error *err)
{
	*ret = 0.0f;
	if (!(amax > 0.0f) || amax > 3.4e38f)
		return cal_error_set(err, CAL_ERR_NUMERIC,
				     "NVFP4 input_scale: activation amax %g is not finite and > 0 "
				     "(the quantizer saw no data, or only zeros)", (double)amax);
	*ret = cal_nvfp4_scale2(amax, mode);
	return CAL_OK;
}

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
