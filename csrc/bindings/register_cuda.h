// The Python functions of the CUDA backend, registered into the module that calls
// register_module(): fusedopt._cuda (module_cuda.cpp), or another built from these sources.
#pragma once

#include <pybind11/pybind11.h>

namespace fusedopt {
namespace cuda {

void register_module(pybind11::module_& m);

}  // namespace cuda
}  // namespace fusedopt
