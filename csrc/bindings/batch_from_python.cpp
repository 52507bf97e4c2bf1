#include "bindings/batch_from_python.h"

#include <algorithm>
#include <cstdint>
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

std::pair<int64_t, int64_t> first_overlap(std::vector<ByteSpan>& spans) {
  std::sort(spans.begin(), spans.end(), [](const ByteSpan& a, const ByteSpan& b) { return a.lo < b.lo; });
  const ByteSpan* reach = nullptr;  // the span reaching furthest so far
  for (const ByteSpan& s : spans) {
    // Any span overlapping an earlier one overlaps the one reaching furthest.
    if (reach != nullptr && s.lo < reach->hi && (s.written || reach->written))
      return {static_cast<int64_t>(std::min(reach->index, s.index)),
              static_cast<int64_t>(std::max(reach->index, s.index))};
    if (reach == nullptr || s.hi > reach->hi) reach = &s;
  }
  return {-1, -1};
}

namespace {
using npy = py::detail::npy_api;
constexpr int kNpyFloat = 11, kNpyDouble = 12;  // NumPy type numbers

// The checks prepare() makes on one array, for an array that must look like `like`.
bool array_ok(py::handle h, const py::array* like, int type_num, bool written, py::array* out) {
  if (!py::isinstance<py::array>(h)) return false;
  auto a = py::reinterpret_borrow<py::array>(h);
  const py::dtype dt = a.dtype();
  if (dt.num() != type_num || dt.byteorder() == '>' || dt.byteorder() == '<') return false;
  const int flags = a.flags();
  if (!(flags & npy::NPY_ARRAY_C_CONTIGUOUS_) || !(flags & npy::NPY_ARRAY_ALIGNED_)) return false;
  if (written && !(flags & npy::NPY_ARRAY_WRITEABLE_)) return false;
  if (like != nullptr) {
    if (a.ndim() != like->ndim()) return false;
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
      if (a.shape(d) != like->shape(d)) return false;
  }
  *out = std::move(a);
  return true;
}
}  // namespace

bool strictly_valid(const py::sequence& params, const py::sequence& grads, const py::sequence& states,
                    int* dtype_code) {
  const size_t n = py::len(params);
  const size_t n_states = py::len(states);
  if (n_states > static_cast<size_t>(kMaxStates) || static_cast<size_t>(py::len(grads)) != n) return false;
  std::vector<py::sequence> state_lists;
  for (size_t k = 0; k < n_states; ++k) {
    py::handle h = states[k];
    if (!py::isinstance<py::list>(h) && !py::isinstance<py::tuple>(h)) return false;
    state_lists.push_back(py::reinterpret_borrow<py::sequence>(h));
    if (static_cast<size_t>(py::len(state_lists.back())) != n) return false;
  }
  *dtype_code = 0;
  if (n == 0) return true;
  py::handle first = params[0];
  if (!py::isinstance<py::array>(first)) return false;
  const int type_num = py::reinterpret_borrow<py::array>(first).dtype().num();
  if (type_num != kNpyFloat && type_num != kNpyDouble) return false;
  *dtype_code = static_cast<int>(type_num == kNpyFloat ? DType::kFloat32 : DType::kFloat64);

  std::vector<ByteSpan> spans;
  spans.reserve(n * (2 + n_states));
  auto add_span = [&](const py::array& a, bool written) {
    if (a.nbytes() == 0) return;
    const auto lo = reinterpret_cast<uintptr_t>(a.data());
    spans.push_back({lo, lo + static_cast<uintptr_t>(a.nbytes()), spans.size(), written});
  };
  for (size_t t = 0; t < n; ++t) {
    py::array p, other;
    if (!array_ok(params[t], nullptr, type_num, true, &p)) return false;
    add_span(p, true);
    if (!array_ok(grads[t], &p, type_num, false, &other)) return false;
    add_span(other, false);
    for (const py::sequence& list : state_lists) {
      if (!array_ok(list[t], &p, type_num, true, &other)) return false;
      add_span(other, true);
    }
  }
  return first_overlap(spans).first < 0;
}

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
