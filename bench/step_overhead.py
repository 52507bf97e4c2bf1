"""Host cost of a step: the same optimizer step on NumPy arrays and on torch CPU tensors.

A step on torch tensors should cost what it costs on NumPy arrays of the same shapes: both
are read by the same C++ reader. Cases (2 threads unless FUSEDOPT_NUM_THREADS says
otherwise):

* ``adam_ 1024``: one call of the functional ``fusedopt.adam_`` on 1,024 float32 elements
  (its latency is mostly the way in);
* ``Adam.step 1024``: ``fusedopt.optim.Adam.step`` on the same;
* ``seed MLP``: ``fusedopt.optim.SGD(momentum=0.9).step`` on the seed's model
  (100 -> 128 -> 10: four tensors), with torch's ``SGD(fused=True)`` for scale;
* ``list1000``: ``fusedopt.optim.AdamW.step`` on 1,000 tensors of log-uniform sizes
  totalling 2^24, with torch's ``AdamW(fused=True)`` for scale;
* ``1000x1``: the same on 1,000 one-element tensors, where a step is all host cost (a
  thousandth of its time is the cost of one param and its three tensors).

The torch cases also time the drop-in ``fusedopt.torch`` class (``step()`` reading
``p.grad``). ``FUSEDOPT_TORCH_READER=methods`` makes the reader read torch tensors through
their Python methods instead of torch's C functions (fusedopt.info()["torch_reader"]):
run the script with and without it for the difference.

The variants of one case alternate within each round; each figure is the median over
rounds of the mean time of a batch of steps, with the p10-p90 spread. The last column is
each variant's median ratio to the NumPy variant of the same round.

    python bench/step_overhead.py [--rounds 41] [--clock wall|thread]
"""

from __future__ import annotations

import argparse
import time

import fusedopt
import numpy as np
from fusedopt import optim


def _list_shapes(total: int, count: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(16), np.log(65536), count))
    sizes = np.maximum(1, np.round(sizes * total / sizes.sum())).astype(np.int64)
    sizes[-1] += total - sizes.sum()
    return [int(s) for s in sizes]


def _arrays(shapes, rng):
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _cases(torch):
    rng = np.random.default_rng(1)
    cases = {}

    p = _arrays([(1024,)], rng)
    g = _arrays([(1024,)], rng)
    m, v = [np.zeros(1024, np.float32)], [np.zeros(1024, np.float32)]
    cases["adam_ 1024"] = {
        "numpy": lambda: fusedopt.adam_(p, g, m, v, step=1, lr=1e-9),
    }
    opt = optim.Adam([np.ones(1024, np.float32)], lr=1e-9)
    cases["Adam.step 1024"] = {"numpy": lambda: opt.step(g)}

    def variants(shapes, make_fusedopt, make_torch, make_dropin):
        params = _arrays(shapes, rng)
        grads = [a * 1e-3 for a in _arrays(shapes, rng)]
        out = {}
        np_opt = make_fusedopt([a.copy() for a in params])
        out["numpy"] = lambda: np_opt.step(grads)
        if torch is not None:
            tparams = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in params]
            tgrads = [torch.from_numpy(a.copy()) for a in grads]
            t_opt = make_fusedopt(tparams)
            out["torch tensors"] = lambda: t_opt.step(tgrads)
            ref = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in params]
            for r, gr in zip(ref, tgrads):
                r.grad = gr
            dropin_params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in params]
            for d, gr in zip(dropin_params, tgrads):
                d.grad = gr
            out["fusedopt.torch"] = make_dropin(dropin_params).step
            peer = make_torch(ref)
            out["torch fused=True"] = peer.step
        return out

    mlp = [(128, 100), (128,), (10, 128), (10,)]
    cases["seed MLP SGD"] = variants(
        mlp, lambda ps: optim.SGD(ps, lr=1e-6, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=1e-6, momentum=0.9, fused=True),
        lambda ps: fusedopt.torch.SGD(ps, lr=1e-6, momentum=0.9))
    shapes = [(n,) for n in _list_shapes(2**24, 1000)]
    cases["list1000 AdamW"] = variants(
        shapes, lambda ps: optim.AdamW(ps, lr=1e-9),
        lambda ps: torch.optim.AdamW(ps, lr=1e-9, fused=True),
        lambda ps: fusedopt.torch.AdamW(ps, lr=1e-9))
    cases["1000x1 AdamW"] = variants(
        [(1,)] * 1000, lambda ps: optim.AdamW(ps, lr=1e-9),
        lambda ps: torch.optim.AdamW(ps, lr=1e-9, fused=True),
        lambda ps: fusedopt.torch.AdamW(ps, lr=1e-9))
    return cases


def _time(fn, budget: float, clock=time.perf_counter) -> float:
    fn()
    t0 = clock()
    n = 0
    while True:
        fn()
        n += 1
        t = clock() - t0
        if t >= budget:
            return t / n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per batch")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall: elapsed time; thread: the calling thread's CPU time, with "
                             "the kernels at 1 thread (time other processes take is not "
                             "counted: for a machine under load)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    clock = time.perf_counter
    if args.clock == "thread":
        fusedopt.set_num_threads(1)
        if torch is not None:
            torch.set_num_threads(1)
        clock = time.thread_time
    reader = fusedopt.info()["torch_reader"] or {}
    print(f"fusedopt {fusedopt.__version__}, target {fusedopt.info()['cpu']['target']}, "
          f"{fusedopt.get_num_threads()} threads, {args.clock} clock, "
          f"torch {getattr(torch, '__version__', 'absent')} read through "
          f"{'its C functions' if reader.get('c_functions') else 'its methods'}")
    print(f"{'case':<16} {'variant':<18} {'median us':>10} {'p10-p90 us':>18} {'vs numpy':>9}")
    for case, variants in _cases(torch).items():
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(_time(fn, args.budget, clock))
        base = np.array(times["numpy"])
        for name, ts in times.items():
            ts = np.array(ts) * 1e6
            ratio = np.median(ts / (base * 1e6))
            print(f"{case:<16} {name:<18} {np.median(ts):>10.1f} "
                  f"{np.percentile(ts, 10):>8.1f}-{np.percentile(ts, 90):<9.1f} {ratio:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
