// Side-by-side sweep of the CPU loop's software-prefetch parameters (kPrefetchBlock,
// kPrefetchAhead in csrc/cpu/kernels_isa.cpp), which the Python harness cannot vary: they
// are compile-time constants. A float32 rule (Adam, or Adagrad with one state) and the
// traffic loop with the same streams run over the same arrays in interleaved rounds for
// every (block, distance) pair, and each line prints the median GB/s with the 10th-90th
// percentile spread.
//
//   FLAGS="-std=c++17 -O3 -ffp-contract=off -fno-fast-math -fno-math-errno -mavx2 -mfma
//          -mavx512f -mavx512vl -mavx512bw -mavx512dq -mprefer-vector-width=512"
//   g++ $FLAGS -Icsrc bench/prefetch_sweep.cpp -o /tmp/prefetch_sweep -pthread
//   /tmp/prefetch_sweep 24 2 15            # 2^24 elements, 2 threads, 15 rounds, Adam
//   /tmp/prefetch_sweep 24 2 15 adagrad    # the same for Adagrad (param, grad, one state)
//
// The loop below is the shape of run_piece() there, with the rule from csrc/math.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "math/adagrad.h"
#include "math/adam.h"
#include "math/traffic.h"

using namespace fusedopt::math;

namespace {

template <class Rule>
inline void run_elems(const Rule& rule, float* __restrict p, const float* __restrict g,
                      float* __restrict s0, float* __restrict s1, int64_t lo, int64_t hi) {
  constexpr int N = Rule::kNumStates;
  for (int64_t i = lo; i < hi; ++i) {
    float pv = p[i];
    float st[2] = {s0[i], N > 1 ? s1[i] : 0.0f};
    rule(pv, g[i], st);
    p[i] = pv;
    s0[i] = st[0];
    if constexpr (N > 1) s1[i] = st[1];
  }
}

template <int kAhead, int kBlock, class Rule>
__attribute__((noinline)) void run(const Rule& rule, float* __restrict p, const float* __restrict g,
                                   float* __restrict s0, float* __restrict s1, int64_t n) {
  constexpr int N = Rule::kNumStates;
  constexpr int64_t B = kBlock / 4, D = kAhead / 4, L = 16;
  int64_t i = 0;
  if constexpr (kAhead > 0) {
    for (; i + D + B <= n; i += B) {
      for (int64_t k = i + D; k < i + D + B; k += L) {
        __builtin_prefetch(p + k, 1, 3);
        __builtin_prefetch(g + k, 0, 3);
        __builtin_prefetch(s0 + k, 1, 3);
        if constexpr (N > 1) __builtin_prefetch(s1 + k, 1, 3);
      }
      run_elems(rule, p, g, s0, s1, i, i + B);
    }
  }
  run_elems(rule, p, g, s0, s1, i, n);
}

struct Arrays {
  float *p, *g, *m, *v;
  int64_t n;
};

template <int kAhead, int kBlock, class Rule>
double seconds(const Rule& rule, const Arrays& a, int threads) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  const int64_t chunk = (a.n / threads + 63) / 64 * 64;
  for (int t = 0; t < threads; ++t) {
    const int64_t lo = std::min(a.n, t * chunk), hi = std::min(a.n, lo + chunk);
    pool.emplace_back([=, &rule] { run<kAhead, kBlock>(rule, a.p + lo, a.g + lo, a.m + lo, a.v + lo, hi - lo); });
  }
  for (auto& t : pool) t.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Variant {
  std::string name;
  std::function<double()> time;
  std::vector<double> s;
};

template <int kAhead, int kBlock, class Rule, class Traffic>
void add(std::vector<Variant>& out, const char* name, const Rule& rule, const Traffic& traffic,
         const Arrays& a, int threads) {
  const std::string at = " ahead " + std::to_string(kAhead) + " block " + std::to_string(kBlock);
  out.push_back({std::string("traffic") + at, [=] { return seconds<kAhead, kBlock>(traffic, a, threads); }, {}});
  out.push_back({std::string(name) + at, [=] { return seconds<kAhead, kBlock>(rule, a, threads); }, {}});
}

template <class Rule, class Traffic>
std::vector<Variant> variants(const char* name, const Rule& rule, const Traffic& traffic,
                              const Arrays& a, int threads) {
  std::vector<Variant> vs;
  add<0, 256>(vs, name, rule, traffic, a, threads);  // no software prefetch
  add<1024, 256>(vs, name, rule, traffic, a, threads);
  add<2048, 64>(vs, name, rule, traffic, a, threads);
  add<2048, 128>(vs, name, rule, traffic, a, threads);
  add<2048, 256>(vs, name, rule, traffic, a, threads);
  add<2048, 512>(vs, name, rule, traffic, a, threads);
  add<2048, 1024>(vs, name, rule, traffic, a, threads);
  add<3072, 256>(vs, name, rule, traffic, a, threads);
  add<4096, 256>(vs, name, rule, traffic, a, threads);
  add<8192, 256>(vs, name, rule, traffic, a, threads);
  return vs;
}

}  // namespace

int main(int argc, char** argv) {
  const int log2n = argc > 1 ? std::atoi(argv[1]) : 24;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 15;
  Arrays a;
  a.n = int64_t(1) << log2n;
  auto alloc = [&](float base) {
    auto* x = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(a.n) * 4));
    for (int64_t i = 0; i < a.n; ++i) x[i] = base + static_cast<float>(i % 7) * 1e-3f;
    return x;
  };
  a.p = alloc(1.0f);
  a.g = alloc(0.01f);
  a.m = alloc(0.0f);
  a.v = alloc(0.001f);
  // Values drift by the traffic loop's adds (g to p and the states); they stay finite.
  const std::string rule = argc > 4 ? argv[4] : "adam";
  const AdamRule<float, false, WeightDecay::kNone, false> adam{{0.9f, 0.1f, 0.999f, 0.001f, 1e-3f, 1.0f, 1e-8f, 0.0f, 1.0f}};
  const AdagradRule<float, false, WeightDecay::kNone> adagrad{{1e-3f, 0.0f, 1e-10f}};
  std::vector<Variant> vs;
  double bytes_per_element;
  if (rule == "adagrad") {
    vs = variants("adagrad", adagrad, TrafficRule<float, 1>{}, a, threads);
    bytes_per_element = 20.0;
  } else if (rule == "adam") {
    vs = variants("adam   ", adam, TrafficRule<float, 2>{}, a, threads);
    bytes_per_element = 28.0;
  } else {
    std::fprintf(stderr, "rule must be adam or adagrad\n");
    return 2;
  }
  for (auto& v : vs) v.time();  // warm-up
  for (int r = 0; r < rounds; ++r)
    for (auto& v : vs) v.s.push_back(v.time());
  const double bytes = bytes_per_element * static_cast<double>(a.n);
  std::printf("float32 %s, 2^%d elements, %d threads, %d rounds: median GB/s (p10-p90)\n", rule.c_str(),
              log2n, threads, rounds);
  for (auto& v : vs) {
    std::sort(v.s.begin(), v.s.end());
    const size_t k = v.s.size();
    std::printf("%-32s %6.1f (%5.1f-%5.1f)\n", v.name.c_str(), bytes / v.s[k / 2] / 1e9,
                bytes / v.s[(k * 9) / 10 < k ? (k * 9) / 10 : k - 1] / 1e9, bytes / v.s[k / 10] / 1e9);
  }
}
