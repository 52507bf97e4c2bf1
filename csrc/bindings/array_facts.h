// The reader's (bindings/reader.cpp) access to torch tensors and CuPy arrays: their types,
// looked up where their library is imported, and their facts, read through the objects'
// own C-level fields and methods, never through Python code that builds a dict or imports
// a module.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/dtype.h"

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
  PyObject* torch = PyUnicode_InternFromString("torch");  // module names
  PyObject* cupy = PyUnicode_InternFromString("cupy");
  // torch
  PyObject* Tensor = PyUnicode_InternFromString("Tensor");
  PyObject* Parameter = PyUnicode_InternFromString("Parameter");
  PyObject* float32 = PyUnicode_InternFromString("float32");
  PyObject* float64 = PyUnicode_InternFromString("float64");
  PyObject* bfloat16 = PyUnicode_InternFromString("bfloat16");
  PyObject* float16 = PyUnicode_InternFromString("float16");
  PyObject* int16 = PyUnicode_InternFromString("int16");
  PyObject* data_ptr = PyUnicode_InternFromString("data_ptr");
  PyObject* get_device = PyUnicode_InternFromString("get_device");
  PyObject* is_contiguous = PyUnicode_InternFromString("is_contiguous");
  PyObject* is_neg = PyUnicode_InternFromString("is_neg");
  PyObject* is_cuda = PyUnicode_InternFromString("is_cuda");
  PyObject* is_cpu = PyUnicode_InternFromString("is_cpu");
  PyObject* untyped_storage = PyUnicode_InternFromString("untyped_storage");
  PyObject* nbytes = PyUnicode_InternFromString("nbytes");
  PyObject* numel = PyUnicode_InternFromString("numel");
  PyObject* cdata = PyUnicode_InternFromString("_cdata");
};
const Names& names();

// An attribute of a module that has been imported (this never imports one), or None.
py::object imported_attr(const char* module, PyObject* name);

// torch.Tensor's own C getters and methods, looked up once per torch module and called
// without the attribute protocol: the type lookup, the instance __dict__ probe and the
// method-call machinery cost about as much per fact as the fact itself (a tensor read
// took ~0.5 us where a NumPy array takes ~30 ns). Used for torch.Tensor and
// nn.Parameter exactly, while their types are as when looked up (tp_version_tag: any
// attribute set on either type, or on a base, changes it); subclasses, a torch whose
// attributes are not the C descriptors expected, and a changed type are read by name.
struct TorchSlots {
  enum Getter { kIsCpu, kIsCuda, kDtype, kShape, kCData, kGetters };
  enum Method { kDataPtr, kIsContiguous, kIsNeg, kUntypedStorage, kGetDevice, kMethods };

  bool ready = false;  // every slot below resolved as expected
  PyGetSetDef* getters[kGetters] = {};
  PyMethodDef* methods[kMethods] = {};     // null: called through its descriptor
  py::object descrs[kGetters + kMethods];  // own the PyGetSetDefs and PyMethodDefs
  py::object no_args;                      // () for METH_VARARGS methods
  // The types' version tags when resolved (0: none, which never matches).
  unsigned int tensor_tag = 0, parameter_tag = 0;

  static TorchSlots resolve(PyObject* tensor_type, PyObject* parameter_type);
  // Whether a tensor of exactly torch.Tensor or nn.Parameter may be read through the slots.
  bool direct_for(PyObject* o, PyObject* tensor_type) const {
    if (!ready) return false;
    PyTypeObject* t = Py_TYPE(o);
    const unsigned int tag = reinterpret_cast<PyObject*>(t) == tensor_type ? tensor_tag : parameter_tag;
    return tag != 0 && t->tp_version_tag == tag;
  }
  // Whether either type changed since resolved (then the slots are looked up again).
  bool stale(PyObject* tensor_type, PyObject* parameter_type) const;
  // A getter's value or a method's result (no arguments): a new reference, or null with a
  // Python error set. Through the slot where `direct`, else by name.
  PyObject* get(PyObject* o, Getter g, bool direct) const;
  PyObject* call(PyObject* o, Method m, bool direct) const;
};

// A tensor's facts as torch's C entry points give them (TorchAbi::read).
struct TorchAbiFacts {
  bool negative = false;  // the negative bit: the memory holds -x
  int ndim = 0;
  const int64_t* sizes = nullptr;  // borrowed from the tensor
  int dtype = -1;                  // DType code or kInt16Code; -1: another dtype
  bool on_cpu = false, on_cuda = false;
  int device = -1;  // the CUDA device's index
  bool contiguous = false;
  uintptr_t ptr = 0;
};

