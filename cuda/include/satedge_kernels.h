/*
 * satedge_kernels.h - C ABI of the satedge CUDA kernels (libsatedge_kernels).
 *
 * This header is plain C (C99 and later) and C++ compatible. Every entry point
 *   - takes device-accessible pointers (cudaMalloc, managed memory, or mapped
 *     pinned host memory; on Jetson, any of the three),
 *   - enqueues its work on the given cudaStream_t (0 / NULL = the default
 *     stream) and returns without waiting for it (asynchronous),
 *   - returns a satedge_status; launch errors are read with cudaGetLastError()
 *     right after the launch, and the raw cudaError_t is kept for
 *     satedge_last_cuda_error().
 *
 * Errors raised while a kernel runs (for example an illegal address) are
 * asynchronous: they surface at the next synchronisation
 * (cudaStreamSynchronize) or are reported by a later call that checks errors.
 * cudaGetLastError() also returns an earlier error that nobody has read yet,
 * so a status may describe earlier work on this thread.
 *
 * Source compatibility: CUDA 10.2 / C++14 and newer (JetPack 4.6 on TX2).
 */
#ifndef SATEDGE_KERNELS_H_
#define SATEDGE_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h> /* cudaStream_t; C compatible */

/** Version of this C ABI; bumped whenever a signature or meaning changes. */
#define SATEDGE_KERNELS_ABI_VERSION 1

#if defined(_WIN32)
#  if defined(SATEDGE_KERNELS_BUILDING)
#    define SATEDGE_API __declspec(dllexport)
#  else
#    define SATEDGE_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define SATEDGE_API __attribute__((visibility("default")))
#else
#  define SATEDGE_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Status returned by every entry point. Values are stable (part of the ABI).
 *
 * The cudaError_t behind a CUDA failure maps as follows; the raw value is
 * available from satedge_last_cuda_error().
 */
typedef enum satedge_status {
    /** Success: the work was enqueued (it may not have run yet). */
    SATEDGE_OK = 0,
    /** A bad argument, detected before anything was enqueued (NULL pointer,
     *  negative size, unknown dtype, ...), or CUDA said cudaErrorInvalidValue /
     *  cudaErrorInvalidResourceHandle (for example a destroyed stream). */
    SATEDGE_ERR_INVALID_ARG = 1,
    /** The kernel launch or an earlier kernel failed:
     *  cudaErrorInvalidConfiguration, cudaErrorLaunchOutOfResources,
     *  cudaErrorLaunchFailure, cudaErrorLaunchTimeout, cudaErrorIllegalAddress,
     *  cudaErrorMisalignedAddress, cudaErrorIllegalInstruction,
     *  cudaErrorInvalidPc, cudaErrorHardwareStackError, cudaErrorAssert. */
    SATEDGE_ERR_LAUNCH = 2,
    /** No usable GPU or driver: cudaErrorNoDevice, cudaErrorInsufficientDriver,
     *  cudaErrorInitializationError. */
    SATEDGE_ERR_NO_DEVICE = 3,
    /** The library holds no code for this GPU's architecture (it was built
     *  for other SMs): cudaErrorNoKernelImageForDevice,
     *  cudaErrorInvalidDeviceFunction. Rebuild with this SM in
     *  CMAKE_CUDA_ARCHITECTURES. */
    SATEDGE_ERR_NO_KERNEL_IMAGE = 4,
    /** cudaErrorMemoryAllocation. */
    SATEDGE_ERR_OUT_OF_MEMORY = 5,
    /** Any other cudaError_t. */
    SATEDGE_ERR_CUDA = 6
} satedge_status;

/** Element type of an output buffer. */
typedef enum satedge_dtype {
    SATEDGE_DTYPE_FLOAT32 = 0, /**< IEEE binary32 (float) */
    SATEDGE_DTYPE_FLOAT16 = 1  /**< IEEE binary16 (__half), round to nearest even */
} satedge_dtype;

/** Returns SATEDGE_KERNELS_ABI_VERSION of the built library; compare it with
 *  the header's value after loading the library (dlopen / ctypes). */
