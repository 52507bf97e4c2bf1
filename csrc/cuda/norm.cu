// Reductions over the gradients on the device: the sum of squares behind the global norm,
// in the fixed blocking of math/sumsq.h, and the count of non-finite values.
//
// The norm has the CPU's bits because it is the CPU's order, not an approximation of it:
// one warp per norm block of 65536 elements, lane j summing elements j, j+32, ... of the
// block in order in double (math::square_as_double), then the lanes combined by
// math::combine_lanes itself, and the block sums added one after another in call order by
// a single warp. Work is spread over the blocks of the grid, never over the order of adds.
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "common/flag_dispatch.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/launch.cuh"
#include "cuda/plan.h"
#include "math/sumsq.h"

namespace fusedopt {
namespace cuda {
namespace {

constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

struct ReduceParams {
  TensorTable<1, table_capacity(1)> table;
  void* out;             // double partials[call's norm blocks], or unsigned long long count
  int64_t chunk_offset;  // call-wide index of this launch's chunk 0
  int64_t n_chunks;
  int32_t n_slots;
};
static_assert(sizeof(ReduceParams) <= kParamLimit, "kernel parameters exceed the parameter space");

template <class S>
__global__ void __launch_bounds__(kThreads) block_sumsq_kernel(const __grid_constant__ ReduceParams P) {
  __shared__ double lanes[kWarps][math::kNormLanes];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double* partials = static_cast<double*>(P.out);
  for (int64_t c = int64_t{blockIdx.x} * kWarps + warp; c < P.n_chunks;
       c += int64_t{gridDim.x} * kWarps) {
    const int slot = locate(P.table.chunk_start, P.n_slots, c);
    const int64_t lo = (c - P.table.chunk_start[slot]) * math::kNormBlock;
    const int64_t left = P.table.size[slot] - lo;
    const int len = static_cast<int>(left < math::kNormBlock ? left : math::kNormBlock);
    const S* x = static_cast<const S*>(P.table.ptr[0][slot]) + lo;
    double acc = 0.0;
#pragma unroll 8
    for (int i = lane; i < len; i += 32) acc = acc + math::square_as_double(x[i]);
    lanes[warp][lane] = acc;
    __syncwarp();
    if (lane == 0) partials[P.chunk_offset + c] = math::combine_lanes(lanes[warp]);
    __syncwarp();
  }
}

template <class S>
__global__ void __launch_bounds__(kThreads) count_nonfinite_kernel(const __grid_constant__ ReduceParams P) {
  unsigned long long count = 0;
  for (int64_t c = blockIdx.x; c < P.n_chunks; c += gridDim.x) {
    const int slot = locate(P.table.chunk_start, P.n_slots, c);
    const int64_t lo = (c - P.table.chunk_start[slot]) * math::kNormBlock;
    const int64_t left = P.table.size[slot] - lo;
    const int len = static_cast<int>(left < math::kNormBlock ? left : math::kNormBlock);
    const S* x = static_cast<const S*>(P.table.ptr[0][slot]) + lo;
    for (int i = threadIdx.x; i < len; i += kThreads) count += isfinite(math::widen(x[i])) ? 0 : 1;
  }
  for (int width = 16; width >= 1; width /= 2) count += __shfl_down_sync(kFullMask, count, width);
  if (threadIdx.x % 32 == 0 && count != 0)
    atomicAdd(static_cast<unsigned long long*>(P.out), count);
}

struct FinishArgs {
  const double* partials;
  int64_t n_blocks;
  double* sum_out;                               // the sum of squares
  DeviceCoeffs<math::SgdCoeffs<double>>* sgd_out;  // adaptive SGD's coefficients, or null
  math::SgdCoeffs<double> base;                  // ... computed from these (lr = lr0)
  double* lr_out;                                // adaptive SGD's rate, or null
};

// One warp. Every lane keeps the same running total, adding the block sums one at a time
// in call order; the lanes only share the loads.
__global__ void finish_kernel(FinishArgs a) {
  const int lane = threadIdx.x;
  double total = 0.0;
  for (int64_t base = 0; base < a.n_blocks; base += 32) {
    const double mine = (base + lane < a.n_blocks) ? a.partials[base + lane] : 0.0;
    const int count = (a.n_blocks - base < 32) ? static_cast<int>(a.n_blocks - base) : 32;
    for (int j = 0; j < count; ++j) total = total + __shfl_sync(kFullMask, mine, j);
  }
  if (lane != 0) return;
  *a.sum_out = total;
  if (a.sgd_out == nullptr) return;
  // fusedopt/_coeffs.py, in double, with each operation rounded as Python rounds it:
  // lr_t = lr0 / (1 + sumsq); decay_factor = 1 - lr_t * weight_decay.
  const double lr = __ddiv_rn(a.base.lr, __dadd_rn(1.0, total));
  DeviceCoeffs<math::SgdCoeffs<double>> out;
  out.c = a.base;
  out.c.lr = lr;
  out.c.decay_factor = __dadd_rn(1.0, -__dmul_rn(lr, a.base.weight_decay));
  // A NaN gradient makes the rate NaN; like the host path, the step still runs and the NaN
  // propagates (skipping is the caller's choice: skip_if_nonfinite).
  out.skip = 0.0;
  *a.sgd_out = out;
  *a.lr_out = lr;
}

int64_t norm_blocks(const Batch& b) {
  int64_t blocks = 0;
  for (int64_t t = 0; t < b.n_tensors; ++t) blocks += chunk_count(b.size(t), kScalarOnly, math::kNormBlock);
  return blocks;
}

// Queues one launch per table of grads. chunks_per_block: norm blocks a CUDA block takes
// at once (a warp each for the sum of squares, the whole block for the count).
template <class Kernel>
void launch_reduce(Kernel kernel, const Batch& b, void* out, int chunks_per_block, cudaStream_t stream) {
  std::vector<int64_t> sizes(static_cast<size_t>(b.n_tensors));
  for (int64_t t = 0; t < b.n_tensors; ++t) sizes[t] = b.size(t);
  const long long max_grid = max_resident_blocks(reinterpret_cast<const void*>(kernel), kThreads);
  const auto plans = plan_launches(sizes.data(), nullptr, b.n_tensors, math::kNormBlock,
                                   table_capacity(1), max_grid * chunks_per_block);
  ReduceParams params{};
  params.out = out;
  for (const LaunchPlan& plan : plans) {
    const int slots = static_cast<int>(plan.tensors.size());
    params.n_slots = slots;
    params.n_chunks = plan.n_chunks();
    params.chunk_offset = plan.chunk_offset;
    for (int s = 0; s < slots; ++s) {
      const int64_t t = plan.tensors[s];
      params.table.ptr[0][s] = b.ptrs[kGrad][t];
      params.table.size[s] = sizes[t];
      params.table.head[s] = kScalarOnly;
      params.table.chunk_start[s] = plan.chunk_start[s];
    }
    params.table.chunk_start[slots] = plan.chunk_start[slots];
    const int64_t grid = ceil_div(plan.grid, chunks_per_block);
    launch_kernel(kernel, grid, kThreads, stream, "launching a reduction kernel", params);
  }
}

void queue_block_sums(const Batch& b, double* partials, cudaStream_t stream) {
  with_storage(b.dtypes[kGrad], [&](auto st) {
    using S = decltype(st);
    launch_reduce(block_sumsq_kernel<S>, b, partials, kWarps, stream);
  });
}

void queue_finish(const FinishArgs& args, cudaStream_t stream) {
  launch_kernel(finish_kernel, 1, 32, stream, "launching the norm's final sum", args);
}

constexpr size_t kCoeffsBytes = 128;  // room for the adaptive coefficients ahead of the partials
static_assert(sizeof(DeviceCoeffs<math::SgdCoeffs<double>>) <= kCoeffsBytes, "scratch layout");

}  // namespace

void grad_sum_of_squares(const Batch& b, double* out, cudaStream_t stream) {
  const int64_t n_blocks = norm_blocks(b);
  StreamScratch scratch(static_cast<size_t>(n_blocks > 0 ? n_blocks : 1) * sizeof(double), stream);
  double* partials = static_cast<double*>(scratch.get());
  queue_block_sums(b, partials, stream);
  queue_finish({partials, n_blocks, out, nullptr, {}, nullptr}, stream);
}

void adaptive_sgd(const SgdStep& base, const Batch& b, double* result, cudaStream_t stream) {
  const int64_t n_blocks = norm_blocks(b);
  StreamScratch scratch(kCoeffsBytes + static_cast<size_t>(n_blocks) * sizeof(double), stream);
  auto* coeffs = static_cast<DeviceCoeffs<math::SgdCoeffs<double>>*>(scratch.get());
  double* partials = reinterpret_cast<double*>(static_cast<char*>(scratch.get()) + kCoeffsBytes);
  queue_block_sums(b, partials, stream);
  queue_finish({partials, n_blocks, result + 1, coeffs, base.c, result}, stream);
  update(base, b, stream, coeffs);
}

void count_nonfinite(const Batch& b, unsigned long long* out, cudaStream_t stream) {
  check(cudaMemsetAsync(out, 0, sizeof(*out), stream), "cudaMemsetAsync");
  with_storage(b.dtypes[kGrad], [&](auto st) {
    using S = decltype(st);
    launch_reduce(count_nonfinite_kernel<S>, b, out, 1, stream);
  });
}

const void* probe_kernel() { return reinterpret_cast<const void*>(finish_kernel); }

int norm_capacity() { return table_capacity(1); }
int norm_param_bytes() { return static_cast<int>(sizeof(ReduceParams)); }

}  // namespace cuda
}  // namespace fusedopt
