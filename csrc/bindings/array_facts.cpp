#include "bindings/array_facts.h"

#include "common/dtype.h"

namespace fusedopt {
namespace bindings {

const Names& names() {
  static const Names* n = new Names();
  return *n;
}

py::object imported_attr(const char* module, PyObject* name) {
  PyObject* m = PyDict_GetItemString(PyImport_GetModuleDict(), module);  // borrowed
  if (m == nullptr) return py::none();
  PyObject* value = PyObject_GetAttr(m, name);
  if (value == nullptr) {
    PyErr_Clear();
    return py::none();
  }
  return py::reinterpret_steal<py::object>(value);
}

ArrayTypes ArrayTypes::imported() {
  const Names& n = names();
  ArrayTypes t;
  t.cupy_ndarray = imported_attr("cupy", n.ndarray);
  t.torch_tensor = imported_attr("torch", n.Tensor);
  if (!t.torch_tensor.is_none()) {
    t.torch_parameter = imported_attr("torch.nn", n.Parameter);
    t.torch_float32 = imported_attr("torch", n.float32);
    t.torch_float64 = imported_attr("torch", n.float64);
    t.torch_bfloat16 = imported_attr("torch", n.bfloat16);
    t.torch_float16 = imported_attr("torch", n.float16);
    t.torch_int16 = imported_attr("torch", n.int16);
    t.torch_slots = TorchSlots::resolve(t.torch_tensor.ptr(), t.torch_parameter.ptr());
  }
  return t;
}

namespace {

PyObject* getter_name(TorchSlots::Getter g) {
  const Names& n = names();
  PyObject* const all[TorchSlots::kGetters] = {n.is_cpu, n.is_cuda, n.dtype, n.shape};
  return all[g];
}

PyObject* method_name(TorchSlots::Method m) {
  const Names& n = names();
  PyObject* const all[TorchSlots::kMethods] = {n.data_ptr, n.is_contiguous, n.is_neg, n.untyped_storage,
                                               n.get_device};
  return all[m];
}

// The attribute `name` of a type as its instances find it, if it is a descriptor of exactly
// `descr_type` defined by a base of `type`; else null. Borrowed from the type's MRO.
PyObject* c_descriptor(PyTypeObject* type, PyObject* name, PyTypeObject* descr_type) {
  PyObject* d = _PyType_Lookup(type, name);
  if (d == nullptr || Py_TYPE(d) != descr_type) return nullptr;
  PyTypeObject* owner = reinterpret_cast<PyDescrObject*>(d)->d_type;
  return PyType_IsSubtype(type, owner) ? d : nullptr;
}

// A type's version tag: CPython gives it a new one whenever the type or a base changes
// (0: none yet). Before 3.12 a stale tag keeps its value and loses the flag.
unsigned int version_tag(PyTypeObject* type) {
#if PY_VERSION_HEX < 0x030C0000
  if (!PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) return 0;
#endif
  return type->tp_version_tag;
}

// Fills s's slots from torch's types; false where one is not as expected.
bool resolve_slots(TorchSlots& s, PyTypeObject* tensor, PyTypeObject* parameter) {
  using S = TorchSlots;
  // The slots stand for what an attribute read finds: only through the generic lookup, where
  // a data descriptor (the getters) wins over the instance's __dict__. A method could be
  // shadowed by an instance's __dict__ entry; the slots then read the tensor's own facts.
  if (tensor->tp_getattro != PyObject_GenericGetAttr || parameter->tp_getattro != PyObject_GenericGetAttr)
    return false;
  for (int g = 0; g < S::kGetters; ++g) {
    PyObject* name = getter_name(static_cast<S::Getter>(g));
    PyObject* d = c_descriptor(tensor, name, &PyGetSetDescr_Type);
    // Parameter must find the very same descriptor (it overrides none of these today).
    if (d == nullptr || d != c_descriptor(parameter, name, &PyGetSetDescr_Type)) return false;
    PyGetSetDef* def = reinterpret_cast<PyGetSetDescrObject*>(d)->d_getset;
    if (def == nullptr || def->get == nullptr) return false;
    s.getters[g] = def;
    s.descrs[g] = py::reinterpret_borrow<py::object>(d);
  }
  for (int m = 0; m < S::kMethods; ++m) {
    PyObject* name = method_name(static_cast<S::Method>(m));
    PyObject* d = c_descriptor(tensor, name, &PyMethodDescr_Type);
    if (d == nullptr || d != c_descriptor(parameter, name, &PyMethodDescr_Type)) return false;
    PyMethodDef* def = reinterpret_cast<PyMethodDescrObject*>(d)->d_method;
    // The C function itself for the two calling conventions torch's tensor methods use;
    // for any other, the descriptor's own call.
    const int flags = def == nullptr ? 0 : def->ml_flags & ~METH_COEXIST;
    if (def != nullptr && def->ml_meth != nullptr && (flags == METH_NOARGS || flags == (METH_VARARGS | METH_KEYWORDS)))
      s.methods[m] = def;
    s.descrs[S::kGetters + m] = py::reinterpret_borrow<py::object>(d);
  }
  s.no_args = py::reinterpret_steal<py::object>(PyTuple_New(0));
  if (!s.no_args) PyErr_Clear();
  return static_cast<bool>(s.no_args);
}

}  // namespace

TorchSlots TorchSlots::resolve(PyObject* tensor_type, PyObject* parameter_type) {
  TorchSlots s;
  if (!PyType_Check(tensor_type) || !PyType_Check(parameter_type)) return s;
  auto* tensor = reinterpret_cast<PyTypeObject*>(tensor_type);
  auto* parameter = reinterpret_cast<PyTypeObject*>(parameter_type);
  const bool resolved = resolve_slots(s, tensor, parameter);
  // After the lookups, which give the types their tags; kept whether or not the slots
  // resolved, so that a type changed back is looked up again.
  s.tensor_tag = version_tag(tensor);
  s.parameter_tag = version_tag(parameter);
  s.ready = resolved && s.tensor_tag != 0 && s.parameter_tag != 0;
  return s;
}

bool TorchSlots::stale(PyObject* tensor_type, PyObject* parameter_type) const {
  if (!PyType_Check(tensor_type) || !PyType_Check(parameter_type)) return false;
  return version_tag(reinterpret_cast<PyTypeObject*>(tensor_type)) != tensor_tag ||
         version_tag(reinterpret_cast<PyTypeObject*>(parameter_type)) != parameter_tag;
}

PyObject* TorchSlots::get(PyObject* o, Getter g, bool direct) const {
  if (!direct) return PyObject_GetAttr(o, getter_name(g));
  return getters[g]->get(o, getters[g]->closure);
}

PyObject* TorchSlots::call(PyObject* o, Method m, bool direct) const {
  if (!direct) return PyObject_CallMethodNoArgs(o, method_name(m));
  const PyMethodDef* def = methods[m];
  // The descriptor called with o as self: what o.m() runs, without the lookup.
  if (def == nullptr) return PyObject_Vectorcall(descrs[kGetters + m].ptr(), &o, 1, nullptr);
  // Its C function, without the descriptor's checks (o's type is one whose base defines m:
  // checked when resolved).
  PyObject* r = (def->ml_flags & METH_KEYWORDS)
                    ? reinterpret_cast<PyCFunctionWithKeywords>(reinterpret_cast<void (*)()>(def->ml_meth))(
                          o, no_args.ptr(), nullptr)
                    : def->ml_meth(o, nullptr);
  if (r != nullptr && PyErr_Occurred()) {  // a result and an error: as the interpreter, an error
    Py_DECREF(r);
    return nullptr;
  }
  return r;
}

int ArrayTypes::torch_dtype_code(PyObject* dtype) const {
  if (dtype == torch_float32.ptr()) return static_cast<int>(DType::kFloat32);
  if (dtype == torch_float64.ptr()) return static_cast<int>(DType::kFloat64);
  if (dtype == torch_bfloat16.ptr()) return static_cast<int>(DType::kBFloat16);
  if (dtype == torch_float16.ptr()) return static_cast<int>(DType::kFloat16);
  if (dtype == torch_int16.ptr()) return kInt16Code;
  return -1;
}

bool take_int(PyObject* v, long long& out) {
  if (v == nullptr) {
    PyErr_Clear();
    return false;
  }
  if (v == Py_True || v == Py_False) {  // most facts read are bools
    out = v == Py_True;
    Py_DECREF(v);
    return true;
  }
  // Where long is 64 bits, PyLong_AsLong converts a pointer-sized int without the
  // byte-array path PyLong_AsLongLong takes for it (CPython 3.11).
  if constexpr (sizeof(long) == sizeof(long long))
    out = PyLong_AsLong(v);
  else
    out = PyLong_AsLongLong(v);
  Py_DECREF(v);
  if (out == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return true;
}

bool read_cupy(PyObject* o, ArrayFacts& f) {
  const Names& n = names();
  PyObject* data = PyObject_GetAttr(o, n.data);
  if (data == nullptr) {
    PyErr_Clear();
    return false;
  }
  long long ptr = 0, device = 0, size = 0, contiguous = 0;
  const bool ok = int_attr(data, n.ptr, ptr) && int_attr(data, n.device_id, device);
  Py_DECREF(data);
  if (!ok || !int_attr(o, n.size, size) || !int_attr(o, n.c_contiguous, contiguous)) return false;
  if (ptr < 0 || size < 0 || device < 0) return false;
  f.ptr = static_cast<uintptr_t>(ptr);
  f.device = static_cast<int>(device);
  f.size = size;
  f.contiguous = contiguous != 0;
  return true;
}

bool read_torch(PyObject* o, const TorchSlots& slots, bool direct, int64_t numel, ArrayFacts& f) {
  using S = TorchSlots;
  long long on_cpu = 0, on_cuda = 0, ptr = 0, device = -1, contiguous = 0;
  if (!take_int(slots.get(o, S::kIsCpu, direct), on_cpu)) return false;
  if (!on_cpu && (!take_int(slots.get(o, S::kIsCuda, direct), on_cuda) || !on_cuda ||
                  !take_int(slots.call(o, S::kGetDevice, direct), device) || device < 0))
    return false;
  if (!take_int(slots.call(o, S::kDataPtr, direct), ptr) ||
      !take_int(slots.call(o, S::kIsContiguous, direct), contiguous) || ptr < 0 || numel < 0)
    return false;
  PyObject* storage = slots.call(o, S::kUntypedStorage, direct);
  if (storage == nullptr) {
    PyErr_Clear();
    return false;
  }
  f.memory = py::reinterpret_steal<py::object>(storage);
  f.ptr = static_cast<uintptr_t>(ptr);
  f.on_cpu = on_cpu != 0;
  f.device = on_cpu ? -1 : static_cast<int>(device);
  f.size = numel;
  f.contiguous = contiguous != 0;
  return true;
}

bool read_shape(PyObject* shape, int64_t* dims, int& ndim, int max_dims) {
  if (shape == nullptr || !PyTuple_Check(shape)) return false;
  const Py_ssize_t nd = PyTuple_GET_SIZE(shape);
  if (nd > max_dims) return false;
  for (Py_ssize_t d = 0; d < nd; ++d) {
    const long long v = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d));
    if (v == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    dims[d] = v;
  }
  ndim = static_cast<int>(nd);
  return true;
}

}  // namespace bindings
}  // namespace fusedopt
