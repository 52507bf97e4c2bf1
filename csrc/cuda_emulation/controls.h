// What the tests can set and read on the emulated device (module_emulated.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace fusedopt {
namespace cuda {
namespace emulation {

// The grid limit of persistent kernels is multiprocessors * blocks_per_multiprocessor, the
// way cuda/device.h sizes it on a GPU. Small shapes make every block walk many chunks.
struct DeviceShape {
  int multiprocessors;
  int blocks_per_multiprocessor;
};

struct LaunchRecord {
  int64_t grid;
  int threads;
  uintptr_t stream;  // the cudaStream_t it was queued on
};

DeviceShape set_device_shape(DeviceShape shape);  // returns the previous shape
DeviceShape device_shape();
void record_launch(int64_t grid, int threads, uintptr_t stream);
std::vector<LaunchRecord> take_launches();  // the launches since the last call

// Whether the bindings look up the current stream (torch's or CuPy's, bindings/register_cuda.cpp)
// as on a GPU: what cuda/device.h's use_current_stream() answers. Off by default: the
// emulation runs everything at once, and neither a CPU build of torch nor CuPy without a
// driver can say what its current stream is; the tests of the lookup turn it on with
// stand-ins for both.
bool set_stream_lookup(bool on);  // returns the previous setting

}  // namespace emulation
}  // namespace cuda
}  // namespace fusedopt
