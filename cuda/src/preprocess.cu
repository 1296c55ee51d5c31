// preprocess.cu - fused sensor preprocessing: unpack DN (uint16 or 12-bit
// packed), dark-current subtraction, gain, normalisation, FP32/FP16 CHW output,
// for a window (tile) of a band-sequential frame. Contract: satedge_kernels.h.
//
// Memory-bound. Threads of a block walk along output rows (consecutive
// threads -> consecutive pixels, coalesced), grid-stride loops in both grid
// dimensions cover any window. When the window and buffers are suitably
// aligned each thread handles 4 (uint16) or 8 (12-bit) pixels with vector
// loads and 8- or 16-byte stores; otherwise one pixel with bounds checks.
#include <stdint.h>

#include <cuda_fp16.h>

#include "preprocess_pixels.cuh"

#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>

#include "launch_status.cuh"
#include "satedge_kernels.h"
#endif

namespace satedge {
namespace detail {
namespace {

const int kBlockThreads = 256;
const unsigned kMaxGridX = 65535u;
const unsigned kMaxGridY = 65535u;

// ---- stores of V consecutive outputs (dst aligned to min(16, V*sizeof)) ----

__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    return static_cast<unsigned>(__half_as_ushort(__float2half_rn(lo))) |
           (static_cast<unsigned>(__half_as_ushort(__float2half_rn(hi))) << 16);
}

template <int V>
struct Store;

template <>
struct Store<1> {
    static __device__ __forceinline__ void run(float *d, const float *v) { d[0] = v[0]; }
    static __device__ __forceinline__ void run(__half *d, const float *v) { d[0] = __float2half_rn(v[0]); }
};

template <>
struct Store<4> {
    static __device__ __forceinline__ void run(float *d, const float *v) {
        *reinterpret_cast<float4 *>(d) = make_float4(v[0], v[1], v[2], v[3]);
    }
    static __device__ __forceinline__ void run(__half *d, const float *v) {
        *reinterpret_cast<uint2 *>(d) = make_uint2(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]));
    }
};

template <>
struct Store<8> {
    static __device__ __forceinline__ void run(float *d, const float *v) {
        float4 *d4 = reinterpret_cast<float4 *>(d);
        d4[0] = make_float4(v[0], v[1], v[2], v[3]);
        d4[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
    static __device__ __forceinline__ void run(__half *d, const float *v) {
        *reinterpret_cast<uint4 *>(d) = make_uint4(pack_half2(v[0], v[1]), pack_half2(v[2], v[3]),
                                                   pack_half2(v[4], v[5]), pack_half2(v[6], v[7]));
    }
};

// ---- the pixels of one thread: chunk c of an output row ----

template <bool kVectorised>
struct Chunk;

template <>
struct Chunk<false> {  // 1 pixel, column c
    template <class Src>
    static __device__ __forceinline__ void run(const Src &src, const FrameWindow &w, const RowCtx &r, int64_t c,
                                               float *v) {
        v[0] = pixel_generic(src, w, r, c);
    }
};

template <>
struct Chunk<true> {  // Src::kVec pixels, columns c*kVec .. c*kVec+kVec-1
    template <class Src>
    static __device__ __forceinline__ void run(const Src &src, const FrameWindow &w, const RowCtx &r, int64_t c,
                                               float *v) {
        pixels_vec(src, w, r, c * Src::kVec, v);
    }
};

// ---- kernel ----

// kVectorised: each thread handles Src::kVec pixels (see vector_path_ok);
// otherwise one pixel, bounds-checked against the frame.
template <class Src, class OutT, bool kVectorised>
__global__ void __launch_bounds__(kBlockThreads)
    preprocess_kernel(Src src, FrameWindow w, OutT *__restrict__ dst) {
    const int V = kVectorised ? Src::kVec : 1;
    const int64_t rows = static_cast<int64_t>(w.bands) * w.tile_h;
    const int64_t chunks = w.tile_w / V;  // tile_w % V == 0 when vectorised
    const int64_t row_stride = static_cast<int64_t>(gridDim.y) * blockDim.y;
    const int64_t chunk_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;

    for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < rows;
         row += row_stride) {
        const RowCtx r = make_row_ctx(w, row);
        OutT *out_row = dst + row * w.tile_w;
        for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
             c += chunk_stride) {
            float v[V];
            Chunk<kVectorised>::run(src, w, r, c, v);
            Store<V>::run(out_row + c * V, v);
        }
    }
}

#if defined(__CUDACC_RTC__)
// NVRTC compiles device code only (cuda/nvrtc_check.py): instantiate every
// kernel the host code below launches.
template __global__ void preprocess_kernel<U16Source, float, false>(U16Source, FrameWindow, float *);
template __global__ void preprocess_kernel<U16Source, float, true>(U16Source, FrameWindow, float *);
template __global__ void preprocess_kernel<U16Source, __half, false>(U16Source, FrameWindow, __half *);
template __global__ void preprocess_kernel<U16Source, __half, true>(U16Source, FrameWindow, __half *);
template __global__ void preprocess_kernel<U12PackedSource, float, false>(U12PackedSource, FrameWindow, float *);
template __global__ void preprocess_kernel<U12PackedSource, float, true>(U12PackedSource, FrameWindow, float *);
template __global__ void preprocess_kernel<U12PackedSource, __half, false>(U12PackedSource, FrameWindow, __half *);
template __global__ void preprocess_kernel<U12PackedSource, __half, true>(U12PackedSource, FrameWindow, __half *);
#else

// ---- host side ----

