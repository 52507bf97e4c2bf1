// SGD (every momentum convention) on the multi-tensor launcher; the rule is math/sgd.h.
#include "common/flag_dispatch.h"
#include "cuda/launcher.cuh"
#include "math/sgd.h"

namespace fusedopt {
namespace cuda {

void sgd(const SgdStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  with_rule(s, b.dtype, [&](auto rule, auto storage) {
    using Rule = typename decltype(rule)::type;
    launch_update<Rule, typename decltype(storage)::type>(s.c, device_coeffs, b, stream);
  });
}

}  // namespace cuda
}  // namespace fusedopt
