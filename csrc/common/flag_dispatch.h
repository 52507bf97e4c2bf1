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
#include "math/adagrad.h"
#include "math/adam.h"
#include "math/lion.h"
#include "math/modes.h"
#include "math/rmsprop.h"
#include "math/sgd.h"

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

template <class T>
struct TypeTag {
  using type = T;
};

// The rule variant a step's flags select, for both backends: calls
// f(TypeTag<Rule>{}, TypeTag<S>{}) with S the storage type. Variants that cannot differ are
// folded: Adagrad and RMSprop apply weight decay only in its coupled form (their rules
// never call decoupled_decay), Lion only in its decoupled form, and SGD without momentum
// never reads kNesterov.
template <class F>
void with_rule(const SgdStep& s, DType d, F&& f) {
  const bool nesterov = s.nesterov && s.momentum != math::Momentum::kNone;
  with_storage(d, [&](auto st) {
    using S = std::decay_t<decltype(st)>;  // decay: GCC sees a reference here
    with_bool(s.maximize, [&](auto mx) {
      with_weight_decay(s.weight_decay, [&](auto wd) {
        with_momentum(s.momentum, [&](auto mom) {
          with_bool(nesterov, [&](auto nest) {
            if constexpr (mom.value != math::Momentum::kNone || !nest.value)
              f(TypeTag<math::SgdRule<S, mx.value, wd.value, mom.value, nest.value>>{}, TypeTag<S>{});
          });
        });
      });
    });
  });
}

// For rules with one form of weight decay: kForm where the step asks for it, else kNone
// (their coefficient functions in fusedopt/_coeffs.py never ask for the other form).
template <math::WeightDecay kForm, class F>
void with_decay_or_none(math::WeightDecay wd, F&& f) {
  using math::WeightDecay;
  if (wd == kForm)
    f(std::integral_constant<WeightDecay, kForm>{});
  else
    f(std::integral_constant<WeightDecay, WeightDecay::kNone>{});
}

template <class F>
void with_rule(const AdagradStep& s, DType d, F&& f) {
  with_storage(d, [&](auto st) {
    using S = std::decay_t<decltype(st)>;  // decay: GCC sees a reference here
    with_bool(s.maximize, [&](auto mx) {
      with_decay_or_none<math::WeightDecay::kCoupled>(s.weight_decay, [&](auto wd) {
        f(TypeTag<math::AdagradRule<S, mx.value, wd.value>>{}, TypeTag<S>{});
      });
    });
  });
}

template <class F>
void with_rule(const RmspropStep& s, DType d, F&& f) {
  with_storage(d, [&](auto st) {
    using S = std::decay_t<decltype(st)>;  // decay: GCC sees a reference here
    with_bool(s.maximize, [&](auto mx) {
      with_decay_or_none<math::WeightDecay::kCoupled>(s.weight_decay, [&](auto wd) {
        with_bool(s.centered, [&](auto centered) {
          with_bool(s.momentum, [&](auto mom) {
            f(TypeTag<math::RmspropRule<S, mx.value, wd.value, centered.value, mom.value>>{},
              TypeTag<S>{});
          });
        });
      });
    });
  });
}

template <class F>
void with_rule(const AdamStep& s, DType d, F&& f) {
  with_storage(d, [&](auto st) {
    using S = std::decay_t<decltype(st)>;  // decay: GCC sees a reference here
    with_bool(s.maximize, [&](auto mx) {
      with_weight_decay(s.weight_decay, [&](auto wd) {
        with_bool(s.amsgrad, [&](auto ams) {
          f(TypeTag<math::AdamRule<S, mx.value, wd.value, ams.value>>{}, TypeTag<S>{});
        });
      });
    });
  });
}

template <class F>
void with_rule(const LionStep& s, DType d, F&& f) {
  with_storage(d, [&](auto st) {
    using S = std::decay_t<decltype(st)>;  // decay: GCC sees a reference here
    with_bool(s.maximize, [&](auto mx) {
      with_decay_or_none<math::WeightDecay::kDecoupled>(s.weight_decay, [&](auto wd) {
        f(TypeTag<math::LionRule<S, mx.value, wd.value>>{}, TypeTag<S>{});
      });
    });
  });
}

}  // namespace
}  // namespace fusedopt
