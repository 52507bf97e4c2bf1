// The multi-tensor launcher: one kernel template that runs any rule of csrc/math/ over the
// tensors of a call, and the host code that plans and queues its launches.
//
// Per launch, the kernel parameters carry a table of tensors (pointers per role, sizes,
// chunk starts, vector heads; cuda/plan.h), up to ~32 KB of them where the runtime allows,
// so a list of a thousand tensors takes two launches instead of the fourteen a 4 KB table
// would need. The parameters are __grid_constant__: the table is read in place from the
// constant bank, never copied per thread.
//
// Per element the kernel does what the CPU loop does (csrc/cpu/kernels_isa.cpp): load,
// convert to the compute type, apply the rule, convert back, store. Only the access
// pattern differs: 16-byte loads and stores, kUnroll of them per role in flight before the
// first use, with the misaligned head and ragged tail of a tensor run as scalars.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "common/batch.h"
#include "common/flag_dispatch.h"
#include "common/steps.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/launch.cuh"
#include "cuda/plan.h"
#include "math/grad_multiplier.h"
#include "math/storage.h"

namespace fusedopt {
namespace cuda {

struct NoCoeffs {};  // the traffic rule has none

// kColumns: the table's pointers per tensor, kRoles or, for update_kernel_mixed, one more
// for the masters of master weights (common/batch.h: Master).
template <class C, int kRoles, int kColumns = kRoles>
struct UpdateParams {
  TensorTable<kColumns, table_capacity(kColumns)> table;
  C coeffs;
  const DeviceCoeffs<C>* device_coeffs;  // null: use `coeffs`
  double grad_multiplier;                 // Batch::grad_multiplier (math/grad_multiplier.h)
  uint32_t stochastic_roles;              // Batch::stochastic_roles and rounding_key
  uint32_t rounding_key[2];
  int64_t n_chunks;
  int64_t chunk;  // elements per chunk (cuda/plan.h: chunk_elements)
  int32_t n_slots;
  DType storage[kRoles];  // each role's storage (update_kernel_mixed only)
  Master master;          // Batch::master (update_kernel_mixed only): table.ptr[kRoles] holds them
};

template <class Rule, class C>
__device__ __forceinline__ Rule make_rule(const C& c) {
  if constexpr (std::is_same<C, NoCoeffs>::value) {
    return Rule{};
  } else {
    return Rule{cast_coeffs<typename Rule::compute_t>(c)};
  }
}

// The rule as the loops run it: gradients read through the call's multiplier.
template <class Rule>
using Multiplied = math::GradMultiplied<Rule>;

template <class Rule, class C, class Params>
__device__ __forceinline__ Multiplied<Rule> make_multiplied(const C& c, const Params& P) {
  using T = typename Rule::compute_t;
  return Multiplied<Rule>{make_rule<Rule>(c), static_cast<T>(P.grad_multiplier)};
}

// One element, in registers: x[0] param, x[1] grad, x[2..] states.
template <class Rule, class S, int kRoles>
__device__ __forceinline__ void apply_values(const Rule& rule, S (&x)[kRoles]) {
  using T = typename Rule::compute_t;
  constexpr int N = Rule::kNumStates;
  T p = static_cast<T>(x[0]);
  const T g = static_cast<T>(x[1]);
  T st[N > 0 ? N : 1];
#pragma unroll
  for (int k = 0; k < N; ++k) st[k] = static_cast<T>(x[2 + k]);
  rule(p, g, st);
  x[0] = static_cast<S>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) x[2 + k] = static_cast<S>(st[k]);
}

template <class Rule, class S, int kRoles>
__device__ __forceinline__ void apply_scalar(const Rule& rule, S* const (&ptr)[kRoles], int64_t i) {
  S x[kRoles];
#pragma unroll
  for (int r = 0; r < kRoles; ++r) x[r] = ptr[r][i];
  apply_values<Rule, S, kRoles>(rule, x);
  ptr[0][i] = x[0];
#pragma unroll
  for (int r = 2; r < kRoles; ++r) ptr[r][i] = x[r];  // the grad (role 1) is only read
}

template <class S>
__device__ __forceinline__ void load16(S* dst, const S* src) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  memcpy(dst, &raw, sizeof(raw));
}

