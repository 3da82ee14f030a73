/*
 * fwdcases.h — back-end comparison cases of the forward-pass ops (gemm,
 * gather_rows, rmsnorm, rope, attention, router, moe_sort, moe_combine,
 * ewise, rmsnorm_gated, gdn_conv, gated_delta), in the opcase_fn shape of
 * opcases.h.  Two CPU back ends must agree byte for byte; CPU vs CUDA agree within bf16 tolerance (cuBLAS and the
 * CUDA kernels sum in another order), integer outputs exactly.
 */
#ifndef CAL_TEST_FWDCASES_H
#define CAL_TEST_FWDCASES_H

#include "opcases.h"

int fwdcase_gemm(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_gather_rows(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_rmsnorm(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_rope(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_attention(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_router(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_moe_sort(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_moe_combine(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_ewise(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_rmsnorm_gated(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_gdn_conv(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_gated_delta(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
/* DeepSeek-V3 */
int fwdcase_hadamard(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_mla_kv(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_router_group(struct opcase_env *env, uint64_t rows, uint64_t units, uint64_t seed);
int fwdcase_fp8_block_dequant(struct opcase_env *env, uint64_t rows, uint64_t units,
			      uint64_t seed);

#endif