SATEDGE_API int satedge_kernels_abi_version(void);

/** Returns a static, human-readable name for a status ("SATEDGE_OK", ...);
 *  "unknown satedge_status" for values outside the enum. Never NULL. */
SATEDGE_API const char *satedge_status_string(satedge_status status);

/** Returns the raw cudaError_t (as int) behind the last status returned on the
 *  calling thread: 0 (cudaSuccess) when that status did not come from CUDA,
 *  including SATEDGE_OK and argument errors found before any CUDA call. */
SATEDGE_API int satedge_last_cuda_error(void);

/* ------------------------------------------------------------------------- */
/* Fused sensor preprocessing                                                 */
/* ------------------------------------------------------------------------- */
/*
 * Frame: `bands` x `height` x `width` digital numbers (DN), band-sequential
 * (BSQ, i.e. B,H,W in C order), contiguous, no line or band padding. Pixel
 * (b, y, x) has the pixel index  p = (b * height + y) * width + x.
 *
 * Window (tile): output pixel (b, ty, tx), 0 <= ty < tile_h, 0 <= tx < tile_w,
 * reads frame pixel (b, y0 + ty, x0 + tx). The window may extend past any
 * edge of the frame (x0, y0 may be negative; x0 + tile_w may exceed width).
 * The whole frame is the window x0 = y0 = 0, tile_h = height, tile_w = width.
 *
 * Output: dst holds bands x tile_h x tile_w elements of dst_dtype, CHW,
 * contiguous: element (b, ty, tx) at index (b * tile_h + ty) * tile_w + tx.
 *
 * Calibration and normalisation, per band b (each a device array of `bands`
 * floats; a NULL pointer means the default shown in brackets):
 *
 *     y = (dn - dark[b]) * gain[b] * scale[b] + offset[b]
 *         dark [0]   dark current in DN
 *         gain [1]   radiometric gain
 *         scale [1]  normalisation scale (for example 1/std)
 *         offset [0] normalisation offset (for example -mean/std)
 *
 * evaluated in float32, left to right, every operation rounded to nearest
 * (no fused multiply-add), i.e. exactly
 * ((float(dn) - dark) * gain) * scale + offset, which is what numpy computes
 * on float32 arrays in that order. For FLOAT16 output that float32 result is
 * then rounded to half, to nearest even (magnitudes of 65520 and more become
 * +-inf).
 *
 * Pixels of the window that lie outside the frame contribute no DN: their
 * (dn - dark[b]) term is taken as 0, so their output is exactly offset[b]
 * (0 after normalisation, before the offset).
 *
 * Sizes: bands, height, width >= 1; tile_h, tile_w >= 0 (a zero-sized window
 * enqueues nothing and returns SATEDGE_OK). src and dst must not overlap.
 *
 * Alignment: every pointer must be aligned to its element type (uint16 src:
 * 2 bytes; calibration arrays: 4; dst: 4 for FLOAT32, 2 for FLOAT16; the
 * 12-bit src: any), else SATEDGE_ERR_INVALID_ARG. Better-aligned buffers
 * (dst 16 bytes, src 8 bytes for uint16 or 4 bytes for 12-bit) with width, x0
 * and tile_w multiples of 4 (uint16) or 8 (12-bit) and the window inside the
 * frame take a vectorised path with identical results.
 */

/**
 * Preprocesses a window of a frame of plain uint16 DN (host byte order, i.e.
 * little-endian on every supported target).
 *
 * @param src      device, bands*height*width uint16 DN, BSQ (B,H,W)
 * @param bands    number of bands B (>= 1)
 * @param height   frame height H in pixels (>= 1)
 * @param width    frame width W in pixels (>= 1)
 * @param x0       window origin, column in the frame (may be < 0 or >= W)
 * @param y0       window origin, row in the frame (may be < 0 or >= H)
 * @param tile_h   window height (>= 0)
 * @param tile_w   window width (>= 0)
 * @param dark     device, [bands] dark current in DN, or NULL (0)
 * @param gain     device, [bands] gain, or NULL (1)
 * @param scale    device, [bands] normalisation scale, or NULL (1)
 * @param offset   device, [bands] normalisation offset, or NULL (0)
 * @param dst      device, bands*tile_h*tile_w elements of dst_dtype, CHW
 * @param dst_dtype SATEDGE_DTYPE_FLOAT32 or SATEDGE_DTYPE_FLOAT16
 * @param stream   stream to enqueue on (0 = default stream)
 * @return SATEDGE_OK, SATEDGE_ERR_INVALID_ARG, or a CUDA launch status
 */
