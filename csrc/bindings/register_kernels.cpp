// The CPU update kernels. Arguments arrive already checked and the coefficients already
// computed (fusedopt/_arrays.py, fusedopt/_coeffs.py); this file only packs them into the
// plain structs of csrc/common/steps.h and releases the GIL while the kernel runs.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings/batch_from_python.h"
#include "common/steps.h"
#include "cpu/driver.h"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;
using math::Momentum;
using math::WeightDecay;

namespace {

// Runs one kernel over the arrays. strict=true is the fast path of the Python layer: the
// arrays are validated as fusedopt/_arrays.py would (the dtype is then read from them) and
// false comes back, with nothing run, if any rule is broken; Python's prepare() then finds
// the problem and words the error.
//
// params and grads are any objects here (a torch tensor is not a sequence to pybind11):
// the strict check refuses what it does not take, and PyBatch refuses anything but lists
// and tuples.
template <class Step>
bool run(void (*kernel)(const Step&, const Batch&), const Step& step, const py::object& params,
         const py::object& grads, const py::sequence& states, int dtype, bool strict) {
  auto go = [&](const PyBatch& batch) {
    py::gil_scoped_release release;
    kernel(step, batch.batch());
  };
  if (!strict) {
    go(PyBatch(params, grads, states, dtype));
    return true;
  }
  PyBatch batch;
  if (!batch.build_strict(params, grads, states)) return false;
  go(batch);
  return true;
}

// The loops dereference one state pointer per state the rule keeps: a call with fewer
// state lists than the flags ask for would read through a null pointer.
void expect_states(const py::sequence& states, size_t expected, const char* rule) {
  const size_t got = py::len(states);
  if (got != expected)
    throw std::invalid_argument(std::string(rule) + ": these flags need " + std::to_string(expected) +
                                " state lists, got " + std::to_string(got));
}

WeightDecay weight_decay_mode(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("bad weight-decay mode");
  return static_cast<WeightDecay>(code);
}

}  // namespace

