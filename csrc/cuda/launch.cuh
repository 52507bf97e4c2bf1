// The one place that launches a kernel. Everything around it (planning, parameter tables,
// grid sizes) is ordinary C++; only the launch syntax needs nvcc, and it stays behind
// launch_grid() (nvcc/launch_grid.cuh).
#pragma once

#include <cuda_runtime.h>
#include <launch_grid.cuh>  // from the include path: see nvcc/launch_grid.cuh

#include <cstdint>

#include "cuda/device.h"

namespace fusedopt {
namespace cuda {

// Queues kernel<<<grid, threads, 0, stream>>>(args...) and reports a failed launch as an
// exception naming `what`. `threads` is a whole number of warps (a multiple of 32): every
// launch_grid() must be able to run it.
template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), int64_t grid, int threads, cudaStream_t stream,
                   const char* what, const Args&... args) {
  launch_grid(kernel, grid, threads, stream, args...);
  check(cudaGetLastError(), what);
}

}  // namespace cuda
}  // namespace fusedopt
