// The CPU update kernels. A call's arrays are read by the one reader (bindings/reader.h),
// its coefficients arrive computed (fusedopt/rules/) as one object per step, read by
// the names of common/steps.h; this file only joins the two and releases the GIL while the
// kernel runs. No rule of what a call accepts is written here.
#include <pybind11/pybind11.h>

#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings/call_options.h"
#include "bindings/reader.h"
#include "bindings/steps_from_python.h"
#include "common/flag_dispatch.h"
#include "common/steps.h"
#include "cpu/driver.h"
#include "math/modes.h"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

namespace {

// A call read by the reader, on host memory, ready to be counted, normed or run. It keeps
// the lists (as tuples of its own) and the torch storages alive while the kernels run
// without the GIL.
class HostCall {
 public:
  // defer_storage: ReadOptions::defer_torch_storage, for a caller that runs the call at
  // once, holding the GIL from the read to the kernel (read_and_run below).
  HostCall(py::handle params, py::handle grads, py::handle states, StateLayout layout,
           py::handle masters = py::none(), Master master = Master::kNone, bool defer_storage = false)
      : layout_(layout) {
    ReadOptions options = module_read_options();
    options.host_only = true;  // stop at params[0] if it is a device array: not ours
    options.layout = layout;
    options.master = master;
    options.defer_torch_storage = defer_storage;
    refusal_ = read_call(params, grads, states, options, call_, masters);
    if (!refusal_ && call_.on_device && call_.n_tensors > 0) refusal_ = {Rule::kDeviceCall, 0, 0};
    batch_ = call_.batch();
  }
  // Gradients only (norms, counts).
  explicit HostCall(py::handle grads) {
    refusal_ = read_grads(grads, module_read_options(), call_);
    if (!refusal_ && call_.on_device && call_.n_tensors > 0) refusal_ = {Rule::kDeviceCall, 0, 0};
    batch_ = call_.batch();
  }
  py::object refusal() const { return refusal_ ? py::object(refusal_.to_python()) : py::none(); }
  bool ok() const { return !refusal_; }
  const Batch& batch() const {
    if (refusal_) throw std::invalid_argument("this call was refused: it cannot run");
    return batch_;
  }
  int n_states() const { return call_.n_roles - 2; }
  bool has_grads() const { return call_.has_grads; }

  // Runs the rule whose name is `rule` with the coefficients `coeffs`, the gradients read
  // times `grad_multiplier` and 16-bit stores rounded as `rounding` says (call_options.h).
  void run(const std::string& rule, py::handle coeffs, double grad_multiplier = 1.0,
           py::handle rounding = py::none());
  // Runs `step`, read from Python already: nothing here runs Python code before the kernel.
  template <class Step>
  void run_step(const Step& step, StateLayout layout, const RunOptions& options);
  long long count_nonfinite() const {
    const Batch& b = grads_batch();
    py::gil_scoped_release release;
    return cpu::count_nonfinite_grads(b);
  }
  double grad_sum_of_squares() const {
    const Batch& b = grads_batch();
    py::gil_scoped_release release;
    return cpu::grad_sum_of_squares(b);
  }
  void traffic() const {
    const Batch& b = grads_batch();
    const TrafficStep step{n_states()};
    py::gil_scoped_release release;
    cpu::update(step, b);
  }

 private:
  const Batch& grads_batch() const {
    if (!call_.has_grads) throw std::invalid_argument("this call has no grads");
    return batch();
  }
  StateLayout layout_ = StateLayout::kSame;
  ReadCall call_;
  Refusal refusal_;
  Batch batch_;
};

// A call of at most this many elements runs holding the GIL: it is over in microseconds,
// and its torch tensors' storages (deferred by the read) need not be taken.
constexpr int64_t kHoldGilElements = int64_t{1} << 16;

template <class Step>
void HostCall::run_step(const Step& step, StateLayout layout, const RunOptions& options) {
  // A factored rule's passes need the factored reading (shapes, Nones), and the
  // elementwise loops the plain one.
  if (layout != layout_)
    throw std::invalid_argument(std::string(Step::kName) + ": this call was read with another state layout");
  // The factored passes read the gradients as they are (fusedopt/_dispatch.py refuses
  // loss scaling and clipping for them before anything is read).
  if (layout == StateLayout::kFactored && options.grad_multiplier != 1.0)
    throw std::invalid_argument(std::string(Step::kName) + ": takes no gradient multiplier");
  if (layout == StateLayout::kFactored && call_.master != Master::kNone)
    throw std::invalid_argument(std::string(Step::kName) + ": takes no master weights");
  // The loops dereference one state pointer per state the rule keeps: a call with another
  // number of state lists than the flags ask for would read through a null pointer.
  if (fusedopt::n_states(step) != n_states())
    throw std::invalid_argument(std::string(Step::kName) + ": these flags need " +
                                std::to_string(fusedopt::n_states(step)) + " state lists, got " +
                                std::to_string(n_states()));
  const Batch b = options.applied_to(grads_batch());
  if (call_.offsets.back() <= kHoldGilElements) {
    cpu::update(step, b);
    return;
  }
  // Another thread may run while this one waits: it could point a tensor at other memory
  // (.data =, set_()) and free the old, which the storages keep alive.
  call_.hold_deferred_storages();
  py::gil_scoped_release release;
  cpu::update(step, b);
}

// Calls `f(Step{}, layout)` with the step struct named `rule` and the state layout its
// kernels read: the one place a rule's name is looked up in this module.
template <class F>
decltype(auto) with_rule(const std::string& rule, F&& f) {
#define FUSEDOPT_RUN_IF(Step, ...) \
  if (rule == Step::kName) return f(Step{}, StateLayout::kSame);
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RUN_IF)
#undef FUSEDOPT_RUN_IF
#define FUSEDOPT_RUN_IF(Step, ...) \
  if (rule == Step::kName) return f(Step{}, StateLayout::kFactored);
  FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_RUN_IF)
