// The CPU loops. This one file is compiled once per instruction set (CMakeLists.txt sets
// FUSEDOPT_ISA and the target flags), and csrc/cpu/dispatch.cpp picks a build at import.
//
// The loops are plain scalar C++ over restrict pointers; the compiler vectorizes them for
// each target. The vector body and the scalar remainder therefore run the very same rule
// from csrc/math/, and since the build forbids FMA contraction and fast-math, every target
// produces the same bits.
//
// Everything here has internal linkage (anonymous namespace, no std:: algorithm templates):
// a weak symbol compiled with AVX-512 flags could otherwise be picked by the linker for
// the baseline build and crash a machine without AVX-512. The flag-to-template helpers of
// common/flag_dispatch.h are internal for the same reason.
#include <cstdint>
#include <type_traits>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/batch.h"
#include "common/flag_dispatch.h"
#include "common/steps.h"
#include "cpu/kernel_table.h"
#include "math/grad_multiplier.h"
#include "math/storage.h"
#include "math/sumsq.h"
#include "math/traffic.h"

#ifndef FUSEDOPT_ISA
#error "FUSEDOPT_ISA must name the instruction-set build (baseline, avx2, avx512)"
#endif

namespace fusedopt {
namespace cpu {
namespace {

using math::Momentum;
using math::WeightDecay;

// --- storage <-> compute conversion ----------------------------------------------------
// Arrays stored in the compute type are run in place (run_range). Any other call converts
// in stages of kStage elements: each 16-bit role is widened into a float32 buffer on the
// stack, the rule runs over the buffers (and over the float32 arrays themselves), and the
// written 16-bit roles are rounded back (run_range_staged). Every array is still read and
// written once per step; the buffers stay in L1. Each rule variant is compiled once for
// staged calls, whatever the combination of storage types, instead of once per
// combination: the conversions are the few loops below. (The two bfloat16 recipes of
// run_stored are compiled fused as well, for speed.)
constexpr int64_t kStage = 256;

void widen_bf16(const uint16_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = math::bf16_to_float(src[i]);
}

void narrow_bf16(const float* __restrict src, uint16_t* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = math::float_to_bf16(src[i]);
}

// F16C (the avx2 and avx512 builds) rounds to nearest even and treats NaN as
// math::float_to_f16 does; the scalar ends take the integer path, with the same bits.
void widen_f16(const uint16_t* __restrict src, float* __restrict dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
#endif
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = math::f16_to_float(src[i]);
}

void narrow_f16(const float* __restrict src, uint16_t* __restrict dst, int64_t n) {
#if defined(__F16C__) || defined(__AVX512F__)
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
#endif
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kNearest));
#endif
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kNearest));
#endif
  for (; i < n; ++i) dst[i] = math::float_to_f16(src[i]);
}

// (itemsize_of of common/dtype.h is an inline function with external linkage: see the top.)
int bytes_of(DType d) { return d == DType::kFloat64 ? 8 : (d == DType::kFloat32 ? 4 : 2); }

void widen_into(DType d, const void* src, float* dst, int64_t n) {
  if (d == DType::kBFloat16) widen_bf16(static_cast<const uint16_t*>(src), dst, n);
  else widen_f16(static_cast<const uint16_t*>(src), dst, n);
}

void narrow_into(DType d, const float* src, void* dst, int64_t n) {
  if (d == DType::kBFloat16) narrow_bf16(src, static_cast<uint16_t*>(dst), n);
  else narrow_f16(src, static_cast<uint16_t*>(dst), n);
}

// Stochastic rounding of role `role`'s elements [first, first + n) of tensor `tensor`.
// (The rounding is called, not passed by address: see the top on linkage.)
template <bool kBFloat16>
void narrow_stochastic(const float* __restrict src, uint16_t* __restrict dst, int64_t n, const Batch& b,
                       int role, int64_t tensor, int64_t first) {
  const uint32_t k0 = b.rounding_key[0], tkey = math::tensor_key(b.rounding_key[1], tensor);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t random = math::random_bits(k0, tkey, first + i, role);
    dst[i] = kBFloat16 ? math::float_to_bf16_stochastic(src[i], random)
                       : math::float_to_f16_stochastic(src[i], random);
  }
}

// A written role's stage stored back: to nearest even, or stochastically where the call asks.
void store_stage(const Batch& b, int role, const float* src, void* dst, int64_t n, int64_t tensor,
                 int64_t first) {
  const DType d = b.dtypes[role];
  if (((b.stochastic_roles >> role) & 1u) == 0) return narrow_into(d, src, dst, n);
  if (d == DType::kBFloat16)
    narrow_stochastic<true>(src, static_cast<uint16_t*>(dst), n, b, role, tensor, first);
  else narrow_stochastic<false>(src, static_cast<uint16_t*>(dst), n, b, role, tensor, first);
}

// Master weights (common/batch.h): elements [i, i + m) of tensor t's params as the rule
// reads them, the float32 master itself or the master joined from the bfloat16 param and
// its remainder (into buf); and the params written from what the rule left there: the
// master rounded into the 16-bit param (to nearest even, or stochastically with the
// param role's bits, those of a plain step), or split into param and remainder.
float* master_in(const Batch& b, int64_t t, int64_t i, int64_t m, float* __restrict buf) {
  if (b.master == Master::kFloat32) return static_cast<float*>(b.masters[t]) + i;
  const uint16_t* __restrict p = static_cast<const uint16_t*>(b.ptrs[kParam][t]) + i;
  const uint16_t* __restrict r = static_cast<const uint16_t*>(b.masters[t]) + i;
  for (int64_t e = 0; e < m; ++e) buf[e] = math::join_master(p[e], r[e]);
  return buf;
}

void master_out(const Batch& b, int64_t t, int64_t i, int64_t m, const float* __restrict x) {
  if (b.master == Master::kFloat32)  // the master was written in place
    return store_stage(b, kParam, x, static_cast<uint16_t*>(b.ptrs[kParam][t]) + i, m, t, i);
  uint16_t* __restrict p = static_cast<uint16_t*>(b.ptrs[kParam][t]) + i;
  uint16_t* __restrict r = static_cast<uint16_t*>(b.masters[t]) + i;
  for (int64_t e = 0; e < m; ++e) math::split_master(x[e], p[e], r[e]);
}

// --- the element loop ---------------------------------------------------------------------
// The pieces of the bfloat16 pair loop below are forced inline: GCC left the stochastic
// rounding out of line in some rule variants, which kept their loop from vectorizing.
#define FUSEDOPT_FORCE_INLINE inline __attribute__((always_inline))

// How a written bfloat16 role rounds (math/storage.h): to nearest even, or stochastically
// with the random bits of the element's counter (its low word; hkey: math::random_bits_lo).
// The result is the word whose high half is stored.
template <bool kStochastic>
struct Rounder {
  uint32_t key0, hkey;
  FUSEDOPT_FORCE_INLINE uint32_t operator()(float x, uint32_t counter_lo) const {
    if constexpr (kStochastic) return math::bf16_stochastic_word(x, math::random_bits_lo(key0, hkey, counter_lo));
    else return math::bf16_rounded_word(x);
  }
};

