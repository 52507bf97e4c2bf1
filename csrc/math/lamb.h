// LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"; Apex's FusedLAMB,
// optax's lamb): Adam's moments, then a step scaled per tensor by the trust ratio
// ||p|| / ||u||. It is not elementwise, so it is not a line of FUSEDOPT_FOR_EACH_STEP but
// of FUSEDOPT_FOR_EACH_TRUST_STEP (common/steps.h): two elementwise passes around the two
// norms of every tensor.
//
// Pass 1, per element, in this order:
//   g = maximize ? -grad : grad
//   m = beta1 * m + one_minus_beta1 * g
//   v = beta2 * v + one_minus_beta2 * (g * g)
//   (m and v are stored, and read back as stored: rounded to 16 bits if so stored)
//   u = (m * inv_bc1) / (sqrt(v) * inv_sqrt_bc2 + eps) + weight_decay * p
//                                          (the last term only if weight_decay != 0)
//   and p * p, u * u added in double to the tensor's sums, blocked as math/sumsq.h does.
// Per tensor, in double: ratio = sqrt(sum p^2) / sqrt(sum u^2), or 1 if either sum is 0;
//   factor = lr * ratio, rounded once to the compute type.
// Pass 2, per element: u again, from the same stored p, m and v (so the same bits), and
//   p = p - factor * u
// with inv_bc1 = 1 / (1 - beta1^step) and inv_sqrt_bc2 = 1 / sqrt(1 - beta2^step),
// computed once per step on the host in double. States, in order: exp_avg, exp_avg_sq.
#pragma once

#include "math/common_grad.h"
#include "math/hd.h"
#include "math/modes.h"

namespace fusedopt {
namespace math {

// The per-step numbers, in the order the bindings and Python share.
#define FUSEDOPT_LAMB_COEFFS(X)                                                                        \
  X(beta1) X(one_minus_beta1) X(beta2) X(one_minus_beta2) X(inv_bc1) X(inv_sqrt_bc2) X(eps) X(weight_decay) \
  X(lr)

FUSEDOPT_DEFINE_COEFFS(LambCoeffs, FUSEDOPT_LAMB_COEFFS)

// (Python's name, how it is read: common/steps.h FlagKind), in template-argument order.
#define FUSEDOPT_LAMB_FLAGS(X) X(maximize, kBool) X(wd_mode, kDecoupledDecay)

#define FUSEDOPT_LAMB_RULE(X) X(LambStep, FUSEDOPT_LAMB_COEFFS, FUSEDOPT_LAMB_FLAGS, LambCoeffs, LambRule, "lamb")

// A trust-ratio rule as the drivers run it: moments() is pass 1's state update,
// direction() the vector u whose norm, with the param's, gives the tensor's factor
// (tensor_factor()), and pass 2 is p = p - factor * direction().
template <class T, bool kMaximize, WeightDecay kWd>
struct LambRule {
  using compute_t = T;
  static constexpr int kNumStates = 2;
  LambCoeffs<T> c;

  FUSEDOPT_HD void moments(T grad, T* state) const {
    const T g = kMaximize ? -grad : grad;
    update_moments(c, g, state[0], state[1]);
  }

  // Weight decay is left out when it is 0 (as torch does): 0 * inf would make an infinite
  // parameter's update NaN.
  FUSEDOPT_HD T direction(T p, const T* state) const {
    const T denom = sqrt_ieee(state[1]) * c.inv_sqrt_bc2 + c.eps;
    T u = div_ieee(state[0] * c.inv_bc1, denom);
    if (kWd == WeightDecay::kDecoupled) u = u + c.weight_decay * p;
    return u;
  }

  // The tensor's factor lr * ratio in double, from its sums of p^2 and u^2 (NaN in either
  // gives NaN, which the update then propagates).
  static FUSEDOPT_HD double tensor_factor(const LambCoeffs<double>& c, double p_sq, double u_sq) {
    const double ratio = (p_sq == 0.0 || u_sq == 0.0) ? 1.0 : div_ieee(sqrt_ieee(p_sq), sqrt_ieee(u_sq));
    return c.lr * ratio;
  }
};

}  // namespace math
}  // namespace fusedopt
