// The trust-ratio rules on the device (math/lamb.h), with the CPU's bits.
//
// Pass 1 is the norm's kernel (norm.cu) with the rule inside: one warp per norm block of
// math::kNormBlock elements, lane j updating the states of elements j, j+32, ... of the
// block in order and adding their p^2 and u^2 in double, then the lanes combined by
// math::combine_lanes. One thread per tensor then adds its block sums in order and computes
// its factor (the rule's tensor_factor, in double), and pass 2 runs the elements of each
// block with that factor. A tensor never spans two launches (cuda/plan.h), so each launch's
// three kernels run its tensors from start to end.
//
// Storage: each role is read and written through a switch on its dtype, the same for every
// thread of a launch, so one variant of the rule serves every storage combination.
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/flag_dispatch.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/launch.cuh"
#include "cuda/plan.h"
#include "cuda/role_storage.cuh"
#include "math/storage.h"
#include "math/sumsq.h"

namespace fusedopt {
namespace cuda {
namespace {

constexpr int kWarps = kThreads / 32;

template <class Rule, class C>
struct TrustParams {
  static constexpr int kRoles = 2 + Rule::kNumStates;
  // The roles' pointers, then the masters of master weights (common/batch.h: Master).
  TensorTable<kRoles + 1, table_capacity(kRoles + 1)> table;
  Master master;
  C c;                   // the step's coefficients, in double
  DType dtypes[kRoles];  // param, grad, states
  double grad_multiplier;     // Batch::grad_multiplier (math/grad_multiplier.h)
  uint32_t stochastic_roles;  // Batch::stochastic_roles and rounding_key (math/storage.h)
  uint32_t rounding_key[2];
  double* partials;      // 2 per norm block of the call: sum p^2, sum u^2
  double* factors;       // per norm block of the call; the tensor's, at its first block
  int64_t chunk_offset;  // call-wide index of this launch's block 0
  int64_t n_chunks;
  int32_t n_slots;
};

// Element i of role r of the tensor in `slot` written: to nearest, or stochastically where
// the call asks (the CPU's bits).
template <class T, class P>
__device__ __forceinline__ void store_role(const P& params, int r, int slot, int64_t i, T x) {
  store_rounded_as<T>(params.table.ptr[r][slot], params.dtypes[r], i, x, r, params.stochastic_roles,
                      params.rounding_key, params.table.tensor[slot]);
}

// The param's value of element i: with master weights the float32 master, or the master
// joined from the bfloat16 param and its remainder (math/storage.h).
template <class T, class P>
__device__ __forceinline__ T param_value(const P& params, int slot, int64_t i) {
  const void* master = params.table.ptr[P::kRoles][slot];
  if constexpr (std::is_same<T, float>::value) {
    if (params.master == Master::kFloat32) return static_cast<const float*>(master)[i];
    if (params.master == Master::kRemainder)
      return math::join_master(static_cast<const uint16_t*>(params.table.ptr[kParam][slot])[i],
                               static_cast<const uint16_t*>(master)[i]);
  }
  return load_as<T>(params.table.ptr[kParam][slot], params.dtypes[kParam], i);
}

// Writes the param's new value: to the master and the param rounded from it, or split
// into param and remainder, with master weights; else to the param as stored.
template <class T, class P>
__device__ __forceinline__ void store_param(const P& params, int slot, int64_t i, T x) {
  void* master = params.table.ptr[P::kRoles][slot];
  if constexpr (std::is_same<T, float>::value) {
    if (params.master == Master::kFloat32) static_cast<float*>(master)[i] = x;
    if (params.master == Master::kRemainder)
      return math::split_master(x, static_cast<uint16_t*>(params.table.ptr[kParam][slot])[i],
                                static_cast<uint16_t*>(master)[i]);
  }
  store_role<T>(params, kParam, slot, i, x);
}

// Norm block c of the launch: its slot, first element and length.
template <class P>
__device__ __forceinline__ int64_t block_span(const P& params, int64_t c, int& slot, int64_t& len) {
  slot = locate(params.table.chunk_start, params.n_slots, c);
  const int64_t lo = (c - params.table.chunk_start[slot]) * math::kNormBlock;
  const int64_t left = params.table.size[slot] - lo;
  len = left < math::kNormBlock ? left : math::kNormBlock;
  return lo;
}

template <class Rule, class C>
__global__ void __launch_bounds__(kThreads)
    trust_pass1_kernel(const __grid_constant__ TrustParams<Rule, C> P) {
  using T = typename Rule::compute_t;
  constexpr int N = Rule::kNumStates;
  __shared__ double p_lanes[kWarps][math::kNormLanes];
  __shared__ double u_lanes[kWarps][math::kNormLanes];
  const Rule rule{cast_coeffs<T>(P.c)};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t c = int64_t{blockIdx.x} * kWarps + warp; c < P.n_chunks; c += int64_t{gridDim.x} * kWarps) {
    int slot;
    int64_t len;
    const int64_t lo = block_span(P, c, slot, len);
    double p_acc = 0.0, u_acc = 0.0;
    for (int64_t i = lo + lane; i < lo + len; i += 32) {
      const T p = param_value<T>(P, slot, i);
      const T g = load_as<T>(P.table.ptr[kGrad][slot], P.dtypes[kGrad], i) * static_cast<T>(P.grad_multiplier);
      T st[N];
      for (int j = 0; j < N; ++j)
        st[j] = load_as<T>(P.table.ptr[kState0 + j][slot], P.dtypes[kState0 + j], i);
      rule.moments(g, st);
      for (int j = 0; j < N; ++j) {
        store_role<T>(P, kState0 + j, slot, i, st[j]);
        st[j] = load_as<T>(P.table.ptr[kState0 + j][slot], P.dtypes[kState0 + j], i);  // as pass 2 will
      }
      const T u = rule.direction(p, st);
      p_acc = p_acc + math::square_as_double(p);
      u_acc = u_acc + math::square_as_double(u);
    }
    p_lanes[warp][lane] = p_acc;
    u_lanes[warp][lane] = u_acc;
    __syncwarp();
    if (lane == 0) {
      P.partials[2 * (P.chunk_offset + c)] = math::combine_lanes(p_lanes[warp]);
      P.partials[2 * (P.chunk_offset + c) + 1] = math::combine_lanes(u_lanes[warp]);
    }
    __syncwarp();
  }
}

// One thread per tensor of the launch: its block sums in order, then its factor.
template <class Rule, class C>
__global__ void __launch_bounds__(kThreads)
    trust_factor_kernel(const __grid_constant__ TrustParams<Rule, C> P) {
  for (int64_t s = int64_t{blockIdx.x} * kThreads + threadIdx.x; s < P.n_slots;
       s += int64_t{gridDim.x} * kThreads) {
    double p_sq = 0.0, u_sq = 0.0;
    for (int64_t k = P.table.chunk_start[s]; k < P.table.chunk_start[s + 1]; ++k) {
      p_sq = p_sq + P.partials[2 * (P.chunk_offset + k)];
      u_sq = u_sq + P.partials[2 * (P.chunk_offset + k) + 1];
    }
    P.factors[P.chunk_offset + P.table.chunk_start[s]] = Rule::tensor_factor(P.c, p_sq, u_sq);
  }
}

template <class Rule, class C>
__global__ void __launch_bounds__(kThreads)
    trust_pass2_kernel(const __grid_constant__ TrustParams<Rule, C> P) {
  using T = typename Rule::compute_t;
  constexpr int N = Rule::kNumStates;
  const Rule rule{cast_coeffs<T>(P.c)};
  for (int64_t c = blockIdx.x; c < P.n_chunks; c += gridDim.x) {
    int slot;
    int64_t len;
    const int64_t lo = block_span(P, c, slot, len);
    const T factor = static_cast<T>(P.factors[P.chunk_offset + P.table.chunk_start[slot]]);
    for (int64_t i = lo + threadIdx.x; i < lo + len; i += kThreads) {
      T p = param_value<T>(P, slot, i);
      T st[N];
      for (int j = 0; j < N; ++j)
        st[j] = load_as<T>(P.table.ptr[kState0 + j][slot], P.dtypes[kState0 + j], i);
      p = p - factor * rule.direction(p, st);
      store_param<T>(P, slot, i, p);
    }
  }
}

template <class Rule, class Step>
void launch_trust(const Step& s, const Batch& b, cudaStream_t stream) {
  using Params = TrustParams<Rule, decltype(s.c)>;
  constexpr int R = Params::kRoles;
  static_assert(sizeof(Params) <= kParamLimit, "kernel parameters exceed the parameter space");
  std::vector<int64_t> sizes(static_cast<size_t>(b.n_tensors));
  int64_t n_blocks = 0;
  for (int64_t t = 0; t < b.n_tensors; ++t) {
    sizes[t] = b.size(t);
    n_blocks += chunk_count(sizes[t], kScalarOnly, math::kNormBlock);
  }
  if (n_blocks == 0) return;
  StreamScratch scratch(static_cast<size_t>(3 * n_blocks) * sizeof(double), stream);
  const auto pass1 = trust_pass1_kernel<Rule, decltype(s.c)>;
  const long long max_grid = max_resident_blocks(reinterpret_cast<const void*>(pass1), kThreads);
  const auto plans = plan_launches(sizes.data(), nullptr, b.n_tensors, math::kNormBlock, table_capacity(R + 1),
                                   max_grid * kWarps);
  auto params = std::make_unique<Params>();  // tens of KiB: not on the stack
  params->c = s.c;
  for (int r = 0; r < R; ++r) params->dtypes[r] = b.dtypes[r];
  params->master = b.master;
  params->grad_multiplier = b.grad_multiplier;
  params->stochastic_roles = b.stochastic_roles;
  params->rounding_key[0] = b.rounding_key[0];
  params->rounding_key[1] = b.rounding_key[1];
  params->partials = static_cast<double*>(scratch.get());
  params->factors = params->partials + 2 * n_blocks;
  for (const LaunchPlan& plan : plans) {
    const int slots = static_cast<int>(plan.tensors.size());
    params->n_slots = slots;
    params->n_chunks = plan.n_chunks();
    params->chunk_offset = plan.chunk_offset;
    for (int k = 0; k < slots; ++k) {
      const int64_t t = plan.tensors[k];
      for (int r = 0; r < R; ++r) params->table.ptr[r][k] = b.ptrs[r][t];
      params->table.ptr[R][k] = b.master == Master::kNone ? nullptr : b.masters[t];
      params->table.size[k] = sizes[t];
      params->table.tensor[k] = static_cast<int32_t>(t);
      params->table.head[k] = kScalarOnly;
      params->table.chunk_start[k] = plan.chunk_start[k];
    }
    params->table.chunk_start[slots] = plan.chunk_start[slots];
    launch_kernel(pass1, ceil_div(plan.grid, kWarps), kThreads, stream, "launching a trust-ratio pass 1",
                  *params);
    launch_kernel(trust_factor_kernel<Rule, decltype(s.c)>, ceil_div(slots, kThreads), kThreads, stream,
                  "launching a trust-ratio factor", *params);
    launch_kernel(trust_pass2_kernel<Rule, decltype(s.c)>, plan.grid, kThreads, stream,
                  "launching a trust-ratio pass 2", *params);
  }
}

}  // namespace

#define FUSEDOPT_DEFINE_TRUST_UPDATE(Step, ...)                                                    \
  void update(const Step& s, const Batch& b, cudaStream_t stream, const void* device_coeffs) {    \
    if (device_coeffs != nullptr)                                                                 \
      throw std::invalid_argument(std::string(Step::kName) +                                      \
                                  ": coefficients from the device (capturable) are not supported"); \
    with_rule(s, b.compute_dtype(),                                                               \
              [&](auto rule, auto) { launch_trust<typename decltype(rule)::type>(s, b, stream); }); \
  }
FUSEDOPT_FOR_EACH_TRUST_STEP(FUSEDOPT_DEFINE_TRUST_UPDATE)
#undef FUSEDOPT_DEFINE_TRUST_UPDATE

}  // namespace cuda
}  // namespace fusedopt
