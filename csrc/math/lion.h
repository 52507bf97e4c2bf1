// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; optax.lion).
//
// Per element, in this order:
//   g = maximize ? -grad : grad
//   c = beta1 * m + one_minus_beta1 * g           (the update direction)
//   p = p * decay_factor                          (decoupled, if weight_decay != 0;
//                                                  decay_factor = 1 - lr * weight_decay)
//   p = p - lr * sign(c)
//   m = beta2 * m + one_minus_beta2 * g
// sign is math::sign_keep_zero: -1 or 1 away from zero, c itself for +0, -0 and NaN, so NaN
// propagates (numpy.sign gives +0 for -0, torch.sign 0 for NaN: the exact reference mirrors
// this helper, not either).
// The one state is exp_avg (m). Coefficients are per step, computed on the host in double.
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_LION_COEFFS(X) \
  X(lr) X(beta1) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(weight_decay) X(decay_factor)

FUSEDOPT_DEFINE_COEFFS(LionCoeffs, FUSEDOPT_LION_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_LION_FLAGS(X) X(maximize, kBool) X(wd_mode, kDecoupledDecay)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_LION_RULE(X) X(LionStep, FUSEDOPT_LION_COEFFS, FUSEDOPT_LION_FLAGS, LionCoeffs, LionRule, "lion")

template <class T, bool kMaximize, WeightDecay kWd>
struct LionRule {
  using compute_t = T;
  static constexpr int kNumStates = 1;  // exp_avg
  LionCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    // kWd is kDecoupled or kNone (flag_dispatch.h), so this only applies maximize.
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    T& m = state[0];
    const T dir = c.beta1 * m + c.one_minus_beta1 * g;
    p = decoupled_decay<kWd>(p, c.decay_factor);
    p = p - c.lr * sign_keep_zero(dir);
    m = c.beta2 * m + c.one_minus_beta2 * g;
  }
};

}  // namespace math
}  // namespace fusedopt
