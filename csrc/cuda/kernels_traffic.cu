// The memory roof (math/traffic.h) on the same launcher as the rules: the same loads,
// stores, vector widths and grid, so a rule's throughput over this one is the share of the
// bandwidth it reaches.
#include "common/flag_dispatch.h"
#include "cuda/launcher.cuh"
#include "math/traffic.h"

namespace fusedopt {
namespace cuda {
namespace {

template <int N, class T>
void traffic_n(const Batch& b, cudaStream_t stream) {
  if (b.stored_as_computed()) launch_update<math::TrafficRule<T, N>, T>(NoCoeffs{}, nullptr, b, stream);
  else if constexpr (std::is_same<T, float>::value)
    launch_update<math::TrafficRule<float, N>, void>(NoCoeffs{}, nullptr, b, stream);
}

}  // namespace

void traffic(const TrafficStep& s, const Batch& b, cudaStream_t stream) {
  with_compute(b.compute_dtype(), [&](auto st) {
    using T = decltype(st);
    switch (s.n_states) {
      case 0: traffic_n<0, T>(b, stream); break;
      case 1: traffic_n<1, T>(b, stream); break;
      case 2: traffic_n<2, T>(b, stream); break;
      default: traffic_n<3, T>(b, stream); break;
    }
  });
}

// Facts about the launch tables for the bindings (compiled by the host compiler, which
// cannot see the kernel parameter structs): here, next to a user of the launcher.
int update_capacity(int n_roles) {
  switch (n_roles) {
    case 2: return table_capacity(2);
    case 3: return table_capacity(3);
    case 4: return table_capacity(4);
    case 5: return table_capacity(5);
  }
  return 0;
}

int update_param_bytes(int n_roles) {
  // The largest coefficient struct (Adam's) with n_roles roles; the others are smaller.
  switch (n_roles) {
    case 2: return params_bytes<2, math::AdamCoeffs<double>>();
    case 3: return params_bytes<3, math::AdamCoeffs<double>>();
    case 4: return params_bytes<4, math::AdamCoeffs<double>>();
    case 5: return params_bytes<5, math::AdamCoeffs<double>>();
  }
  return 0;
}

}  // namespace cuda
}  // namespace fusedopt
