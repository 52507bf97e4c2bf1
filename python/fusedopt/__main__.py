"""Command line: python -m fusedopt info | verify | bench | demo [options]."""

from __future__ import annotations

import json
import sys

USAGE = """usage: python -m fusedopt {info,verify,bench,demo} [options]

  info     what was built and is in use (CPU targets, threads, CUDA), as JSON
  verify   every kernel against its exact (bitwise) and float64 references
           (--device cuda: the CUDA kernels, also against the CPU kernels)
  bench    throughput of every rule against the memory roof and the NumPy reference
           (quick by default; 'python -m fusedopt bench --help' for the full sweep;
           --device cuda: the GPU benchmark)
  demo     the seed's training strategies on scikit-learn's digits, side by side
           ('python -m fusedopt demo --help'; needs pip install "fusedopt[demo]")
"""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "info":
        import fusedopt

        print(json.dumps(fusedopt.info(), indent=2))
        return 0
    if command == "verify":
        from fusedopt import _verify

        return _verify.main(rest)
    if command == "bench":
        from fusedopt.bench import cli

        return cli.main(rest)
    if command == "demo":
        from fusedopt.demo import cli as demo_cli

        return demo_cli.main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
