// The entry points one instruction-set build of the CPU loops provides. Each takes a
// contiguous range [begin, end) of the call's concatenated element index space (or of its
// norm blocks), so the driver can hand equal ranges to threads.
#pragma once

#include <cstdint>

#include "common/batch.h"
#include "common/steps.h"

namespace fusedopt {
namespace cpu {

template <class Step>
using UpdateFn = void (*)(const Step&, const Batch&, int64_t begin, int64_t end);

// A trust-ratio rule's two passes (math/lamb.h). Pass 1 runs norm blocks [begin, end)
// (block_offsets as for sumsq_blocks), updating the states and writing each block's sums of
// p^2 and u^2 to partials[2k] and partials[2k + 1]. Pass 2 runs elements [begin, end) of
// the concatenated index space with tensor t's factor factors[t].
template <class Step>
using TrustPass1Fn = void (*)(const Step&, const Batch&, const int64_t* block_offsets, int64_t begin,
                              int64_t end, double* partials);
template <class Step>
using TrustPass2Fn = void (*)(const Step&, const Batch&, const double* factors, int64_t begin, int64_t end);
// One tensor of a factored rule's call (common/steps.h: FUSEDOPT_FOR_EACH_FACTORED_STEP),
// as its passes see it; the driver (cpu/driver.cpp) fills in each pass's inputs.
struct FactoredTensor {
  // The call and the tensor's index in it: the roles' pointers and storage, row_var,
  // col_var (null for a tensor of fewer than two dims) and variance (null for a matrix),
  // and the stochastic rounding of what is written (keyed by the index).
  const Batch* batch;
  int64_t index;
  int64_t numel;
  int64_t rows, cols;                 // the last two dims; 0, 0: not factored
  const double* row_sums = nullptr;   // kRowSums' output, read by kMoments
  const double* col_sums = nullptr;   // kColSums' output, read by kMoments
  // kMoments' output, read by kUpdateSumsq and kApply, as values of the compute type (with
  // room for doubles, whatever the compute type; math/adafactor.h, pass 3): per matrix,
  // 2 * cols values, each column's col_var / rmean, then their inverse roots; per row of
  // every matrix, its row_var as stored and that value's inverse root.
  double* col_terms = nullptr;
  double* row_terms = nullptr;
  double scale = 0.0;                 // alpha / denom, for kApply
};

// The passes of a factored rule, in the order the driver runs them, and the units that a
// range [begin, end) counts: norm blocks (math/sumsq.h), rows, columns of the B matrices
// (b * cols + j), matrices (kMoments, factored) or elements. Each unit's result depends on
// nothing but the unit, so any split across threads gives the same bits.
enum class FactoredPass : int { kParamSumsq, kRowSums, kColSums, kMoments, kUpdateSumsq, kApply };

template <class Step>
using FactoredFn = void (*)(const Step&, DType compute, const FactoredTensor&, FactoredPass, int64_t begin,
                            int64_t end, double* out);

struct KernelTable {
  const char* name;
  // One update entry per rule of FUSEDOPT_FOR_EACH_STEP (common/steps.h), in its order.
#define FUSEDOPT_UPDATE_FIELD(Step, ...) UpdateFn<Step> update_##Step;
  FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_UPDATE_FIELD)
#undef FUSEDOPT_UPDATE_FIELD
  // Two entries per rule of FUSEDOPT_FOR_EACH_TRUST_STEP.
#define FUSEDOPT_TRUST_FIELDS(Step, ...) \
  TrustPass1Fn<Step> pass1_##Step;       \
  TrustPass2Fn<Step> pass2_##Step;
  FUSEDOPT_FOR_EACH_TRUST_STEP(FUSEDOPT_TRUST_FIELDS)
#undef FUSEDOPT_TRUST_FIELDS
  // One entry per factored rule (FUSEDOPT_FOR_EACH_FACTORED_STEP), in its order.
#define FUSEDOPT_FACTORED_FIELD(Step, ...) FactoredFn<Step> factored_##Step;
  FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_FACTORED_FIELD)
#undef FUSEDOPT_FACTORED_FIELD
  UpdateFn<TrafficStep> traffic;
  // Sum of squares of the gradient role, one double per norm block (math/sumsq.h).
  // block_offsets[t] is tensor t's first block; blocks [begin, end) are written to
  // partials[begin..end).
  void (*sumsq_blocks)(const Batch&, const int64_t* block_offsets, int64_t begin, int64_t end,
                       double* partials);
  // Number of NaN and infinite values of the gradient role in [begin, end).
  int64_t (*count_nonfinite)(const Batch&, int64_t begin, int64_t end);

  template <class Step>
  UpdateFn<Step> update() const;  // the entry of Step
  template <class Step>
  TrustPass1Fn<Step> pass1() const;
  template <class Step>
  TrustPass2Fn<Step> pass2() const;
  template <class Step>
  FactoredFn<Step> factored() const;  // the entry of a factored Step
};

#define FUSEDOPT_UPDATE_ENTRY(Step, ...) \
  template <>                                      \
  inline UpdateFn<Step> KernelTable::update<Step>() const { return update_##Step; }
FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_UPDATE_ENTRY)
#undef FUSEDOPT_UPDATE_ENTRY
#define FUSEDOPT_TRUST_ENTRIES(Step, ...)                                                  \
  template <>                                                                              \
  inline TrustPass1Fn<Step> KernelTable::pass1<Step>() const { return pass1_##Step; }     \
  template <>                                                                              \
  inline TrustPass2Fn<Step> KernelTable::pass2<Step>() const { return pass2_##Step; }
FUSEDOPT_FOR_EACH_TRUST_STEP(FUSEDOPT_TRUST_ENTRIES)
#undef FUSEDOPT_TRUST_ENTRIES
#define FUSEDOPT_FACTORED_ENTRY(Step, ...) \
  template <>                              \
  inline FactoredFn<Step> KernelTable::factored<Step>() const { return factored_##Step; }
FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_FACTORED_ENTRY)
#undef FUSEDOPT_FACTORED_ENTRY

// One function per built instruction set; defined in kernels_isa.cpp, compiled once each.
#define FUSEDOPT_DECLARE_TABLE(isa) const KernelTable& kernel_table_##isa();
FUSEDOPT_DECLARE_TABLE(baseline)
FUSEDOPT_DECLARE_TABLE(avx2)
FUSEDOPT_DECLARE_TABLE(avx512)
#undef FUSEDOPT_DECLARE_TABLE

}  // namespace cpu
}  // namespace fusedopt
