// Adafactor on the device (math/adafactor.h): the passes of cpu/driver.cpp, in the same
// units and with the same order of additions, so the results have the CPU's bits.
//
// A tensor at a time, one launch per pass on the stream; the per-tensor numbers (alpha,
// then alpha / denom) are computed on the device by one thread from the partial sums, so
// nothing waits for the host. Sums of squares take a warp per norm block (lane j adds
// elements j, j+32, ... in order, math::combine_lanes combines the lanes), a row's sum a
// warp per row (its blocks added in order), a column's sum a thread per column (rows in
// order), the factors a thread per matrix.
//
// Storage: every role is read and written through a switch on its dtype (role_storage.cuh),
// the factors read back as stored, as the CPU's passes do.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/flag_dispatch.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/launch.cuh"
#include "cuda/plan.h"
#include "cuda/role_storage.cuh"
#include "math/adafactor.h"
#include "math/sumsq.h"

namespace fusedopt {
namespace cuda {
namespace {

constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGrid = 4096;  // blocks per launch; every kernel strides over the rest

// One tensor of the call and its scratch (device memory), as every kernel sees it; T is
// the compute type.
template <class T>
struct Tensor {
  // By the roles of common/batch.h: param, grad, row_var, col_var (matrices), variance
  // (others); null where the tensor keeps no such state.
  void* ptr[kMaxRoles];
  DType dtypes[kMaxRoles];
  uint32_t stochastic_roles;  // Batch::stochastic_roles and rounding_key (math/storage.h)
  uint32_t rounding_key[2];
  int64_t index;          // the tensor's place in the call (the stochastic rounding's key)
  int64_t n, rows, cols;  // rows = cols = 0: not factored
  double* blocks;         // a partial sum per norm block
  double* row_sums;       // per row of every matrix
  double* col_sums;       // per column of every matrix
  double* row_means;      // per matrix: the clamped mean of its row factor
  double* scalars;        // [0] alpha, [1] alpha / denom