// How a role's storage S is held in memory and converted: float and double as themselves,
// bfloat16 as its 16 bits (math/storage.h). load2/store2 take two adjacent elements.
template <class S>
struct Held {
  using type = S;
  static S load(S x) { return x; }
  static S store(S x) { return x; }
  FUSEDOPT_FORCE_INLINE static void load2(const S* x, int64_t i, S& a, S& b) {
    a = x[i];
    b = x[i + 1];
  }
  template <class R>
  FUSEDOPT_FORCE_INLINE static void store1(S* x, int64_t i, S a, const R&, uint32_t) { x[i] = a; }
  template <class R>
  FUSEDOPT_FORCE_INLINE static void store2(S* x, int64_t i, S a, S b, const R&, uint32_t) {
    x[i] = a;
    x[i + 1] = b;
  }
};

// A pair of bfloat16 elements is read and written as one 32-bit word, the first element
// in its low half: widening is a shift and a mask, and narrowing keeps the high halves of
// the two rounded words, with no packing across vector lanes. Converting element by
// element, the vectorized loop spent most of its time packing and unpacking (bfloat16
// Adam 1.7x the cost of float32 in cache on one AVX-512 thread; in pairs, 1.2x).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "bfloat16 pairs assume little-endian words");
typedef uint32_t PairWord __attribute__((may_alias, aligned(2)));

template <>
struct Held<math::BFloat16> {
  using type = uint16_t;
  static float load(uint16_t h) { return math::bf16_to_float(h); }
  static uint16_t store(float x) { return math::float_to_bf16(x); }
  FUSEDOPT_FORCE_INLINE static void load2(const uint16_t* x, int64_t i, float& a, float& b) {
    const uint32_t w = *reinterpret_cast<const PairWord*>(x + i);
    a = math::bits_float(w << 16);
    b = math::bits_float(w & 0xFFFF0000u);
  }
  // counter: the first element's counter low word; the second's is 8 more (math/storage.h).
  template <class R>
  FUSEDOPT_FORCE_INLINE static void store1(uint16_t* x, int64_t i, float a, const R& round, uint32_t counter) {
    x[i] = static_cast<uint16_t>(round(a, counter) >> 16);
  }
  template <class R>
  FUSEDOPT_FORCE_INLINE static void store2(uint16_t* x, int64_t i, float a, float b, const R& round,
                                           uint32_t counter) {
    *reinterpret_cast<PairWord*>(x + i) = (round(a, counter) >> 16) | (round(b, counter + 8u) & 0xFFFF0000u);
  }
};

// The storage of the params, the grads and the states of a call that the loops below run
// in place, converting in registers. Uniform<T> is every call stored in its compute type;
// two bfloat16 layouts, the recipes of bfloat16 training, are compiled fused too, since
// the stage buffers of run_range_staged cost them about a third of their speed in cache,
// with their params (kStochasticP) or params and states (kStochasticS) rounded to nearest
// or stochastically; every other combination is staged.
// kMaster: the params' value is a float32 master (Batch::masters), written back with the
// param rounded from it to nearest (master weights' commonest recipe, fused too, element by
// element: not in pairs).
template <class PS, class GS, class SS, bool kStochasticParams = false, bool kStochasticStates = false,
          bool kMasterF32 = false>
struct Layout {
  using PH = Held<PS>;
  using GH = Held<GS>;
  using SH = Held<SS>;
  using P = typename PH::type;
  using G = typename GH::type;
  using St = typename SH::type;
  static constexpr int64_t kWidest =
      static_cast<int64_t>(sizeof(P) > sizeof(G) ? (sizeof(P) > sizeof(St) ? sizeof(P) : sizeof(St))
                                                 : (sizeof(G) > sizeof(St) ? sizeof(G) : sizeof(St)));
  static constexpr bool kMaster = kMasterF32;
  static constexpr bool kSameSize = sizeof(P) == sizeof(G) && sizeof(G) == sizeof(St) && !kMaster;
  static constexpr bool kPairs =
      (std::is_same<P, uint16_t>::value || std::is_same<St, uint16_t>::value) && !kMaster;
  static constexpr bool kStochasticP = kStochasticParams;
  static constexpr bool kStochasticS = kStochasticStates;
  static constexpr bool kStochastic = kStochasticP || kStochasticS;
};
template <class S>
using Uniform = Layout<S, S, S>;

// Where a piece of a tensor starts in it, and the keys of its random bits (math/storage.h):
// element i of the piece is element first + i of tensor t, whose key is tkey.
struct PieceKeys {
  int64_t first;
  uint32_t key0, tkey;
};

// Elements [lo, hi) of a piece two at a time (L::kPairs), an odd last one alone.
template <class Rule, class L>
FUSEDOPT_FORCE_INLINE void run_pairs(const Rule& rule, typename L::P* __restrict p, const typename L::G* __restrict g,
                      typename L::St* __restrict s0, typename L::St* __restrict s1,
                      typename L::St* __restrict s2, int64_t lo, int64_t hi, const PieceKeys& k) {
  using T = typename Rule::compute_t;
  constexpr int N = Rule::kNumStates;
  using PH = typename L::PH;
  using GH = typename L::GH;
  using SH = typename L::SH;
  // The counters' low words, in 32-bit lanes: element lo + j has c0 + 8j (index << 3).
  const int64_t index = k.first + lo;
  const uint32_t hkey = k.tkey ^ static_cast<uint32_t>(index >> 29);
  const Rounder<L::kStochasticP> round_p{k.key0, hkey};
  const Rounder<L::kStochasticS> round_s{k.key0, hkey};
  const uint32_t c0 = static_cast<uint32_t>(index) << 3;
  const int n2 = static_cast<int>((hi - lo) / 2);
  p += lo;
  g += lo;
  if constexpr (N > 0) s0 += lo;
  if constexpr (N > 1) s1 += lo;
  if constexpr (N > 2) s2 += lo;
  for (int q = 0; q < n2; ++q) {
    const int i = 2 * q;
    const uint32_t c = c0 + (static_cast<uint32_t>(q) << 4);
    T pa, pb, ga, gb, sa[N > 0 ? N : 1], sb[N > 0 ? N : 1];
    PH::load2(p, i, pa, pb);
    GH::load2(g, i, ga, gb);
    if constexpr (N > 0) SH::load2(s0, i, sa[0], sb[0]);
    if constexpr (N > 1) SH::load2(s1, i, sa[1], sb[1]);
    if constexpr (N > 2) SH::load2(s2, i, sa[2], sb[2]);
    rule(pa, ga, sa);
    rule(pb, gb, sb);
    PH::store2(p, i, pa, pb, round_p, c | kParam);
    if constexpr (N > 0) SH::store2(s0, i, sa[0], sb[0], round_s, c | kState0);
    if constexpr (N > 1) SH::store2(s1, i, sa[1], sb[1], round_s, c | kState1);
    if constexpr (N > 2) SH::store2(s2, i, sa[2], sb[2], round_s, c | kState2);
  }
  if ((hi - lo) & 1) {
    const int i = 2 * n2;
    const uint32_t c = c0 + (static_cast<uint32_t>(i) << 3);
    T pv = PH::load(p[i]);
    T st[N > 0 ? N : 1];
    if constexpr (N > 0) st[0] = SH::load(s0[i]);
    if constexpr (N > 1) st[1] = SH::load(s1[i]);
    if constexpr (N > 2) st[2] = SH::load(s2[i]);
    rule(pv, GH::load(g[i]), st);
    PH::store1(p, i, pv, round_p, c | kParam);
    if constexpr (N > 0) SH::store1(s0, i, st[0], round_s, c | kState0);
    if constexpr (N > 1) SH::store1(s1, i, st[1], round_s, c | kState1);
    if constexpr (N > 2) SH::store1(s2, i, st[2], round_s, c | kState2);
  }
}

