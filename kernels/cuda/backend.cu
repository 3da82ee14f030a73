/*
 * backend.cu — the CUDA back end: lazy device selection (only when a CUDA
 * back end is created or devices are counted, never in a constructor), one
 * non-blocking stream per back end, memory functions, the op table, and the
 * mapping of every CUDA error to CAL_ERR_DEVICE with CUDA's own message.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

extern "C" {

const struct cal_ops cal_cuda_ops = {
#define CAL_OP(name, NAME, desc) cal_cuda_##name,
#include "kernels/ops.def"
#undef CAL_OP
};

enum cal_status cal_cuda_fail(struct cal_error *err, cudaError_t e, const char *what,
			      const char *file, int line)
{
	(void)cudaGetLastError(); /* clear a non-sticky error so the back end stays usable */
	return cal_error_set(err, CAL_ERR_DEVICE, "CUDA error %s (%s) in %s at %s:%d",
			     cudaGetErrorName(e), cudaGetErrorString(e), what, file, line);
}

enum cal_status cal_cuda_device_count(int *ret, struct cal_error *err)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	*ret = 0;
	if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
		(void)cudaGetLastError();
		return CAL_OK; /* no GPU here: not an error */
	}
	CAL_CUDA_TRY(e);
	*ret = n;
	return CAL_OK;
}

enum cal_status cal_cuda_enter(struct cal_backend *be, cudaStream_t *ret, struct cal_error *err)
{
	*ret = NULL;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	*ret = ((struct cal_cuda_impl *)be->impl)->stream;
	return CAL_OK;
}

/* Selects the device, creates the streams; sets be->impl. */
static enum cal_status cuda_backend_init(struct cal_backend *be, struct cal_error *err)
{
	struct cal_cuda_impl *im;
	struct cudaDeviceProp prop;
	int n = 0;
	enum cal_status st = cal_cuda_device_count(&n, err);
	if (st < 0)
		return st;
	if (be->cuda_device < 0 || be->cuda_device >= n)
		return cal_error_set(err, CAL_ERR_DEVICE,
				     "back end 'cuda': device %d does not exist (%d device%s found)",
				     be->cuda_device, n, n == 1 ? "" : "s");
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	CAL_CUDA_TRY(cudaGetDeviceProperties(&prop, be->cuda_device));
	im = (struct cal_cuda_impl *)calloc(1, sizeof(*im));
	if (!im)
		return cal_error_set(err, CAL_ERR_NOMEM, "back end 'cuda': out of memory");
	im->sms = prop.multiProcessorCount;
	snprintf(im->desc, sizeof(im->desc), "%s, sm_%d%d, %d SMs, %.1f GiB", prop.name,
		 prop.major, prop.minor, prop.multiProcessorCount,
		 (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
	be->impl = im;
	CAL_CUDA_TRY(cudaStreamCreateWithFlags(&im->stream, cudaStreamNonBlocking));
	CAL_CUDA_TRY(cudaStreamCreateWithFlags(&im->copy, cudaStreamNonBlocking));
	CAL_CUDA_TRY(cudaEventCreateWithFlags(&im->copy_ev, cudaEventDisableTiming));
	for (int i = 0; i < CAL_BACKEND_UPLOAD_MARKS; i++)
		CAL_CUDA_TRY(cudaEventCreateWithFlags(&im->marks[i], cudaEventDisableTiming));
	return CAL_OK;
}

static void cuda_backend_fini(struct cal_backend *be)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	if (!im)
		return;
	if (im->stream) {
		(void)cudaSetDevice(be->cuda_device);
		(void)cudaStreamSynchronize(im->stream);
		cal_cuda_gemm_fini(be);
		cal_cuda_solver_fini(be);
		(void)cudaStreamDestroy(im->stream);
		(void)cudaGetLastError();
	}
	if (im->copy) {
		(void)cudaSetDevice(be->cuda_device);
		(void)cudaStreamSynchronize(im->copy);
		(void)cudaStreamDestroy(im->copy);
	}
	if (im->copy_ev)
		(void)cudaEventDestroy(im->copy_ev);
	for (int i = 0; i < CAL_BACKEND_UPLOAD_MARKS; i++)
		if (im->marks[i])
			(void)cudaEventDestroy(im->marks[i]);
	(void)cudaGetLastError();
	free(im);
	be->impl = NULL;
}

static const char *cuda_describe(struct cal_backend *be)
{
	return ((struct cal_cuda_impl *)be->impl)->desc;
}

static enum cal_status cuda_alloc(struct cal_backend *be, size_t bytes, void **ret,
			       struct cal_error *err)
{
	cudaError_t e;
	*ret = NULL;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	e = cudaMalloc(ret, bytes);
	if (e != cudaSuccess) {
		*ret = NULL;
		(void)cudaGetLastError();
		return cal_error_set(err, e == cudaErrorMemoryAllocation ? CAL_ERR_NOMEM : CAL_ERR_DEVICE,
				     "cudaMalloc of %zu bytes on device %d: %s", bytes,
				     be->cuda_device, cudaGetErrorString(e));
	}
	return CAL_OK;
}

static void cuda_dealloc(struct cal_backend *be, void *p)
{
	(void)cudaSetDevice(be->cuda_device);
	(void)cudaFree(p);
	(void)cudaGetLastError();
}

static enum cal_status cuda_memcpy(struct cal_backend *be, void *dst, const void *src, size_t n,
				enum cal_copy_kind kind, struct cal_error *err)
{
	cudaStream_t s;
	enum cal_status st = cal_cuda_enter(be, &s, err);
	cudaMemcpyKind k = kind == CAL_COPY_H2D ? cudaMemcpyHostToDevice
			 : kind == CAL_COPY_D2H ? cudaMemcpyDeviceToHost
						: cudaMemcpyDeviceToDevice;
	if (st < 0)
		return st;
	CAL_CUDA_TRY(cudaMemcpyAsync(dst, src, n, k, s));
	CAL_CUDA_TRY(cudaStreamSynchronize(s));
	return CAL_OK;
}

static enum cal_status cuda_memset(struct cal_backend *be, void *dst, int byte, size_t n,
				struct cal_error *err)
{
	cudaStream_t s;
	enum cal_status st = cal_cuda_enter(be, &s, err);
	if (st < 0)
		return st;
	CAL_CUDA_TRY(cudaMemsetAsync(dst, byte, n, s));
	CAL_CUDA_TRY(cudaStreamSynchronize(s));
	return CAL_OK;
}

static enum cal_status cuda_sync(struct cal_backend *be, struct cal_error *err)
{
	cudaStream_t s;
	enum cal_status st = cal_cuda_enter(be, &s, err);
	if (st < 0)
		return st;
	CAL_CUDA_TRY(cudaStreamSynchronize(s));
	return CAL_OK;
}

static enum cal_status cuda_host_alloc(struct cal_backend *be, size_t bytes, void **ret,
				    struct cal_error *err)
{
	cudaError_t e;
	*ret = NULL;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	e = cudaHostAlloc(ret, bytes, cudaHostAllocPortable);
	if (e != cudaSuccess) {
		*ret = NULL;
		(void)cudaGetLastError();
		return cal_error_set(err, e == cudaErrorMemoryAllocation ? CAL_ERR_NOMEM : CAL_ERR_DEVICE,
				     "cudaHostAlloc of %zu bytes of pinned host memory: %s", bytes,
				     cudaGetErrorString(e));
	}
	return CAL_OK;
}

static void cuda_host_free(struct cal_backend *be, void *p)
{
	(void)be;
	(void)cudaFreeHost(p);
	(void)cudaGetLastError();
}

static enum cal_status cuda_mem_info(struct cal_backend *be, uint64_t *ret_free, uint64_t *ret_total,
				  struct cal_error *err)
{
	size_t f = 0, t = 0;
	*ret_free = *ret_total = 0;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	CAL_CUDA_TRY(cudaMemGetInfo(&f, &t));
	*ret_free = f;
	*ret_total = t;
	return CAL_OK;
}

static enum cal_status cuda_upload_async(struct cal_backend *be, void *dst, const void *src, size_t n,
				      struct cal_error *err)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	CAL_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, im->copy));
	return CAL_OK;
}

