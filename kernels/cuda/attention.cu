/*
 * attention.cu — causal GQA attention over packed sequences without an
 * [S, S] matrix.
 *
 * Tensor-core path (head_dim 16, 32, 64, 128 or 256, 16-byte aligned
 * tensors): flash attention on mma.sync m16n8k16 (bf16 in, fp32 accumulate).
 * One block of 4 warps per (64-query tile, head); each warp owns 16 query
 * rows.  Up to head_dim 128 Q is loaded once into registers; at 256 (Qwen3.5
 * / Qwen3-Next full attention) the fp32 O accumulator alone takes 128
 * registers per thread, so Q stays in shared memory and its fragments are
 * re-read with ldmatrix for every key tile.  K and V tiles of 64 keys are staged in
 * shared memory with cp.async (rows padded by 8 elements: conflict-free
 * ldmatrix), S = Q K^T in fp32, scaled, masked (same sequence, causal,
 * left padding via key_start, sliding window), online softmax in fp32
 * (running max and normaliser per row), P = bf16(exp(s - m)) as the A
 * operand of P V (as flash attention / PyTorch SDPA do), O rescaled as the
 * maximum grows and divided by the normaliser at the end.  Tiles may span
 * sequences: each row carries its own first visible key.  Rows without a
 * visible key write zeros.
 *
 * Fallback (other head dims, unaligned pointers, a v head dim other than
 * q/k's as DeepSeek MLA has): one warp per (query row, head), 4 warps per
 * block, two passes (max / normaliser, then p v) with p = bf16(exp(s - m)),
 * the sum divided by l at the end as the tensor-core path, lanes over the
 * channels (hd, vd <= 512).  It also runs transformers' eager bf16
 * attention (eager_bf16, gpt_oss): scores bf16(bf16(q.k) * scale), the max
 * first, then p = bf16(exp(bf16(s - max)) / l) normalised before the
 * product; three passes over the keys.  Sinks (gpt_oss) join the max and the normaliser in both kernels
 * (kernels/attention.c).
 */
#include <math.h>
#include <stdlib.h>

#include "fwd_common.cuh"

#define AT_WARPS 4
#define AT_MAX_HD 512

__device__ __forceinline__ float at_dot(const float *q, const uint16_t *k, uint32_t hd)
{
	float d = 0.0f;
	for (uint32_t c = 0; c < hd; c++)
		d = __fadd_rn(d, __fmul_rn(q[c], cal_bf2f(k[c])));
	return d;
}

/* One score: fl32(q.k) * scale, or transformers' eager bf16 form (eager). */
__device__ __forceinline__ float at_score(const float *q, const uint16_t *k, uint32_t hd,
					  float scale, int eager)
{
	float d = at_dot(q, k, hd);
	return eager ? cal_rbf(__fmul_rn(cal_rbf(d), scale)) : __fmul_rn(d, scale);
}

