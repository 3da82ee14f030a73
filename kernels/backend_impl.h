/*
 * backend_impl.h — internal interface between kernels/backend.c and the back
 * ends that implement it (kernels/backend_cpu.c, kernels/cuda/backend.cu).
 * Not for use outside kernels/.
 */
#ifndef CAL_KERNELS_BACKEND_IMPL_H
#define CAL_KERNELS_BACKEND_IMPL_H

#include <stddef.h>

#include "kernels/backend.h"
#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Direction of a synchronous copy (struct cal_backend_i.memcpy). */
enum cal_copy_kind {
	CAL_COPY_H2D,
	CAL_COPY_D2H,
	CAL_COPY_D2D,
};

/*
 * The back-end interface: what kernels/backend.c asks of a back end.  The
 * CPU back end (kernels/backend_cpu.c) and the CUDA back end
 * (kernels/cuda/backend.cu, reached through the module table below)
 * implement it as peers; backend.c keeps what is common to both (argument
 * checks, allocation accounting, the memory cap) and never asks which back
 * end it runs.  Every entry is set.  The functions receive arguments that
 * backend.c already checked: sizes > 0, mark slots in range.
 */
struct cal_backend_i {
	const char *name;          /* "cpu", "cuda" */
	const struct cal_ops *ops; /* the op table */
	/* Sets up be (be->impl); on failure fini still runs on the half-built be. */
	enum cal_status (*init)(struct cal_backend *be, struct cal_error *err);
	void (*fini)(struct cal_backend *be);
	const char *(*describe)(struct cal_backend *be);
	/* 1 when the back end runs op / has the feature, else 0. */
	int (*supports_op)(const struct cal_backend *be, enum cal_op_id op);
	int (*supports)(const struct cal_backend *be, enum cal_backend_feature f);
	enum cal_status (*alloc)(struct cal_backend *be, size_t bytes, void **ret,
				 struct cal_error *err);
	void (*dealloc)(struct cal_backend *be, void *p);
	enum cal_status (*memcpy)(struct cal_backend *be, void *dst, const void *src, size_t n,
				  enum cal_copy_kind kind, struct cal_error *err);
	enum cal_status (*memset)(struct cal_backend *be, void *dst, int byte, size_t n,
				  struct cal_error *err);
	enum cal_status (*sync)(struct cal_backend *be, struct cal_error *err);
	enum cal_status (*host_alloc)(struct cal_backend *be, size_t bytes, void **ret,
				      struct cal_error *err);
	void (*host_free)(struct cal_backend *be, void *p);
	enum cal_status (*mem_info)(struct cal_backend *be, uint64_t *ret_free, uint64_t *ret_total,
				    struct cal_error *err);
	enum cal_status (*upload_async)(struct cal_backend *be, void *dst, const void *src, size_t n,
					struct cal_error *err);
	enum cal_status (*upload_wait)(struct cal_backend *be, struct cal_error *err);
	enum cal_status (*upload_sync)(struct cal_backend *be, struct cal_error *err);
	enum cal_status (*upload_mark)(struct cal_backend *be, unsigned slot, struct cal_error *err);
	enum cal_status (*upload_mark_sync)(struct cal_backend *be, unsigned slot,
					    struct cal_error *err);
};

/* The CPU back end (kernels/backend_cpu.c); cal_backend_init caps its
 * threads at CAL_CPU_MAX_THREADS. */
#define CAL_CPU_MAX_THREADS 256u
extern const struct cal_backend_i cal_cpu_backend_i;
extern const struct cal_ops cal_cpu_ops;

/*
 * The CUDA back end is a separate shared module (libcalibd-cuda.so) that
 * backend.c loads with dlopen() the first time CUDA is asked for, so that
 * nothing that only runs the CPU back end — the daemon's supervisor above
 * all — links or initialises CUDA.  The module exports one symbol,
 * cal_cuda_module_get(), returning this table.  abi, op_count, ops_size and
 * iface_size guard against a module from another build.
 */
#define CAL_CUDA_MODULE_ABI 3u
#define CAL_CUDA_MODULE_SYMBOL "cal_cuda_module_get"

struct cal_cuda_module {
	unsigned abi;
	unsigned op_count;
	size_t ops_size;
	size_t iface_size;
	enum cal_status (*device_count)(int *ret, struct cal_error *err);
	const struct cal_backend_i *iface;
};

typedef const struct cal_cuda_module *(*cal_cuda_module_get_fn)(void);

/* Another entry point of the loaded module (the NCCL table, kernels/
 * comm_impl.h), loading it first; NULL with CAL_ERR_UNSUPPORTED in err when
 * the module or the symbol is missing. */
void *cal_backend_cuda_symbol(const char *name, struct cal_error *err);

#ifdef CAL_KERNELS_CUDA
/* Inside the module (kernels/cuda/): */
const struct cal_cuda_module *cal_cuda_module_get(void);
extern const struct cal_ops cal_cuda_ops;
extern const struct cal_backend_i cal_cuda_backend_i;
enum cal_status cal_cuda_device_count(int *ret, struct cal_error *err);
#endif

#ifdef __cplusplus
}
#endif

#endif
