#include "bindings/array_facts.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include "common/dtype.h"

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#define FUSEDOPT_HAVE_DLFCN 1
#endif

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
    PyObject* torch = PyDict_GetItem(PyImport_GetModuleDict(), n.torch);  // borrowed
    if (torch != nullptr && t.torch_slots.ready)
      t.torch_abi = TorchAbi::resolve(torch, t.torch_slots);
    else
      t.torch_abi.reason = "torch.Tensor's C getters and methods are not the ones expected";
  }
  return t;
}

namespace {

PyObject* getter_name(TorchSlots::Getter g) {
  const Names& n = names();
  PyObject* const all[TorchSlots::kGetters] = {n.is_cpu, n.is_cuda, n.dtype, n.shape, n.cdata};
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

namespace {

#ifdef FUSEDOPT_HAVE_DLFCN
// The directory of torch's shared libraries: torch/lib beside torch/__init__.py.
std::string torch_lib_dir(PyObject* torch) {
  PyObject* file = PyObject_GetAttrString(torch, "__file__");
  std::string path;
  if (file != nullptr && PyUnicode_Check(file)) {
    const char* f = PyUnicode_AsUTF8(file);
    if (f != nullptr) path = f;
  }
  Py_XDECREF(file);
  PyErr_Clear();
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash) + "/lib/";
}

// The facts of `o` read through its Python methods, as the reader reads a tensor without
// the C functions; false where a read failed.
bool facts_by_methods(PyObject* o, const TorchSlots& slots, const ArrayTypes& types, TorchAbiFacts& f,
                      std::vector<int64_t>& sizes) {
  using S = TorchSlots;
  long long negative = 0, on_cpu = 0, ptr = 0, contiguous = 0;
  if (!take_int(slots.call(o, S::kIsNeg, true), negative) || !take_int(slots.get(o, S::kIsCpu, true), on_cpu) ||
      !take_int(slots.call(o, S::kDataPtr, true), ptr) || !take_int(slots.call(o, S::kIsContiguous, true), contiguous))
    return false;
  PyObject* shape = slots.get(o, S::kShape, true);
  int64_t dims[64];
  int ndim = 0;
  const bool shape_ok = read_shape(shape, dims, ndim, 64);
  Py_XDECREF(shape);
  PyObject* dtype = slots.get(o, S::kDtype, true);
  if (!shape_ok || dtype == nullptr) {
    Py_XDECREF(dtype);
    PyErr_Clear();
    return false;
  }
  f.dtype = types.torch_dtype_code(dtype);
  Py_DECREF(dtype);
  sizes.assign(dims, dims + ndim);
  f.negative = negative != 0;
  f.on_cpu = on_cpu != 0;
  f.ptr = static_cast<uintptr_t>(ptr);
  f.contiguous = contiguous != 0;
  f.ndim = ndim;
  return true;
}

// Whether both ways read the same facts of every probe tensor: views with an offset and
// strides, each dtype read, a 0-d tensor, an empty one and a negative view.
std::string probe_disagreement(const TorchAbi& abi, const TorchSlots& slots, const ArrayTypes& types) {
  try {
    py::module_ torch = py::module_::import("torch");
    py::object f32 = torch.attr("float32");
    py::object base = torch.attr("arange")(60).attr("to")(f32).attr("reshape")(3, 4, 5);
    std::vector<py::object> probes = {
        base,
        base[py::make_tuple(py::slice(1, 3, 1), py::slice(0, 4, 2), py::slice(1, 5, 1))],
        base[py::make_tuple(2, 1)],
        base[py::make_tuple(0, 0, 3)],
        torch.attr("zeros")(7, py::arg("dtype") = torch.attr("bfloat16")),
        torch.attr("zeros")(py::make_tuple(2, 0), py::arg("dtype") = torch.attr("float16")),
        torch.attr("ones")(5, py::arg("dtype") = torch.attr("float64")),
        torch.attr("ones")(3, py::arg("dtype") = torch.attr("int16")),
        torch.attr("nn").attr("Parameter")(base.attr("clone")()),
    };
    if (py::hasattr(torch, "_neg_view")) probes.push_back(torch.attr("_neg_view")(base));
    for (size_t k = 0; k < probes.size(); ++k) {
      PyObject* o = probes[k].ptr();
      if (!slots.direct_for(o, types.torch_tensor.ptr())) return "probe " + std::to_string(k) + " is not read directly";
      TorchAbiFacts a, m;
      std::vector<int64_t> sizes;
      if (!abi.read(o, slots, a)) return "probe " + std::to_string(k) + ": a C function failed";
      if (!facts_by_methods(o, slots, types, m, sizes)) return "probe " + std::to_string(k) + ": a method failed";
      bool same = a.negative == m.negative && a.on_cpu == m.on_cpu && !a.on_cuda && a.ptr == m.ptr &&
                  a.contiguous == m.contiguous && a.dtype == m.dtype && a.ndim == m.ndim;
      for (int d = 0; same && d < a.ndim; ++d) same = a.sizes[d] == sizes[static_cast<size_t>(d)];
      if (!same) return "probe " + std::to_string(k) + " reads differently through the C functions";
    }
    return {};
  } catch (const std::exception& e) {
    PyErr_Clear();
    return std::string("the probes failed: ") + e.what();
  }
}
#endif

}  // namespace

TorchAbi TorchAbi::resolve(PyObject* torch, const TorchSlots& slots) {
  TorchAbi abi;
#ifndef FUSEDOPT_HAVE_DLFCN
  (void)torch;
  (void)slots;
  abi.reason = "not on this platform";
  return abi;
#else
  // The escape hatch, and the A/B of bench/step_overhead.py: read through the methods.
  const char* choice = std::getenv("FUSEDOPT_TORCH_READER");
  if (choice != nullptr && std::string(choice) == "methods") {
    abi.reason = "FUSEDOPT_TORCH_READER=methods";
    return abi;
  }
  const std::string dir = torch_lib_dir(torch);
  // Already loaded by `import torch`; RTLD_NOLOAD loads nothing new.
  void* lib = nullptr;
  for (const char* name : {"libtorch_cpu.so", "libtorch_cpu.dylib"}) {
    if (!dir.empty() && (lib = dlopen((dir + name).c_str(), RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD)) != nullptr) break;
  }
  if (lib == nullptr) {
    abi.reason = "libtorch_cpu is not loaded from " + dir;
    return abi;
  }
  bool found = true;
  auto sym = [&](const char* name) {
    void* p = dlsym(lib, name);
    found = found && p != nullptr;
    return p;
  };
  abi.data_ptr = reinterpret_cast<GetPtr>(sym("aoti_torch_get_data_ptr"));
  abi.dim = reinterpret_cast<GetInt64>(sym("aoti_torch_get_dim"));
  abi.sizes = reinterpret_cast<GetInt64s>(sym("aoti_torch_get_sizes"));
  abi.dtype = reinterpret_cast<GetInt32>(sym("aoti_torch_get_dtype"));
  abi.device_type = reinterpret_cast<GetInt32>(sym("aoti_torch_get_device_type"));
  abi.device_index = reinterpret_cast<GetInt32>(sym("aoti_torch_get_device_index"));
  abi.layout = reinterpret_cast<GetInt32>(sym("aoti_torch_get_layout"));
  abi.is_contiguous = reinterpret_cast<GetBool>(sym("aoti_torch_is_contiguous"));
  abi.is_neg = reinterpret_cast<IsNeg>(sym("_ZN2at6native6is_negERKNS_6TensorE"));
  using Code = int32_t (*)();
  const char* const code_names[] = {"aoti_torch_dtype_float32", "aoti_torch_dtype_float64",
                                    "aoti_torch_dtype_bfloat16", "aoti_torch_dtype_float16",
                                    "aoti_torch_device_type_cpu", "aoti_torch_device_type_cuda",
                                    "aoti_torch_layout_strided", "aoti_torch_dtype_int16"};
  int32_t codes[8] = {};
  for (int k = 0; k < 8; ++k) {
    auto code = reinterpret_cast<Code>(sym(code_names[k]));
    if (code != nullptr) codes[k] = code();
  }
  dlclose(lib);  // the library stays loaded: torch holds it
  if (!found) {
    abi.reason = "libtorch_cpu lacks a function read (another torch version)";
    return abi;
  }
  for (int k = 0; k < 4; ++k) abi.dtype_codes[k] = codes[k];
  abi.cpu = codes[4];
  abi.cuda = codes[5];
  abi.strided = codes[6];
  abi.int16 = codes[7];
  abi.ready = true;  // for the probes; kept only if they agree
  ArrayTypes types;
  PyObject* t = PyObject_GetAttrString(torch, "Tensor");
  types.torch_tensor = py::reinterpret_steal<py::object>(t);
  for (auto [field, name] : {std::pair{&types.torch_float32, "float32"}, {&types.torch_float64, "float64"},
                             {&types.torch_bfloat16, "bfloat16"}, {&types.torch_float16, "float16"},
                             {&types.torch_int16, "int16"}}) {
    PyObject* d = PyObject_GetAttrString(torch, name);
    *field = d == nullptr ? py::none() : py::reinterpret_steal<py::object>(d);
  }
  PyErr_Clear();
  abi.reason = t == nullptr ? "torch.Tensor is missing" : probe_disagreement(abi, slots, types);
  abi.ready = abi.reason.empty();
  return abi;
#endif
}

bool TorchAbi::read(PyObject* o, const TorchSlots& slots, TorchAbiFacts& f) const {
  PyObject* cdata = slots.get(o, TorchSlots::kCData, true);
  if (cdata == nullptr) {
    PyErr_Clear();
    return false;
  }
  void* impl = PyLong_AsVoidPtr(cdata);
  Py_DECREF(cdata);
  if (impl == nullptr) {
    PyErr_Clear();
    return false;
  }
  // An at::Tensor is its TensorImpl pointer: `&impl` stands for one while `o` (which owns
  // the TensorImpl) is alive and the GIL held.
  const Handle h = &impl;
  int64_t ndim = 0;
  int64_t* dims = nullptr;
  int32_t dt = 0, device = 0, index = -1, lay = 0;
  bool contiguous = false;
  void* ptr = nullptr;
  if (layout(h, &lay) != 0 || lay != strided || device_type(h, &device) != 0 || (device != cpu && device != cuda) ||
      dim(h, &ndim) != 0 || sizes(h, &dims) != 0 || dtype(h, &dt) != 0 ||
      (device == cuda && device_index(h, &index) != 0) || is_contiguous(h, &contiguous) != 0 ||
      data_ptr(h, &ptr) != 0 || ndim < 0 || ndim > 64)
    return false;
  f.negative = is_neg(h);
  f.ndim = static_cast<int>(ndim);
  f.sizes = dims;
  f.dtype = -1;
  for (int k = 0; k < 4; ++k)
    if (dt == dtype_codes[k]) f.dtype = k;  // dtype_codes are in DType's order
  if (dt == int16) f.dtype = kInt16Code;
  f.on_cpu = device == cpu;
  f.on_cuda = device == cuda;
  f.device = f.on_cuda ? index : -1;
  f.contiguous = contiguous;
  f.ptr = reinterpret_cast<uintptr_t>(ptr);
  return true;
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
