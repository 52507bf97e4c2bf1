"""The benchmarks behind ``python -m fusedopt bench`` (cli.py).

The CPU benchmark: cases.py (the byte table, the sizes, a case's arrays), timing.py
(interleaved rounds and their paired ratios), peers.py (PyTorch and DeepSpeed), cpu.py
(the sweep, the latency of small calls, the machine's metadata) and report.py (tables,
CSV, JSON, the plot). The GPU benchmark (``--device cuda``, bench/gpu_bench.py): gpu.py
measures, gpu_report.py makes the report and checks it without a GPU.
"""
