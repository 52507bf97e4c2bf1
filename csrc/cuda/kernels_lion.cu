// Lion on the multi-tensor launcher; the rule is math/lion.h.
#include "cuda/launcher.cuh"
#include "math/lion.h"

namespace fusedopt {
namespace cuda {

void update(const LionStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  launch_step(s, b, stream, device_coeffs);
}

}  // namespace cuda
}  // namespace fusedopt
