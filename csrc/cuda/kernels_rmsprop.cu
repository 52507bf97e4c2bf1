// RMSprop on the multi-tensor launcher; the rule is math/rmsprop.h.
#include "cuda/launcher.cuh"
#include "math/rmsprop.h"

namespace fusedopt {
namespace cuda {

void update(const RmspropStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  launch_step(s, b, stream, device_coeffs);
}

}  // namespace cuda
}  // namespace fusedopt
