// Turns the Python layer's lists of NumPy arrays into a Batch. The arrays were already
// checked by fusedopt/_arrays.py (dtype, contiguity, shapes, writability, overlap); this
// only reads their data pointers, and re-asserts the facts memory safety rests on (sizes
// and element size), so a direct call into the private module cannot write out of bounds.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "bindings/array_facts.h"
#include "common/batch.h"
#include "common/overlap.h"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

struct ArrayRead;  // one array as batch_from_python.cpp reads it

class PyBatch {
 public:
  PyBatch() = default;
  // params, grads: lists or tuples of arrays; states: a list or tuple of such lists
  // (role-major). Anything else is a TypeError.
  PyBatch(py::handle params, py::handle grads, py::handle states, int dtype_code);
  // Only gradients (norms, non-finite counts): nothing is written.
  PyBatch(py::handle grads, int dtype_code);
  const Batch& batch() const { return batch_; }

  // The native fast path of fusedopt/_arrays.py, in one pass over raw array structs: reads
  // the pointers and returns true if every array obeys the rules of _arrays.prepare()
  // (lists or tuples of NumPy arrays of one supported dtype, equal lengths, equal shapes per
  // tensor, C-contiguous, aligned, written arrays writable and overlapping nothing; or one
  // NumPy array per role, for a one-tensor call). `states` lists the state roles. A false
  // answer leaves the batch unusable and never explains itself: the caller then runs
  // prepare(), which is the authority and words the error.
  bool build_strict(py::handle params, py::handle grads, py::handle states);

 private:
  // A tuple copy of a list or tuple of arrays, kept: it owns the arrays while the kernel
  // runs without the GIL, whatever happens to the caller's list.
  py::tuple hold(py::handle arrays);
  void set_sizes(const py::tuple& arrays, int dtype_code);
  void add_role(int role, const py::tuple& arrays, bool written);
  void read_checked(PyObject* obj, const char* role, ArrayRead& out);

  Batch batch_;
  std::vector<int64_t> offsets_;
  std::vector<void*> ptrs_[kMaxRoles];
  size_t itemsize_ = 0;
  std::vector<py::object> held_;  // what the pointers were read from (see hold())
  std::unique_ptr<ArrayTypes> types_;  // the checked constructors' look-up of torch's types
};

}  // namespace bindings
}  // namespace fusedopt
