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
  }
  return t;
}

int ArrayTypes::torch_dtype_code(PyObject* dtype) const {
  if (dtype == torch_float32.ptr()) return static_cast<int>(DType::kFloat32);
  if (dtype == torch_float64.ptr()) return static_cast<int>(DType::kFloat64);
  if (dtype == torch_bfloat16.ptr()) return static_cast<int>(DType::kBFloat16);
  if (dtype == torch_float16.ptr()) return static_cast<int>(DType::kFloat16);
  return -1;
}

bool take_int(PyObject* v, long long& out) {
  if (v == nullptr) {
    PyErr_Clear();
    return false;
  }
  out = PyLong_AsLongLong(v);  // a bool is an int too
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

bool read_torch(PyObject* o, int64_t numel, ArrayFacts& f) {
  const Names& n = names();
  long long on_cpu = 0, on_cuda = 0, ptr = 0, device = -1, contiguous = 0, negative = 0;
  if (!int_attr(o, n.is_cpu, on_cpu)) return false;
  if (!on_cpu && (!int_attr(o, n.is_cuda, on_cuda) || !on_cuda || !call_int(o, n.get_device, device) || device < 0))
    return false;
  if (!call_int(o, n.data_ptr, ptr) || !call_int(o, n.is_contiguous, contiguous) ||
      !call_int(o, n.is_neg, negative) || negative || ptr < 0 || numel < 0)
    return false;
  PyObject* storage = PyObject_CallMethodNoArgs(o, n.untyped_storage);
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
