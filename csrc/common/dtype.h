// Storage dtypes the kernels know. Python's _arrays.py maps NumPy/CuPy dtypes to these
// codes; the loop layer maps them to C++ storage types.
#pragma once

#include <cstdint>

namespace fusedopt {

enum class DType : int32_t {
  kFloat32 = 0,
  kFloat64 = 1,
};

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

}  // namespace fusedopt
