/*
 * backend.c — back-end selection, the buffer functions common to every back
 * end (argument checks, allocation accounting, the memory cap), the op-name
 * table and the op dispatchers (generated from ops.def).
 *
 * Back ends are peers behind struct cal_backend_i (backend_impl.h): the CPU
 * one in kernels/backend_cpu.c, the CUDA one in kernels/cuda/backend.cu,
 * loaded from libcalibd-cuda.so on first use.  Nothing below the selection
 * in cal_backend_init asks which back end it runs.
 */
#include <dlfcn.h>
#include <limits.h>
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

int cal_backend_supports_op(const struct cal_backend *be, enum cal_op_id op)
{
	return (unsigned)op < CAL_OP_COUNT && be->iface->supports_op(be, op);
}

int cal_backend_supports(const struct cal_backend *be, enum cal_backend_feature f)
{
	return (unsigned)f < CAL_BACKEND_FEATURE_COUNT && be->iface->supports(be, f);
}

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
		if (!be->iface->supports_op(be, CAL_OPID_##NAME))              \
			return cal_error_set(err, CAL_ERR_UNSUPPORTED,         \
					     "op %s: not implemented by the %s back end", \
					     #op, be->name);                   \
		st = be->ops->op(be, a, err);                                  \
		if (st < 0)                                                    \
			return cal_error_wrap(err, st, "op %s on %s", #op, be->name); \
		return CAL_OK;                                                 \
	}
#include "kernels/ops.def"
#undef CAL_OP

/* ---- the CUDA module (dlopen) --------------------------------------------- */

#ifdef CAL_KERNELS_CUDA
static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static const struct cal_cuda_module *cuda_mod;
static void *cuda_handle; /* for cal_backend_cuda_symbol */
static char cuda_why[1024]; /* why the module could not be loaded */

static int cuda_try(const char *path)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *e = dlerror();
		/* keep the first reason that is not "no such file" */
		if (!cuda_why[0] || strstr(cuda_why, "No such file"))
			snprintf(cuda_why, sizeof(cuda_why), "%s", e ? e : path);
		return -1;
	}
	cal_cuda_module_get_fn get = (cal_cuda_module_get_fn)dlsym(h, CAL_CUDA_MODULE_SYMBOL);
	const struct cal_cuda_module *m = get ? get() : NULL;
	if (!m || m->abi != CAL_CUDA_MODULE_ABI || m->op_count != CAL_OP_COUNT ||
	    m->ops_size != sizeof(struct cal_ops) || m->iface_size != sizeof(struct cal_backend_i)) {
		snprintf(cuda_why, sizeof(cuda_why), "%s is from another calibd build", path);
		dlclose(h);
		return -1;
	}
	cuda_mod = m; /* the handle stays open for the life of the process */
	cuda_handle = h;
	return 0;
}

/* Looks for libcalibd-cuda.so: $CALIBD_CUDA_MODULE, the build tree, next to
 * the executable, ../lib/calibd/ from it, the install directory. */
static void cuda_load(void)
{
	const char *env = getenv("CALIBD_CUDA_MODULE");
	if (env && *env) {
		cuda_try(env);
		return;
	}
	if (cuda_try(CAL_CUDA_MODULE_BUILD) == 0)
		return;
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		char *slash = strrchr(exe, '/');
		if (slash) {
			*slash = '\0';
			static const char *const rel[] = {
				"/libcalibd-cuda.so",
				"/../lib/calibd/libcalibd-cuda.so",
			};
			for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
				char path[PATH_MAX + 64];
				snprintf(path, sizeof(path), "%s%s", exe, rel[i]);
				if (cuda_try(path) == 0)
					return;
			}
		}
	}
	cuda_try(CAL_CUDA_MODULE_INSTALL);
}

/* The loaded module, or NULL with the reason in err (CAL_ERR_UNSUPPORTED). */
static const struct cal_cuda_module *cuda_module(struct cal_error *err)
{
	pthread_once(&cuda_once, cuda_load);
	if (!cuda_mod)
		cal_error_set(err, CAL_ERR_UNSUPPORTED,
			      "the CUDA back end (libcalibd-cuda.so) could not be loaded: %s",
			      cuda_why[0] ? cuda_why : "not found");
	return cuda_mod;
}
#endif

void *cal_backend_cuda_symbol(const char *name, struct cal_error *err)
{
#ifdef CAL_KERNELS_CUDA
	if (!cuda_module(err))
		return NULL;
	void *sym = dlsym(cuda_handle, name);
	if (!sym)
		cal_error_set(err, CAL_ERR_UNSUPPORTED, "libcalibd-cuda.so has no %s", name);
	return sym;
#else
	cal_error_set(err, CAL_ERR_UNSUPPORTED, "this calibd was built without CUDA (no %s)", name);
	return NULL;
#endif
}

/* ---- memory accounting ------------------------------------------------------ */

