"""How the memory layout of a list of tensors moves a fused step's throughput.

The harness's list1000 case (1,000 tensors of log-uniform sizes totalling 2^24 elements,
median 1,184) allocates every array on its own, as a model's parameters usually are. This
script times the same sizes in four layouts, in interleaved rounds with the traffic loop
(the roof) of each layout:

* separate: every array its own allocation (the harness's list1000);
* states carved: params and grads separate, the states cut from one block per role, as
  fusedopt.optim allocates them;
* all carved: every role cut from one block (a flat-parameter model);
* flat: one tensor of the same total size.

    python bench/list_layout.py [--rules sgd,adam] [--repeats 41] [--threads N]

It prints Melem/s and each layout's share of the flat case, for the rule and for the roof.
"""

from __future__ import annotations

import argparse

import fusedopt
import numpy as np
from fusedopt import _core
from fusedopt.bench import cases, timing
from fusedopt.optim import _carve

STATES = {"sgd": 0, "adam": 2, "adagrad": 1}


def carve(sizes, rng, fill=None):
    """Arrays of the given sizes cut from one block by fusedopt.optim's own allocator."""
    shapes = [np.empty(k, np.float32) for k in sizes]  # untouched: only shape and dtype count
    pieces = _carve(np, shapes, 0.0 if fill is None else fill)
    if fill is None:
        for x in pieces:
            x[:] = rng.standard_normal(x.size, dtype=np.float32)
    return pieces


def separate(sizes, rng, fill=None):
    return [rng.standard_normal(k, dtype=np.float32) if fill is None else np.full(k, fill, np.float32)
            for k in sizes]


def layout(sizes, rng, params_grads, states, n_states):
    p, g = params_grads(sizes, rng), params_grads(sizes, rng)
    s = [states(sizes, rng, 0.01) for _ in range(n_states)]
    return p, g, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", default="sgd,adam")
    ap.add_argument("--repeats", type=int, default=timing.ROUNDS)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        fusedopt.set_num_threads(args.threads)
    sizes = cases.list_sizes()
    total = sum(sizes)
    rng = np.random.default_rng(0)
    print(f"{len(sizes)} tensors, {total} elements (median {int(np.median(sizes))}), float32, "
          f"{fusedopt.get_num_threads()} threads, medians of {args.repeats} interleaved rounds; "
          "% of flat: median over rounds of flat's time / the layout's")
    for rule in args.rules.split(","):
        n_states = STATES[rule]
        layouts = {
            "separate": layout(sizes, rng, separate, separate, n_states),
            "states carved": layout(sizes, rng, separate, carve, n_states),
            "all carved": layout(sizes, rng, carve, carve, n_states),
            "flat": layout([total], rng, separate, separate, n_states),
        }
        impls = {}
        for name, (p, g, s) in layouts.items():
            zero = [np.zeros_like(x) for x in g]  # the roof adds zeros: nothing drifts
            roof = _core.Call(p, zero, s)
            impls[f"{name} roof"] = roof.traffic
            impls[f"{name} {rule}"] = (
                lambda p=p, g=g, s=s, r=rule: cases.call_fusedopt(r, fusedopt, p, g, s))
        timed = timing.time_rounds(impls, args.repeats, 0.002)
        print(f"\n{'layout':14s} {'kind':6s} {'Melem/s':>8s} {'p10-p90':>13s} {'% of flat':>9s}")
        for name in layouts:
            for kind in ("roof", rule):
                t = timed[f"{name} {kind}"]
                print(f"{name:14s} {kind:6s} {total / t.median() / 1e6:8.0f} "
                      f"{total / t.pct(90) / 1e6:6.0f}-{total / t.pct(10) / 1e6:<6.0f} "
                      f"{100 * timing.paired_ratio(timed[f'flat {kind}'], t)[0]:8.1f}%")


if __name__ == "__main__":
    main()
