// The launch syntax, which only nvcc parses. cuda/launch.cuh includes it as
// <launch_grid.cuh>, found through the include path that csrc/cuda/CMakeLists.txt gives
// the kernels, so that a build of the same sources by the host compiler can put its own
// launch_grid.cuh on its path instead; nothing else in csrc/cuda/ differs between the two.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fusedopt {
namespace cuda {

// Queues kernel<<<grid, threads, 0, stream>>>(args...); errors are the caller's to check.
template <class... Params, class... Args>
void launch_grid(void (*kernel)(Params...), int64_t grid, int threads, cudaStream_t stream,
                 const Args&... args) {
  kernel<<<static_cast<unsigned>(grid), static_cast<unsigned>(threads), 0, stream>>>(args...);
}

}  // namespace cuda
}  // namespace fusedopt
