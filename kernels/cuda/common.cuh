/*
 * common.cuh — helpers shared by the CUDA op files (kernels/cuda/<op>.cu):
 * error mapping (a CUDA error becomes CAL_ERR_DEVICE with CUDA's message,
 * never an abort), the back end's per-device state, launch sizing, 16-byte
 * vector loads/stores with a scalar fallback for unaligned pointers,
 * warp reductions and the observer state folded by atomics.
 *
 * Launch configuration used by every op: 256 threads per block, a grid of
 * at most 16 blocks per SM, grid-stride loops over "lanes"; a lane handles 8
 * consecutive bf16 elements (one 16-byte load).  Ops whose block spans G
 * lanes (NVFP4 16 -> 2, MX 32 -> 4, 128 -> 16) reduce with __shfl_xor_sync
 * over those G consecutive lanes; loops advance whole warps so every lane of
 * a warp takes part in each shuffle.
 */
#ifndef CAL_KERNELS_CUDA_COMMON_CUH
#define CAL_KERNELS_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "common/status.h"
#include "kernels/backend_impl.h"
#include "kernels/ops.h"
}

#define CAL_CUDA_THREADS 256

struct cal_cuda_impl {
	cudaStream_t stream;
	cudaStream_t copy;    /* uploads overlapping the stream's work (cal_backend_upload_async) */
	cudaEvent_t copy_ev;  /* recorded on copy, waited on by stream (cal_backend_upload_wait) */
	cudaEvent_t marks[CAL_BACKEND_UPLOAD_MARKS]; /* cal_backend_upload_mark */
	int sms;
	char desc[384];
	void *blas; /* cublasHandle_t, created by the first gemm (cuda/gemm.cu) */
	void *solver; /* cusolverDnHandle_t, created by the first gptq_factor */
};

/* Destroys the cuBLAS handle of the back end, if any (cuda/gemm.cu). */
extern "C" void cal_cuda_gemm_fini(struct cal_backend *be);
/* Destroys the cuSOLVER handle of the back end, if any (cuda/gptq_factor.cu). */
extern "C" void cal_cuda_solver_fini(struct cal_backend *be);

/* Records a CUDA failure as CAL_ERR_DEVICE and returns it. */
extern "C" enum cal_status cal_cuda_fail(struct cal_error *err, cudaError_t e, const char *what,
			      const char *file, int line);

#define CAL_CUDA_TRY(call)                                                     \
	do {                                                                   \
		cudaError_t e_ = (call);                                       \
		if (e_ != cudaSuccess)                                         \
			return cal_cuda_fail(err, e_, #call, __FILE__, __LINE__); \
	} while (0)

/* Makes be's device current; returns its stream through *ret. */
extern "C" enum cal_status cal_cuda_enter(struct cal_backend *be, cudaStream_t *ret, struct cal_error *err);

/* Blocks for a grid-stride loop over `lanes` work lanes. */
static inline unsigned cal_cuda_grid(const struct cal_backend *be, uint64_t lanes)
{
	const struct cal_cuda_impl *im = (const struct cal_cuda_impl *)be->impl;
	uint64_t want = (lanes + CAL_CUDA_THREADS - 1) / CAL_CUDA_THREADS;
	uint64_t cap = (uint64_t)im->sms * 16;
	if (want > cap)
		want = cap;
	return want ? (unsigned)want : 1u;
}

/* Blocks of CAL_CUDA_THREADS for a grid-stride loop over `items` threads'
 * work, at most one wave of resident blocks of kernel k. */
template <typename K>
static unsigned cal_cuda_one_wave(const struct cal_backend *be, K k, uint64_t items)
{
	const struct cal_cuda_impl *im = (const struct cal_cuda_impl *)be->impl;
	int per_sm = 0;
	if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, CAL_CUDA_THREADS, 0) !=
		    cudaSuccess ||
	    per_sm < 1) {
		(void)cudaGetLastError();
		per_sm = 1;
	}
	uint64_t want = (items + CAL_CUDA_THREADS - 1) / CAL_CUDA_THREADS;
	uint64_t cap = (uint64_t)im->sms * (uint64_t)per_sm;
	if (want > cap)
		want = cap;
	return want ? (unsigned)want : 1u;
}

