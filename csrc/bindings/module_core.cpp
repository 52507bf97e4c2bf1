// fusedopt._core: the CPU kernels. Private; the Python package is the API.
#include <pybind11/pybind11.h>

namespace fusedopt {
namespace bindings {
void register_kernels(pybind11::module_& m);
void register_runtime(pybind11::module_& m);
}  // namespace bindings
}  // namespace fusedopt

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedopt CPU kernels (private: use the fusedopt package)";
  fusedopt::bindings::register_kernels(m);
  fusedopt::bindings::register_runtime(m);
}