/* Every live cal_backend_alloc block with its size (few blocks: a linear
 * list), the bytes held, the peak and the cap.  A mutex because uploads
 * and allocations may come from a staging thread. */
struct mem_block {
	void *p;
	size_t n;
};

struct mem_track {
	pthread_mutex_t mu;
	uint64_t cur, peak, limit;
	struct mem_block *v;
	size_t n, cap;
};

/* Reserves `bytes` against the cap; 0 or -1 when the cap would be passed. */
static int mem_reserve(struct cal_backend *be, size_t bytes)
{
	struct mem_track *m = be->mem;
	int ok = 1;
	pthread_mutex_lock(&m->mu);
	if (m->limit && m->cur + bytes > m->limit)
		ok = 0;
	else
		m->cur += bytes;
	if (m->cur > m->peak)
		m->peak = m->cur;
	pthread_mutex_unlock(&m->mu);
	return ok ? 0 : -1;
}

static void mem_unreserve(struct cal_backend *be, size_t bytes)
{
	struct mem_track *m = be->mem;
	pthread_mutex_lock(&m->mu);
	m->cur -= bytes;
	pthread_mutex_unlock(&m->mu);
}

/* Records a block; -1 when the list cannot grow. */
static int mem_add(struct cal_backend *be, void *p, size_t bytes)
{
	struct mem_track *m = be->mem;
	int rc = 0;
	pthread_mutex_lock(&m->mu);
	if (m->n == m->cap) {
		size_t cap = m->cap ? 2 * m->cap : 64;
		struct mem_block *v = realloc(m->v, cap * sizeof(*v));
		if (!v)
			rc = -1;
		else
			m->v = v, m->cap = cap;
	}
	if (rc == 0)
		m->v[m->n++] = (struct mem_block){p, bytes};
	pthread_mutex_unlock(&m->mu);
	return rc;
}

/* Forgets a block and releases its bytes. */
static void mem_remove(struct cal_backend *be, void *p)
{
	struct mem_track *m = be->mem;
	pthread_mutex_lock(&m->mu);
	for (size_t i = m->n; i-- > 0;) {
		if (m->v[i].p == p) {
			m->cur -= m->v[i].n;
			m->v[i] = m->v[--m->n];
			break;
		}
	}
	pthread_mutex_unlock(&m->mu);
}

void cal_backend_mem_stats(struct cal_backend *be, struct cal_backend_mem *ret)
{
	struct mem_track *m = be->mem;
	pthread_mutex_lock(&m->mu);
	ret->current = m->cur;
	ret->peak = m->peak;
	ret->limit = m->limit;
	pthread_mutex_unlock(&m->mu);
}

void cal_backend_mem_reset_peak(struct cal_backend *be)
{
	struct mem_track *m = be->mem;
	pthread_mutex_lock(&m->mu);
	m->peak = m->cur;
	pthread_mutex_unlock(&m->mu);
}

void cal_backend_set_mem_limit(struct cal_backend *be, uint64_t bytes)
{
	struct mem_track *m = be->mem;
	pthread_mutex_lock(&m->mu);
	m->limit = bytes;
	pthread_mutex_unlock(&m->mu);
}

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
	const struct cal_cuda_module *m = cuda_module(err);
	if (!m)
		return CAL_ERR_UNSUPPORTED;
	return m->device_count(ret, err);
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
	struct mem_track *mt = calloc(1, sizeof(*mt));
	if (!mt || pthread_mutex_init(&mt->mu, NULL) != 0) {
		free(mt);
		free(be);
		return cal_error_set(err, CAL_ERR_NOMEM, "back end: out of memory");
	}
	be->mem = mt;

	switch (kind) {
	case CAL_BACKEND_CPU:
		be->iface = &cal_cpu_backend_i;
		break;
	case CAL_BACKEND_CUDA:
#ifdef CAL_KERNELS_CUDA
		if (!cuda_module(err)) {
			st = CAL_ERR_UNSUPPORTED;
			goto fail;
		}
		be->iface = cuda_mod->iface;
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
	be->name = be->iface->name;
	be->ops = be->iface->ops;
	st = be->iface->init(be, err);
	if (st < 0)
		goto fail;
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
	if (be->iface)
		be->iface->fini(be);
	struct mem_track *m = be->mem;
	if (m) {
		pthread_mutex_destroy(&m->mu);
		free(m->v);
		free(m);
	}
	free(be);
}

const char *cal_backend_describe(struct cal_backend *be)
{
	return be->iface->describe(be);
}

