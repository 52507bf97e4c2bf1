// The one reader of a call's arrays, compiled into the CPU and the CUDA module.
//
// It takes the params, the grads and the state lists of a call as the caller passed them
// (lists or tuples of arrays, or one array per role for a one-tensor call), reads every
// array as directly as its kind allows (NumPy arrays through their C struct, torch tensors
// through their own methods, CuPy arrays through their fields, anything else through its
// __cuda_array_interface__) and applies every rule of what a call may be, once:
//
//   list structure and lengths; a known kind of array; one kind of memory (host or
//   device); a supported dtype per argument, shared by its arrays, in a combination the
//   params' dtype allows (storage_allows); equal shapes per tensor; C-contiguous;
//   aligned to the element; writable where written; no written array sharing a byte with
//   another array.
//
// It answers with the pointers of an accepted call, or with the first rule broken, in the
// order of the roles and tensors, and where (role, list index, and the other array for an
// overlap). fusedopt/_arrays.py words a refusal; it checks nothing itself.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings/array_facts.h"
#include "common/batch.h"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

// What a refused call broke. The names (rule_names()) are what Python sees.
enum class Rule : int {
  kNone = 0,
  kNotList,        // a role is not a list or tuple while params is one
  kListForSingle,  // a role is a list or tuple while params is one array
  kLength,         // a role's list differs in length from params
  kTooManyStates,  // more state lists than any rule keeps
  kNotArray,       // not an array this reader knows
  kUnreachable,    // a torch tensor whose memory does not hold its values, or on another device
  kMixedMemory,    // host and device arrays in one call
  kDtype,          // a dtype the kernels do not store
  kDtypeMismatch,  // another dtype than the same argument's first array (other_role, other_index)
  kShape,          // another shape than its param
  kNotContiguous,
  kMisaligned,
  kReadOnly,
  kOverlap,     // shares memory with another array (other_role, other_index)
  kDeviceCall,  // (not an error) a host-only read met device arrays: the CUDA module's call
  kOtherGpu,    // on another GPU than the call's first array that says which
  kNullData,    // elements, but a null data pointer
  kDtypeCombination,  // a dtype the params' dtype does not go with (storage_combinations())
  kStateShape,        // factored layout: a state of another shape than its param needs, or
                      // an array where it needs None, or None where it needs an array
  kMasterDtype,       // a master or remainder of another dtype than its form stores (float32,
                      // int16), or params whose dtype cannot have it (other_role 0: the param)
};
const std::vector<std::string>& rule_names();

struct Refusal {
  Rule rule = Rule::kNone;
  int role = -1;  // into the call's roles: params, grads (if any), then the states
  int64_t index = -1;
  int other_role = -1;
  int64_t other_index = -1;
  explicit operator bool() const { return rule != Rule::kNone; }
  py::tuple to_python() const;  // (rule name, role, index, other role, other index)
};

// How a call's states are shaped. kSame: like their params (the elementwise rules).
// kFactored (Adafactor, as torch keeps it): three state roles; a param of two or more dims
// [..., R, C] keeps a row factor [..., R, 1] and a column factor [..., 1, C] and None for
// the third, a param of fewer dims None, None and a full state of its own shape. The
// storage types are every rule's (storage_allows).
enum class StateLayout : int { kSame = 0, kFactored = 1 };
StateLayout layout_from_name(const std::string& name);  // "same" or "factored"

// Master weights are one more named role, after the states (common/batch.h: Master): its
// pointers and items are kept in the slot after the Batch roles.
constexpr int kMasterSlot = kMaxRoles;
constexpr int kMaxNamed = kMaxRoles + 1;
Master master_from_name(const std::string& name);  // "none", "float32" or "remainders"

