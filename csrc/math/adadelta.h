// Adadelta (Zeiler 2012, "ADADELTA: An Adaptive Learning Rate Method"; torch.optim.Adadelta).
//
// Per element, in this order:
//   g     = maximize ? -grad : grad
//   g     = g + weight_decay * p                   (if weight_decay != 0)
//   sq    = rho * sq + one_minus_rho * (g * g)
//   delta = (sqrt(acc + eps) / sqrt(sq + eps)) * g
//   acc   = rho * acc + one_minus_rho * (delta * delta)
//   p     = p - lr * delta
// The states are square_avg (sq) and acc_delta (acc), both starting at zero. The
// coefficients are the same every step.
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_ADADELTA_COEFFS(X) X(lr) X(rho) X(one_minus_rho) X(eps) X(weight_decay)

FUSEDOPT_DEFINE_COEFFS(AdadeltaCoeffs, FUSEDOPT_ADADELTA_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_ADADELTA_FLAGS(X) X(maximize, kBool) X(wd_mode, kCoupledDecay)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_ADADELTA_RULE(X) X(AdadeltaStep, FUSEDOPT_ADADELTA_COEFFS, FUSEDOPT_ADADELTA_FLAGS, AdadeltaCoeffs, AdadeltaRule, "adadelta")

template <class T, bool kMaximize, WeightDecay kWd>
struct AdadeltaRule {
  using compute_t = T;
  static constexpr int kNumStates = 2;  // square_avg, acc_delta
  AdadeltaCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    T& sq = state[0];
    T& acc = state[1];
    sq = c.rho * sq + c.one_minus_rho * (g * g);
    const T delta = div_ieee(sqrt_ieee(acc + c.eps), sqrt_ieee(sq + c.eps)) * g;
    acc = c.rho * acc + c.one_minus_rho * (delta * delta);
    p = p - c.lr * delta;
  }
};

}  // namespace math
}  // namespace fusedopt
