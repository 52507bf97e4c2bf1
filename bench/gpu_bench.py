"""The GPU benchmark of bench/gpu_check.sh: fusedopt/bench/gpu.py, which the package ships
so that `python -m fusedopt bench --device cuda` runs it too.

    python bench/gpu_bench.py --out DIR       # the full run; writes DIR/gpu_report.md and gpu_bench.json
    python bench/gpu_bench.py --quick         # 2^24 elements, few repeats
    python bench/gpu_bench.py --selftest      # the report logic on made-up timings, no GPU
"""

import sys

from fusedopt.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
