// Adamax (Kingma & Ba 2015, section 7.1; torch.optim.Adamax): Adam with the infinity norm.
//
// Per element, in this order:
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                       (if weight_decay != 0)
//   m = beta1 * m + one_minus_beta1 * g
//   u = max(beta2 * u, |g| + eps)                   (NaN from either side propagates)
//   p = p - clr * (m / u)
// with clr = lr / (1 - beta1^step), computed once per step on the host in double. The
// states are exp_avg (m) and exp_inf (u), both starting at zero.
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_ADAMAX_COEFFS(X) \
  X(clr) X(beta1) X(one_minus_beta1) X(beta2) X(eps) X(weight_decay)

FUSEDOPT_DEFINE_COEFFS(AdamaxCoeffs, FUSEDOPT_ADAMAX_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_ADAMAX_FLAGS(X) X(maximize, kBool) X(wd_mode, kCoupledDecay)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_ADAMAX_RULE(X) X(AdamaxStep, FUSEDOPT_ADAMAX_COEFFS, FUSEDOPT_ADAMAX_FLAGS, AdamaxCoeffs, AdamaxRule, "adamax")

template <class T, bool kMaximize, WeightDecay kWd>
struct AdamaxRule {
  using compute_t = T;
  static constexpr int kNumStates = 2;  // exp_avg, exp_inf
  AdamaxCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    T& m = state[0];
    T& u = state[1];
    m = c.beta1 * m + c.one_minus_beta1 * g;
    u = max_propagate_nan(c.beta2 * u, copysign_hd(g, T(1)) + c.eps);  // |g|: the sign bit cleared
    p = p - c.clr * div_ieee(m, u);
  }
};

}  // namespace math
}  // namespace fusedopt
