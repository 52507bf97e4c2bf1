// The stand-in for cuda/nvcc/launch_grid.cuh: the grid runs on the CPU, now (emulation.h:
// run_grid). This folder comes first on the include path, so cuda/launch.cuh finds it.
#pragma once

#include <cstdint>

#include "emulation.h"

namespace fusedopt {
namespace cuda {

template <class... Params, class... Args>
void launch_grid(void (*kernel)(Params...), int64_t grid, int threads, cudaStream_t stream,
                 const Args&... args) {
  emulation::run_grid(grid, threads, stream, [&] { kernel(args...); });
}

}  // namespace cuda
}  // namespace fusedopt