bool aligned(const void *p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// The vectorised path needs: window inside the frame; width, x0 and tile_w
// multiples of the vector unit (so every row's first pixel index is too);
// src aligned for the vector loads; dst aligned for the vector stores.
template <class Src, class OutT>
bool vector_path_ok(const void *src, const void *dst, const FrameWindow &w) {
    const int vec = Src::kVec;
    const int64_t x_end = static_cast<int64_t>(w.x0) + w.tile_w;
    const int64_t y_end = static_cast<int64_t>(w.y0) + w.tile_h;
    const bool inside = w.x0 >= 0 && w.y0 >= 0 && x_end <= w.width && y_end <= w.height;
    const uintptr_t store_bytes = vec * sizeof(OutT) < 16 ? vec * sizeof(OutT) : 16;
    return inside && w.width % vec == 0 && w.x0 % vec == 0 && w.tile_w % vec == 0 &&
           aligned(src, static_cast<uintptr_t>(Src::kVecAlign)) && aligned(dst, store_bytes);
}

unsigned clamp_grid(int64_t blocks, unsigned limit) {
    return blocks < 1 ? 1u : (blocks > limit ? limit : static_cast<unsigned>(blocks));
}

template <class Src, class OutT, bool kVectorised>
void launch(const Src &src, const FrameWindow &w, void *dst, cudaStream_t stream) {
    const int V = kVectorised ? Src::kVec : 1;
    const int64_t chunks = w.tile_w / V;
    const int64_t rows = static_cast<int64_t>(w.bands) * w.tile_h;
    // Narrow windows: fewer threads along x, more rows per block.
    unsigned bx = 32;
    while (bx < static_cast<unsigned>(kBlockThreads) && bx < chunks) {
        bx *= 2;
    }
    const dim3 block(bx, kBlockThreads / bx);
    const dim3 grid(clamp_grid((chunks + block.x - 1) / block.x, kMaxGridX),
                    clamp_grid((rows + block.y - 1) / block.y, kMaxGridY));
    preprocess_kernel<Src, OutT, kVectorised><<<grid, block, 0, stream>>>(src, w, static_cast<OutT *>(dst));
}

template <class Src, class OutT>
void dispatch_vector(const Src &src, const FrameWindow &w, void *dst, cudaStream_t stream) {
    if (vector_path_ok<Src, OutT>(src.p, dst, w)) {
        launch<Src, OutT, true>(src, w, dst, stream);
    } else {
        launch<Src, OutT, false>(src, w, dst, stream);
    }
}

template <class Src>
satedge_status preprocess(const Src &src, int bands, int height, int width, int x0, int y0, int tile_h,
                          int tile_w, const float *dark, const float *gain, const float *scale,
                          const float *offset, void *dst, satedge_dtype dst_dtype, cudaStream_t stream) {
    if (src.p == NULL || dst == NULL || bands < 1 || height < 1 || width < 1 || tile_h < 0 || tile_w < 0 ||
        (dst_dtype != SATEDGE_DTYPE_FLOAT32 && dst_dtype != SATEDGE_DTYPE_FLOAT16)) {
        return finish_without_cuda(SATEDGE_ERR_INVALID_ARG);
    }
    // Elements must be naturally aligned (a misaligned access would fault).
    const uintptr_t dst_elem = dst_dtype == SATEDGE_DTYPE_FLOAT32 ? sizeof(float) : sizeof(__half);
    if (!aligned(src.p, sizeof(*src.p)) || !aligned(dst, dst_elem) || !aligned(dark, sizeof(float)) ||
        !aligned(gain, sizeof(float)) || !aligned(scale, sizeof(float)) || !aligned(offset, sizeof(float))) {
        return finish_without_cuda(SATEDGE_ERR_INVALID_ARG);
    }
    if (tile_h == 0 || tile_w == 0) {
        return finish_without_cuda(SATEDGE_OK);
    }
    FrameWindow w;
    w.bands = bands;
    w.height = height;
    w.width = width;
    w.x0 = x0;
    w.y0 = y0;
    w.tile_h = tile_h;
    w.tile_w = tile_w;
    w.dark = dark;
    w.gain = gain;
    w.scale = scale;
    w.offset = offset;
    if (dst_dtype == SATEDGE_DTYPE_FLOAT32) {
        dispatch_vector<Src, float>(src, w, dst, stream);
    } else {
        dispatch_vector<Src, __half>(src, w, dst, stream);
    }
    return finish_after_launch();
}

#endif  // __CUDACC_RTC__

}  // namespace
}  // namespace detail
}  // namespace satedge

#if !defined(__CUDACC_RTC__)

extern "C" {

satedge_status satedge_preprocess_u16(const uint16_t *src, int bands, int height, int width, int x0, int y0,
                                      int tile_h, int tile_w, const float *dark, const float *gain,
                                      const float *scale, const float *offset, void *dst,
                                      satedge_dtype dst_dtype, cudaStream_t stream) {
    satedge::detail::U16Source s;
    s.p = src;
    return satedge::detail::preprocess(s, bands, height, width, x0, y0, tile_h, tile_w, dark, gain, scale,
                                       offset, dst, dst_dtype, stream);
}

satedge_status satedge_preprocess_u12packed(const uint8_t *src, int bands, int height, int width, int x0,
                                            int y0, int tile_h, int tile_w, const float *dark,
                                            const float *gain, const float *scale, const float *offset,
                                            void *dst, satedge_dtype dst_dtype, cudaStream_t stream) {
    satedge::detail::U12PackedSource s;
    s.p = src;
    return satedge::detail::preprocess(s, bands, height, width, x0, y0, tile_h, tile_w, dark, gain, scale,
                                       offset, dst, dst_dtype, stream);
}

}  // extern "C"

#endif  // !__CUDACC_RTC__
