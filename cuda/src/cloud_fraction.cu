// cloud_fraction.cu - per-tile fraction of nonzero cloud-mask pixels.
// Contract: satedge_kernels.h.
//
// One block per tile (grid-stride over tiles). Each thread counts nonzero
// bytes with 16-byte loads over the aligned body of the tile (scalar loads
// for the unaligned head and the tail), then the block sums the counts with
// warp shuffles and one shared-memory step between warps.
#include <stdint.h>

#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>

#include "launch_status.cuh"
#include "satedge_kernels.h"
#endif

namespace satedge {
namespace detail {
namespace {

const int kBlockThreads = 256;  // a multiple of 32: every warp is full
const int kWarps = kBlockThreads / 32;
const int kMaxGrid = 65535;
const unsigned kFullMask = 0xFFFFFFFFu;

// Number of nonzero bytes in a 32-bit word: per byte, (b & 0x7F) + 0x7F has
// its high bit set iff the low 7 bits are nonzero (no carry leaves the byte);
// OR-ing b adds the case of a set high bit.
__device__ __forceinline__ unsigned nonzero_bytes(unsigned w) {
    return static_cast<unsigned>(__popc((((w & 0x7F7F7F7Fu) + 0x7F7F7F7Fu) | w) & 0x80808080u));
}

__device__ __forceinline__ unsigned warp_sum(unsigned v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_down_sync(kFullMask, v, off);
    }
    return v;
}

// Sum over the block; the result is valid in thread 0. Ends with a barrier so
// `partial` can be reused by the next call.
__device__ __forceinline__ unsigned block_sum(unsigned v, unsigned *partial) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) {
        partial[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        v = warp_sum(lane < kWarps ? partial[lane] : 0u);
    }
    __syncthreads();
    return v;
}

__global__ void __launch_bounds__(kBlockThreads)
    cloud_fraction_kernel(const uint8_t *__restrict__ mask, int n_tiles, int tile_pixels,
                          float *__restrict__ out_fraction) {
    __shared__ unsigned partial[kWarps];
    for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const uint8_t *t = mask + tile * tile_pixels;
        // Head: bytes before the first 16-byte boundary (fewer than 16).
        int head = static_cast<int>((16u - (reinterpret_cast<uintptr_t>(t) & 15u)) & 15u);
        if (head > tile_pixels) {
            head = tile_pixels;
        }
        const int n_vec = (tile_pixels - head) / 16;
        const int tail_begin = head + n_vec * 16;

        unsigned count = 0;
        if (static_cast<int>(threadIdx.x) < head) {
            count += __ldg(t + threadIdx.x) != 0;
        }
        const uint4 *body = reinterpret_cast<const uint4 *>(t + head);
        for (int i = threadIdx.x; i < n_vec; i += blockDim.x) {
            const uint4 q = __ldg(body + i);
            count += nonzero_bytes(q.x) + nonzero_bytes(q.y) + nonzero_bytes(q.z) + nonzero_bytes(q.w);
        }
        for (int i = tail_begin + threadIdx.x; i < tile_pixels; i += blockDim.x) {
            count += __ldg(t + i) != 0;
        }

        count = block_sum(count, partial);
        if (threadIdx.x == 0) {
            // count <= tile_pixels < 2^31: exact in double; one rounding to float.
            out_fraction[tile] = static_cast<float>(static_cast<double>(count) / static_cast<double>(tile_pixels));
        }
    }
}

}  // namespace
}  // namespace detail
}  // namespace satedge

#if !defined(__CUDACC_RTC__)  // NVRTC (cuda/nvrtc_check.py) compiles the kernel only

extern "C" {

satedge_status satedge_cloud_fraction(const uint8_t *mask, int n_tiles, int tile_pixels, float *out_fraction,
                                      cudaStream_t stream) {
    using namespace satedge::detail;
    if (mask == NULL || out_fraction == NULL || n_tiles < 0 || tile_pixels < 1 ||
        reinterpret_cast<uintptr_t>(out_fraction) % sizeof(float) != 0) {
        return finish_without_cuda(SATEDGE_ERR_INVALID_ARG);
    }
    if (n_tiles == 0) {
        return finish_without_cuda(SATEDGE_OK);
    }
    const unsigned grid = static_cast<unsigned>(n_tiles < kMaxGrid ? n_tiles : kMaxGrid);
    cloud_fraction_kernel<<<grid, kBlockThreads, 0, stream>>>(mask, n_tiles, tile_pixels, out_fraction);
    return finish_after_launch();
}

}  // extern "C"

#endif  // !__CUDACC_RTC__
