// NAdam (Dozat 2016, "Incorporating Nesterov Momentum into Adam"; torch.optim.NAdam).
//
// Per element, in this order:
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                       (coupled weight decay)
//   p = p * decay_factor                           (or decoupled: decay_factor = 1 - lr * wd)
//   m = beta1 * m + one_minus_beta1 * g
//   v = beta2 * v + one_minus_beta2 * (g * g)
//   d = sqrt(v) * inv_sqrt_bc2 + eps
//   p = p - grad_step * (g / d)
//   p = p - momentum_step * (m / d)
// with, per step on the host in double, mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)),
// grad_step = lr * (1 - mu_t) / (1 - mu_1...mu_t), momentum_step = lr * mu_{t+1} /
// (1 - mu_1...mu_{t+1}) and inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t). The states are exp_avg (m)
// and exp_avg_sq (v), both starting at zero.
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_NADAM_COEFFS(X)                                                            \
  X(beta1) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(inv_sqrt_bc2) X(eps) X(weight_decay) \
  X(decay_factor) X(grad_step) X(momentum_step)

FUSEDOPT_DEFINE_COEFFS(NadamCoeffs, FUSEDOPT_NADAM_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_NADAM_FLAGS(X) X(maximize, kBool) X(wd_mode, kWeightDecay)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_NADAM_RULE(X) X(NadamStep, FUSEDOPT_NADAM_COEFFS, FUSEDOPT_NADAM_FLAGS, NadamCoeffs, NadamRule, "nadam")

template <class T, bool kMaximize, WeightDecay kWd>
struct NadamRule {
  using compute_t = T;
  static constexpr int kNumStates = 2;  // exp_avg, exp_avg_sq
  NadamCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    p = decoupled_decay<kWd>(p, c.decay_factor);
    T& m = state[0];
    T& v = state[1];
    update_moments(c, g, m, v);
    const T d = sqrt_ieee(v) * c.inv_sqrt_bc2 + c.eps;
    p = p - c.grad_step * div_ieee(g, d);
    p = p - c.momentum_step * div_ieee(m, d);
  }
};

}  // namespace math
}  // namespace fusedopt
