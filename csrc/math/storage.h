// Storage narrower than the arithmetic: bfloat16 and float16 held as their 16 bits, and the
// conversions to and from float32 that every backend shares. Widening is exact. Narrowing
// rounds to nearest, ties to even, as IEEE 754 converts: values past the largest finite one
// become inf, subnormals are kept (no flush to zero), and a NaN stays a NaN with its sign
// and the top bits of its payload, made quiet.
//
// These are integer operations on the bits, so they give the same result on every
// instruction set, on the GPU and in the host emulation. The CPU loops use the F16C
// instructions for float16 where the build has them (csrc/cpu/kernels_isa.cpp), which round
// the same way and treat NaN the same way; tests/test_mixed_precision.py checks the two
// against each other and against NumPy over every float16 value.
#pragma once

#include <cstdint>

#include "math/hd.h"

namespace fusedopt {
namespace math {

// Tags for the 16-bit storage types, for code templated on the storage type.
struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};

FUSEDOPT_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  __builtin_memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

FUSEDOPT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  __builtin_memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

FUSEDOPT_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// Adding 0x7FFF plus the kept half's lowest bit rounds the dropped half to nearest even;
// a carry out of the mantissa moves the exponent up, to inf past the largest finite value.
// The result is the word's high half: the CPU loops store two such halves as one 32-bit
// word (csrc/cpu/kernels_isa.cpp). NaN is tested as x != x, one vector compare.
FUSEDOPT_HD uint32_t bf16_rounded_word(float x) {
  const uint32_t u = float_bits(x);
  return x != x ? (u | 0x00400000u) : u + 0x7FFFu + ((u >> 16) & 1u);
}

FUSEDOPT_HD uint16_t float_to_bf16(float x) { return static_cast<uint16_t>(bf16_rounded_word(x) >> 16); }

FUSEDOPT_HD float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1Fu)  // inf, or NaN made quiet
    return bits_float(sign | 0x7F800000u | (mantissa << 13) | (mantissa != 0 ? 0x00400000u : 0u));
  if (exponent == 0)  // zero or subnormal: mantissa * 2^-24, exact in float32
    return bits_float(sign | float_bits(static_cast<float>(mantissa) * 5.9604644775390625e-08f));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

FUSEDOPT_HD uint16_t float_to_f16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // 65520 and up: inf
  if (a >= 0x38800000u) {  // a normal float16 (2^-14 and up): rebias, round off 13 bits
    const uint32_t r = a - 0x38000000u;
    return static_cast<uint16_t>(sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13));
  }
  const uint32_t e = a >> 23;
  if (e < 102u) return static_cast<uint16_t>(sign);  // below 2^-25 (2^-25 ties to 0)
  // A subnormal float16: the value in units of 2^-24, rounded to nearest even. The result
  // can reach 0x400, the smallest normal, which is the right encoding for it.
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14 (e = 112) .. 24 (e = 102)
  const uint32_t q = m >> shift, rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  return static_cast<uint16_t>(sign | (q + ((rest > half || (rest == half && (q & 1u))) ? 1u : 0u)));
}

// --- stochastic rounding ------------------------------------------------------------------
// A narrowing that rounds up with the probability of the dropped part (unbiased: the mean of
// many roundings is the value), from random bits that depend only on the call's key (its
// seed and step) and the element's place (its tensor's index in the call, its index in the
// tensor, its role): the same bits on every instruction set, at any thread count, on CUDA
// and in the reference. mix32 is a 32-bit integer hash (xor-shift and multiply rounds).
FUSEDOPT_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The key of tensor `tensor` of the call, from the call's second key word (once per tensor).
FUSEDOPT_HD uint32_t tensor_key(uint32_t key1, int64_t tensor) {
  return mix32(key1 ^ static_cast<uint32_t>(tensor));
}

// The random bits of the element whose counter (index << 3 | role) has the low word
// `counter_lo`, where hkey is the tensor's key xor the counter's high word (index >> 29):
// hkey is fixed over 2^29 elements, so a loop over them hashes 32-bit lanes only.
FUSEDOPT_HD uint32_t random_bits_lo(uint32_t key0, uint32_t hkey, uint32_t counter_lo) {
  return mix32(mix32(counter_lo ^ key0) ^ hkey);
}

