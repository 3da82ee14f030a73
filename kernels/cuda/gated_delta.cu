/*
 * gated_delta.cu — the gated delta rule, chunked (see gated_delta.c for the
 * formulas; the algorithm is the chunked one there, CAL_GDN_CHUNK = 64
 * tokens per chunk, WY / UT-transform form, fp32 state).
 *
 * Launch: one block of 256 threads per (sequence, value head, slice of
 * dvb value columns).  The columns of the state S (dk x dv) evolve
 * independently, so a block owns S[:, slice] and walks its sequence chunk
 * by chunk; the per-chunk quantities that depend only on k, beta and g
 * (A, the triangular solve of Kc, P) are recomputed by each slice.  The
 * slice is as wide as the shared memory allows (all of dv = 128 at dk = 128
 * on Hopper: ~216 KB, so that per-chunk work is done once per (sequence,
 * head, chunk)), narrowed to 64 or GD_DVB = 32 columns where it does not fit
 * or where the grid would leave SMs idle.  Every output element is computed
 * in the same order whatever the slice width.  Per chunk,
 * all in dynamic shared memory (row strides padded by one float):
 *   Q, K, Kc [C][dk], U [C][DVB], S [dk][DVB], A [C][C], gamma/beta/e^gamma.
 * Steps: load + L2 norm + gates and cumsum; Kc, U, A; forward substitution
 * (one thread per column, sequential over the 64 rows); Vn = U - Kc S;
 * P = lower(Q K^T * decay) into A; O = e^gamma Q S + P Vn (written as
 * bf16); S = e^{gamma_last} S + (K e^{gamma_last - gamma})^T Vn.
 * Shared memory for dk = 128: ~140 KB at 32 columns, ~216 KB at 128 (opt-in
 * above 48 KB); larger dk that do not fit the device's per-block limit even
 * at 32 columns are refused with CAL_ERR_UNSUPPORTED.
 */
#include <math.h>

#include "fwd_common.cuh"

#define GD_C ((int)CAL_GDN_CHUNK)
#define GD_DVB 32

struct gd_dims {
	uint32_t nk, nv, dk, dv, dvb, slices, r;
	uint64_t cd; /* qkv row length */
};