__global__ void __launch_bounds__(AT_WARPS * 32)
attn_kernel(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out, uint64_t t,
	    uint32_t nh, uint32_t nkv, uint32_t hd, uint32_t vd, const uint32_t *cu, uint32_t n_seq,
	    const uint32_t *key_start, uint32_t window, float scale, const float *sinks, int eager)
{
	__shared__ float qs[AT_WARPS][AT_MAX_HD];
	unsigned lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
	uint64_t items = t * nh, warps = (uint64_t)gridDim.x * AT_WARPS;
	uint32_t group = nh / nkv;
	for (uint64_t it = (uint64_t)blockIdx.x * AT_WARPS + wi; it < items; it += warps) {
		uint64_t i = it / nh;
		uint32_t h = (uint32_t)(it % nh), kvh = h / group;
		uint32_t s = cal_segment_of(cu, n_seq, i);
		uint64_t lo = cu[s] + (key_start ? key_start[s] : 0);
		if (window && i + 1 > window && i + 1 - window > lo)
			lo = i + 1 - window;
		uint16_t *o = out + (i * nh + h) * vd;
		if (lo > i) {
			for (uint32_t c = lane; c < vd; c += 32)
				o[c] = 0;
			continue;
		}
		const uint16_t *qr = q + (i * nh + h) * hd;
		for (uint32_t c = lane; c < hd; c += 32)
			qs[wi][c] = cal_bf2f(qr[c]);
		__syncwarp();
		float m = -INFINITY, l = 0.0f;
		if (eager) {
			/* transformers' eager bf16 softmax: the max first (sink
			 * included), then exp(bf16(s - max)) summed */
			for (uint64_t j0 = lo; j0 <= i; j0 += 32) {
				uint64_t j = j0 + lane;
				float sv = j <= i ? at_score(qs[wi], k + (j * nkv + kvh) * hd, hd, scale, 1)
						  : -INFINITY;
				for (int off = 16; off > 0; off >>= 1)
					sv = fmaxf(sv, __shfl_xor_sync(CAL_FULL_MASK, sv, off));
				m = fmaxf(m, sv);
			}
			if (sinks)
				m = fmaxf(m, sinks[h]);
			for (uint64_t j0 = lo; j0 <= i; j0 += 32) {
				uint64_t j = j0 + lane;
				float e = j <= i ? expf(cal_rbf(at_score(qs[wi], k + (j * nkv + kvh) * hd, hd,
									 scale, 1) - m))
						 : 0.0f;
				for (int off = 16; off > 0; off >>= 1)
					e += __shfl_xor_sync(CAL_FULL_MASK, e, off);
				l += e;
			}
			if (sinks)
				l += expf(cal_rbf(sinks[h] - m));
		} else {
			for (uint64_t j0 = lo; j0 <= i; j0 += 32) {
				uint64_t j = j0 + lane;
				float sv = -INFINITY;
				if (j <= i)
					sv = at_score(qs[wi], k + (j * nkv + kvh) * hd, hd, scale, 0);
				float cm = sv;
				for (int off = 16; off > 0; off >>= 1)
					cm = fmaxf(cm, __shfl_xor_sync(CAL_FULL_MASK, cm, off));
				float mn = fmaxf(m, cm);
				float e = j <= i ? expf(sv - mn) : 0.0f;
				for (int off = 16; off > 0; off >>= 1)
					e += __shfl_xor_sync(CAL_FULL_MASK, e, off);
				l = (m == -INFINITY ? 0.0f : l * expf(m - mn)) + e;
				m = mn;
			}
			if (sinks) { /* gpt_oss: the head's sink joins max and denominator */
				float sk = sinks[h], mn = fmaxf(m, sk);
				l = l * expf(m - mn) + expf(sk - mn);
				m = mn;
			}
		}
		float acc[AT_MAX_HD / 32];
#pragma unroll
		for (int c = 0; c < AT_MAX_HD / 32; c++)
			acc[c] = 0.0f;
		for (uint64_t j0 = lo; j0 <= i; j0 += 32) {
			uint64_t j = j0 + lane;
			float p = 0.0f;
			if (j <= i) {
				float sv = at_score(qs[wi], k + (j * nkv + kvh) * hd, hd, scale, eager);
				p = eager ? cal_rbf(expf(cal_rbf(sv - m)) / l) : cal_rbf(expf(sv - m));
			}
			uint32_t nk = (uint32_t)(i - j0 + 1 < 32 ? i - j0 + 1 : 32);
			for (uint32_t tk = 0; tk < nk; tk++) {
				float pt = __shfl_sync(CAL_FULL_MASK, p, tk);
				const uint16_t *vr = v + ((j0 + tk) * nkv + kvh) * vd;
#pragma unroll
				for (int c = 0; c < AT_MAX_HD / 32; c++) {
					uint32_t ch = lane + 32u * c;
					if (ch < vd)
						acc[c] = __fadd_rn(acc[c], __fmul_rn(pt, cal_bf2f(vr[ch])));
				}
			}
		}
#pragma unroll
		for (int c = 0; c < AT_MAX_HD / 32; c++) {
			uint32_t ch = lane + 32u * c;
			if (ch < vd)
				o[ch] = cal_f2bf(eager ? acc[c] : acc[c] / l);
		}
		__syncwarp();
	}
}


/* ---- tensor-core flash attention --------------------------------------- */

#define FA_BQ 64
#define FA_BK 64
/* key tile: 32 keys at head_dim 256 keep S and P within the register budget */
#define FA_BKT(hd) ((hd) > 128 ? 32 : FA_BK)
#define FA_THREADS 128

__device__ __forceinline__ uint64_t fa_row_lo(const uint32_t *cu, uint32_t n_seq,
					       const uint32_t *key_start, uint32_t window, uint64_t i)
{
	uint32_t s = cal_segment_of(cu, n_seq, i);
	uint64_t lo = (uint64_t)cu[s] + (key_start ? key_start[s] : 0);
	if (window && i + 1 > window && i + 1 - window > lo)
		lo = i + 1 - window;
	return lo;
}

__device__ __forceinline__ void fa_cp16(void *smem, const void *gmem, bool ok)
{
	uint32_t sa = (uint32_t)__cvta_generic_to_shared(smem);
	int n = ok ? 16 : 0;
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(n));
}

