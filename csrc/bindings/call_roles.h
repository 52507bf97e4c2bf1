// How the fast paths of both modules (CPU: batch_from_python.cpp; CUDA:
// cuda/device_batch.cpp) read the arguments of one call: the params, the grads and the list
// of state lists, each a list or tuple of arrays, or each a single array standing for a
// one-tensor call, as fusedopt/_arrays.py's prepare() reads them. Only the shape of the
// call is checked here; the arrays themselves are each path's business.
#pragma once

#include <pybind11/pybind11.h>

#include "common/batch.h"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

// One role's arrays, read without a Python call per item.
//
// `at` points into the list or tuple itself. A path that calls into Python while it reads
// the items (the CUDA path reads attributes; a getter or a garbage collection it triggers
// could change a list and free the array `at` points into) opens with hold=true: a list
// is then copied into a tuple of its own, which nothing else can change, and whatever `at`
// points into is owned here.
struct RoleItems {
  PyObject* const* at = nullptr;
  Py_ssize_t size = 0;
  bool single = false;
  PyObject* one = nullptr;
  py::object held;  // the tuple copy of a list (hold=true)

  // is_array(o): whether a value that is not a list or tuple is one array of the path's kind.
  template <class IsArray>
  bool open(PyObject* o, IsArray&& is_array, bool hold = false) {
    if (hold) {  // own what `at` will point into: a tuple copy of a list, else the object
      held = PyList_Check(o) ? py::reinterpret_steal<py::object>(PyList_AsTuple(o))
                             : py::reinterpret_borrow<py::object>(o);
      if (!held) throw py::error_already_set();
      o = held.ptr();
    }
    if (PyList_Check(o) || PyTuple_Check(o)) {
      size = PySequence_Fast_GET_SIZE(o);
      at = PySequence_Fast_ITEMS(o);
      return true;
    }
    if (!is_array(o)) return false;
    one = o;
    at = &one;
    size = 1;
    single = true;
    return true;
  }
};

// Opens every role of a call into roles[0, n_roles): true if params, grads and each state
// list are all lists of one length or all single arrays (prepare() refuses a mix), with at
// most kMaxStates state roles. The items are borrowed from the arguments (from copies of
// the lists, with hold=true), which the caller keeps alive.
template <class IsArray>
bool open_call(py::handle params, py::handle grads, py::handle states, IsArray&& is_array,
               RoleItems (&roles)[kMaxRoles], int& n_roles, bool hold = false) {
  RoleItems state_roles;
  if (!roles[kParam].open(params.ptr(), is_array, hold) ||
      !roles[kGrad].open(grads.ptr(), is_array, hold) ||
      !state_roles.open(states.ptr(), [](PyObject*) { return false; }, hold))
    return false;
  if (state_roles.size > kMaxStates) return false;
  for (Py_ssize_t k = 0; k < state_roles.size; ++k)
    if (!roles[kState0 + k].open(state_roles.at[k], is_array, hold)) return false;
  n_roles = 2 + static_cast<int>(state_roles.size);
  for (int r = 1; r < n_roles; ++r)
    if (roles[r].size != roles[kParam].size || roles[r].single != roles[kParam].single) return false;
  return true;
}

}  // namespace bindings
}  // namespace fusedopt
