// nsi_sparsify.cu - RS-DGC's neighbourhood statistical indicator (NSI):
// per-element score, exact k-largest threshold by radix select, and ordered
// compaction to (index, value). Contract: satedge_kernels.h; per-element
// work: nsi_elements.cuh.
//
// Everything stays on the device and on the caller's stream:
//   score    one thread per element (p x p neighbours through the read-only cache)
//   select   4 passes: block histogram of one 8-bit digit of the candidates'
//            keys (shared-memory atomics, then global), then a one-block pick
//   count    per chunk of kChunk elements: how many keys are > T and == T
//   scan     one block: exclusive prefix sums of those counts over chunks
//   scatter  per chunk, in index order (block scans): slot = (#kept before)
#include <stdint.h>

#include "nsi_elements.cuh"

#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>

#include "launch_status.cuh"
#include "satedge_kernels.h"
#endif

namespace satedge {
namespace detail {
namespace {

const int kThreads = 256;  // every kernel; a multiple of 32
const int kWarps = kThreads / 32;
const int kChunkIters = 8;
const int kChunk = kThreads * kChunkIters;  // elements per chunk (count / scatter)
const int kMaxGrid = 65535;
const unsigned kFullMask = 0xFFFFFFFFu;

__global__ void __launch_bounds__(kThreads) nsi_score_kernel(NsiParams q, float *__restrict__ score) {
    const int64_t n = static_cast<int64_t>(q.rows) * q.cols;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int r = static_cast<int>(i / q.cols);
        score[i] = nsi_score_at(q, r, static_cast<int>(i - static_cast<int64_t>(r) * q.cols));
    }
}

__global__ void __launch_bounds__(kThreads) nsi_select_init_kernel(SelectState *state, unsigned *hist, unsigned k) {
    hist[threadIdx.x] = 0u;  // kThreads == 256 bins
    if (threadIdx.x == 0) {
        state->prefix = 0u;
        state->mask = 0u;
        state->k_rem = k;
        state->pad = 0u;
    }
}

__global__ void __launch_bounds__(kThreads)
    nsi_histogram_kernel(const float *__restrict__ score, int n, const SelectState *__restrict__ state,
                         unsigned *__restrict__ hist, int shift) {
    __shared__ unsigned bins[256];
    bins[threadIdx.x] = 0u;
    __syncthreads();
    const unsigned prefix = state->prefix, mask = state->mask;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const unsigned key = order_key(__ldg(score + i));
        if ((key & mask) == prefix) {
            atomicAdd(&bins[(key >> shift) & 0xFFu], 1u);
        }
    }
    __syncthreads();
    if (bins[threadIdx.x] != 0u) {
        atomicAdd(hist + threadIdx.x, bins[threadIdx.x]);
    }
}

__global__ void __launch_bounds__(kThreads)
    nsi_pick_kernel(SelectState *state, unsigned *hist, int shift, float *threshold) {
    if (threadIdx.x == 0) {
        SelectState st = *state;
        radix_pick(hist, shift, st);
        *state = st;
        if (shift == 0 && threshold != NULL) {
            *threshold = key_value(st.prefix);
        }
    }
    __syncthreads();
    hist[threadIdx.x] = 0u;  // ready for the next pass
}

// Exclusive block-wide prefix sum of v; *total gets the block's sum.
__device__ __forceinline__ unsigned block_exclusive_scan(unsigned v, unsigned *warp_sums, unsigned *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned x = v;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned y = __shfl_up_sync(kFullMask, x, off);
        x += lane >= off ? y : 0u;
    }
    if (lane == 31) {
        warp_sums[warp] = x;
    }
    __syncthreads();
    if (warp == 0) {
        unsigned s = lane < kWarps ? warp_sums[lane] : 0u;
#pragma unroll
        for (int off = 1; off < kWarps; off <<= 1) {
            const unsigned y = __shfl_up_sync(kFullMask, s, off);
            s += lane >= off ? y : 0u;
        }
        if (lane < kWarps) {
            warp_sums[lane] = s;  // inclusive
        }
    }
    __syncthreads();
    const unsigned before = warp > 0 ? warp_sums[warp - 1] : 0u;
    *total = warp_sums[kWarps - 1];
    __syncthreads();  // warp_sums is reused by the next call
    return before + x - v;
}

