// fusedopt._cuda_emulated: the CUDA backend's functions (the same bindings as fusedopt._cuda)
// with the kernels run on the CPU, plus controls for the tests. Built only with
// -DFUSEDOPT_CUDA_EMULATION=ON; tests/test_cuda_emulated.py uses it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/reader.h"
#include "bindings/register_cuda.h"
#include "cuda_emulation/controls.h"

namespace py = pybind11;
namespace emu = fusedopt::cuda::emulation;

PYBIND11_MODULE(_cuda_emulated, m) {
  m.doc() = "fusedopt's CUDA kernels run on the CPU, for tests (arrays: host memory exposed "
            "through __cuda_array_interface__)";
  fusedopt::cuda::register_module(m);
  // The emulated device memory is host memory: torch CPU tensors stand for CUDA ones here.
  fusedopt::bindings::module_read_options().host_tensors_are_device = true;
  m.def(
      "set_device_shape",
      [](int multiprocessors, int blocks_per_multiprocessor) {
        const emu::DeviceShape old = emu::set_device_shape({multiprocessors, blocks_per_multiprocessor});
        return py::make_tuple(old.multiprocessors, old.blocks_per_multiprocessor);
      },
      py::arg("multiprocessors"), py::arg("blocks_per_multiprocessor"),
      "Sets how many blocks fit on the emulated device at once; returns the previous shape.");
  m.def(
      "take_launches",
      [] {
        py::list out;
        for (const emu::LaunchRecord& r : emu::take_launches())
          out.append(py::make_tuple(r.grid, r.threads, r.stream));
        return out;
      },
      "The (grid, threads, stream) of every launch since the last call.");
  m.def("set_stream_lookup", &emu::set_stream_lookup, py::arg("on"),
        "Whether calls look up the current stream as on a GPU (off: the null stream); returns "
        "the previous setting.");
}