// An accepted call: one Batch's worth of pointers, and what keeps them valid.
struct ReadCall {
  DType dtypes[kMaxRoles] = {DType::kFloat32, DType::kFloat32, DType::kFloat32, DType::kFloat32,
                             DType::kFloat32};  // per Batch role (common/batch.h)
  bool single = false;     // one array per role, not lists
  bool on_device = false;  // CUDA memory (CuPy arrays, torch CUDA tensors, interfaces)
  int device = -1;         // the GPU where the arrays say (-1: not said, or host)
  bool torch_params = false;
  bool has_grads = true;
  int n_roles = 0;  // params, grads (even when absent), states
  int64_t n_tensors = 0;
  std::vector<int64_t> offsets{0};
  Master master = Master::kNone;
  std::vector<void*> ptrs[kMaxNamed];  // [kMasterSlot]: the masters or remainders
  std::vector<int64_t> factor_dims;  // kFactored: rows and columns per tensor (common/batch.h)
  std::vector<PyObject*> items[kMaxNamed];  // borrowed from `held` and `grad_held`
  // What keeps the pointers valid: the params' and states' lists (as tuples), and the
  // storages of their torch tensors (memory); the grads' list and storages apart
  // (grad_held), so that a Batch kept across steps can let go of a step's gradients.
  std::vector<py::object> held, memory, grad_held;
  // The streams that __cuda_array_interface__ producers named: work on them must finish
  // before a kernel reads the arrays (the CUDA module waits for them).
  std::vector<uintptr_t> streams;
  // Some device array did not say which GPU it is on (a bare __cuda_array_interface__):
  // the CUDA module asks the driver for each before it launches.
  bool device_unknown = false;
  // ReadOptions::defer_torch_storage: the torch tensors whose storage was not taken yet
  // (borrowed from `held`), and whether each is a gradient.
  std::vector<std::pair<PyObject*, bool>> deferred;
  std::shared_ptr<const ArrayTypes> deferred_types;  // the slots they were read through

  // Takes the storage of every deferred tensor (into memory or grad_held), as the read
  // would have. Call it, the GIL held since the read, before anything can change a tensor:
  // releasing the GIL, or running Python code.
  void hold_deferred_storages();

  Batch batch() const;
};

// One array as the rules see it, whatever its kind.
constexpr int kMaxDims = 64;  // NumPy 2's NPY_MAXDIMS
struct ArrayItem {
  bool on_device = false;
  int device = -1;  // the GPU where the array says which
  int dtype = -1;   // DType code; -1: a dtype the kernels do not store
  int ndim = 0;
  int64_t dims[kMaxDims];
  int64_t count = 1;
  uintptr_t ptr = 0;
  bool aligned = true;  // NumPy's own word on alignment (the reader also checks the pointer)
  bool contiguous = false;
  bool writable = true;
  bool torch = false;
  bool storage_deferred = false;  // a torch tensor whose storage the read did not take
  uintptr_t stream = 0;  // a __cuda_array_interface__'s producer stream (0: none named)
  py::object memory;  // a torch tensor's storage

  bool same_shape(const ArrayItem& o) const {
    if (ndim != o.ndim) return false;
    for (int d = 0; d < ndim; ++d)
      if (dims[d] != o.dims[d]) return false;
    return true;
  }
  void reset() {  // as new, without clearing dims: a read sets ndim of them
    on_device = false;
    device = -1;
    dtype = -1;
    ndim = 0;
    count = 1;
    ptr = 0;
    aligned = true;
    contiguous = false;
    writable = true;
    torch = false;
    storage_deferred = false;
    stream = 0;
    memory = py::object();
  }
  void count_from_dims() {
    count = 1;
    for (int d = 0; d < ndim; ++d) count *= dims[d];
  }
};

// The shape that state `k` of a param of shape `param` has under `layout` (into `out`'s
// ndim and dims); false where the param keeps no such state.
bool expected_state_shape(StateLayout layout, int k, const ArrayItem& param, ArrayItem& out);

