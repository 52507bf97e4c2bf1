// Adagrad on the multi-tensor launcher; the rule is math/adagrad.h.
#include "common/flag_dispatch.h"
#include "cuda/launcher.cuh"
#include "math/adagrad.h"

namespace fusedopt {
namespace cuda {

void adagrad(const AdagradStep& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  // The rule applies only coupled decay (math/common_grad.h): its kDecoupled variant is the
  // kNone code, so it is not compiled separately.
  const auto wd_mode = s.weight_decay == math::WeightDecay::kCoupled ? math::WeightDecay::kCoupled
                                                                     : math::WeightDecay::kNone;
  with_storage(b.dtype, [&](auto st) {
    using S = decltype(st);
    with_bool(s.maximize, [&](auto mx) {
      with_bool(wd_mode == math::WeightDecay::kCoupled, [&](auto coupled) {
        constexpr auto kWd = coupled.value ? math::WeightDecay::kCoupled : math::WeightDecay::kNone;
        using Rule = math::AdagradRule<S, mx.value, kWd>;
        launch_update<Rule, S>(s.c, device_coeffs, b, stream);
      });
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
