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
 * The declarations are hidden from NVRTC (__CUDACC_RTC__), which compiles
 * device code only (cuda/nvrtc_check.py).
 */
#ifndef SATEDGE_KERNELS_H_
#define SATEDGE_KERNELS_H_

#if !defined(__CUDACC_RTC__)

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h> /* cudaStream_t; C compatible */

/** Version of this C ABI; bumped whenever a signature or meaning changes or
 *  entry points are added (2: RX anomaly score and NSI sparsification). */
#define SATEDGE_KERNELS_ABI_VERSION 2

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

/* ------------------------------------------------------------------------- */
/* RX anomaly score (Reed-Xiaoli)                                             */
/* ------------------------------------------------------------------------- */
/*
 * Cube: `bands` x `height` x `width` values of cube_dtype (FLOAT32, or
 * FLOAT16 such as the preprocessing output), CHW / band-sequential,
 * contiguous: value (b, y, x) at index b * height * width + y * width + x.
 * Output: score holds height x width float32, row-major. Arithmetic is
 * float32 (half inputs are widened first); results agree with the float64
 * numpy references of engines/ops/rx.py to a relative error of about 1e-5
 * for well-conditioned statistics (not bit for bit: the summation order
 * differs).
 */

/** Largest number of bands satedge_rx_local accepts (one warp per pixel,
 *  one lane per band; reduce a hyperspectral cube with PCA first). */
#define SATEDGE_RX_LOCAL_MAX_BANDS 32

/**
 * Global RX: score[p] = (x_p - mean)^T C (x_p - mean) with a precomputed
 * inverse covariance C (bands x bands, row-major, float32).
 *
 * C is taken as symmetric and only its lower triangle (row >= column) is
 * read: score = sum_i C[i][i] d_i^2 + 2 sum_{i>j} C[i][j] d_i d_j.
 * One thread per pixel; any number of bands.
 *
 * @param cube       device, bands*height*width values of cube_dtype (CHW)
 * @param cube_dtype SATEDGE_DTYPE_FLOAT32 or SATEDGE_DTYPE_FLOAT16
 * @param bands      B >= 1
 * @param height     H >= 1
 * @param width      W >= 1 (H*W < 2^31)
 * @param mean       device, [B] float32 background mean
 * @param inv_cov    device, [B*B] float32 inverse covariance, row-major
 * @param score      device, [H*W] float32 output (4-byte aligned)
 * @param stream     stream to enqueue on (0 = default stream)
 * @return SATEDGE_OK, SATEDGE_ERR_INVALID_ARG, or a CUDA launch status
 */
SATEDGE_API satedge_status satedge_rx_global(
    const void *cube, satedge_dtype cube_dtype, int bands, int height, int width,
    const float *mean, const float *inv_cov, float *score, cudaStream_t stream);

/**
 * Local (dual-window) RX. For pixel (y, x) the background is the
 * outer x outer square centred on it minus the inner x inner guard square,
 * both cut at the frame border; with n background pixels, mean mu and
 * population covariance S = sum (x_q - mu)(x_q - mu)^T / n over them,
 *
 *     score = (x_p - mu)^T (S + r I)^-1 (x_p - mu),  r = regularization * trace(S) / bands
 *
 * (the local_rx of ground/models/rx.py without its PCA step: give it the
 * PCA-whitened cube). Sums are taken of x_q - x_p (shift invariance keeps
 * float32 cancellation small); S + r I is factored by Cholesky. A pixel
 * whose matrix is not positive definite (for example a constant
 * neighbourhood with regularization 0) scores NaN.
 *
 * @param cube           device, as for satedge_rx_global
 * @param cube_dtype     SATEDGE_DTYPE_FLOAT32 or SATEDGE_DTYPE_FLOAT16
 * @param bands          1 <= bands <= SATEDGE_RX_LOCAL_MAX_BANDS
 * @param height, width  frame size (>= 1, H*W < 2^31)
 * @param outer, inner   odd window sides, 0 < inner < outer <= 255, with
 *                       outer*outer - inner*inner > bands
 * @param regularization ridge factor >= 0 (ground uses 1e-3)
 * @param score          device, [H*W] float32 output (4-byte aligned)
 * @param stream         stream to enqueue on (0 = default stream)
 * @return SATEDGE_OK, SATEDGE_ERR_INVALID_ARG, or a CUDA launch status
 */
SATEDGE_API satedge_status satedge_rx_local(
    const void *cube, satedge_dtype cube_dtype, int bands, int height, int width,
    int outer, int inner, float regularization, float *score, cudaStream_t stream);

