// SGD (every momentum convention) on the multi-tensor launcher; the rule is math/sgd.h.
#include "cuda/launcher.cuh"
#include "math/sgd.h"

namespace fusedopt {
namespace cuda {

void update(const SgdStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  launch_step(s, b, stream, device_coeffs);
}

}  // namespace cuda
}  // namespace fusedopt