template <class S>
__device__ __forceinline__ void store16(S* dst, const S* src) {
  uint4 raw;
  memcpy(&raw, src, sizeof(raw));
  *reinterpret_cast<uint4*>(dst) = raw;
}

template <class Rule, class S, class C, int kRoles>
__global__ void __launch_bounds__(kThreads)
    update_kernel(const __grid_constant__ UpdateParams<C, kRoles> P) {
  C c = P.coeffs;
  if (P.device_coeffs != nullptr) {
    if (P.device_coeffs->skip != 0.0) return;
    c = P.device_coeffs->c;
  }
  const Multiplied<Rule> rule = make_multiplied<Rule>(c, P);
  constexpr int V = kVectorBytes / sizeof(S);
  constexpr int64_t kStride = int64_t{kThreads} * V * kUnroll;  // elements per block pass

  for (int64_t chunk = blockIdx.x; chunk < P.n_chunks; chunk += gridDim.x) {
    const int slot = locate(P.table.chunk_start, P.n_slots, chunk);
    const ChunkSpan s = chunk_span(P.table.size[slot], P.table.head[slot], P.chunk, V,
                                   chunk - P.table.chunk_start[slot]);
    S* ptr[kRoles];
#pragma unroll
    for (int r = 0; r < kRoles; ++r) ptr[r] = static_cast<S*>(P.table.ptr[r][slot]);

    for (int64_t i = s.lo + threadIdx.x; i < s.vec_lo; i += kThreads) apply_scalar(rule, ptr, i);

    for (int64_t base = s.vec_lo + int64_t{threadIdx.x} * V; base < s.vec_hi; base += kStride) {
      S v[kUnroll][kRoles][V];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + int64_t{u} * kThreads * V;
        if (i < s.vec_hi) {
#pragma unroll
          for (int r = 0; r < kRoles; ++r) load16(v[u][r], ptr[r] + i);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + int64_t{u} * kThreads * V;
        if (i < s.vec_hi) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            S x[kRoles];
#pragma unroll
            for (int r = 0; r < kRoles; ++r) x[r] = v[u][r][j];
            apply_values<Multiplied<Rule>, S, kRoles>(rule, x);
#pragma unroll
            for (int r = 0; r < kRoles; ++r) v[u][r][j] = x[r];
          }
          store16(ptr[0] + i, v[u][0]);
#pragma unroll
          for (int r = 2; r < kRoles; ++r) store16(ptr[r] + i, v[u][r]);
        }
      }
    }

    for (int64_t i = s.vec_hi + threadIdx.x; i < s.hi; i += kThreads) apply_scalar(rule, ptr, i);
  }
}


// --- calls with 16-bit roles -----------------------------------------------------------------
// float32 arithmetic over roles stored in float32, bfloat16 or float16, each role's storage a
// kernel parameter: one kernel per rule variant, whatever the combination of storage types
// (the branches on it are uniform across the grid). Vectors of kMixedVector elements: 16
// bytes of a float32 role, 8 of a 16-bit one. Conversions are math/storage.h's, the CPU's bits.
constexpr int kMixedVector = 4;