static inline bool cal_aligned(const void *p, unsigned a)
{
	return ((uintptr_t)p & (a - 1)) == 0;
}

/* Checks the launch; asynchronous faults surface at cal_backend_sync. */
#define CAL_CUDA_LAUNCHED() CAL_CUDA_TRY(cudaGetLastError())

/* The definition of op `name`'s CUDA implementation, as ops.h declares it:
 * enum cal_status cal_cuda_<name>(be, const struct cal_<name>_args *a, err),
 * called by the dispatcher after the op's argument check. */
#define CAL_CUDA_OP(name)                                                      \
	extern "C" enum cal_status cal_cuda_##name(struct cal_backend *be,     \
						   const struct cal_##name##_args *a, \
						   struct cal_error *err)

/* The start of an op: returns CAL_OK when `empty` (nothing to launch),
 * else makes be's device current and declares its stream `s`; a CUDA
 * failure returns CAL_ERR_DEVICE. */
#define CAL_CUDA_OP_ENTER(empty)                                               \
	cudaStream_t s = NULL;                                                 \
	do {                                                                   \
		if (empty)                                                     \
			return CAL_OK;                                         \
		enum cal_status st_enter_ = cal_cuda_enter(be, &s, err);       \
		if (st_enter_ < 0)                                             \
			return st_enter_;                                      \
	} while (0)

/* ---- device helpers ------------------------------------------------------ */

#define CAL_FULL_MASK 0xffffffffu

/* Warp-per-item loops: this thread's warp in the grid, the grid's warps. */
__device__ __forceinline__ uint64_t cal_warp_id(void)
{
	return ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
}

__device__ __forceinline__ uint64_t cal_warp_count(void)
{
	return ((uint64_t)gridDim.x * blockDim.x) >> 5;
}

