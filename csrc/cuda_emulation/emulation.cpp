// The host emulation's runtime: the block runner behind emulation.h, the CUDA runtime calls
// of cuda_runtime_api.h, and cuda/device.h (the real one, device.cpp, asks a driver).
#include "emulation.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda/device.h"
#include "cuda_emulation/controls.h"
#include "cuda_runtime_api.h"

namespace fusedopt {
namespace cuda {
namespace emulation {

thread_local Dim3 thread_index;
Dim3 block_index, grid_dim, block_dim;

namespace {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// A warp operation that some lane never reaches would wait forever on the device too; here
// it is reported. Generous, because the machine running the tests may be busy.
constexpr auto kHangTimeout = std::chrono::seconds(60);
// One block of the largest test tensors takes well under a second.
constexpr auto kBlockTimeout = std::chrono::seconds(600);

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fusedopt CUDA emulation: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

// The rendezvous of one warp's 32 lanes, with the words they exchange.
class Warp {
 public:
  void sync() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == kWarpSize) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, kHangTimeout, [&] { return generation_ != generation; }))
      fail("a warp-synchronous operation was not reached by all 32 lanes (the kernel would hang)");
  }

  uint64_t slot[kWarpSize] = {};

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  unsigned arrived_ = 0;
  uint64_t generation_ = 0;
};

// Worker threads, one per thread of a block, kept across launches; one block at a time.
class Device {
 public:
  void run(int64_t grid, int threads, uintptr_t stream, const std::function<void()>& body) {
    if (grid < 1 || threads < 1 || threads % kWarpSize != 0 || threads > 1024)
      throw std::invalid_argument("emulated launch: bad grid or block size");
    std::lock_guard<std::mutex> one_launch(launch_mutex_);
    if (owner_ != getpid()) {  // a forked child inherits the pool's count, not its threads
      workers_ = 0;
      owner_ = getpid();
    }
    grow(static_cast<unsigned>(threads));
    grid_dim = Dim3{static_cast<unsigned>(grid), 1, 1};
    block_dim = Dim3{static_cast<unsigned>(threads), 1, 1};
    for (int64_t b = 0; b < grid; ++b) {
      std::unique_lock<std::mutex> lock(mutex_);
      block_index = Dim3{static_cast<unsigned>(b), 0, 0};
      body_ = &body;
      active_ = remaining_ = static_cast<unsigned>(threads);
      ++generation_;
      start_.notify_all();
      if (!done_.wait_for(lock, kBlockTimeout, [&] { return remaining_ == 0; }))
        fail("a block did not finish (a kernel loops forever, or waits for a lane that exited)");
    }
    record_launch(grid, threads, stream);
  }

  Warp& warp_of(unsigned thread) { return *warps_[thread / kWarpSize]; }

 private:
  void grow(unsigned threads) {
    while (warps_.size() * kWarpSize < threads) warps_.push_back(std::make_unique<Warp>());
    std::lock_guard<std::mutex> lock(mutex_);
    for (; workers_ < threads; ++workers_) {
      // Never joined: the workers wait for blocks until the process ends.
      std::thread([this, index = workers_, seen = generation_] { work(index, seen); }).detach();
    }
  }

  void work(unsigned index, uint64_t seen) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_) continue;
      const std::function<void()>* body = body_;
      lock.unlock();
      thread_index = Dim3{index, 0, 0};
      (*body)();
      lock.lock();
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex launch_mutex_;
  pid_t owner_ = getpid();
  std::mutex mutex_;
  std::condition_variable start_, done_;
  unsigned workers_ = 0;  // threads started; worker i runs thread i of every block
  std::vector<std::unique_ptr<Warp>> warps_;
  const std::function<void()>* body_ = nullptr;
  uint64_t generation_ = 0;
  unsigned active_ = 0, remaining_ = 0;
};

Device& device() {
  static Device* d = new Device();  // never destroyed: its workers outlive static teardown
  return *d;
}

