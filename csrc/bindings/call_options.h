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

// The options as read from Python, apart from the Batch they go on: a caller that reads
// them before the arrays knows that no Python code runs between the read and the kernel.
struct RunOptions {
  double grad_multiplier = 1.0;
  uint32_t stochastic_roles = 0;
  uint32_t rounding_key[2] = {0, 0};

  // `rounding` is None (nearest even everywhere) or (roles, key0, key1) as
  // fusedopt/_coeffs.py's rounding() makes it: a bit per stochastically rounded role.
  static RunOptions read(double grad_multiplier, py::handle rounding) {
    RunOptions o;
    o.grad_multiplier = grad_multiplier;
    if (!rounding.is_none()) {
      const py::tuple t = py::reinterpret_borrow<py::tuple>(rounding);
      if (t.size() != 3) throw std::invalid_argument("rounding must be None or (roles, key0, key1)");
      o.stochastic_roles = t[0].cast<uint32_t>();
      o.rounding_key[0] = t[1].cast<uint32_t>();
      o.rounding_key[1] = t[2].cast<uint32_t>();
    }
    return o;
  }
  Batch applied_to(const Batch& batch) const {
    Batch b = batch;
    b.grad_multiplier = grad_multiplier;
    b.stochastic_roles = stochastic_roles;
    b.rounding_key[0] = rounding_key[0];
    b.rounding_key[1] = rounding_key[1];
    return b;
  }
};

inline Batch with_call_options(const Batch& batch, double grad_multiplier, py::handle rounding) {
  return RunOptions::read(grad_multiplier, rounding).applied_to(batch);
}

}  // namespace bindings
}  // namespace fusedopt
