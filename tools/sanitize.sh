#!/usr/bin/env bash
# Builds fusedopt._core, and the CUDA kernels' host emulation fusedopt._cuda_emulated, with
# AddressSanitizer + UndefinedBehaviorSanitizer (-DFUSEDOPT_SANITIZE=ON) in a fresh venv and
# build folder, and runs tests under them. Under the emulation, a kernel's load or store
# past the end of a tensor is an ASan report here, where on a GPU it would pass unseen.
# Exits non-zero on any sanitizer report, in the test process or in any child of it.
#
#   tools/sanitize.sh            the CI subset (below)
#   tools/sanitize.sh --full     the whole test suite (slow tests excluded)
#   tools/sanitize.sh --ci       as the default, quieter (what .ci/run calls)
#   tools/sanitize.sh -- ARGS    pytest ARGS instead of the subset
#
# The subset: every test module except the long bitwise grid of tests/test_rules.py, of
# which the cases on the active CPU target at 2 threads run (sizes 17, 4097, 100003,
# 2^20+3, a mixed list of 0..4097, 2000 tiny tensors; the other targets and thread counts
# run the same loops compiled with other flags), and of the bad-input grid the functions
# tools/ci_sample.sh names; not test_verify, test_drift and test_cuda_bench (below). The whole suite under the sanitizers takes too long for CI on
# two cores. The sanitized build is compiled at -O1 with line tables only (CMakeLists.txt),
# for the baseline and this machine's best CPU target, and the tests run in pytest-xdist's
# workers, one per core. The leak and peak-memory measurements skip themselves here:
# ASan's quarantine and shadow memory make resident-set sizes meaningless.
#
# CPython's own allocations are not leak-checked (detect_leaks=0): the interpreter keeps
# much of its memory until exit on purpose, which LeakSanitizer reports as leaks.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=${FUSEDOPT_SANITIZE_DIR:-/tmp/fusedopt-sanitize}
mode=subset
quiet=()
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) quiet=(-q); shift ;;
    --full) mode=full; shift ;;
    --) shift; mode=custom; pytest_args=("$@"); break ;;
    *) echo "usage: $0 [--ci] [--full] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
  esac
done

start=$(date +%s)
say() { printf '[sanitize %3ds] %s\n' $(( $(date +%s) - start )) "$*"; }

libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
for lib in "$libasan" "$libubsan"; do
  if [ ! -e "$lib" ]; then
    echo "sanitize.sh: $lib not found (gcc -print-file-name); install gcc's sanitizer runtimes" >&2
    exit 2
  fi
done

rm -rf "$work"
mkdir -p "$work/reports"
say "fresh venv in $work"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install "${quiet[@]}" --disable-pip-version-check \
  numpy pytest pytest-xdist hypothesis "scikit-build-core>=0.10" "pybind11>=2.13" ninja "cmake>=3.21"

# The tests run on this machine's best CPU target (and baseline where they force it): the
# other instruction-set build of kernels_isa.cpp would add minutes of instrumented compiling
# for code no test here runs. Its flags differ, not its source; the CI's main run tests it.
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { for f in "$@"; do [[ " $flags " == *" $f "* ]] || return 1; done; }
best=""
if [ "$(uname -m)" = x86_64 ]; then
  if has avx2 fma bmi2 avx512f avx512bw avx512dq avx512vl avx512cd; then best=avx512
  elif has avx2 fma bmi2; then best=avx2
  fi
fi
only=()
[ -n "$best" ] && only=("-Ccmake.define.FUSEDOPT_CPU_TARGETS_ONLY=$best")

say "building with FUSEDOPT_SANITIZE=ON (CPU targets: baseline${best:+ and $best})"
# A plain (non-editable) install: the tests import the instrumented module from the venv.
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
"$py" -m pip install "${quiet[@]}" --disable-pip-version-check --no-build-isolation --no-deps \
  -Cbuild-dir="$work/build" \
  -Ccmake.build-type=RelWithDebInfo \
  -Ccmake.define.FUSEDOPT_SANITIZE=ON \
  -Ccmake.define.FUSEDOPT_CUDA=OFF \
  -Ccmake.define.FUSEDOPT_CUDA_EMULATION=ON \
  "${only[@]}" \
  "$root"
# The modules must really be instrumented, or a clean run would mean nothing.
# (Found on disk: importing them needs the sanitizer runtimes preloaded.)
for module in _core _cuda_emulated; do
  so=$(find "$work/venv" -name "$module*.so" -path '*fusedopt*' | head -1)
  # grep -c reads all of nm's output: grep -q would stop early and, under pipefail, nm's
  # SIGPIPE would read as "not instrumented".
  if [ -z "$so" ] || [ "$(nm -D "$so" 2>/dev/null | grep -c '__asan_\|__ubsan_')" -eq 0 ]; then
    echo "sanitize.sh: fusedopt.$module is not instrumented (${so:-not found})" >&2
    exit 1
  fi
done

case "$mode" in
  subset)
    # shellcheck source=tools/ci_sample.sh
    source "$root/tools/ci_sample.sh"
    # Left out besides: numerics and harnesses over kernels the rest already runs (verify's
    # cases are test_rules' own; the drift and benchmark tests time or compare values).
    # Of the bitwise grid (test_rules.py): the cases run on the active CPU target at 2
    # threads (the small sizes run on one, the large ones split in two). One pytest run for
    # both, so that its workers share out the long tests of either.
    target=$(LD_PRELOAD="$libasan $libubsan" ASAN_OPTIONS=detect_leaks=0 "$py" -c '
import fusedopt
print(fusedopt.info()["cpu"]["target"])')
    pytest_args=(tests -n auto -m "not slow" -p no:cacheprovider --durations=15
                 --deselect tests/test_verify.py --deselect tests/test_drift.py
                 --deselect tests/test_cuda_bench.py
                 -k "(not test_rules.py and ($ci_sample_k)) or (test_rules.py and $target and t2)")
    ;;
  full) pytest_args=(tests -n auto -m "not slow" -p no:cacheprovider) ;;
esac

export LD_PRELOAD="$libasan $libubsan"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1:log_path=$work/reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$work/reports/ubsan"
export PYTHONMALLOC=malloc  # every Python object through ASan's allocator, not pymalloc's arenas
export PYTHONFAULTHANDLER=1

status=0
cd "$root"
say "pytest ${pytest_args[*]}"
"$py" -m pytest "${quiet[@]}" "${pytest_args[@]}" || status=$?

unset LD_PRELOAD
reports=$(find "$work/reports" -type f 2>/dev/null | sort)
if [ -n "$reports" ]; then
  for r in $reports; do
    echo "===== $r"
    cat "$r"
  done
  say "FAILED: sanitizer reports above"
  exit 1
fi
if [ "$status" -ne 0 ]; then
  say "FAILED: pytest exited with status $status"
  exit "$status"
fi
say "clean: no AddressSanitizer or UndefinedBehaviorSanitizer report"
