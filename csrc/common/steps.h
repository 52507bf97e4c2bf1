// What one step of each rule needs besides the arrays: the per-step coefficients, already
// computed in double on the host (fusedopt/_coeffs.py), and the flags that select the
// rule's compile-time variant. Loops cast the coefficients to the compute type once.
//
// Each step is described once, here: its rule's numbers (the X-macro in the rule's math
// header) followed by its flags (FUSEDOPT_*_FLAGS below: Python's name, the member, its
// kind). The bindings read Python's coefficient objects by these names, and the modules
// give Python the names (step_fields()) to build those objects with.
#pragma once

#include "math/adagrad.h"
#include "math/adam.h"
#include "math/lion.h"
#include "math/modes.h"
#include "math/rmsprop.h"
#include "math/sgd.h"

namespace fusedopt {

// How a flag is read from Python: a bool, or a mode's code (math/modes.h).
enum class FlagKind { kBool, kWeightDecay, kMomentum };

#define FUSEDOPT_SGD_FLAGS(X)                                                                   \
  X(maximize, maximize, FlagKind::kBool) X(wd_mode, weight_decay, FlagKind::kWeightDecay)     \
  X(momentum_mode, momentum, FlagKind::kMomentum) X(nesterov, nesterov, FlagKind::kBool)
struct SgdStep {
  static constexpr const char* kName = "sgd";
  math::SgdCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
  math::Momentum momentum;
  bool nesterov;
  int n_states() const { return momentum == math::Momentum::kNone ? 0 : 1; }
};

#define FUSEDOPT_ADAGRAD_FLAGS(X) \
  X(maximize, maximize, FlagKind::kBool) X(wd_mode, weight_decay, FlagKind::kWeightDecay)
struct AdagradStep {
  static constexpr const char* kName = "adagrad";
  math::AdagradCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
  int n_states() const { return 1; }
};

#define FUSEDOPT_RMSPROP_FLAGS(X)                                                           \
  X(maximize, maximize, FlagKind::kBool) X(wd_mode, weight_decay, FlagKind::kWeightDecay) \
  X(centered, centered, FlagKind::kBool) X(has_momentum, momentum, FlagKind::kBool)
struct RmspropStep {
  static constexpr const char* kName = "rmsprop";
  math::RmspropCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
  bool centered;
  bool momentum;
  int n_states() const { return 1 + (centered ? 1 : 0) + (momentum ? 1 : 0); }
};

#define FUSEDOPT_ADAM_FLAGS(X)                                                              \
  X(maximize, maximize, FlagKind::kBool) X(wd_mode, weight_decay, FlagKind::kWeightDecay) \
  X(amsgrad, amsgrad, FlagKind::kBool)
struct AdamStep {
  static constexpr const char* kName = "adam";
  math::AdamCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
  bool amsgrad;
  int n_states() const { return amsgrad ? 3 : 2; }
};

#define FUSEDOPT_LION_FLAGS(X) \
  X(maximize, maximize, FlagKind::kBool) X(wd_mode, weight_decay, FlagKind::kWeightDecay)
struct LionStep {
  static constexpr const char* kName = "lion";
  math::LionCoeffs<double> c;
  bool maximize;
  math::WeightDecay weight_decay;
  int n_states() const { return 1; }
};

// Every rule: (step struct, its numbers' X-macro, its flags' X-macro). One line a rule.
#define FUSEDOPT_FOR_EACH_STEP(X)                               \
  X(SgdStep, FUSEDOPT_SGD_COEFFS, FUSEDOPT_SGD_FLAGS)           \
  X(AdagradStep, FUSEDOPT_ADAGRAD_COEFFS, FUSEDOPT_ADAGRAD_FLAGS) \
  X(RmspropStep, FUSEDOPT_RMSPROP_COEFFS, FUSEDOPT_RMSPROP_FLAGS) \
  X(AdamStep, FUSEDOPT_ADAM_COEFFS, FUSEDOPT_ADAM_FLAGS)        \
  X(LionStep, FUSEDOPT_LION_COEFFS, FUSEDOPT_LION_FLAGS)

struct TrafficStep {
  int n_states;  // 0..3: the byte pattern of the rule being measured
};

// Coefficients rounded once from double to the compute type T (on the host for the CPU
// loops; inside the kernel on CUDA, where they may come from device memory).
template <class T, template <class> class Coeffs>
FUSEDOPT_HD Coeffs<T> cast_coeffs(const Coeffs<double>& c) {
  return c.template cast<T>();
}

}  // namespace fusedopt