#undef FUSEDOPT_RUN_IF
  throw std::invalid_argument("unknown rule '" + rule + "'");
}

void HostCall::run(const std::string& rule, py::handle coeffs, double grad_multiplier, py::handle rounding) {
  const RunOptions options = RunOptions::read(grad_multiplier, rounding);
  with_rule(rule, [&](auto tag, StateLayout layout) {
    using Step = decltype(tag);
    run_step(step_from_python<Step>(coeffs), layout, options);
  });
}

// _core.run: one call read and run. The coefficients and options are read first, since
// reading them may run Python code; from the arrays' read to the kernel none runs, so the
// read may defer the torch storages (ReadOptions::defer_torch_storage).
py::object read_and_run(const std::string& rule, py::handle params, py::handle grads, py::handle states,
                        py::handle coeffs, double grad_multiplier, py::handle rounding, py::handle masters,
                        Master master) {
  const RunOptions options = RunOptions::read(grad_multiplier, rounding);
  return with_rule(rule, [&](auto tag, StateLayout layout) -> py::object {
    using Step = decltype(tag);
    const Step step = step_from_python<Step>(coeffs);
    HostCall call(params, grads, states, layout, masters, master, /*defer_storage=*/true);
    if (!call.ok()) return call.refusal();
    call.run_step(step, layout, options);
    return py::none();
  });
}


}  // namespace

