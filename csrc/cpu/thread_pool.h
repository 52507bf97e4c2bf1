// A small persistent thread pool for the CPU kernels.
//
// Why not OpenMP: PyTorch and NumPy's BLAS bring their own OpenMP runtimes, and two in one
// process fight over cores. This pool sleeps when idle, spins only briefly after a job,
// and runs a job inline when another Python thread already has it (the GIL is released
// during kernels, so two callers can arrive at once); it never queues behind another call.
#pragma once

#include <functional>

namespace fusedopt {
namespace cpu {

// Number of threads a kernel may use (the calling thread included).
int get_num_threads();
// n >= 1. Takes effect on the next call.
void set_num_threads(int n);
// Cores this process may run on (sched_getaffinity), the default thread count.
int available_cores();

// Runs task(i) for every i in [0, n_tasks); the calling thread takes part. Tasks must not
// throw. n_tasks is normally the thread count: the driver gives each task an equal range.
void parallel_for(int n_tasks, const std::function<void(int)>& task);

}  // namespace cpu
}  // namespace fusedopt
