// fusedopt._cuda: the CUDA kernels. Private; the Python package is the API.
#include <pybind11/pybind11.h>

#include "bindings/register_cuda.h"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fusedopt CUDA kernels (private: use the fusedopt package)";
  fusedopt::cuda::register_module(m);
}
