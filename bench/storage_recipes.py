"""Adam at 2^24 elements on the storage recipes of mixed precision, each against its own roof.

The harness's ``--dtypes bfloat16`` row stores params, grads and states in bfloat16. This
script times the recipes people train with, in interleaved rounds (every recipe's kernel
and its traffic loop once per round), so a noisy neighbour slows all of them alike:

* f32/f32/f32: params, grads, states float32 (the baseline);
* bf16/bf16/bf16 and bf16/bf16/f32: bfloat16 params and grads, bfloat16 or float32 states
  (the two fused bfloat16 layouts of csrc/cpu/kernels_isa.cpp);
* f16/f16/f32 and f32/bf16/f32: staged through float32 buffers.

    python bench/storage_recipes.py [--rounds 12] [--threads N]

It prints Melem/s, GB/s (bytes read and written per element) and the median over rounds of
the roof's time over the kernel's (% of its roof). Needs ml_dtypes.
"""

from __future__ import annotations

import argparse
import time

import fusedopt
import ml_dtypes
import numpy as np
from fusedopt import _arrays, _dispatch, rules

N = 1 << 24
BF16 = np.dtype(ml_dtypes.bfloat16)
RECIPES = {
    "f32/f32/f32": (np.float32, np.float32, np.float32),
    "bf16/bf16/bf16": (BF16, BF16, BF16),
    "bf16/bf16/f32": (BF16, BF16, np.float32),
    "f16/f16/f32": (np.float16, np.float16, np.float32),
    "f32/bf16/f32": (np.float32, BF16, np.float32),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        fusedopt.set_num_threads(args.threads)
    coeffs = rules.adam.coefficients("adam_", step=10, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False)
    calls = {}
    for name, (pd, gd, sd) in RECIPES.items():
        rng = np.random.default_rng(0)
        p = rng.standard_normal(N, dtype=np.float32).astype(pd)
        g = rng.standard_normal(N, dtype=np.float32).astype(gd)
        g[g == 0] = 1
        m, v = np.zeros(N, sd), np.full(N, 0.01, np.float32).astype(sd)
        kernel = _dispatch.native_target(_arrays.prepare("bench", [p], [g], [("m", [m]), ("v", [v])]))
        # The roof adds a zero gradient: p and the states keep their values.
        roof = _dispatch.native_target(_arrays.prepare("bench", [p], [np.zeros_like(g)],
                                                       [("m", [m]), ("v", [v])]))
        nbytes = 2 * p.itemsize + g.itemsize + 4 * m.itemsize  # p, g, m, v read; p, m, v written
        calls[name] = (kernel, roof, nbytes)
    times = {name: ([], []) for name in calls}
    for _ in range(args.rounds):
        for name, (kernel, roof, _) in calls.items():
            t0 = time.perf_counter()
            kernel.run("adam", coeffs)
            t1 = time.perf_counter()
            roof.traffic()
            t2 = time.perf_counter()
            times[name][0].append(t1 - t0)
            times[name][1].append(t2 - t1)
    print(f"Adam, {N:,} elements, {fusedopt.get_num_threads()} threads, CPU target "
          f"{fusedopt.info()['cpu']['target']}, {args.rounds} rounds")
    for name, (kernel_t, roof_t) in times.items():
        nbytes = calls[name][2]
        median = float(np.median(kernel_t))
        share = float(np.median(np.array(roof_t) / np.array(kernel_t)))
        print(f"{name:15s} {nbytes:2d} B/el  {N / median / 1e6:6.0f} Melem/s  "
              f"{N * nbytes / median / 1e9:5.1f} GB/s  {100 * share:5.1f}% of its roof")


if __name__ == "__main__":
    main()
