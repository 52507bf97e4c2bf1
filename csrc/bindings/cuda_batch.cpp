#include "bindings/cuda_batch.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings/reader.h"
#include "common/overlap.h"
#include "cuda/device.h"

namespace fusedopt {
namespace cuda {
namespace {

int pointer_device(uintptr_t ptr) {
  cudaPointerAttributes attributes;
  check(cudaPointerGetAttributes(&attributes, reinterpret_cast<const void*>(ptr)),
        "cudaPointerGetAttributes");
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    throw std::invalid_argument("array memory is not device memory");
  return attributes.device;
}

}  // namespace

DeviceBatch::DeviceBatch(py::handle params, py::handle grads, py::handle states,
                         bindings::StateLayout layout, py::handle masters, Master master) {
  reset();
  layout_ = layout;
  adopt_or_throw(read(params, grads, states, masters, master));
}

DeviceBatch DeviceBatch::grads_only(py::handle grads) {
  DeviceBatch b;
  bindings::ReadCall call;
  const bindings::Refusal refusal = bindings::read_grads(grads, bindings::module_read_options(), call);
  if (!refusal) b.adopt(std::move(call));
  b.adopt_or_throw(refusal);
  return b;
}

void DeviceBatch::adopt_or_throw(const bindings::Refusal& refusal) {
  if (refusal)
    throw std::invalid_argument("the arrays were refused: " + py::str(refusal.to_python()).cast<std::string>());
  if (batch_.n_tensors > 0 && !on_device_) throw std::invalid_argument("the arrays are not device arrays");
}

int DeviceBatch::device() const {
  for (int64_t t = 0; t < batch_.n_tensors && device_ < 0; ++t)
    if (batch_.size(t) > 0) device_ = pointer_device(reinterpret_cast<uintptr_t>(ptrs_[kParam][t]));
  if (check_devices_) {
    // Arrays that did not say their GPU: the driver says, once, before the first launch.
    check_devices_ = false;
    for (int r = 0; r < 2 + n_states_; ++r)
      for (int64_t t = 0; t < batch_.n_tensors; ++t)
        if (batch_.size(t) > 0 && !ptrs_[r].empty() && ptrs_[r][static_cast<size_t>(t)] != nullptr) {
          const int d = pointer_device(reinterpret_cast<uintptr_t>(ptrs_[r][static_cast<size_t>(t)]));
          if (device_ >= 0 && d != device_)
            throw std::invalid_argument("the arrays of one call are on GPUs " + std::to_string(device_) +
                                        " and " + std::to_string(d));
        }
  }
  return device_ < 0 ? 0 : device_;
}

void DeviceBatch::reset() {
  batch_ = Batch();
  factor_dims_.clear();
  layout_ = bindings::StateLayout::kSame;
  offsets_.assign(1, 0);  // a valid batch of no tensors
  batch_.offsets = offsets_.data();
  for (auto& p : ptrs_) p.clear();
  for (auto& k : keep_) k.clear();
  master_ptrs_.clear();
  master_keep_.clear();
  held_.clear();
  memory_.clear();
  grad_memory_.clear();
  written_.clear();
  strict_ = false;
  has_grads_ = true;
  torch_params_ = false;
  on_device_ = false;
  device_ = -1;
  check_devices_ = false;
  n_states_ = 0;
}

bindings::Refusal DeviceBatch::read(py::handle params, py::handle grads, py::handle states,
                                     py::handle masters, Master master) {
  bindings::ReadCall call;
  bindings::ReadOptions options = bindings::module_read_options();
  options.layout = layout_;
  options.master = master;
  const bindings::Refusal refusal = bindings::read_call(params, grads, states, options, call, masters);
  if (!refusal) adopt(std::move(call));
  return refusal;
}

void DeviceBatch::adopt(bindings::ReadCall&& call) {
  const auto n = static_cast<size_t>(call.n_tensors);
  for (int r = 0; r < kMaxRoles; ++r) batch_.dtypes[r] = call.dtypes[r];
  offsets_ = std::move(call.offsets);
  factor_dims_ = std::move(call.factor_dims);
  batch_.factor_dims = factor_dims_.empty() ? nullptr : factor_dims_.data();
  n_states_ = call.n_roles - 2;
  for (int r = 0; r < kMaxRoles; ++r) {
    if (call.ptrs[r].empty() && r >= call.n_roles) continue;
    ptrs_[r] = std::move(call.ptrs[r]);
    keep_[r].reserve(n);
    for (PyObject* o : call.items[r]) keep_[r].push_back(py::reinterpret_borrow<py::object>(o));
  }
  batch_.master = call.master;
  if (call.master != Master::kNone) {
    master_ptrs_ = std::move(call.ptrs[bindings::kMasterSlot]);
    for (PyObject* o : call.items[bindings::kMasterSlot]) master_keep_.push_back(py::reinterpret_borrow<py::object>(o));
    batch_.masters = master_ptrs_.data();
  }
  held_ = std::move(call.held);  // the params' and states' lists (as tuples)
  memory_ = std::move(call.memory);  // their torch storages, until drop_grads()
  grad_memory_ = std::move(call.grad_held);  // the grads' list and storages, until drop_grads()
  check_devices_ = call.device_unknown;
  // A __cuda_array_interface__ producer's stream: its work on the arrays finishes first,
  // as CuPy waits for it when it takes such an array.
  for (uintptr_t stream : call.streams)
    check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
  device_ = call.device;
  torch_params_ = call.torch_params;
  on_device_ = call.on_device;
  batch_.n_tensors = call.n_tensors;
  batch_.offsets = offsets_.data();
  for (int r = 0; r < call.n_roles; ++r) batch_.ptrs[r] = ptrs_[r].data();
  has_grads_ = call.has_grads;
  // The written arrays' bytes, sorted and disjoint (the reader refused any overlap), for
  // set_grads() to check new gradients against (a strict batch's: never a factored one, whose
  // states have other sizes than their params).
  for (int r = 0; r < call.n_roles && layout_ == bindings::StateLayout::kSame; ++r) {
    if (r == kGrad) continue;
    for (size_t t = 0; t < n; ++t)
      if (batch_.size(static_cast<int64_t>(t)) > 0) {
        const auto lo = reinterpret_cast<uintptr_t>(ptrs_[r][t]);
        written_.push_back({lo, lo + bytes(r, batch_.size(static_cast<int64_t>(t))), written_.size(), true});
      }
  }
  std::sort(written_.begin(), written_.end(), [](const ByteSpan& a, const ByteSpan& b) { return a.lo < b.lo; });
}

bindings::Refusal DeviceBatch::read_for_run(py::handle params, py::handle grads, py::handle states,
                                             bindings::StateLayout layout) {
  reset();
  layout_ = layout;
  bindings::Refusal refusal = read(params, grads, states);
  if (!refusal && !on_device_ && batch_.n_tensors > 0) refusal = {bindings::Rule::kDeviceCall, 0, 0};
  if (refusal) {
    reset();
    return refusal;
  }
  strict_ = true;
  return refusal;
}

bool DeviceBatch::build_strict(py::handle params, py::handle grads, py::handle states) {
  return !read_for_run(params, grads, states);
}

bool DeviceBatch::set_grads(py::handle grads) {
  if (!strict_) return false;
  const bindings::ArrayKinds kinds;
  const bindings::ReadOptions& options = bindings::module_read_options();
  const auto n = static_cast<Py_ssize_t>(batch_.n_tensors);
  if (!PyList_Check(grads.ptr()) && !PyTuple_Check(grads.ptr())) return false;
  // A tuple of our own: the caller's list could change while we read it.
  py::tuple items = py::reinterpret_steal<py::tuple>(PySequence_Tuple(grads.ptr()));
  if (!items) throw py::error_already_set();
  if (static_cast<Py_ssize_t>(items.size()) != n) return false;
  std::vector<void*> ptrs(static_cast<size_t>(n));
  std::vector<py::object> keep(static_cast<size_t>(n)), memory, held_memory;
  bindings::ArrayItem param, held, grad;
  for (Py_ssize_t t = 0; t < n; ++t) {
    const size_t i = static_cast<size_t>(t);
    // What the held arrays can change between steps is read again: the shape (CuPy and
    // torch set shapes in place, and a step must refuse what the reader would), and a torch
    // tensor's memory (.data = and set_() swap it). Any change: false, and the caller
    // reads the whole call again.
    for (int r = 0; r < 2 + n_states_; ++r) {
      if (r == kGrad) continue;
      bindings::ArrayItem& a = r == kParam ? param : held;
      PyObject* o = keep_[r][i].ptr();
      if (!kinds.is_torch(o) && !bindings::ArrayKinds::is_cupy(o) && kinds.known.kind(o) != bindings::Kind::kCupy) {
        // Any other device array can point itself at other memory between steps, and says
        // nothing we could compare: the caller reads the whole call again.
        return false;
      }
      if (kinds.is_torch(o)) {
        // A torch tensor can be re-pointed, re-typed or restrided in place: every rule
        // again, on the memory the Batch holds.
        if (bindings::read_array(o, kinds, options, a) != bindings::Rule::kNone ||
            a.dtype != static_cast<int>(batch_.dtypes[r]) ||
            !a.contiguous || !a.on_device || a.ptr != reinterpret_cast<uintptr_t>(ptrs_[r][i]) ||
            a.count != batch_.size(t) || (a.device >= 0 && device_ >= 0 && a.device != device_))
          return false;
        held_memory.push_back(std::move(a.memory));
      } else if (!bindings::read_array_shape(o, a)) {
        return false;
      }
      if (r != kParam && !a.same_shape(param)) return false;
    }
    PyObject* g = PyTuple_GET_ITEM(items.ptr(), t);
    if (bindings::read_array(g, kinds, options, grad) != bindings::Rule::kNone ||
        grad.dtype != static_cast<int>(batch_.dtypes[kGrad]) ||
        !grad.same_shape(param) || !grad.contiguous || !grad.on_device || grad.count != batch_.size(t) ||
        grad.device < 0 || grad.stream != 0 ||  // a bare interface: the whole call is read again
        (device_ >= 0 && grad.device != device_) ||
        (grad.count > 0 &&
         (grad.ptr == 0 || grad.ptr % static_cast<uintptr_t>(itemsize_of(grad.dtype)) != 0)))
      return false;
    if (grad.count > 0) {
      // The written spans are sorted and disjoint, so their ends ascend too: the first one
      // ending after this gradient starts is the only one that can overlap it.
      const uintptr_t lo = grad.ptr, hi = grad.ptr + bytes(kGrad, grad.count);
      const auto it = std::upper_bound(written_.begin(), written_.end(), lo,
                                       [](uintptr_t v, const ByteSpan& s) { return v < s.hi; });
      if (it != written_.end() && it->lo < hi) return false;
    }
    ptrs[i] = reinterpret_cast<void*>(grad.ptr);
    keep[i] = py::reinterpret_borrow<py::object>(g);
    if (grad.memory) memory.push_back(std::move(grad.memory));
  }
  ptrs_[kGrad].swap(ptrs);
  keep_[kGrad].swap(keep);
  grad_memory_.swap(memory);
  memory_.swap(held_memory);
  batch_.ptrs[kGrad] = ptrs_[kGrad].data();
  has_grads_ = true;
  return true;
}

void DeviceBatch::drop_grads() {
  keep_[kGrad].clear();
  grad_memory_.clear();
  memory_.clear();  // set_grads() takes the held tensors' storages again
  ptrs_[kGrad].assign(ptrs_[kGrad].size(), nullptr);
  has_grads_ = false;
}

}  // namespace cuda
}  // namespace fusedopt
