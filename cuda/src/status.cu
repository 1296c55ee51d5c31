// status.cu - status codes, ABI version and the per-thread last CUDA error.
// Host code only: NVRTC (cuda/nvrtc_check.py) sees an empty file.
#if !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>

#include "launch_status.cuh"
#include "satedge_kernels.h"

namespace satedge {
namespace detail {

namespace {
thread_local int t_last_cuda_error = 0;
}  // namespace

void set_last_cuda_error(cudaError_t err) { t_last_cuda_error = static_cast<int>(err); }

satedge_status status_from_cuda(cudaError_t err) {
    switch (err) {
        case cudaSuccess:
            return SATEDGE_OK;
        case cudaErrorInvalidValue:
        case cudaErrorInvalidResourceHandle:
            return SATEDGE_ERR_INVALID_ARG;
        case cudaErrorInvalidConfiguration:
        case cudaErrorLaunchOutOfResources:
        case cudaErrorLaunchFailure:
        case cudaErrorLaunchTimeout:
        case cudaErrorIllegalAddress:
        case cudaErrorMisalignedAddress:
        case cudaErrorIllegalInstruction:
        case cudaErrorInvalidPc:
        case cudaErrorHardwareStackError:
        case cudaErrorAssert:
            return SATEDGE_ERR_LAUNCH;
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
        case cudaErrorInitializationError:
            return SATEDGE_ERR_NO_DEVICE;
        case cudaErrorNoKernelImageForDevice:
        case cudaErrorInvalidDeviceFunction:
            return SATEDGE_ERR_NO_KERNEL_IMAGE;
        case cudaErrorMemoryAllocation:
            return SATEDGE_ERR_OUT_OF_MEMORY;
        default:
            return SATEDGE_ERR_CUDA;
    }
}

}  // namespace detail
}  // namespace satedge

extern "C" {

int satedge_kernels_abi_version(void) { return SATEDGE_KERNELS_ABI_VERSION; }

const char *satedge_status_string(satedge_status status) {
    switch (status) {
        case SATEDGE_OK:
            return "SATEDGE_OK";
        case SATEDGE_ERR_INVALID_ARG:
            return "SATEDGE_ERR_INVALID_ARG";
        case SATEDGE_ERR_LAUNCH:
            return "SATEDGE_ERR_LAUNCH";
        case SATEDGE_ERR_NO_DEVICE:
            return "SATEDGE_ERR_NO_DEVICE";
        case SATEDGE_ERR_NO_KERNEL_IMAGE:
            return "SATEDGE_ERR_NO_KERNEL_IMAGE";
        case SATEDGE_ERR_OUT_OF_MEMORY:
            return "SATEDGE_ERR_OUT_OF_MEMORY";
        case SATEDGE_ERR_CUDA:
            return "SATEDGE_ERR_CUDA";
    }
    return "unknown satedge_status";
}

int satedge_last_cuda_error(void) { return satedge::detail::t_last_cuda_error; }

}  // extern "C"

#endif  // !__CUDACC_RTC__
