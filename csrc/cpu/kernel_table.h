// The entry points one instruction-set build of the CPU loops provides. Each takes a
// contiguous range [begin, end) of the call's concatenated element index space (or of its
// norm blocks), so the driver can hand equal ranges to threads.
#pragma once

#include <cstdint>

#include "common/batch.h"
#include "common/steps.h"

namespace fusedopt {
namespace cpu {

struct KernelTable {
  const char* name;
  void (*sgd)(const SgdStep&, const Batch&, int64_t begin, int64_t end);
  void (*adagrad)(const AdagradStep&, const Batch&, int64_t begin, int64_t end);
  void (*rmsprop)(const RmspropStep&, const Batch&, int64_t begin, int64_t end);
  void (*adam)(const AdamStep&, const Batch&, int64_t begin, int64_t end);
  void (*traffic)(const TrafficStep&, const Batch&, int64_t begin, int64_t end);
  // Sum of squares of the gradient role, one double per norm block (math/sumsq.h).
  // block_offsets[t] is tensor t's first block; blocks [begin, end) are written to
  // partials[begin..end).
  void (*sumsq_blocks)(const Batch&, const int64_t* block_offsets, int64_t begin, int64_t end,
                       double* partials);
  // Number of NaN and infinite values of the gradient role in [begin, end).
  int64_t (*count_nonfinite)(const Batch&, int64_t begin, int64_t end);
};

// One function per built instruction set; defined in kernels_isa.cpp, compiled once each.
#define FUSEDOPT_DECLARE_TABLE(isa) const KernelTable& kernel_table_##isa();
FUSEDOPT_DECLARE_TABLE(baseline)
FUSEDOPT_DECLARE_TABLE(avx2)
FUSEDOPT_DECLARE_TABLE(avx512)
#undef FUSEDOPT_DECLARE_TABLE

}  // namespace cpu
}  // namespace fusedopt
