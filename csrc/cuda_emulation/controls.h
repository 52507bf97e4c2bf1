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
};

DeviceShape set_device_shape(DeviceShape shape);  // returns the previous shape
DeviceShape device_shape();
void record_launch(int64_t grid, int threads);
std::vector<LaunchRecord> take_launches();  // the launches since the last call

}  // namespace emulation
}  // namespace cuda
}  // namespace fusedopt