template <class Rule, class L>
inline void run_elems(const Rule& rule, typename L::P* __restrict p, const typename L::G* __restrict g,
                      typename L::St* __restrict s0, typename L::St* __restrict s1,
                      typename L::St* __restrict s2, float* __restrict m, int64_t lo, int64_t hi,
                      const PieceKeys& k) {
  using T = typename Rule::compute_t;
  constexpr int N = Rule::kNumStates;
  using PH = typename L::PH;
  using SH = typename L::SH;
  if constexpr (L::kPairs) {
    if constexpr (L::kStochastic) {
      // hkey changes where the tensor's index crosses a multiple of 2^29: two runs there.
      const int64_t cut = ((k.first + hi) >> 29 << 29) - k.first;
      if (cut > lo && cut < hi) {
        run_pairs<Rule, L>(rule, p, g, s0, s1, s2, lo, cut, k);
        lo = cut;
      }
    }
    run_pairs<Rule, L>(rule, p, g, s0, s1, s2, lo, hi, k);
    return;
  }
  for (int64_t i = lo; i < hi; ++i) {
    T pv;
    if constexpr (L::kMaster) pv = m[i];
    else pv = PH::load(p[i]);
    const T gv = L::GH::load(g[i]);
    T st[N > 0 ? N : 1];
    if constexpr (N > 0) st[0] = SH::load(s0[i]);
    if constexpr (N > 1) st[1] = SH::load(s1[i]);
    if constexpr (N > 2) st[2] = SH::load(s2[i]);
    rule(pv, gv, st);
    if constexpr (L::kMaster) m[i] = pv;
    p[i] = PH::store(pv);
    if constexpr (N > 0) s0[i] = SH::store(st[0]);
    if constexpr (N > 1) s1[i] = SH::store(st[1]);
    if constexpr (N > 2) s2[i] = SH::store(st[2]);
  }
}

// Software prefetch, kPrefetchAhead bytes ahead of the loop on every stream, issued once per
// kPrefetchBlock bytes. The hardware prefetcher alone left Adam at 85-88% of the traffic
// loop on one thread at 2^24 float32 elements: the divider-bound body (one sqrt and one
// divide per element) fills the reorder window and stalls the demand misses behind it.
// Prefetching 2 KiB ahead brought the same-run ratio to 95-99% (bench/README.md). Issuing
// the prefetches in small groups (every 256 bytes: four cache lines per stream) rather than
// in bursts every 1 KiB raised Adam by 5-8%, from 90-93% to 96-97% of the traffic loop, at
// 2^24 and 2^27 elements on 1 and 2 threads (bench/prefetch_sweep.cpp, which sweeps blocks
// of 64 B-1 KiB and distances of 1-8 KiB); blocks of 64-512 B were within noise of each
// other, and the traffic loop itself hardly moved. It runs through this code too, so the
// roof moves with any change here. (With streams of two element sizes the distances are
// those of the widest: a 16-bit stream is prefetched half as far ahead in bytes.)
constexpr int64_t kPrefetchBlock = 256;
constexpr int64_t kPrefetchAhead = 2048;

// One tensor's share of a thread's range: the role pointers at its first element and its
// length (n <= 0: the tensor has no element in the range). Unused roles are null.
template <class L>
struct Piece {
  typename L::P* p;
  const typename L::G* g;
  typename L::St* s0;
  typename L::St* s1;
  typename L::St* s2;
  float* m;  // the float32 masters (L::kMaster), else null
  int64_t n;
  PieceKeys keys;
};

template <class S>
S* role_ptr(const Batch& b, int role, int64_t t, int64_t lo) {
  return b.ptrs[role] ? static_cast<S*>(b.ptrs[role][t]) + lo : nullptr;
}

template <class L>
Piece<L> piece_of(const Batch& b, int64_t t, int64_t begin, int64_t end) {
  const int64_t lo = (begin > b.offsets[t] ? begin : b.offsets[t]) - b.offsets[t];
  const int64_t hi = (end < b.offsets[t + 1] ? end : b.offsets[t + 1]) - b.offsets[t];
  using St = typename L::St;
  const uint32_t tkey = L::kStochastic ? math::tensor_key(b.rounding_key[1], t) : 0u;
  return {role_ptr<typename L::P>(b, kParam, t, lo), role_ptr<const typename L::G>(b, kGrad, t, lo),
          role_ptr<St>(b, kState0, t, lo), role_ptr<St>(b, kState1, t, lo), role_ptr<St>(b, kState2, t, lo),
          L::kMaster ? static_cast<float*>(b.masters[t]) + lo : nullptr, hi - lo,
          PieceKeys{lo, b.rounding_key[0], tkey}};
}

template <class X>
inline void prefetch_stream(const X* x, int64_t from, int64_t to, bool write) {
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(X));
  for (int64_t k = from; k < to; k += L) {
    if (write) __builtin_prefetch(x + k, 1, 3);
    else __builtin_prefetch(x + k, 0, 3);
  }
}

// Prefetches elements [from, to) of every stream the rule touches (from, to < x.n).
template <int N, class L>
inline void prefetch_lines(const Piece<L>& x, int64_t from, int64_t to) {
  if constexpr (L::kSameSize) {
    constexpr int64_t E = 64 / static_cast<int64_t>(sizeof(typename L::P));  // elements per line
    for (int64_t k = from; k < to; k += E) {
      __builtin_prefetch(x.p + k, 1, 3);
      __builtin_prefetch(x.g + k, 0, 3);
      if constexpr (N > 0) __builtin_prefetch(x.s0 + k, 1, 3);
      if constexpr (N > 1) __builtin_prefetch(x.s1 + k, 1, 3);
      if constexpr (N > 2) __builtin_prefetch(x.s2 + k, 1, 3);
    }
  } else {
    prefetch_stream(x.p, from, to, true);
    prefetch_stream(x.g, from, to, false);
    if constexpr (N > 0) prefetch_stream(x.s0, from, to, true);
    if constexpr (N > 1) prefetch_stream(x.s1, from, to, true);
    if constexpr (N > 2) prefetch_stream(x.s2, from, to, true);
    if constexpr (L::kMaster) prefetch_stream(x.m, from, to, true);
  }
}

