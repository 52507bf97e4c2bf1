#!/usr/bin/env bash
# A separate venv with PyTorch 2.13 (CPU), DeepSpeed and fusedopt, for the DeepSpeed peer.
# DeepSpeed compiles its CPU Adam and Adagrad ops with ninja on first use (about three
# minutes on 2 cores); this script triggers that build once so the benchmark does not
# time it.
#
#   bench/setup_deepspeed_venv.sh [VENV]        # default /tmp/venv-ds
#   PYTHON=/tmp/venv-ds/bin/python bench/run_full.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/venv-ds}
python3 -m venv "$VENV"
"$VENV/bin/pip" install numpy ninja torch==2.13.0 deepspeed matplotlib \
  scikit-build-core pybind11 cmake
"$VENV/bin/pip" install --no-build-isolation . -Ccmake.define.FUSEDOPT_CUDA=OFF
"$VENV/bin/python" - <<'PY'
import time
import torch
t = time.time()
from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
from deepspeed.ops.adam import DeepSpeedCPUAdam
p = torch.nn.Parameter(torch.randn(1024))
p.grad = torch.randn(1024)
DeepSpeedCPUAdam([p], lr=1e-3).step()
DeepSpeedCPUAdagrad([p], lr=1e-2).step()
print(f"DeepSpeed CPU Adam and Adagrad ops ready ({time.time() - t:.0f} s)")
PY
