// The deterministic sum of squares behind the global gradient norm.
//
// The gradient of every tensor is cut into blocks of kNormBlock elements (the last block
// of a tensor may be short). Inside a block, element i goes to lane i % kNormLanes; each
// lane accumulates its elements in order, in double (a float32 square is exact in double;
// 16-bit gradients are squared as their float32 values). The 32 lanes are then combined
// by a fixed halving tree: lane[j] += lane[j + 16] for j < 16, then + 8, + 4, + 2, + 1,
// which is a warp's shuffle-down order on CUDA. The block sums are added one after another
// in call order (tensor by tensor, block by block).
// Nothing here depends on the thread count, the instruction set or the backend.
#pragma once

#include <cstdint>

#include "math/hd.h"
#include "math/storage.h"

namespace fusedopt {
namespace math {

constexpr int kNormLanes = 32;
constexpr int64_t kNormBlock = 65536;

template <class S>
FUSEDOPT_HD double square_as_double(S x) {
  const double d = static_cast<double>(widen(x));  // 16-bit storage: its float32 value
  return d * d;
}

// Combines lanes [0, n) of one block by the fixed halving tree (in place; returns lane[0]),
// the lanes from n on holding nothing (a block of fewer than kNormLanes elements): the
// tree's adds of those would add +0.0 to a sum of squares (never -0.0), which changes
// nothing, so they are left out.
FUSEDOPT_HD double combine_lanes(double* lane, int n) {
  if (n == 0) return 0.0;
  for (int width = kNormLanes / 2; width >= 1; width /= 2) {
    for (int j = 0; j + width < n; ++j) lane[j] = lane[j] + lane[j + width];
    if (n > width) n = width;
  }
  return lane[0];
}
FUSEDOPT_HD double combine_lanes(double* lane) { return combine_lanes(lane, kNormLanes); }

}  // namespace math
}  // namespace fusedopt
