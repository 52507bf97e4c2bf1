// The CUDA language features that fusedopt's kernels use, on the CPU.
//
// Why: the kernels in csrc/cuda/ are the code most likely to hide an indexing mistake
// (chunk spans, vector heads and tails, grid-stride loops, launch tables, the norm's fixed
// order), and most machines that build and test fusedopt have no GPU. Compiled against these
// headers by the host compiler, the same kernel source runs on the CPU, so the tests can
// compare it bit for bit with the CPU backend wherever the tests run.
//
// The model. A launch runs its blocks one after another; the threads of a block run
// concurrently, one OS thread each, so warp-level operations (__syncwarp, shuffles) are
// real rendezvous of the 32 lanes of a warp, and a lane that skips one is reported as a hang
// instead of passing silently. __shared__ variables become statics: correct because only
// one block of one launch runs at a time. Arithmetic is the host's IEEE arithmetic with the
// build's no-contraction flags, as --fmad=false makes the device's.
#pragma once

#include <math.h>  // isfinite in the global namespace, as device code calls it

#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#include "cuda_runtime_api.h"  // cudaStream_t

namespace fusedopt {
namespace cuda {
namespace emulation {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

extern thread_local Dim3 thread_index;
extern Dim3 block_index, grid_dim, block_dim;

// Runs `body` as each thread of each block of a grid of `grid` blocks of `threads` threads
// (a multiple of 32), blocks one after another; returns when all are done. The stream is
// only recorded (controls.h: take_launches): the emulation runs everything when queued.
void run_grid(int64_t grid, int threads, cudaStream_t stream, const std::function<void()>& body);

// The warp of the calling thread: all 32 lanes wait for each other. `mask` must name all 32
// (the kernels only use full warps).
void warp_sync(unsigned mask);

// Every lane offers `mine` and gets the value offered by lane `src` (0..31).
uint64_t warp_exchange(unsigned mask, uint64_t mine, int src);

// Shuffles over sub-warp segments (width < 32) are not emulated: the kernels use none.
void check_width(int width);

template <class T>
T shfl(unsigned mask, T value, int src) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a word");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_exchange(mask, bits, src);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

}  // namespace emulation
}  // namespace cuda
}  // namespace fusedopt

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static

#define threadIdx (::fusedopt::cuda::emulation::thread_index)
#define blockIdx (::fusedopt::cuda::emulation::block_index)
#define gridDim (::fusedopt::cuda::emulation::grid_dim)
#define blockDim (::fusedopt::cuda::emulation::block_dim)

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};

inline void __syncwarp(unsigned mask = 0xffffffffu) { ::fusedopt::cuda::emulation::warp_sync(mask); }

template <class T>
T __shfl_sync(unsigned mask, T value, int src, int width = 32) {
  ::fusedopt::cuda::emulation::check_width(width);
  return ::fusedopt::cuda::emulation::shfl(mask, value, src & 31);
}

// Lanes whose source would be past the warp keep their own value, as on the device.
template <class T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  ::fusedopt::cuda::emulation::check_width(width);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int src = lane + static_cast<int>(delta);
  return ::fusedopt::cuda::emulation::shfl(mask, value, src < 32 ? src : lane);
}

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

// The correctly rounded intrinsics are the host's own operations (no contraction: the
// build passes -ffp-contract=off).
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
