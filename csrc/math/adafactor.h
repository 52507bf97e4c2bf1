// Adafactor (Shazeer & Stern 2018), as torch.optim.Adafactor (torch 2.13).
//
// Not elementwise: a param of two or more dims (shape [..., R, C], B = numel / (R*C)
// matrices) keeps a row factor row_var [..., R, 1] and a column factor col_var
// [..., 1, C]; a param of fewer dims keeps a full variance of its own shape. A step needs
// per-tensor sums (the param's squares, the gradient's squared rows and columns, the
// update's squares), so the drivers run it in passes over each tensor (cpu/driver.cpp).
// The passes, and per element the operations in this order (T: the compute type):
//
//   g      = maximize ? -grad : grad
//   1. ssp = sum of p*p (double, the blocking of math/sumsq.h)
//      alpha = max(eps2, sqrt(ssp) / sqrt(numel)) * rho       (double; NaN -> eps2, as
//                                                               Python's max in torch)
//   2. factored: row_mean[i] = T(sum_j g*g / C), col_mean[j] = T(sum_i g*g / R)
//        (each sum in double: a row by the blocking of math/sumsq.h, a column in row order)
//      row_var = beta2_t * row_var + one_minus_beta2_t * row_mean
//      col_var = beta2_t * col_var + one_minus_beta2_t * col_mean
//      rmean   = max(T(sum_i row_var[i] / R), eps1)        (sum in double, in row order;
//                                                            NaN propagates)
//   3. factored (torch's 1 / sqrt(max(row_var[i] * col_var[j] / rmean, eps1_sq)), taken
//      apart so that the divisions and roots are per row and per column, not per element):
//        c[j] = col_var[j] / rmean,  a[i] = 1 / sqrt(row_var[i]),  b[j] = 1 / sqrt(c[j])
//        u    = g * (row_var[i] * c[j] < eps1_sq ? 1 / sqrt(eps1_sq) : a[i] * b[j])
//      (NaN propagates: where row_var[i] * c[j] is NaN, so is a[i] * b[j])
//    vector: variance = beta2_t * variance + one_minus_beta2_t * (g * g)
//        u    = g * (1 / sqrt(max(variance, eps1_sq)))     (NaN propagates)
//      ssu = sum of u*u (double, the blocking of math/sumsq.h)
//      denom = max(1, sqrt(ssu) / (sqrt(numel) * d))     (double; NaN -> 1, as torch)
//      scale = T(alpha / denom)
//   4. p = p * decay_factor  (weight_decay != 0);  p = p - scale * u  (u recomputed as in 3)
//
// with beta2_t = 1 - step^beta2_decay, one_minus_beta2_t = step^beta2_decay and
// rho = min(lr, 1/sqrt(step)) computed once per step on the host in double; eps1 NaN
// stands for torch's eps1=None: the machine epsilon of the compute type.
// States, in order: row_var, col_var, variance (absent where the param has none).
#pragma once

#include <cstdint>

#include "math/common_grad.h"

namespace fusedopt {
namespace math {

#define FUSEDOPT_ADAFACTOR_COEFFS(X) \
  X(beta2_t) X(one_minus_beta2_t) X(rho) X(eps1) X(eps2) X(d) X(decay_factor)

FUSEDOPT_DEFINE_COEFFS(AdafactorCoeffs, FUSEDOPT_ADAFACTOR_COEFFS)

#define FUSEDOPT_ADAFACTOR_FLAGS(X) X(maximize, kBool) X(wd_mode, kDecoupledDecay)

#define FUSEDOPT_ADAFACTOR_RULE(X) \
  X(AdafactorStep, FUSEDOPT_ADAFACTOR_COEFFS, FUSEDOPT_ADAFACTOR_FLAGS, AdafactorCoeffs, AdafactorRule, \
    "adafactor")

// eps1 of the coefficients for the compute type T, in double (NaN: T's machine epsilon,
// torch's None). The rule rounds it, and its square taken in double, to T.
template <class T>
FUSEDOPT_HD double adafactor_eps1(double eps1) {
  return eps1 != eps1 ? (sizeof(T) == 4 ? 0x1p-23 : 0x1p-52) : eps1;
}

// The per-tensor numbers of passes 1 and 3, in double, with Python's max (NaN loses).
FUSEDOPT_HD double adafactor_alpha(double eps2, double rho, double param_sumsq, int64_t numel) {
  const double rms = sqrt_ieee(param_sumsq) / sqrt_ieee(static_cast<double>(numel));
  return (rms > eps2 ? rms : eps2) * rho;
}
FUSEDOPT_HD double adafactor_denom(double d, double update_sumsq, int64_t numel) {
  const double ratio = sqrt_ieee(update_sumsq) / (sqrt_ieee(static_cast<double>(numel)) * d);
  return ratio > 1.0 ? ratio : 1.0;
}

// The per-element parts. kNumStates is the most a tensor keeps (row, column, variance).
template <class T, bool kMaximize, WeightDecay kWd>
struct AdafactorRule {
  using compute_t = T;
  static constexpr int kNumStates = 3;
  T beta2_t, one_minus_beta2_t, eps1, eps1_sq, decay_factor, inverse_root_eps1_sq;

  explicit AdafactorRule(const AdafactorCoeffs<double>& c)
      : beta2_t(static_cast<T>(c.beta2_t)),
        one_minus_beta2_t(static_cast<T>(c.one_minus_beta2_t)),
        eps1(static_cast<T>(adafactor_eps1<T>(c.eps1))),
        eps1_sq(static_cast<T>(adafactor_eps1<T>(c.eps1) * adafactor_eps1<T>(c.eps1))),
        decay_factor(static_cast<T>(c.decay_factor)),
        inverse_root_eps1_sq(inverse_root(eps1_sq)) {}

  FUSEDOPT_HD T grad(T grad) const { return effective_grad<kMaximize, WeightDecay::kNone>(grad, T(0), T(0)); }
  // A second moment (row, column or full) moved towards its new mean square.
  FUSEDOPT_HD T moment(T v, T mean_square) const { return beta2_t * v + one_minus_beta2_t * mean_square; }
  // The mean of a matrix's row factor, clamped below at eps1, from its sum in double.
  FUSEDOPT_HD T row_mean(double sum, int64_t rows) const {
    return max_propagate_nan(static_cast<T>(sum / static_cast<double>(rows)), eps1);
  }
  FUSEDOPT_HD static T inverse_root(T x) { return div_ieee(T(1), sqrt_ieee(x)); }
  // Pass 3 of a matrix: c = column_scaled(col_var[j], rmean), then the update from the
  // element's row factor, the two inverse roots and c. The CPU loops compute c and the
  // roots once per row and column, CUDA per element: the same operations, the same bits.
  FUSEDOPT_HD T column_scaled(T col, T row_mean) const { return div_ieee(col, row_mean); }
  FUSEDOPT_HD T factored_update(T g, T row, T row_root, T col_scaled, T col_root) const {
    return g * (row * col_scaled < eps1_sq ? inverse_root_eps1_sq : row_root * col_root);
  }
  // Pass 3 of a vector, from its full variance.
  FUSEDOPT_HD T update(T g, T variance) const {
    return g * inverse_root(max_propagate_nan(variance, eps1_sq));
  }
  FUSEDOPT_HD T apply(T p, T u, T scale) const { return decoupled_decay<kWd>(p, decay_factor) - scale * u; }
};

}  // namespace math
}  // namespace fusedopt