/* Shared-memory floats for head dim dk and slice width dvb. */
static __host__ __device__ inline uint64_t gd_smem_floats(uint32_t dk, uint32_t dvb)
{
	uint64_t ldk = dk + 1, lds = dvb + 1;
	return 3 * (uint64_t)GD_C * ldk + (uint64_t)GD_C * lds + (uint64_t)dk * lds +
	       (uint64_t)GD_C * (GD_C + 1) + 6 * (uint64_t)GD_C;
}

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
gd_kernel(const uint16_t *qkv, const uint16_t *bb, const uint16_t *aa, const float *a_log,
	  const float *dt_bias, uint16_t *out, const uint32_t *cu, uint32_t n_seq, gd_dims d)
{
	extern __shared__ float sm[];
	const uint32_t dk = d.dk, dvb = d.dvb, ldk = dk + 1, lds = dvb + 1, ldA = GD_C + 1;
	const unsigned tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, wi = tid >> 5;
	const unsigned nw = nt / 32;
	float *Q = sm, *K = Q + GD_C * ldk, *Kc = K + GD_C * ldk, *U = Kc + GD_C * ldk;
	float *S = U + GD_C * lds, *A = S + (uint64_t)dk * lds, *gam = A + GD_C * ldA;
	float *beta = gam + GD_C, *eg = beta + GD_C, *ew = eg + GD_C, *qn = ew + GD_C,
	      *kn = qn + GD_C;

	uint64_t item = blockIdx.x;
	const uint32_t slice = (uint32_t)(item % d.slices);
	item /= d.slices;
	const uint32_t h = (uint32_t)(item % d.nv), s = (uint32_t)(item / d.nv);
	if (s >= n_seq)
		return;
	const uint32_t kh = h / d.r, j0 = slice * dvb;
	const uint32_t w = dvb < d.dv - j0 ? dvb : d.dv - j0; /* columns of this slice */
	const uint64_t r0 = cu[s], r1 = cu[s + 1];
	const uint64_t qoff = (uint64_t)kh * dk, koff = (uint64_t)d.nk * dk + (uint64_t)kh * dk;
	const uint64_t voff = 2 * (uint64_t)d.nk * dk + (uint64_t)h * d.dv + j0;
	const float qscale = (float)(1.0 / sqrt((double)dk));
	const float alog = a_log[h], dtb = dt_bias[h];

	for (uint64_t i = tid; i < (uint64_t)dk * lds; i += nt)
		S[i] = 0.0f;

	for (uint64_t c0 = r0; c0 < r1; c0 += GD_C) {
		const int n = (int)(r1 - c0 < (uint64_t)GD_C ? r1 - c0 : GD_C);
		/* 1. load q, k, v slice; gates */
		for (uint32_t idx = tid; idx < (uint32_t)GD_C * dk; idx += nt) {
			int i = (int)(idx / dk);
			uint32_t x = idx % dk;
			float qv = 0.0f, kv = 0.0f;
			if (i < n) {
				const uint16_t *row = qkv + (c0 + i) * d.cd;
				qv = cal_bf2f(row[qoff + x]);
				kv = cal_bf2f(row[koff + x]);
			}
			Q[i * ldk + x] = qv;
			K[i * ldk + x] = kv;
		}
		for (uint32_t idx = tid; idx < (uint32_t)GD_C * dvb; idx += nt) {
			int i = (int)(idx / dvb);
			uint32_t j = idx % dvb;
			U[i * lds + j] = (i < n && j < w) ? cal_bf2f(qkv[(c0 + i) * d.cd + voff + j])
							  : 0.0f;
		}
		if (tid < (unsigned)GD_C) {
			int i = (int)tid;
			float bt = 0.0f, g = 0.0f;
			if (i < n) {
				float bv = cal_bf2f(bb[(c0 + i) * d.nv + h]);
				float x = __fadd_rn(cal_bf2f(aa[(c0 + i) * d.nv + h]), dtb);
				float sp = x > 20.0f ? x : log1pf(expf(x));
				bt = cal_rbf(1.0f / (1.0f + expf(-bv)));
				g = __fmul_rn(-expf(alog), sp);
			}
			beta[i] = bt;
			gam[i] = g;
		}
		__syncthreads();
		/* 2. L2 norms (warp per row), cumsum of g */
		for (int i = (int)wi; i < GD_C; i += (int)nw) {
			float sq = 0.0f, sk = 0.0f;
			for (uint32_t x = lane; x < dk; x += 32) {
				float qv = Q[i * ldk + x], kv = K[i * ldk + x];
				sq += qv * qv;
				sk += kv * kv;
			}
			for (int o = 16; o > 0; o >>= 1) {
				sq += __shfl_xor_sync(CAL_FULL_MASK, sq, o);
				sk += __shfl_xor_sync(CAL_FULL_MASK, sk, o);
			}
			if (lane == 0) {
				qn[i] = 1.0f / sqrtf(sq + 1e-6f);
				kn[i] = 1.0f / sqrtf(sk + 1e-6f);
			}
		}
		if (tid == 0) {
			float cum = 0.0f;
			for (int i = 0; i < GD_C; i++) {
				cum = __fadd_rn(cum, gam[i]);
				gam[i] = cum;
			}
		}
		__syncthreads();
		if (tid < (unsigned)GD_C)
			eg[tid] = expf(gam[tid]);
		for (uint32_t idx = tid; idx < (uint32_t)GD_C * dk; idx += nt) {
			int i = (int)(idx / dk);
			uint32_t x = idx % dk;
			Q[i * ldk + x] = __fmul_rn(__fmul_rn(Q[i * ldk + x], qn[i]), qscale);
			K[i * ldk + x] = __fmul_rn(K[i * ldk + x], kn[i]);
		}
		__syncthreads();
		/* 3. Kc, U = beta V, A (strictly lower) */
		for (uint32_t idx = tid; idx < (uint32_t)GD_C * dk; idx += nt) {
			int i = (int)(idx / dk);
			uint32_t x = idx % dk;
			Kc[i * ldk + x] = __fmul_rn(__fmul_rn(K[i * ldk + x], beta[i]), eg[i]);
		}
		for (uint32_t idx = tid; idx < (uint32_t)GD_C * dvb; idx += nt) {
			int i = (int)(idx / dvb);
			uint32_t j = idx % dvb;
			U[i * lds + j] = __fmul_rn(U[i * lds + j], beta[i]);
		}
		for (uint32_t idx = tid; idx < (uint32_t)(GD_C * GD_C); idx += nt) {
			int i = (int)(idx / GD_C), j = (int)(idx % GD_C);
			float v = 0.0f;
			if (j < i && i < n) {
				float dot = 0.0f;
				for (uint32_t x = 0; x < dk; x++)
					dot += K[i * ldk + x] * K[j * ldk + x];
				v = __fmul_rn(__fmul_rn(beta[i], dot), expf(gam[i] - gam[j]));
			}
			A[i * ldA + j] = v;
		}
		__syncthreads();
		/* 4. (I + A) X = RHS for X = [Kc | U]: one thread per column */
		for (int i = 1; i < n; i++) {
			for (uint32_t col = tid; col < dk + dvb; col += nt) {
				float *X = col < dk ? Kc + col : U + (col - dk);
				uint32_t ld = col < dk ? ldk : lds;
				float v = X[i * ld];
				for (int j = 0; j < i; j++)
					v -= A[i * ldA + j] * X[j * ld];
				X[i * ld] = v;
			}
			__syncthreads();
		}
		/* 5. Vn = U - Kc S (in U) */
		for (uint32_t idx = tid; idx < (uint32_t)GD_C * dvb; idx += nt) {
			int i = (int)(idx / dvb);
			uint32_t j = idx % dvb;
			float acc = 0.0f;
			for (uint32_t x = 0; x < dk; x++)
				acc += Kc[i * ldk + x] * S[x * lds + j];
			U[i * lds + j] -= acc;
		}
		/* P = lower(Q K^T * decay) into A (A's solve is done) */
		for (uint32_t idx = tid; idx < (uint32_t)(GD_C * GD_C); idx += nt) {
			int i = (int)(idx / GD_C), m = (int)(idx % GD_C);
			float v = 0.0f;
			if (m <= i && i < n) {
				float dot = 0.0f;
				for (uint32_t x = 0; x < dk; x++)
					dot += Q[i * ldk + x] * K[m * ldk + x];
				v = __fmul_rn(dot, expf(gam[i] - gam[m]));
			}
			A[i * ldA + m] = v;
		}
		if (tid < (unsigned)GD_C)
			ew[tid] = (int)tid < n ? expf(gam[n - 1] - gam[tid]) : 0.0f;
		__syncthreads();
		/* 6. O = e^gamma Q S + P Vn */
		for (uint32_t idx = tid; idx < (uint32_t)n * dvb; idx += nt) {
			int i = (int)(idx / dvb);
			uint32_t j = idx % dvb;
			if (j >= w)
				continue;
			float acc = 0.0f;
			for (uint32_t x = 0; x < dk; x++)
				acc += __fmul_rn(Q[i * ldk + x], eg[i]) * S[x * lds + j];
			for (int m = 0; m <= i; m++)
				acc += A[i * ldA + m] * U[m * lds + j];
			out[(c0 + i) * (uint64_t)d.nv * d.dv + (uint64_t)h * d.dv + j0 + j] = cal_f2bf(acc);
		}
		__syncthreads();
		/* 7. S = e^{gamma_last} S + (K e^{gamma_last - gamma})^T Vn */
		const float el = eg[n - 1];
		for (uint32_t idx = tid; idx < dk * dvb; idx += nt) {
			uint32_t x = idx / dvb, j = idx % dvb;
			float v = __fmul_rn(S[x * lds + j], el);
			for (int m = 0; m < n; m++)
				v += __fmul_rn(K[m * ldk + x], ew[m]) * U[m * lds + j];
			S[x * lds + j] = v;
		}
		__syncthreads();
	}
}

