// Adagrad (torch.optim.Adagrad).
//
// Per element, in this order:
//   g   = maximize ? -grad : grad
//   g   = g + weight_decay * p                     (if weight_decay != 0)
//   sum = sum + g * g
//   std = sqrt(sum) + eps
//   p   = p - clr * (g / std)
// with clr = lr / (1 + (step - 1) * lr_decay), computed once per step on the host in double.
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_ADAGRAD_COEFFS(X) X(clr) X(weight_decay) X(eps)

FUSEDOPT_DEFINE_COEFFS(AdagradCoeffs, FUSEDOPT_ADAGRAD_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_ADAGRAD_FLAGS(X) X(maximize, kBool) X(wd_mode, kCoupledDecay)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_ADAGRAD_RULE(X) X(AdagradStep, FUSEDOPT_ADAGRAD_COEFFS, FUSEDOPT_ADAGRAD_FLAGS, AdagradCoeffs, AdagradRule, "adagrad")

template <class T, bool kMaximize, WeightDecay kWd>
struct AdagradRule {
  using compute_t = T;
  static constexpr int kNumStates = 1;  // state_sum
  AdagradCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    T& sum = state[0];
    sum = sum + g * g;
    const T std_dev = sqrt_ieee(sum) + c.eps;
    p = p - c.clr * div_ieee(g, std_dev);
  }
};

}  // namespace math
}  // namespace fusedopt
