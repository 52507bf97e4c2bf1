// Adam, AdamW and AMSGrad on the multi-tensor launcher; the rule is math/adam.h.
#include "cuda/launcher.cuh"
#include "math/adam.h"

namespace fusedopt {
namespace cuda {

void update(const AdamStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  launch_step(s, b, stream, device_coeffs);
}

}  // namespace cuda
}  // namespace fusedopt
