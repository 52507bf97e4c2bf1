// Adagrad on the multi-tensor launcher; the rule is math/adagrad.h.
#include "cuda/launcher.cuh"
#include "math/adagrad.h"

namespace fusedopt {
namespace cuda {

void update(const AdagradStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  launch_step(s, b, stream, device_coeffs);
}

}  // namespace cuda
}  // namespace fusedopt
