// Adam, AdamW and AMSGrad (torch.optim.Adam / AdamW).
//
// Per element, in this order:
//   g     = maximize ? -grad : grad
//   g     = g + weight_decay * p                  (Adam: coupled, if weight_decay != 0)
//   p     = p * decay_factor                      (AdamW: decay_factor = 1 - lr * weight_decay)
//   m     = beta1 * m + one_minus_beta1 * g
//   v     = beta2 * v + one_minus_beta2 * (g * g)
//   amsgrad: vmax = max(vmax, v) (NaN propagates);  vhat = vmax;   else vhat = v
//   denom = sqrt(vhat) * inv_sqrt_bc2 + eps       (eps after the square root, as torch)
//   p     = p - step_size * (m / denom)
// with step_size = lr / (1 - beta1^step) and inv_sqrt_bc2 = 1 / sqrt(1 - beta2^step),
// computed once per step on the host in double. States, in order: exp_avg, exp_avg_sq,
// then max_exp_avg_sq (amsgrad only).
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_ADAM_COEFFS(X) \
  X(beta1) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(step_size) X(inv_sqrt_bc2) X(eps) X(weight_decay) \
  X(decay_factor)

FUSEDOPT_DEFINE_COEFFS(AdamCoeffs, FUSEDOPT_ADAM_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_ADAM_FLAGS(X) X(maximize, kBool) X(wd_mode, kWeightDecay) X(amsgrad, kBool)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_ADAM_RULE(X) X(AdamStep, FUSEDOPT_ADAM_COEFFS, FUSEDOPT_ADAM_FLAGS, AdamCoeffs, AdamRule, "adam")

template <class T, bool kMaximize, WeightDecay kWd, bool kAmsgrad>
struct AdamRule {
  using compute_t = T;
  static constexpr int kNumStates = kAmsgrad ? 3 : 2;
  AdamCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    p = decoupled_decay<kWd>(p, c.decay_factor);
    T& m = state[0];
    T& v = state[1];
    update_moments(c, g, m, v);
    T vhat = v;
    if (kAmsgrad) {
      state[2] = max_propagate_nan(state[2], v);
      vhat = state[2];
    }
    const T denom = sqrt_ieee(vhat) * c.inv_sqrt_bc2 + c.eps;
    p = p - c.step_size * div_ieee(m, denom);
  }
};

}  // namespace math
}  // namespace fusedopt
