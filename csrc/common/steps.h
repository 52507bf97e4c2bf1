// What one step of each rule needs besides the arrays: the per-step coefficients, already
// computed in double on the host (fusedopt/rules/<rule>.py), and the flags that select the
// rule's compile-time variant. Loops cast the coefficients to the compute type once.
//
// A rule is described once, in its math header: its numbers (FUSEDOPT_<RULE>_COEFFS), its
// flags (FUSEDOPT_<RULE>_FLAGS: Python's name and how the flag is read, in the order of the
// rule's template arguments) and the two together (FUSEDOPT_<RULE>_RULE). Registering it
// is its include and one line of FUSEDOPT_FOR_EACH_STEP below; its step struct, the
// bindings' reading of Python's coefficient objects (by these names), the CPU kernel
// table, the CUDA entry point (generated per rule by CMake) and the names Python builds
// its objects with (step_fields()) all follow from that line.
#pragma once

#include "math/adadelta.h"
#include "math/adafactor.h"
#include "math/adagrad.h"
#include "math/adam.h"
#include "math/adamax.h"
#include "math/lamb.h"
#include "math/lion.h"
#include "math/modes.h"
#include "math/nadam.h"
#include "math/radam.h"
#include "math/rmsprop.h"
#include "math/sgd.h"

namespace fusedopt {

// Every rule, one line each: FUSEDOPT_<RULE>_RULE(X) expands to
// X(step struct, numbers' X-macro, flags' X-macro, coefficients struct, rule template, name).
#define FUSEDOPT_FOR_EACH_STEP(X) \
  FUSEDOPT_SGD_RULE(X)            \
  FUSEDOPT_ADAGRAD_RULE(X)        \
  FUSEDOPT_RMSPROP_RULE(X)        \
  FUSEDOPT_ADAM_RULE(X)           \
  FUSEDOPT_ADAMAX_RULE(X)         \
  FUSEDOPT_LION_RULE(X)           \
  FUSEDOPT_NADAM_RULE(X)          \
  FUSEDOPT_RADAM_RULE(X)          \
  FUSEDOPT_ADADELTA_RULE(X)

// Rules with a per-tensor trust ratio (math/lamb.h): pass 1 updates the states and sums
// ||p||^2 and ||u||^2 per tensor, pass 2 applies p -= factor_t * u. The drivers give them a
// pass of their own (cpu/driver.h, cuda/kernels.h); step structs, Python's coefficient
// names and their reading follow from this line as for the elementwise rules. (Written on
// one line: CMake generates an elementwise CUDA entry for each indented RULE line above.)
#define FUSEDOPT_FOR_EACH_TRUST_STEP(X) FUSEDOPT_LAMB_RULE(X)

// Every rule of either kind.
#define FUSEDOPT_FOR_EACH_RULE(X) FUSEDOPT_FOR_EACH_STEP(X) FUSEDOPT_FOR_EACH_TRUST_STEP(X)
// Rules that are not elementwise (states shaped otherwise than the params, per-tensor sums):
// described like the others, but run by passes of their own (cpu/driver.h) over calls the
// reader reads with the factored state layout (bindings/reader.h: StateLayout).
#define FUSEDOPT_FOR_EACH_FACTORED_STEP(X) FUSEDOPT_ADAFACTOR_RULE(X)

// How a flag is read from Python and which values it takes: a bool, a weight-decay mode
// (any, or one form and none: a rule that applies only that form folds the other into
// it), or a momentum mode (math/modes.h numbers them).
enum class FlagKind { kBool, kWeightDecay, kCoupledDecay, kDecoupledDecay, kMomentum };

template <FlagKind K>
struct FlagType {
  using type = math::WeightDecay;
};
template <>
struct FlagType<FlagKind::kBool> {
  using type = bool;
};
template <>
struct FlagType<FlagKind::kMomentum> {
  using type = math::Momentum;
};

// Whether `code` is a value a flag of this kind takes.
constexpr bool flag_allows(FlagKind kind, long long code) {
  switch (kind) {
    case FlagKind::kBool: return code == 0 || code == 1;
    case FlagKind::kWeightDecay: return code >= 0 && code <= 2;
    case FlagKind::kCoupledDecay: return code == 0 || code == static_cast<int>(math::WeightDecay::kCoupled);
    case FlagKind::kDecoupledDecay: return code == 0 || code == static_cast<int>(math::WeightDecay::kDecoupled);
    case FlagKind::kMomentum: return code >= 0 && code <= 3;
  }
  return false;
}

// A flag's value with its kind, for common/flag_dispatch.h to turn into a constant.
template <FlagKind K>
struct FlagValue {
  typename FlagType<K>::type value;
};

// The step structs, one per rule: kName, the coefficients `c`, and a member per flag named
// as in Python; flags() lists them for flag_dispatch.h; Rule<S, flag constants...> is the
// rule's variant for storage type S.
#define FUSEDOPT_STEP_FLAG_MEMBER(name, kind) FlagType<FlagKind::kind>::type name;
#define FUSEDOPT_STEP_FLAG_VALUE(name, kind) , FlagValue<FlagKind::kind>{name}
#define FUSEDOPT_DEFINE_STEP(Step, COEFFS, FLAGS, Coeffs, RuleTemplate, name)  \
  struct Step {                                                                \
    static constexpr const char* kName = name;                                 \
    math::Coeffs<double> c;                                                    \
    FLAGS(FUSEDOPT_STEP_FLAG_MEMBER)                                           \
    template <class F>                                                         \
    void flags(F&& f) const {                                                  \
      f(0 FLAGS(FUSEDOPT_STEP_FLAG_VALUE));                                    \
    }                                                                          \
    template <class S, auto... kFlags>                                         \
    struct Rule {                                                              \
      using type = math::RuleTemplate<S, kFlags...>;                           \
    };                                                                         \
  };
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_DEFINE_STEP)
FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_DEFINE_STEP)
#undef FUSEDOPT_DEFINE_STEP
#undef FUSEDOPT_STEP_FLAG_MEMBER
#undef FUSEDOPT_STEP_FLAG_VALUE

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
