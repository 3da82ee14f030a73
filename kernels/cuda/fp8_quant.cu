/*
 * fp8_quant.cu — FP8 E4M3 per-tensor weight quantizer (docs/numerics.md "FP8
 * per tensor").  One lane per 8 elements: 16-byte bf16 load, 8-byte store; the
 * last lane takes the n % 8 tail with scalar accesses.
 *
 * Fast kernel (divisor positive and finite): no division at all.  Each
 * CUDA block fills a shared table of mag(h) for the bf16 magnitudes h in
 * [lo, hi] (cal_fp8_lut_range / cal_fp8_mag in kernels/numfmt.h, at most
 * FP8_LUT_MAX bytes, ~2.4 KiB in practice), computed with the reference
 * encoder itself; an element is then a clamp of h into [lo, hi] (packed
 * 16-bit min/max), one shared byte load and its sign bit.  A vector holding
 * inf or NaN takes the reference per element.  The grid is one wave of
 * resident blocks, so each table is built once per block.  Otherwise the
 * division kernel below.  single_round (stacked 3-D expert weights):
 * fp8_single_kernel, one IEEE division and one e4m3 rounding per element.
 * row_scale (FP8 per channel / 2-D blocks): fp8_tiles_kernel, one CUDA block
 * per tile (a row, or tile x tile): the tile's largest bf16 magnitude as an
 * integer max (exact, any order), its scale cal_fp8_row_scale, then one
 * rounding per element as single_round.
 */
#include "common.cuh"

#define FP8_LUT_MAX 4096

template <bool V>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
fp8_lut_kernel(const uint16_t *w, uint64_t n, float divisor, uint32_t lo, uint32_t hi,
	       uint8_t *q)
{
	__shared__ uint8_t lut[FP8_LUT_MAX];
	for (uint32_t i = threadIdx.x; i <= hi - lo; i += blockDim.x)
		lut[i] = (uint8_t)cal_fp8_mag(lo + i, divisor);
	__syncthreads();
	uint32_t lo2 = lo * 0x10001u, hi2 = hi * 0x10001u;
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x, nlanes = (n + 7) / 8;
	for (uint64_t v = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nlanes; v += stride) {
		if (8 * v + 8 > n) {
			for (uint64_t i = 8 * v; i < n; i++)
				q[i] = cal_fp8_weight_encode(cal_nf_bf16_to_f32(w[i]), divisor);
			continue;
		}
		uint32_t u[4];
		if (V) {
			uint4 x = __ldg(reinterpret_cast<const uint4 *>(w + 8 * v));
			u[0] = x.x, u[1] = x.y, u[2] = x.z, u[3] = x.w;
		} else {
#pragma unroll
			for (int k = 0; k < 4; k++)
				u[k] = (uint32_t)w[8 * v + 2 * k] | (uint32_t)w[8 * v + 2 * k + 1] << 16;
		}
		uint32_t m[4];
#pragma unroll
		for (int k = 0; k < 4; k++)
			m[k] = u[k] & 0x7fff7fffu;
		uint32_t top = __vmaxu2(__vmaxu2(m[0], m[1]), __vmaxu2(m[2], m[3]));
		uint64_t r;
		if ((top + 0x00800080u) & 0x80008000u) { /* a half >= 0x7F80 (inf/NaN) */
			r = 0;
#pragma unroll
			for (int k = 0; k < 8; k++)
				r |= (uint64_t)cal_fp8_weight_encode(
					     cal_nf_bf16_to_f32((uint16_t)(u[k / 2] >> (16 * (k & 1)))),
					     divisor)
				     << (8 * k);
		} else {
			uint32_t c[8];
#pragma unroll
			for (int k = 0; k < 4; k++) {
				/* clamp(h, lo, hi) - lo per half (no borrow after the max) */
				uint32_t d = __vminu2(__vmaxu2(m[k], lo2), hi2) - lo2;
				c[2 * k] = lut[d & 0xffffu];
				c[2 * k + 1] = lut[d >> 16];
			}
			uint32_t w0 = __byte_perm(__byte_perm(c[0], c[1], 0x0040),
						  __byte_perm(c[2], c[3], 0x0040), 0x5410);
			uint32_t w1 = __byte_perm(__byte_perm(c[4], c[5], 0x0040),
						  __byte_perm(c[6], c[7], 0x0040), 0x5410);
			/* sign bits: bit 7 of bytes 1 and 3 of each input word */
			w0 |= __byte_perm(u[0], u[1], 0x7531) & 0x80808080u;
			w1 |= __byte_perm(u[2], u[3], 0x7531) & 0x80808080u;
			r = (uint64_t)w0 | (uint64_t)w1 << 32;
		}
		cal_st_bytes<V>(q + 8 * v, r, 8);
	}
}

