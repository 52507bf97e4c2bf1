// SGD (every momentum convention) on the multi-tensor launcher; the rule is math/sgd.h.
#include "common/flag_dispatch.h"
#include "cuda/launcher.cuh"
#include "math/sgd.h"

namespace fusedopt {
namespace cuda {

void sgd(const SgdStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  // Without momentum the rule never reads kNesterov (and the Python layer refuses the
  // pair), so that variant is not compiled twice.
  const bool nesterov = s.nesterov && s.momentum != math::Momentum::kNone;
  with_storage(b.dtype, [&](auto st) {
    using S = decltype(st);
    with_bool(s.maximize, [&](auto mx) {
      with_weight_decay(s.weight_decay, [&](auto wd) {
        with_momentum(s.momentum, [&](auto mom) {
          if constexpr (mom.value == math::Momentum::kNone) {
            using Rule = math::SgdRule<S, mx.value, wd.value, mom.value, false>;
            launch_update<Rule, S>(s.c, device_coeffs, b, stream);
          } else {
            with_bool(nesterov, [&](auto nest) {
              using Rule = math::SgdRule<S, mx.value, wd.value, mom.value, nest.value>;
              launch_update<Rule, S>(s.c, device_coeffs, b, stream);
            });
          }
        });
      });
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
