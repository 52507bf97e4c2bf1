// The memory roof: the same loads and stores as a rule with N states, and one add each.
// Benchmarks report every kernel as a percentage of this loop's throughput, measured in
// the same run, so the figure says how much of the machine's bandwidth the rule leaves.
#pragma once

#include "math/hd.h"

namespace fusedopt {
namespace math {

template <class T, int N>
struct TrafficRule {
  using compute_t = T;
  static constexpr int kNumStates = N;

  FUSEDOPT_HD void operator()(T& p, T grad, T* state) const {
    p = p + grad;
    for (int k = 0; k < N; ++k) state[k] = state[k] + grad;
  }
};

}  // namespace math
}  // namespace fusedopt
