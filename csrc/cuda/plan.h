// Launch planning for the multi-tensor kernels: which tensors go into which launch, how each
// tensor is cut into chunks, and which chunk a block works on. Plain C++ with no CUDA
// headers, so the same code runs in the kernels and in the CPU unit tests
// (tests/test_cuda_plan.py), including tensors of more than 2^31 elements that are planned
// but never allocated.
//
// The scheme. A launch carries a table of up to `capacity` non-empty tensors in its kernel
// parameters (empty tensors never take a slot). Each tensor is cut into chunks; the chunks
// of a launch are numbered in slot order and chunk_start[s] is the first chunk of slot s.
// Block b of a grid of G blocks takes chunks b, b + G, b + 2G, ... (a persistent grid: G is
// at most what fits on the device at once), finds the slot of a chunk by binary search in
// chunk_start, and the chunk's element span by chunk_span(). All indices are 64-bit.
//
// Vector access. 16-byte loads and stores need every role of a tensor (param, grad, states)
// at the same offset from a 16-byte boundary. When they are, `head` is the number of
// elements before the first boundary; chunk 0 runs those as scalars, the chunks start on
// boundaries after it, and the last chunk runs its ragged end as scalars. A tensor whose
// roles sit at different offsets (head == kScalarOnly) runs entirely as scalars; so does
// everything of the norm, whose blocking is fixed by element index (math/sumsq.h).
#pragma once

#include <cstdint>
#include <vector>

#include "math/hd.h"

namespace fusedopt {
namespace cuda {

constexpr int kVectorBytes = 16;
constexpr int32_t kScalarOnly = -1;

// Elements per chunk of the update kernels: a multiple of every vector width (and of a
// block's pass, 2048 float32), small enough that a list of tensors of mixed sizes spreads
// evenly over a persistent grid, large enough that the per-chunk slot lookup is noise.
// A model of the 1,000-tensor benchmark list (bench/gpu_bench.py, 528 resident blocks)
// puts the busiest block at 0.88 of the average work with 16384, 0.94 with 8192.
constexpr int64_t kChunkElements = 8192;
// Chunk sizes must be multiples of this (a float32 block pass), so that every chunk after a
// tensor's head starts on a 16-byte boundary for every element size.
constexpr int64_t kChunkQuantum = 2048;

// The chunk size the update launches use: kChunkElements, unless set_chunk_elements() chose
// another for the process. That is for tuning on a GPU (fusedopt/bench/gpu.py sweeps it), not
// for users: results are the same bits for every chunk size, only the time differs.
int64_t chunk_elements();
// Sets it (a positive multiple of kChunkQuantum, else std::invalid_argument); returns the
// previous size. Launches already queued keep theirs.
int64_t set_chunk_elements(int64_t n);

// Kernel parameter space: 4 KiB before CUDA 12.1; 32764 bytes from 12.1 on Volta and newer
// (every architecture this module builds is Turing or newer). CMake sets the limit from the
// compiler version, the same for the host and the device compilations; the tables are
// sized to fit a little below it.
#ifndef FUSEDOPT_CUDA_PARAM_LIMIT
#define FUSEDOPT_CUDA_PARAM_LIMIT 4096
#endif
constexpr int kParamLimit = FUSEDOPT_CUDA_PARAM_LIMIT;
constexpr int kParamHeader = 256;  // coefficients, counts and pointers ahead of the table

// The slots one launch can hold, for kernels touching `n_roles` arrays per tensor.
constexpr int table_capacity(int n_roles, int param_limit = kParamLimit) {
  return (param_limit - kParamHeader - 8) / (8 * n_roles + 8 + 8 + 4 + 4);
}

// The tensor table of one launch; it lives in the kernel's parameters.
template <int kRoles, int kCap>
struct TensorTable {
  static constexpr int kCapacity = kCap;
  void* ptr[kRoles][kCap];       // role-major: param, grad, state 0..2
  int64_t size[kCap];            // elements
  int64_t chunk_start[kCap + 1];  // first chunk of each slot; [n_slots] = the launch's chunks
  int32_t head[kCap];            // scalar elements before the 16-byte boundary, or kScalarOnly
  int32_t tensor[kCap];          // the tensor's index in the call (stochastic rounding's key)
};

// One chunk's elements: [lo, vec_lo) scalar, [vec_lo, vec_hi) whole vectors, [vec_hi, hi)
// scalar.
struct ChunkSpan {
  int64_t lo, vec_lo, vec_hi, hi;
};

FUSEDOPT_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How many chunks a tensor of n elements is cut into.
FUSEDOPT_HD int64_t chunk_count(int64_t n, int32_t head, int64_t chunk) {
  if (n <= 0) return 0;
  if (head < 0) return ceil_div(n, chunk);
  if (n <= head) return 1;
  return ceil_div(n - head, chunk);
}

// The span of chunk k (0 <= k < chunk_count) of a tensor; vec is the elements per vector.
FUSEDOPT_HD ChunkSpan chunk_span(int64_t n, int32_t head, int64_t chunk, int vec, int64_t k) {
  ChunkSpan s;
  if (head < 0) {
    s.lo = k * chunk;
    s.hi = (s.lo + chunk < n) ? s.lo + chunk : n;
    s.vec_lo = s.vec_hi = s.hi;
    return s;
  }
  s.lo = (k == 0) ? 0 : head + k * chunk;
  const int64_t end = head + (k + 1) * chunk;
  s.hi = end < n ? end : n;
  s.vec_lo = (k == 0) ? (head < s.hi ? head : s.hi) : s.lo;
  s.vec_hi = s.vec_lo + (s.hi - s.vec_lo) / vec * vec;
  return s;
}

// The slot whose chunks contain `chunk`: the last s with chunk_start[s] <= chunk. Slots are
// never empty, so chunk_start is strictly increasing.
FUSEDOPT_HD int locate(const int64_t* chunk_start, int n_slots, int64_t chunk) {
  int lo = 0, hi = n_slots - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (chunk_start[mid] <= chunk) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// --- host side -----------------------------------------------------------------------------

// The common head of one tensor's roles: elements to the next 16-byte boundary, or
// kScalarOnly if the roles are at different offsets or not aligned to their element size.
int32_t vector_head(const uintptr_t* addresses, int n_roles, int itemsize);
// The same for roles of different element sizes and vectors of `vec` elements (vec *
// itemsizes[r] bytes of role r): elements to where every role is on such a boundary, or
// kScalarOnly if the roles never get there together.
int32_t mixed_vector_head(const uintptr_t* addresses, const int* itemsizes, int n_roles, int vec);

struct LaunchPlan {
  std::vector<int64_t> tensors;      // index in the call of each slot's tensor
  std::vector<int64_t> chunk_start;  // size tensors.size() + 1
  int64_t chunk_offset = 0;          // the call-wide index of this launch's chunk 0
  int64_t grid = 0;                  // blocks, at most max_grid (see plan_launches)

  int64_t n_chunks() const { return chunk_start.back(); }
};

// Packs the non-empty tensors, in call order, into as few launches of at most `capacity`
// slots as will do, and sizes each launch's grid. heads may be null (every tensor
// scalar-only, as for the norm).
std::vector<LaunchPlan> plan_launches(const int64_t* sizes, const int32_t* heads, int64_t n_tensors,
                                      int64_t chunk, int capacity, int64_t max_grid);

}  // namespace cuda
}  // namespace fusedopt
