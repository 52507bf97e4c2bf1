// RMSprop on the multi-tensor launcher; the rule is math/rmsprop.h.
#include "common/flag_dispatch.h"
#include "cuda/launcher.cuh"
#include "math/rmsprop.h"

namespace fusedopt {
namespace cuda {

void rmsprop(const RmspropStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  // As for Adagrad, only coupled decay exists in this rule; kDecoupled is the kNone code.
  const bool coupled_decay = s.weight_decay == math::WeightDecay::kCoupled;
  with_storage(b.dtype, [&](auto st) {
    using S = decltype(st);
    with_bool(s.maximize, [&](auto mx) {
      with_bool(coupled_decay, [&](auto coupled) {
        constexpr auto kWd = coupled.value ? math::WeightDecay::kCoupled : math::WeightDecay::kNone;
        with_bool(s.centered, [&](auto centered) {
          with_bool(s.momentum, [&](auto mom) {
            using Rule = math::RmspropRule<S, mx.value, kWd, centered.value, mom.value>;
            launch_update<Rule, S>(s.c, device_coeffs, b, stream);
          });
        });
      });
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