// torch's C functions for a tensor's facts, found in the loaded libtorch_cpu: the
// `aoti_torch_*` functions of torch's C shim (the stable C interface that compiled models
// call: extern "C", each a plain read of the tensor) and at::native::is_neg. A tensor read
// through them costs tens of nanoseconds; through its Python methods, ~0.7 us (is_neg()
// alone parses its arguments, releases the GIL and goes through the dispatcher).
//
// Their handle is a pointer to an at::Tensor, which is one pointer to the TensorImpl (the
// C shim's own convention); the TensorImpl's address is the tensor's `_cdata`. Resolved
// once per torch module, and used only after reading probe tensors both ways (strided
// views with an offset, 16-bit, 0-d, a negative view, CPU only) gave the same facts:
// any difference, or a function not found, leaves the methods in use (`reason` says why).
struct TorchAbi {
  using Handle = void*;  // AtenTensorHandle
  using Error = int32_t;
  using GetPtr = Error (*)(Handle, void**);
  using GetInt64 = Error (*)(Handle, int64_t*);
  using GetInt64s = Error (*)(Handle, int64_t**);
  using GetInt32 = Error (*)(Handle, int32_t*);
  using GetBool = Error (*)(Handle, bool*);
  using IsNeg = bool (*)(const void* tensor);  // at::native::is_neg(const at::Tensor&)

  bool ready = false;
  std::string reason = "torch is not imported";
  GetPtr data_ptr = nullptr;
  GetInt64 dim = nullptr;
  GetInt64s sizes = nullptr;
  GetInt32 dtype = nullptr, device_type = nullptr, device_index = nullptr, layout = nullptr;
  GetBool is_contiguous = nullptr;
  IsNeg is_neg = nullptr;
  int32_t dtype_codes[4] = {};  // torch's codes of float32, float64, bfloat16, float16
  int32_t int16 = -1;           // and of int16 (remainders: kInt16Code)
  int32_t cpu = -1, cuda = -1, strided = -1;

  // `torch` is the torch module; `slots` must be ready (the _cdata getter comes from it).
  static TorchAbi resolve(PyObject* torch, const TorchSlots& slots);
  // The facts of a torch.Tensor or nn.Parameter exactly (TorchSlots::direct_for), holding
  // the GIL throughout; false, with no Python error set, if any read failed (then read
  // by its methods).
  bool read(PyObject* o, const TorchSlots& slots, TorchAbiFacts& f) const;
};

// The reader's code for int16 arrays (param remainders): a dtype of arrays it reads, not
// a storage type of the kernels (common/dtype.h).
constexpr int kInt16Code = 16;
inline int code_itemsize(int code) { return code == kInt16Code ? 2 : itemsize_of(code); }

// The array types read here, exactly (a subclass goes to the Python checks), where their
// library has been imported. Looked up per call, not cached: a few dict lookups, and the
// tests swap CuPy for a stand-in.
enum class Kind { kNone, kCupy, kTorch };
struct ArrayTypes {
  py::object cupy_ndarray, torch_tensor, torch_parameter, torch_float32, torch_float64, torch_bfloat16,
      torch_float16, torch_int16;
  TorchSlots torch_slots;
  TorchAbi torch_abi;

  static ArrayTypes imported();

  Kind kind(PyObject* o) const {
    auto* type = reinterpret_cast<PyObject*>(Py_TYPE(o));
    if (type == cupy_ndarray.ptr()) return Kind::kCupy;
    if (type == torch_tensor.ptr() || type == torch_parameter.ptr()) return Kind::kTorch;
    return Kind::kNone;  // (None's type is never one of these)
  }
  // The DType code of a torch dtype object (float32, float64, bfloat16, float16),
  // kInt16Code for int16, else -1.
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

// A torch tensor's facts through its own C methods and fields (through `slots` where
// `direct`, else by name): on the CPU or on a CUDA device (other devices are refused:
// false). The size comes from the caller's shape read (`numel`); the negative bit is the
// caller's to read, before anything else (read_array).
bool read_torch(PyObject* o, const TorchSlots& slots, bool direct, int64_t numel, ArrayFacts& f);

// A shape tuple (torch.Size is one) into dims; false if it is not a tuple of ints or has
// more than `max_dims` entries.
bool read_shape(PyObject* shape, int64_t* dims, int& ndim, int max_dims);

}  // namespace bindings
}  // namespace fusedopt
