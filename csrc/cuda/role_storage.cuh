// A role's element read and written in its storage type, for the kernels that switch on
// each role's dtype per element instead of converting vectors (trust.cu, adafactor.cu):
// the branch is the same for every thread of a launch, so one variant of a rule serves
// every storage combination. T is the compute type (float64 params: every role float64).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/dtype.h"
#include "math/storage.h"

namespace fusedopt {
namespace cuda {

template <class T>
__device__ __forceinline__ T load_as(const void* base, DType d, int64_t i) {
  if constexpr (std::is_same<T, double>::value) {
    return static_cast<const double*>(base)[i];
  } else {
    const uint16_t* h = static_cast<const uint16_t*>(base);
    if (d == DType::kBFloat16) return math::bf16_to_float(h[i]);
    if (d == DType::kFloat16) return math::f16_to_float(h[i]);
    return static_cast<const float*>(base)[i];
  }
}

template <class T>
__device__ __forceinline__ void store_as(void* base, DType d, int64_t i, T x) {
  if constexpr (std::is_same<T, double>::value) {
    static_cast<double*>(base)[i] = x;
  } else {
    uint16_t* h = static_cast<uint16_t*>(base);
    if (d == DType::kBFloat16) h[i] = math::float_to_bf16(x);
    else if (d == DType::kFloat16) h[i] = math::float_to_f16(x);
    else static_cast<float*>(base)[i] = x;
  }
}

// Element i of role `role` of the call's tensor `tensor` written: to nearest, or
// stochastically where bit `role` of stochastic_roles is set, with the random bits of
// math/storage.h keyed by the call's rounding key (the CPU's bits).
template <class T>
__device__ __forceinline__ void store_rounded_as(void* base, DType d, int64_t i, T x, int role,
                                                 uint32_t stochastic_roles, const uint32_t* rounding_key,
                                                 int64_t tensor) {
  if constexpr (std::is_same<T, float>::value) {
    if (d != DType::kFloat32 && ((stochastic_roles >> role) & 1u) != 0) {
      const uint32_t tkey = math::tensor_key(rounding_key[1], tensor);
      const uint32_t random = math::random_bits(rounding_key[0], tkey, i, role);
      static_cast<uint16_t*>(base)[i] = d == DType::kBFloat16 ? math::float_to_bf16_stochastic(x, random)
                                                              : math::float_to_f16_stochastic(x, random);
      return;
    }
  }
  store_as<T>(base, d, i, x);
}

}  // namespace cuda
}  // namespace fusedopt
