"""Whole ``optimizer.step()`` calls: fusedopt.torch against torch's ``fused=True``.

Both optimizers hold their own copy of the same params, with the same gradients attached
once (a step does not consume them), and step at a tiny lr so the values stay put. Cases:

* ``seed MLP``: the seed's model (100 -> 128 -> 10: 4 tensors), SGD with momentum 0.9;
* ``tiny1000``: 1,000 one-element tensors, AdamW (the host cost per param);
* ``list1000``: 1,000 tensors of log-uniform sizes totalling 2^24 float32, AdamW;
* ``gpt2-small``: GPT-2 small's 148 parameter shapes (124M float32), AdamW, few rounds.

torch's ``foreach=True`` runs beside its ``fused=True`` for scale: on some CPUs torch's fused
SGD with momentum is far slower than its foreach path.

The variants of one case alternate within each round; each figure is the median over
rounds of the mean time of a batch of steps, with the p10-p90 spread, and the median of
the per-round ratio to torch's time.

    python bench/torch_step.py [--rounds 21] [--cases seed,tiny,list,gpt2] [--dtype bfloat16]

``--dtype bfloat16`` (or float16) makes the params and gradients of every case 16-bit;
each optimizer keeps its states as it does by default (torch's in the param dtype, and
fusedopt.torch's too, but float32 for float16 params).
"""

from __future__ import annotations

import argparse
import time

import fusedopt
import fusedopt.torch as ft
import numpy as np
import torch


def _list_shapes(total: int, count: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(16), np.log(65536), count))
    sizes = np.maximum(1, np.round(sizes * total / sizes.sum())).astype(np.int64)
    sizes[-1] += total - sizes.sum()
    return [(int(s),) for s in sizes]


def _gpt2_small_shapes() -> list[tuple[int, ...]]:
    vocab, ctx, d, layers = 50257, 1024, 768, 12
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,),
                   (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


DTYPE = torch.float32  # the params' and gradients' (--dtype)


def _pair(shapes, ours, theirs):
    """The variants of a case: ``theirs(params, **flags)`` makes torch's optimizer."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(DTYPE) for s in shapes]
    grads = [(torch.randn(s, generator=gen) * 1e-3).to(DTYPE) for s in shapes]
    out = {}
    makers = (("fusedopt.torch", ours), ("torch fused=True", lambda ps: theirs(ps, fused=True)),
              ("torch foreach=True", lambda ps: theirs(ps, foreach=True)))
    for name, make in makers:
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt = make(ps)
        opt.step()  # states made outside the timing
        out[name] = opt.step
    return out


CASES = {
    "seed": ("seed MLP SGD", lambda: _pair(
        [(128, 100), (128,), (10, 128), (10,)],
        lambda ps: ft.SGD(ps, lr=1e-9, momentum=0.9),
        lambda ps, **k: torch.optim.SGD(ps, lr=1e-9, momentum=0.9, **k))),
    "tiny": ("tiny1000 AdamW", lambda: _pair(
        [(1,)] * 1000, lambda ps: ft.AdamW(ps, lr=1e-9),
        lambda ps, **k: torch.optim.AdamW(ps, lr=1e-9, **k))),
    "list": ("list1000 AdamW", lambda: _pair(
        _list_shapes(2**24, 1000), lambda ps: ft.AdamW(ps, lr=1e-9),
        lambda ps, **k: torch.optim.AdamW(ps, lr=1e-9, **k))),
    "gpt2": ("gpt2-small AdamW", lambda: _pair(
        _gpt2_small_shapes(), lambda ps: ft.AdamW(ps, lr=1e-9),
        lambda ps, **k: torch.optim.AdamW(ps, lr=1e-9, **k))),
}


def _time(fn, budget: float) -> float:
    t0 = time.perf_counter()
    n = 0
    while True:
        fn()
        n += 1
        t = time.perf_counter() - t0
        if t >= budget:
            return t / n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--gpt2-rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per batch")
    parser.add_argument("--cases", default="seed,tiny,list,gpt2")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    global DTYPE
    DTYPE = getattr(torch, args.dtype)
    print(f"fusedopt {fusedopt.__version__}, target {fusedopt.info()['cpu']['target']}, "
          f"{fusedopt.get_num_threads()} fusedopt threads, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), params and gradients {args.dtype}")
    print(f"{'case':<18} {'variant':<18} {'median us':>11} {'p10-p90 us':>21} {'vs torch':>9}")
    for key in args.cases.split(","):
        label, make = CASES[key]
        variants = make()
        rounds = args.gpt2_rounds if key == "gpt2" else args.rounds
        times = {name: [] for name in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                times[name].append(_time(fn, args.budget))
        base = np.array(times["torch fused=True"])
        for name, ts in times.items():
            ts = np.array(ts)
            ratio = np.median(ts / base)
            ts = ts * 1e6
            print(f"{label:<18} {name:<18} {np.median(ts):>11.1f} "
                  f"{np.percentile(ts, 10):>10.1f}-{np.percentile(ts, 90):<10.1f} {ratio:>8.3f}x")
        del variants
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
