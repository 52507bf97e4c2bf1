#include "bindings/reader.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "common/overlap.h"

namespace fusedopt {
namespace bindings {

const std::vector<std::string>& rule_names() {
  static const std::vector<std::string> names = {
      "ok",        "not_list",      "list_for_single", "length",  "too_many_states", "not_array",
      "unreachable", "mixed_memory", "dtype",          "dtype_mismatch", "shape",     "not_contiguous",
      "misaligned", "read_only",    "overlap",         "device_call",    "other_gpu",      "null_data",
      "dtype_combination", "state_shape", "master_dtype"};
  return names;
}

py::tuple Refusal::to_python() const {
  return py::make_tuple(rule_names()[static_cast<size_t>(rule)], role, index, other_role, other_index);
}

bool storage_allows(DType param, bool is_grad, DType d) {
  switch (param) {
    case DType::kFloat64: return d == DType::kFloat64;
    case DType::kFloat32:
      return is_grad ? d != DType::kFloat64 : (d == DType::kFloat32 || d == DType::kBFloat16);
    case DType::kBFloat16:
    case DType::kFloat16:
      return is_grad ? (d == param || d == DType::kFloat32) : (d == DType::kFloat32 || d == DType::kBFloat16);
  }
  return false;
}

Batch ReadCall::batch() const {
  Batch b;
  for (int r = 0; r < kMaxRoles; ++r) b.dtypes[r] = dtypes[r];
  b.n_tensors = n_tensors;
  b.offsets = offsets.data();
  for (int r = 0; r < kMaxRoles; ++r) b.ptrs[r] = ptrs[r].empty() ? nullptr : ptrs[r].data();
  b.factor_dims = factor_dims.empty() ? nullptr : factor_dims.data();
  b.master = master;
  b.masters = master == Master::kNone ? nullptr : ptrs[kMasterSlot].data();
  return b;
}

Master master_from_name(const std::string& name) {
  if (name == "none") return Master::kNone;
  if (name == "float32") return Master::kFloat32;
  if (name == "remainders") return Master::kRemainder;
  throw std::invalid_argument("unknown master form '" + name + "' (none, float32 or remainders)");
}

StateLayout layout_from_name(const std::string& name) {
  if (name == "same") return StateLayout::kSame;
  if (name == "factored") return StateLayout::kFactored;
  throw std::invalid_argument("unknown state layout '" + name + "' (same or factored)");
}

bool expected_state_shape(StateLayout layout, int k, const ArrayItem& param, ArrayItem& out) {
  out.ndim = param.ndim;
  for (int d = 0; d < param.ndim; ++d) out.dims[d] = param.dims[d];
  if (layout == StateLayout::kSame) return true;
  const bool factored = param.ndim >= 2;
  if (k == 0 && factored) out.dims[param.ndim - 1] = 1;  // row_var: [..., R, 1]
  if (k == 1 && factored) out.dims[param.ndim - 2] = 1;  // col_var: [..., 1, C]
  return k == 2 ? !factored : factored;                  // variance: a param's own shape
}

ReadOptions& module_read_options() {
  static ReadOptions options;
  return options;
}

namespace {

using npy = py::detail::npy_api;

// A NumPy dtype (NumPy's own arrays, CuPy's, which carry NumPy dtypes) as a DType code:
// float32, float64 or float16 of the machine's byte order, ml_dtypes' bfloat16 (a dtype
// NumPy registers at run time: known by its scalar type's name and size), else -1.
int numpy_dtype_code(PyObject* descr) {
  const auto dt = py::reinterpret_borrow<py::dtype>(descr);
  if (dt.byteorder() == '>' || dt.byteorder() == '<') return -1;  // '=' and '|' are native
  switch (dt.num()) {
    case 11: return static_cast<int>(DType::kFloat32);
    case 12: return static_cast<int>(DType::kFloat64);
    case 23: return static_cast<int>(DType::kFloat16);
    case 3: return dt.itemsize() == 2 ? kInt16Code : -1;  // NPY_SHORT: param remainders
  }
  if (dt.num() >= 256 && dt.itemsize() == 2) {  // NPY_USERDEF and up
    PyObject* type = reinterpret_cast<const py::detail::PyArrayDescr_Proxy*>(descr)->typeobj;
    const std::string name = type != nullptr ? reinterpret_cast<PyTypeObject*>(type)->tp_name : "";
    if (name == "bfloat16" || name == "ml_dtypes.bfloat16") return static_cast<int>(DType::kBFloat16);
  }
  return -1;
}

}  // namespace

bool read_array_shape(PyObject* o, ArrayItem& it) {
  PyObject* shape = PyObject_GetAttr(o, names().shape);
  if (shape == nullptr) {
    PyErr_Clear();
    return false;
  }
  const bool ok = read_shape(shape, it.dims, it.ndim, kMaxDims);
  Py_DECREF(shape);
  if (ok) it.count_from_dims();
  return ok;
}

bool ArrayKinds::is_torch(PyObject* o) const {
  if (known.kind(o) == Kind::kTorch) return true;
  if (known.torch_tensor.is_none()) return false;
  const int r = PyObject_IsInstance(o, known.torch_tensor.ptr());  // subclasses too
  if (r < 0) PyErr_Clear();
  return r > 0;
}

bool ArrayKinds::is_cupy(PyObject* o) {
  PyObject* module = PyObject_GetAttrString(reinterpret_cast<PyObject*>(Py_TYPE(o)), "__module__");
  if (module == nullptr) {
    PyErr_Clear();
    return false;
  }
  bool yes = false;
  if (PyUnicode_Check(module)) {
    const char* m = PyUnicode_AsUTF8(module);
    yes = m != nullptr && (std::string(m) == "cupy" || std::string(m).rfind("cupy.", 0) == 0);
  }
  Py_DECREF(module);
  PyErr_Clear();
  return yes;
}

std::shared_ptr<const ArrayTypes> ArrayKinds::current_types() {
  // The modules are held strongly, so that a module's address cannot be reused by another
  // while cached. Never freed: they outlive the interpreter's end. (The GIL guards these.)
  static py::object* torch_module = new py::object();
  static py::object* cupy_module = new py::object();
  static auto* types = new std::shared_ptr<const ArrayTypes>();
  PyObject* modules = PyImport_GetModuleDict();
  // Borrowed; by interned names: PyDict_GetItemString made a string per call.
  PyObject* torch = PyDict_GetItem(modules, names().torch);
  PyObject* cupy = PyDict_GetItem(modules, names().cupy);
  // A change to torch.Tensor or nn.Parameter (an attribute set on either) looks up their
  // slots again.
  if (*types && torch == torch_module->ptr() && cupy == cupy_module->ptr() &&
      ((*types)->torch_tensor.is_none() ||
       !(*types)->torch_slots.stale((*types)->torch_tensor.ptr(), (*types)->torch_parameter.ptr())))
    return *types;
  auto fresh = std::make_shared<const ArrayTypes>(ArrayTypes::imported());
  // A module still being imported (on another thread) has no Tensor or ndarray yet: use
  // what it has now, but do not keep it, or torch tensors would stay unknown for good.
  const bool complete = (torch == nullptr || (!fresh->torch_tensor.is_none() && !fresh->torch_float64.is_none())) &&
                        (cupy == nullptr || !fresh->cupy_ndarray.is_none());
  if (!complete) return fresh;
  *types = fresh;
  *torch_module = py::reinterpret_borrow<py::object>(torch);
  *cupy_module = py::reinterpret_borrow<py::object>(cupy);
  return *types;
}

Rule read_array(PyObject* o, const ArrayKinds& types, const ReadOptions& options, ArrayItem& it) {
  it.reset();
  if (npy::get().PyArray_Check_(o)) {
    const auto* a = py::detail::array_proxy(o);
    if (a->nd > kMaxDims) return Rule::kNotArray;
    it.ndim = a->nd;
    for (int d = 0; d < a->nd; ++d) it.dims[d] = static_cast<int64_t>(a->dimensions[d]);
    it.count_from_dims();
    it.dtype = numpy_dtype_code(a->descr);
    it.ptr = reinterpret_cast<uintptr_t>(a->data);
    it.contiguous = (a->flags & npy::NPY_ARRAY_C_CONTIGUOUS_) != 0;
    it.writable = (a->flags & npy::NPY_ARRAY_WRITEABLE_) != 0;
    it.aligned = (a->flags & npy::NPY_ARRAY_ALIGNED_) != 0;
    return Rule::kNone;
  }
  if (types.is_torch(o)) {
    it.torch = true;
    const TorchSlots& slots = types.known.torch_slots;
    const bool direct = types.torch_direct(o);
    TorchAbiFacts a;
    if (direct && types.known.torch_abi.ready && types.known.torch_abi.read(o, slots, a)) {
      // torch's C functions, the GIL held throughout; then the storage that keeps the
      // pointer's memory while the kernel runs without the GIL.
      if (a.negative || (!a.on_cpu && a.device < 0)) return Rule::kUnreachable;
      it.ndim = a.ndim;
      std::copy(a.sizes, a.sizes + a.ndim, it.dims);
      it.count_from_dims();
      it.dtype = a.dtype;
      if (options.defer_torch_storage) {
        it.storage_deferred = true;
      } else {
        PyObject* storage = slots.call(o, TorchSlots::kUntypedStorage, true);
        if (storage == nullptr) {
          PyErr_Clear();
          return Rule::kUnreachable;
        }
        it.memory = py::reinterpret_steal<py::object>(storage);
      }
      it.ptr = a.ptr;
      it.contiguous = a.contiguous;
      it.on_device = !a.on_cpu || options.host_tensors_are_device;
      it.device = a.on_cpu ? (options.host_tensors_are_device ? 0 : -1) : a.device;
      return Rule::kNone;
    }
    // The negative bit (its memory holds -x) first: is_neg() releases the GIL, and another
    // thread may then point the tensor at other memory (.data =, set_()). The facts read
    // after it, the GIL held throughout, are then all of one tensor: shape, pointer and the
    // storage that keeps that pointer's memory.
    long long negative = 0;
    const bool sign_known = take_int(slots.call(o, TorchSlots::kIsNeg, direct), negative);
    PyObject* shape = slots.get(o, TorchSlots::kShape, direct);
    const bool shape_ok = read_shape(shape, it.dims, it.ndim, kMaxDims);
    Py_XDECREF(shape);
    if (!shape_ok) {
      PyErr_Clear();
      return Rule::kNotArray;
    }
    it.count_from_dims();
    PyObject* d = slots.get(o, TorchSlots::kDtype, direct);
    if (d == nullptr) {
      PyErr_Clear();
      return Rule::kNotArray;
    }
    it.dtype = types.known.torch_dtype_code(d);
    Py_DECREF(d);
    ArrayFacts f;
    if (!sign_known || negative || !read_torch(o, slots, direct, it.count, f)) return Rule::kUnreachable;
    if (!direct && it.dtype >= 0 && it.count > 0) {
      // A subclass, or a torch.Tensor whose attributes were replaced: its shape and methods
      // may be Python code, and a shape that claims more elements than the tensor has would
      // send the kernel past its end. The shape must agree with numel(), and the elements
      // lie inside the tensor's storage.
      long long numel = 0, first = 0, nbytes = 0;
      if (!call_int(o, names().numel, numel) || numel != it.count ||
          !call_int(f.memory.ptr(), names().data_ptr, first) || !call_int(f.memory.ptr(), names().nbytes, nbytes))
        return Rule::kNotArray;
      const auto lo = static_cast<uintptr_t>(first), hi = lo + static_cast<uintptr_t>(nbytes);
      const uintptr_t span = static_cast<uintptr_t>(it.count) * static_cast<uintptr_t>(code_itemsize(it.dtype));
      if (f.ptr < lo || f.ptr > hi || span > hi - f.ptr) return Rule::kNotArray;
    }
    it.ptr = f.ptr;
    it.contiguous = f.contiguous;
    it.on_device = !f.on_cpu || options.host_tensors_are_device;
    it.device = f.on_cpu ? (options.host_tensors_are_device ? 0 : -1) : f.device;
    it.memory = std::move(f.memory);
    return Rule::kNone;
  }
  if (types.known.kind(o) == Kind::kCupy || ArrayKinds::is_cupy(o)) {
    ArrayFacts f;
    if (read_cupy(o, f) && read_array_shape(o, it)) {
      PyObject* d = PyObject_GetAttr(o, names().dtype);
      if (d == nullptr) {
        PyErr_Clear();
        return Rule::kNotArray;
      }
      it.dtype = py::isinstance<py::dtype>(d) ? numpy_dtype_code(d) : -1;
      Py_DECREF(d);
      it.on_device = true;
      it.device = f.device;
      it.ptr = f.ptr;
      it.contiguous = f.contiguous;
      return Rule::kNone;
    }
    PyErr_Clear();  // a CuPy-like type without CuPy's fields: its interface below
  }
  if (PyObject_HasAttrString(o, "__cuda_array_interface__")) {
    try {
      py::dict cai = py::reinterpret_borrow<py::object>(o).attr("__cuda_array_interface__");
      if (cai.contains("mask") && !cai["mask"].is_none()) return Rule::kNotArray;  // masked: no
      if (cai.contains("stream") && !cai["stream"].is_none()) {
        const auto stream = cai["stream"].cast<long long>();
        if (stream <= 0) return Rule::kNotArray;  // 0 is not allowed by the protocol
        it.stream = static_cast<uintptr_t>(stream);
      }
      py::tuple data = cai["data"];
      it.ptr = data[0].cast<uintptr_t>();
      it.writable = !data[1].cast<bool>();
      const auto typestr = cai["typestr"].cast<std::string>();
      it.dtype = typestr == "<f4"   ? static_cast<int>(DType::kFloat32)
                 : typestr == "<f8" ? static_cast<int>(DType::kFloat64)
                 : typestr == "<f2" ? static_cast<int>(DType::kFloat16)
                                    : -1;
      const int itemsize = std::stoi(typestr.substr(2));
      py::tuple shape = cai["shape"];
      if (shape.size() > static_cast<size_t>(kMaxDims)) return Rule::kNotArray;
      it.ndim = static_cast<int>(shape.size());
      for (int d = 0; d < it.ndim; ++d) it.dims[d] = shape[static_cast<size_t>(d)].cast<int64_t>();
      it.count_from_dims();
      it.contiguous = true;
      if (cai.contains("strides") && !cai["strides"].is_none()) {
        py::tuple strides = cai["strides"];
        int64_t expected = itemsize;
        for (int d = it.ndim; d-- > 0;) {
          if (it.dims[d] != 1 && strides[static_cast<size_t>(d)].cast<int64_t>() != expected) it.contiguous = false;
          expected *= it.dims[d];
        }
      }
      it.on_device = true;
      // A device array that says which GPU it is on as CuPy's do (data.device_id).
      PyObject* owner = PyObject_GetAttr(o, names().data);
      long long device = -1;
      if (owner != nullptr && int_attr(owner, names().device_id, device) && device >= 0)
        it.device = static_cast<int>(device);
      Py_XDECREF(owner);
      PyErr_Clear();
      return Rule::kNone;
    } catch (const py::error_already_set&) {
      return Rule::kNotArray;
    } catch (const std::exception&) {
      return Rule::kNotArray;
    }
  }
  return Rule::kNotArray;
}

namespace {

int grad_role_of(bool has_grads) { return has_grads ? 1 : -1; }

// One role's items: a list or tuple (copied into a tuple of our own, which no other
// thread can change while the kernel runs without the GIL), or one array.
struct RoleValues {
  py::object held;
  PyObject* const* at = nullptr;
  Py_ssize_t size = 0;
  bool is_list = false;
  PyObject* one = nullptr;

