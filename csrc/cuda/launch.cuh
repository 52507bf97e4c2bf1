// The one place that spells a kernel launch. Everything around it (planning, parameter
// tables, grid sizes) is ordinary C++ that the host emulation of the kernels
// (csrc/cuda_emulation/, built for the tests) compiles unchanged; only the <<<...>>> syntax
// needs nvcc, so the emulation swaps this function for a run of the grid on the CPU (its
// cuda_runtime.h declares emulation::run_grid).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device.h"

namespace fusedopt {
namespace cuda {

// Queues kernel<<<grid, threads, 0, stream>>>(args...) and reports a failed launch as an
// exception naming `what`.
template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), int64_t grid, int threads, cudaStream_t stream,
                   const char* what, const Args&... args) {
#if defined(FUSEDOPT_CUDA_EMULATION)
  emulation::run_grid(grid, threads, stream, [&] { kernel(args...); });
#else
  kernel<<<static_cast<unsigned>(grid), static_cast<unsigned>(threads), 0, stream>>>(args...);
#endif
  check(cudaGetLastError(), what);
}

}  // namespace cuda
}  // namespace fusedopt
