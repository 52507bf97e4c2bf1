// The host emulation's stand-in for <cuda_runtime.h>: the runtime API (cuda_runtime_api.h)
// and the language features that kernels use (emulation.h).
#pragma once

#include "cuda_runtime_api.h"
#include "emulation.h"