template <bool V>
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
fp8_kernel(const uint16_t *w, uint64_t n, float divisor, float recip, uint8_t *q)
{
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x, nlanes = (n + 7) / 8;
	for (uint64_t v = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nlanes; v += stride) {
		if (8 * v + 8 <= n) {
			float x[8];
			cal_ld8_bf16<V>(w + 8 * v, x);
			uint64_t r = 0;
#pragma unroll
			for (int k = 0; k < 8; k++)
				r |= (uint64_t)cal_fp8_from_quotient(cal_div_by(x[k], divisor, recip))
				     << (8 * k);
			cal_st_bytes<V>(q + 8 * v, r, 8);
		} else {
			for (uint64_t i = 8 * v; i < n; i++)
				q[i] = cal_fp8_weight_encode(cal_nf_bf16_to_f32(w[i]), divisor);
		}
	}
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
fp8_single_kernel(const uint16_t *w, uint64_t n, float scale, uint8_t *q)
{
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (uint64_t)gridDim.x * blockDim.x)
		q[i] = cal_fp8_weight_encode_single(cal_nf_bf16_to_f32(w[i]), scale);
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
fp8_tiles_kernel(const uint16_t *w, uint64_t rows, uint64_t cols, uint32_t tile,
		 enum cal_div_mode div, float *row_scale, uint8_t *q)
{
	__shared__ unsigned int m;
	__shared__ float sc;
	uint64_t nt = cal_fp8_tiles(rows, cols, tile), tc = tile ? (cols + tile - 1) / tile : 1;
	uint64_t th = tile ? tile : 1, tw = tile ? tile : cols;
	for (uint64_t t = blockIdx.x; t < nt; t += gridDim.x) {
		uint64_t r0 = t / tc * th, c0 = t % tc * tw;
		uint64_t h = min(th, rows - r0), wd = min(tw, cols - c0), k = h * wd;
		if (threadIdx.x == 0)
			m = 0;
		__syncthreads();
		unsigned int mx = 0;
		for (uint64_t i = threadIdx.x; i < k; i += blockDim.x)
			mx = max(mx,
				 (unsigned int)(w[(r0 + i / wd) * cols + c0 + i % wd] & 0x7FFFu));
		atomicMax(&m, mx);
		__syncthreads();
		if (threadIdx.x == 0) {
			sc = cal_fp8_row_scale(m, div);
			row_scale[t] = sc;
		}
		__syncthreads();
		float s = sc;
		for (uint64_t i = threadIdx.x; i < k; i += blockDim.x) {
			uint64_t j = (r0 + i / wd) * cols + c0 + i % wd;
			q[j] = cal_fp8_weight_encode_single(cal_nf_bf16_to_f32(w[j]), s);
		}
		__syncthreads();
	}
}

CAL_CUDA_OP(fp8_quant)
{
	CAL_CUDA_OP_ENTER(a->n == 0);
	if (a->row_scale) {
		uint64_t rows = a->n / a->cols, nt = cal_fp8_tiles(rows, a->cols, a->tile);
		unsigned grid = nt < 65535 ? (unsigned)nt : 65535u;
		fp8_tiles_kernel<<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, rows, a->cols, a->tile,
								   a->div, a->row_scale, a->q);
		CAL_CUDA_LAUNCHED();
		return CAL_OK;
	}
	if (a->single_round) {
		fp8_single_kernel<<<cal_cuda_grid(be, a->n), CAL_CUDA_THREADS, 0, s>>>(a->w, a->n,
										a->scale, a->q);
		CAL_CUDA_LAUNCHED();
		return CAL_OK;
	}
	float divisor = cal_fp8_weight_divisor(a->scale, a->div);
	uint32_t lo, hi;
	bool v = cal_aligned(a->w, 16) && cal_aligned(a->q, 8);
	if (cal_fp8_lut_range(divisor, &lo, &hi) && hi - lo < FP8_LUT_MAX) {
		auto k = v ? fp8_lut_kernel<true> : fp8_lut_kernel<false>;
		unsigned grid = cal_cuda_one_wave(be, k, (a->n + 7) / 8);
		k<<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, a->n, divisor, lo, hi, a->q);
		CAL_CUDA_LAUNCHED();
		return CAL_OK;
	}
	float recip = 1.0f / divisor; /* host IEEE division: correctly rounded */
	unsigned grid = cal_cuda_grid(be, (a->n + 7) / 8);
	if (v)
		fp8_kernel<true><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, a->n, divisor, recip, a->q);
	else
		fp8_kernel<false><<<grid, CAL_CUDA_THREADS, 0, s>>>(a->w, a->n, divisor, recip, a->q);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
