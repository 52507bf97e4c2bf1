// RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond";
// torch.optim.RAdam).
//
// Per element, in this order:
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                       (coupled weight decay)
//   p = p * decay_factor                           (or decoupled: decay_factor = 1 - lr * wd)
//   m = beta1 * m + one_minus_beta1 * g
//   v = beta2 * v + one_minus_beta2 * (g * g)
//   rectified: p = p - step_size * (m / (sqrt(v) + eps))
//   else:      p = p - step_size * m
// The host decides per step, in double, as torch does: rho_inf = 2 / (1 - beta2) - 1,
// rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t); the step is rectified when rho_t > 5, with
// step_size = lr * r_t * sqrt(1 - beta2^t) / (1 - beta1^t), r_t = sqrt((rho_t - 4)(rho_t - 2)
// rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)); otherwise step_size = lr / (1 - beta1^t).
// The states are exp_avg (m) and exp_avg_sq (v), both starting at zero.
#pragma once

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings, Python and device tables share.
#define FUSEDOPT_RADAM_COEFFS(X) \
  X(beta1) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(step_size) X(eps) X(weight_decay) X(decay_factor)

FUSEDOPT_DEFINE_COEFFS(RadamCoeffs, FUSEDOPT_RADAM_COEFFS)

// The flags that pick the rule's variant, in the order of its template arguments after T:
// (Python's name, how it is read: common/steps.h FlagKind).
#define FUSEDOPT_RADAM_FLAGS(X) X(maximize, kBool) X(wd_mode, kWeightDecay) X(rectified, kBool)

// The rule as common/steps.h registers it: (step struct, numbers, flags, coefficients
// struct, rule template, Python's name).
#define FUSEDOPT_RADAM_RULE(X) X(RadamStep, FUSEDOPT_RADAM_COEFFS, FUSEDOPT_RADAM_FLAGS, RadamCoeffs, RadamRule, "radam")

template <class T, bool kMaximize, WeightDecay kWd, bool kRectified>
struct RadamRule {
  using compute_t = T;
  static constexpr int kNumStates = 2;  // exp_avg, exp_avg_sq
  RadamCoeffs<T> c;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    const T g = effective_grad<kMaximize, kWd>(grad, p, c.weight_decay);
    p = decoupled_decay<kWd>(p, c.decay_factor);
    T& m = state[0];
    T& v = state[1];
    update_moments(c, g, m, v);
    if (kRectified) {
      p = p - c.step_size * div_ieee(m, sqrt_ieee(v) + c.eps);
    } else {
      p = p - c.step_size * m;
    }
  }
};

}  // namespace math
}  // namespace fusedopt
