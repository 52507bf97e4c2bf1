#include "cuda/device_batch.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings/call_roles.h"
#include "bindings/array_facts.h"
#include "common/overlap.h"
#include "cuda/device.h"

namespace fusedopt {
namespace cuda {
namespace {

const char* kRoleNames[kMaxRoles] = {"param", "grad", "state 0", "state 1", "state 2"};

using bindings::ArrayFacts;
using bindings::Kind;
using bindings::names;
using bindings::read_cupy;
using bindings::read_interface;

// The types the fast path takes: cupy.ndarray, and torch tensors only where CuPy is there
// too (the checked path reaches a torch CUDA tensor's memory through CuPy, and refuses the
// tensor without it; the fast path takes only what the checked path would).
bindings::ArrayTypes imported_types() { return bindings::ArrayTypes::imported(true, true); }

// A torch tensor on a GPU (the host emulation's device memory is host memory: there CPU
// tensors stand in for CUDA ones).
bool read_torch(PyObject* o, ArrayFacts& f) {
  py::object shape = py::reinterpret_steal<py::object>(PyObject_GetAttr(o, names().shape));
  if (!shape) {
    PyErr_Clear();
    return false;
  }
  int64_t dims[64];
  int ndim = 0;
  if (!bindings::read_shape(shape.ptr(), dims, ndim, 64)) return false;
  int64_t numel = 1;
  for (int d = 0; d < ndim; ++d) numel *= dims[d];
  if (!bindings::read_torch(o, numel, f)) return false;
  if (f.on_cpu) {
#if defined(FUSEDOPT_CUDA_EMULATION)
    f.device = 0;
#else
    return false;
#endif
  }
  return true;
}

// CuPy's fields where the object has them (CuPy arrays and their subclasses, which say
// which GPU they are on), else the interface.
ArrayFacts read_array(py::handle h) {
  ArrayFacts f;
  if (!read_cupy(h.ptr(), f, true)) read_interface(h, f);
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

// float32 and float64 as NumPy's dtype singletons, which CuPy's arrays carry. A dtype
// that is equal but not one of these (a non-native byte order, say) is left to prepare().
struct Dtypes {
  PyObject* float32;
  PyObject* float64;
};
const Dtypes& dtypes() {
  static const Dtypes* d = [] {
    py::object dtype = py::module_::import("numpy").attr("dtype");
    return new Dtypes{dtype("float32").release().ptr(), dtype("float64").release().ptr()};
  }();
  return *d;
}

// prepare()'s rules on single arrays (CuPy arrays and torch tensors, mixed as prepare()
// allows), for build_strict() and set_grads().
struct StrictReader {
  bindings::ArrayTypes types = imported_types();
  int dtype_code = -1;  // the call's dtype: DType's code
  int itemsize = 0;

  auto is_array() const {
    return [this](PyObject* o) { return types.kind(o) != Kind::kNone; };
  }

  // The code of an array's dtype if it is float32 or float64 (NumPy's singletons for CuPy,
  // torch's for torch), else -1.
  int dtype_of(PyObject* a, Kind kind) const {
    PyObject* d = PyObject_GetAttr(a, names().dtype);
    if (d == nullptr) {
      PyErr_Clear();
      return -1;
    }
    const bool cupy = kind == Kind::kCupy;
    int code = -1;
    if (d == (cupy ? dtypes().float32 : types.torch_float32.ptr())) code = static_cast<int>(DType::kFloat32);
    if (d == (cupy ? dtypes().float64 : types.torch_float64.ptr())) code = static_cast<int>(DType::kFloat64);
    Py_DECREF(d);
    return code;
  }

  // The call's dtype, from its first param; false unless float32 or float64.
  bool take_dtype(PyObject* first) {
    const Kind kind = types.kind(first);
    if (kind == Kind::kNone) return false;
    set_dtype(dtype_of(first, kind));
    return dtype_code >= 0;
  }
  void set_dtype(int code) {
    dtype_code = code;
    itemsize = code >= 0 ? itemsize_of(code) : 0;
  }

  // One array: a CuPy array or torch tensor of the call's dtype, shaped like `like` (its
  // param's shape; null for a param, whose shape is then stored in *shape), C-contiguous,
  // and aligned to its elements. The device and the overlaps are the caller's to check.
  bool read(PyObject* a, PyObject* like, ArrayFacts& f, py::object* shape) const {
    const Kind kind = types.kind(a);
    if (kind == Kind::kCupy ? !read_cupy(a, f, false) : kind != Kind::kTorch || !read_torch(a, f))
      return false;
    if (dtype_of(a, kind) != dtype_code) return false;
    // torch.Size is a tuple, so shapes compare across the two libraries.
    py::object s = py::reinterpret_steal<py::object>(PyObject_GetAttr(a, names().shape));
    if (!s || (like != nullptr && PyObject_RichCompareBool(s.ptr(), like, Py_EQ) != 1)) {
      PyErr_Clear();
      return false;
    }
    if (!f.contiguous || (f.size > 0 && (f.ptr == 0 || f.ptr % static_cast<uintptr_t>(itemsize) != 0)))
      return false;
    if (shape != nullptr) *shape = std::move(s);
    return true;
  }
};

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
    keep_[role].push_back(std::move(h));
  }
  batch_.ptrs[role] = ptrs.data();
}

void DeviceBatch::reset() {
  batch_ = Batch();
  offsets_.assign(1, 0);  // a valid batch of no tensors
  batch_.offsets = offsets_.data();
  for (auto& p : ptrs_) p.clear();
  for (auto& k : keep_) k.clear();
  memory_.clear();
  grad_memory_.clear();
  written_.clear();
  strict_ = false;
  has_grads_ = true;
  torch_params_ = false;
  itemsize_ = 0;
  device_ = -1;
  n_states_ = 0;
}

bool DeviceBatch::build_strict(py::handle params, py::handle grads, py::handle states) {
  reset();
  if (read_strict(params, grads, states)) return true;
  reset();
  return false;
}

bool DeviceBatch::read_strict(py::handle params, py::handle grads, py::handle states) {
  StrictReader reader;
  bindings::RoleItems roles[kMaxRoles];
  int n_roles = 0;
  if (!bindings::open_call(params, grads, states, reader.is_array(), roles, n_roles, /*hold=*/true))
    return false;
  const Py_ssize_t n = roles[kParam].size;
  if (n > 0 && !reader.take_dtype(roles[kParam].at[0])) return false;
  batch_.dtype = n > 0 ? static_cast<DType>(reader.dtype_code) : DType::kFloat32;
  itemsize_ = itemsize_of(static_cast<int>(batch_.dtype));

  offsets_.assign(static_cast<size_t>(n) + 1, 0);
  for (int r = 0; r < n_roles; ++r) {
    ptrs_[r].resize(static_cast<size_t>(n));
    keep_[r].reserve(static_cast<size_t>(n));
  }
  std::vector<ByteSpan> spans;
  spans.reserve(static_cast<size_t>(n) * n_roles);
  for (Py_ssize_t t = 0; t < n; ++t) {
    py::object param_shape;
    for (int r = 0; r < n_roles; ++r) {
      PyObject* a = roles[r].at[t];
      ArrayFacts f;
      if (!reader.read(a, r == kParam ? nullptr : param_shape.ptr(), f, r == kParam ? &param_shape : nullptr))
        return false;
      if (r == kParam) offsets_[t + 1] = offsets_[t] + f.size;
      if (f.size != offsets_[t + 1] - offsets_[t]) return false;
      if (device_ >= 0 && f.device != device_) return false;  // prepare() lets the module say which
      device_ = f.device;
      ptrs_[r][t] = reinterpret_cast<void*>(f.ptr);
      if (f.size > 0) spans.push_back({f.ptr, f.ptr + bytes(f.size), spans.size(), r != kGrad});
      keep_[r].push_back(py::reinterpret_borrow<py::object>(a));
      if (f.memory) (r == kGrad ? grad_memory_ : memory_).push_back(std::move(f.memory));
    }
  }
  if (first_overlap(spans).first >= 0) return false;
  for (const ByteSpan& span : spans)  // sorted now; disjoint, or the sweep had found a pair
    if (span.written) written_.push_back(span);
  strict_ = true;
  torch_params_ = n > 0 && reader.types.kind(roles[kParam].at[0]) == Kind::kTorch;
  n_states_ = n_roles - 2;
  batch_.n_tensors = static_cast<int64_t>(n);
  batch_.offsets = offsets_.data();
  for (int r = 0; r < n_roles; ++r) batch_.ptrs[r] = ptrs_[r].data();
  return true;
}

bool DeviceBatch::set_grads(py::handle grads) {
  if (!strict_) return false;
  StrictReader reader;
  reader.set_dtype(static_cast<int>(batch_.dtype));
  bindings::RoleItems items;
  const auto n = static_cast<Py_ssize_t>(batch_.n_tensors);
  if (!items.open(grads.ptr(), [](PyObject*) { return false; }, /*hold=*/true) || items.size != n)
    return false;
  std::vector<void*> ptrs(static_cast<size_t>(n));
  std::vector<py::object> keep(static_cast<size_t>(n)), memory, held_memory;
  for (Py_ssize_t t = 0; t < n; ++t) {
    PyObject* a = items.at[t];
    const size_t i = static_cast<size_t>(t);
    // What the held arrays can change between steps is read again: the shape (CuPy and
    // torch set shapes in place, and a step must refuse what prepare() would), and a torch
    // tensor's memory (.data = and set_() swap it). Any change: false, and the caller
    // checks the whole call again.
    py::object param_shape;
    for (int r = 0; r < 2 + n_states_; ++r) {
      if (r == kGrad) continue;
      PyObject* held = keep_[r][i].ptr();
      PyObject* like = r == kParam ? nullptr : param_shape.ptr();
      const Kind kind = reader.types.kind(held);
      if (kind == Kind::kNone) return false;  // its library is gone from sys.modules
      if (kind == Kind::kTorch) {
        // A torch tensor can be re-pointed, re-typed or restrided in place: every rule
        // again, on the memory the Batch holds.
        ArrayFacts now;
        if (!reader.read(held, like, now, r == kParam ? &param_shape : nullptr) ||
            now.ptr != reinterpret_cast<uintptr_t>(ptrs_[r][i]) || now.device != device_ ||
            now.size != batch_.size(t))
          return false;
        held_memory.push_back(std::move(now.memory));
        continue;
      }
      py::object shape = py::reinterpret_steal<py::object>(PyObject_GetAttr(held, names().shape));
      if (!shape || (like != nullptr && PyObject_RichCompareBool(shape.ptr(), like, Py_EQ) != 1)) {
        PyErr_Clear();
        return false;
      }
      if (r == kParam) param_shape = std::move(shape);
    }
    ArrayFacts f;
    if (!reader.read(a, param_shape.ptr(), f, nullptr) || f.size != batch_.size(t) || f.device != device_)
      return false;
    if (f.size > 0) {
      // The written spans are sorted and disjoint, so their ends ascend too: the first one
      // ending after this gradient starts is the only one that can overlap it.
      const uintptr_t lo = f.ptr, hi = f.ptr + bytes(f.size);
      const auto it = std::upper_bound(written_.begin(), written_.end(), lo,
                                       [](uintptr_t v, const ByteSpan& s) { return v < s.hi; });
      if (it != written_.end() && it->lo < hi) return false;
    }
    ptrs[static_cast<size_t>(t)] = reinterpret_cast<void*>(f.ptr);
    keep[static_cast<size_t>(t)] = py::reinterpret_borrow<py::object>(a);
    if (f.memory) memory.push_back(std::move(f.memory));
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