__device__ __forceinline__ float load_float(DType d, const void* p, int64_t i) {
  if (d == DType::kBFloat16) return math::bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  if (d == DType::kFloat16) return math::f16_to_float(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store_float(DType d, void* p, int64_t i, float x) {
  if (d == DType::kBFloat16) static_cast<uint16_t*>(p)[i] = math::float_to_bf16(x);
  else if (d == DType::kFloat16) static_cast<uint16_t*>(p)[i] = math::float_to_f16(x);
  else static_cast<float*>(p)[i] = x;
}

// Element i of a written role of a tensor (tkey: its math::tensor_key), rounded as the
// call asks: stochastically for the roles it names (math/storage.h; the CPU's bits).
template <class Params>
__device__ __forceinline__ void store_rounded(const Params& P, int role, void* p, int64_t i, uint32_t tkey,
                                              float x) {
  const DType d = P.storage[role];
  if (d != DType::kFloat32 && ((P.stochastic_roles >> role) & 1u) != 0) {
    const uint32_t random = math::random_bits(P.rounding_key[0], tkey, i, role);
    static_cast<uint16_t*>(p)[i] = d == DType::kBFloat16 ? math::float_to_bf16_stochastic(x, random)
                                                         : math::float_to_f16_stochastic(x, random);
    return;
  }
  store_float(d, p, i, x);
}

__device__ __forceinline__ void load_vector(DType d, const void* p, int64_t i, float (&out)[kMixedVector]) {
  if (d == DType::kFloat32) {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const float*>(p) + i);
    memcpy(out, &raw, sizeof(raw));
    return;
  }
  const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p) + i);
  uint16_t h[kMixedVector];
  memcpy(h, &raw, sizeof(raw));
#pragma unroll
  for (int j = 0; j < kMixedVector; ++j)
    out[j] = d == DType::kBFloat16 ? math::bf16_to_float(h[j]) : math::f16_to_float(h[j]);
}

__device__ __forceinline__ void store_vector(DType d, void* p, int64_t i, const float (&in)[kMixedVector]) {
  if (d == DType::kFloat32) {
    uint4 raw;
    memcpy(&raw, in, sizeof(raw));
    *reinterpret_cast<uint4*>(static_cast<float*>(p) + i) = raw;
    return;
  }
  uint16_t h[kMixedVector];
#pragma unroll
  for (int j = 0; j < kMixedVector; ++j)
    h[j] = d == DType::kBFloat16 ? math::float_to_bf16(in[j]) : math::float_to_f16(in[j]);
  uint2 raw;
  memcpy(&raw, h, sizeof(raw));
  *reinterpret_cast<uint2*>(static_cast<uint16_t*>(p) + i) = raw;
}

// The params' value with master weights: the float32 master, or the master joined from the
// bfloat16 param and its remainder (math/storage.h); and its store: the master, and the
// param rounded from it as the call rounds params, or the two halves split back.
__device__ __forceinline__ float load_master(Master form, const void* param, const void* master, int64_t i) {
  if (form == Master::kFloat32) return static_cast<const float*>(master)[i];
  return math::join_master(static_cast<const uint16_t*>(param)[i], static_cast<const uint16_t*>(master)[i]);
}

template <class Params>
__device__ __forceinline__ void store_master(const Params& P, void* param, void* master, int64_t i,
                                             uint32_t tkey, float x) {
  if (P.master == Master::kFloat32) {
    static_cast<float*>(master)[i] = x;
    store_rounded(P, 0, param, i, tkey, x);
    return;
  }
  math::split_master(x, static_cast<uint16_t*>(param)[i], static_cast<uint16_t*>(master)[i]);
}

template <class Rule, class C, int kRoles, int kColumns>
__device__ __forceinline__ void apply_mixed_scalar(const Rule& rule, const UpdateParams<C, kRoles, kColumns>& P,
                                                   void* const (&ptr)[kColumns], int64_t i, uint32_t tkey) {
  float x[kRoles];
#pragma unroll
  for (int r = 0; r < kRoles; ++r) x[r] = load_float(P.storage[r], ptr[r], i);
  if (P.master != Master::kNone) x[0] = load_master(P.master, ptr[0], ptr[kRoles], i);
  apply_values<Rule, float, kRoles>(rule, x);
  if (P.master != Master::kNone) store_master(P, ptr[0], ptr[kRoles], i, tkey, x[0]);
  else store_rounded(P, 0, ptr[0], i, tkey, x[0]);
#pragma unroll
  for (int r = 2; r < kRoles; ++r) store_rounded(P, r, ptr[r], i, tkey, x[r]);
}

