// Compile-time switches shared by the rules. Runtime flags become these template
// arguments once per call (csrc/cpu/kernels_isa.cpp), so the element loop has no branches.
#pragma once

#include "math/hd.h"

namespace fusedopt {
namespace math {

enum class WeightDecay : int {
  kNone = 0,       // no weight decay
  kCoupled = 1,    // L2: g <- g + wd * p                 (torch SGD/Adagrad/RMSprop/Adam)
  kDecoupled = 2,  // p <- p * (1 - lr * wd) before the step  (AdamW; Keras-convention SGD)
};

enum class Momentum : int {
  kNone = 0,        // plain SGD
  kTorchFirst = 1,  // torch, first step: the buffer is set to the gradient
  kTorch = 2,       // torch: buf <- momentum * buf + (1 - dampening) * g; p -= lr * buf
  kKeras = 3,       // Keras/TF: v <- momentum * v - lr * g; p += v
};

// Applies decoupled weight decay to the parameter (a no-op unless kDecoupled).
template <WeightDecay kWd, class T>
FUSEDOPT_HD T decoupled_decay(T param, T decay_factor) {
  return (kWd == WeightDecay::kDecoupled) ? param * decay_factor : param;
}

}  // namespace math
}  // namespace fusedopt
