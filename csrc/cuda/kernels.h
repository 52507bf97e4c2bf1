// The CUDA kernels' host entry points. Arguments arrive checked (fusedopt/_arrays.py, then
// the bindings re-assert sizes and element size); every call only queues work on `stream`
// and returns: nothing here waits for the device.
#pragma once

#include <cuda_runtime_api.h>

#include "common/batch.h"
#include "common/steps.h"

namespace fusedopt {
namespace cuda {

// Coefficients that a kernel reads from device memory instead of its parameters: the rule's
// double coefficients in the order of its math::*Coeffs struct, then `skip` (nonzero: the
// kernel writes nothing). A step whose rate is computed on the device (adaptive SGD) uses
// this, and so does capturable Adam, whose entry select_coeffs copies from a table before
// each update, so that a step captured in a CUDA graph replays with its own coefficients.
template <class C>
struct DeviceCoeffs {
  C c;
  double skip;
};

// device_coeffs: a DeviceCoeffs<math::XCoeffs<double>> in device memory, or null to use the
// coefficients of `step`. The flags of `step` choose the kernel either way.
// One per rule of FUSEDOPT_FOR_EACH_STEP, each defined in its own kernels_<rule>.cu.
#define FUSEDOPT_DECLARE_UPDATE(Step, ...) \
  void update(const Step& step, const Batch& batch, cudaStream_t stream, const void* device_coeffs);
FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_DECLARE_UPDATE)
// And one per rule of FUSEDOPT_FOR_EACH_TRUST_STEP (trust.cu): its two passes and the
// per-tensor factors between them, queued; device_coeffs must be null.
FUSEDOPT_FOR_EACH_TRUST_STEP(FUSEDOPT_DECLARE_UPDATE)
#undef FUSEDOPT_DECLARE_UPDATE
void traffic(const TrafficStep& step, const Batch& batch, cudaStream_t stream);
// The factored rules (FUSEDOPT_FOR_EACH_FACTORED_STEP), on a batch read with the factored
// state layout: their passes tensor by tensor (adafactor.cu).
#define FUSEDOPT_DECLARE_FACTORED(Step, ...) void update(const Step& step, const Batch& batch, cudaStream_t stream);
FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_DECLARE_FACTORED)
#undef FUSEDOPT_DECLARE_FACTORED

// The sum of squares of the batch's grads, by the fixed blocking of math/sumsq.h, written to
// *out in device memory.
void grad_sum_of_squares(const Batch& batch, double* out, cudaStream_t stream);

// Adaptive-rate SGD without leaving the device: the norm, then lr_t = lr0 / (1 + sumsq) and
// decay_factor = 1 - lr_t * weight_decay in double (the same operations as
// fusedopt/_coeffs.py), then the update reading them from device memory. result[0] = lr_t,
// result[1] = sumsq. A NaN gradient gives a NaN rate that propagates, as on the host.
void adaptive_sgd(const SgdStep& base, const Batch& batch, double* result, cudaStream_t stream);

// A step whose coefficients come from the device, for a CUDA graph to replay
// (coeff_schedule.cu): `table` holds n_entries DeviceCoeffs of a rule (entry_doubles doubles
// each), the coefficients of steps 1, 2, ..., n_entries, the last one also those of every
// later step. Advances the step count at *step by one and copies the new step's entry to
// `out`, the update's device_coeffs; if `nonfinite` is not null and the count there is not 0,
// sets out's skip word instead and leaves the step count.
void select_coeffs(const double* table, int64_t n_entries, int entry_doubles, int64_t* step,
                   const unsigned long long* nonfinite, double* out, cudaStream_t stream);

// How many gradient values are NaN or infinite, into *out in device memory.
void count_nonfinite(const Batch& batch, unsigned long long* out, cudaStream_t stream);

// Any kernel of this module, for asking the runtime whether the device can load our code.
const void* probe_kernel();

// Slots per launch of an update kernel touching n_roles arrays per tensor (2..5), of the
// norm kernel, and the bytes of their kernel parameters.
int update_capacity(int n_roles);
int update_param_bytes(int n_roles);
int norm_capacity();
int norm_param_bytes();

constexpr int kThreads = 256;  // per block, every kernel
constexpr int kUnroll = 2;     // 16-byte vectors per role in flight per thread

}  // namespace cuda
}  // namespace fusedopt