// The random bits of element `index` of a tensor (its tensor_key) in role `role`.
FUSEDOPT_HD uint32_t random_bits(uint32_t key0, uint32_t tkey, int64_t index, int role) {
  const uint64_t counter = (static_cast<uint64_t>(index) << 3) | static_cast<uint64_t>(role);
  return random_bits_lo(key0, tkey ^ static_cast<uint32_t>(counter >> 32), static_cast<uint32_t>(counter));
}

// bfloat16: the random 16 bits added below the kept half carry into it with the dropped
// half's probability. inf stays inf; a value past the largest finite one may reach inf.
// As bf16_rounded_word, the result is the word's high half.
FUSEDOPT_HD uint32_t bf16_stochastic_word(float x, uint32_t random) {
  const uint32_t u = float_bits(x);
  return x != x ? (u | 0x00400000u) : u + (random >> 16);  // NaN: as nearest rounding
}

FUSEDOPT_HD uint16_t float_to_bf16_stochastic(float x, uint32_t random) {
  return static_cast<uint16_t>(bf16_stochastic_word(x, random) >> 16);
}

// float16: the same in float16's grid, with as many random bits as the value drops (13 for
// normal float16 values, 14 to 31 in the subnormal range; values below 2^-55, which would
// drop more, become zero).
FUSEDOPT_HD uint16_t float_to_f16_stochastic(float x, uint32_t random) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return float_to_f16(x);  // inf and NaN: as nearest rounding
  if (a >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7C00u);  // 2^16 and up: inf
  if (a >= 0x38800000u)  // a normal float16: rebias, add 13 random bits, drop 13
    return static_cast<uint16_t>(sign | ((a - 0x38000000u + (random & 0x1FFFu)) >> 13));
  const uint32_t e = a >> 23;
  if (e < 95u) return static_cast<uint16_t>(sign);
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14 (e = 112) .. 31 (e = 95)
  return static_cast<uint16_t>(sign | ((m + (random & ((1u << shift) - 1u))) >> shift));
}

// --- a float32 master as a bfloat16 param and an int16 remainder ------------------------
// The param holds the master's high 16 bits, plus one where bit 15 of the low half is set
// (so the param is the master rounded to nearest, ties away from zero), and the remainder
// holds the low 16 bits. Both directions wrap modulo 2^16, so every float32 bit pattern,
// NaN included, comes back exactly.
FUSEDOPT_HD float join_master(uint16_t param, uint16_t remainder) {
  const uint32_t high = (static_cast<uint32_t>(param) - (remainder >> 15)) & 0xFFFFu;
  return bits_float((high << 16) | remainder);
}

FUSEDOPT_HD void split_master(float master, uint16_t& param, uint16_t& remainder) {
  const uint32_t u = float_bits(master);
  remainder = static_cast<uint16_t>(u & 0xFFFFu);
  param = static_cast<uint16_t>(((u >> 16) + ((u >> 15) & 1u)) & 0xFFFFu);
}

// The compute value of a stored one: float32 for the 16-bit types, the value itself for
// float32 and float64.
FUSEDOPT_HD float widen(float x) { return x; }
FUSEDOPT_HD double widen(double x) { return x; }
FUSEDOPT_HD float widen(BFloat16 x) { return bf16_to_float(x.bits); }
FUSEDOPT_HD float widen(Float16 x) { return f16_to_float(x.bits); }

// A compute value rounded to the storage type S.
template <class S>
struct Narrow {
  template <class T>
  FUSEDOPT_HD static S from(T x) { return static_cast<S>(x); }
};
template <>
struct Narrow<BFloat16> {
  FUSEDOPT_HD static BFloat16 from(float x) { return BFloat16{float_to_bf16(x)}; }
};
template <>
struct Narrow<Float16> {
  FUSEDOPT_HD static Float16 from(float x) { return Float16{float_to_f16(x)}; }
};

}  // namespace math
}  // namespace fusedopt
