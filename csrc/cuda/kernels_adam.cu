// Adam, AdamW and AMSGrad on the multi-tensor launcher; the rule is math/adam.h.
#include "common/flag_dispatch.h"
#include "cuda/launcher.cuh"
#include "math/adam.h"

namespace fusedopt {
namespace cuda {

void adam(const AdamStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  with_storage(b.dtype, [&](auto st) {
    using S = decltype(st);
    with_bool(s.maximize, [&](auto mx) {
      with_weight_decay(s.weight_decay, [&](auto wd) {
        with_bool(s.amsgrad, [&](auto ams) {
          using Rule = math::AdamRule<S, mx.value, wd.value, ams.value>;
          launch_update<Rule, S>(s.c, device_coeffs, b, stream);
        });
      });
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
