// Runs one fused call on the CPU: splits the call's elements (all tensors concatenated)
// into equal contiguous ranges, one per thread, and calls the active instruction-set
// build on each. Splitting the concatenated index space, not tensor by tensor, keeps every
// core busy on a list of a thousand small tensors as well as on one large one.
#pragma once

#include <cstdint>

#include "common/batch.h"
#include "common/steps.h"

namespace fusedopt {
namespace cpu {

// One step of any rule of FUSEDOPT_FOR_EACH_STEP (common/steps.h), over all threads.
template <class Step>
void update(const Step& step, const Batch& batch);
void update(const TrafficStep& step, const Batch& batch);
// One step of a rule of FUSEDOPT_FOR_EACH_TRUST_STEP: pass 1 over the norm blocks, the
// per-tensor factors, pass 2; the same bits for any thread count and instruction set.
#define FUSEDOPT_DECLARE_TRUST_UPDATE(Step, ...) void update(const Step& step, const Batch& batch);
FUSEDOPT_FOR_EACH_TRUST_STEP(FUSEDOPT_DECLARE_TRUST_UPDATE)
#undef FUSEDOPT_DECLARE_TRUST_UPDATE
// One step of a factored rule (FUSEDOPT_FOR_EACH_FACTORED_STEP): its passes tensor by
// tensor, each pass over all threads, with the same bits for any thread count.
void update(const AdafactorStep& step, const Batch& batch);

// Sum of squares of every gradient of the batch, by the fixed blocking and combining order
// of math/sumsq.h: the same bits for any thread count and instruction set.
double grad_sum_of_squares(const Batch& batch);

// Number of NaN and infinite values among the batch's gradients.
int64_t count_nonfinite_grads(const Batch& batch);

// How many threads a call of `total` elements uses (at most get_num_threads()).
int threads_for(int64_t total);

}  // namespace cpu
}  // namespace fusedopt
