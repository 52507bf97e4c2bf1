#include "cuda/plan.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

namespace fusedopt {
namespace cuda {
namespace {
std::atomic<int64_t> g_chunk_elements{kChunkElements};
}  // namespace

int64_t chunk_elements() { return g_chunk_elements.load(std::memory_order_relaxed); }

int64_t set_chunk_elements(int64_t n) {
  if (n <= 0 || n % kChunkQuantum != 0)
    throw std::invalid_argument("chunk size must be a positive multiple of " +
                                std::to_string(kChunkQuantum) + ", got " + std::to_string(n));
  return g_chunk_elements.exchange(n);
}

int32_t vector_head(const uintptr_t* addresses, int n_roles, int itemsize) {
  if (itemsize <= 0 || kVectorBytes % itemsize != 0) return kScalarOnly;
  const uintptr_t offset = addresses[0] % kVectorBytes;
  for (int r = 1; r < n_roles; ++r)
    if (addresses[r] % kVectorBytes != offset) return kScalarOnly;
  // An address that is not a multiple of the element size never reaches a boundary by
  // whole elements (possible only for hand-made pointers; arrays are element-aligned).
  if (offset % static_cast<uintptr_t>(itemsize) != 0) return kScalarOnly;
  return static_cast<int32_t>(((kVectorBytes - offset) % kVectorBytes) / itemsize);
}

int32_t mixed_vector_head(const uintptr_t* addresses, const int* itemsizes, int n_roles, int vec) {
  int32_t head = kScalarOnly;
  for (int r = 0; r < n_roles; ++r) {
    const auto size = static_cast<uintptr_t>(itemsizes[r]);
    if (size == 0 || addresses[r] % size != 0) return kScalarOnly;
    const auto v = static_cast<uintptr_t>(vec);
    const auto h = static_cast<int32_t>((v - (addresses[r] / size) % v) % v);
    if (r > 0 && h != head) return kScalarOnly;
    head = h;
  }
  return head;
}

std::vector<LaunchPlan> plan_launches(const int64_t* sizes, const int32_t* heads, int64_t n_tensors,
                                      int64_t chunk, int capacity, int64_t max_grid) {
  if (chunk <= 0 || capacity <= 0 || max_grid <= 0)
    throw std::invalid_argument("plan_launches: chunk, capacity and max_grid must be positive");
  std::vector<int64_t> chunks(static_cast<size_t>(n_tensors));
  int64_t nonempty = 0;
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (sizes[t] < 0) throw std::invalid_argument("plan_launches: negative tensor size");
    chunks[t] = chunk_count(sizes[t], heads ? heads[t] : kScalarOnly, chunk);
    nonempty += chunks[t] > 0;
  }
  // The tensors are shared out evenly between the launches the capacity forces, rather than
  // filling all but the last: a nearly empty last launch would be all tail.
  const int64_t n_launches = ceil_div(nonempty, capacity);
  const int64_t per_launch = n_launches ? ceil_div(nonempty, n_launches) : 0;
  std::vector<LaunchPlan> plans;
  int64_t chunks_before = 0;  // chunks of the call in earlier launches
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (chunks[t] == 0) continue;  // empty tensors take no slot
    if (plans.empty() || static_cast<int64_t>(plans.back().tensors.size()) == per_launch) {
      if (!plans.empty()) chunks_before += plans.back().n_chunks();
      plans.emplace_back();
      plans.back().chunk_offset = chunks_before;
      plans.back().chunk_start.push_back(0);
    }
    LaunchPlan& p = plans.back();
    p.tensors.push_back(t);
    p.chunk_start.push_back(p.chunk_start.back() + chunks[t]);
  }
  // As many rounds of the grid-stride loop as max_grid blocks need, and then the fewest
  // blocks that still take that many rounds: every block gets the same number of chunks
  // (give or take one chunk of the last round), so no few blocks run a round alone at the end.
  for (LaunchPlan& p : plans) {
    const int64_t rounds = ceil_div(p.n_chunks(), max_grid);
    p.grid = ceil_div(p.n_chunks(), rounds);
  }
  return plans;
}

}  // namespace cuda
}  // namespace fusedopt