  __device__ T load(int r, int64_t i) const { return load_as<T>(ptr[r], dtypes[r], i); }
  __device__ void store(int r, int64_t i, T x) const {
    store_rounded_as<T>(ptr[r], dtypes[r], i, x, r, stochastic_roles, rounding_key, index);
  }
};

// The update of element e (math/adafactor.h, pass 3), from the states after pass 2.
template <class Rule, class T>
__device__ T update_at(const Rule& rule, const Tensor<T>& x, int64_t e) {
  if (x.rows == 0) return rule.update(rule.grad(x.load(kGrad, e)), x.load(kState2, e));
  const int64_t row = e / x.cols, j = e - row * x.cols, b = row / x.rows;
  const T r = x.load(kState0, row);
  const T c = rule.column_scaled(x.load(kState1, b * x.cols + j), static_cast<T>(x.row_means[b]));
  return rule.factored_update(rule.grad(x.load(kGrad, e)), r, Rule::inverse_root(r), c, Rule::inverse_root(c));
}

// A warp's sum of squares of f(lo + i), i < len, in the lanes of math/sumsq.h (lane 0 gets it).
template <class F>
__device__ double warp_sumsq(double (*lanes)[math::kNormLanes], int warp, int lane, int64_t len, F f) {
  double acc = 0.0;
  for (int64_t i = lane; i < len; i += 32) acc = acc + math::square_as_double(f(i));
  lanes[warp][lane] = acc;
  __syncwarp();
  double out = 0.0;
  if (lane == 0) out = math::combine_lanes(lanes[warp]);
  __syncwarp();
  return out;
}

// kUpdate false: pass 1, the param's squares; true: pass 3, the update's. A warp per block.
template <class Rule, class T, bool kUpdate>
__global__ void __launch_bounds__(kThreads) block_sumsq_kernel(const Rule rule, const Tensor<T> x,
                                                               int64_t n_blocks) {
  __shared__ double lanes[kWarps][math::kNormLanes];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t k = int64_t{blockIdx.x} * kWarps + warp; k < n_blocks; k += int64_t{gridDim.x} * kWarps) {
    const int64_t lo = k * math::kNormBlock;
    const int64_t len = (x.n - lo < math::kNormBlock) ? x.n - lo : math::kNormBlock;
    const double sum = warp_sumsq(lanes, warp, lane, len, [&](int64_t i) {
      if constexpr (kUpdate) return update_at(rule, x, lo + i);
      else return x.load(kParam, lo + i);
    });
    if (lane == 0) x.blocks[k] = sum;
  }
}

// A warp per row: its blocks of math/sumsq.h, added in order.
template <class T>
__global__ void __launch_bounds__(kThreads) row_sums_kernel(const Tensor<T> x, int64_t n_rows) {
  __shared__ double lanes[kWarps][math::kNormLanes];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t r = int64_t{blockIdx.x} * kWarps + warp; r < n_rows; r += int64_t{gridDim.x} * kWarps) {
    const int64_t first = r * x.cols;
    double sum = 0.0;
    for (int64_t lo = 0; lo < x.cols; lo += math::kNormBlock) {
      const int64_t len = (x.cols - lo < math::kNormBlock) ? x.cols - lo : math::kNormBlock;
      const double block =
          warp_sumsq(lanes, warp, lane, len, [&](int64_t i) { return x.load(kGrad, first + lo + i); });
      sum = sum + block;
    }
    if (lane == 0) x.row_sums[r] = sum;
  }
}

// A thread per column (b * cols + j), its rows in order.
template <class T>
__global__ void __launch_bounds__(kThreads) col_sums_kernel(const Tensor<T> x, int64_t n_cols) {
  const int64_t stride = int64_t{gridDim.x} * kThreads;
  for (int64_t u = int64_t{blockIdx.x} * kThreads + threadIdx.x; u < n_cols; u += stride) {
    const int64_t b = u / x.cols, j = u - b * x.cols;
    double acc = 0.0;
    for (int64_t i = 0; i < x.rows; ++i)
      acc = acc + math::square_as_double(x.load(kGrad, (b * x.rows + i) * x.cols + j));
    x.col_sums[u] = acc;
  }
}

// Pass 2: a thread per matrix (the factors and the row mean), or per element (variance).
template <class Rule, class T>
__global__ void __launch_bounds__(kThreads)
    moments_kernel(const Rule rule, const Tensor<T> x, int64_t units) {
  const int64_t stride = int64_t{gridDim.x} * kThreads;
  for (int64_t u = int64_t{blockIdx.x} * kThreads + threadIdx.x; u < units; u += stride) {
    if (x.rows == 0) {
      const T gv = rule.grad(x.load(kGrad, u));
      x.store(kState2, u, rule.moment(x.load(kState2, u), gv * gv));
      continue;
    }
    double sum = 0.0;  // of the row factor as stored
    for (int64_t i = u * x.rows; i < (u + 1) * x.rows; ++i) {
      const T mean_square = static_cast<T>(x.row_sums[i] / static_cast<double>(x.cols));
      x.store(kState0, i, rule.moment(x.load(kState0, i), mean_square));
      sum = sum + static_cast<double>(x.load(kState0, i));
    }
    for (int64_t j = u * x.cols; j < (u + 1) * x.cols; ++j) {
      const T mean_square = static_cast<T>(x.col_sums[j] / static_cast<double>(x.rows));
      x.store(kState1, j, rule.moment(x.load(kState1, j), mean_square));
    }
    x.row_means[u] = static_cast<double>(rule.row_mean(sum, x.rows));
  }
}

// One thread: the block sums in order, then alpha (kScale false) or alpha / denom (true).
template <class T, bool kScale>
__global__ void finish_kernel(const Tensor<T> x, int64_t n_blocks, math::AdafactorCoeffs<double> c) {
  if (threadIdx.x != 0) return;
  double sum = 0.0;
  for (int64_t k = 0; k < n_blocks; ++k) sum = sum + x.blocks[k];
  if (kScale) x.scalars[1] = x.scalars[0] / math::adafactor_denom(c.d, sum, x.n);
  else x.scalars[0] = math::adafactor_alpha(c.eps2, c.rho, sum, x.n);
}

template <class Rule, class T>
__global__ void __launch_bounds__(kThreads) apply_kernel(const Rule rule, const Tensor<T> x) {
  const T scale = static_cast<T>(x.scalars[1]);
  for (int64_t e = int64_t{blockIdx.x} * kThreads + threadIdx.x; e < x.n; e += int64_t{gridDim.x} * kThreads)
    x.store(kParam, e, rule.apply(x.load(kParam, e), update_at(rule, x, e), scale));
}

int64_t grid_for(int64_t units, int64_t per_block) {
  const int64_t blocks = ceil_div(units, per_block);
  return blocks < kMaxGrid ? blocks : kMaxGrid;
}

template <class Rule, class T>
void run_tensor(const Rule& rule, const math::AdafactorCoeffs<double>& c, Tensor<T> x, cudaStream_t stream) {
  const int64_t n_blocks = ceil_div(x.n, math::kNormBlock);
  const int64_t matrices = x.rows > 0 ? x.n / (x.rows * x.cols) : 0;
  const int64_t doubles = n_blocks + matrices * (x.rows + x.cols + 1) + 2;
  StreamScratch scratch(static_cast<size_t>(doubles) * sizeof(double), stream);
  double* d = static_cast<double*>(scratch.get());
  x.blocks = d;
  x.row_sums = d + n_blocks;
  x.col_sums = x.row_sums + matrices * x.rows;
  x.row_means = x.col_sums + matrices * x.cols;
  x.scalars = x.row_means + matrices;
  const char* what = "launching an Adafactor kernel";
  const int64_t block_grid = grid_for(n_blocks, kWarps);
  launch_kernel(block_sumsq_kernel<Rule, T, false>, block_grid, kThreads, stream, what, rule, x, n_blocks);
  launch_kernel(finish_kernel<T, false>, 1, 32, stream, what, x, n_blocks, c);
  if (matrices > 0) {
    launch_kernel(row_sums_kernel<T>, grid_for(matrices * x.rows, kWarps), kThreads, stream, what, x,
                  matrices * x.rows);
    launch_kernel(col_sums_kernel<T>, grid_for(matrices * x.cols, kThreads), kThreads, stream, what, x,
                  matrices * x.cols);
  }
  const int64_t units = matrices > 0 ? matrices : x.n;
  launch_kernel(moments_kernel<Rule, T>, grid_for(units, kThreads), kThreads, stream, what, rule, x, units);
  launch_kernel(block_sumsq_kernel<Rule, T, true>, block_grid, kThreads, stream, what, rule, x, n_blocks);
  launch_kernel(finish_kernel<T, true>, 1, 32, stream, what, x, n_blocks, c);
  launch_kernel(apply_kernel<Rule, T>, grid_for(x.n, kThreads), kThreads, stream, what, rule, x);
}

}  // namespace

void update(const AdafactorStep& step, const Batch& b, cudaStream_t stream) {
  with_rule(step, b.compute_dtype(), [&](auto rule, auto compute) {
    using Rule = typename decltype(rule)::type;
    using T = typename decltype(compute)::type;
    const Rule r(step.c);
    for (int64_t t = 0; t < b.n_tensors; ++t) {
      if (b.size(t) == 0) continue;
      Tensor<T> x{};
      for (int role = 0; role < kMaxRoles; ++role) {
        x.ptr[role] = b.ptrs[role][t];
        x.dtypes[role] = b.dtypes[role];
      }
      x.stochastic_roles = b.stochastic_roles;
      x.rounding_key[0] = b.rounding_key[0];
      x.rounding_key[1] = b.rounding_key[1];
      x.index = t;
      x.n = b.size(t);
      x.rows = b.factor_dims[2 * t];
      x.cols = b.factor_dims[2 * t + 1];
      run_tensor(r, step.c, x, stream);
    }
  });
}

}  // namespace cuda
}  // namespace fusedopt