// The array types to tell apart, looked up once per call (CuPy and torch may be imported,
// or swapped for stand-ins by the tests, at any time).
struct ArrayKinds {
  // Shared, not borrowed: a read can call Python code (an attribute of a user's object)
  // that imports torch, and the cache then moves on while this read keeps its types.
  std::shared_ptr<const ArrayTypes> types = current_types();
  const ArrayTypes& known = *types;
  // The types of the torch and CuPy modules in sys.modules now, looked up again only when
  // either module object changed (it was imported, or swapped for a stand-in).
  static std::shared_ptr<const ArrayTypes> current_types();
  bool is_torch(PyObject* o) const;  // torch.Tensor and its subclasses
  // A torch tensor read through torch's own C getters and methods (TorchSlots), not by name.
  bool torch_direct(PyObject* o) const {
    return known.kind(o) == Kind::kTorch && known.torch_slots.direct_for(o, known.torch_tensor.ptr());
  }
  static bool is_cupy(PyObject* o);  // CuPy's arrays, by their type's module
};

struct ReadOptions {
  // Stop at params[0] if it is a device array (Rule::kDeviceCall): the CPU module's fast
  // path, which then leaves the call to the CUDA module instead of reading it all.
  bool host_only = false;
  // The host emulation of the CUDA kernels: its device memory is host memory, so torch CPU
  // tensors stand for CUDA ones there. Set by that module only.
  bool host_tensors_are_device = false;
  // Nothing is written (norms and counts over gradients passed as the params): no
  // writability rule, and arrays may share memory.
  bool read_only = false;
  // Keep every array's object per role (ReadCall::items): the CUDA module's Batch holds them
  // for later steps; the CPU module reads and runs at once and skips the work.
  bool want_items = false;
  StateLayout layout = StateLayout::kSame;
  // Master weights: the form of the masters read_call is given (None where kNone).
  Master master = Master::kNone;
  // Leave the storages of torch tensors read through torch's C functions untaken
  // (ReadCall::deferred) while the read runs no Python code; they are taken before the
  // first array whose read could. For a caller that runs the kernel at once, the GIL held
  // throughout: nothing can point a tensor at other memory meanwhile, and a small call then
  // need not take them at all (_core.run).
  bool defer_torch_storage = false;
};

// Reads one array: what it is, where it lives and its layout; Rule::kNone, or the rule its
// kind alone breaks (kNotArray, kUnreachable). The rules between arrays are read_call's.
Rule read_array(PyObject* o, const ArrayKinds& kinds, const ReadOptions& options, ArrayItem& it);
// Only the shape of an array (its `shape` attribute), for arrays whose other facts cannot
// change in place (CuPy's).
bool read_array_shape(PyObject* o, ArrayItem& it);

// Reads a call. grads may be None: an optimizer's own arrays (params and states, all
// written) checked at construction. `states` is a list or tuple of the state roles' values;
// `masters` the masters or remainders of options.master (a role after the states), else None.
Refusal read_call(py::handle params, py::handle grads, py::handle states, const ReadOptions& options,
                  ReadCall& out, py::handle masters = py::none());

// A gradients-only call (norms, non-finite counts): `grads` read as one role, nothing
// written, its pointers in the grads' slot of the batch.
Refusal read_grads(py::handle grads, ReadOptions options, ReadCall& out);

// The storage combinations a call may have: with params of dtype `param`, whether the
// grads (is_grad) or the states may be stored in `d`. Every state of a call shares one dtype.
//   float64 params: everything float64 (float64 arithmetic).
//   float32 params: grads float32, bfloat16 or float16; states float32 or bfloat16.
//   bfloat16 and float16 params: grads in the params' dtype or float32; states float32 or
//   bfloat16.
// Arithmetic is float32 for every storage but float64.
bool storage_allows(DType param, bool is_grad, DType d);

// The process-wide options of the module this is compiled into (see ReadOptions).
ReadOptions& module_read_options();

}  // namespace bindings
}  // namespace fusedopt