template <int N, class L>
inline void prefetch_head(const Piece<L>& x) {
  constexpr int64_t D = kPrefetchAhead / L::kWidest;
  prefetch_lines<N>(x, 0, x.n < D ? x.n : D);
}

// Runs one piece with the prefetch window kPrefetchAhead bytes ahead; where the window
// passes the piece's end it goes on into the head of `next` (the following piece of the
// thread's range, or one with n == 0), so a list of small tensors is prefetched as
// steadily as one flat tensor. Measured on 1,000 separately allocated tensors of median
// size 1,184 elements (bench list1000): without the head prefetch, the heads of most
// tensors were demand misses.
template <class Rule, class L>
void run_piece(const Rule& rule, const Piece<L>& x, const Piece<L>& next) {
  constexpr int N = Rule::kNumStates;
  constexpr int64_t B = kPrefetchBlock / L::kWidest;
  constexpr int64_t D = kPrefetchAhead / L::kWidest;
  int64_t i = 0;
  // Prefetch only inside the range: a thread never touches the lines of the next one's.
  for (; i + D + B <= x.n; i += B) {
    prefetch_lines<N>(x, i + D, i + D + B);
    run_elems<Rule, L>(rule, x.p, x.g, x.s0, x.s1, x.s2, x.m, i, i + B, x.keys);
  }
  if (next.n > 0) prefetch_head<N>(next);
  run_elems<Rule, L>(rule, x.p, x.g, x.s0, x.s1, x.s2, x.m, i, x.n, x.keys);
}

// First tensor whose elements reach past `index` (empty tensors are stepped over).
int64_t tensor_containing(const int64_t* offsets, int64_t n_tensors, int64_t index) {
  int64_t lo = 0, hi = n_tensors;  // answer in [lo, hi]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (offsets[mid + 1] > index) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// The first tensor from t on with elements in [begin, end), as a piece (n == 0: none).
template <class L>
Piece<L> next_piece(const Batch& b, int64_t& t, int64_t begin, int64_t end) {
  for (; t < b.n_tensors && b.offsets[t] < end; ++t) {
    const Piece<L> x = piece_of<L>(b, t, begin, end);
    if (x.n > 0) return x;
  }
  return Piece<L>{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, PieceKeys{0, 0, 0}};
}

template <class Rule, class L>
void run_range(const Rule& rule, const Batch& b, int64_t begin, int64_t end) {
  int64_t t = tensor_containing(b.offsets, b.n_tensors, begin);
  Piece<L> x = next_piece<L>(b, t, begin, end);
  if (x.n > 0) prefetch_head<Rule::kNumStates>(x);
  while (x.n > 0) {
    ++t;
    const Piece<L> next = next_piece<L>(b, t, begin, end);
    run_piece(rule, x, next);
    x = next;
  }
}

// A range of a call with 16-bit roles (float32 arithmetic): kStage elements at a time,
// each 16-bit role through a float32 buffer, float32 roles in place. The prefetch runs
// kPrefetchAhead bytes of float32 ahead of the stage on every stream (half that distance
// in bytes on the 16-bit ones).
template <class Rule>
void run_range_staged(const Rule& rule, const Batch& b, int64_t begin, int64_t end) {
  constexpr int R = 2 + Rule::kNumStates;
  constexpr int64_t D = kPrefetchAhead / static_cast<int64_t>(sizeof(float));
  alignas(64) float buf[R][kStage];
  int size[R];
  bool narrow[R];
  for (int r = 0; r < R; ++r) {
    size[r] = bytes_of(b.dtypes[r]);
    narrow[r] = b.dtypes[r] != DType::kFloat32;
  }
  for (int64_t t = tensor_containing(b.offsets, b.n_tensors, begin);
       t < b.n_tensors && b.offsets[t] < end; ++t) {
    const int64_t lo = (begin > b.offsets[t] ? begin : b.offsets[t]) - b.offsets[t];
    const int64_t hi = (end < b.offsets[t + 1] ? end : b.offsets[t + 1]) - b.offsets[t];
    char* base[R];
    for (int r = 0; r < R; ++r) base[r] = static_cast<char*>(b.ptrs[r][t]);
    for (int64_t i = lo; i < hi; i += kStage) {
      const int64_t m = (hi - i < kStage) ? hi - i : kStage;
      if (i + D + m <= hi) {
        for (int r = 0; r < R; ++r)
          for (int64_t k = (i + D) * size[r]; k < (i + D + m) * size[r]; k += 64) {
            if (r == kGrad) __builtin_prefetch(base[r] + k, 0, 3);
            else __builtin_prefetch(base[r] + k, 1, 3);
          }
      }
      if (b.master != Master::kNone && i + D + m <= hi) {
        const int64_t bytes = b.master == Master::kFloat32 ? 4 : 2;
        const char* at = static_cast<const char*>(b.masters[t]);
        for (int64_t k = (i + D) * bytes; k < (i + D + m) * bytes; k += 64) __builtin_prefetch(at + k, 1, 3);
      }
      float* x[kMaxRoles] = {nullptr, nullptr, nullptr, nullptr, nullptr};
      for (int r = 0; r < R; ++r) {
        if (r == kParam && b.master != Master::kNone) {
          x[r] = master_in(b, t, i, m, buf[r]);
        } else if (narrow[r]) {
          widen_into(b.dtypes[r], base[r] + i * size[r], buf[r], m);
          x[r] = buf[r];
        } else {
          x[r] = reinterpret_cast<float*>(base[r]) + i;
        }
      }
      run_elems<Rule, Uniform<float>>(rule, x[kParam], x[kGrad], x[kState0], x[kState1], x[kState2], nullptr, 0,
                                      m, PieceKeys{0, 0, 0});
      for (int r = 0; r < R; ++r) {
        if (r == kParam && b.master != Master::kNone) master_out(b, t, i, m, x[r]);
        else if (narrow[r] && r != kGrad) store_stage(b, r, buf[r], base[r] + i * size[r], m, t, i);
      }
    }
  }
}

// --- entry points -------------------------------------------------------------------------
// One entry point per rule: the step's flags select the rule variant (common/flag_dispatch.h,
// shared with CUDA), whose coefficients are rounded once to the compute type.
// Whether the roles a rule with N states uses are stored as p, g and s.
template <int N>
bool stored_as(const Batch& b, DType p, DType g, DType s) {
  if (b.dtypes[kParam] != p || b.dtypes[kGrad] != g) return false;
  for (int k = 0; k < N; ++k)
    if (b.dtypes[kState0 + k] != s) return false;
  return true;
}

// A rule (or the traffic loop) over a range, in the layout the call's storage selects.
template <class Rule>
void run_stored(const Rule& rule, const Batch& b, int64_t begin, int64_t end) {
  using T = typename Rule::compute_t;
  constexpr int N = Rule::kNumStates;
  constexpr DType kBf16 = DType::kBFloat16;
  using math::BFloat16;
  if (b.stored_as_computed()) {
    run_range<Rule, Uniform<T>>(rule, b, begin, end);
  } else if constexpr (std::is_same<T, float>::value) {
    // Float32 masters of bfloat16 params and grads with float32 states, rounded to
    // nearest: fused; the other master calls have a role of their own: staged. Stochastic
    // rounding of the params, or of the params and the (bfloat16) states, runs fused; of
    // the states alone, staged.
    const bool sr_p = (b.stochastic_roles >> kParam) & 1u;
    const bool sr_s = (b.stochastic_roles >> kState0) != 0;
    if (b.master != Master::kNone) {
      if (b.master == Master::kFloat32 && b.stochastic_roles == 0 && stored_as<N>(b, kBf16, kBf16, DType::kFloat32))
        run_range<Rule, Layout<BFloat16, BFloat16, float, false, false, true>>(rule, b, begin, end);
      else run_range_staged(rule, b, begin, end);
    } else if (stored_as<N>(b, kBf16, kBf16, kBf16) && sr_p == sr_s) {
      if (!sr_p) run_range<Rule, Uniform<BFloat16>>(rule, b, begin, end);
      else run_range<Rule, Layout<BFloat16, BFloat16, BFloat16, true, true>>(rule, b, begin, end);
    } else if (stored_as<N>(b, kBf16, kBf16, kBf16) && sr_p) {
      run_range<Rule, Layout<BFloat16, BFloat16, BFloat16, true, false>>(rule, b, begin, end);
    } else if (stored_as<N>(b, kBf16, kBf16, DType::kFloat32)) {
      if (!sr_p) run_range<Rule, Layout<BFloat16, BFloat16, float>>(rule, b, begin, end);
      else run_range<Rule, Layout<BFloat16, BFloat16, float, true, false>>(rule, b, begin, end);
    } else {
      run_range_staged(rule, b, begin, end);  // stochastic rounding by position there too
    }
  }
}

template <class Step>
void update(const Step& s, const Batch& b, int64_t begin, int64_t end) {
  with_rule(s, b.compute_dtype(), [&](auto rule, auto compute) {
    using Rule = typename decltype(rule)::type;
    using T = typename decltype(compute)::type;
    const Rule plain{cast_coeffs<T>(s.c)};
    run_stored(math::GradMultiplied<Rule>{plain, static_cast<T>(b.grad_multiplier)}, b, begin, end);
  });
}

template <int N, class T>
void traffic_n(const Batch& b, int64_t begin, int64_t end) {
  run_stored(math::TrafficRule<T, N>{}, b, begin, end);
}

void traffic(const TrafficStep& s, const Batch& b, int64_t begin, int64_t end) {
  with_compute(b.compute_dtype(), [&](auto st) {
    using T = decltype(st);
    switch (s.n_states) {
      case 0: traffic_n<0, T>(b, begin, end); break;
      case 1: traffic_n<1, T>(b, begin, end); break;
      case 2: traffic_n<2, T>(b, begin, end); break;
      default: traffic_n<3, T>(b, begin, end); break;
    }
  });
}

// --- norms -------------------------------------------------------------------------------
// Adds the squares of x[0..n) to the lanes of math/sumsq.h, element i to lane i % kNormLanes
// (x starts on lane 0), in order within each lane.
template <class S>
void add_squares(const S* __restrict x, int64_t n, double* __restrict lane) {
  constexpr int L = math::kNormLanes;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    for (int j = 0; j < L; ++j) lane[j] = lane[j] + math::square_as_double(x[i + j]);
  }
  for (int j = 0; i + j < n; ++j) lane[j] = lane[j] + math::square_as_double(x[i + j]);
}

