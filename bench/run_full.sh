#!/usr/bin/env bash
# The full benchmark sweep (bench/README.md): every rule, float32 and float64, sizes 2^10 to
# 2^27 and a list of 1,000 tensors, 1 and all threads, every CPU target, every installed
# peer, the small-call latency. Writes bench-<date>.csv/.json/.png to $OUT.
#
#   bench/run_full.sh                         # with the python on PATH
#   PYTHON=/tmp/venv-ds/bin/python bench/run_full.sh --sizes 2^20,2^24,list1000
#
# Extra arguments go to the harness (python -m fusedopt bench --help). About an hour on a
# 2-core machine with every peer; 2^27 float64 needs about 13 GiB of free memory.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-bench/results}
# --wait-quiet: on a shared machine, wait (up to 30 s) before each measurement until other
# processes use under 0.15 cores; the CSV records how busy the machine was regardless.
exec "$PYTHON" -c 'import sys; from fusedopt.bench.cli import main; sys.exit(main(sys.argv[1:]))' \
  --full --out "$OUT" --wait-quiet 30 "$@"