void register_kernels(py::module_& m) {
  using py::arg;
  py::class_<HostCall>(m, "Call",
                       "A call's arrays as the reader took them (host memory): counted, normed or "
                       "run without being read again.")
      .def(py::init([](py::handle params, py::handle grads, py::handle states, const std::string& layout,
                       py::handle masters, const std::string& master) {
             return std::make_unique<HostCall>(params, grads, states, layout_from_name(layout), masters,
                                               master_from_name(master));
           }),
           arg("params"), arg("grads"), arg("states"), arg("layout") = "same", arg("masters") = py::none(),
           arg("master") = "none")
      .def_property_readonly("refusal", &HostCall::refusal,
                             "None, or (rule, role, index, other role, other index): what the call broke")
      .def("run", &HostCall::run, arg("rule"), arg("coeffs"), arg("grad_multiplier") = 1.0,
           arg("rounding") = py::none())
      .def("count_nonfinite", &HostCall::count_nonfinite, "NaN and infinite values among the grads.")
      .def("grad_sum_of_squares", &HostCall::grad_sum_of_squares,
           "The squared L2 norm of every grad together, in the fixed blocking of math/sumsq.h.")
      .def("traffic", &HostCall::traffic,
           "The memory roof: the rule's loads and stores (its number of states), one add each.");

  m.def(
      "run",
      [](const std::string& rule, py::handle params, py::handle grads, py::handle states,
         py::handle coeffs, double grad_multiplier, py::handle rounding, py::handle masters,
         const std::string& master) -> py::object {
        return read_and_run(rule, params, grads, states, coeffs, grad_multiplier, rounding, masters,
                            master_from_name(master));
      },
      arg("rule"), arg("params"), arg("grads"), arg("states"), arg("coeffs"), arg("grad_multiplier") = 1.0,
      arg("rounding") = py::none(), arg("masters") = py::none(), arg("master") = "none",
      "Reads and runs one call: None if it ran, else the refusal (see Call.refusal; "
      "'device_call' for device arrays, which are the CUDA module's).");

  m.def(
      "read",
      [](py::handle params, py::handle grads, py::handle states, const std::string& layout,
         py::handle masters, const std::string& master) -> py::object {
        ReadCall call;
        ReadOptions options = module_read_options();
        options.layout = layout_from_name(layout);
        options.master = master_from_name(master);
        const Refusal refusal = read_call(params, grads, states, options, call, masters);
        if (refusal) return refusal.to_python();
        return py::none();
      },
      arg("params"), arg("grads"), arg("states"), arg("layout") = "same", arg("masters") = py::none(),
      arg("master") = "none",
      "The reader's verdict on a call of any memory, running nothing: None, or the refusal. "
      "grads=None reads an optimizer's own arrays (params and states, all written). layout: "
      "'same' (states shaped like their params) or 'factored' (see state_shapes).");

  m.def(
      "state_shapes",
      [](const std::string& layout, const std::vector<int64_t>& shape) {
        ArrayItem param, state;
        if (shape.size() > static_cast<size_t>(kMaxDims)) throw std::invalid_argument("too many dims");
        param.ndim = static_cast<int>(shape.size());
        for (int d = 0; d < param.ndim; ++d) param.dims[d] = shape[static_cast<size_t>(d)];
        py::list out;
        for (int k = 0; k < kMaxStates; ++k) {
          if (!expected_state_shape(layout_from_name(layout), k, param, state)) {
            out.append(py::none());
            continue;
          }
          py::tuple dims(static_cast<size_t>(state.ndim));
          for (int d = 0; d < state.ndim; ++d) dims[static_cast<size_t>(d)] = state.dims[d];
          out.append(dims);
        }
        return py::tuple(out);
      },
      arg("layout"), arg("shape"),
      "The shapes of a param's states (None where it keeps none) under a state layout, as the "
      "reader checks them: for 'factored', (row_var, col_var, variance).");

  // Gradients only, for tests and benchmarks: refused calls raise.
  auto grads_call = [](py::handle grads) {
    auto call = std::make_unique<HostCall>(grads);
    if (!call->ok())
      throw std::invalid_argument("the grads were refused: " + py::str(call->refusal()).cast<std::string>());
    return call;
  };
  m.def(
      "grad_sum_of_squares", [grads_call](py::handle grads) { return grads_call(grads)->grad_sum_of_squares(); },
      arg("grads"), "The squared L2 norm of every grad together (the fixed blocking of math/sumsq.h).");
  m.def(
      "count_nonfinite", [grads_call](py::handle grads) { return grads_call(grads)->count_nonfinite(); },
      arg("grads"), "NaN and infinite values among the grads.");

  m.def(
      "_torch_direct", [](py::handle o) { return ArrayKinds().torch_direct(o.ptr()); }, arg("tensor"),
      "For the tests: whether the reader reads this torch tensor through torch's own C getters "
      "and methods, resolved once, rather than by attribute name.");

  m.def(
      "torch_reader",
      []() -> py::object {
        const auto types = ArrayKinds::current_types();
        if (types->torch_tensor.is_none()) return py::none();
        const TorchAbi& abi = types->torch_abi;
        return py::dict(py::arg("c_functions") = abi.ready, py::arg("reason") = abi.ready ? "" : abi.reason);
      },
      "How the reader reads torch tensors (None until torch is imported): through torch's C "
      "functions, or, where they were not found or disagreed with the methods (reason), "
      "through the tensors' methods.");
  m.def("step_fields", &step_fields, "Each rule's coefficient fields, in order (common/steps.h).");
  m.def(
      "step_numbers", [] { return step_field_table().n_numbers; },
      "How many of each rule's fields are numbers (they come first; the rest are flags).");
  py::list rules;
  for (const std::string& name : rule_names()) rules.append(name);
  m.attr("refusal_rules") = py::tuple(rules);
  // For the wording of a refused combination: params' dtype -> (grads' dtypes, states').
  py::dict combinations;
  const DType all[] = {DType::kFloat32, DType::kFloat64, DType::kBFloat16, DType::kFloat16};
  for (DType param : all) {
    py::list grads, states;
    for (DType d : all) {
      if (storage_allows(param, true, d)) grads.append(dtype_name(d));
      if (storage_allows(param, false, d)) states.append(dtype_name(d));
    }
    combinations[dtype_name(param)] = py::make_tuple(py::tuple(grads), py::tuple(states));
  }
  m.attr("storage_combinations") = combinations;
  py::dict modes;
  modes["WD_NONE"] = static_cast<int>(math::WeightDecay::kNone);
  modes["WD_COUPLED"] = static_cast<int>(math::WeightDecay::kCoupled);
  modes["WD_DECOUPLED"] = static_cast<int>(math::WeightDecay::kDecoupled);
  modes["MOM_NONE"] = static_cast<int>(math::Momentum::kNone);
  modes["MOM_TORCH_FIRST"] = static_cast<int>(math::Momentum::kTorchFirst);
  modes["MOM_TORCH"] = static_cast<int>(math::Momentum::kTorch);
  modes["MOM_KERAS"] = static_cast<int>(math::Momentum::kKeras);
  m.attr("modes") = modes;
}

}  // namespace bindings
}  // namespace fusedopt