  void open(PyObject* o) {
    is_list = PyList_Check(o) || PyTuple_Check(o);
    if (!is_list) {
      one = o;
      at = &one;
      size = 1;
      return;
    }
    held = PyList_Check(o) ? py::reinterpret_steal<py::object>(PyList_AsTuple(o)) : py::reinterpret_borrow<py::object>(o);
    if (!held) throw py::error_already_set();
    at = PySequence_Fast_ITEMS(held.ptr());
    size = PyTuple_GET_SIZE(held.ptr());
  }
};

}  // namespace

Refusal read_call(py::handle params, py::handle grads, py::handle states, const ReadOptions& options,
                  ReadCall& out, py::handle masters) {
  out = ReadCall();
  const bool has_grads = !grads.is_none();
  out.has_grads = has_grads;
  out.master = options.master;
  if ((options.master == Master::kNone) != masters.is_none())
    throw std::invalid_argument("masters are given exactly when a master form is");

  // The roles as the caller names them: params, grads (if given), states.
  RoleValues state_list;
  state_list.open(states.ptr());
  if (!state_list.is_list) throw py::type_error("states must be a list or tuple of the state roles' values");
  if (state_list.size > kMaxStates) return {Rule::kTooManyStates, 0, -1};
  const int master_role = options.master == Master::kNone ? -1 : 1 + (has_grads ? 1 : 0) +
                                                                  static_cast<int>(state_list.size);
  const int n_named = 1 + (has_grads ? 1 : 0) + static_cast<int>(state_list.size) + (master_role >= 0 ? 1 : 0);
  RoleValues roles[kMaxNamed];
  int slot[kMaxNamed];  // named role -> Batch role (kMasterSlot: the masters)
  roles[0].open(params.ptr());
  slot[0] = kParam;
  if (has_grads) {
    roles[1].open(grads.ptr());
    slot[1] = kGrad;
  }
  for (Py_ssize_t k = 0; k < state_list.size; ++k) {
    const int r = (has_grads ? 2 : 1) + static_cast<int>(k);
    roles[r].open(state_list.at[k]);
    slot[r] = kState0 + static_cast<int>(k);
  }
  if (master_role >= 0) {
    roles[master_role].open(masters.ptr());
    slot[master_role] = kMasterSlot;
  }
  out.single = !roles[0].is_list;
  for (int r = 1; r < n_named; ++r) {
    if (out.single && roles[r].is_list) return {Rule::kListForSingle, r, -1};
    if (!out.single && !roles[r].is_list) return {Rule::kNotList, r, -1};
    if (roles[r].size != roles[0].size) return {Rule::kLength, r, -1};
  }
  for (int r = 0; r < n_named; ++r)
    if (roles[r].held) (r == grad_role_of(has_grads) ? out.grad_held : out.held).push_back(roles[r].held);

  const Py_ssize_t n = roles[0].size;
  const ArrayKinds types;
  const int grad_role = has_grads ? 1 : -1;
  auto written = [&](int r) { return !options.read_only && r != grad_role; };
  out.n_roles = 2 + static_cast<int>(state_list.size);
  out.offsets.assign(static_cast<size_t>(n) + 1, 0);
  for (int r = 0; r < n_named; ++r) {
    out.ptrs[slot[r]].resize(static_cast<size_t>(n));
    if (options.want_items) out.items[slot[r]].resize(static_cast<size_t>(n));
  }
  out.held.reserve(static_cast<size_t>(n_named) + 2);
  ArrayItem items[kMaxNamed];
  std::vector<ByteSpan> spans;
  spans.reserve(static_cast<size_t>(n) * n_named);
  int role_dtype[kMaxNamed] = {-1, -1, -1, -1, -1, -1};  // per named role, from its first array
  // Every state of a call shares one dtype: the first state array's (role, index).
  int state_role = -1;
  Py_ssize_t state_index = -1;
  const int first_state = has_grads ? 2 : 1;
  const bool factored = options.layout == StateLayout::kFactored;
  ArrayItem wanted[kMaxNamed];  // the shape each state of this tensor must have
  bool absent[kMaxNamed] = {false, false, false, false, false, false};  // None where the layout says so
  bool memory_known = false;
  int gpu_role = -1;  // the first array that said which GPU it is on
  Py_ssize_t gpu_index = -1;
  ReadOptions item_options = options;
  if (options.defer_torch_storage) out.deferred_types = types.types;
  for (Py_ssize_t t = 0; t < n; ++t) {
    // First what each array is and where it lives, then the rules between them: the
    // order in which fusedopt/_arrays.py used to find them.
    for (int r = 0; r < n_named; ++r) {
      PyObject* o = roles[r].at[t];
      if (factored && r >= first_state && r != master_role) {  // does this param keep this state? None if not
        const bool keeps = expected_state_shape(options.layout, r - first_state, items[0], wanted[r]);
        absent[r] = o == Py_None;
        if (keeps == absent[r]) return {Rule::kStateShape, r, t};
        if (absent[r]) continue;
      }
      // Storages stay untaken only while no Python code runs: before an array whose read
      // could run some (any but a NumPy array or a tensor read through torch's C functions),
      // the deferred ones are taken and the rest of the call is read as usual.
      if (item_options.defer_torch_storage && !npy::get().PyArray_Check_(o) &&
          !(types.known.torch_abi.ready && types.torch_direct(o))) {
        item_options.defer_torch_storage = false;
        out.hold_deferred_storages();
      }
      const Rule kind_rule = read_array(o, types, item_options, items[r]);
      if (kind_rule != Rule::kNone) return {kind_rule, r, t};
      if (!memory_known) {
        memory_known = true;
        out.on_device = items[r].on_device;
        if (out.on_device && options.host_only) return {Rule::kDeviceCall, r, t};
      } else if (items[r].on_device != out.on_device) {
        return {Rule::kMixedMemory, r, t};
      }
      if (items[r].device >= 0) {
        if (out.device < 0) {
          out.device = items[r].device;
          gpu_role = r;
          gpu_index = t;
        } else if (items[r].device != out.device) {
          return {Rule::kOtherGpu, r, t, gpu_role, gpu_index};
        }
      }
    }
    const ArrayItem& p = items[0];
    for (int r = 0; r < n_named; ++r) {
      if (absent[r]) continue;
      ArrayItem& a = items[r];
      if (r == master_role) {  // float32 masters of 16-bit params, int16 remainders of bfloat16
        const bool remainder = options.master == Master::kRemainder;
        const int param = role_dtype[0];
        if (remainder ? param != static_cast<int>(DType::kBFloat16)
                      : param != static_cast<int>(DType::kBFloat16) && param != static_cast<int>(DType::kFloat16))
          return {Rule::kMasterDtype, r, t, 0, t};
        if (a.dtype != (remainder ? kInt16Code : static_cast<int>(DType::kFloat32)))
          return {Rule::kMasterDtype, r, t};
        role_dtype[r] = a.dtype;
      } else if (role_dtype[r] < 0) {  // its first array sets each argument's dtype
        if (a.dtype < 0 || a.dtype == kInt16Code) return {Rule::kDtype, r, t};
        if (r >= first_state && state_role >= 0 && a.dtype != role_dtype[state_role])
          return {Rule::kDtypeMismatch, r, t, state_role, state_index};  // every state one dtype
        if (r >= first_state && state_role < 0) {
          state_role = r;
          state_index = t;
        }
        const auto d = static_cast<DType>(a.dtype);
        if (r > 0 && !storage_allows(static_cast<DType>(role_dtype[0]), r == grad_role, d))
          return {Rule::kDtypeCombination, r, t};
        role_dtype[r] = a.dtype;
      } else if (a.dtype != role_dtype[r]) {
        if (a.dtype < 0 || a.dtype == kInt16Code) return {Rule::kDtype, r, t};
        return {Rule::kDtypeMismatch, r, t, r, 0};
      }
      const int itemsize = code_itemsize(a.dtype);
      if (r >= first_state && factored && r != master_role) {
        if (!a.same_shape(wanted[r])) return {Rule::kStateShape, r, t};
      } else if (r > 0 && !a.same_shape(p)) {
        return {Rule::kShape, r, t};
      }
      if (!a.contiguous) return {Rule::kNotContiguous, r, t};
      const bool misaligned = !a.aligned || a.ptr % static_cast<uintptr_t>(itemsize) != 0;
      if (a.count > 0 && a.ptr == 0) return {Rule::kNullData, r, t};
      if (a.count > 0 && misaligned) return {Rule::kMisaligned, r, t};
      if (written(r) && !a.writable) return {Rule::kReadOnly, r, t};
    }
    out.offsets[static_cast<size_t>(t) + 1] = out.offsets[static_cast<size_t>(t)] + p.count;
    if (factored) {
      out.factor_dims.push_back(p.ndim >= 2 ? p.dims[p.ndim - 2] : 0);
      out.factor_dims.push_back(p.ndim >= 2 ? p.dims[p.ndim - 1] : 0);
    }
    for (int r = 0; r < n_named; ++r) {
      if (absent[r]) {  // a null pointer; the None is kept as the call's item
        out.ptrs[slot[r]][static_cast<size_t>(t)] = nullptr;
        if (options.want_items) out.items[slot[r]][static_cast<size_t>(t)] = roles[r].at[t];
        continue;
      }
      ArrayItem& a = items[r];
      const uintptr_t nbytes = static_cast<uintptr_t>(a.count) * static_cast<uintptr_t>(code_itemsize(a.dtype));
      out.ptrs[slot[r]][static_cast<size_t>(t)] = reinterpret_cast<void*>(a.ptr);
      if (options.want_items) out.items[slot[r]][static_cast<size_t>(t)] = roles[r].at[t];
      // The span's index numbers the arrays role by role, as the refusal names them.
      if (nbytes) spans.push_back({a.ptr, a.ptr + nbytes, static_cast<size_t>(r) * static_cast<size_t>(n) +
                                                              static_cast<size_t>(t),
                                   written(r)});
      if (a.memory) (r == grad_role ? out.grad_held : out.memory).push_back(std::move(a.memory));
      if (a.storage_deferred) out.deferred.emplace_back(roles[r].at[t], r == grad_role);
      if (a.on_device && a.device < 0) out.device_unknown = true;
      if (a.stream != 0 && std::find(out.streams.begin(), out.streams.end(), a.stream) == out.streams.end())
        out.streams.push_back(a.stream);
    }
  }
  const auto pair = first_overlap(spans);
  if (pair.first >= 0) {
    return {Rule::kOverlap, static_cast<int>(pair.first / n), pair.first % n, static_cast<int>(pair.second / n),
            pair.second % n};
  }
  if (n > 0) {
    for (int r = 0; r < kMaxRoles; ++r) out.dtypes[r] = static_cast<DType>(role_dtype[0]);
    for (int r = 1; r < n_named; ++r)  // a role of Nones only (factored layout): the params'
      if (role_dtype[r] >= 0 && r != master_role) out.dtypes[slot[r]] = static_cast<DType>(role_dtype[r]);
    out.torch_params = types.is_torch(roles[0].at[0]);
  }
  if (out.single) {  // the lone arrays are the caller's: hold them as the tuples hold a list's
    for (int r = 0; r < n_named; ++r)
      (r == grad_role ? out.grad_held : out.held).push_back(py::reinterpret_borrow<py::object>(roles[r].at[0]));
  }
  out.n_tensors = static_cast<int64_t>(n);
  return {};
}

void ReadCall::hold_deferred_storages() {
  if (deferred.empty()) return;
  const TorchSlots& slots = deferred_types->torch_slots;
  for (const auto& d : deferred) {
    PyObject* storage = slots.call(d.first, TorchSlots::kUntypedStorage, true);
    if (storage == nullptr) throw py::error_already_set();
    (d.second ? grad_held : memory).push_back(py::reinterpret_steal<py::object>(storage));
  }
  deferred.clear();
}

Refusal read_grads(py::handle grads, ReadOptions options, ReadCall& out) {
  options.read_only = true;
  const Refusal refusal = read_call(grads, py::none(), py::list(), options, out);
  if (!refusal) {
    out.ptrs[kGrad] = out.ptrs[kParam];
    if (options.want_items) out.items[kGrad] = out.items[kParam];
    out.has_grads = true;
  }
  return refusal;
}

}  // namespace bindings
}  // namespace fusedopt