CAL_CUDA_OP(gated_delta)
{
	int optin = 0;
	CAL_CUDA_OP_ENTER(a->t == 0);
	gd_dims d;
	d.nk = a->nk;
	d.nv = a->nv;
	d.dk = a->dk;
	d.dv = a->dv;
	d.r = a->nv / a->nk;
	d.cd = 2 * (uint64_t)a->nk * a->dk + (uint64_t)a->nv * a->dv;
	CAL_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
					    be->cuda_device));
	/* widest slice (all of dv, 64, then GD_DVB columns) that fits in shared
	 * memory and still gives every SM a block */
	const struct cal_cuda_impl *im = (const struct cal_cuda_impl *)be->impl;
	const uint32_t widths[3] = {a->dv, 64, GD_DVB};
	d.dvb = a->dv < GD_DVB ? a->dv : GD_DVB;
	for (int i = 0; i < 3; i++) {
		uint32_t wb = widths[i];
		uint64_t nb = (uint64_t)a->n_seq * a->nv * ((a->dv + wb - 1) / wb);
		if (wb > a->dv || wb < GD_DVB ||
		    gd_smem_floats(d.dk, wb) * sizeof(float) > (uint64_t)optin ||
		    nb < (uint64_t)im->sms)
			continue;
		d.dvb = wb;
		break;
	}
	d.slices = (a->dv + d.dvb - 1) / d.dvb;
	size_t bytes = (size_t)gd_smem_floats(d.dk, d.dvb) * sizeof(float);
	if (bytes > (size_t)optin)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED,
				     "gated_delta: key head dim %u needs %zu bytes of shared memory "
				     "per block, the device allows %d", a->dk, bytes, optin);
	CAL_CUDA_TRY(cudaFuncSetAttribute(gd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
					  (int)bytes));
	uint64_t blocks = (uint64_t)a->n_seq * a->nv * d.slices;
	if (blocks > INT32_MAX)
		return cal_error_set(err, CAL_ERR_RANGE, "gated_delta: %llu blocks",
				     (unsigned long long)blocks);
	gd_kernel<<<(unsigned)blocks, CAL_CUDA_THREADS, bytes, s>>>(
		a->qkv, a->b, a->a, a->a_log, a->dt_bias, a->out, a->cu_seqlens, a->n_seq, d);
	CAL_CUDA_LAUNCHED();
	return CAL_OK;
}
