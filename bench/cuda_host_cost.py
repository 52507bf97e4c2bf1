"""The host time of the CUDA path's array checks, measured without a GPU.

CuPy builds an ndarray over memory it does not own without asking the driver, so real CuPy
arrays can wrap host memory here; fusedopt's emulated CUDA module (fusedopt._cuda_emulated,
built with FUSEDOPT_CUDA_EMULATION=ON) then stands in for fusedopt._cuda. What is timed is
host work only, with CuPy's real attribute costs, for one Adam call on N tensors (4 N
arrays):

* ``prepare() + Batch``: the checked path (fusedopt/_arrays.py asks the reader, then the
  module reads the call again), which refused calls and DLPack producers take;
* ``Batch.strict``: the fast path of a plain call on CuPy arrays (all 4 N arrays checked in
  C++);
* ``set_grads``: an optimizer's step after its first (only the N gradients checked);
* where torch is installed, ``Batch.strict`` and ``set_grads`` on torch tensors (CPU ones:
  the emulation takes them for device tensors), read through torch's own methods;
* for scale, where torch is installed: a whole ``torch.optim.Adam(fused=True).step()`` on
  N one-element CPU tensors, nearly all of it torch's host work per step (its Python
  bookkeeping and argument handling, which its CUDA step does too, plus N tiny kernels).

The kernels are not run: their emulated timing means nothing. The GPU benchmark
(bench/gpu_bench.py) times whole steps on a device.

    pip install cupy-cuda13x && FUSEDOPT_CUDA_EMULATION=ON pip install .
    python bench/cuda_host_cost.py [--tensors 1000] [--repeats 41]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _install_emulation():
    import fusedopt
    import fusedopt._cuda_emulated as emulated
    import fusedopt.cuda

    sys.modules["fusedopt._cuda"] = emulated
    fusedopt._cuda = emulated
    fusedopt.cuda._cuda, fusedopt.cuda._import_error = emulated, None
    return emulated


def _device_arrays(cupy, np, n_tensors, size, keep):
    """n_tensors CuPy float32 arrays of `size` elements over one host block."""
    block = np.zeros((n_tensors, size), np.float32)
    keep.append(block)
    out = []
    for row in block:
        memory = cupy.cuda.UnownedMemory(row.ctypes.data, row.nbytes, block, device_id=0)
        out.append(cupy.ndarray(row.shape, dtype=row.dtype, memptr=cupy.cuda.MemoryPointer(memory, 0)))
    return out


def _timed(fn, repeats):
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    s = sorted(samples)
    return statistics.median(s), s[len(s) // 10], s[(9 * len(s)) // 10]


def _torch_fused_adam(n_tensors):
    try:
        import torch
    except ImportError:
        return None
    params = [torch.zeros(1, requires_grad=True) for _ in range(n_tensors)]
    for p in params:
        p.grad = torch.zeros(1)
    return torch.optim.Adam(params, lr=1e-3, fused=True).step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64, help="elements per tensor (not touched)")
    ap.add_argument("--repeats", type=int, default=41)
    args = ap.parse_args(argv)
    try:
        import cupy
        import numpy as np

        emulated = _install_emulation()
    except ImportError as exc:
        print(f"cuda_host_cost: needs CuPy and the emulated module ({exc})", file=sys.stderr)
        return 2
    from fusedopt import _arrays, _dispatch

    keep: list = []
    p, g, m, v = (_device_arrays(cupy, np, args.tensors, args.size, keep) for _ in range(4))
    held = emulated.Batch.strict(p, g, [m, v])
    assert held is not None, "the fast path refused a plain call"
    assert held.set_grads(g)

    def checked():
        prep = _arrays.prepare("adam_", p, g, [("exp_avgs", m), ("exp_avg_sqs", v)])
        _dispatch.native_target(prep)

    rows = [
        ("prepare() + Batch (checked path)", checked),
        ("Batch.strict (fast path)", lambda: emulated.Batch.strict(p, g, [m, v])),
        ("set_grads (optimizer, held Batch)", lambda: held.set_grads(g)),
    ]
    torch_step = _torch_fused_adam(args.tensors)
    if torch_step is not None:
        import torch

        tp = [torch.nn.Parameter(torch.zeros(args.size)) for _ in range(args.tensors)]
        tg, tm, tv = ([torch.zeros(args.size) for _ in range(args.tensors)] for _ in range(3))
        held_torch = emulated.Batch.strict(tp, tg, [tm, tv])
        assert held_torch is not None, "the fast path refused a plain torch call"
        rows += [("Batch.strict, torch tensors", lambda: emulated.Batch.strict(tp, tg, [tm, tv])),
                 ("set_grads, torch tensors", lambda: held_torch.set_grads(tg)),
                 ("torch fused Adam step, 1-element CPU", torch_step)]
    print(f"Adam on {args.tensors} CuPy arrays per role ({4 * args.tensors} arrays), "
          f"CuPy {cupy.__version__}; median and p10-p90 of {args.repeats}, ms")
    base = None
    for name, fn in rows:
        med, lo, hi = _timed(fn, args.repeats)
        base = base or med
        print(f"  {name:38s} {med:8.3f}  ({lo:.3f}-{hi:.3f})  {base / med:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
