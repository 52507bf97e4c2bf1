// The overlap rule of fusedopt/_arrays.py, shared by the CPU and CUDA modules' fast paths:
// no array the kernel writes may share a byte with any other array of the call. Two arrays
// that are only read (gradients) may share memory.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace fusedopt {

// Byte range [lo, hi) of one contiguous array; `index` names it to the caller.
struct ByteSpan {
  uintptr_t lo, hi;
  size_t index;
  bool written;
};

// The first pair of spans (by index, smaller first) that share bytes while at least one of
// them is written, or {-1, -1}. Sorts `spans`. One sweep: any span overlapping an earlier
// one overlaps the earlier span reaching furthest.
inline std::pair<int64_t, int64_t> first_overlap(std::vector<ByteSpan>& spans) {
  std::sort(spans.begin(), spans.end(), [](const ByteSpan& a, const ByteSpan& b) { return a.lo < b.lo; });
  const ByteSpan* reach = nullptr;
  for (const ByteSpan& s : spans) {
    if (reach != nullptr && s.lo < reach->hi && (s.written || reach->written))
      return {static_cast<int64_t>(std::min(reach->index, s.index)),
              static_cast<int64_t>(std::max(reach->index, s.index))};
    if (reach == nullptr || s.hi > reach->hi) reach = &s;
  }
  return {-1, -1};
}

}  // namespace fusedopt
