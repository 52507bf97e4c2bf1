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

struct KernelTable {
  const char* name;
  // One update entry per rule of FUSEDOPT_FOR_EACH_STEP (common/steps.h), in its order.
#define FUSEDOPT_UPDATE_FIELD(Step, ...) UpdateFn<Step> update_##Step;
  FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_UPDATE_FIELD)
#undef FUSEDOPT_UPDATE_FIELD
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
};

#define FUSEDOPT_UPDATE_ENTRY(Step, ...) \
  template <>                                      \
  inline UpdateFn<Step> KernelTable::update<Step>() const { return update_##Step; }
FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_UPDATE_ENTRY)
#undef FUSEDOPT_UPDATE_ENTRY

// One function per built instruction set; defined in kernels_isa.cpp, compiled once each.
#define FUSEDOPT_DECLARE_TABLE(isa) const KernelTable& kernel_table_##isa();
FUSEDOPT_DECLARE_TABLE(baseline)
FUSEDOPT_DECLARE_TABLE(avx2)
FUSEDOPT_DECLARE_TABLE(avx512)
#undef FUSEDOPT_DECLARE_TABLE

}  // namespace cpu
}  // namespace fusedopt
