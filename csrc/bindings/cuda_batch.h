// Turns lists of device arrays (CuPy arrays, or anything with __cuda_array_interface__)
// into a Batch of device pointers, in one of two ways:
//
// * the constructor, for arrays fusedopt/_arrays.py has checked already: it re-asserts
//   what memory safety rests on (sizes, element size, contiguity, one device), so a direct
//   call into the private module cannot write out of bounds, and throws if that fails;
// * build_strict(), the fast path of the public API for CuPy arrays and torch CUDA tensors,
//   like the CPU module's
//   (csrc/bindings/batch_from_python.h): prepare()'s rules applied in C++, answering false
//   (without a reason) where prepare() must run and word the error.
//
// A DeviceBatch keeps references to its arrays, so one built once and kept (a prepared
// call, as bench/gpu_bench.py makes) stays valid across steps at no per-step cost.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

#include "bindings/reader.h"
#include "common/batch.h"
#include "common/overlap.h"

namespace fusedopt {
namespace cuda {

namespace py = pybind11;

class DeviceBatch {
 public:
  DeviceBatch() { reset(); }  // no tensors
  // params, grads: sequences of arrays; states: a sequence of such sequences (role-major).
  // layout: how the states are shaped (bindings/reader.h; the factored rules' own).
  // masters: the call's master weights of form `master` (common/batch.h: Master), or None.
  DeviceBatch(py::handle params, py::handle grads, py::handle states,
              bindings::StateLayout layout = bindings::StateLayout::kSame, py::handle masters = py::none(),
              Master master = Master::kNone);
  // Gradients only (norms, non-finite counts): nothing is written.
  static DeviceBatch grads_only(py::handle grads);
  // batch_ points into the vectors below; a move keeps their buffers, a copy would not.
  DeviceBatch(const DeviceBatch&) = delete;
  DeviceBatch& operator=(const DeviceBatch&) = delete;
  DeviceBatch(DeviceBatch&&) = default;
  DeviceBatch& operator=(DeviceBatch&&) = default;

  // True if every array is a cupy.ndarray, torch.Tensor or torch.nn.Parameter (exactly
  // those types; a torch tensor on a GPU, without the negative bit) and the call obeys the
  // rules of _arrays.prepare(): params, grads and each of `states` a list or tuple of
  // arrays of one length, or each one array (a one-tensor call); dtypes as the reader
  // allows them (bindings/reader.h: storage_allows); equal shapes per tensor; C-contiguous; aligned to the element size; one
  // device; no written array (param or state) sharing memory with another array. CuPy
  // arrays and torch tensors are always writable. False leaves this batch empty (no
  // tensors, no references).
  bool build_strict(py::handle params, py::handle grads, py::handle states);
  // build_strict() with the reader's refusal (Rule::kDeviceCall for host arrays).
  bindings::Refusal read_for_run(py::handle params, py::handle grads, py::handle states,
                                 bindings::StateLayout layout = bindings::StateLayout::kSame);

  // New gradients for a batch that build_strict() made (an optimizer's params and states,
  // read once): true if `grads` (a list or tuple of such arrays, one per param) passes
  // the same rules against the held arrays, and then they replace the old ones; false,
  // with the batch unchanged, if not. The held arrays' shapes are read again (CuPy can set
  // a shape in place), and a held torch tensor is checked in full again (.data =, set_(),
  // t_() and the like change it in place) and must still point at the held memory; the
  // rest of what was checked cannot change: a CuPy array's pointer, size, dtype and
  // device are fixed.
  bool set_grads(py::handle grads);

  // Lets go of the gradients (their references and pointers) and of the torch storages, so
  // that a Batch kept between steps keeps neither the last step's gradients nor memory a
  // held tensor has since let go of (.data =) alive; a launch then needs set_grads()
  // first. Launched work is ordered on its stream, as CuPy orders the reuse of freed memory.
  void drop_grads();
  bool has_grads() const { return has_grads_; }

  const Batch& batch() const { return batch_; }
  // The GPU of the arrays: from the arrays themselves (CuPy says), else asked of the driver
  // on first use (so that building a batch, and checking it, needs no device).
  int device() const;
  int n_states() const { return n_states_; }
  bindings::StateLayout layout() const { return layout_; }
  // Whether build_strict() took torch tensors for the params: the call then runs on torch's
  // current stream (bindings/register_cuda.cpp: resolve_stream).
  bool torch_params() const { return torch_params_; }

 private:
  // The reader's verdict; on acceptance this batch holds the call.
  bindings::Refusal read(py::handle params, py::handle grads, py::handle states,
                         py::handle masters = py::none(), Master master = Master::kNone);
  void adopt(bindings::ReadCall&& call);
  void adopt_or_throw(const bindings::Refusal& refusal);
  void reset();
  uintptr_t bytes(int role, int64_t elements) const {
    const int itemsize = itemsize_of(static_cast<int>(batch_.dtypes[role]));
    return static_cast<uintptr_t>(elements) * static_cast<uintptr_t>(itemsize);
  }

  Batch batch_;
  std::vector<int64_t> offsets_;
  std::vector<int64_t> factor_dims_;  // the factored layout's rows and columns per tensor
  bindings::StateLayout layout_ = bindings::StateLayout::kSame;
  std::vector<void*> ptrs_[kMaxRoles];
  std::vector<py::object> keep_[kMaxRoles];  // the arrays, alive while their pointers are used
  std::vector<void*> master_ptrs_;           // Batch::masters, and their arrays
  std::vector<py::object> master_keep_;
  // The storages of the torch tensors, from build_strict() or set_grads() to drop_grads():
  // the memory stays allocated even if a tensor object is pointed elsewhere (.data =) in
  // between. (Not if the storage itself is resized: that is a race the caller owns.)
  std::vector<py::object> memory_, grad_memory_;
  std::vector<py::object> held_;  // what the reader held: the lists' tuples, the first storages
  std::vector<ByteSpan> written_;  // build_strict(): written arrays' bytes, sorted and disjoint
  bool strict_ = false;            // built by build_strict()
  bool has_grads_ = true;          // false after drop_grads(), until set_grads()
  bool torch_params_ = false;
  bool on_device_ = false;
  mutable bool check_devices_ = false;  // some array did not say its GPU: device() asks
  mutable int device_ = -1;
  int n_states_ = 0;
};

}  // namespace cuda
}  // namespace fusedopt