template <class Rule, class C, int kRoles>
__global__ void __launch_bounds__(kThreads)
    update_kernel_mixed(const __grid_constant__ UpdateParams<C, kRoles, kRoles + 1> P) {
  C c = P.coeffs;
  if (P.device_coeffs != nullptr) {
    if (P.device_coeffs->skip != 0.0) return;
    c = P.device_coeffs->c;
  }
  const Multiplied<Rule> rule = make_multiplied<Rule>(c, P);
  constexpr int V = kMixedVector;
  constexpr int64_t kStride = int64_t{kThreads} * V * kUnroll;

  for (int64_t chunk = blockIdx.x; chunk < P.n_chunks; chunk += gridDim.x) {
    const int slot = locate(P.table.chunk_start, P.n_slots, chunk);
    const ChunkSpan s = chunk_span(P.table.size[slot], P.table.head[slot], P.chunk, V,
                                   chunk - P.table.chunk_start[slot]);
    void* ptr[kRoles + 1];
#pragma unroll
    for (int r = 0; r < kRoles; ++r) ptr[r] = P.table.ptr[r][slot];
    // The masters' column is read only where the call has masters: the vector loop below
    // keeps the registers it had without them.
    ptr[kRoles] = nullptr;

    const uint32_t tkey = math::tensor_key(P.rounding_key[1], P.table.tensor[slot]);
    if (P.stochastic_roles != 0 || P.master != Master::kNone) {
      if (P.master != Master::kNone) ptr[kRoles] = P.table.ptr[kRoles][slot];
      // Stochastic rounding hashes each element's position, and masters are a role of
      // their own: element by element (still coalesced across the block), which keeps the
      // vector loop's registers as they were.
      for (int64_t i = s.lo + threadIdx.x; i < s.hi; i += kThreads) apply_mixed_scalar(rule, P, ptr, i, tkey);
      continue;
    }
    for (int64_t i = s.lo + threadIdx.x; i < s.vec_lo; i += kThreads) apply_mixed_scalar(rule, P, ptr, i, tkey);

    for (int64_t base = s.vec_lo + int64_t{threadIdx.x} * V; base < s.vec_hi; base += kStride) {
      float v[kUnroll][kRoles][V];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + int64_t{u} * kThreads * V;
        if (i < s.vec_hi) {
#pragma unroll
          for (int r = 0; r < kRoles; ++r) load_vector(P.storage[r], ptr[r], i, v[u][r]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + int64_t{u} * kThreads * V;
        if (i < s.vec_hi) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            float x[kRoles];
#pragma unroll
            for (int r = 0; r < kRoles; ++r) x[r] = v[u][r][j];
            apply_values<Multiplied<Rule>, float, kRoles>(rule, x);
#pragma unroll
            for (int r = 0; r < kRoles; ++r) v[u][r][j] = x[r];
          }
          store_vector(P.storage[0], ptr[0], i, v[u][0]);
#pragma unroll
          for (int r = 2; r < kRoles; ++r) store_vector(P.storage[r], ptr[r], i, v[u][r]);
        }
      }
    }

    for (int64_t i = s.vec_hi + threadIdx.x; i < s.hi; i += kThreads) apply_mixed_scalar(rule, P, ptr, i, tkey);
  }
}