SATEDGE_API satedge_status satedge_preprocess_u16(
    const uint16_t *src, int bands, int height, int width,
    int x0, int y0, int tile_h, int tile_w,
    const float *dark, const float *gain, const float *scale, const float *offset,
    void *dst, satedge_dtype dst_dtype, cudaStream_t stream);

/**
 * Preprocesses a window of a frame of 12-bit packed DN.
 *
 * 12-bit packing ("two pixels in three bytes, little-endian nibble order"):
 * the frame is one little-endian bit stream in which pixel p (the BSQ pixel
 * index above) occupies bits 12*p .. 12*p+11, least significant bit first.
 * For the pixel pair (p0, p1) = (pixel 2k, pixel 2k+1) the bytes
 * src[3k], src[3k+1], src[3k+2] are
 *
 *     byte 3k   = p0 bits 7..0
 *     byte 3k+1 = (p1 bits 3..0) << 4  |  (p0 bits 11..8)
 *     byte 3k+2 = p1 bits 11..4
 *
 * i.e. with w = byte[3k] | byte[3k+1] << 8 | byte[3k+2] << 16 (a 24-bit
 * little-endian word): p0 = w & 0xFFF, p1 = w >> 12.
 * Example: p0 = 0xABC, p1 = 0x123  ->  bytes 0xBC, 0x3A, 0x12.
 * (This is not MIPI RAW12, which puts the high 8 bits of each pixel first.)
 *
 * Rows are not padded: when width is odd a byte triple spans two rows. The
 * buffer holds ceil(3 * bands*height*width / 2) bytes; when the pixel count is
 * odd the high nibble of the last byte is padding and is ignored.
 *
 * @param src      device, packed frame as described above
 * @param bands    ... all other parameters as for satedge_preprocess_u16;
 *                 DN values are 0..4095.
 */
SATEDGE_API satedge_status satedge_preprocess_u12packed(
    const uint8_t *src, int bands, int height, int width,
    int x0, int y0, int tile_h, int tile_w,
    const float *dark, const float *gain, const float *scale, const float *offset,
    void *dst, satedge_dtype dst_dtype, cudaStream_t stream);

/* ------------------------------------------------------------------------- */
/* Cloud fraction                                                             */
/* ------------------------------------------------------------------------- */

/**
 * Fraction of nonzero pixels in each tile of a cloud mask.
 *
 * mask holds n_tiles tiles of tile_pixels bytes each, contiguous
 * (tile t is mask[t*tile_pixels .. (t+1)*tile_pixels - 1]); any nonzero byte
 * counts as cloud. out_fraction[t] = count_nonzero(tile t) / tile_pixels,
 * the exact quotient rounded once to float32 (as numpy's float64 division
 * followed by astype(float32)). One thread block reduces one tile.
 *
 * @param mask          device, n_tiles*tile_pixels bytes, any alignment
 * @param n_tiles       number of tiles (>= 0; 0 enqueues nothing)
 * @param tile_pixels   pixels per tile (>= 1)
 * @param out_fraction  device, [n_tiles] float32 (4-byte aligned), each in [0, 1]
 * @param stream        stream to enqueue on (0 = default stream)
 * @return SATEDGE_OK, SATEDGE_ERR_INVALID_ARG, or a CUDA launch status
 */
SATEDGE_API satedge_status satedge_cloud_fraction(
    const uint8_t *mask, int n_tiles, int tile_pixels,
    float *out_fraction, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SATEDGE_KERNELS_H_ */
