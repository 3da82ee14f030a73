/*
 * moe_sort.cu — stable counting sort of (token, slot) pairs by expert, in
 * three launches over chunks of SORT_CHUNK pairs: (1) per-chunk expert
 * histograms (shared-memory atomics), (2) one block turns them into the
 * expert offsets and each chunk's first position per expert, (3) one
 * thread per chunk places its pairs in order (stable).  Scratch is
 * stream-ordered (cudaMallocAsync).  e <= 8192 (shared memory).
 */
#include "fwd_common.cuh"

#define SORT_CHUNK 2048

__global__ void __launch_bounds__(CAL_CUDA_THREADS)
sort_hist(const uint32_t *idx, uint64_t n, uint32_t e, uint32_t *counts)
{
	extern __shared__ uint32_t h[];
	for (uint32_t i = threadIdx.x; i < e; i += blockDim.x)
		h[i] = 0;
	__syncthreads();
	uint64_t c0 = (uint64_t)blockIdx.x * SORT_CHUNK, c1 = c0 + SORT_CHUNK < n ? c0 + SORT_CHUNK : n;
	for (uint64_t p = c0 + threadIdx.x; p < c1; p += blockDim.x) {
		uint32_t x = idx[p];
		if (x < e)
			atomicAdd(&h[x], 1u);
	}
	__syncthreads();
	for (uint32_t i = threadIdx.x; i < e; i += blockDim.x)
		counts[(uint64_t)blockIdx.x * e + i] = h[i];
}

/* counts[c][e] -> base[c][e] (first position of expert e's pairs of chunk c). */
__global__ void __launch_bounds__(CAL_CUDA_THREADS)
sort_scan(uint32_t *counts, uint32_t nchunks, uint32_t e, uint32_t *offsets, uint32_t *totals)
{
	for (uint32_t x = threadIdx.x; x < e; x += blockDim.x) {
		uint32_t t = 0;
		for (uint32_t c = 0; c < nchunks; c++)
			t += counts[(uint64_t)c * e + x];
		totals[x] = t;
	}
	__syncthreads();
	if (threadIdx.x == 0) {
		uint32_t acc = 0;
		for (uint32_t x = 0; x < e; x++) {
			offsets[x] = acc;
			acc += totals[x];
		}
		offsets[e] = acc;
	}
	__syncthreads();
	for (uint32_t x = threadIdx.x; x < e; x += blockDim.x) {
		uint32_t acc = offsets[x];
		for (uint32_t c = 0; c < nchunks; c++) {
			uint32_t v = counts[(uint64_t)c * e + x];
			counts[(uint64_t)c * e + x] = acc;
			acc += v;
		}
	}
}

__global__ void sort_place(const uint32_t *idx, uint64_t n, uint32_t e, const uint32_t *base,
			   uint32_t nchunks, uint32_t *sorted_pair, uint32_t *pair_pos)
{
	uint64_t c = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (c >= nchunks)
		return;
	uint32_t *next = (uint32_t *)base + c * e; /* consumed in place */
	uint64_t c0 = c * SORT_CHUNK, c1 = c0 + SORT_CHUNK < n ? c0 + SORT_CHUNK : n;
	for (uint64_t p = c0; p < c1; p++) {
		uint32_t x = idx[p];
		if (x >= e)
			continue;
		uint32_t pos = next[x]++;
		sorted_pair[pos] = (uint32_t)p;
		pair_pos[p] = pos;
	}
}

CAL_CUDA_OP(moe_sort)
{
	cudaStream_t s;
	enum cal_status st;
	uint32_t e = a->n_experts;
	if (e > 8192)
		return cal_error_set(err, CAL_ERR_UNSUPPORTED, "moe_sort: more than 8192 experts on CUDA");
	if ((st = cal_cuda_enter(be, &s, err)) < 0)
		return st;
	if (a->n_pairs == 0) {
		CAL_CUDA_TRY(cudaMemsetAsync(a->offsets, 0, ((size_t)e + 1) * sizeof(uint32_t), s));
		return CAL_OK;
	}
	uint32_t nchunks = (uint32_t)((a->n_pairs + SORT_CHUNK - 1) / SORT_CHUNK);
	uint32_t *counts = NULL;
	size_t bytes = ((size_t)nchunks * e + e) * sizeof(uint32_t);
	CAL_CUDA_TRY(cudaMallocAsync((void **)&counts, bytes, s));
	sort_hist<<<nchunks, CAL_CUDA_THREADS, (size_t)e * sizeof(uint32_t), s>>>(a->idx, a->n_pairs,
									    e, counts);
	cudaError_t le = cudaGetLastError();
	if (le == cudaSuccess) {
		sort_scan<<<1, CAL_CUDA_THREADS, 0, s>>>(counts, nchunks, e, a->offsets,
							 counts + (size_t)nchunks * e);
		le = cudaGetLastError();
	}
	if (le == cudaSuccess) {
		sort_place<<<(nchunks + 127) / 128, 128, 0, s>>>(a->idx, a->n_pairs, e, counts, nchunks,
								 a->sorted_pair, a->pair_pos);
		le = cudaGetLastError();
	}
	cudaError_t fe = cudaFreeAsync(counts, s);
	if (le != cudaSuccess)
		return cal_cuda_fail(err, le, "moe_sort launch", __FILE__, __LINE__);
	CAL_CUDA_TRY(fe);
	return CAL_OK;
}
