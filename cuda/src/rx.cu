// rx.cu - RX anomaly score: global RX (precomputed inverse covariance) and
// local dual-window RX. Contract: satedge_kernels.h; per-pixel work:
// rx_pixels.cuh.
//
// Global RX is memory-bound for a few bands and compute-bound for many: one
// thread per pixel, consecutive threads on consecutive pixels (coalesced band
// planes), bands in register chunks of 8 so that each band value is reloaded
// about bands/16 times instead of bands times, the matrix read through the
// read-only cache with warp-uniform addresses (broadcast).
// Local RX is compute-bound: one warp per pixel, background pixels staged 32
// at a time in shared memory (one lane per pixel on load, coalesced), the
// d(d+1)/2 second moments spread over the lanes, then a warp Cholesky.
#include <stdint.h>

#include <cuda_fp16.h>

#include "rx_pixels.cuh"

#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>

#include "launch_status.cuh"
#include "satedge_kernels.h"
#endif

namespace satedge {
namespace detail {
namespace {

const int kGlobalThreads = 256;
const int kGlobalChunk = 8;
const int kLocalWarps = 4;  // warps per block of the local kernel
const int kMaxGrid = 65535;

template <class Cube>
__global__ void __launch_bounds__(kGlobalThreads)
    rx_global_kernel(Cube cube, const float *__restrict__ mean, const float *__restrict__ inv_cov, int bands,
                     int64_t n_pix, float *__restrict__ score) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < n_pix; p += stride) {
        score[p] = rx_global_pixel<kGlobalChunk>(cube, mean, inv_cov, bands, n_pix, p);
    }
}

template <class Cube, int MAXE>
__global__ void __launch_bounds__(kLocalWarps * 32)
    rx_local_kernel(Cube cube, LocalRxGeom g, float *__restrict__ score) {
    __shared__ LocalRxScratch scratch[kLocalWarps];
    const int warp = threadIdx.x >> 5;
    DeviceWarp w;
    w.lane = threadIdx.x & 31;
    LocalRxLane<MAXE> st;
    local_rx_setup(w, &st, g.bands);
    const int64_t n_pix = static_cast<int64_t>(g.height) * g.width;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kLocalWarps;
    for (int64_t p = static_cast<int64_t>(blockIdx.x) * kLocalWarps + warp; p < n_pix; p += stride) {
        const int y = static_cast<int>(p / g.width);
        const int x = static_cast<int>(p - static_cast<int64_t>(y) * g.width);
        const float v = local_rx_pixel(w, &st, scratch[warp], cube, g, y, x);
        if (w.lane == 0) {
            score[p] = v;
        }
    }
}

#if defined(__CUDACC_RTC__)
// NVRTC compiles device code only (cuda/nvrtc_check.py): instantiate every
// kernel the host code below launches.
template __global__ void rx_global_kernel<CubeF32>(CubeF32, const float *, const float *, int, int64_t, float *);
template __global__ void rx_global_kernel<CubeF16>(CubeF16, const float *, const float *, int, int64_t, float *);
template __global__ void rx_local_kernel<CubeF32, 2>(CubeF32, LocalRxGeom, float *);
template __global__ void rx_local_kernel<CubeF32, 5>(CubeF32, LocalRxGeom, float *);
template __global__ void rx_local_kernel<CubeF32, 17>(CubeF32, LocalRxGeom, float *);
template __global__ void rx_local_kernel<CubeF16, 2>(CubeF16, LocalRxGeom, float *);
template __global__ void rx_local_kernel<CubeF16, 5>(CubeF16, LocalRxGeom, float *);
template __global__ void rx_local_kernel<CubeF16, 17>(CubeF16, LocalRxGeom, float *);
#else

bool aligned(const void *p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

unsigned grid_for(int64_t blocks) {
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxGrid ? kMaxGrid : blocks));
}

