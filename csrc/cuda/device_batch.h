// Turns lists of device arrays (CuPy arrays, or anything with __cuda_array_interface__)
// into a Batch of device pointers. fusedopt/_arrays.py has checked the arrays already; this
// re-asserts what memory safety rests on (sizes, element size, contiguity, one device), so a
// direct call into the private module cannot write out of bounds.
//
// A DeviceBatch keeps references to its arrays, so one built once and kept (a prepared
// call, as bench/gpu_bench.py makes) stays valid across steps at no per-step cost.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

#include "common/batch.h"

namespace fusedopt {
namespace cuda {

namespace py = pybind11;

class DeviceBatch {
 public:
  // params, grads: sequences of arrays; states: a sequence of such sequences (role-major).
  DeviceBatch(const py::sequence& params, const py::sequence& grads, const py::sequence& states,
              int dtype_code);
  // batch_ points into the vectors below; a move keeps their buffers, a copy would not.
  DeviceBatch(const DeviceBatch&) = delete;
  DeviceBatch& operator=(const DeviceBatch&) = delete;
  DeviceBatch(DeviceBatch&&) = default;
  DeviceBatch& operator=(DeviceBatch&&) = default;

  const Batch& batch() const { return batch_; }
  // The GPU of the arrays: from the arrays themselves (CuPy says), else asked of the driver
  // on first use (so that building a batch, and checking it, needs no device).
  int device() const;
  int n_states() const { return n_states_; }

 private:
  void add_role(int role, const py::sequence& arrays);

  Batch batch_;
  std::vector<int64_t> offsets_;
  std::vector<void*> ptrs_[kMaxRoles];
  std::vector<py::object> keep_;  // the arrays, alive as long as the pointers are used
  int itemsize_ = 0;
  mutable int device_ = -1;
  int n_states_ = 0;
};

}  // namespace cuda
}  // namespace fusedopt