// The launch-time half: plan the call and queue one launch per table of tensors. S is the
// storage of every role, or void for a call with 16-bit roles (update_kernel_mixed).
template <class Rule, class S, class C>
void launch_update(const C& coeffs, const void* device_coeffs, const Batch& b, cudaStream_t stream) {
  constexpr bool kMixed = std::is_void<S>::value;
  constexpr int kRoles = 2 + Rule::kNumStates;
  constexpr int kColumns = kMixed ? kRoles + 1 : kRoles;  // the mixed kernel's: the masters too
  using Params = UpdateParams<C, kRoles, kColumns>;
  static_assert(sizeof(Params) <= kParamLimit, "kernel parameters exceed the parameter space");
  constexpr int kCap = decltype(Params::table)::kCapacity;
  for (int r = 0; r < kRoles; ++r)
    if (b.ptrs[r] == nullptr) throw std::invalid_argument("the rule needs more state arrays");

  const int64_t n = b.n_tensors;
  std::vector<int64_t> sizes(static_cast<size_t>(n));
  std::vector<int32_t> heads(static_cast<size_t>(n));
  int itemsizes[kRoles];
  for (int r = 0; r < kRoles; ++r) itemsizes[r] = itemsize_of(static_cast<int>(b.dtypes[r]));
  for (int64_t t = 0; t < n; ++t) {
    uintptr_t addresses[kRoles];
    for (int r = 0; r < kRoles; ++r) addresses[r] = reinterpret_cast<uintptr_t>(b.ptrs[r][t]);
    sizes[t] = b.size(t);
    if constexpr (kMixed) heads[t] = mixed_vector_head(addresses, itemsizes, kRoles, kMixedVector);
    else heads[t] = vector_head(addresses, kRoles, sizeof(S));
  }
  void (*kernel)(Params) = nullptr;
  if constexpr (kMixed) kernel = update_kernel_mixed<Rule, C, kRoles>;
  else kernel = update_kernel<Rule, S, C, kRoles>;
  const int64_t chunk = chunk_elements();
  const auto plans = plan_launches(sizes.data(), heads.data(), n, chunk, kCap,
                                   max_resident_blocks(reinterpret_cast<const void*>(kernel), kThreads));
  if (plans.empty()) return;
  Params params{};
  params.coeffs = coeffs;
  params.device_coeffs = static_cast<const DeviceCoeffs<C>*>(device_coeffs);
  params.grad_multiplier = b.grad_multiplier;
  params.stochastic_roles = b.stochastic_roles;
  params.rounding_key[0] = b.rounding_key[0];
  params.rounding_key[1] = b.rounding_key[1];
  params.chunk = chunk;
  for (int r = 0; r < kRoles; ++r) params.storage[r] = b.dtypes[r];
  params.master = b.master;
  for (const LaunchPlan& plan : plans) {
    const int slots = static_cast<int>(plan.tensors.size());
    params.n_slots = slots;
    params.n_chunks = plan.n_chunks();
    for (int s = 0; s < slots; ++s) {
      const int64_t t = plan.tensors[s];
      for (int r = 0; r < kRoles; ++r) params.table.ptr[r][s] = b.ptrs[r][t];
      if constexpr (kMixed) params.table.ptr[kRoles][s] = b.master == Master::kNone ? nullptr : b.masters[t];
      params.table.size[s] = sizes[t];
      params.table.tensor[s] = static_cast<int32_t>(t);
      params.table.head[s] = heads[t];
      params.table.chunk_start[s] = plan.chunk_start[s];
    }
    params.table.chunk_start[slots] = plan.chunk_start[slots];
    launch_kernel(kernel, plan.grid, kThreads, stream, "launching an update kernel", params);
  }
}

// One rule's entry point: the step's flags pick the rule variant (common/flag_dispatch.h,
// shared with the CPU loop). Each rule lives in a .cu file of its own only so that nvcc
// compiles the rules' variants in parallel.
template <class Step>
void launch_step(const Step& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {
  with_rule(s, b.compute_dtype(), [&](auto rule, auto compute) {
    using Rule = typename decltype(rule)::type;
    using T = typename decltype(compute)::type;
    if (b.stored_as_computed()) launch_update<Rule, T>(s.c, device_coeffs, b, stream);
    else if constexpr (std::is_same<T, float>::value)
      launch_update<Rule, void>(s.c, device_coeffs, b, stream);
  });
}

template <int kRoles, class C>
constexpr int params_bytes() {
  return static_cast<int>(sizeof(UpdateParams<C, kRoles>));
}

}  // namespace cuda
}  // namespace fusedopt
