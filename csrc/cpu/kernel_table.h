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

// One function per built instruction set; defined in kernels_isa.cpp, compiled once each.
#define FUSEDOPT_DECLARE_TABLE(isa) const KernelTable& kernel_table_##isa();
FUSEDOPT_DECLARE_TABLE(baseline)
FUSEDOPT_DECLARE_TABLE(avx2)
FUSEDOPT_DECLARE_TABLE(avx512)
#undef FUSEDOPT_DECLARE_TABLE

}  // namespace cpu
}  // namespace fusedopt
