/*
 * module.cu — the entry point of libcalibd-cuda.so: the table through which
 * kernels/backend.c reaches the CUDA back end after dlopen().
 */
#include "common.cuh"

extern "C" {

__attribute__((visibility("default"))) const struct cal_cuda_module *cal_cuda_module_get(void)
{
	static const struct cal_cuda_module m = {
		CAL_CUDA_MODULE_ABI,
		CAL_OP_COUNT,
		sizeof(struct cal_ops),
		&cal_cuda_ops,
		cal_cuda_device_count,
		cal_cuda_backend_init,
		cal_cuda_backend_fini,
		cal_cuda_describe,
		cal_cuda_alloc,
		cal_cuda_dealloc,
		cal_cuda_memcpy,
		cal_cuda_memset,
		cal_cuda_sync,
		cal_cuda_host_alloc,
		cal_cuda_host_free,
		cal_cuda_mem_info,
		cal_cuda_upload_async,
		cal_cuda_upload_wait,
		cal_cuda_upload_sync,
		cal_cuda_upload_mark,
		cal_cuda_upload_mark_sync,
	};
	return &m;
}

} /* extern "C" */
