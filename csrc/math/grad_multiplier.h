// Loss scaling and clipping as the rules see them: every gradient of a call is multiplied
// by one number before the rule reads it, 1 / grad_scale times the clipping coefficient
// min(1, max_norm / (norm + 1e-6)), computed in double on the host and rounded once to the
// compute type (fusedopt/_dispatch.py). The rules know nothing of it, and no loop
// writes the gradients. A multiplier of 1 leaves every gradient's value as it is (x * 1 is
// x, NaN stays NaN), so a call without scaling or clipping pays one multiply per element.
#pragma once

#include "math/hd.h"

namespace fusedopt {
namespace math {

template <class Rule>
struct GradMultiplied {
  using compute_t = typename Rule::compute_t;
  static constexpr int kNumStates = Rule::kNumStates;
  Rule rule;
  compute_t multiplier;

  FUSEDOPT_HD void operator()(compute_t& p, compute_t grad, compute_t* state) const {
    rule(p, grad * multiplier, state);
  }
};

}  // namespace math
}  // namespace fusedopt
