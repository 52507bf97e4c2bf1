// The bindings of the CUDA kernels, registered by register_module() into fusedopt._cuda
// (module_cuda.cpp) or into any other module built from these sources. Private; the Python
// package is the API.
//
// The rule functions take the same arguments, in the same order, as those of fusedopt._core
// (the rules' coefficient NamedTuples are that order), so fusedopt/_native.py calls either
// module the same way. Two keyword-only extras: `stream`, a cudaStream_t as an int (default:
// the current stream of the params' library, see resolve_stream), and `device_coeffs`, the
// address of the coefficients in device memory (kernels.h: DeviceCoeffs) for steps whose
// coefficients the device computes or that a CUDA graph replays.
//
// Importing the module touches no driver (the CUDA runtime is linked statically and starts
// on first use), so it imports on machines without a GPU; unavailable_reason() says why
// kernels cannot run there.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings/call_options.h"
#include "bindings/steps_from_python.h"
#include "common/flag_dispatch.h"
#include "common/steps.h"
#include "bindings/register_cuda.h"
#include "cuda/device.h"
#include "bindings/cuda_batch.h"
#include "cuda/kernels.h"
#include "cuda/plan.h"
#include "math/sumsq.h"

namespace fusedopt {
namespace cuda {
namespace {

namespace py = pybind11;

// The stream of a call whose caller names none: the current stream, on the arrays' GPU, of
// the library its params come from (the first param decides a mixed list), so that the
// call is ordered after the work that made its arrays and before the work that reads them,
// as that library's own operations are. For torch tensors that is torch's current stream
// (fusedopt/cuda.py: torch_stream): torch's side streams, a CUDA graph's capture stream
// among them, do not wait for the legacy default stream, nor it for them. For every other
// array it is CuPy's, or the legacy default stream where CuPy was never imported (CuPy's
// default too).
cudaStream_t resolve_stream(const py::object& stream, const DeviceBatch& b) {
  if (!stream.is_none()) return reinterpret_cast<cudaStream_t>(stream.cast<uintptr_t>());
  if (!use_current_stream()) return nullptr;
  const int device = b.device();
  py::object ptr;
  if (b.torch_params()) {
    // Looked up once (a Python function of this package; never destroyed after the
    // interpreter is gone): importing it on every call cost more than the call.
    static py::object* torch_stream =
        new py::object(py::module_::import("fusedopt.cuda").attr("torch_stream"));
    ptr = (*torch_stream)(device);
  } else {
    PyObject* cupy = PyDict_GetItemString(PyImport_GetModuleDict(), "cupy");  // borrowed
    if (cupy == nullptr) return nullptr;
    ptr = py::handle(cupy).attr("cuda").attr("get_current_stream")(device).attr("ptr");
  }
  return reinterpret_cast<cudaStream_t>(ptr.cast<uintptr_t>());
}

// Queues `work` on the arrays' device and the call's stream, without the GIL.
template <class F>
void queue_on(const DeviceBatch& b, const py::object& stream, F&& work) {
  const cudaStream_t s = resolve_stream(stream, b);
  py::gil_scoped_release release;
  DeviceGuard guard(b.device());
  work(s);
}

// queue_on for the kernels over the grads: none for a batch of empty tensors.
template <class F>
void on_device(const DeviceBatch& b, const py::object& stream, F&& kernel) {
  if (!b.has_grads()) throw std::invalid_argument("this Batch's grads were dropped: set_grads() first");
  if (b.batch().total() == 0) return;  // nothing to do, and no reason to start CUDA
  queue_on(b, stream, kernel);
}

// A reduction's result at `out` in device memory when every tensor is empty: no kernel
// runs, but the caller reads the zero.
void zero_result(const DeviceBatch& b, const py::object& stream, void* out, size_t bytes) {
  queue_on(b, stream, [&](cudaStream_t s) { check(cudaMemsetAsync(out, 0, bytes, s), "cudaMemsetAsync"); });
}

// Runs the rule whose step struct is Step with Python's coefficient object `coeffs`.
template <class Step>
void run_step(const DeviceBatch& b, py::handle coeffs, const py::object& stream, uintptr_t device_coeffs,
              double grad_multiplier, py::handle rounding) {
  const Step step = bindings::step_from_python<Step>(coeffs);
  // The kernels dereference one state pointer per state the rule keeps: a call with
  // another number of state lists than the flags ask for would read through a null one.
  if (fusedopt::n_states(step) != b.n_states())
    throw std::invalid_argument(std::string(Step::kName) + ": these flags need " + std::to_string(fusedopt::n_states(step)) +
                                " state lists, got " + std::to_string(b.n_states()));
  const Batch batch = bindings::with_call_options(b.batch(), grad_multiplier, rounding);
  on_device(b, stream, [&](cudaStream_t s) { update(step, batch, s, reinterpret_cast<const void*>(device_coeffs)); });
}

// A factored rule (FUSEDOPT_FOR_EACH_FACTORED_STEP), on a batch read with its layout.
template <class Step>
void run_factored(const DeviceBatch& b, py::handle coeffs, const py::object& stream,
                  uintptr_t device_coeffs, double grad_multiplier, py::handle rounding) {
  if (b.layout() != bindings::StateLayout::kFactored || device_coeffs != 0 || grad_multiplier != 1.0)
    throw std::invalid_argument(std::string(Step::kName) +
                                ": needs a Batch read with layout='factored', no device_coeffs and no "
                                "gradient multiplier");
  const Step step = bindings::step_from_python<Step>(coeffs);
  // The rounding of its 16-bit stores, as the CPU's (the multiplier is 1: checked above).
  const Batch batch = bindings::with_call_options(b.batch(), grad_multiplier, rounding);
  on_device(b, stream, [&](cudaStream_t s) { update(step, batch, s); });
}

void run_rule(const DeviceBatch& b, const std::string& rule, py::handle coeffs, const py::object& stream,
              uintptr_t device_coeffs, double grad_multiplier, py::handle rounding) {
  if (b.layout() != bindings::StateLayout::kSame && bindings::layout_of(rule) == bindings::StateLayout::kSame)
    throw std::invalid_argument(rule + ": this Batch was read with the factored state layout");
#define FUSEDOPT_RUN_IF(Step, ...) \
  if (rule == Step::kName) return run_step<Step>(b, coeffs, stream, device_coeffs, grad_multiplier, rounding);
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RUN_IF)
#undef FUSEDOPT_RUN_IF
#define FUSEDOPT_RUN_IF(Step, ...) \
  if (rule == Step::kName)         \
    return run_factored<Step>(b, coeffs, stream, device_coeffs, grad_multiplier, rounding);
  FUSEDOPT_FOR_EACH_FACTORED_STEP(FUSEDOPT_RUN_IF)
#undef FUSEDOPT_RUN_IF
  throw std::invalid_argument("unknown rule '" + rule + "'");
}

double sum_of_squares_now(const DeviceBatch& b, const py::object& stream) {
  double host = 0.0;
  on_device(b, stream, [&](cudaStream_t s) {
    StreamScratch out(sizeof(double), s);
    grad_sum_of_squares(b.batch(), static_cast<double*>(out.get()), s);
    check(cudaMemcpyAsync(&host, out.get(), sizeof(double), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  });
  return host;
}

// The doubles of a rule's DeviceCoeffs (its coefficients, then the skip word), by the
// names of the Batch methods; 0 for any other name.
int device_coeffs_doubles(const std::string& rule) {
  size_t bytes = 0;
#define FUSEDOPT_COEFF_BYTES(Step, ...) \
  if (rule == Step::kName) bytes = sizeof(DeviceCoeffs<decltype(Step::c)>);
  FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_COEFF_BYTES)
#undef FUSEDOPT_COEFF_BYTES
  return static_cast<int>(bytes / sizeof(double));
}

// Batch.select_coeffs: queued even for a batch of empty tensors (no update runs, but the
// step count on the device still advances, as an optimizer's does).
void select_coeffs_on_device(const DeviceBatch& b, const std::string& rule, uintptr_t table,
                             int64_t n_entries, uintptr_t step, uintptr_t out, uintptr_t nonfinite,
                             const py::object& stream) {
  const int doubles = device_coeffs_doubles(rule);
  if (doubles == 0) throw std::invalid_argument("select_coeffs: no rule named '" + rule + "'");
  if (table == 0 || step == 0 || out == 0)
    throw std::invalid_argument("select_coeffs: table, step and out must be device addresses");
  if (n_entries < 1) throw std::invalid_argument("select_coeffs: the table needs at least one entry");
  queue_on(b, stream, [&](cudaStream_t s) {
    select_coeffs(reinterpret_cast<const double*>(table), n_entries, doubles, reinterpret_cast<int64_t*>(step),
                  reinterpret_cast<const unsigned long long*>(nonfinite), reinterpret_cast<double*>(out), s);
  });
}

long long nonfinite_now(const DeviceBatch& b, const py::object& stream) {
  unsigned long long host = 0;
  on_device(b, stream, [&](cudaStream_t s) {
    StreamScratch out(sizeof(unsigned long long), s);
    count_nonfinite(b.batch(), static_cast<unsigned long long*>(out.get()), s);
    check(cudaMemcpyAsync(&host, out.get(), sizeof(host), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  });
  return static_cast<long long>(host);
}

void register_batch(py::module_& m) {
  using py::arg;
  const auto kw = py::kw_only();
  // module_local: fusedopt._cuda and another module built from these sources may both bind
  // DeviceBatch in one process; a global registration would make the second import fail.
  py::class_<DeviceBatch>(m, "Batch", py::module_local(),
                          "Device pointers of one call's arrays, read once and reusable across steps. "
                          "The methods take the coefficient arguments of the module functions.")
      .def(py::init([](py::handle params, py::handle grads, py::handle states, const std::string& layout,
                       py::handle masters, const std::string& master) {
             return DeviceBatch(params, grads, states, bindings::layout_from_name(layout), masters,
                                bindings::master_from_name(master));
           }),
           arg("params"), arg("grads"), arg("states"), arg("layout") = "same", arg("masters") = py::none(),
           arg("master") = "none",
           "Reads a call (the one reader: bindings/reader.h) with a state layout ('same', or "
           "'factored' for Adafactor); raises if it is refused or on the host.")
      .def_static(
          "strict",
          [](py::handle params, py::handle grads, py::handle states) -> py::object {
            DeviceBatch b;
            if (!b.build_strict(params, grads, states)) return py::none();
            return py::cast(std::move(b));
          },
          arg("params"), arg("grads"), arg("states"),
          "The public API's fast path: a Batch if the arguments (lists of CuPy arrays or torch CUDA "
          "tensors, or one per role) pass every rule of fusedopt/_arrays.py's prepare(), else "
          "None, and prepare() words the error. The dtype is read from the arrays.")
      .def("drop_grads", &DeviceBatch::drop_grads,
           "Lets go of the grads (a kept Batch then holds no gradient alive between steps); a "
           "launch needs set_grads() first.")
      .def("set_grads", &DeviceBatch::set_grads, arg("grads"),
           "New grads for a Batch from strict() (an optimizer's, kept across steps): True if they "
           "pass prepare()'s rules against the held params and states, and replace the old ones; "
           "False, with nothing changed, if not.")
      .def_property_readonly("n_tensors", [](const DeviceBatch& b) { return b.batch().n_tensors; })
      .def_property_readonly("n_elements", [](const DeviceBatch& b) { return b.batch().total(); })
      .def_property_readonly("device", &DeviceBatch::device)
      .def_property_readonly("torch_params", &DeviceBatch::torch_params,
                             "True if strict() took torch tensors for the params: calls then run on "
                             "torch's current stream, else on CuPy's.")
      .def("run", &run_rule, arg("rule"), arg("coeffs"), kw, arg("stream") = py::none(),
           arg("device_coeffs") = 0, arg("grad_multiplier") = 1.0, arg("rounding") = py::none(),
           "Runs a rule with its coefficients (fusedopt/_coeffs.py), on `stream` (default: the "
           "current stream of the params' library); device_coeffs: the address of the "
           "coefficients in device memory, for steps the device picks or a graph replays; "
           "grad_multiplier: each grad is read times this (math/grad_multiplier.h); rounding: None "
           "or (roles, key0, key1), the roles whose 16-bit stores round stochastically.")
      .def(
          "adaptive_sgd",
          [](const DeviceBatch& b, py::handle coeffs, uintptr_t result, py::object stream) {
            const SgdStep step = bindings::step_from_python<SgdStep>(coeffs);
            if (fusedopt::n_states(step) != b.n_states())
              throw std::invalid_argument("adaptive_sgd: these flags need " + std::to_string(fusedopt::n_states(step)) +
                                          " state lists, got " + std::to_string(b.n_states()));
            if (result == 0) throw std::invalid_argument("adaptive_sgd: result must be a device address");
            if (b.has_grads() && b.batch().total() == 0) {
              // No kernel runs, but the caller reads the result: lr_t = lr, ||g||^2 = 0.
              const double host[2] = {step.c.lr, 0.0};
              const cudaStream_t s = resolve_stream(stream, b);
              py::gil_scoped_release release;
              check(cudaMemcpyAsync(reinterpret_cast<void*>(result), host, sizeof(host),
                                    cudaMemcpyHostToDevice, s), "cudaMemcpyAsync");
              check(cudaStreamSynchronize(s), "cudaStreamSynchronize");  // `host` is on this stack
              return;
            }
            on_device(b, stream, [&](cudaStream_t s) {
              cuda::adaptive_sgd(step, b.batch(), reinterpret_cast<double*>(result), s);
            });
          },
          arg("coeffs"), kw, arg("result"), arg("stream") = py::none(),
          "SGD at lr_t = lr / (1 + ||g||^2) (coeffs: SGD's, with lr = lr0), all on the device: "
          "writes lr_t and ||g||^2 to the two float64 at `result`, and waits for nothing. "
          "decay_factor is recomputed from lr_t.")
      .def(
          "traffic",
          [](const DeviceBatch& b, py::object stream) {
            const TrafficStep step{b.n_states()};
            on_device(b, stream, [&](cudaStream_t s) { cuda::traffic(step, b.batch(), s); });
          },
          kw, arg("stream") = py::none(),
          "The memory roof: the loads and stores of a rule with len(states) states, one add each.")
      .def(
          "grad_sum_of_squares",
          [](const DeviceBatch& b, uintptr_t out, py::object stream) -> py::object {
            if (out == 0) return py::float_(sum_of_squares_now(b, stream));
            if (b.batch().total() == 0) {
              zero_result(b, stream, reinterpret_cast<void*>(out), sizeof(double));
              return py::none();
            }
            on_device(b, stream, [&](cudaStream_t s) {
              cuda::grad_sum_of_squares(b.batch(), reinterpret_cast<double*>(out), s);
            });
            return py::none();
          },
          kw, arg("out") = 0, arg("stream") = py::none(),
          "Sum of squares of the grads in the fixed blocking; out=0 waits and returns a float, "
          "out=address writes a float64 there and waits for nothing.")
      .def(
          "count_nonfinite",
          [](const DeviceBatch& b, uintptr_t out, py::object stream) -> py::object {
            if (out == 0) return py::int_(nonfinite_now(b, stream));
            auto* count = reinterpret_cast<unsigned long long*>(out);
            if (b.has_grads() && b.batch().total() == 0) {
              zero_result(b, stream, count, sizeof(*count));
              return py::none();
            }
            on_device(b, stream, [&](cudaStream_t s) { cuda::count_nonfinite(b.batch(), count, s); });
            return py::none();
          },
          kw, arg("out") = 0, arg("stream") = py::none(),
          "How many grad values are NaN or infinite; out=0 waits and returns an int, "
          "out=address writes a uint64 there and waits for nothing.")
      .def("select_coeffs", &select_coeffs_on_device, arg("rule"), kw, arg("table"), arg("n_entries"),
           arg("step"), arg("out"), arg("nonfinite") = 0, arg("stream") = py::none(),
           "For steps a CUDA graph replays: on the device, adds one to the int64 step count at "
           "`step` and copies that step's entry of `table` (n_entries float64 DeviceCoeffs rows of "
           "`rule`, for steps 1, 2, ...; the last row serves every later step) to `out`, the "
           "device_coeffs of the update that follows. If the uint64 at `nonfinite` (count_nonfinite's "
           "out) is not 0, it sets out's skip word instead and leaves the step count.");
}

// The module-level functions read a call and run it at once, like fusedopt._core's run().
void register_functions(py::module_& m) {
  m.def(
      "run",
      [](const std::string& rule, py::handle params, py::handle grads, py::handle states, py::handle coeffs,
         py::object stream, double grad_multiplier, py::handle rounding) -> py::object {
        DeviceBatch b;
        const bindings::Refusal refusal = b.read_for_run(params, grads, states, bindings::layout_of(rule));
        if (refusal) return refusal.to_python();
        run_rule(b, rule, coeffs, stream, 0, grad_multiplier, rounding);
        return py::none();
      },
      py::arg("rule"), py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("coeffs"),
      py::kw_only(), py::arg("stream") = py::none(), py::arg("grad_multiplier") = 1.0,
      py::arg("rounding") = py::none(),
      "Reads and runs one call on the device: None if it ran, else the reader's refusal "
      "('device_call' reversed: host arrays are the CPU module's).");
  m.def(
      "grad_sum_of_squares",
      [](py::handle grads, uintptr_t out, py::object stream) -> py::object {
        py::object batch = py::cast(DeviceBatch::grads_only(grads));
        return batch.attr("grad_sum_of_squares")(py::arg("out") = out, py::arg("stream") = stream);
      },
      py::arg("grads"), py::kw_only(), py::arg("out") = 0, py::arg("stream") = py::none());
  m.def(
      "count_nonfinite",
      [](py::handle grads, py::object stream) { return nonfinite_now(DeviceBatch::grads_only(grads), stream); },
      py::arg("grads"), py::kw_only(), py::arg("stream") = py::none());
}

// Launch planning, exposed so that tests/test_cuda_plan.py checks on the CPU the very code
// the kernels run (cuda/plan.h). Its helpers default to CHUNK_ELEMENTS, not to a size
// set_chunk_elements() chose; the tests pass the size they mean.
void register_plan(py::module_& m) {
  using py::arg;
  m.attr("CHUNK_ELEMENTS") = kChunkElements;  // the default; chunk_elements() says the one in use
  m.attr("NORM_BLOCK") = math::kNormBlock;
  m.attr("VECTOR_BYTES") = kVectorBytes;
  m.attr("SCALAR_ONLY") = kScalarOnly;
  m.attr("THREADS_PER_BLOCK") = kThreads;
  m.attr("PARAM_LIMIT") = kParamLimit;
  py::dict coeff_doubles;
#define FUSEDOPT_COEFF_DOUBLES(Step, ...) coeff_doubles[Step::kName] = device_coeffs_doubles(Step::kName);
  FUSEDOPT_FOR_EACH_STEP(FUSEDOPT_COEFF_DOUBLES)
#undef FUSEDOPT_COEFF_DOUBLES
  m.attr("DEVICE_COEFFS_DOUBLES") = coeff_doubles;
  m.def("vector_head", [](const std::vector<uintptr_t>& addresses, int itemsize) {
    if (addresses.empty() || addresses.size() > kMaxRoles) throw std::invalid_argument("1 to 5 addresses");
    return vector_head(addresses.data(), static_cast<int>(addresses.size()), itemsize);
  }, arg("addresses"), arg("itemsize"));
  m.def("chunk_count", &chunk_count, arg("n"), arg("head"), arg("chunk") = kChunkElements);
  m.def("chunk_span", [](int64_t n, int32_t head, int itemsize, int64_t k, int64_t chunk) {
    if (k < 0 || k >= chunk_count(n, head, chunk)) throw std::invalid_argument("no such chunk");
    const ChunkSpan s = chunk_span(n, head, chunk, kVectorBytes / itemsize, k);
    return py::make_tuple(s.lo, s.vec_lo, s.vec_hi, s.hi);
  }, arg("n"), arg("head"), arg("itemsize"), arg("k"), arg("chunk") = kChunkElements);
  m.def("locate", [](const std::vector<int64_t>& chunk_start, int64_t chunk) {
    if (chunk_start.size() < 2 || chunk < 0 || chunk >= chunk_start.back())
      throw std::invalid_argument("chunk out of range");
    return locate(chunk_start.data(), static_cast<int>(chunk_start.size() - 1), chunk);
  }, arg("chunk_start"), arg("chunk"));
  m.def("plan_launches", [](const std::vector<int64_t>& sizes, py::object heads, int64_t chunk,
                            int capacity, int64_t max_grid) {
    std::vector<int32_t> h;
    if (!heads.is_none()) {
      h = heads.cast<std::vector<int32_t>>();
      if (h.size() != sizes.size()) throw std::invalid_argument("heads and sizes differ in length");
    }
    const auto plans = plan_launches(sizes.data(), h.empty() ? nullptr : h.data(),
                                     static_cast<int64_t>(sizes.size()), chunk, capacity, max_grid);
    py::list out;
    for (const LaunchPlan& p : plans)
      out.append(py::dict(arg("tensors") = p.tensors, arg("chunk_start") = p.chunk_start,
                          arg("chunk_offset") = p.chunk_offset, arg("n_chunks") = p.n_chunks(),
                          arg("grid") = p.grid));
    return out;
  }, arg("sizes"), arg("heads") = py::none(), py::kw_only(), arg("chunk") = kChunkElements,
     arg("capacity"), arg("max_grid"));
  m.def("chunk_elements", &chunk_elements, "Elements per chunk of the update launches.");
  m.def("set_chunk_elements", &set_chunk_elements, arg("n"),
        "For tuning on a GPU (fusedopt/bench/gpu.py): the chunk size of later update launches, a "
        "positive multiple of 2048; returns the previous one. Results do not depend on it.");
  m.def("update_capacity", &update_capacity, arg("n_roles"));
  m.def("update_param_bytes", &update_param_bytes, arg("n_roles"));
  m.def("norm_capacity", &norm_capacity);
  m.def("norm_param_bytes", &norm_param_bytes);
}

void register_runtime(py::module_& m) {
  m.def("unavailable_reason", []() -> py::object {
    std::string reason;
    {
      py::gil_scoped_release release;
      reason = unavailable_reason();
    }
    if (reason.empty()) return py::none();
    return py::str(reason);
  }, "Why the kernels cannot run on the current device (None if they can).");
  m.def("build_info", [] {
    return py::dict(py::arg("cuda_runtime") = runtime_version(),
                    py::arg("runtime_linking") = "static",
                    py::arg("nvcc") = FUSEDOPT_NVCC_VERSION,
                    py::arg("architectures") = FUSEDOPT_CUDA_ARCHS_STR,
                    py::arg("kernel_param_bytes") = kParamLimit,
                    py::arg("tensors_per_launch") = update_capacity(4),
                    py::arg("chunk_elements") = chunk_elements(),
                    py::arg("threads_per_block") = kThreads,
                    py::arg("numerics") = "--fmad=false, IEEE div/sqrt (-prec-div=true -prec-sqrt=true), "
                                          "no fast-math, no flush-to-zero");
  });
  m.def("device_info", []() -> py::object {
    if (!unavailable_reason().empty()) return py::none();
    int device = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    cudaDeviceProp prop;
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    return py::dict(py::arg("device") = device, py::arg("name") = std::string(prop.name),
                    py::arg("compute_capability") = std::to_string(prop.major) + "." + std::to_string(prop.minor),
                    py::arg("multiprocessors") = prop.multiProcessorCount,
                    py::arg("memory_bytes") = static_cast<long long>(prop.totalGlobalMem),
                    py::arg("driver") = driver_version());
  }, "The current device (None where kernels cannot run).");
}

}  // namespace

void register_module(py::module_& m) {
  // A Batch holds its arrays for later steps (set_grads re-reads the held ones).
  bindings::module_read_options().want_items = true;
  register_batch(m);
  register_functions(m);
  register_plan(m);
  register_runtime(m);
}

}  // namespace cuda
}  // namespace fusedopt