void register_kernels(py::module_& m) {
  using py::arg;
  m.def(
      "sgd",
      [](py::object params, py::object grads, py::sequence states, int dtype, double lr,
         double weight_decay, double decay_factor, double momentum, double one_minus_dampening,
         bool maximize, int wd_mode, int momentum_mode, bool nesterov, bool strict) {
        if (momentum_mode < 0 || momentum_mode > 3) throw std::invalid_argument("bad momentum mode");
        expect_states(states, momentum_mode == 0 ? 0 : 1, "sgd");
        const SgdStep step{{lr, weight_decay, decay_factor, momentum, one_minus_dampening},
                           maximize, weight_decay_mode(wd_mode), static_cast<Momentum>(momentum_mode),
                           nesterov};
        return run(cpu::sgd, step, params, grads, states, dtype, strict);
      },
      arg("params"), arg("grads"), arg("states"), arg("dtype"), arg("lr"), arg("weight_decay"),
      arg("decay_factor"), arg("momentum"), arg("one_minus_dampening"), arg("maximize"),
      arg("wd_mode"), arg("momentum_mode"), arg("nesterov"), arg("strict") = false);

  m.def(
      "adagrad",
      [](py::object params, py::object grads, py::sequence states, int dtype, double clr,
         double weight_decay, double eps, bool maximize, int wd_mode, bool strict) {
        expect_states(states, 1, "adagrad");
        const AdagradStep step{{clr, weight_decay, eps}, maximize, weight_decay_mode(wd_mode)};
        return run(cpu::adagrad, step, params, grads, states, dtype, strict);
      },
      arg("params"), arg("grads"), arg("states"), arg("dtype"), arg("clr"), arg("weight_decay"),
      arg("eps"), arg("maximize"), arg("wd_mode"), arg("strict") = false);

  m.def(
      "rmsprop",
      [](py::object params, py::object grads, py::sequence states, int dtype, double lr,
         double alpha, double one_minus_alpha, double eps, double weight_decay, double momentum,
         bool maximize, int wd_mode, bool centered, bool has_momentum, bool strict) {
        expect_states(states, 1 + (centered ? 1 : 0) + (has_momentum ? 1 : 0), "rmsprop");
        const RmspropStep step{{lr, alpha, one_minus_alpha, eps, weight_decay, momentum},
                               maximize, weight_decay_mode(wd_mode), centered, has_momentum};
        return run(cpu::rmsprop, step, params, grads, states, dtype, strict);
      },
      arg("params"), arg("grads"), arg("states"), arg("dtype"), arg("lr"), arg("alpha"),
      arg("one_minus_alpha"), arg("eps"), arg("weight_decay"), arg("momentum"), arg("maximize"),
      arg("wd_mode"), arg("centered"), arg("has_momentum"), arg("strict") = false);

  m.def(
      "adam",
      [](py::object params, py::object grads, py::sequence states, int dtype, double beta1,
         double one_minus_beta1, double beta2, double one_minus_beta2, double step_size,
         double inv_sqrt_bc2, double eps, double weight_decay, double decay_factor, bool maximize,
         int wd_mode, bool amsgrad, bool strict) {
        expect_states(states, amsgrad ? 3 : 2, "adam");
        const AdamStep step{{beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, inv_sqrt_bc2,
                             eps, weight_decay, decay_factor},
                            maximize, weight_decay_mode(wd_mode), amsgrad};
        return run(cpu::adam, step, params, grads, states, dtype, strict);
      },
      arg("params"), arg("grads"), arg("states"), arg("dtype"), arg("beta1"), arg("one_minus_beta1"),
      arg("beta2"), arg("one_minus_beta2"), arg("step_size"), arg("inv_sqrt_bc2"), arg("eps"),
      arg("weight_decay"), arg("decay_factor"), arg("maximize"), arg("wd_mode"), arg("amsgrad"),
      arg("strict") = false);

  m.def(
      "traffic",
      [](py::sequence params, py::sequence grads, py::sequence states, int dtype) {
        const TrafficStep step{static_cast<int>(py::len(states))};
        run(cpu::traffic, step, params, grads, states, dtype, false);
      },
      arg("params"), arg("grads"), arg("states"), arg("dtype"),
      "The memory roof: the loads and stores of a rule with len(states) states, one add each.");

  m.def(
      "grad_sum_of_squares",
      [](py::sequence grads, int dtype) {
        PyBatch batch(grads, dtype);
        py::gil_scoped_release release;
        return cpu::grad_sum_of_squares(batch.batch());
      },
      arg("grads"), arg("dtype"));

  m.def(
      "validate",
      [](py::sequence params, py::sequence grads, py::sequence states) {
        PyBatch batch;
        return batch.build_strict(params, grads, states) ? static_cast<int>(batch.batch().dtype) : -1;
      },
      arg("params"), arg("grads"), arg("states"),
      "The dtype code if the arrays pass the checks of fusedopt/_arrays.py, else -1.");

  m.def(
      "count_nonfinite",
      [](py::sequence grads, int dtype) {
        PyBatch batch(grads, dtype);
        py::gil_scoped_release release;
        return cpu::count_nonfinite_grads(batch.batch());
      },
      arg("grads"), arg("dtype"), "Number of NaN and infinite values among the gradients.");

  m.def(
      "find_overlap",
      [](py::sequence arrays, py::sequence written) -> py::object {
        // Byte ranges of C-contiguous arrays; returns the first overlapping pair (i, j) in
        // which at least one array is written, or None.
        const size_t n = py::len(arrays);
        if (static_cast<size_t>(py::len(written)) != n)
          throw std::invalid_argument("find_overlap: arrays and written differ in length");
        std::vector<ByteSpan> spans;
        spans.reserve(n);
        for (size_t i = 0; i < n; ++i) {
          py::object item = arrays[i];
          if (!py::isinstance<py::array>(item))
            throw std::invalid_argument("find_overlap: item " + std::to_string(i) + " is not a NumPy array");
          auto a = py::reinterpret_borrow<py::array>(item);
          if (a.nbytes() == 0) continue;
          const auto lo = reinterpret_cast<uintptr_t>(a.data());
          spans.push_back({lo, lo + static_cast<uintptr_t>(a.nbytes()), i, written[i].cast<bool>()});
        }
        const auto pair = first_overlap(spans);
        if (pair.first < 0) return py::none();
        return py::make_tuple(pair.first, pair.second);
      },
      arg("arrays"), arg("written"));
}

}  // namespace bindings
}  // namespace fusedopt
