// One fused call: many tensors, each with a parameter, a gradient and up to three state
// arrays of the same size. This is all the loop layer sees: pointers, sizes and a dtype.
// Every check on the arrays themselves happened in Python (fusedopt/_arrays.py).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace fusedopt {

enum Role : int { kParam = 0, kGrad = 1, kState0 = 2, kState1 = 3, kState2 = 4 };
constexpr int kMaxRoles = 5;
constexpr int kMaxStates = kMaxRoles - 2;

struct Batch {
  DType dtype = DType::kFloat32;
  int64_t n_tensors = 0;
  // offsets[t] is the first element of tensor t in the call's concatenated index space;
  // offsets[n_tensors] is the total. The driver splits that space into equal chunks.
  const int64_t* offsets = nullptr;
  // ptrs[role][t]: the data of tensor t for that role, or nullptr if the role is unused.
  void* const* ptrs[kMaxRoles] = {nullptr, nullptr, nullptr, nullptr, nullptr};

  int64_t total() const { return offsets[n_tensors]; }
  int64_t size(int64_t t) const { return offsets[t + 1] - offsets[t]; }
};

}  // namespace fusedopt