std::mutex config_mutex;
DeviceShape shape{4, 2};
std::vector<LaunchRecord> launches;
std::atomic<bool> lookup_streams{false};

void check_mask(unsigned mask) {
  if (mask != kFullMask) fail("a warp operation with a partial lane mask (not used by fusedopt)");
}

}  // namespace

void run_grid(int64_t grid, int threads, cudaStream_t stream, const std::function<void()>& body) {
  device().run(grid, threads, reinterpret_cast<uintptr_t>(stream), body);
}

void check_width(int width) {
  if (width != static_cast<int>(kWarpSize)) fail("a shuffle with width != 32 (not used by fusedopt)");
}

void warp_sync(unsigned mask) {
  check_mask(mask);
  device().warp_of(thread_index.x).sync();
}

uint64_t warp_exchange(unsigned mask, uint64_t mine, int src) {
  check_mask(mask);
  Warp& warp = device().warp_of(thread_index.x);
  warp.slot[thread_index.x % kWarpSize] = mine;
  warp.sync();
  const uint64_t theirs = warp.slot[src];
  warp.sync();  // nobody overwrites a slot before every lane has read
  return theirs;
}

DeviceShape set_device_shape(DeviceShape s) {
  if (s.multiprocessors < 1 || s.blocks_per_multiprocessor < 1)
    throw std::invalid_argument("the emulated device needs at least one block on one multiprocessor");
  std::lock_guard<std::mutex> lock(config_mutex);
  return std::exchange(shape, s);
}

DeviceShape device_shape() {
  std::lock_guard<std::mutex> lock(config_mutex);
  return shape;
}

void record_launch(int64_t grid, int threads, uintptr_t stream) {
  std::lock_guard<std::mutex> lock(config_mutex);
  launches.push_back({grid, threads, stream});
}

std::vector<LaunchRecord> take_launches() {
  std::lock_guard<std::mutex> lock(config_mutex);
  return std::exchange(launches, {});
}

bool set_stream_lookup(bool on) { return lookup_streams.exchange(on); }

}  // namespace emulation

// --- cuda/device.h -------------------------------------------------------------------------

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(status));
}

std::string unavailable_reason() { return std::string(); }

int sm_count() { return emulation::device_shape().multiprocessors; }

long long max_resident_blocks(const void*, int) {
  const emulation::DeviceShape s = emulation::device_shape();
  return static_cast<long long>(s.multiprocessors) * s.blocks_per_multiprocessor;
}

bool use_current_stream() { return emulation::lookup_streams.load(); }

std::string runtime_version() { return "host emulation"; }
std::string driver_version() { return "none"; }

DeviceGuard::DeviceGuard(int) {}
DeviceGuard::~DeviceGuard() = default;

// Scratch starts as all-ones bytes (a NaN in every double), so a kernel that reads scratch
// it never wrote gives NaN instead of a lucky zero. Exactly `bytes` long (malloc aligns
// for doubles), so that under ASan a read past its end is a report.
StreamScratch::StreamScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
  ptr_ = std::malloc(bytes > 0 ? bytes : 1);
  if (ptr_ == nullptr) throw std::bad_alloc();
  std::memset(ptr_, 0xff, bytes);
}

StreamScratch::~StreamScratch() { std::free(ptr_); }

}  // namespace cuda
}  // namespace fusedopt

// --- cuda_runtime_api.h --------------------------------------------------------------------

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) { return cudaGetErrorName(error); }
cudaError_t cudaGetLastError() { return cudaSuccess; }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int) {
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "fusedopt host emulation");
  prop->multiProcessorCount = fusedopt::cuda::sm_count();
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* ptr) {
  attributes->type = cudaMemoryTypeDevice;
  attributes->device = 0;
  attributes->devicePointer = const_cast<void*>(ptr);
  attributes->hostPointer = nullptr;
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t) {
  std::memset(dst, value, count);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
