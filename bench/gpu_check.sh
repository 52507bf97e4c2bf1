#!/usr/bin/env bash
# The device check for a machine with an NVIDIA GPU, in one go: build fusedopt with its
# CUDA module (no build isolation: such machines have no package index), run the CUDA
# tests, then the GPU benchmark, then tools/check_cuda_binary.py on the module it built
# (registers and local memory beside the measured bandwidth). Logs and results go to $OUT
# (default bench/results/gpu);
# the report is $OUT/gpu_report.md, and its table is the last thing printed.
#
# Budget: under 6 minutes on an H200. The build compiles for this machine's GPU only
# (FUSEDOPT_CUDA_ARCHS overrides), the tests and the benchmark each run under a timeout,
# and a failing step does not stop the later ones, so one run reports everything; the exit
# status is non-zero if any step failed. The benchmark writes its report after every case,
# so one cut off by its timeout still leaves (and prints) what it measured.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/bench/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# Seconds per step, as caps: a build for one architecture took 57-70 s on 2 cores here,
# the tests and the benchmark should take about a minute each, the device code check
# seconds; the caps sum to 8 minutes so that a slow step is cut off, not the whole check.
BUILD_TIMEOUT="${BUILD_TIMEOUT:-150}"
TEST_TIMEOUT="${TEST_TIMEOUT:-180}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-110}"
status=0
started=$SECONDS

log() { printf '[gpu_check %4ds] %s\n' "$((SECONDS - started))" "$*" | tee -a "$OUT/gpu_check.log" >&2; }
fail() { log "FAILED: $*"; status=1; }

# --- the machine ----------------------------------------------------------------------
# The toolkit's own folder first where nvcc is not on the PATH (CMake finds it there too).
if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
{
  nvidia-smi || true
  nvcc --version || true
  "$PY" --version
  # The build needs this Python's headers; say so here rather than deep in build.log.
  "$PY" -c 'import os, sysconfig; h = os.path.join(sysconfig.get_paths()["include"], "Python.h"); print(h, "found" if os.path.exists(h) else "MISSING: the build will fail")'
  "$PY" -m pip list 2>/dev/null | grep -Ei '^(cupy|torch|numpy|pybind11|scikit-build-core|cmake|ninja|pytest) ' || true
} > "$OUT/machine.txt" 2>&1
if [ -z "${FUSEDOPT_CUDA_ARCHS:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .' || true)
  FUSEDOPT_CUDA_ARCHS="${cap:-90}"
fi
export FUSEDOPT_CUDA_ARCHS
export FUSEDOPT_CUDA=ON
log "GPU architectures to build: $FUSEDOPT_CUDA_ARCHS"

# --- build ----------------------------------------------------------------------------
log "building (log: $OUT/build.log)"
if timeout "$BUILD_TIMEOUT" "$PY" -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1; then
  log "built"
else
  fail "build (tail of $OUT/build.log follows)"
  tail -n 40 "$OUT/build.log" >&2
  exit 1
fi

# Run from outside the checkout, so that Python imports the installed package.
(cd /tmp && "$PY" -c 'import json, fusedopt; print(json.dumps(fusedopt.info(), indent=1, default=str))') \
  > "$OUT/info.json" 2>&1 || fail "import fusedopt (see $OUT/info.json)"
grep -q '"available": true' "$OUT/info.json" || fail "CUDA kernels unavailable: $(grep -m1 '"reason"' "$OUT/info.json" || echo unknown)"

# --- tests ----------------------------------------------------------------------------
# FUSEDOPT_REQUIRE_GPU: a suite that cannot reach the GPU fails instead of skipping. The
# -W options: deprecation notices (the project turns every warning into an error; on
# CuPy and torch versions CI never ran, CuPy's or torch's own code may give some) are
# reported in the log, not fatal. Other warnings stay errors.
log "CUDA tests (log: $OUT/tests.log)"
if FUSEDOPT_REQUIRE_GPU=1 timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -rs -p no:cacheprovider \
    -W default::DeprecationWarning -W default::PendingDeprecationWarning -W default::FutureWarning \
    tests/test_cuda.py tests/test_cuda_plan.py --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1; then
  log "tests passed: $(tail -n 1 "$OUT/tests.log")"
else
  fail "tests: $(tail -n 1 "$OUT/tests.log")"
  grep -E '^(FAILED|ERROR)' "$OUT/tests.log" | head -n 20 >&2 || true
fi

# --- benchmark ------------------------------------------------------------------------
log "benchmark (log: $OUT/bench.log)"
if timeout "$BENCH_TIMEOUT" "$PY" bench/gpu_bench.py --out "$OUT" > "$OUT/bench.log" 2>&1; then
  log "benchmark done"
else
  fail "benchmark (tail of $OUT/bench.log follows)"
  tail -n 30 "$OUT/bench.log" >&2
fi

# --- the device code, as built here (after the benchmark, so it cannot cut it short) --
log "device code check (log: $OUT/cuda_binary.txt)"
if timeout 45 "$PY" tools/check_cuda_binary.py --archs "$FUSEDOPT_CUDA_ARCHS" > "$OUT/cuda_binary.txt" 2>&1; then
  log "device code check passed"
else
  fail "device code check: $(tail -n 1 "$OUT/cuda_binary.txt")"
fi

log "done in $((SECONDS - started)) s, status $status"
if [ -f "$OUT/gpu_report.md" ]; then
  cat "$OUT/gpu_report.md"
fi
exit "$status"
