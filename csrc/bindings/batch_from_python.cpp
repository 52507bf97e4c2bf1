#include "bindings/batch_from_python.h"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings/array_facts.h"
#include "bindings/call_roles.h"

namespace fusedopt {
namespace bindings {

constexpr int kMaxDims = 64;  // NumPy 2's NPY_MAXDIMS

// What the fast path reads of one array, NumPy array or torch CPU tensor alike.
struct ArrayRead {
  void* data = nullptr;
  int ndim = 0;
  int64_t dims[kMaxDims];
  int64_t count = 1;
  py::object memory;  // a torch tensor's storage (see ArrayFacts::memory)

  bool same_shape(const ArrayRead& other) const {
    if (ndim != other.ndim) return false;
    for (int d = 0; d < ndim; ++d)
      if (dims[d] != other.dims[d]) return false;
    return true;
  }
};

namespace {
const char* kRoleNames[kMaxRoles] = {"param", "grad", "state 0", "state 1", "state 2"};

using npy = py::detail::npy_api;
constexpr int kNpyFloat = 11, kNpyDouble = 12;  // NumPy type numbers

int dtype_code_of_numpy(int type_num) {
  if (type_num == kNpyFloat) return static_cast<int>(DType::kFloat32);
  if (type_num == kNpyDouble) return static_cast<int>(DType::kFloat64);
  return -1;
}

// The DType code of an array the fast path takes (a NumPy array of native byte order, or
// a torch tensor of the exact types torch.Tensor and torch.nn.Parameter), else -1.
int dtype_code_of(PyObject* obj, const ArrayTypes& types) {
  if (npy::get().PyArray_Check_(obj)) {
    const auto dt = py::reinterpret_borrow<py::dtype>(py::detail::array_proxy(obj)->descr);
    if (dt.byteorder() == '>' || dt.byteorder() == '<') return -1;
    return dtype_code_of_numpy(dt.num());
  }
  if (types.kind(obj) != Kind::kTorch) return -1;
  PyObject* d = PyObject_GetAttr(obj, names().dtype);
  if (d == nullptr) {
    PyErr_Clear();
    return -1;
  }
  const int code = types.torch_dtype_code(d);
  Py_DECREF(d);
  return code;
}

// prepare()'s checks on one array, which must match `like` in shape unless it is null:
// the call's dtype, C-contiguous, aligned to its elements, writable where written. A torch
// tensor must be in host memory without the negative bit (prepare() views it through
// NumPy, which refuses that bit); it is always writable, as its NumPy view is.
bool array_ok(PyObject* obj, const ArrayRead* like, const ArrayTypes& types, int dtype_code, bool written,
              ArrayRead& out) {
  if (dtype_code_of(obj, types) != dtype_code) return false;
  const uintptr_t itemsize = static_cast<uintptr_t>(itemsize_of(dtype_code));
  if (npy::get().PyArray_Check_(obj)) {
    const auto* a = py::detail::array_proxy(obj);
    if (!(a->flags & npy::NPY_ARRAY_C_CONTIGUOUS_) || !(a->flags & npy::NPY_ARRAY_ALIGNED_)) return false;
    if (written && !(a->flags & npy::NPY_ARRAY_WRITEABLE_)) return false;
    if (a->nd > kMaxDims) return false;
    out.ndim = a->nd;
    out.count = 1;
    for (int d = 0; d < a->nd; ++d) out.count *= out.dims[d] = static_cast<int64_t>(a->dimensions[d]);
    out.data = a->data;
  } else {
    PyObject* shape = PyObject_GetAttr(obj, names().shape);
    if (shape == nullptr) {
      PyErr_Clear();
      return false;
    }
    const bool shape_ok = read_shape(shape, out.dims, out.ndim, kMaxDims);
    Py_DECREF(shape);
    if (!shape_ok) return false;
    out.count = 1;
    for (int d = 0; d < out.ndim; ++d) out.count *= out.dims[d];
    ArrayFacts f;
    if (!read_torch(obj, out.count, f) || !f.on_cpu || !f.contiguous) return false;
    if (out.count > 0 && (f.ptr == 0 || f.ptr % itemsize != 0)) return false;
    out.data = reinterpret_cast<void*>(f.ptr);
    out.memory = std::move(f.memory);
  }
  return like == nullptr || out.same_shape(*like);
}
}  // namespace

bool PyBatch::build_strict(py::handle params, py::handle grads, py::handle states) {
  const ArrayTypes types = ArrayTypes::imported(/*with_cupy=*/false, /*torch_needs_cupy=*/false);
  RoleItems roles[kMaxRoles];
  int n_roles = 0;
  // hold: the kernel runs without the GIL, while another thread could change a list and
  // drop the last reference to an array in it.
  auto is_array = [&types](PyObject* o) {
    return npy::get().PyArray_Check_(o) || types.kind(o) == Kind::kTorch;
  };
  if (!open_call(params, grads, states, is_array, roles, n_roles, /*hold=*/true)) return false;
  for (int r = 0; r < n_roles; ++r) held_.push_back(std::move(roles[r].held));
  const Py_ssize_t n = roles[kParam].size;

  int dtype_code = static_cast<int>(DType::kFloat32);
  if (n > 0) {
    dtype_code = dtype_code_of(roles[kParam].at[0], types);
    if (dtype_code < 0) return false;
  }
  batch_.dtype = static_cast<DType>(dtype_code);
  itemsize_ = itemsize_of(dtype_code);

  offsets_.assign(static_cast<size_t>(n) + 1, 0);
  for (int r = 0; r < n_roles; ++r) ptrs_[r].resize(static_cast<size_t>(n));
  std::vector<ByteSpan> spans;
  spans.reserve(static_cast<size_t>(n) * n_roles);
  ArrayRead param, other;
  for (Py_ssize_t t = 0; t < n; ++t) {
    if (!array_ok(roles[kParam].at[t], nullptr, types, dtype_code, true, param)) return false;
    offsets_[t + 1] = offsets_[t] + param.count;
    const uintptr_t nbytes = static_cast<uintptr_t>(param.count) * itemsize_;
    for (int r = 0; r < n_roles; ++r) {
      const bool written = r != kGrad;
      ArrayRead* a = &param;
      if (r != kParam) {
        if (!array_ok(roles[r].at[t], &param, types, dtype_code, written, other)) return false;
        a = &other;
      }
      ptrs_[r][t] = a->data;
      if (a->memory) held_.push_back(std::move(a->memory));
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
  ArrayRead a;
  for (size_t t = 0; t < n; ++t) {
    read_checked(arrays[t].ptr(), kRoleNames[kParam], a);  // owned by the tuple
    offsets_[t + 1] = offsets_[t] + a.count;
  }
  batch_.n_tensors = static_cast<int64_t>(n);
  batch_.offsets = offsets_.data();
}

void PyBatch::read_checked(PyObject* obj, const char* role, ArrayRead& out) {
  if (!types_) types_.reset(new ArrayTypes(ArrayTypes::imported(false, false)));
  // The loops read and write through typed pointers: a misaligned one is undefined
  // behaviour (UBSan reports it), however forgiving x86 loads are.
  if (!array_ok(obj, nullptr, *types_, static_cast<int>(batch_.dtype), /*written=*/false, out))
    throw std::invalid_argument(std::string(role) +
                                " is not a C-contiguous, aligned NumPy array or torch CPU tensor of the call's dtype");
}

void PyBatch::add_role(int role, const py::tuple& arrays, bool written) {
  const size_t n = static_cast<size_t>(batch_.n_tensors);
  if (arrays.size() != n)
    throw std::invalid_argument(std::string(kRoleNames[role]) + " list length differs from params");
  std::vector<void*>& ptrs = ptrs_[role];
  ptrs.resize(n);
  ArrayRead a;
  for (size_t t = 0; t < n; ++t) {
    read_checked(arrays[t].ptr(), kRoleNames[role], a);  // owned by the tuple
    if (a.count != batch_.size(static_cast<int64_t>(t)))
      throw std::invalid_argument(std::string(kRoleNames[role]) + " does not match its param");
    ptrs[t] = a.data;
    if (a.memory) held_.push_back(std::move(a.memory));
  }
  (void)written;  // writability is the strict check's (and prepare()'s) to enforce
  batch_.ptrs[role] = ptrs.data();
}

}  // namespace bindings
}  // namespace fusedopt