// --- trust-ratio rules (math/lamb.h) -------------------------------------------------
// Both passes go kStage elements at a time, through the staging of run_range_staged: a
// role stored in the compute type is used in place, a 16-bit one through a float32 buffer.
// kStage is a multiple of kNormLanes, so element i of a block stays in lane i % kNormLanes.
//
// Speed: LAMB runs at 76-77% of its traffic roof at 2^24 float32 elements on 2 threads of
// the development machine, quiet (Adam 96-97% in the same runs): both passes are vectorized,
// but each divides and takes a square root per element (u is recomputed in pass 2 to keep
// its bits without writing it): in cache a step costs 1.2 ns per element on one thread,
// Adam's 0.5, which the memory time hides less well. Measured and no better, so not kept:
// software prefetch of every stream of both passes, 2 KiB ahead as in the element loop
// (76%); pass 2 run backwards to reuse what pass 1 left in cache (68-69%); pass 1's three
// loops per stage fused into one, and pass 2's two (69%). (The roof's count is fair: 10
// arrays read or written per element, as the kernel's 7 reads and 3 writes, with one read
// exchanged for a write.)
static_assert(kStage % math::kNormLanes == 0, "a stage must start on lane 0");

// Elements [i, i + m) of role r of tensor t as compute-type values: the array itself where
// it is stored so, else widened into buf.
template <class T>
T* stage_in(const Batch& b, int r, int64_t t, int64_t i, int64_t m, T* buf) {
  char* base = static_cast<char*>(b.ptrs[r][t]);
  if constexpr (std::is_same<T, float>::value) {
    if (r == kParam && b.master != Master::kNone) return master_in(b, t, i, m, buf);
    if (b.dtypes[r] != DType::kFloat32) {
      widen_into(b.dtypes[r], base + i * bytes_of(b.dtypes[r]), buf, m);
      return buf;
    }
  }
  return reinterpret_cast<T*>(base) + i;
}

// Writes back what stage_in widened (a role used in place needs nothing), and reads it
// again as stored, so what follows sees the rounded values the next pass will load.
template <class T>
void stage_out(const Batch& b, int r, int64_t t, int64_t i, int64_t m, T* x) {
  if constexpr (std::is_same<T, float>::value) {
    if (r == kParam && b.master != Master::kNone) return master_out(b, t, i, m, x);
    if (b.dtypes[r] != DType::kFloat32) {
      char* at = static_cast<char*>(b.ptrs[r][t]) + i * bytes_of(b.dtypes[r]);
      store_stage(b, r, x, at, m, t, i);  // to nearest, or stochastically where asked
      widen_into(b.dtypes[r], at, x, m);
    }
  }
}