// counts[2c] = #(key > T), counts[2c+1] = #(key == T) in chunk c.
__global__ void __launch_bounds__(kThreads)
    nsi_count_kernel(const float *__restrict__ score, int n, const SelectState *__restrict__ state,
                     unsigned *__restrict__ counts, int n_chunks) {
    __shared__ unsigned warp_sums[kWarps];
    const unsigned t = state->prefix;
    for (int c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        unsigned packed = 0u;  // gt | eq << 16 (at most kChunkIters each per thread)
        for (int it = 0; it < kChunkIters; ++it) {
            const int64_t i = static_cast<int64_t>(c) * kChunk + it * kThreads + threadIdx.x;
            if (i < n) {
                const unsigned key = order_key(__ldg(score + i));
                packed += key > t ? 1u : (key == t ? 0x10000u : 0u);
            }
        }
        unsigned total;
        block_exclusive_scan(packed, warp_sums, &total);  // used for its total only
        if (threadIdx.x == 0) {
            counts[2 * c] = total & 0xFFFFu;
            counts[2 * c + 1] = total >> 16;
        }
    }
}

// In-place exclusive scan of the (gt, eq) pairs over all chunks; one block.
__global__ void __launch_bounds__(kThreads) nsi_scan_kernel(unsigned *counts, int n_chunks) {
    __shared__ unsigned warp_sums[kWarps];
    unsigned carry_gt = 0u, carry_eq = 0u;
    for (int base = 0; base < n_chunks; base += kThreads) {
        const int c = base + static_cast<int>(threadIdx.x);
        const unsigned gt = c < n_chunks ? counts[2 * c] : 0u;
        const unsigned eq = c < n_chunks ? counts[2 * c + 1] : 0u;
        unsigned tot_gt, tot_eq;
        const unsigned ex_gt = block_exclusive_scan(gt, warp_sums, &tot_gt);
        const unsigned ex_eq = block_exclusive_scan(eq, warp_sums, &tot_eq);
        if (c < n_chunks) {
            counts[2 * c] = carry_gt + ex_gt;
            counts[2 * c + 1] = carry_eq + ex_eq;
        }
        carry_gt += tot_gt;
        carry_eq += tot_eq;
    }
}

__global__ void __launch_bounds__(kThreads)
    nsi_scatter_kernel(const float *__restrict__ score, const float *__restrict__ grad, int n,
                       const SelectState *__restrict__ state, const unsigned *__restrict__ offsets, int n_chunks,
                       int32_t *__restrict__ out_index, float *__restrict__ out_value) {
    __shared__ unsigned warp_sums[kWarps];
    const unsigned t = state->prefix, k_eq = state->k_rem;
    for (int c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        unsigned gt_base = offsets[2 * c], eq_base = offsets[2 * c + 1];
        for (int it = 0; it < kChunkIters; ++it) {
            const int64_t i = static_cast<int64_t>(c) * kChunk + it * kThreads + threadIdx.x;
            unsigned flag = 0u;
            if (i < n) {
                const unsigned key = order_key(__ldg(score + i));
                flag = key > t ? 1u : (key == t ? 0x10000u : 0u);
            }
            unsigned total;
            const unsigned ex = block_exclusive_scan(flag, warp_sums, &total);
            const unsigned gt_before = gt_base + (ex & 0xFFFFu), eq_before = eq_base + (ex >> 16);
            if (flag == 1u || (flag != 0u && eq_before < k_eq)) {
                const unsigned slot = output_slot(gt_before, eq_before, k_eq);
                out_index[slot] = static_cast<int32_t>(i);  // i < n < 2^31
                out_value[slot] = __ldg(grad + i);
            }
            gt_base += total & 0xFFFFu;
            eq_base += total >> 16;
        }
    }
}

#if !defined(__CUDACC_RTC__)

bool aligned(const void *p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

unsigned grid_for(int64_t blocks) {
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxGrid ? kMaxGrid : blocks));
}

size_t round_up(size_t v) { return (v + 255u) & ~static_cast<size_t>(255u); }

bool score_args_ok(const float *grad, int rows, int cols, int p, float beta, satedge_nsi_variant variant) {
    if (grad == NULL || !aligned(grad, sizeof(float)) || rows < 1 || cols < 1 || p < 1 || p > 255 || p % 2 == 0) {
        return false;
    }
    if (static_cast<int64_t>(rows) * cols >= (static_cast<int64_t>(1) << 31)) {
        return false;
    }
    if (variant == SATEDGE_NSI_COHERENCE) {
        return beta >= 0.0f && beta <= 1.0f;
    }
    return variant == SATEDGE_NSI_MEAN_STD;
}

NsiParams make_params(const float *grad, int rows, int cols, int p, float beta, float lam,
                      satedge_nsi_variant variant) {
    NsiParams q;
    q.grad = grad;
    q.rows = rows;
    q.cols = cols;
    q.p = p;
    q.beta = beta;
    q.lam = lam;
    q.variant = variant == SATEDGE_NSI_MEAN_STD ? 1 : 0;
    return q;
}

