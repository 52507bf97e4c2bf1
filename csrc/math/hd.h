// FUSEDOPT_HD marks the update rules as host+device code, the way CUTLASS marks its own.
//
// On the host the rules are also forced inline. That is not only for speed: the CPU loop
// is compiled once per instruction set (csrc/cpu/kernels_isa.cpp), and an out-of-line copy
// of a rule would be one weak symbol shared by all those builds, so the linker could hand
// the AVX-512 copy to the baseline loop. Inlined, every build carries its own code.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FUSEDOPT_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define FUSEDOPT_HD inline __attribute__((always_inline))
#else
#define FUSEDOPT_HD inline
#endif

namespace fusedopt {
namespace math {

// IEEE square root, correctly rounded on every backend (the build forbids fast-math).
FUSEDOPT_HD float sqrt_ieee(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_sqrtf(x);
#else
  return std::sqrt(x);
#endif
}
FUSEDOPT_HD double sqrt_ieee(double x) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(x);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// IEEE division, spelled out so nvcc never picks an approximate one.
FUSEDOPT_HD float div_ieee(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
FUSEDOPT_HD double div_ieee(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// max that propagates NaN from either side, as torch.maximum and numpy.maximum do
// (std::max and fmax drop it, which would hide a NaN in the AMSGrad buffer).
template <class T>
FUSEDOPT_HD T max_propagate_nan(T a, T b) {
  return (a != a) ? a : ((a > b) ? a : b);
}

// copysign, without a call (a libm or std:: one would be a weak symbol; see above).
FUSEDOPT_HD float copysign_hd(float mag, float sgn) {
#if defined(__CUDA_ARCH__)
  return copysignf(mag, sgn);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_copysignf(mag, sgn);
#else
  return std::copysign(mag, sgn);
#endif
}
FUSEDOPT_HD double copysign_hd(double mag, double sgn) {
#if defined(__CUDA_ARCH__)
  return copysign(mag, sgn);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_copysign(mag, sgn);
#else
  return std::copysign(mag, sgn);
#endif
}

// sign that keeps zeros and NaN: -1 below zero, 1 above, x itself for +0, -0 and NaN, the
// values of (x > 0) ? 1 : ((x < 0) ? -1 : x). Written as one comparison, a copysign and
// one select: GCC 12 vectorizes this for SSE2 and AVX2, where it left that nested select
// as branches per element (Lion in cache ran at a twentieth of Adagrad's speed), and the
// vector body and the scalar tail compile the same expression.
template <class T>
FUSEDOPT_HD T sign_keep_zero(T x) {
  const T magnitude = (x > T(0) || x < T(0)) ? T(1) : T(0);  // 0 for +-0 and NaN
  return (x != x) ? x : copysign_hd(magnitude, x);
}

}  // namespace math
}  // namespace fusedopt

// A rule's per-step numbers are listed once, as an X-macro in its header
// (FUSEDOPT_ADAM_COEFFS, ...): the struct's members, their rounding to the compute type,
// the bindings' reading of Python's coefficient objects and the field names Python builds
// them with all follow from it.
#define FUSEDOPT_COEFF_MEMBER(name) T name;
#define FUSEDOPT_COEFF_CAST(name) out.name = U(name);
#define FUSEDOPT_DEFINE_COEFFS(Name, LIST)      \
  template <class T>                            \
  struct Name {                                 \
    LIST(FUSEDOPT_COEFF_MEMBER)                 \
    template <class U>                          \
    FUSEDOPT_HD Name<U> cast() const {          \
      Name<U> out;                              \
      LIST(FUSEDOPT_COEFF_CAST)                 \
      return out;                               \
    }                                           \
  };
