// The reader's (bindings/reader.cpp) access to torch tensors and CuPy arrays: their types,
// looked up where their library is imported, and their facts, read through the objects'
// own C-level fields and methods, never through Python code that builds a dict or imports
// a module.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

// Attribute names, interned once: pybind11's attr("name") builds a new string per call,
// which cost more than the read itself on a 4,000-array call. Never freed.
struct Names {
  PyObject* data = PyUnicode_InternFromString("data");
  PyObject* ptr = PyUnicode_InternFromString("ptr");
  PyObject* device_id = PyUnicode_InternFromString("device_id");
  PyObject* size = PyUnicode_InternFromString("size");
  PyObject* dtype = PyUnicode_InternFromString("dtype");
  PyObject* shape = PyUnicode_InternFromString("shape");
  PyObject* c_contiguous = PyUnicode_InternFromString("_c_contiguous");
  PyObject* ndarray = PyUnicode_InternFromString("ndarray");
  // torch
  PyObject* Tensor = PyUnicode_InternFromString("Tensor");
  PyObject* Parameter = PyUnicode_InternFromString("Parameter");
  PyObject* float32 = PyUnicode_InternFromString("float32");
  PyObject* float64 = PyUnicode_InternFromString("float64");
  PyObject* bfloat16 = PyUnicode_InternFromString("bfloat16");
  PyObject* float16 = PyUnicode_InternFromString("float16");
  PyObject* data_ptr = PyUnicode_InternFromString("data_ptr");
  PyObject* get_device = PyUnicode_InternFromString("get_device");
  PyObject* is_contiguous = PyUnicode_InternFromString("is_contiguous");
  PyObject* is_neg = PyUnicode_InternFromString("is_neg");
  PyObject* is_cuda = PyUnicode_InternFromString("is_cuda");
  PyObject* is_cpu = PyUnicode_InternFromString("is_cpu");
  PyObject* untyped_storage = PyUnicode_InternFromString("untyped_storage");
  PyObject* nbytes = PyUnicode_InternFromString("nbytes");
  PyObject* numel = PyUnicode_InternFromString("numel");
};
const Names& names();

// An attribute of a module that has been imported (this never imports one), or None.
py::object imported_attr(const char* module, PyObject* name);

// The array types read here, exactly (a subclass goes to the Python checks), where their
// library has been imported. Looked up per call, not cached: a few dict lookups, and the
// tests swap CuPy for a stand-in.
enum class Kind { kNone, kCupy, kTorch };
struct ArrayTypes {
  py::object cupy_ndarray, torch_tensor, torch_parameter, torch_float32, torch_float64, torch_bfloat16,
      torch_float16;

  static ArrayTypes imported();

  Kind kind(PyObject* o) const {
    auto* type = reinterpret_cast<PyObject*>(Py_TYPE(o));
    if (type == cupy_ndarray.ptr()) return Kind::kCupy;
    if (type == torch_tensor.ptr() || type == torch_parameter.ptr()) return Kind::kTorch;
    return Kind::kNone;  // (None's type is never one of these)
  }
  // The DType code of a torch dtype object (float32, float64, bfloat16, float16), else -1.
  int torch_dtype_code(PyObject* dtype) const;
};

// The integer (or bool) value of a new reference, which it releases; false, with the error
// cleared, if the reference is null (a failed read or call) or not an integer.
bool take_int(PyObject* v, long long& out);
inline bool int_attr(PyObject* o, PyObject* name, long long& out) { return take_int(PyObject_GetAttr(o, name), out); }
inline bool call_int(PyObject* o, PyObject* method, long long& out) {
  return take_int(PyObject_CallMethodNoArgs(o, method), out);
}

struct ArrayFacts {
  uintptr_t ptr = 0;
  int64_t size = 0;
  bool contiguous = false;
  bool on_cpu = false;  // a torch tensor in host memory
  int device = -1;      // the GPU; -1: not known from the object itself (or on the CPU)
  // A torch tensor's storage: it owns the memory at ptr, while the tensor can be pointed
  // at other memory (.data =, set_()) between the check and the kernel.
  py::object memory;
};

// A cupy.ndarray's own fields: data.ptr, data.device_id, size and _c_contiguous are plain
// reads of CuPy's C fields (tens of ns each); `flags` would build an object per read.
bool read_cupy(PyObject* o, ArrayFacts& f);

// A torch tensor's facts through its own C methods and fields (about 0.1 us each): on the
// CPU or on a CUDA device (other devices, and a tensor with the negative bit, whose memory
// holds -x, are refused: false). The size comes from the caller's shape read (`numel`).
bool read_torch(PyObject* o, int64_t numel, ArrayFacts& f);

// A shape tuple (torch.Size is one) into dims; false if it is not a tuple of ints or has
// more than `max_dims` entries.
bool read_shape(PyObject* shape, int64_t* dims, int& ndim, int max_dims);

}  // namespace bindings
}  // namespace fusedopt
