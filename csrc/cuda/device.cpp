#include "cuda/device.h"

#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "cuda/kernels.h"

namespace fusedopt {
namespace cuda {
namespace {

std::string version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

// Driver and device count: read once. The statically linked runtime loads libcuda.so.1
// only here, so importing the module never touches the driver.
const std::string& global_reason() {
  static const std::string reason = [] {
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) {
      cudaGetLastError();
      return std::string("no CUDA driver (libcuda.so.1 not found)");
    }
    if (driver / 1000 < CUDART_VERSION / 1000) {
      return "the CUDA driver supports CUDA " + version_string(driver) +
             ", older than the CUDA " + version_string(CUDART_VERSION) +
             " runtime this module was built with; update the driver";
    }
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0)) {
      cudaGetLastError();
      return std::string("no CUDA device");
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      return std::string("CUDA could not start: ") + cudaGetErrorString(status);
    }
    return std::string();
  }();
  return reason;
}

int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

std::string device_reason(int device) {
  // The definitive test that this build has code the device can run: ask the runtime to
  // load a kernel (a cubin for the device's architecture, or PTX the driver can compile).
  cudaFuncAttributes attributes;
  const cudaError_t status = cudaFuncGetAttributes(&attributes, probe_kernel());
  if (status == cudaSuccess) return std::string();
  cudaGetLastError();
  cudaDeviceProp prop;
  std::string name = "unknown", arch = "unknown";
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
    name = prop.name;
    arch = "sm_" + std::to_string(prop.major) + std::to_string(prop.minor);
  }
  cudaGetLastError();
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction ||
      status == cudaErrorUnsupportedPtxVersion) {
    return "GPU " + std::to_string(device) + " (" + name + ", " + arch +
           ") is not supported by this build (CUDA architectures " FUSEDOPT_CUDA_ARCHS_STR
           "); rebuild with FUSEDOPT_CUDA_ARCHS naming it";
  }
  return "GPU " + std::to_string(device) + " (" + name + ") cannot run kernels: " +
         cudaGetErrorString(status);
}

template <class Key, class Value, class Make>
Value cached(std::map<Key, Value>& cache, std::mutex& mutex, const Key& key, Make&& make) {
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  Value value = make();
  std::lock_guard<std::mutex> lock(mutex);
  cache.emplace(key, value);
  return value;
}

bool pools_supported(int device) {
  static std::mutex mutex;
  static std::map<int, bool> cache;
  return cached(cache, mutex, device, [device] {
    int supported = 0;
    if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
      cudaGetLastError();
      supported = 0;
    }
    return supported != 0;
  });
}

}  // namespace

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(status) +
                             " (" + cudaGetErrorString(status) + ")");
  }
}

std::string unavailable_reason() {
  const std::string& reason = global_reason();
  if (!reason.empty()) return reason;
  static std::mutex mutex;
  static std::map<int, std::string> cache;
  const int device = current_device();
  return cached(cache, mutex, device, [device] { return device_reason(device); });
}

int sm_count() {
  static std::mutex mutex;
  static std::map<int, int> cache;
  const int device = current_device();
  return cached(cache, mutex, device, [device] {
    int count = 0;
    check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
          "cudaDeviceGetAttribute(multiprocessors)");
    return count;
  });
}

long long max_resident_blocks(const void* kernel, int threads) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, long long> cache;
  const int device = current_device();
  return cached(cache, mutex, std::make_pair(kernel, device), [&] {
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return static_cast<long long>(per_sm > 0 ? per_sm : 1) * sm_count();
  });
}

bool use_current_stream() { return true; }

std::string runtime_version() { return version_string(CUDART_VERSION); }

std::string driver_version() {
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) cudaGetLastError();
  return driver ? version_string(driver) : std::string("none");
}

DeviceGuard::DeviceGuard(int device) {
  const int now = current_device();
  if (now != device) {
    check(cudaSetDevice(device), "cudaSetDevice");
    previous_ = now;
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

StreamScratch::StreamScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
  pooled_ = pools_supported(current_device());
  if (pooled_) {
    check(cudaMallocAsync(&ptr_, bytes, stream), "cudaMallocAsync");
  } else {
    check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
}

StreamScratch::~StreamScratch() {
  if (ptr_ == nullptr) return;
  if (pooled_) {
    cudaFreeAsync(ptr_, stream_);
  } else {
    cudaStreamSynchronize(stream_);
    cudaFree(ptr_);
  }
}

}  // namespace cuda
}  // namespace fusedopt
