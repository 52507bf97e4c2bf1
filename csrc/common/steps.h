// What one step of each rule needs besides the arrays: the per-step coefficients, already
// computed in double on the host (fusedopt/_coeffs.py), and the flags that select the
// rule's compile-time variant. Loops cast the coefficients to the compute type once.
#pragma once

#include "math/adagrad.h"
#include "math/adam.h"
#include "math/modes.h"
#include "math/rmsprop.h"
#include "math/sgd.h"

namespace fusedopt {

struct SgdStep {
  math::SgdCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
  math::Momentum momentum;
  bool nesterov;
};

struct AdagradStep {
  math::AdagradCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
};

struct RmspropStep {
  math::RmspropCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
  bool centered;
  bool momentum;
};

struct AdamStep {
  math::AdamCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
  bool amsgrad;
};

struct TrafficStep {
  int n_states;  // 0..3: the byte pattern of the rule being measured
};

// Coefficients rounded once from double to the compute type T (on the host for the CPU
// loops; inside the kernel on CUDA, where they may come from device memory).
template <class T>
FUSEDOPT_HD math::SgdCoeffs<T> cast_coeffs(const math::SgdCoeffs<double>& c) {
  return {T(c.lr), T(c.weight_decay), T(c.decay_factor), T(c.momentum), T(c.one_minus_dampening)};
}
template <class T>
FUSEDOPT_HD math::AdagradCoeffs<T> cast_coeffs(const math::AdagradCoeffs<double>& c) {
  return {T(c.clr), T(c.weight_decay), T(c.eps)};
}
template <class T>
FUSEDOPT_HD math::RmspropCoeffs<T> cast_coeffs(const math::RmspropCoeffs<double>& c) {
  return {T(c.lr), T(c.alpha), T(c.one_minus_alpha), T(c.eps), T(c.weight_decay), T(c.momentum)};
}
template <class T>
FUSEDOPT_HD math::AdamCoeffs<T> cast_coeffs(const math::AdamCoeffs<double>& c) {
  return {T(c.beta1),     T(c.one_minus_beta1), T(c.beta2),        T(c.one_minus_beta2), T(c.step_size),
          T(c.inv_sqrt_bc2), T(c.eps),          T(c.weight_decay), T(c.decay_factor)};
}

}  // namespace fusedopt
