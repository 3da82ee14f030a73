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
		sizeof(struct cal_backend_i),
		cal_cuda_device_count,
		&cal_cuda_backend_i,
	};
	return &m;
}

} /* extern "C" */
