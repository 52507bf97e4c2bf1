// RMSprop on the multi-tensor launcher; the rule is math/rmsprop.h.
#include "common/flag_dispatch.h"
#include "cuda/launcher.cuh"
#include "math/rmsprop.h"

namespace fusedopt {
namespace cuda {

void rmsprop(const RmspropStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  with_rule(s, b.dtype, [&](auto rule, auto storage) {
    using Rule = typename decltype(rule)::type;
    launch_update<Rule, typename decltype(storage)::type>(s.c, device_coeffs, b, stream);
  });
}

}  // namespace cuda
}  // namespace fusedopt