// Checks shared by both entry points: cube, dtype, sizes, output.
bool cube_args_ok(const void *cube, satedge_dtype dtype, int bands, int height, int width, const float *score) {
    if (cube == NULL || score == NULL || bands < 1 || height < 1 || width < 1 ||
        (dtype != SATEDGE_DTYPE_FLOAT32 && dtype != SATEDGE_DTYPE_FLOAT16)) {
        return false;
    }
    if (static_cast<int64_t>(height) * width >= (static_cast<int64_t>(1) << 31)) {
        return false;
    }
    const uintptr_t elem = dtype == SATEDGE_DTYPE_FLOAT32 ? sizeof(float) : sizeof(__half);
    return aligned(cube, elem) && aligned(score, sizeof(float));
}

template <class Cube>
void launch_local(const Cube &cube, const LocalRxGeom &g, float *score, cudaStream_t stream) {
    const int64_t n_pix = static_cast<int64_t>(g.height) * g.width;
    const unsigned grid = grid_for((n_pix + kLocalWarps - 1) / kLocalWarps);
    const unsigned block = kLocalWarps * 32;
    if (g.bands <= 8) {  // 36 entries: 2 per lane
        rx_local_kernel<Cube, 2><<<grid, block, 0, stream>>>(cube, g, score);
    } else if (g.bands <= 16) {  // 136 entries: 5 per lane
        rx_local_kernel<Cube, 5><<<grid, block, 0, stream>>>(cube, g, score);
    } else {  // 528 entries: 17 per lane
        rx_local_kernel<Cube, 17><<<grid, block, 0, stream>>>(cube, g, score);
    }
}

#endif  // __CUDACC_RTC__

}  // namespace
}  // namespace detail
}  // namespace satedge

#if !defined(__CUDACC_RTC__)

extern "C" {

satedge_status satedge_rx_global(const void *cube, satedge_dtype cube_dtype, int bands, int height, int width,
                                 const float *mean, const float *inv_cov, float *score, cudaStream_t stream) {
    using namespace satedge::detail;
    if (!cube_args_ok(cube, cube_dtype, bands, height, width, score) || mean == NULL || inv_cov == NULL ||
        !aligned(mean, sizeof(float)) || !aligned(inv_cov, sizeof(float))) {
        return finish_without_cuda(SATEDGE_ERR_INVALID_ARG);
    }
    const int64_t n_pix = static_cast<int64_t>(height) * width;
    const unsigned grid = grid_for((n_pix + kGlobalThreads - 1) / kGlobalThreads);
    if (cube_dtype == SATEDGE_DTYPE_FLOAT32) {
        CubeF32 c;
        c.p = static_cast<const float *>(cube);
        rx_global_kernel<<<grid, kGlobalThreads, 0, stream>>>(c, mean, inv_cov, bands, n_pix, score);
    } else {
        CubeF16 c;
        c.p = static_cast<const unsigned short *>(cube);
        rx_global_kernel<<<grid, kGlobalThreads, 0, stream>>>(c, mean, inv_cov, bands, n_pix, score);
    }
    return finish_after_launch();
}

satedge_status satedge_rx_local(const void *cube, satedge_dtype cube_dtype, int bands, int height, int width,
                                int outer, int inner, float regularization, float *score, cudaStream_t stream) {
    using namespace satedge::detail;
    // `!(regularization >= 0)` also refuses NaN.
    if (!cube_args_ok(cube, cube_dtype, bands, height, width, score) || bands > SATEDGE_RX_LOCAL_MAX_BANDS ||
        outer % 2 == 0 || inner % 2 == 0 || inner < 1 || inner >= outer || outer > 255 ||
        outer * outer - inner * inner <= bands || !(regularization >= 0.0f)) {
        return finish_without_cuda(SATEDGE_ERR_INVALID_ARG);
    }
    LocalRxGeom g;
    g.bands = bands;
    g.height = height;
    g.width = width;
    g.outer_half = outer / 2;
    g.inner_half = inner / 2;
    g.regularization = regularization;
    if (cube_dtype == SATEDGE_DTYPE_FLOAT32) {
        CubeF32 c;
        c.p = static_cast<const float *>(cube);
        launch_local(c, g, score, stream);
    } else {
        CubeF16 c;
        c.p = static_cast<const unsigned short *>(cube);
        launch_local(c, g, score, stream);
    }
    return finish_after_launch();
}

}  // extern "C"

#endif  // !__CUDACC_RTC__
