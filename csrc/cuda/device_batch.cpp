#include "cuda/device_batch.h"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "cuda/device.h"

namespace fusedopt {
namespace cuda {
namespace {

const char* kRoleNames[kMaxRoles] = {"param", "grad", "state 0", "state 1", "state 2"};

struct ArrayFacts {
  uintptr_t ptr = 0;
  int64_t size = 0;
  int itemsize = 0;
  bool contiguous = false;
  int device = -1;  // -1: not known from the object itself
};

int itemsize_of(int dtype_code) {
  switch (static_cast<DType>(dtype_code)) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(dtype_code));
}

// CuPy arrays: plain attribute reads, about 0.1 us each. The interface dict of other
// objects is built anew on every access, so it is the fallback, not the rule.
bool read_cupy(py::handle h, ArrayFacts& f) {
  if (!py::hasattr(h, "data")) return false;
  py::object data = h.attr("data");
  if (!py::hasattr(data, "ptr") || !py::hasattr(data, "device_id")) return false;
  f.ptr = data.attr("ptr").cast<uintptr_t>();
  f.device = data.attr("device_id").cast<int>();
  f.size = h.attr("size").cast<int64_t>();
  f.itemsize = h.attr("itemsize").cast<int>();
  f.contiguous = h.attr("flags").attr("c_contiguous").cast<bool>();
  return true;
}

void read_interface(py::handle h, ArrayFacts& f) {
  if (!py::hasattr(h, "__cuda_array_interface__"))
    throw std::invalid_argument("is not a CUDA device array (no __cuda_array_interface__)");
  py::dict cai = h.attr("__cuda_array_interface__");
  f.ptr = py::cast<py::tuple>(cai["data"])[0].cast<uintptr_t>();
  const auto typestr = cai["typestr"].cast<std::string>();
  f.itemsize = std::stoi(typestr.substr(2));
  f.size = 1;
  std::vector<int64_t> shape;
  for (py::handle d : py::cast<py::tuple>(cai["shape"])) {
    shape.push_back(d.cast<int64_t>());
    f.size *= shape.back();
  }
  f.contiguous = true;
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    auto strides = py::cast<py::tuple>(cai["strides"]);
    int64_t expected = f.itemsize;
    for (size_t k = shape.size(); k-- > 0;) {
      if (shape[k] != 1 && strides[k].cast<int64_t>() != expected) f.contiguous = false;
      expected *= shape[k];
    }
  }
}

ArrayFacts read_array(py::handle h) {
  ArrayFacts f;
  if (!read_cupy(h, f)) read_interface(h, f);
  return f;
}

int pointer_device(uintptr_t ptr) {
  cudaPointerAttributes attributes;
  check(cudaPointerGetAttributes(&attributes, reinterpret_cast<const void*>(ptr)),
        "cudaPointerGetAttributes");
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    throw std::invalid_argument("array memory is not device memory");
  return attributes.device;
}

}  // namespace

DeviceBatch::DeviceBatch(const py::sequence& params, const py::sequence& grads,
                         const py::sequence& states, int dtype_code) {
  itemsize_ = itemsize_of(dtype_code);
  batch_.dtype = static_cast<DType>(dtype_code);
  n_states_ = static_cast<int>(py::len(states));
  if (n_states_ > kMaxStates) throw std::invalid_argument("too many state roles");
  const size_t n = py::len(params);
  offsets_.assign(n + 1, 0);
  batch_.n_tensors = static_cast<int64_t>(n);
  batch_.offsets = offsets_.data();
  add_role(kParam, params);
  add_role(kGrad, grads);
  for (int k = 0; k < n_states_; ++k)
    add_role(kState0 + k, py::reinterpret_borrow<py::sequence>(states[static_cast<size_t>(k)]));
}

int DeviceBatch::device() const {
  for (int64_t t = 0; t < batch_.n_tensors && device_ < 0; ++t)
    if (batch_.size(t) > 0) device_ = pointer_device(reinterpret_cast<uintptr_t>(ptrs_[kParam][t]));
  return device_ < 0 ? 0 : device_;
}

void DeviceBatch::add_role(int role, const py::sequence& arrays) {
  const size_t n = static_cast<size_t>(batch_.n_tensors);
  const std::string name = kRoleNames[role];
  if (static_cast<size_t>(py::len(arrays)) != n)
    throw std::invalid_argument(name + " list length differs from params");
  std::vector<void*>& ptrs = ptrs_[role];
  ptrs.resize(n);
  for (size_t t = 0; t < n; ++t) {
    py::object h = arrays[t];
    ArrayFacts f;
    try {
      f = read_array(h);
    } catch (const py::error_already_set&) {
      throw std::invalid_argument(name + " " + std::to_string(t) + " is not a readable device array");
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(name + " " + std::to_string(t) + " " + e.what());
    }
    if (role == kParam) offsets_[t + 1] = offsets_[t] + f.size;
    if (f.size != batch_.size(static_cast<int64_t>(t)) || f.itemsize != itemsize_ || !f.contiguous)
      throw std::invalid_argument(name + " " + std::to_string(t) +
                                  " does not match its param (size, dtype or contiguity)");
    if (f.size > 0 && f.ptr == 0)
      throw std::invalid_argument(name + " " + std::to_string(t) + " has a null data pointer");
    if (f.device >= 0) {
      if (device_ >= 0 && f.device != device_)
        throw std::invalid_argument(name + " " + std::to_string(t) + " is on GPU " +
                                    std::to_string(f.device) + " but the call's arrays are on GPU " +
                                    std::to_string(device_));
      device_ = f.device;
    }
    ptrs[t] = reinterpret_cast<void*>(f.ptr);
    keep_.push_back(std::move(h));
  }
  batch_.ptrs[role] = ptrs.data();
}

}  // namespace cuda
}  // namespace fusedopt