// The element loops of the passes, over one stage: the states' update, and the direction u
// of every element into a buffer. Restrict pointers, one per state (N is at most
// kMaxStates), so that the loops vectorize.
template <class Rule, class T>
void trust_moments(const Rule& rule, const T* __restrict g, T* const* st, int64_t m, T grad_multiplier) {
  constexpr int N = Rule::kNumStates;
  T* __restrict s0 = st[0];
  T* __restrict s1 = N > 1 ? st[1] : nullptr;
  T* __restrict s2 = N > 2 ? st[2] : nullptr;
  for (int64_t e = 0; e < m; ++e) {
    T x[N];
    x[0] = s0[e];
    if constexpr (N > 1) x[1] = s1[e];
    if constexpr (N > 2) x[2] = s2[e];
    rule.moments(g[e] * grad_multiplier, x);  // math/grad_multiplier.h
    s0[e] = x[0];
    if constexpr (N > 1) s1[e] = x[1];
    if constexpr (N > 2) s2[e] = x[2];
  }
}

template <class Rule, class T>
void trust_directions(const Rule& rule, const T* __restrict p, T* const* st, T* __restrict u, int64_t m) {
  constexpr int N = Rule::kNumStates;
  const T* __restrict s0 = st[0];
  const T* __restrict s1 = N > 1 ? st[1] : nullptr;
  const T* __restrict s2 = N > 2 ? st[2] : nullptr;
  for (int64_t e = 0; e < m; ++e) {
    T x[N];
    x[0] = s0[e];
    if constexpr (N > 1) x[1] = s1[e];
    if constexpr (N > 2) x[2] = s2[e];
    u[e] = rule.direction(p[e], x);
  }
}

// Runs f(rule, stage) with the step's rule variant for the call's compute type (its
// coefficients rounded once) and the stage buffers of both passes: one per role and one
// for the directions.
template <class Rule>
struct TrustStage {
  alignas(64) typename Rule::compute_t buf[2 + Rule::kNumStates][kStage];
  alignas(64) typename Rule::compute_t u[kStage];
};

template <class Step, class F>
void with_trust_rule(const Step& s, const Batch& b, F&& f) {
  with_rule(s, b.compute_dtype(), [&](auto rule_tag, auto) {
    using Rule = typename decltype(rule_tag)::type;
    TrustStage<Rule> stage;
    f(Rule{cast_coeffs<typename Rule::compute_t>(s.c)}, stage);
  });
}

template <class Step>
void trust_pass1(const Step& s, const Batch& b, const int64_t* block_offsets, int64_t begin, int64_t end,
                 double* partials) {
  with_trust_rule(s, b, [&](const auto& rule, auto& stage) {
    using T = typename std::decay_t<decltype(rule)>::compute_t;
    constexpr int N = std::decay_t<decltype(rule)>::kNumStates;
    auto& buf = stage.buf;
    T* u = stage.u;
    for (int64_t t = tensor_containing(block_offsets, b.n_tensors, begin);
         t < b.n_tensors && block_offsets[t] < end; ++t) {
      const int64_t first = begin > block_offsets[t] ? begin : block_offsets[t];
      const int64_t last = end < block_offsets[t + 1] ? end : block_offsets[t + 1];
      for (int64_t k = first; k < last; ++k) {
        const int64_t lo = (k - block_offsets[t]) * math::kNormBlock;
        const int64_t hi = (b.size(t) - lo < math::kNormBlock) ? b.size(t) : lo + math::kNormBlock;
        double p_lane[math::kNormLanes] = {}, u_lane[math::kNormLanes] = {};
        for (int64_t i = lo; i < hi; i += kStage) {
          const int64_t m = (hi - i < kStage) ? hi - i : kStage;
          const T* p = stage_in<T>(b, kParam, t, i, m, buf[kParam]);
          const T* g = stage_in<T>(b, kGrad, t, i, m, buf[kGrad]);
          T* st[N];
          for (int j = 0; j < N; ++j) st[j] = stage_in<T>(b, kState0 + j, t, i, m, buf[kState0 + j]);
          trust_moments(rule, g, st, m, static_cast<T>(b.grad_multiplier));
          for (int j = 0; j < N; ++j) stage_out<T>(b, kState0 + j, t, i, m, st[j]);
          trust_directions(rule, p, st, u, m);
          add_squares(p, m, p_lane);
          add_squares(u, m, u_lane);
        }
        partials[2 * k] = math::combine_lanes(p_lane);
        partials[2 * k + 1] = math::combine_lanes(u_lane);
      }
    }
  });
}

template <class Step>
void trust_pass2(const Step& s, const Batch& b, const double* factors, int64_t begin, int64_t end) {
  with_trust_rule(s, b, [&](const auto& rule, auto& stage) {
    using T = typename std::decay_t<decltype(rule)>::compute_t;
    constexpr int N = std::decay_t<decltype(rule)>::kNumStates;
    auto& buf = stage.buf;
    T* u = stage.u;
    for (int64_t t = tensor_containing(b.offsets, b.n_tensors, begin);
         t < b.n_tensors && b.offsets[t] < end; ++t) {
      const int64_t lo = (begin > b.offsets[t] ? begin : b.offsets[t]) - b.offsets[t];
      const int64_t hi = (end < b.offsets[t + 1] ? end : b.offsets[t + 1]) - b.offsets[t];
      const T factor = static_cast<T>(factors[t]);
      for (int64_t i = lo; i < hi; i += kStage) {
        const int64_t m = (hi - i < kStage) ? hi - i : kStage;
        T* p = stage_in<T>(b, kParam, t, i, m, buf[kParam]);
        T* st[N];
        for (int j = 0; j < N; ++j) st[j] = stage_in<T>(b, kState0 + j, t, i, m, buf[kState0 + j]);
        trust_directions(rule, p, st, u, m);
        for (int64_t e = 0; e < m; ++e) p[e] = p[e] - factor * u[e];
        stage_out<T>(b, kParam, t, i, m, p);
      }
    }
  });
}

template <class S>
double block_sumsq(const S* __restrict x, int64_t n) {
  double lane[math::kNormLanes] = {};
  add_squares(x, n, lane);
  return math::combine_lanes(lane);
}

void sumsq_blocks(const Batch& b, const int64_t* block_offsets, int64_t begin, int64_t end,
                  double* partials) {
  with_storage(b.dtypes[kGrad], [&](auto st) {
    using S = decltype(st);
    for (int64_t t = tensor_containing(block_offsets, b.n_tensors, begin);
         t < b.n_tensors && block_offsets[t] < end; ++t) {
      const S* x = static_cast<const S*>(b.ptrs[kGrad][t]);
      const int64_t n = b.size(t);
      const int64_t first = begin > block_offsets[t] ? begin : block_offsets[t];
      const int64_t last = end < block_offsets[t + 1] ? end : block_offsets[t + 1];
      for (int64_t k = first; k < last; ++k) {
        const int64_t lo = (k - block_offsets[t]) * math::kNormBlock;
        const int64_t len = (n - lo < math::kNormBlock) ? n - lo : math::kNormBlock;
        partials[k] = block_sumsq(x + lo, len);
      }
    }
  });
}

