// Host-side CUDA runtime helpers shared by the launchers and the bindings: error checks,
// device facts (cached), availability, and stream-ordered scratch memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace fusedopt {
namespace cuda {

// Throws std::runtime_error naming the call when a CUDA runtime call fails.
void check(cudaError_t status, const char* what);

// Why kernels cannot run on the current device, or "" if they can. The driver and device
// count are read once; the per-device answer is cached.
std::string unavailable_reason();

// Multiprocessors of the current device (cached per device).
int sm_count();

// Blocks of `kernel` with `threads` threads that fit on the whole current device at once:
// the grid of a persistent kernel (cached per kernel and device).
long long max_resident_blocks(const void* kernel, int threads);

// Whether a call that names no stream runs on the current stream of its arrays' library
// (register_cuda.cpp: resolve_stream) rather than on the null stream. True on a GPU.
bool use_current_stream();

// The runtime version this module was built against and the driver's, as "major.minor".
std::string runtime_version();
std::string driver_version();

// Sets the current device for the scope and restores the previous one after, so that a call
// on arrays of GPU 1 leaves the caller's current device as it was.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Device scratch memory ordered on a stream: allocated with cudaMallocAsync and freed with
// cudaFreeAsync after the work queued on the stream, so nothing waits for the device (and a
// captured step stays capturable). Devices without memory pools fall back to cudaMalloc
// and a stream synchronisation before the free.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t stream);
  ~StreamScratch();
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
  bool pooled_ = true;
};

}  // namespace cuda
}  // namespace fusedopt