/* 8 consecutive bf16 at p (element index aligned to 8 when V) -> fp32. */
template <bool V>
__device__ __forceinline__ void cal_ld8_bf16(const uint16_t *p, float *x)
{
	if (V) {
		uint4 q = __ldg(reinterpret_cast<const uint4 *>(p));
		uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
		for (int k = 0; k < 4; k++) {
			x[2 * k] = __uint_as_float(w[k] << 16);
			x[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
		}
	} else {
#pragma unroll
		for (int k = 0; k < 8; k++)
			x[k] = __uint_as_float((uint32_t)p[k] << 16);
	}
}

/* Lane v of a warp-wide loop over nlanes lanes of 8 bf16: loads them into
 * x, or zeros past the end (those lanes still take part in the shuffles);
 * returns v < nlanes. */
template <bool V>
__device__ __forceinline__ bool cal_ld8_lane(const uint16_t *w, uint64_t v, uint64_t nlanes,
					     float *x)
{
	bool ok = v < nlanes;
	if (ok) {
		cal_ld8_bf16<V>(w + v * 8, x);
	} else {
#pragma unroll
		for (int k = 0; k < 8; k++)
			x[k] = 0.0f;
	}
	return ok;
}

/* Stores 8 floats as F32 or BF16 (16- or 32-byte vector stores when V). */
template <bool V>
__device__ __forceinline__ void cal_st8_out(enum cal_dtype dt, void *out, uint64_t i,
					    const float *v)
{
	if (dt == CAL_DTYPE_BF16) {
		uint16_t *o = (uint16_t *)out + i;
		if (V) {
			uint32_t w[4];
#pragma unroll
			for (int k = 0; k < 4; k++)
				w[k] = (uint32_t)cal_nf_f32_to_bf16(v[2 * k]) |
				       (uint32_t)cal_nf_f32_to_bf16(v[2 * k + 1]) << 16;
			*reinterpret_cast<uint4 *>(o) = make_uint4(w[0], w[1], w[2], w[3]);
		} else {
#pragma unroll
			for (int k = 0; k < 8; k++)
				o[k] = cal_nf_f32_to_bf16(v[k]);
		}
	} else {
		float *o = (float *)out + i;
		if (V) {
			reinterpret_cast<float4 *>(o)[0] = make_float4(v[0], v[1], v[2], v[3]);
			reinterpret_cast<float4 *>(o)[1] = make_float4(v[4], v[5], v[6], v[7]);
		} else {
#pragma unroll
			for (int k = 0; k < 8; k++)
				o[k] = v[k];
		}
	}
}

/* Stores n (4 or 8) bytes packed little-endian in v. */
template <bool V>
__device__ __forceinline__ void cal_st_bytes(uint8_t *p, uint64_t v, int n)
{
	if (V) {
		if (n == 8)
			*reinterpret_cast<uint2 *>(p) = make_uint2((uint32_t)v, (uint32_t)(v >> 32));
		else
			*reinterpret_cast<uint32_t *>(p) = (uint32_t)v;
	} else {
		for (int k = 0; k < n; k++)
			p[k] = (uint8_t)(v >> (8 * k));
	}
}

/* Loads n (4 or 8) bytes as a little-endian integer. */
template <bool V>
__device__ __forceinline__ uint64_t cal_ld_bytes(const uint8_t *p, int n)
{
	if (V) {
		if (n == 8) {
			uint2 q = __ldg(reinterpret_cast<const uint2 *>(p));
			return (uint64_t)q.x | (uint64_t)q.y << 32;
		}
		return __ldg(reinterpret_cast<const uint32_t *>(p));
	}
	uint64_t v = 0;
	for (int k = 0; k < n; k++)
		v |= (uint64_t)__ldg(p + k) << (8 * k);
	return v;
}

/* Max over groups of G consecutive lanes (G a power of two <= 32). */
template <int G>
__device__ __forceinline__ float cal_group_max(float m)
{
#pragma unroll
	for (int o = G / 2; o > 0; o >>= 1) {
		float t = __shfl_xor_sync(CAL_FULL_MASK, m, o);
		m = t > m ? t : m;
	}
	return m;
}

/*
 * fl32(x / t), given r = fl32(1/t) (correctly rounded): q0 = x*r and two
 * Newton/Markstein corrections q += fma(-q, t, x) * r (the residual is exact
 * under FMA).  After the first step q is within one ulp, so the second gives
 * the correctly rounded quotient (Markstein's theorem) whenever nothing
 * under- or overflows; operands outside [2^-90, 2^90] take __fdiv_rn.
 * Several times cheaper than __fdiv_rn when t is shared by many x.
 */
__device__ __forceinline__ float cal_div_by(float x, float t, float r)
{
	float q = __fmul_rn(x, r);
	q = __fmaf_rn(__fmaf_rn(-q, t, x), r, q);
	q = __fmaf_rn(__fmaf_rn(-q, t, x), r, q);
	float ax = fabsf(x), aq = fabsf(q), at = fabsf(t);
	if (ax >= 0x1p-90f && ax <= 0x1p90f && aq >= 0x1p-90f && aq <= 0x1p90f &&
	    at >= 0x1p-90f && at <= 0x1p90f)
		return q;
	return __fdiv_rn(x, t);
}

/* ---- observer state ------------------------------------------------------ */

struct cal_obs {
	uint32_t max_bits; /* |x| bits of finite elements */
	unsigned long long count, first;
};

__device__ __forceinline__ void cal_obs_init(cal_obs &s)
{
	s.max_bits = 0;
	s.count = 0;
	s.first = ~0ull;
}

__device__ __forceinline__ void cal_obs_add(cal_obs &s, uint32_t abits, uint64_t index)
{
	if (abits >= 0x7f800000u) {
		s.count++;
		s.first = index < s.first ? index : s.first;
	} else {
		s.max_bits = abits > s.max_bits ? abits : s.max_bits;
	}
}

/* Reduces the non-finite part over the whole thread block and folds it into
 * nf with atomics (thread 0).  All threads of the block must call it. */
__device__ __forceinline__ void cal_obs_flush_nonfinite(cal_obs &s, struct cal_nonfinite *nf)
{
	__shared__ unsigned long long sh_count[CAL_CUDA_THREADS / 32], sh_first[CAL_CUDA_THREADS / 32];
	unsigned long long c = s.count, f = s.first;
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) {
		c += __shfl_xor_sync(CAL_FULL_MASK, c, o);
		unsigned long long t = __shfl_xor_sync(CAL_FULL_MASK, f, o);
		f = t < f ? t : f;
	}
	if (lane == 0) {
		sh_count[warp] = c;
		sh_first[warp] = f;
	}
	__syncthreads();
	if (threadIdx.x == 0) {
		c = 0;
		f = ~0ull;
		for (int w = 0; w < CAL_CUDA_THREADS / 32; w++) {
			c += sh_count[w];
			f = sh_first[w] < f ? sh_first[w] : f;
		}
		if (c) {
			atomicAdd((unsigned long long *)&nf->count, c);
			atomicMin((unsigned long long *)&nf->first, f);
		}
	}
}