template <class S>
int64_t count_nonfinite_in(const S* __restrict x, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto v = math::widen(x[i]);
    const auto d = v - v;  // 0 for finite values, NaN for NaN and +-inf
    count += (d != d);
  }
  return count;
}

int64_t count_nonfinite(const Batch& b, int64_t begin, int64_t end) {
  int64_t count = 0;
  with_storage(b.dtypes[kGrad], [&](auto st) {
    using S = decltype(st);
    for (int64_t t = tensor_containing(b.offsets, b.n_tensors, begin);
         t < b.n_tensors && b.offsets[t] < end; ++t) {
      const int64_t lo = (begin > b.offsets[t] ? begin : b.offsets[t]) - b.offsets[t];
      const int64_t hi = (end < b.offsets[t + 1] ? end : b.offsets[t + 1]) - b.offsets[t];
      if (hi > lo) count += count_nonfinite_in(static_cast<const S*>(b.ptrs[kGrad][t]) + lo, hi - lo);
    }
  });
  return count;
}

// --- factored rules (Adafactor) -----------------------------------------------------------
// The passes of cpu/kernel_table.h's FactoredPass over one tensor, in the compute type T.
// Every role goes kStage elements at a time through the staging of the trust passes
// (stage_in, stage_out): used in place where stored in T, else widened into a buffer, and
// written back rounded (to nearest, or stochastically where the call asks), then read back
// as stored, so a later pass and the reference see the bits the states hold. The update
// u of an element is computed where it is needed (kUpdateSumsq, kApply) from the same
// values, so both passes see the same bits without a buffer of the tensor.
template <class T>
struct FactoredStage {
  alignas(64) T buf[kMaxRoles][kStage];
  alignas(64) T u[kStage];
};

// The sum of squares of role r's elements [lo, lo + n) of tensor t, by the blocking of
// math/sumsq.h from lo on: blocks added in order (kStage is a multiple of the lanes).
template <class T>
double staged_sumsq(const Batch& b, int r, int64_t t, int64_t lo, int64_t n, T* buf) {
  double sum = 0.0;
  for (int64_t k = 0; k < n; k += math::kNormBlock) {
    const int64_t hi = (n - k < math::kNormBlock) ? n : k + math::kNormBlock;
    double lane[math::kNormLanes] = {};
    for (int64_t e = k; e < hi; e += kStage) {
      const int64_t m = (hi - e < kStage) ? hi - e : kStage;
      add_squares(stage_in<T>(b, r, t, lo + e, m, buf), m, lane);
    }
    sum = sum + math::combine_lanes(lane);
  }
  return sum;
}

// Matrix mat's column terms (FactoredTensor::col_terms): cols values col_var / rmean, then
// their inverse roots.
template <class T>
T* column_terms(const FactoredTensor& x, int64_t mat) {
  return reinterpret_cast<T*>(x.col_terms) + mat * 2 * x.cols;
}
// Row `row`'s terms (FactoredTensor::row_terms; rows counted across the matrices): its
// row_var as stored, then that value's inverse root.
template <class T>
T* row_terms(const FactoredTensor& x, int64_t row) {
  return reinterpret_cast<T*>(x.row_terms) + 2 * row;
}

// The sum of the squares of a row of n <= kNormLanes elements, as math/sumsq.h adds one
// block: one element per lane, then the halving tree over the lanes that hold one.
template <class T>
double short_row_sumsq(const T* __restrict x, int64_t n) {
  double lane[math::kNormLanes];
  for (int64_t j = 0; j < n; ++j) lane[j] = math::square_as_double(x[j]);
  return math::combine_lanes(lane, static_cast<int>(n));
}

// u for elements [e0, e0 + m) of the tensor, into stage.u[0..m).
template <class Rule, class T = typename Rule::compute_t>
void fill_updates(const Rule& rule, const FactoredTensor& x, int64_t e0, int64_t m, FactoredStage<T>& stage) {
  const Batch& b = *x.batch;
  const T* __restrict g = stage_in<T>(b, kGrad, x.index, e0, m, stage.buf[kGrad]);
  T* __restrict u = stage.u;
  if (x.rows == 0) {
    const T* __restrict v = stage_in<T>(b, kState2, x.index, e0, m, stage.buf[kState2]);
    for (int64_t k = 0; k < m; ++k) u[k] = rule.update(rule.grad(g[k]), v[k]);
    return;
  }
  // Row by row: within a row the row factor and its inverse root are fixed; the rows' and
  // the columns' terms come from kMoments.
  const int64_t C = x.cols;
  int64_t row = e0 / C, j = e0 - row * C;
  for (int64_t k = 0; k < m; j = 0, ++row) {
    const int64_t len = (C - j < m - k) ? C - j : m - k;
    const T* terms = column_terms<T>(x, row / x.rows);
    const T r = row_terms<T>(x, row)[0];
    const T r_root = row_terms<T>(x, row)[1];
    const T* __restrict c = terms + j;
    const T* __restrict c_root = terms + C + j;
    for (int64_t q = 0; q < len; ++q)
      u[k + q] = rule.factored_update(rule.grad(g[k + q]), r, r_root, c[q], c_root[q]);
    k += len;
  }
}

// Entries [first, first + n) of a factor of tensor t (role r: row_var or col_var) moved
// towards their mean squares sums[k] / count, stored and read back; returns the sum of the
// stored values in order (the row mean's).
template <class Rule, class T = typename Rule::compute_t>
double update_factor(const Rule& rule, const Batch& b, int r, int64_t t, int64_t first, int64_t n,
                     const double* sums, int64_t count, T* buf) {
  double sum = 0.0;
  for (int64_t i0 = 0; i0 < n; i0 += kStage) {
    const int64_t m = (n - i0 < kStage) ? n - i0 : kStage;
    T* __restrict f = stage_in<T>(b, r, t, first + i0, m, buf);
    for (int64_t q = 0; q < m; ++q)
      f[q] = rule.moment(f[q], static_cast<T>(sums[i0 + q] / static_cast<double>(count)));
    stage_out<T>(b, r, t, first + i0, m, f);
    for (int64_t q = 0; q < m; ++q) sum = sum + static_cast<double>(f[q]);
  }
  return sum;
}

