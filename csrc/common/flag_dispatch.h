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
#include "math/modes.h"

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

// The storage type S; arithmetic is float for float32 storage and double for float64.
template <class F>
void with_storage(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
  }
}

}  // namespace
}  // namespace fusedopt
