// One fused call: many tensors, each with a parameter, a gradient and up to three state
// arrays of the same size. This is all the loop layer sees: pointers, sizes and the storage
// dtype of each role. Every check on the arrays themselves happened in the reader
// (bindings/reader.cpp), which also decides which dtype combinations a call may have.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace fusedopt {

enum Role : int { kParam = 0, kGrad = 1, kState0 = 2, kState1 = 3, kState2 = 4 };
constexpr int kMaxRoles = 5;
constexpr int kMaxStates = kMaxRoles - 2;

// Master weights of 16-bit params. kFloat32: a float32 array per param holds the value the
// rule reads and writes, and the param is written rounded from it (as the call rounds the
// params: to nearest even or stochastically). kRemainder (bfloat16 params): an int16 array
// per param holds the low 16 bits of a float32 master whose high half, rounded up where bit
// 15 of the low half is set, is the param (math/storage.h: split_master); the pair is the
// exact master.
enum class Master : int32_t { kNone = 0, kFloat32 = 1, kRemainder = 2 };

struct Batch {
  // The storage of each role (unused roles: the params'). Arithmetic is float64 where the
  // params are float64 (then every role is) and float32 otherwise, whatever the storage.
  DType dtypes[kMaxRoles] = {DType::kFloat32, DType::kFloat32, DType::kFloat32, DType::kFloat32,
                             DType::kFloat32};
  int64_t n_tensors = 0;
  // offsets[t] is the first element of tensor t in the call's concatenated index space;
  // offsets[n_tensors] is the total. The driver splits that space into equal chunks.
  const int64_t* offsets = nullptr;
  // ptrs[role][t]: the data of tensor t for that role, or nullptr if the role is unused.
  void* const* ptrs[kMaxRoles] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  // Every gradient is read multiplied by this, rounded to the compute type: 1 / loss scale
  // times the clipping coefficient (math/grad_multiplier.h). Gradients are never written.
  double grad_multiplier = 1.0;
  // Stochastic rounding (math/storage.h): bit r set rounds role r's 16-bit stores so, with
  // random bits keyed by rounding_key (the call's seed and step) and each element's position
  // in the call; every other store rounds to nearest even.
  uint32_t stochastic_roles = 0;
  uint32_t rounding_key[2] = {0, 0};
  // Factored rules only (common/steps.h: FUSEDOPT_FOR_EACH_FACTORED_STEP): per tensor t,
  // factor_dims[2t] is its rows (second-to-last dim) and factor_dims[2t+1] its columns
  // (last dim), both 0 for a tensor of fewer than two dims. A state a tensor does not keep
  // has a null pointer in ptrs.
  const int64_t* factor_dims = nullptr;
  // Master weights (Master above): masters[t] is tensor t's float32 master or int16
  // remainder; null when master is kNone.
  Master master = Master::kNone;
  void* const* masters = nullptr;

  int64_t total() const { return offsets[n_tensors]; }
  int64_t size(int64_t t) const { return offsets[t + 1] - offsets[t]; }
  DType compute_dtype() const {
    return dtypes[kParam] == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  }
  // Every role stored in the compute type: the loops run on the arrays themselves, with no
  // conversion (the float32 and float64 calls of before mixed precision).
  bool stored_as_computed() const {
    if (master != Master::kNone) return false;
    for (DType d : dtypes)
      if (d != compute_dtype()) return false;
    return true;
  }
};

}  // namespace fusedopt
