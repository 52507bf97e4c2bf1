#include "bindings/batch_from_python.h"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings/call_roles.h"

namespace fusedopt {
namespace bindings {

namespace {
const char* kRoleNames[kMaxRoles] = {"param", "grad", "state 0", "state 1", "state 2"};

using npy = py::detail::npy_api;
constexpr int kNpyFloat = 11, kNpyDouble = 12;  // NumPy type numbers

// prepare()'s checks on one array, which must match `like` in shape unless it is null.
const py::detail::PyArray_Proxy* array_ok(PyObject* obj, const py::detail::PyArray_Proxy* like,
                                          int type_num, bool written) {
  if (!npy::get().PyArray_Check_(obj)) return nullptr;
  const auto* a = py::detail::array_proxy(obj);
  const auto dt = py::reinterpret_borrow<py::dtype>(a->descr);
  if (dt.num() != type_num || dt.byteorder() == '>' || dt.byteorder() == '<') return nullptr;
  if (!(a->flags & npy::NPY_ARRAY_C_CONTIGUOUS_) || !(a->flags & npy::NPY_ARRAY_ALIGNED_)) return nullptr;
  if (written && !(a->flags & npy::NPY_ARRAY_WRITEABLE_)) return nullptr;
  if (like != nullptr) {
    if (a->nd != like->nd) return nullptr;
    for (int d = 0; d < a->nd; ++d)
      if (a->dimensions[d] != like->dimensions[d]) return nullptr;
  }
  return a;
}

int64_t element_count(const py::detail::PyArray_Proxy* a) {
  int64_t n = 1;
  for (int d = 0; d < a->nd; ++d) n *= static_cast<int64_t>(a->dimensions[d]);
  return n;
}
}  // namespace

bool PyBatch::build_strict(py::handle params, py::handle grads, py::handle states) {
  RoleItems roles[kMaxRoles];
  int n_roles = 0;
  // hold: the kernel runs without the GIL, while another thread could change a list and
  // drop the last reference to an array in it.
  if (!open_call(params, grads, states, [](PyObject* o) { return npy::get().PyArray_Check_(o); },
                 roles, n_roles, /*hold=*/true))
    return false;
  for (int r = 0; r < n_roles; ++r) held_.push_back(std::move(roles[r].held));
  const Py_ssize_t n = roles[kParam].size;

  int type_num = kNpyFloat;
  if (n > 0) {
    if (!npy::get().PyArray_Check_(roles[kParam].at[0])) return false;
    type_num = py::reinterpret_borrow<py::dtype>(py::detail::array_proxy(roles[kParam].at[0])->descr).num();
    if (type_num != kNpyFloat && type_num != kNpyDouble) return false;
  }
  batch_.dtype = type_num == kNpyFloat ? DType::kFloat32 : DType::kFloat64;
  itemsize_ = itemsize_of(static_cast<int>(batch_.dtype));

  offsets_.assign(static_cast<size_t>(n) + 1, 0);
  for (int r = 0; r < n_roles; ++r) ptrs_[r].resize(static_cast<size_t>(n));
  std::vector<ByteSpan> spans;
  spans.reserve(static_cast<size_t>(n) * n_roles);
  for (Py_ssize_t t = 0; t < n; ++t) {
    const auto* p = array_ok(roles[kParam].at[t], nullptr, type_num, true);
    if (p == nullptr) return false;
    const int64_t count = element_count(p);
    offsets_[t + 1] = offsets_[t] + count;
    const uintptr_t nbytes = static_cast<uintptr_t>(count) * itemsize_;
    for (int r = 0; r < n_roles; ++r) {
      const bool written = r != kGrad;
      const auto* a = r == kParam ? p : array_ok(roles[r].at[t], p, type_num, written);
      if (a == nullptr) return false;
      ptrs_[r][t] = a->data;
      const auto lo = reinterpret_cast<uintptr_t>(a->data);
      if (nbytes) spans.push_back({lo, lo + nbytes, spans.size(), written});
    }
  }
  if (first_overlap(spans).first >= 0) return false;
  batch_.n_tensors = static_cast<int64_t>(n);
  batch_.offsets = offsets_.data();
  for (int r = 0; r < n_roles; ++r) batch_.ptrs[r] = ptrs_[r].data();
  return true;
}

PyBatch::PyBatch(py::handle params, py::handle grads, py::handle states, int dtype_code) {
  const py::tuple p = hold(params), g = hold(grads), state_lists = hold(states);
  set_sizes(p, dtype_code);
  if (state_lists.size() > static_cast<size_t>(kMaxStates)) throw std::invalid_argument("too many state roles");
  add_role(kParam, p, true);
  add_role(kGrad, g, false);
  for (size_t k = 0; k < state_lists.size(); ++k)
    add_role(kState0 + static_cast<int>(k), hold(state_lists[k]), true);
}

PyBatch::PyBatch(py::handle grads, int dtype_code) {
  const py::tuple g = hold(grads);
  set_sizes(g, dtype_code);
  add_role(kGrad, g, false);
}

py::tuple PyBatch::hold(py::handle arrays) {
  // Only lists and tuples (and their subclasses): any other sequence of arrays (a 2-D
  // array's rows, say) is far more likely a mistake than a list of tensors.
  if (!PyList_Check(arrays.ptr()) && !PyTuple_Check(arrays.ptr()))
    throw py::type_error("arrays must come in a list or tuple");
  auto copy = py::reinterpret_steal<py::tuple>(PySequence_Tuple(arrays.ptr()));
  if (!copy) throw py::error_already_set();
  held_.push_back(copy);
  return copy;
}

void PyBatch::set_sizes(const py::tuple& arrays, int dtype_code) {
  itemsize_ = itemsize_of(dtype_code);
  batch_.dtype = static_cast<DType>(dtype_code);
  const size_t n = arrays.size();
  offsets_.assign(n + 1, 0);
  for (size_t t = 0; t < n; ++t) {
    py::handle h = arrays[t];  // owned by the tuple
    if (!py::isinstance<py::array>(h)) throw std::invalid_argument("argument is not a NumPy array");
    offsets_[t + 1] = offsets_[t] + static_cast<int64_t>(py::reinterpret_borrow<py::array>(h).size());
  }
  batch_.n_tensors = static_cast<int64_t>(n);
  batch_.offsets = offsets_.data();
}

void PyBatch::add_role(int role, const py::tuple& arrays, bool written) {
  const size_t n = static_cast<size_t>(batch_.n_tensors);
  if (arrays.size() != n)
    throw std::invalid_argument(std::string(kRoleNames[role]) + " list length differs from params");
  std::vector<void*>& ptrs = ptrs_[role];
  ptrs.resize(n);
  for (size_t t = 0; t < n; ++t) {
    py::handle h = arrays[t];  // owned by the tuple
    if (!py::isinstance<py::array>(h))
      throw std::invalid_argument(std::string(kRoleNames[role]) + " is not a NumPy array");
    auto a = py::reinterpret_borrow<py::array>(h);
    if (a.size() != batch_.size(static_cast<int64_t>(t)) || static_cast<size_t>(a.itemsize()) != itemsize_ ||
        !(a.flags() & py::array::c_style))
      throw std::invalid_argument(std::string(kRoleNames[role]) + " does not match its param");
    // The loops read and write through typed pointers: a misaligned one is undefined
    // behaviour (UBSan reports it), however forgiving x86 loads are.
    if (reinterpret_cast<uintptr_t>(a.data()) % itemsize_ != 0)
      throw std::invalid_argument(std::string(kRoleNames[role]) + " is not aligned to its element size");
    ptrs[t] = written ? a.mutable_data() : const_cast<void*>(a.data());
  }
  batch_.ptrs[role] = ptrs.data();
}

}  // namespace bindings
}  // namespace fusedopt