/* Block-wide max of max_bits folded into *amax (signed-int atomicMax on the
 * float bits: exact for amax >= 0, as the CPU's fold).  All threads call. */
__device__ __forceinline__ void cal_obs_flush_amax(uint32_t m, float *amax)
{
	__shared__ uint32_t sh_max[CAL_CUDA_THREADS / 32];
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	m = __reduce_max_sync(CAL_FULL_MASK, m);
	if (lane == 0)
		sh_max[warp] = m;
	__syncthreads();
	if (threadIdx.x == 0) {
		for (int w = 0; w < CAL_CUDA_THREADS / 32; w++)
			m = sh_max[w] > m ? sh_max[w] : m;
		atomicMax((int *)amax, (int)m);
	}
}

/* Folds one 16-byte vector of 8 bf16 (element index idx of its first) into
 * s.  Fast path: |x| as packed 16-bit halves, one SIMD max per word, and a
 * single test for a non-finite half (h >= 0x7F80 <=> h + 0x80 >= 0x8000);
 * only a vector holding NaN/inf goes element by element. */
__device__ __forceinline__ void cal_obs_vec_bf16(cal_obs &s, uint4 q, uint64_t idx)
{
	uint32_t w[4] = {q.x & 0x7fff7fffu, q.y & 0x7fff7fffu, q.z & 0x7fff7fffu,
			 q.w & 0x7fff7fffu};
	uint32_t bad = ((w[0] + 0x00800080u) | (w[1] + 0x00800080u) | (w[2] + 0x00800080u) |
			(w[3] + 0x00800080u)) & 0x80008000u;
	if (!bad) {
		uint32_t m = __vmaxu2(__vmaxu2(w[0], w[1]), __vmaxu2(w[2], w[3]));
		uint32_t lo = m << 16, hi = m & 0xffff0000u;
		m = lo > hi ? lo : hi;
		s.max_bits = m > s.max_bits ? m : s.max_bits;
		return;
	}
#pragma unroll
	for (int e = 0; e < 4; e++) {
		cal_obs_add(s, w[e] << 16, idx + 2 * e);
		cal_obs_add(s, w[e] & 0xffff0000u, idx + 2 * e + 1);
	}
}

/* Folds one 16-byte vector q (8 BF16 or 4 F32 elements from flat index idx)
 * into s. */
