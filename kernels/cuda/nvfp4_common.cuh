/*
 * nvfp4_common.cuh — the NVFP4 block-quantize kernels shared by
 * nvfp4_quant.cu (dynamic: block scale from max|block| and S2) and
 * nvfp4_static_quant.cu (static: block scale from the calibrated block amax).
 *
 * Fast kernel (nvfp4_thr_kernel, every S2 that is NaN or has its sign bit
 * clear): one thread per 16-block (or 32-block: NVFP4 block 32), its bf16
 * in registers (16-byte loads), 8-byte stores of the packed codes and one
 * scale byte.  No
 * per-element division: each CUDA block first fills a shared table of the
 * eight exact thresholds of every scale byte (cal_nvfp4_threshold in
 * kernels/numfmt.h, 4 KiB), and an element's code is then seven compares
 * and a sign compare against its block's row (cal_nvfp4_encode_thr).  The
 * grid is one wave of resident blocks, so each table is built once per
 * block.  The fallback kernel (S2 negative or -0) divides per element: two
 * lanes per 16-block (four per 32-block), 8 bf16 each, block max by
 * shuffles.
 */
#ifndef CAL_KERNELS_CUDA_NVFP4_COMMON_CUH
#define CAL_KERNELS_CUDA_NVFP4_COMMON_CUH

#include "common.cuh"

template <bool V, bool STATIC, int BS>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
nvfp4_kernel(const uint16_t *w, uint64_t nlanes, float s2, const float *block_amax, float g,
	     float m, enum cal_div_mode div, uint8_t *packed, uint8_t *scales)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	unsigned lane = threadIdx.x & 31;
	float d = cal_fmul(6.0f, s2);
	for (uint64_t v0 = (uint64_t)blockIdx.x * blockDim.x + (threadIdx.x & ~31u); v0 < nlanes;
	     v0 += stride) {
		uint64_t v = v0 + lane;
		float x[8];
		bool ok = cal_ld8_lane<V>(w, v, nlanes, x);
		uint8_t e;
		if (STATIC) {
			e = ok ? cal_nvfp4_static_block_scale(__ldg(block_amax + v / (BS / 8)), g, m,
							       div) : 0;
		} else {
			float a = cal_group_max<BS / 8>(cal_block_absmax(x, 8));
			e = cal_nvfp4_block_scale(a, d);
		}
		if (!ok)
			continue;
		float t = cal_fmul(cal_e4m3_decode(e), s2);
		float r = __frcp_rn(t);
		uint32_t p = 0;
#pragma unroll
		for (int k = 0; k < 8; k++)
			p |= cal_e2m1_encode_nvfp4(cal_div_by(x[k], t, r)) << (4 * k);
		cal_st_bytes<V>(packed + v * 4, p, 4);
		if ((lane & (BS / 8 - 1)) == 0)
			scales[v / (BS / 8)] = e;
	}
}

/* Threshold row j of scale byte e: thr[e][j] (see cal_nvfp4_encode_thr). */
__device__ __forceinline__ void nvfp4_thr_fill(float (*thr)[8], float s2)
{
	for (unsigned i = threadIdx.x; i < 128 * 8; i += blockDim.x) {
		unsigned e = i >> 3, j = i & 7;
		float t = cal_fmul(cal_e4m3_decode((uint8_t)e), s2);
		thr[e][j] = cal_nvfp4_threshold(t, j == 7 ? 0 : (int)j + 1);
	}
	__syncthreads();
}

/* cal_block_absmax(x, 16): fmaxf ignores NaN as the reference's compare
 * does, and |x| is never -0, so the results agree bit for bit. */
__device__ __forceinline__ float nvfp4_absmax16(const float *x)
{
	float m = 0.0f;
#pragma unroll
	for (int k = 0; k < 16; k++)
		m = fmaxf(m, fabsf(x[k]));
	return m;
}

/* Adds to r the code of x against threshold row t (cal_nvfp4_encode_thr's
 * binary search: three compares for the index, one for the sign), shifted
 * to nibble S.  Written in PTX so each bit becomes one predicated add
 * (setp.gtu is true for NaN, setp.lt is not, as the reference needs). */
template <int S>
__device__ __forceinline__ void nvfp4_code_add(uint32_t &r, float x, const float *t)
{
	asm("{\n\t.reg .pred p2, p1, p0, ps;\n\t.reg .f32 a, u, v, w;\n\t"
	    "abs.f32 a, %1;\n\t"
	    "setp.gtu.f32 p2, a, %5;\n\t"
	    "selp.f32 u, %7, %3, p2;\n\t"
	    "setp.gtu.f32 p1, a, u;\n\t"
	    "selp.f32 v, %8, %6, p1;\n\t"
	    "selp.f32 w, %4, %2, p1;\n\t"
	    "selp.f32 v, v, w, p2;\n\t"
	    "setp.gtu.f32 p0, a, v;\n\t"
	    "setp.lt.f32 ps, %1, %9;\n\t"
	    "@p2 add.u32 %0, %0, %10;\n\t"
	    "@p1 add.u32 %0, %0, %11;\n\t"
	    "@p0 add.u32 %0, %0, %12;\n\t"
	    "@ps add.u32 %0, %0, %13;\n\t}"
	    : "+r"(r)
	    : "f"(x), "f"(t[0]), "f"(t[1]), "f"(t[2]), "f"(t[3]), "f"(t[4]), "f"(t[5]),
	      "f"(t[6]), "f"(t[7]), "n"(4u << S), "n"(2u << S), "n"(1u << S), "n"(8u << S));
}

