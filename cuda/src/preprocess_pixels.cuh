// preprocess_pixels.cuh - internal: DN sources, 12-bit unpacking, calibration
// and the per-thread work of the preprocessing kernels.
//
// Everything here is __host__ __device__ so that the exact decode and
// arithmetic of the kernels can also be exercised by host code. Layouts and
// formulas are specified in satedge_kernels.h.
#ifndef SATEDGE_PREPROCESS_PIXELS_CUH_
#define SATEDGE_PREPROCESS_PIXELS_CUH_

#include <stdint.h>

#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>
#endif

#include "device_common.cuh"  // SATEDGE_HD, SATEDGE_UNROLL, cached_load

namespace satedge {
namespace detail {

// Frame geometry, window and calibration arrays of one call.
struct FrameWindow {
    int bands;
    int height;
    int width;
    int x0;
    int y0;
    int tile_h;
    int tile_w;
    const float *dark;    // may be NULL: 0
    const float *gain;    // may be NULL: 1
    const float *scale;   // may be NULL: 1
    const float *offset;  // may be NULL: 0
};

struct Calib {
    float dark;
    float gain;
    float scale;
    float offset;
};

// y = ((dn - dark) * gain) * scale + offset, each step rounded to nearest,
// never contracted into an FMA (bit-identical to numpy float32 in this order).
SATEDGE_HD float normalize(float dn, const Calib &c) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(dn, c.dark), c.gain), c.scale), c.offset);
#else
    volatile float t = dn - c.dark;  // volatile: keep host compilers from contracting
    t = t * c.gain;
    t = t * c.scale;
    return t + c.offset;
#endif
}

// Per-row context: band, source row, calibration.
struct RowCtx {
    Calib calib;
    int64_t src_row;  // pixel index of frame pixel (b, y, 0); valid if in_frame
    bool in_frame;    // source row y lies inside the frame
};

// `row` is the output row b * tile_h + ty, 0 <= row < bands * tile_h.
SATEDGE_HD RowCtx make_row_ctx(const FrameWindow &w, int64_t row) {
    // 32-bit division when it suffices (always, in practice): 64-bit integer
    // division is a long instruction sequence on the GPU.
    const int64_t b = row <= 0x7FFFFFFF ? static_cast<int64_t>(static_cast<uint32_t>(row) /
                                                               static_cast<uint32_t>(w.tile_h))
                                        : row / w.tile_h;
    const int64_t y = static_cast<int64_t>(w.y0) + (row - b * w.tile_h);
    RowCtx r;
    r.calib.dark = w.dark ? cached_load(w.dark + b) : 0.0f;
    r.calib.gain = w.gain ? cached_load(w.gain + b) : 1.0f;
    r.calib.scale = w.scale ? cached_load(w.scale + b) : 1.0f;
    r.calib.offset = w.offset ? cached_load(w.offset + b) : 0.0f;
    r.in_frame = y >= 0 && y < w.height;
    r.src_row = r.in_frame ? (b * w.height + y) * w.width : 0;
    return r;
}

// Plain uint16 DN. Vector unit: 4 pixels (one 8-byte load).
struct U16Source {
    static const int kVec = 4;
    static const int kVecAlign = 8;  // bytes, for the base pointer
    const uint16_t *p;

    SATEDGE_HD unsigned at(int64_t i) const { return cached_load(p + i); }

    // Pixels i .. i+3; i % 4 == 0 and p 8-byte aligned.
    SATEDGE_HD void vec(int64_t i, unsigned dn[kVec]) const {
        const ushort4 v = cached_load(reinterpret_cast<const ushort4 *>(p + i));
        dn[0] = v.x;
        dn[1] = v.y;
        dn[2] = v.z;
        dn[3] = v.w;
    }
};

// 12-bit packed DN (layout in satedge_kernels.h). Vector unit: 8 pixels
// = 12 bytes = three 4-byte loads.
struct U12PackedSource {
    static const int kVec = 8;
    static const int kVecAlign = 4;
    const uint8_t *p;

    // Pixel i lives in bits 12i .. 12i+11 of the little-endian bit stream:
    // bytes floor(1.5 i) and floor(1.5 i) + 1.
    SATEDGE_HD unsigned at(int64_t i) const {
        const int64_t byte = (i * 3) >> 1;
        const unsigned lo = cached_load(p + byte);
        const unsigned hi = cached_load(p + byte + 1);
        return (i & 1) ? ((lo >> 4) | (hi << 4)) : (lo | ((hi & 0xFu) << 8));
    }

    // Pixels i .. i+7; i % 8 == 0 (so the byte offset 1.5 i is a multiple of
    // 12) and p 4-byte aligned. Words are little-endian, as on every CUDA GPU.
    SATEDGE_HD void vec(int64_t i, unsigned dn[kVec]) const {
        const unsigned *q = reinterpret_cast<const unsigned *>(p + ((i * 3) >> 1));
        const unsigned w0 = cached_load(q);
        const unsigned w1 = cached_load(q + 1);
        const unsigned w2 = cached_load(q + 2);
        dn[0] = w0 & 0xFFFu;                        // bits  0..11
        dn[1] = (w0 >> 12) & 0xFFFu;                // bits 12..23
        dn[2] = (w0 >> 24) | ((w1 & 0xFu) << 8);    // bits 24..35
        dn[3] = (w1 >> 4) & 0xFFFu;                 // bits 36..47
        dn[4] = (w1 >> 16) & 0xFFFu;                // bits 48..59
        dn[5] = (w1 >> 28) | ((w2 & 0xFFu) << 4);   // bits 60..71
        dn[6] = (w2 >> 8) & 0xFFFu;                 // bits 72..83
        dn[7] = w2 >> 20;                           // bits 84..95
    }
};

// Output column tx of a row, any window (bounds-checked, scalar loads).
template <class Src>
SATEDGE_HD float pixel_generic(const Src &src, const FrameWindow &w, const RowCtx &r, int64_t tx) {
    const int64_t x = static_cast<int64_t>(w.x0) + tx;
    if (!r.in_frame || x < 0 || x >= w.width) {
        return r.calib.offset;  // outside the frame: (dn - dark) taken as 0
    }
    return normalize(static_cast<float>(src.at(r.src_row + x)), r.calib);
}

// Output columns tx .. tx+kVec-1 of a row, vectorised path only: the window
// lies inside the frame and width, x0 and tx are multiples of kVec.
template <class Src>
SATEDGE_HD void pixels_vec(const Src &src, const FrameWindow &w, const RowCtx &r, int64_t tx,
                           float out[Src::kVec]) {
    unsigned dn[Src::kVec];
    src.vec(r.src_row + w.x0 + tx, dn);
    SATEDGE_UNROLL
    for (int k = 0; k < Src::kVec; ++k) {
        out[k] = normalize(static_cast<float>(dn[k]), r.calib);
    }
}

}  // namespace detail
}  // namespace satedge

#endif  // SATEDGE_PREPROCESS_PIXELS_CUH_