template <bool BF16>
__device__ __forceinline__ void cal_obs_vec(cal_obs &s, uint4 q, uint64_t idx)
{
	if (BF16) {
		cal_obs_vec_bf16(s, q, idx);
	} else {
		uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
		for (int e = 0; e < 4; e++)
			cal_obs_add(s, w[e] & 0x7fffffffu, idx + e);
	}
}

/* Scans elements [i0, i0+len) of x (dtype DT) with `lanes` cooperating
 * threads (this one is `lane`), folding into s; indices reported as
 * base + flat index.  Uses 16-byte loads for the aligned middle. */
template <bool BF16>
__device__ __forceinline__ void cal_obs_scan(const void *x, uint64_t i0, uint64_t len,
					     uint64_t base, uint64_t lane, uint64_t lanes,
					     cal_obs &s)
{
	const unsigned es = BF16 ? 2 : 4, vec = 16 / es;
	const char *p = (const char *)x + i0 * es;
	uintptr_t mis = (uintptr_t)p & 15;
	uint64_t head = mis ? (16 - mis) / es : 0;
	if (mis % es)
		head = len; /* not even element-aligned: all scalar */
	if (head > len)
		head = len;
	for (uint64_t j = lane; j < head; j += lanes) {
		uint32_t a = BF16 ? ((uint32_t)((const uint16_t *)p)[j] << 16)
				  : __float_as_uint(((const float *)p)[j]);
		cal_obs_add(s, a & 0x7fffffffu, base + i0 + j);
	}
	uint64_t nvec = (len - head) / vec;
	const uint4 *v = (const uint4 *)(p + head * es);
#pragma unroll 4
	for (uint64_t k = lane; k < nvec; k += lanes) {
		uint4 q = __ldg(v + k);
		cal_obs_vec<BF16>(s, q, base + i0 + head + k * vec);
	}
	for (uint64_t j = head + nvec * vec + lane; j < len; j += lanes) {
		uint32_t a = BF16 ? ((uint32_t)((const uint16_t *)p)[j] << 16)
				  : __float_as_uint(((const float *)p)[j]);
		cal_obs_add(s, a & 0x7fffffffu, base + i0 + j);
	}
}

/* The observer kernels that hand rows of x [rows, cols] to warps (amax_rows,
 * amax_segments): NAME<BF16>(x, rows, cols, SEL, N_SEL, base, amax, nf)
 * with the op's row selection declared by SEL, N_SEL.  The body starts with
 * CAL_OBS_WARP_START(); CAL_OBS_ROWS_LAUNCH launches it. */
#define CAL_OBS_ROWS_KERNEL(name, sel, n_sel)                                        \
	template <bool BF16>                                                         \
	__global__ void __launch_bounds__(CAL_CUDA_THREADS)                          \
	name(const void *x, uint64_t rows, uint64_t cols, sel, n_sel, uint64_t base, \
	     float *amax, struct cal_nonfinite *nf)

/* Declares this thread's empty observer s, its warp, the grid's warps and
 * its lane. */
#define CAL_OBS_WARP_START()                                     \
	cal_obs s;                                               \
	cal_obs_init(s);                                         \
	uint64_t warp = cal_warp_id(), warps = cal_warp_count(); \
	unsigned lane = threadIdx.x & 31

/* Launches CAL_OBS_ROWS_KERNEL `name` on stream s for the op arguments a
 * (x, rows, cols, dtype, index_base, amax, nonfinite), its BF16 instance
 * for BF16 x, with the row selection sel, n_sel. */
#define CAL_OBS_ROWS_LAUNCH(name, grid, a, sel, n_sel)                                    \
	do {                                                                              \
		auto kernel_ = (a)->dtype == CAL_DTYPE_BF16 ? name<true> : name<false>;   \
		kernel_<<<(grid), CAL_CUDA_THREADS, 0, s>>>((a)->x, (a)->rows, (a)->cols, \
							    sel, n_sel, (a)->index_base,  \
							    (a)->amax, (a)->nonfinite);   \
	} while (0)

#endif