/* The 8 codes of x[0..7] against row t, element k in nibble k. */
__device__ __forceinline__ uint32_t nvfp4_codes8(const float *x, const float *t)
{
	uint32_t r = 0;
	nvfp4_code_add<0>(r, x[0], t);
	nvfp4_code_add<4>(r, x[1], t);
	nvfp4_code_add<8>(r, x[2], t);
	nvfp4_code_add<12>(r, x[3], t);
	nvfp4_code_add<16>(r, x[4], t);
	nvfp4_code_add<20>(r, x[5], t);
	nvfp4_code_add<24>(r, x[6], t);
	nvfp4_code_add<28>(r, x[7], t);
	return r;
}

template <bool V, bool STATIC, int BS>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
nvfp4_thr_kernel(const uint16_t *w, uint64_t nblk, float s2, const float *block_amax, float g,
		 float m, enum cal_div_mode div, uint8_t *packed, uint8_t *scales)
{
	__shared__ __align__(16) float thr[128][8];
	nvfp4_thr_fill(thr, s2);
	float d = cal_fmul(6.0f, s2);
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	for (uint64_t b = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; b < nblk; b += stride) {
		float x[BS];
#pragma unroll
		for (int h = 0; h < BS; h += 8)
			cal_ld8_bf16<V>(w + (uint64_t)BS * b + h, x + h);
		uint8_t e;
		if (STATIC) {
			e = cal_nvfp4_static_block_scale(__ldg(block_amax + b), g, m, div);
		} else {
			float a = nvfp4_absmax16(x);
#pragma unroll
			for (int h = 16; h < BS; h += 16)
				a = fmaxf(a, nvfp4_absmax16(x + h));
			e = cal_nvfp4_block_scale(a, d);
		}
		const float4 *row = reinterpret_cast<const float4 *>(thr[e & 0x7f]);
		float4 t0 = row[0], t1 = row[1];
		float t[8] = {t0.x, t0.y, t0.z, t0.w, t1.x, t1.y, t1.z, t1.w};
#pragma unroll
		for (int h = 0; h < BS; h += 16) {
			uint32_t lo = nvfp4_codes8(x + h, t), hi = nvfp4_codes8(x + h + 8, t);
			cal_st_bytes<V>(packed + (uint64_t)BS / 2 * b + h / 2,
					(uint64_t)lo | (uint64_t)hi << 32, 8);
		}
		scales[b] = e;
	}
}

template <bool STATIC, int BS>
static enum cal_status nvfp4_launch_bs(struct cal_backend *be, const uint16_t *w, uint64_t n,
				       float s2, const float *block_amax, float g, float m,
				       enum cal_div_mode div, uint8_t *packed, uint8_t *scales,
				       struct cal_error *err)
{
	CAL_CUDA_OP_ENTER(n == 0);
	bool v = cal_aligned(w, 16) && cal_aligned(packed, 8);
	if (cal_nvfp4_thr_ok(s2)) {
		uint64_t nblk = n / BS;
		if (v) {
			auto k = nvfp4_thr_kernel<true, STATIC, BS>;
			k<<<cal_cuda_one_wave(be, k, nblk), CAL_CUDA_THREADS, 0, s>>>(
				w, nblk, s2, block_amax, g, m, div, packed, scales);
		} else {
			auto k = nvfp4_thr_kernel<false, STATIC, BS>;
			k<<<cal_cuda_one_wave(be, k, nblk), CAL_CUDA_THREADS, 0, s>>>(
				w, nblk, s2, block_amax, g, m, div, packed, scales);
		}
		CAL_CUDA_LAUNCHED();
		return CAL_OK;
	}
	uint64_t nlanes = n / 8;
	unsigned grid = cal_cuda_grid(be, nlanes);
	if (cal_aligned(w, 16) && cal_aligned(packed, 4))
		nvfp4_kernel<true, STATIC, BS><<<grid, CAL_CUDA_THREADS, 0, s>>>(
			w, nlanes, s2, block_amax, g, m, div, packed, scales);
	else
		nvfp4_kernel<false, STATIC, BS><<<grid, CAL_CUDA_THREADS, 0, s>>>(
			w, nlanes, s2, block_amax, g, m, div, packed, scales);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}

/* bs: elements per block, 16 or 32 (dynamic only). */
template <bool STATIC>
static enum cal_status nvfp4_launch(struct cal_backend *be, const uint16_t *w, uint64_t n,
				    float s2, const float *block_amax, float g, float m,
				    enum cal_div_mode div, uint8_t *packed, uint8_t *scales,
				    struct cal_error *err, unsigned bs = 16)
{
	if (!STATIC && bs == 32)
		return nvfp4_launch_bs<STATIC, 32>(be, w, n, s2, block_amax, g, m, div, packed,
						   scales, err);
	return nvfp4_launch_bs<STATIC, 16>(be, w, n, s2, block_amax, g, m, div, packed, scales,
					   err);
}

#endif
