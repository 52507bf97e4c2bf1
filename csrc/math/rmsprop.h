// RMSprop (torch.optim.RMSprop).
//
// Per element, in this order:
//   g   = maximize ? -grad : grad
//   g   = g + weight_decay * p                          (if weight_decay != 0)
//   sq  = alpha * sq + one_minus_alpha * (g * g)
//   centered:  ga  = alpha * ga + one_minus_alpha * g
//              avg = sqrt(sq - ga * ga) + eps
//   otherwise: avg = sqrt(sq) + eps
//   momentum:  buf = momentum * buf + g / avg;  p = p - lr * buf
//   otherwise: p = p - lr * (g / avg)
// States, in order: square_avg, then grad_avg (centered only), then momentum_buffer
// (momentum > 0 only); all start at zero, as in torch.
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_RMSPROP_COEFFS(X) X(lr) X(alpha) X(one_minus_alpha) X(eps) X(weight_decay) X(momentum)

FUSEDOPT_DEFINE_COEFFS(RmspropCoeffs, FUSEDOPT_RMSPROP_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_RMSPROP_FLAGS(X) X(maximize, kBool) X(wd_mode, kCoupledDecay) X(centered, kBool) X(has_momentum, kBool)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_RMSPROP_RULE(X) X(RmspropStep, FUSEDOPT_RMSPROP_COEFFS, FUSEDOPT_RMSPROP_FLAGS, RmspropCoeffs, RmspropRule, "rmsprop")

template <class T, bool kMaximize, WeightDecay kWd, bool kCentered, bool kMomentum>
struct RmspropRule {
  using compute_t = T;
  static constexpr int kNumStates = 1 + (kCentered ? 1 : 0) + (kMomentum ? 1 : 0);
  RmspropCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    T& sq = state[0];
    sq = c.alpha * sq + c.one_minus_alpha * (g * g);
    T avg;
    if (kCentered) {
      T& ga = state[1];
      ga = c.alpha * ga + c.one_minus_alpha * g;
      avg = sqrt_ieee(sq - ga * ga) + c.eps;
    } else {
      avg = sqrt_ieee(sq) + c.eps;
    }
    if (kMomentum) {
      T& buf = state[kCentered ? 2 : 1];
      buf = c.momentum * buf + div_ieee(g, avg);
      p = p - c.lr * buf;
    } else {
      p = p - c.lr * div_ieee(g, avg);
    }
  }
};

}  // namespace math
}  // namespace fusedopt