void launch_score(const NsiParams &q, float *score, cudaStream_t stream) {
    const int64_t n = static_cast<int64_t>(q.rows) * q.cols;
    nsi_score_kernel<<<grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(q, score);
}

#endif  // !__CUDACC_RTC__

}  // namespace
}  // namespace detail
}  // namespace satedge

#if !defined(__CUDACC_RTC__)

extern "C" {

satedge_status satedge_nsi_score(const float *grad, int rows, int cols, int p, float beta, float lam,
                                 satedge_nsi_variant variant, float *score, cudaStream_t stream) {
    using namespace satedge::detail;
    if (!score_args_ok(grad, rows, cols, p, beta, variant) || score == NULL || !aligned(score, sizeof(float))) {
        return finish_without_cuda(SATEDGE_ERR_INVALID_ARG);
    }
    launch_score(make_params(grad, rows, cols, p, beta, lam, variant), score, stream);
    return finish_after_launch();
}

// Workspace: [scores: n floats][SelectState][hist: 256][counts: 2 per chunk],
// each part starting on a 256-byte boundary.
size_t satedge_nsi_sparsify_workspace_size(int rows, int cols) {
    using namespace satedge::detail;
    if (rows < 1 || cols < 1 || static_cast<int64_t>(rows) * cols >= (static_cast<int64_t>(1) << 31)) {
        return 0;
    }
    const int64_t n = static_cast<int64_t>(rows) * cols;
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    return round_up(static_cast<size_t>(n) * sizeof(float)) + round_up(sizeof(SelectState)) +
           round_up(256 * sizeof(unsigned)) + round_up(static_cast<size_t>(2 * n_chunks) * sizeof(unsigned));
}

satedge_status satedge_nsi_sparsify(const float *grad, int rows, int cols, int p, float beta, float lam,
                                    satedge_nsi_variant variant, int k, void *workspace, size_t workspace_bytes,
                                    int32_t *out_index, float *out_value, float *out_threshold,
                                    cudaStream_t stream) {
    using namespace satedge::detail;
    if (!score_args_ok(grad, rows, cols, p, beta, variant) || workspace == NULL || out_index == NULL ||
        out_value == NULL || !aligned(workspace, 16) || !aligned(out_index, sizeof(int32_t)) ||
        !aligned(out_value, sizeof(float)) || !aligned(out_threshold, sizeof(float))) {
        return finish_without_cuda(SATEDGE_ERR_INVALID_ARG);
    }
    const int n = rows * cols;  // < 2^31, checked above
    if (k < 1 || k > n || workspace_bytes < satedge_nsi_sparsify_workspace_size(rows, cols)) {
        return finish_without_cuda(SATEDGE_ERR_INVALID_ARG);
    }
    const int n_chunks = (n + kChunk - 1) / kChunk;
    char *ws = static_cast<char *>(workspace);
    float *score = reinterpret_cast<float *>(ws);
    ws += round_up(static_cast<size_t>(n) * sizeof(float));
    SelectState *state = reinterpret_cast<SelectState *>(ws);
    ws += round_up(sizeof(SelectState));
    unsigned *hist = reinterpret_cast<unsigned *>(ws);
    ws += round_up(256 * sizeof(unsigned));
    unsigned *counts = reinterpret_cast<unsigned *>(ws);

    launch_score(make_params(grad, rows, cols, p, beta, lam, variant), score, stream);
    nsi_select_init_kernel<<<1, kThreads, 0, stream>>>(state, hist, static_cast<unsigned>(k));
    const unsigned hist_grid = grid_for((static_cast<int64_t>(n) + 4 * kThreads - 1) / (4 * kThreads));
    for (int shift = 24; shift >= 0; shift -= 8) {
        nsi_histogram_kernel<<<hist_grid, kThreads, 0, stream>>>(score, n, state, hist, shift);
        nsi_pick_kernel<<<1, kThreads, 0, stream>>>(state, hist, shift, out_threshold);
    }
    const unsigned chunk_grid = grid_for(n_chunks);
    nsi_count_kernel<<<chunk_grid, kThreads, 0, stream>>>(score, n, state, counts, n_chunks);
    nsi_scan_kernel<<<1, kThreads, 0, stream>>>(counts, n_chunks);
    nsi_scatter_kernel<<<chunk_grid, kThreads, 0, stream>>>(score, grad, n, state, counts, n_chunks, out_index,
                                                            out_value);
    return finish_after_launch();
}

}  // extern "C"

#endif  // !__CUDACC_RTC__
