// The Python functions of the CUDA backend, registered into a module: fusedopt._cuda
// (module_cuda.cpp) or the host emulation used by the tests (csrc/cuda_emulation/).
#pragma once

#include <pybind11/pybind11.h>

namespace fusedopt {
namespace cuda {

void register_module(pybind11::module_& m);

}  // namespace cuda
}  // namespace fusedopt
