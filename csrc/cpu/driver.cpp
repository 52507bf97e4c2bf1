#include "cpu/driver.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "common/flag_dispatch.h"
#include "cpu/dispatch.h"
#include "cpu/ranges.h"
#include "cpu/thread_pool.h"
#include "math/sumsq.h"

namespace fusedopt {
namespace cpu {
namespace {

// Below this many elements per thread a call runs on the calling thread alone: handing a
// range to another thread costs a few microseconds, about what 32K elements of Adam take.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 15;
template <class Step>
void run_split(void (*fn)(const Step&, const Batch&, int64_t, int64_t), const Step& step,
               const Batch& batch) {
  const int64_t total = batch.total();
  if (total == 0) return;
  const int n = threads_for(total);
  if (n == 1) {
    fn(step, batch, 0, total);
    return;
  }
  parallel_for(n, [&](int t) {
    fn(step, batch, range_start(total, t, n), range_start(total, t + 1, n));
  });
}

// Each tensor's first norm block (math/sumsq.h) in the call's list of blocks; the last
// entry is the number of blocks.
std::vector<int64_t> norm_block_offsets(const Batch& b) {
  std::vector<int64_t> block_offsets(static_cast<size_t>(b.n_tensors) + 1, 0);
  for (int64_t t = 0; t < b.n_tensors; ++t) {
    const int64_t blocks = (b.size(t) + math::kNormBlock - 1) / math::kNormBlock;
    block_offsets[t + 1] = block_offsets[t] + blocks;
  }
  return block_offsets;
}

// Runs fn(lo, hi) over equal ranges of the call's n_blocks norm blocks, one per thread.
// Each block's result goes to its own slot, so the thread count changes no bits.
template <class F>
void split_blocks(const Batch& b, int64_t n_blocks, F&& fn) {
  const int n = static_cast<int>(std::min<int64_t>(threads_for(b.total()), n_blocks));
  if (n <= 1) {
    fn(int64_t{0}, n_blocks);
    return;
  }
  parallel_for(n, [&](int t) { fn(n_blocks * t / n, n_blocks * (t + 1) / n); });
}

// A tensor of at least this many elements has each of its passes split across threads;
// smaller ones run whole on one thread each, several tensors side by side: a pass split
// across threads costs a wake-up and a wait, about as much as a pass over 2^15 elements.
// (Trust-ratio and factored rules, whose passes need a tensor's sums before they go on.)
constexpr int64_t kSplitTensor = int64_t{1} << 20;

// Sums of double partials in index order: the fixed combining order of math/sumsq.h.
double in_order(const std::vector<double>& partials) {
  double sum = 0.0;
  for (double p : partials) sum = sum + p;
  return sum;
}

}  // namespace

int threads_for(int64_t total) {
  const int64_t by_size = std::max<int64_t>(1, total / kMinElementsPerThread);
  return static_cast<int>(std::min<int64_t>(get_num_threads(), by_size));
}

template <class Step>
void update(const Step& s, const Batch& b) {
  run_split(active_table().update<Step>(), s, b);
}
#define FUSEDOPT_INSTANTIATE(Step, ...) template void update<Step>(const Step&, const Batch&);
FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_INSTANTIATE)
#undef FUSEDOPT_INSTANTIATE

void update(const TrafficStep& s, const Batch& b) { run_split(active_table().traffic, s, b); }

// Per tensor: pass 1 over its norm blocks, its factor from its block sums added in order (in
// double), pass 2 over its elements. A big tensor's passes are split across threads; smaller
// tensors run whole, each on one thread, several side by side, their pass 2 reading from
// cache what their pass 1 left there. Each block's sums and each element's update depend on
// nothing else, so the bits are the same at any thread count and either way.
//
// (Keeping pass 1's directions u in a buffer for pass 2, so that pass 2 neither reads the
// states nor divides, measured 20% slower at 2^24 and 2^27 elements: writing u adds more
// memory traffic than the division costs.)
template <class Step>
void trust_update(const Step& s, const Batch& b) {
  const std::vector<int64_t> block_offsets = norm_block_offsets(b);
  const int64_t n_blocks = block_offsets.back();
  if (n_blocks == 0) return;
  std::vector<double> partials(static_cast<size_t>(2 * n_blocks));
  std::vector<double> factors(static_cast<size_t>(b.n_tensors), 0.0);
  const auto pass1 = active_table().pass1<Step>();
  const auto pass2 = active_table().pass2<Step>();
  auto factor_of = [&](int64_t t) {
    double p_sq = 0.0, u_sq = 0.0;
    for (int64_t k = block_offsets[t]; k < block_offsets[t + 1]; ++k) {
      p_sq = p_sq + partials[2 * k];
      u_sq = u_sq + partials[2 * k + 1];
    }
    with_rule(s, DType::kFloat64, [&](auto rule, auto) {
      factors[t] = decltype(rule)::type::tensor_factor(s.c, p_sq, u_sq);
    });
  };
  auto split = [](int64_t lo, int64_t hi, auto&& fn) {
    const int threads = threads_for(hi - lo);
    if (threads <= 1) return fn(lo, hi);
    parallel_for(threads, [&](int k) {
      fn(lo + range_start(hi - lo, k, threads), lo + range_start(hi - lo, k + 1, threads));
    });
  };
  std::vector<int64_t> small;
  int64_t small_total = 0;
  for (int64_t t = 0; t < b.n_tensors; ++t) {
    const int64_t n = b.size(t);
    if (n == 0) continue;
    if (n < kSplitTensor) {
      small.push_back(t);
      small_total += n;
      continue;
    }
    const int64_t b0 = block_offsets[t], b1 = block_offsets[t + 1];
    const int threads = static_cast<int>(std::min<int64_t>(threads_for(n), b1 - b0));
    if (threads <= 1) {
      pass1(s, b, block_offsets.data(), b0, b1, partials.data());
    } else {
      parallel_for(threads, [&](int k) {
        pass1(s, b, block_offsets.data(), b0 + (b1 - b0) * k / threads, b0 + (b1 - b0) * (k + 1) / threads,
              partials.data());
      });
    }
    factor_of(t);
    split(b.offsets[t], b.offsets[t + 1],
          [&](int64_t lo, int64_t hi) { pass2(s, b, factors.data(), lo, hi); });
  }
  auto run_whole = [&](int64_t t) {
    pass1(s, b, block_offsets.data(), block_offsets[t], block_offsets[t + 1], partials.data());
    factor_of(t);
    pass2(s, b, factors.data(), b.offsets[t], b.offsets[t + 1]);
  };
  const int threads = static_cast<int>(std::min<int64_t>(threads_for(small_total),
                                                         static_cast<int64_t>(small.size())));
  if (threads <= 1) {
    for (int64_t t : small) run_whole(t);
    return;
  }
  std::atomic<size_t> next{0};
  parallel_for(threads, [&](int) {
    for (size_t i = next.fetch_add(1); i < small.size(); i = next.fetch_add(1)) run_whole(small[i]);
  });
}
#define FUSEDOPT_DEFINE_TRUST_UPDATE(Step, ...) \
  void update(const Step& s, const Batch& b) { trust_update(s, b); }
FUSEDOPT_FOR_EACH_TRUST_STEP(FUSEDOPT_DEFINE_TRUST_UPDATE)
#undef FUSEDOPT_DEFINE_TRUST_UPDATE

namespace {

// The per-tensor sums of a factored step's passes, reused from tensor to tensor.
struct FactoredScratch {
  std::vector<double> blocks, row_sums, col_sums, col_terms, row_terms;
};

// The passes of tensor t, in order (math/adafactor.h). run(pass, units, work, out) runs a
// pass's units [0, units), about `work` elements each, inline or split across threads:
// each unit's result depends on the unit alone, so the bits are the same either way.
template <class Run>
void adafactor_tensor(const AdafactorStep& s, const Batch& b, int64_t t, FactoredScratch& w, Run&& run) {
  const int64_t n = b.size(t);
  FactoredTensor x{&b, t, n, b.factor_dims[2 * t], b.factor_dims[2 * t + 1]};
  const int64_t n_blocks = (n + math::kNormBlock - 1) / math::kNormBlock;
  w.blocks.assign(static_cast<size_t>(n_blocks), 0.0);
  run(x, FactoredPass::kParamSumsq, n_blocks, math::kNormBlock, w.blocks.data());
  const double alpha = math::adafactor_alpha(s.c.eps2, s.c.rho, in_order(w.blocks), n);
  if (x.rows > 0) {
    const int64_t matrices = n / (x.rows * x.cols);
    w.row_sums.assign(static_cast<size_t>(matrices * x.rows), 0.0);
    w.col_sums.assign(static_cast<size_t>(matrices * x.cols), 0.0);
    w.col_terms.resize(static_cast<size_t>(matrices * 2 * x.cols));
    w.row_terms.resize(static_cast<size_t>(matrices * 2 * x.rows));
    x.col_terms = w.col_terms.data();
    x.row_terms = w.row_terms.data();
    run(x, FactoredPass::kRowSums, matrices * x.rows, x.cols, w.row_sums.data());
    run(x, FactoredPass::kColSums, matrices * x.cols, x.rows, w.col_sums.data());
    x.row_sums = w.row_sums.data();
    x.col_sums = w.col_sums.data();
    run(x, FactoredPass::kMoments, matrices, x.rows + x.cols, nullptr);
  } else {
    run(x, FactoredPass::kMoments, n, 1, nullptr);
  }
  run(x, FactoredPass::kUpdateSumsq, n_blocks, math::kNormBlock, w.blocks.data());
  x.scale = alpha / math::adafactor_denom(s.c.d, in_order(w.blocks), n);
  run(x, FactoredPass::kApply, n, 1, nullptr);
}

}  // namespace

void update(const AdafactorStep& s, const Batch& b) {
  const auto fn = active_table().factored<AdafactorStep>();
  const DType compute = b.compute_dtype();
  // The big tensors, one after another, each pass split across threads.
  auto split = [&](const FactoredTensor& x, FactoredPass pass, int64_t units, int64_t work, double* out) {
    const int threads = static_cast<int>(std::min<int64_t>(threads_for(units * work), units));
    if (threads <= 1) return fn(s, compute, x, pass, 0, units, out);
    parallel_for(threads, [&](int k) {
      fn(s, compute, x, pass, units * k / threads, units * (k + 1) / threads, out);
    });
  };
  auto inline_run = [&](const FactoredTensor& x, FactoredPass pass, int64_t units, int64_t, double* out) {
    fn(s, compute, x, pass, 0, units, out);
  };
  FactoredScratch scratch;
  std::vector<int64_t> small;
  int64_t small_total = 0;
  for (int64_t t = 0; t < b.n_tensors; ++t) {
    const int64_t n = b.size(t);
    if (n == 0) continue;
    if (n >= kSplitTensor) {
      adafactor_tensor(s, b, t, scratch, split);
    } else {
      small.push_back(t);
      small_total += n;
    }
  }
  // The others, whole tensors taken in turn by each thread.
  const int threads = static_cast<int>(std::min<int64_t>(threads_for(small_total),
                                                         static_cast<int64_t>(small.size())));
  if (threads <= 1) {
    for (int64_t t : small) adafactor_tensor(s, b, t, scratch, inline_run);
    return;
  }
  std::atomic<size_t> next{0};
  parallel_for(threads, [&](int) {
    FactoredScratch own;
    for (size_t i = next.fetch_add(1); i < small.size(); i = next.fetch_add(1))
      adafactor_tensor(s, b, small[i], own, inline_run);
  });
}

int64_t count_nonfinite_grads(const Batch& b) {
  const int64_t total = b.total();
  if (total == 0) return 0;
  const auto fn = active_table().count_nonfinite;
  const int n = threads_for(total);
  if (n == 1) return fn(b, 0, total);
  std::vector<int64_t> counts(static_cast<size_t>(n), 0);
  parallel_for(n, [&](int t) {
    counts[t] = fn(b, range_start(total, t, n), range_start(total, t + 1, n));
  });
  int64_t sum = 0;
  for (int64_t c : counts) sum += c;
  return sum;
}

double grad_sum_of_squares(const Batch& b) {
  const std::vector<int64_t> block_offsets = norm_block_offsets(b);
  const int64_t n_blocks = block_offsets.back();
  if (n_blocks == 0) return 0.0;
  std::vector<double> partials(static_cast<size_t>(n_blocks));
  const auto fn = active_table().sumsq_blocks;
  split_blocks(b, n_blocks,
               [&](int64_t lo, int64_t hi) { fn(b, block_offsets.data(), lo, hi, partials.data()); });
  return in_order(partials);  // block sums in call order: the fixed combining order
}

}  // namespace cpu
}  // namespace fusedopt