static enum cal_status cuda_upload_wait(struct cal_backend *be, struct cal_error *err)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	CAL_CUDA_TRY(cudaEventRecord(im->copy_ev, im->copy));
	CAL_CUDA_TRY(cudaStreamWaitEvent(im->stream, im->copy_ev, 0));
	return CAL_OK;
}

static enum cal_status cuda_upload_sync(struct cal_backend *be, struct cal_error *err)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	CAL_CUDA_TRY(cudaStreamSynchronize(im->copy));
	return CAL_OK;
}

static enum cal_status cuda_upload_mark(struct cal_backend *be, unsigned slot, struct cal_error *err)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	CAL_CUDA_TRY(cudaEventRecord(im->marks[slot], im->copy));
	return CAL_OK;
}

static enum cal_status cuda_upload_mark_sync(struct cal_backend *be, unsigned slot,
					  struct cal_error *err)
{
	struct cal_cuda_impl *im = (struct cal_cuda_impl *)be->impl;
	CAL_CUDA_TRY(cudaSetDevice(be->cuda_device));
	CAL_CUDA_TRY(cudaEventSynchronize(im->marks[slot]));
	return CAL_OK;
}

static int cuda_supports_op(const struct cal_backend *be, enum cal_op_id op)
{
	(void)be;
	return (unsigned)op < CAL_OP_COUNT; /* cal_cuda_ops has every op of ops.def */
}

static int cuda_supports(const struct cal_backend *be, enum cal_backend_feature f)
{
	(void)be;
	return f == CAL_BACKEND_FEATURE_PINNED_HOST || f == CAL_BACKEND_FEATURE_ASYNC_UPLOAD;
}

/* In the order of struct cal_backend_i (C++ has no designated initializers
 * before C++20). */
const struct cal_backend_i cal_cuda_backend_i = {
	"cuda",
	&cal_cuda_ops,
	cuda_backend_init,
	cuda_backend_fini,
	cuda_describe,
	cuda_supports_op,
	cuda_supports,
	cuda_alloc,
	cuda_dealloc,
	cuda_memcpy,
	cuda_memset,
	cuda_sync,
	cuda_host_alloc,
	cuda_host_free,
	cuda_mem_info,
	cuda_upload_async,
	cuda_upload_wait,
	cuda_upload_sync,
	cuda_upload_mark,
	cuda_upload_mark_sync,
};

} /* extern "C" */
