#!/usr/bin/env bash
# Tests an installed fusedopt (a wheel in a fresh environment) the way a user has it: from
# a scratch directory holding a copy of tests/, the pytest settings and the benchmark
# scripts some tests load, never the source tree with python/fusedopt, so nothing can be
# imported from the checkout by mistake. It checks first that
# `import fusedopt` resolves to the environment's site-packages.
#
# Used by tools/build_wheels.sh and as cibuildwheel's test-command (pyproject.toml).
#
#   tools/test_wheel.sh [--python PY] [--source DIR] [--mode full|smoke]
#                       [--targets "auto baseline avx2"] [--expect-cuda built|absent]
#                       [-- extra pytest arguments]
#
#   --python   interpreter of the environment under test (default: python)
#   --source   checkout or unpacked sdist with tests/, tools/ and pyproject.toml
#              (default: this script's repository)
#   --mode     full: tools/smoke.py on every target, then the pytest suite once per
#              --targets entry (with FUSEDOPT_CPU_TARGET set to it);
#              smoke: tools/smoke.py on every target and the tests marked `cuda` (default full)
#   --targets  FUSEDOPT_CPU_TARGET values for the full runs; one the CPU cannot run is
#              skipped with a note (default: auto)
#   --expect-cuda  built: fusedopt._cuda must be present (and, without a GPU, must say so);
#              absent: it must not be
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py=python
source_dir="$(dirname "$here")"
mode=full
targets=auto
expect_cuda=""
pytest_extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) py="$2"; shift 2 ;;
    --source) source_dir="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --targets) targets="$2"; shift 2 ;;
    --expect-cuda) expect_cuda="$2"; shift 2 ;;
    --) shift; pytest_extra=("$@"); break ;;
    *) echo "test_wheel.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
source_dir="$(cd "$source_dir" && pwd)"
[[ -d "$source_dir/tests" ]] || { echo "test_wheel.sh: no tests/ in $source_dir" >&2; exit 2; }

scratch="$(mktemp -d "${TMPDIR:-/tmp}/fusedopt-test.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
cp -r "$source_dir/tests" "$scratch/tests"
cp "$source_dir/pyproject.toml" "$scratch/"  # [tool.pytest.ini_options]: markers, strictness
cp "$source_dir/tools/smoke.py" "$scratch/"
if [[ -d "$source_dir/bench" ]]; then  # tests of the benchmark scripts load them from ../bench
  mkdir "$scratch/bench"
  find "$source_dir/bench" -maxdepth 1 -type f -name '*.py' -exec cp {} "$scratch/bench/" \;
fi
find "$scratch" -name __pycache__ -prune -exec rm -rf {} +
cd "$scratch"
# A PYTHONPATH pointing into a checkout (as an in-tree test run may set) would defeat this.
unset PYTHONPATH
export PYTHONDONTWRITEBYTECODE=1

"$py" - "$source_dir" "$expect_cuda" <<'EOF'
import json, os, sys, sysconfig
source, expect_cuda = os.path.realpath(sys.argv[1]), sys.argv[2]
import fusedopt
where = os.path.realpath(fusedopt.__file__)
site = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
if where.startswith(source + os.sep) or not any(where.startswith(s + os.sep) for s in site):
    sys.exit(f"fusedopt was imported from {where}, not from this environment's {sorted(site)}")
info = fusedopt.info()
print(f"fusedopt {info['version']} from {os.path.dirname(where)}")
print(f"  CPU target {info['cpu'].get('target')} ({info['cpu'].get('target_source')}), "
      f"threads {info['cpu'].get('threads')}")
print(f"  CUDA: {json.dumps(info['cuda'])}")
if expect_cuda == "built":
    if not info["cuda"]["built"]:
        sys.exit("expected a wheel with the CUDA module, but fusedopt._cuda is missing: "
                 + info["cuda"].get("reason", ""))
    if not info["cuda"]["available"] and not info["cuda"].get("reason"):
        sys.exit("CUDA unavailable without a reason")
elif expect_cuda == "absent" and info["cuda"]["built"]:
    sys.exit("expected a CPU-only wheel, but it carries fusedopt._cuda")
EOF

status=0
echo "== smoke: every rule against the exact reference on every CPU target"
"$py" smoke.py --all-targets --quiet || status=1

supported="$("$py" -c 'import fusedopt; print(" ".join(t["name"] for t in fusedopt.info()["cpu"]["targets"] if t["supported"]))')"
if [[ "$mode" == full ]]; then
  for t in $targets; do
    if [[ "$t" != auto && " $supported " != *" $t "* ]]; then
      echo "== pytest with FUSEDOPT_CPU_TARGET=$t: skipped, this CPU supports only: $supported"
      continue
    fi
    echo "== pytest with FUSEDOPT_CPU_TARGET=$t"
    FUSEDOPT_CPU_TARGET="$t" "$py" -c '
import os, sys, fusedopt
want, got = os.environ["FUSEDOPT_CPU_TARGET"], fusedopt.info()["cpu"]["target"]
sys.exit(0 if want in ("auto", got) else f"FUSEDOPT_CPU_TARGET={want} but the target in use is {got}")' || { status=1; continue; }
    FUSEDOPT_CPU_TARGET="$t" "$py" -m pytest -q -n auto -p no:cacheprovider tests "${pytest_extra[@]}" || status=1
  done
elif [[ "$mode" == smoke ]]; then
  echo "== pytest: the tests marked cuda (they skip, with their reason, without a GPU)"
  rc=0
  "$py" -m pytest -q -p no:cacheprovider -rs -m cuda tests "${pytest_extra[@]}" || rc=$?
  if [[ $rc -eq 5 ]]; then
    echo "(no tests are marked cuda)"
  elif [[ $rc -ne 0 ]]; then
    status=1
  fi
else
  echo "test_wheel.sh: --mode must be full or smoke" >&2
  exit 2
fi
exit $status
