// Runtime flags -> template arguments: one branch per call, none per element. Each helper
// calls f with a std::integral_constant (or a value of the storage type), so the caller's
// generic lambda instantiates the rule's compile-time variant once per flag combination.
//
// Shared by the CPU loops and the CUDA launchers. Everything here sits in an unnamed
// namespace on purpose: csrc/cpu/kernels_isa.cpp is compiled once per instruction set, and
// a function with external linkage would be one weak symbol that the linker could take from
// the AVX-512 build for the baseline one (see the note at the top of that file).
#pragma once

#include <type_traits>

#include "common/dtype.h"
#include "common/steps.h"
#include "math/modes.h"
#include "math/storage.h"

namespace fusedopt {
namespace {  // NOLINT(build/namespaces): internal linkage is the point, see above

template <class F>
void with_bool(bool b, F&& f) {
  if (b) f(std::true_type{}); else f(std::false_type{});
}

template <class F>
void with_weight_decay(math::WeightDecay wd, F&& f) {
  using math::WeightDecay;
  switch (wd) {
    case WeightDecay::kNone: f(std::integral_constant<WeightDecay, WeightDecay::kNone>{}); break;
    case WeightDecay::kCoupled: f(std::integral_constant<WeightDecay, WeightDecay::kCoupled>{}); break;
    case WeightDecay::kDecoupled: f(std::integral_constant<WeightDecay, WeightDecay::kDecoupled>{}); break;
  }
}

template <class F>
void with_momentum(math::Momentum m, F&& f) {
  using math::Momentum;
  switch (m) {
    case Momentum::kNone: f(std::integral_constant<Momentum, Momentum::kNone>{}); break;
    case Momentum::kTorchFirst: f(std::integral_constant<Momentum, Momentum::kTorchFirst>{}); break;
    case Momentum::kTorch: f(std::integral_constant<Momentum, Momentum::kTorch>{}); break;
    case Momentum::kKeras: f(std::integral_constant<Momentum, Momentum::kKeras>{}); break;
  }
}

// The compute type of a call (common/batch.h: compute_dtype): float, or double for float64.
template <class F>
void with_compute(DType d, F&& f) {
  if (d == DType::kFloat64) f(double{}); else f(float{});
}

// The storage type S of one role, the 16-bit ones as the tags of math/storage.h (read
// through math::widen). For code that reads a role alone: the gradients' norm and count.
template <class F>
void with_storage(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kBFloat16: f(math::BFloat16{}); break;
    case DType::kFloat16: f(math::Float16{}); break;
  }
}

template <class T>
struct TypeTag {
  using type = T;
};

// For rules with one form of weight decay: kForm where the step asks for it, else kNone
// (their flag's kind, FlagKind::kCoupledDecay or kDecoupledDecay, admits no other).
template <math::WeightDecay kForm, class F>
void with_decay_or_none(math::WeightDecay wd, F&& f) {
  using math::WeightDecay;
  if (wd == kForm)
    f(std::integral_constant<WeightDecay, kForm>{});
  else
    f(std::integral_constant<WeightDecay, WeightDecay::kNone>{});
}

// A flag's runtime value as a compile-time constant, over the values its kind takes.
template <class F>
void with_flag(FlagValue<FlagKind::kBool> v, F&& f) { with_bool(v.value, f); }
template <class F>
void with_flag(FlagValue<FlagKind::kWeightDecay> v, F&& f) { with_weight_decay(v.value, f); }
template <class F>
void with_flag(FlagValue<FlagKind::kCoupledDecay> v, F&& f) {
  with_decay_or_none<math::WeightDecay::kCoupled>(v.value, f);
}
template <class F>
void with_flag(FlagValue<FlagKind::kDecoupledDecay> v, F&& f) {
  with_decay_or_none<math::WeightDecay::kDecoupled>(v.value, f);
}
template <class F>
void with_flag(FlagValue<FlagKind::kMomentum> v, F&& f) { with_momentum(v.value, f); }

template <auto... kValues>
struct Constants {};

// The flags still to turn into constants, one at a time; then the rule of those constants.
template <class Step, class S, class F, auto... kDone>
void with_constants(F& f, Constants<kDone...>) {
  f(TypeTag<typename Step::template Rule<S, kDone...>::type>{}, TypeTag<S>{});
}
template <class Step, class S, class F, auto... kDone, class Flag, class... Rest>
void with_constants(F& f, Constants<kDone...>, Flag flag, Rest... rest) {
  with_flag(flag, [&](auto c) {
    with_constants<Step, S>(f, Constants<kDone..., decltype(c)::value>{}, rest...);
  });
}

// The rule variant a step's flags select, for both backends: calls
// f(TypeTag<Rule>{}, TypeTag<T>{}) with T the compute type of `d` (a Batch's
// compute_dtype()) and Rule the step's rule template (common/steps.h) at T and the flags'
// values, in the order the rule's FUSEDOPT_<RULE>_FLAGS lists them. The loops instantiate
// each variant once for arrays stored in T and once for other storage (converted on load
// and store), not once per combination of storage types.
template <class Step, class F>
void with_rule(const Step& s, DType d, F&& f) {
  with_compute(d, [&](auto st) {
    using S = std::decay_t<decltype(st)>;  // decay: GCC sees a reference here
    s.flags([&](int, auto... flags) { with_constants<Step, S>(f, Constants<>{}, flags...); });
  });
}

// How many state lists the step's variant reads and writes.
template <class Step>
int n_states(const Step& s) {
  int n = 0;
  with_rule(s, DType::kFloat32, [&](auto rule, auto) { n = decltype(rule)::type::kNumStates; });
  return n;
}

}  // namespace
}  // namespace fusedopt
