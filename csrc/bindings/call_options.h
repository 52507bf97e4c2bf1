// What a run takes besides its arrays and coefficients, read from Python the same way by
// the CPU and the CUDA module: the gradients' multiplier (math/grad_multiplier.h) and the
// rounding of 16-bit stores (math/storage.h), set on the call's Batch.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "common/batch.h"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

// `rounding` is None (nearest even everywhere) or (roles, key0, key1) as
// fusedopt/_coeffs.py's rounding() makes it: a bit per stochastically rounded role.
inline Batch with_call_options(const Batch& batch, double grad_multiplier, py::handle rounding) {
  Batch b = batch;
  b.grad_multiplier = grad_multiplier;
  if (!rounding.is_none()) {
    const py::tuple t = py::reinterpret_borrow<py::tuple>(rounding);
    if (t.size() != 3) throw std::invalid_argument("rounding must be None or (roles, key0, key1)");
    b.stochastic_roles = t[0].cast<uint32_t>();
    b.rounding_key[0] = t[1].cast<uint32_t>();
    b.rounding_key[1] = t[2].cast<uint32_t>();
  }
  return b;
}

}  // namespace bindings
}  // namespace fusedopt
