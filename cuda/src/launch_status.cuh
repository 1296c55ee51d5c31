// launch_status.cuh - internal: turning cudaError_t into satedge_status.
// Not installed; included by the kernel sources of libsatedge_kernels.
#ifndef SATEDGE_LAUNCH_STATUS_CUH_
#define SATEDGE_LAUNCH_STATUS_CUH_

#include <cuda_runtime_api.h>

#include "satedge_kernels.h"

namespace satedge {
namespace detail {

// Records the raw cudaError_t for satedge_last_cuda_error() on this thread.
void set_last_cuda_error(cudaError_t err);

// Maps a cudaError_t to the satedge_status documented in satedge_kernels.h.
satedge_status status_from_cuda(cudaError_t err);

// Ends an entry point that made no CUDA call (argument errors, empty work):
// records cudaSuccess as the last CUDA error and returns `status`.
inline satedge_status finish_without_cuda(satedge_status status) {
    set_last_cuda_error(cudaSuccess);
    return status;
}

// Ends an entry point after a kernel launch: reads (and clears) the launch
// error with cudaGetLastError(), records it, and maps it to a status.
inline satedge_status finish_after_launch() {
    const cudaError_t err = cudaGetLastError();
    set_last_cuda_error(err);
    return status_from_cuda(err);
}

}  // namespace detail
}  // namespace satedge

#endif  // SATEDGE_LAUNCH_STATUS_CUH_
