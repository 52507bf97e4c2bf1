// How a CPU call's concatenated element range [0, total) is cut into per-thread ranges.
// One implementation, used by the driver and exposed to the tests (_core._plan_ranges),
// so the planner is checked at sizes past 2^31 without allocating anything.
#pragma once

#include <cstdint>

namespace fusedopt {
namespace cpu {

// Thread ranges start on multiples of this many elements, so two threads rarely write the
// same cache line (64 float64 or float32 elements cover at least one 64-byte line).
constexpr int64_t kRangeAlign = 64;

// First element of range `task` of `n_tasks` (total for task >= n_tasks). Ranges are
// contiguous, cover [0, total) exactly, and start on multiples of kRangeAlign. The product
// total * task is formed in 128 bits, so any int64 total is safe.
inline int64_t range_start(int64_t total, int task, int n_tasks) {
  if (task >= n_tasks) return total;
  const int64_t raw = static_cast<int64_t>((static_cast<__int128>(total) * task) / n_tasks);
  return raw - raw % kRangeAlign;
}

}  // namespace cpu
}  // namespace fusedopt