/* ------------------------------------------------------------------------- */
/* Neighbourhood-statistics (NSI) gradient sparsification, RS-DGC            */
/* ------------------------------------------------------------------------- */
/*
 * The variant documented in onboard/fl/nsi.py, evaluated in float32 in one
 * fixed order so that engines/ops/nsi.py (numpy, float32) reproduces it bit
 * for bit. grad is the layer's 2-D view, rows x cols, row-major (see
 * as_matrix in onboard/fl/nsi.py), rows*cols < 2^31. For element (r, c),
 * h = p / 2, the window rows r-h..r+h and columns c-h..c+h cut at the
 * borders, n = (rows in it) * (columns in it):
 *
 *     s1 = sum over window columns j (ascending) of
 *              (sum over window rows i (ascending) of g[i][j]), from 0
 *     s2 = the same sums of g[i][j] * g[i][j]
 *     mean = s1 / n;  var = s2 / n - mean * mean;  std = sqrt(var < 0 ? 0 : var)
 *     COHERENCE: rho = |mean| + std > 0 ? |mean| / (|mean| + std) : 0
 *                score = |g| * ((1 - beta) + beta * rho)
 *     MEAN_STD:  score = |mean| + lam * std
 *
 * every operation rounded to nearest float32, no fused multiply-add.
 *
 * Selection keeps k elements: with key(s) the float bits of a score made
 * monotonic as an unsigned integer (key = bits ^ 0x80000000 for s >= +0,
 * ~bits for negative s; for the scores here, non-negative and finite, this
 * is the float order), the threshold T is the k-th largest key; all elements
 * with key > T and the lowest-indexed elements with key == T are kept, k in
 * all. Output is in ascending index order: (index, grad value) pairs.
 */

/** Which NSI score (onboard/fl/nsi.py, `variant`). */
typedef enum satedge_nsi_variant {
    SATEDGE_NSI_COHERENCE = 0, /**< |g| * ((1 - beta) + beta * rho) (default) */
    SATEDGE_NSI_MEAN_STD = 1   /**< |mean| + lam * std */
} satedge_nsi_variant;

/**
 * NSI score of every element (no selection).
 *
 * @param grad    device, [rows*cols] float32, row-major (4-byte aligned)
 * @param rows    >= 1
 * @param cols    >= 1
 * @param p       odd window side, 1 <= p <= 255
 * @param beta    coherence weight in [0, 1] (COHERENCE)
 * @param lam     weight of std (MEAN_STD)
 * @param variant SATEDGE_NSI_COHERENCE or SATEDGE_NSI_MEAN_STD
 * @param score   device, [rows*cols] float32 output
 * @param stream  stream to enqueue on (0 = default stream)
 * @return SATEDGE_OK, SATEDGE_ERR_INVALID_ARG, or a CUDA launch status
 */
SATEDGE_API satedge_status satedge_nsi_score(
    const float *grad, int rows, int cols, int p, float beta, float lam,
    satedge_nsi_variant variant, float *score, cudaStream_t stream);

/** Bytes of device workspace satedge_nsi_sparsify needs for a rows x cols
 *  layer (0 when rows or cols < 1 or rows*cols >= 2^31). */
SATEDGE_API size_t satedge_nsi_sparsify_workspace_size(int rows, int cols);

/**
 * NSI score, threshold selection of the k largest scores (radix select on
 * the keys above: four 8-bit histogram passes, all on the device) and
 * compaction to (index, value) in ascending index order. Several kernels
 * are enqueued; nothing is copied to the host and nothing waits.
 *
 * @param grad            device, [rows*cols] float32 (4-byte aligned)
 * @param rows, cols, p, beta, lam, variant   as for satedge_nsi_score
 * @param k               number of elements to keep, 1 <= k <= rows*cols
 *                        (RS-DGC: ceil(density * rows*cols), at least min_keep)
 * @param workspace       device, >= satedge_nsi_sparsify_workspace_size()
 *                        bytes, 16-byte aligned; its contents are scratch
 * @param workspace_bytes size of workspace
 * @param out_index       device, [k] int32 flat indices (ascending)
 * @param out_value       device, [k] float32 grad[out_index[i]]
 * @param out_threshold   device, [1] float32 the k-th largest score, or NULL
 * @param stream          stream to enqueue on (0 = default stream)
 * @return SATEDGE_OK, SATEDGE_ERR_INVALID_ARG, or a CUDA launch status
 */
SATEDGE_API satedge_status satedge_nsi_sparsify(
    const float *grad, int rows, int cols, int p, float beta, float lam,
    satedge_nsi_variant variant, int k, void *workspace, size_t workspace_bytes,
    int32_t *out_index, float *out_value, float *out_threshold, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* !__CUDACC_RTC__ */

#endif /* SATEDGE_KERNELS_H_ */
