#!/usr/bin/env bash
# A separate venv with PyTorch 2.13 (CPU), DeepSpeed and fusedopt, for the DeepSpeed peer.
# DeepSpeed compiles its CPU Adam, Adagrad and Lion ops with ninja on first use (a few
# minutes on 2 cores); this script triggers that build once so the benchmark does not
# time it. ml_dtypes gives the bfloat16 rows (DeepSpeed keeps float32 states for them).
#
#   bench/setup_deepspeed_venv.sh [VENV]        # default /tmp/venv-ds
#   PYTHON=/tmp/venv-ds/bin/python bench/run_full.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/venv-ds}
python3 -m venv "$VENV"
"$VENV/bin/pip" install numpy ninja torch==2.13.0 deepspeed matplotlib ml_dtypes \
  scikit-build-core pybind11 cmake
"$VENV/bin/pip" install --no-build-isolation . -Ccmake.define.FUSEDOPT_CUDA=OFF
"$VENV/bin/python" - <<'PY'
import time
import torch
t = time.time()
from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
from deepspeed.ops.adam import DeepSpeedCPUAdam
from deepspeed.ops.lion import DeepSpeedCPULion
p = torch.nn.Parameter(torch.randn(1024))
p.grad = torch.randn(1024)
DeepSpeedCPUAdam([p], lr=1e-3).step()
DeepSpeedCPUAdagrad([p], lr=1e-2).step()
DeepSpeedCPULion([p], lr=1e-4).step()
print(f"DeepSpeed CPU Adam, Adagrad and Lion ops ready ({time.time() - t:.0f} s)")
PY
