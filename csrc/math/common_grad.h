// The gradient preamble shared by every rule: sign for `maximize`, then coupled L2 weight
// decay. Both are compile-time switches so the loop body has no branches; weight decay is
// skipped entirely when it is zero (as torch does), because 0 * inf would turn an infinite
// parameter into NaN.
#pragma once

#include "math/hd.h"
#include "math/modes.h"

namespace fusedopt {
namespace math {

template <bool kMaximize, WeightDecay kWd, class T>
FUSEDOPT_HD T effective_grad(T grad, T param, T weight_decay) {
  T g = kMaximize ? -grad : grad;
  if (kWd == WeightDecay::kCoupled) g = g + weight_decay * param;
  return g;
}

// Adam's two moments, shared by the rules that keep them (adam, nadam, radam, lamb): m moves
// towards g, v towards g*g, in this order of operations.
template <class T, class C>
FUSEDOPT_HD void update_moments(const C& c, T g, T& m, T& v) {
  m = c.beta1 * m + c.one_minus_beta1 * g;
  v = c.beta2 * v + c.one_minus_beta2 * (g * g);
}

}  // namespace math
}  // namespace fusedopt
