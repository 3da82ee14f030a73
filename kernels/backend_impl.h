/*
 * backend_impl.h — internal interface between kernels/backend.c and the CUDA
 * back end (kernels/cuda/backend.cu).  Not for use outside kernels/.
 */
#ifndef CAL_KERNELS_BACKEND_IMPL_H
#define CAL_KERNELS_BACKEND_IMPL_H

#include <stddef.h>

#include "kernels/backend.h"
#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

enum cal_cuda_copy_kind {
	CAL_CUDA_H2D,
	CAL_CUDA_D2H,
	CAL_CUDA_D2D,
};

extern const struct cal_ops cal_cpu_ops;

#ifdef CAL_KERNELS_CUDA
extern const struct cal_ops cal_cuda_ops;
enum cal_status cal_cuda_device_count(int *ret, struct cal_error *err);
/* Selects the device, creates the stream; sets be->impl. */
enum cal_status cal_cuda_backend_init(struct cal_backend *be, struct cal_error *err);
void cal_cuda_backend_fini(struct cal_backend *be);
const char *cal_cuda_describe(struct cal_backend *be);
enum cal_status cal_cuda_alloc(struct cal_backend *be, size_t bytes, void **ret,
			       struct cal_error *err);
void cal_cuda_dealloc(struct cal_backend *be, void *p);
enum cal_status cal_cuda_memcpy(struct cal_backend *be, void *dst, const void *src, size_t n,
				enum cal_cuda_copy_kind kind, struct cal_error *err);
enum cal_status cal_cuda_memset(struct cal_backend *be, void *dst, int byte, size_t n,
				struct cal_error *err);
enum cal_status cal_cuda_sync(struct cal_backend *be, struct cal_error *err);
#endif

#ifdef __cplusplus
}
#endif

#endif
