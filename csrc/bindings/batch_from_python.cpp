#include "bindings/batch_from_python.h"

#include <stdexcept>
#include <string>

namespace fusedopt {
namespace bindings {

namespace {
const char* kRoleNames[kMaxRoles] = {"param", "grad", "state 0", "state 1", "state 2"};

size_t itemsize_of(int dtype_code) {
  switch (static_cast<DType>(dtype_code)) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(dtype_code));
}
}  // namespace

PyBatch::PyBatch(const py::sequence& params, const py::sequence& grads, const py::sequence& states,
                 int dtype_code) {
  set_sizes(params, dtype_code);
  if (static_cast<size_t>(py::len(states)) > static_cast<size_t>(kMaxStates))
    throw std::invalid_argument("too many state roles");
  add_role(kParam, params, true);
  add_role(kGrad, grads, false);
  for (size_t k = 0; k < static_cast<size_t>(py::len(states)); ++k)
    add_role(kState0 + static_cast<int>(k), py::reinterpret_borrow<py::sequence>(states[k]), true);
}

PyBatch::PyBatch(const py::sequence& grads, int dtype_code) {
  set_sizes(grads, dtype_code);
  add_role(kGrad, grads, false);
}

void PyBatch::set_sizes(const py::sequence& arrays, int dtype_code) {
  itemsize_ = itemsize_of(dtype_code);
  batch_.dtype = static_cast<DType>(dtype_code);
  const size_t n = py::len(arrays);
  offsets_.assign(n + 1, 0);
  for (size_t t = 0; t < n; ++t) {
    py::handle h = arrays[t];
    if (!py::isinstance<py::array>(h)) throw std::invalid_argument("argument is not a NumPy array");
    offsets_[t + 1] = offsets_[t] + static_cast<int64_t>(py::reinterpret_borrow<py::array>(h).size());
  }
  batch_.n_tensors = static_cast<int64_t>(n);
  batch_.offsets = offsets_.data();
}

void PyBatch::add_role(int role, const py::sequence& arrays, bool written) {
  const size_t n = static_cast<size_t>(batch_.n_tensors);
  if (static_cast<size_t>(py::len(arrays)) != n)
    throw std::invalid_argument(std::string(kRoleNames[role]) + " list length differs from params");
  std::vector<void*>& ptrs = ptrs_[role];
  ptrs.resize(n);
  for (size_t t = 0; t < n; ++t) {
    py::handle h = arrays[t];
    if (!py::isinstance<py::array>(h))
      throw std::invalid_argument(std::string(kRoleNames[role]) + " is not a NumPy array");
    auto a = py::reinterpret_borrow<py::array>(h);
    if (a.size() != batch_.size(static_cast<int64_t>(t)) || static_cast<size_t>(a.itemsize()) != itemsize_ ||
        !(a.flags() & py::array::c_style))
      throw std::invalid_argument(std::string(kRoleNames[role]) + " does not match its param");
    ptrs[t] = written ? a.mutable_data() : const_cast<void*>(a.data());
  }
  batch_.ptrs[role] = ptrs.data();
}

}  // namespace bindings
}  // namespace fusedopt
