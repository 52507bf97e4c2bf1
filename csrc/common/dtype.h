// Storage dtypes the kernels know. The reader (bindings/reader.cpp) maps NumPy, torch and
// CuPy dtypes to these codes; the loop layer maps them to C++ storage types. Arithmetic is
// float64 for float64 storage and float32 for every other (common/batch.h: compute_dtype).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fusedopt {

enum class DType : int32_t {
  kFloat32 = 0,
  kFloat64 = 1,
  kBFloat16 = 2,
  kFloat16 = 3,
};

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "unknown";
}

// The element size of a dtype code as the bindings receive it (an int from Python).
inline int itemsize_of(int dtype_code) {
  switch (static_cast<DType>(dtype_code)) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kBFloat16: return 2;
    case DType::kFloat16: return 2;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(dtype_code));
}

}  // namespace fusedopt