enum cal_status cal_backend_alloc(struct cal_backend *be, size_t bytes, void **ret,
				  struct cal_error *err)
{
	enum cal_status st;
	*ret = NULL;
	if (bytes == 0)
		return cal_error_set(err, CAL_ERR_INVALID, "alloc: zero bytes");
	if (mem_reserve(be, bytes) < 0) {
		struct cal_backend_mem ms;
		cal_backend_mem_stats(be, &ms);
		return cal_error_set(err, CAL_ERR_NOMEM,
				     "alloc: %zu bytes on %s would exceed the memory cap of %llu bytes "
				     "(%llu held)", bytes, be->name, (unsigned long long)ms.limit,
				     (unsigned long long)ms.current);
	}
	st = be->iface->alloc(be, bytes, ret, err);
	if (st >= 0 && mem_add(be, *ret, bytes) < 0) {
		be->iface->dealloc(be, *ret); /* a block that could not be recorded */
		*ret = NULL;
		st = cal_error_set(err, CAL_ERR_NOMEM, "alloc: out of memory");
	}
	if (st < 0)
		mem_unreserve(be, bytes);
	return st;
}

void cal_backend_dealloc(struct cal_backend *be, void *p)
{
	if (!p)
		return;
	mem_remove(be, p);
	be->iface->dealloc(be, p);
}

/* The three synchronous copies differ only in direction. */
static enum cal_status backend_memcpy(struct cal_backend *be, void *dst, const void *src, size_t n,
				      enum cal_copy_kind kind, struct cal_error *err)
{
	if (n == 0)
		return CAL_OK;
	return be->iface->memcpy(be, dst, src, n, kind, err);
}

enum cal_status cal_backend_upload(struct cal_backend *be, void *dst, const void *src, size_t n,
				   struct cal_error *err)
{
	return backend_memcpy(be, dst, src, n, CAL_COPY_H2D, err);
}

enum cal_status cal_backend_download(struct cal_backend *be, void *dst, const void *src, size_t n,
				     struct cal_error *err)
{
	return backend_memcpy(be, dst, src, n, CAL_COPY_D2H, err);
}

enum cal_status cal_backend_alloc_upload(struct cal_backend *be, const void *src, size_t n,
					 void **ret, struct cal_error *err)
{
	enum cal_status st = cal_backend_alloc(be, n ? n : 1, ret, err);
	if (st >= 0 && n)
		st = cal_backend_upload(be, *ret, src, n, err);
	return st;
}

enum cal_status cal_backend_copy(struct cal_backend *be, void *dst, const void *src, size_t n,
				 struct cal_error *err)
{
	return backend_memcpy(be, dst, src, n, CAL_COPY_D2D, err);
}

enum cal_status cal_backend_memset(struct cal_backend *be, void *dst, int byte, size_t n,
				   struct cal_error *err)
{
	if (n == 0)
		return CAL_OK;
	return be->iface->memset(be, dst, byte, n, err);
}

enum cal_status cal_backend_sync(struct cal_backend *be, struct cal_error *err)
{
	return be->iface->sync(be, err);
}

enum cal_status cal_backend_host_alloc(struct cal_backend *be, size_t bytes, void **ret,
				       struct cal_error *err)
{
	*ret = NULL;
	if (bytes == 0)
		return cal_error_set(err, CAL_ERR_INVALID, "host alloc: zero bytes");
	return be->iface->host_alloc(be, bytes, ret, err);
}

void cal_backend_host_free(struct cal_backend *be, void *p)
{
	if (!p)
		return;
	be->iface->host_free(be, p);
}

enum cal_status cal_backend_mem_info(struct cal_backend *be, uint64_t *ret_free,
				     uint64_t *ret_total, struct cal_error *err)
{
	return be->iface->mem_info(be, ret_free, ret_total, err);
}

enum cal_status cal_backend_upload_async(struct cal_backend *be, void *dst, const void *src,
					 size_t n, struct cal_error *err)
{
	if (n == 0)
		return CAL_OK;
	return be->iface->upload_async(be, dst, src, n, err);
}

enum cal_status cal_backend_upload_wait(struct cal_backend *be, struct cal_error *err)
{
	return be->iface->upload_wait(be, err);
}

enum cal_status cal_backend_upload_sync(struct cal_backend *be, struct cal_error *err)
{
	return be->iface->upload_sync(be, err);
}

/* A mark slot in range, or CAL_ERR_INVALID naming it. */
static enum cal_status mark_check(unsigned slot, struct cal_error *err)
{
	if (slot >= CAL_BACKEND_UPLOAD_MARKS)
		return cal_error_set(err, CAL_ERR_INVALID, "upload mark %u >= %d", slot,
				     CAL_BACKEND_UPLOAD_MARKS);
	return CAL_OK;
}

enum cal_status cal_backend_upload_mark(struct cal_backend *be, unsigned slot,
					struct cal_error *err)
{
	enum cal_status st = mark_check(slot, err);
	return st < 0 ? st : be->iface->upload_mark(be, slot, err);
}

enum cal_status cal_backend_upload_mark_sync(struct cal_backend *be, unsigned slot,
					     struct cal_error *err)
{
	enum cal_status st = mark_check(slot, err);
	return st < 0 ? st : be->iface->upload_mark_sync(be, slot, err);
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
