// Build facts, CPU target choice and threads.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/ranges.h"
#include "cpu/thread_pool.h"

namespace fusedopt {
namespace bindings {

namespace py = pybind11;

void register_runtime(py::module_& m) {
  m.def("get_num_threads", &cpu::get_num_threads);
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("n"));
  m.def("available_cores", &cpu::available_cores);
  m.def("cpu_targets", [] {
    py::list out;
    for (const auto& t : cpu::list_targets())
      out.append(py::dict(py::arg("name") = t.name, py::arg("built") = t.built,
                          py::arg("supported") = t.supported));
    return out;
  });
  m.def("active_target", [] { return std::string(cpu::active_table().name); });
  m.def("target_source", &cpu::target_source);
  m.def("select_target", &cpu::select_target, py::arg("name"));
  m.def("build_info", [] {
    return py::dict(py::arg("version") = FUSEDOPT_VERSION_INFO,
#if defined(__clang__)
                    py::arg("compiler") = std::string("clang ") + __clang_version__,
#elif defined(__GNUC__)
                    py::arg("compiler") = std::string("gcc ") + __VERSION__,
#else
                    py::arg("compiler") = "unknown",
#endif
                    py::arg("cpu_targets_built") = FUSEDOPT_CPU_TARGET_LIST,
                    py::arg("numerics") = "no FMA contraction, no fast-math, IEEE div/sqrt");
  });
  // For the tests: the per-thread ranges the driver gives a call of `total` elements split
  // n_threads ways (cpu::range_start itself), checked past 2^31 without allocating.
  m.def(
      "_plan_ranges",
      [](int64_t total, int n_threads) {
        if (total < 0) throw std::invalid_argument("_plan_ranges: total must be >= 0");
        if (n_threads < 1 || n_threads > 4096)
          throw std::invalid_argument("_plan_ranges: n_threads must be in [1, 4096]");
        std::vector<std::pair<int64_t, int64_t>> out;
        out.reserve(static_cast<size_t>(n_threads));
        for (int t = 0; t < n_threads; ++t)
          out.emplace_back(cpu::range_start(total, t, n_threads),
                           cpu::range_start(total, t + 1, n_threads));
        return out;
      },
      py::arg("total"), py::arg("n_threads"));
}

}  // namespace bindings
}  // namespace fusedopt