__device__ __forceinline__ void fa_ldm4(uint32_t *r, const void *smem)
{
	uint32_t sa = (uint32_t)__cvta_generic_to_shared(smem);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(sa));
}

__device__ __forceinline__ void fa_ldm4t(uint32_t *r, const void *smem)
{
	uint32_t sa = (uint32_t)__cvta_generic_to_shared(smem);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"(sa));
}

__device__ __forceinline__ void fa_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
		     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats as bf16x2 (round to nearest even), the first in the low half. */
__device__ __forceinline__ uint32_t fa_pack(float x, float y)
{
	return (uint32_t)cal_f2bf(x) | (uint32_t)cal_f2bf(y) << 16;
}

template <int HD>
__global__ void __launch_bounds__(FA_THREADS)
fa_kernel(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out, uint64_t t,
	  uint32_t nh, uint32_t nkv, const uint32_t *cu, uint32_t n_seq,
	  const uint32_t *key_start, uint32_t window, float scale, const float *sinks)
{
	constexpr int LD = HD + 8;      /* padded smem row (elements) */
	constexpr int CH = HD / 8;      /* 16-byte chunks per row */
	extern __shared__ __align__(16) uint16_t fa_sm[];
	uint16_t *sq = fa_sm, *sk = fa_sm + FA_BQ * LD, *sv = sk + FA_BKT(HD) * LD;
	__shared__ unsigned long long kmin_s;

	const uint32_t h = blockIdx.x % nh;
	const uint64_t q0 = (uint64_t)(blockIdx.x / nh) * FA_BQ;
	const uint32_t kvh = h / (nh / nkv);
	const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
	const uint64_t row0 = q0 + w * 16 + (lane >> 2), row1 = row0 + 8;
	const uint64_t qstride = (uint64_t)nh * HD, kstride = (uint64_t)nkv * HD;

	if (tid == 0)
		kmin_s = ~0ull;
	/* Q tile -> smem (rows past t are zero) */
	for (int c = tid; c < FA_BQ * CH; c += FA_THREADS) {
		int r = c / CH, ch = c % CH;
		uint64_t i = q0 + r;
		bool ok = i < t;
		fa_cp16(sq + r * LD + ch * 8, ok ? q + i * qstride + (uint64_t)h * HD + ch * 8 : q, ok);
	}
	asm volatile("cp.async.commit_group;\n" ::);
	/* first visible key of each of this thread's rows (> row: sees nothing) */
	uint64_t lo0 = row0 < t ? fa_row_lo(cu, n_seq, key_start, window, row0) : ~0ull;
	uint64_t lo1 = row1 < t ? fa_row_lo(cu, n_seq, key_start, window, row1) : ~0ull;
	__syncthreads();
	if ((lane & 3) == 0) {
		if (row0 < t && lo0 <= row0)
			atomicMin(&kmin_s, (unsigned long long)lo0);
		if (row1 < t && lo1 <= row1)
			atomicMin(&kmin_s, (unsigned long long)lo1);
	}
	asm volatile("cp.async.wait_all;\n" ::);
	__syncthreads();
	const uint64_t kstart = kmin_s;
	const uint64_t kend = q0 + FA_BQ - 1 < t - 1 ? q0 + FA_BQ - 1 : t - 1;

	/* Q fragments held in registers for the whole key loop (HD <= 128) */
	constexpr bool QREG = HD <= 128;
	constexpr int QF = QREG ? HD / 16 : 1;
	uint32_t qf[QF][4];
	const uint16_t *qsm = sq + (w * 16 + (lane & 15)) * LD + (lane >> 4) * 8;
	if (QREG) {
#pragma unroll
		for (int kk = 0; kk < QF; kk++)
			fa_ldm4(qf[kk], qsm + kk * 16);
	}

	float oacc[HD / 8][4];
#pragma unroll
	for (int d = 0; d < HD / 8; d++)
		oacc[d][0] = oacc[d][1] = oacc[d][2] = oacc[d][3] = 0.0f;
	float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

	for (uint64_t j0 = kstart; kstart != ~0ull && j0 <= kend; j0 += FA_BKT(HD)) {
		__syncthreads(); /* the previous tile is consumed */
		for (int c = tid; c < FA_BKT(HD) * CH; c += FA_THREADS) {
			int r = c / CH, ch = c % CH;
			uint64_t j = j0 + r;
			bool ok = j < t;
			uint64_t off = j * kstride + (uint64_t)kvh * HD + ch * 8;
			fa_cp16(sk + r * LD + ch * 8, ok ? k + off : k, ok);
			fa_cp16(sv + r * LD + ch * 8, ok ? v + off : v, ok);
		}
		asm volatile("cp.async.commit_group;\n" ::);
		asm volatile("cp.async.wait_all;\n" ::);
		__syncthreads();

		/* S = Q K^T for 16 rows x 64 keys per warp */
		float sacc[FA_BKT(HD) / 8][4];
#pragma unroll
		for (int nt = 0; nt < FA_BKT(HD) / 8; nt++)
			sacc[nt][0] = sacc[nt][1] = sacc[nt][2] = sacc[nt][3] = 0.0f;
#pragma unroll
		for (int kk = 0; kk < HD / 16; kk++) {
			uint32_t qt[4];
			if (!QREG)
				fa_ldm4(qt, qsm + kk * 16);
			const uint32_t *qa = QREG ? qf[QREG ? kk : 0] : qt;
#pragma unroll
			for (int np = 0; np < FA_BKT(HD) / 16; np++) {
				uint32_t b[4];
				fa_ldm4(b, sk + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 +
						   ((lane >> 3) & 1) * 8);
				fa_mma(sacc[2 * np], qa, b[0], b[1]);
				fa_mma(sacc[2 * np + 1], qa, b[2], b[3]);
			}
		}
		/* scale, mask, running max */
		float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
		for (int nt = 0; nt < FA_BKT(HD) / 8; nt++) {
#pragma unroll
			for (int e = 0; e < 4; e++) {
				uint64_t j = j0 + nt * 8 + 2 * (lane & 3) + (e & 1);
				uint64_t row = e < 2 ? row0 : row1, lo = e < 2 ? lo0 : lo1;
				bool vis = j >= lo && j <= row && row < t;
				float sv_ = vis ? __fmul_rn(sacc[nt][e], scale) : -INFINITY;
				sacc[nt][e] = sv_;
				if (e < 2)
					mx0 = fmaxf(mx0, sv_);
				else
					mx1 = fmaxf(mx1, sv_);
			}
		}
		mx0 = fmaxf(mx0, __shfl_xor_sync(CAL_FULL_MASK, mx0, 1));
		mx0 = fmaxf(mx0, __shfl_xor_sync(CAL_FULL_MASK, mx0, 2));
		mx1 = fmaxf(mx1, __shfl_xor_sync(CAL_FULL_MASK, mx1, 1));
		mx1 = fmaxf(mx1, __shfl_xor_sync(CAL_FULL_MASK, mx1, 2));
		float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
		float ref0 = mn0 == -INFINITY ? 0.0f : mn0, ref1 = mn1 == -INFINITY ? 0.0f : mn1;
		float al0 = m0 == -INFINITY ? 0.0f : expf(m0 - ref0);
		float al1 = m1 == -INFINITY ? 0.0f : expf(m1 - ref1);
		m0 = mn0;
		m1 = mn1;
		float ps0 = 0.0f, ps1 = 0.0f;
		uint32_t pf[FA_BKT(HD) / 8][2];
#pragma unroll
		for (int nt = 0; nt < FA_BKT(HD) / 8; nt++) {
			float p0 = expf(sacc[nt][0] - ref0), p1 = expf(sacc[nt][1] - ref0);
			float p2 = expf(sacc[nt][2] - ref1), p3 = expf(sacc[nt][3] - ref1);
			ps0 += p0 + p1;
			ps1 += p2 + p3;
			pf[nt][0] = fa_pack(p0, p1);
			pf[nt][1] = fa_pack(p2, p3);
		}
		l0 = l0 * al0 + ps0;
		l1 = l1 * al1 + ps1;
#pragma unroll
		for (int d = 0; d < HD / 8; d++) {
			oacc[d][0] *= al0;
			oacc[d][1] *= al0;
			oacc[d][2] *= al1;
			oacc[d][3] *= al1;
		}
		/* O += P V */
#pragma unroll
		for (int kc = 0; kc < FA_BKT(HD) / 16; kc++) {
			uint32_t a[4] = {pf[2 * kc][0], pf[2 * kc][1], pf[2 * kc + 1][0], pf[2 * kc + 1][1]};
#pragma unroll
			for (int dp = 0; dp < HD / 16; dp++) {
				uint32_t b[4];
				fa_ldm4t(b, sv + (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + dp * 16 +
						    (lane >> 4) * 8);
				fa_mma(oacc[2 * dp], a, b[0], b[1]);
				fa_mma(oacc[2 * dp + 1], a, b[2], b[3]);
			}
		}
	}
	l0 += __shfl_xor_sync(CAL_FULL_MASK, l0, 1);
	l0 += __shfl_xor_sync(CAL_FULL_MASK, l0, 2);
	l1 += __shfl_xor_sync(CAL_FULL_MASK, l1, 1);
	l1 += __shfl_xor_sync(CAL_FULL_MASK, l1, 2);
	float sc0 = 1.0f, sc1 = 1.0f;
	if (sinks) { /* gpt_oss: the head's sink joins max and denominator */
		float sk = sinks[h], mn0 = fmaxf(m0, sk), mn1 = fmaxf(m1, sk);
		sc0 = m0 == -INFINITY ? 0.0f : expf(m0 - mn0);
		sc1 = m1 == -INFINITY ? 0.0f : expf(m1 - mn1);
		l0 = l0 * sc0 + expf(sk - mn0);
		l1 = l1 * sc1 + expf(sk - mn1);
	}
	float inv0 = l0 > 0.0f ? sc0 / l0 : 0.0f, inv1 = l1 > 0.0f ? sc1 / l1 : 0.0f;
#pragma unroll
	for (int d = 0; d < HD / 8; d++) {
		uint32_t col = d * 8 + 2 * (lane & 3);
		if (row0 < t)
			*reinterpret_cast<uint32_t *>(out + row0 * qstride + (uint64_t)h * HD + col) =
				fa_pack(oacc[d][0] * inv0, oacc[d][1] * inv0);
		if (row1 < t)
			*reinterpret_cast<uint32_t *>(out + row1 * qstride + (uint64_t)h * HD + col) =
				fa_pack(oacc[d][2] * inv1, oacc[d][3] * inv1);
	}
}

template <int HD>
static enum cal_status fa_launch(const struct cal_attention_args *a, cudaStream_t s,
				 struct cal_error *err)
{
	size_t shm = (size_t)(FA_BQ + 2 * FA_BKT(HD)) * (HD + 8) * sizeof(uint16_t);
	uint64_t blocks = (a->t + FA_BQ - 1) / FA_BQ * a->nh;
	if (blocks > INT32_MAX)
		return cal_error_set(err, CAL_ERR_RANGE, "attention: %llu rows x %u heads is too large",
				     (unsigned long long)a->t, a->nh);
	if (shm > 48 * 1024)
		CAL_CUDA_TRY(cudaFuncSetAttribute(fa_kernel<HD>,
						  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm));
	fa_kernel<HD><<<(unsigned)blocks, FA_THREADS, shm, s>>>(a->q, a->k, a->v, a->out, a->t, a->nh,
							      a->nkv, a->cu_seqlens, a->n_seq,
							      a->key_start, a->window, a->scale,
							      a->sinks);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}

CAL_CUDA_OP(attention)
{
	cudaStream_t s;
	enum cal_status st;
	if (a->t == 0)
		return CAL_OK;
	uint32_t vd = a->vd ? a->vd : a->hd;
	if (a->hd > AT_MAX_HD || vd > AT_MAX_HD)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "attention: head_dim %u / v head dim %u > %d on CUDA", a->hd, vd,
				     AT_MAX_HD);
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	/* eager bf16 scores (gpt_oss) need the final max before any
	 * exponential: the two-pass kernel below, not the online flash one */
	if (cal_aligned(a->q, 16) && cal_aligned(a->k, 16) && cal_aligned(a->v, 16) &&
	    cal_aligned(a->out, 16) && !a->eager_bf16 && vd == a->hd && getenv("CALIBD_ATTN_SIMPLE") == NULL) {
		switch (a->hd) {
		case 16: return fa_launch<16>(a, s, err);
		case 32: return fa_launch<32>(a, s, err);
		case 64: return fa_launch<64>(a, s, err);
		case 128: return fa_launch<128>(a, s, err);
		case 256: return fa_launch<256>(a, s, err);
		default: break;
		}
	}
	const struct cal_cuda_impl *im = (const struct cal_cuda_impl *)be->impl;
	uint64_t blocks = (a->t * a->nh + AT_WARPS - 1) / AT_WARPS;
	if (blocks > (uint64_t)im->sms * 64)
		blocks = (uint64_t)im->sms * 64;
	attn_kernel<<<(unsigned)blocks, AT_WARPS * 32, 0, s>>>(a->q, a->k, a->v, a->out, a->t, a->nh,
							       a->nkv, a->hd, vd, a->cu_seqlens,
							       a->n_seq, a->key_start, a->window,
							       a->scale, a->sinks, a->eager_bf16);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
