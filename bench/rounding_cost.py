"""What stochastic rounding, loss scaling and clipping cost an Adam step, side by side.

Adam at 2^24 elements, in interleaved rounds (every variant once per round, so a noisy
neighbour slows all of them alike), medians over rounds with p10-p90 spreads:

* float32 params, grads and states (the baseline);
* bfloat16 params, grads and states, rounded to nearest (a fused layout);
* the same with the params rounded stochastically, and with params and states so (both
  fused, hashing each element's place in the vector loop);
* float32 with grad_scale and max_grad_norm (a norm pass over the gradients, then the
  update reading them through one multiplier).

    python bench/rounding_cost.py [--rounds 15] [--threads N] [--elements N --calls K]

--elements 32768 --threads 1 --calls 10 measures the loops in cache (each round times K
calls); the fastest round is printed too, as the neighbours of a shared machine disturb
it least.

Needs ml_dtypes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import fusedopt
import ml_dtypes
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--elements", type=int, default=1 << 24)
    parser.add_argument("--calls", type=int, default=1, help="calls per timed round")
    args = parser.parse_args()
    N = args.elements
    if args.threads:
        fusedopt.set_num_threads(args.threads)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(0)
    p32 = rng.standard_normal(N).astype(np.float32)
    g32 = rng.standard_normal(N).astype(np.float32)
    m32, v32 = np.zeros(N, np.float32), np.zeros(N, np.float32)
    p16, g16 = p32.astype(bf16), g32.astype(bf16)
    m16, v16 = np.zeros(N, bf16), np.zeros(N, bf16)
    variants = {
        "float32": lambda k: fusedopt.adam_(p32, g32, m32, v32, step=k, lr=1e-3),
        "bf16, nearest": lambda k: fusedopt.adam_(p16, g16, m16, v16, step=k, lr=1e-3),
        "bf16, stochastic params": lambda k: fusedopt.adam_(p16, g16, m16, v16, step=k, lr=1e-3,
                                                            rounding="stochastic"),
        "bf16, stochastic params and states": lambda k: fusedopt.adam_(
            p16, g16, m16, v16, step=k, lr=1e-3, rounding="stochastic", state_rounding="stochastic"),
        "float32, grad_scale + max_grad_norm": lambda k: fusedopt.adam_(
            p32, g32, m32, v32, step=k, lr=1e-3, grad_scale=1024.0, max_grad_norm=1.0),
    }
    times: dict = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, step in variants.items():
            t = time.perf_counter()
            for k in range(args.calls):
                step(r * args.calls + k + 1)
            times[name].append((time.perf_counter() - t) / args.calls)
    base = statistics.median(times["float32"])
    print(f"Adam, {N:,} elements, {fusedopt.get_num_threads()} threads, {args.rounds} rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=10)
        print(f"{name:38s} {1e3 * med:8.3f} ms (p10-p90 {1e3 * q[0]:.3f}-{1e3 * q[-1]:.3f})  "
              f"{N / med / 1e6:6.0f} Melem/s  {base / med:.2f}x float32  "
              f"fastest {1e9 * min(ts) / N:.3f} ns/el")


if __name__ == "__main__":
    main()
