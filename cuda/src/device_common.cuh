// device_common.cuh - internal: small helpers shared by the preprocessing, RX and NSI kernels.
//
// Everything here is __host__ __device__ so that the per-pixel / per-element
// arithmetic of the kernels can also run as host code (the host emulation test
// in tests/cuda_build/ does that). Safe under NVRTC (no host-only headers).
#ifndef SATEDGE_DEVICE_COMMON_CUH_
#define SATEDGE_DEVICE_COMMON_CUH_

#ifndef SATEDGE_HD
#define SATEDGE_HD __host__ __device__ __forceinline__
#endif

#ifndef SATEDGE_UNROLL
#ifdef __CUDA_ARCH__
#define SATEDGE_UNROLL _Pragma("unroll")
#else
#define SATEDGE_UNROLL
#endif
#endif

namespace satedge {
namespace detail {

// Read-only load, through the read-only data cache on the device.
template <class T>
SATEDGE_HD T cached_load(const T *p) {
#ifdef __CUDA_ARCH__
    return __ldg(p);
#else
    return *p;
#endif
}

SATEDGE_HD float quiet_nan() {
#ifdef __CUDA_ARCH__
    return __int_as_float(0x7FC00000);
#else
    const unsigned bits = 0x7FC00000u;
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

// float32 arithmetic rounded to nearest at every step, never contracted into
// a fused multiply-add (numpy float32 does exactly this).
SATEDGE_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    volatile float r = a + b;
    return r;
#endif
}

SATEDGE_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    volatile float r = a - b;
    return r;
#endif
}

SATEDGE_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    volatile float r = a * b;
    return r;
#endif
}

SATEDGE_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    volatile float r = a / b;
    return r;
#endif
}

SATEDGE_HD float sqrt_rn(float a) {
#ifdef __CUDA_ARCH__
    return __fsqrt_rn(a);
#else
    return __builtin_sqrtf(a);  // IEEE correctly rounded (SSE sqrtss)
#endif
}

SATEDGE_HD int imin(int a, int b) { return a < b ? a : b; }
SATEDGE_HD int imax(int a, int b) { return a > b ? a : b; }

// One warp, seen from the calling thread (device) ...
struct DeviceWarp {
    int lane;
    template <class F>
    SATEDGE_HD void each(F f) const {
        f(lane);
    }
    SATEDGE_HD void sync() const {
#ifdef __CUDA_ARCH__
        __syncwarp();
#endif
    }
    SATEDGE_HD int slot(int) const { return 0; }  // per-lane state: the thread's own
};

// ... or emulated on the host: the 32 lanes run one after another between
// barriers, each with its own slot of per-lane state. Code written against
// this pair runs unchanged in the host emulation test.
struct HostWarp {
    template <class F>
    SATEDGE_HD void each(F f) const {
        for (int lane = 0; lane < 32; ++lane) {
            f(lane);
        }
    }
    SATEDGE_HD void sync() const {}
    SATEDGE_HD int slot(int lane) const { return lane; }
};

}  // namespace detail
}  // namespace satedge

#endif  // SATEDGE_DEVICE_COMMON_CUH_
