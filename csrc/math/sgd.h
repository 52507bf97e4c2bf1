// SGD, with optional heavy-ball or Nesterov momentum, in the torch or the Keras convention.
//
// Per element, in this order (every operation rounded to the compute type T):
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                       (coupled weight decay, torch convention)
//   p = p * decay_factor                           (decoupled, Keras convention;
//                                                   decay_factor = 1 - lr * weight_decay)
//   torch, no momentum:   p = p - lr * g
//   torch, momentum:      buf = g                                   (first step)
//                         buf = momentum * buf + one_minus_dampening * g   (later steps)
//                         d = nesterov ? g + momentum * buf : buf
//                         p = p - lr * d
//   Keras, momentum:      v = momentum * v - lr * g
//                         p = nesterov ? p + (momentum * v - lr * g) : p + v
// The adaptive-rate rule (adaptive_sgd_) is this rule with lr = lr0 / (1 + ||g||^2).
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_SGD_COEFFS(X) X(lr) X(weight_decay) X(decay_factor) X(momentum) X(one_minus_dampening)

FUSEDOPT_DEFINE_COEFFS(SgdCoeffs, FUSEDOPT_SGD_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_SGD_FLAGS(X) X(maximize, kBool) X(wd_mode, kWeightDecay) X(momentum_mode, kMomentum) X(nesterov, kBool)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_SGD_RULE(X) X(SgdStep, FUSEDOPT_SGD_COEFFS, FUSEDOPT_SGD_FLAGS, SgdCoeffs, SgdRule, "sgd")

template <class T, bool kMaximize, WeightDecay kWd, Momentum kMomentum, bool kNesterov>
struct SgdRule {
  using compute_t = T;
  static constexpr int kNumStates = (kMomentum == Momentum::kNone) ? 0 : 1;  // momentum buffer
  SgdCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    p = decoupled_decay<kWd>(p, c.decay_factor);
    if (kMomentum == Momentum::kNone) {
      p = p - c.lr * g;
    } else if (kMomentum == Momentum::kKeras) {
      T& v = state[0];
      v = c.momentum * v - c.lr * g;
      p = kNesterov ? p + (c.momentum * v - c.lr * g) : p + v;
    } else {
      T& buf = state[0];
      buf = (kMomentum == Momentum::kTorchFirst) ? g : c.momentum * buf + c.one_minus_dampening * g;
      const T d = kNesterov ? g + c.momentum * buf : buf;
      p = p - c.lr * d;
    }
  }
};

}  // namespace math
}  // namespace fusedopt
