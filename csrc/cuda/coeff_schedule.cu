// Per-step coefficients that a CUDA graph can replay: the host computes a rule's
// coefficients for every step once, into a table in device memory (fusedopt/_coeffs.py,
// the one place they are computed); before each update, one thread advances the step count
// held on the device and copies that step's entry to where the update kernel reads its
// device_coeffs. Nothing per step is left on the host, so a captured step replays with the
// coefficients of the step it is, and no pow or division happens on the device.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/launch.cuh"

namespace fusedopt {
namespace cuda {
namespace {

struct SelectArgs {
  const double* table;
  int64_t n_entries;
  int entry_doubles;  // a DeviceCoeffs: the rule's coefficients, then the skip word
  int64_t* step;
  const unsigned long long* nonfinite;  // or null
  double* out;
};

__global__ void select_coeffs_kernel(SelectArgs a) {
  if (threadIdx.x != 0) return;  // launches are whole warps (launch.cuh); one thread works
  double* skip = a.out + (a.entry_doubles - 1);
  if (a.nonfinite != nullptr && *a.nonfinite != 0) {
    *skip = 1.0;  // the update writes nothing, and the step does not count
    return;
  }
  const int64_t step = *a.step + 1;
  *a.step = step;
  const int64_t row = (step < a.n_entries ? step : a.n_entries) - 1;
  const double* entry = a.table + row * a.entry_doubles;
  for (int k = 0; k < a.entry_doubles; ++k) a.out[k] = entry[k];
}

}  // namespace

void select_coeffs(const double* table, int64_t n_entries, int entry_doubles, int64_t* step,
                   const unsigned long long* nonfinite, double* out, cudaStream_t stream) {
  launch_kernel(select_coeffs_kernel, 1, 32, stream, "launching the coefficient selection",
                SelectArgs{table, n_entries, entry_doubles, step, nonfinite, out});
}

}  // namespace cuda
}  // namespace fusedopt