template <class Rule>
void factored_pass(const Rule& rule, const FactoredTensor& x, FactoredPass pass, int64_t begin, int64_t end,
                   double* out) {
  using T = typename Rule::compute_t;
  const Batch& b = *x.batch;
  const int64_t t = x.index, R = x.rows, C = x.cols, n = x.numel;
  FactoredStage<T> stage;
  auto& buf = stage.buf;
  switch (pass) {
    case FactoredPass::kParamSumsq:
      for (int64_t k = begin; k < end; ++k) {
        const int64_t lo = k * math::kNormBlock;
        out[k] = staged_sumsq<T>(b, kParam, t, lo, (n - lo < math::kNormBlock) ? n - lo : math::kNormBlock,
                                 buf[kParam]);
      }
      break;
    case FactoredPass::kRowSums:
      // Rows of at most one element a lane, stored in the compute type: read in place. (A
      // 16-bit gradient takes the staged path: a second call site of the widening, here,
      // made GCC stop inlining it, and bfloat16 Adafactor at 2^24 lost 10-15%.)
      if (C <= math::kNormLanes && (std::is_same<T, double>::value || b.dtypes[kGrad] == DType::kFloat32)) {
        const T* g = static_cast<const T*>(b.ptrs[kGrad][t]);
        for (int64_t r = begin; r < end; ++r) out[r] = short_row_sumsq(g + r * C, C);
        break;
      }
      for (int64_t r = begin; r < end; ++r) out[r] = staged_sumsq<T>(b, kGrad, t, r * C, C, buf[kGrad]);
      break;
    case FactoredPass::kColSums:  // each column's squares added in row order
      for (int64_t mat = begin / C; mat * C < end; ++mat) {
        const int64_t j0 = (begin > mat * C) ? begin - mat * C : 0;
        const int64_t j1 = (end < (mat + 1) * C) ? end - mat * C : C;
        double* __restrict acc = out + mat * C;
        for (int64_t j = j0; j < j1; ++j) acc[j] = 0.0;
        for (int64_t i = 0; i < R; ++i) {
          for (int64_t jc = j0; jc < j1; jc += kStage) {
            const int64_t m = (j1 - jc < kStage) ? j1 - jc : kStage;
            const T* __restrict gr = stage_in<T>(b, kGrad, t, (mat * R + i) * C + jc, m, buf[kGrad]);
            for (int64_t q = 0; q < m; ++q) acc[jc + q] = acc[jc + q] + math::square_as_double(gr[q]);
          }
        }
      }
      break;
    case FactoredPass::kMoments:
      if (R == 0) {
        for (int64_t e = begin; e < end; e += kStage) {
          const int64_t m = (end - e < kStage) ? end - e : kStage;
          const T* __restrict g = stage_in<T>(b, kGrad, t, e, m, buf[kGrad]);
          T* __restrict v = stage_in<T>(b, kState2, t, e, m, buf[kState2]);
          for (int64_t k = 0; k < m; ++k) {
            const T gv = rule.grad(g[k]);
            v[k] = rule.moment(v[k], gv * gv);
          }
          stage_out<T>(b, kState2, t, e, m, v);
        }
        break;
      }
      for (int64_t mat = begin; mat < end; ++mat) {
        const double sum =
            update_factor(rule, b, kState0, t, mat * R, R, x.row_sums + mat * R, C, buf[kState0]);
        update_factor(rule, b, kState1, t, mat * C, C, x.col_sums + mat * C, R, buf[kState1]);
        const T mean = rule.row_mean(sum, R);
        for (int64_t i0 = 0; i0 < R; i0 += kStage) {  // from row_var as stored
          const int64_t m = (R - i0 < kStage) ? R - i0 : kStage;
          const T* __restrict r = stage_in<T>(b, kState0, t, mat * R + i0, m, buf[kState0]);
          T* rows = row_terms<T>(x, mat * R + i0);
          for (int64_t q = 0; q < m; ++q) {
            rows[2 * q] = r[q];
            rows[2 * q + 1] = Rule::inverse_root(r[q]);
          }
        }
        T* terms = column_terms<T>(x, mat);
        for (int64_t j0 = 0; j0 < C; j0 += kStage) {  // from col_var as stored
          const int64_t m = (C - j0 < kStage) ? C - j0 : kStage;
          const T* __restrict c = stage_in<T>(b, kState1, t, mat * C + j0, m, buf[kState1]);
          for (int64_t q = 0; q < m; ++q) {
            terms[j0 + q] = rule.column_scaled(c[q], mean);
            terms[C + j0 + q] = Rule::inverse_root(terms[j0 + q]);
          }
        }
      }
      break;
    case FactoredPass::kUpdateSumsq:
      for (int64_t k = begin; k < end; ++k) {
        const int64_t lo = k * math::kNormBlock;
        const int64_t hi = (n - lo < math::kNormBlock) ? n : lo + math::kNormBlock;
        double lane[math::kNormLanes] = {};
        for (int64_t e = lo; e < hi; e += kStage) {  // kStage is a multiple of the lanes
          const int64_t m = (hi - e < kStage) ? hi - e : kStage;
          fill_updates(rule, x, e, m, stage);
          add_squares(stage.u, m, lane);
        }
        out[k] = math::combine_lanes(lane);
      }
      break;
    case FactoredPass::kApply: {
      const T scale = static_cast<T>(x.scale);
      for (int64_t e = begin; e < end; e += kStage) {
        const int64_t m = (end - e < kStage) ? end - e : kStage;
        fill_updates(rule, x, e, m, stage);
        T* __restrict p = stage_in<T>(b, kParam, t, e, m, buf[kParam]);
        for (int64_t k = 0; k < m; ++k) p[k] = rule.apply(p[k], stage.u[k], scale);
        stage_out<T>(b, kParam, t, e, m, p);
      }
      break;
    }
  }
}

template <class Step>
void factored(const Step& s, DType compute, const FactoredTensor& x, FactoredPass pass, int64_t begin,
              int64_t end, double* out) {
  with_rule(s, compute, [&](auto rule, auto) {
    using Rule = typename decltype(rule)::type;
    factored_pass(Rule(s.c), x, pass, begin, end, out);
  });
}

#define FUSEDOPT_STR2(x) #x
#define FUSEDOPT_STR(x) FUSEDOPT_STR2(x)
#define FUSEDOPT_UPDATE_ENTRY(Step, ...) update<Step>,
#define FUSEDOPT_TRUST_ENTRIES(Step, ...) trust_pass1<Step>, trust_pass2<Step>,
#define FUSEDOPT_FACTORED_ENTRY(Step, ...) factored<Step>,
const KernelTable kTable = {FUSEDOPT_STR(FUSEDOPT_ISA), FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_UPDATE_ENTRY)
                                FUSEDOPT_FOR_EACH_TRUST_STEP(FUSEDOPT_TRUST_ENTRIES)
                                    FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_FACTORED_ENTRY) traffic,
                            sumsq_blocks, count_nonfinite};
#undef FUSEDOPT_UPDATE_ENTRY
#undef FUSEDOPT_TRUST_ENTRIES
#undef FUSEDOPT_FACTORED_ENTRY

}  // namespace

#define FUSEDOPT_TABLE_FN2(isa) kernel_table_##isa
#define FUSEDOPT_TABLE_FN(isa) FUSEDOPT_TABLE_FN2(isa)
const KernelTable& FUSEDOPT_TABLE_FN(FUSEDOPT_ISA)() { return kTable; }

}  // namespace cpu
}  // namespace fusedopt
