"""GPU benchmark: fusedopt's CUDA kernels against torch's fused optimizers, a CuPy
ElementwiseKernel of the same rule, the traffic-only roof and the device-to-device copy
bandwidth, all measured in one run.

Cases: Adam, SGD with momentum and Adagrad, float32, as one tensor of 2^28 elements and as
a list of 1,000 tensors of mixed sizes totalling 2^26 (the quick run: 2^24, and 1,000
tensors totalling 2^22). Every figure is the median of
repeated timed steps, each timed with CUDA events on the stream the work runs on; the
spread is the 10th and 90th percentiles. Events bracket one whole step as a caller sees
it, so host time that leaves the GPU idle (Python, argument checks, launch overhead)
counts too. fusedopt has three rows: the prepared call (`_cuda.Batch`: pointers read and
checked once, then reused every step), the functional API (every array checked in C++ on
every call, csrc/bindings/cuda_batch.cpp), and `fusedopt.optim`'s step (params and states
checked once, the gradients every step). For Adam, a fourth row is `fusedopt.optim`'s step
on torch tensors over the same memory, as a torch user takes it (its host work per tensor
is larger). Two more rows time a step captured in a CUDA graph and replayed, which leaves
no host work per step: fusedopt's capturable Adam (captured by CuPy's stream capture) and
torch's fused capturable Adam (torch.cuda.graph).

Bytes are counted honestly: every array read plus every array written, per element (Adam
reads p, g, m, v and writes p, m, v: 28 bytes in float32); the copy moves 8 bytes per
float32 element (read + write). The copy is timed twice, after a second of copies to bring
the clocks up and again after the cases; the faster of the two is the roof every "% of
copy" is taken of.

A second, smaller table sweeps the chunk size of the update launches (_cuda.set_chunk_elements)
for Adam's prepared step on both layouts: the data to tune the default (8192, chosen by a
model of the list, not yet measured) by, in the same run.

    python -m fusedopt bench --device cuda [--full] [--out DIR]   # quick, or the 2^28 run
    python bench/gpu_bench.py --out DIR       # the full run; writes DIR/gpu_report.md and gpu_bench.json
    python bench/gpu_bench.py --selftest      # the report logic on made-up timings, no GPU
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .gpu_report import (
    GRAPH,
    OPTIM,
    OPTIM_TORCH,
    PREPARED,
    RULE_TRAFFIC,
    SWEEP_CHUNKS,
    TORCH_FUSED,
    Result,
    copy_roof,
    format_report,
    mixed_sizes,
    one_tensor_label,
    selftest,
    step_bytes,
    tensor_list_label,
)
from .timing import rewarm


# --------------------------------------------------------------------------------------
# Measuring (needs a GPU, CuPy and fusedopt._cuda)
# --------------------------------------------------------------------------------------
def time_steps(cupy, fn, *, warmup: int, reps: int) -> list[float]:
    """Milliseconds of each of `reps` calls of fn, each bracketed by CUDA events on CuPy's
    current stream (the stream fusedopt, CuPy and torch's default all use here)."""
    for _ in range(warmup):
        fn()
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    out = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        out.append(cupy.cuda.get_elapsed_time(start, end))
    return out


ELEMENTWISE = {
    # The same operation order as csrc/math/ (CuPy compiles with its own flags, so these
    # are timing peers, not bitwise ones).
    "adam": ("T g, T b1, T omb1, T b2, T omb2, T step_size, T inv_sqrt_bc2, T eps",
             "T p, T m, T v",
             "m = b1 * m + omb1 * g; v = b2 * v + omb2 * (g * g);"
             "p = p - step_size * (m / (sqrt(v) * inv_sqrt_bc2 + eps));"),
    "sgd_momentum": ("T g, T lr, T mom, T omd", "T p, T buf",
                     "buf = mom * buf + omd * g; p = p - lr * buf;"),
    "adagrad": ("T g, T clr, T eps", "T p, T s", "s = s + g * g; p = p - clr * (g / (sqrt(s) + eps));"),
}


class Case:
    """The arrays of one case, allocated once and shared by every implementation (torch
    sees them through DLPack, without a copy)."""

    def __init__(self, cupy, rule, sizes, seed):
        self.rule, self.sizes = rule, sizes
        n_states = RULE_TRAFFIC[rule]["states"]
        rs = cupy.random.RandomState(seed)
        f32 = cupy.float32
        self.params = [rs.standard_normal(n, dtype=f32) for n in sizes]
        self.grads = [rs.standard_normal(n, dtype=f32) * f32(0.01) for n in sizes]
        self.states = [[cupy.zeros(n, f32) for n in sizes] for _ in range(n_states)]
        self.n_elements = sum(sizes)

    def fusedopt_step(self, fusedopt, _cuda):
        """The prepared call: pointers read once, one plan and one or two launches a step."""
        from fusedopt import rules

        batch = _cuda.Batch(self.params, self.grads, self.states)
        if self.rule == "adam":
            c = rules.adam.coefficients("adam_", step=1, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False)
            return lambda: batch.run("adam", c)
        if self.rule == "sgd_momentum":
            c = rules.sgd.coefficients("sgd_", lr=1e-3, momentum=0.9, dampening=0.0, nesterov=False,
                            weight_decay=0.0, maximize=False, step=2, convention="torch")
            return lambda: batch.run("sgd", c)
        c = rules.adagrad.coefficients("adagrad_", step=1, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                            eps=1e-10, maximize=False)
        return lambda: batch.run("adagrad", c)

    def functional_step(self, fusedopt):
        p, g, s = self.params, self.grads, self.states
        if self.rule == "adam":
            return lambda: fusedopt.adam_(p, g, s[0], s[1], step=1, lr=1e-3, backend="native")
        if self.rule == "sgd_momentum":
            return lambda: fusedopt.sgd_(p, g, s[0], lr=1e-3, momentum=0.9, step=2, backend="native")
        return lambda: fusedopt.adagrad_(p, g, s[0], step=1, lr=1e-2, backend="native")

    def optimizer_step(self, fusedopt):
        """fusedopt.optim's step over the case's params (its states are its own arrays);
        the first step, which checks everything, is a warm-up step."""
        import fusedopt.optim

        if self.rule == "adam":
            opt = fusedopt.optim.Adam(self.params, lr=1e-3, backend="native")
        elif self.rule == "sgd_momentum":
            opt = fusedopt.optim.SGD(self.params, lr=1e-3, momentum=0.9, backend="native")
        else:
            opt = fusedopt.optim.Adagrad(self.params, lr=1e-2, backend="native")
        return lambda: opt.step(self.grads)

    def optimizer_step_torch(self, fusedopt, torch):
        """The same step as a torch user takes it: fusedopt.optim's Adam on torch tensors
        (DLPack views of the case's memory), gradients given as torch tensors. Its host
        work reads every held tensor's facts again each step through torch's methods,
        since torch can re-point a tensor in place."""
        import fusedopt.optim

        params, grads = self.torch_views(torch)
        opt = fusedopt.optim.Adam(params, lr=1e-3, backend="native")
        opt.step(grads)  # the first step checks everything; a failure is the row's, not the loop's
        return lambda: opt.step(grads)

    def graph_step(self, fusedopt, cupy):
        """A capturable Adam's step captured once in a CUDA graph (CuPy's stream capture),
        then replayed: every replay is the next step, with no host work per step."""
        import fusedopt.optim

        opt = fusedopt.optim.Adam(self.params, lr=1e-3, backend="native", capturable=True)
        opt.step(self.grads)  # the first step checks everything, outside the capture
        cupy.cuda.get_current_stream().synchronize()
        capture = cupy.cuda.Stream(non_blocking=True)
        with capture:
            capture.begin_capture()
            try:
                opt.step(self.grads)
            finally:
                graph = capture.end_capture()
        # The optimizer (its states, count and table, which the graph reads and writes)
        # lives as long as the replays do.
        return lambda: (graph.launch(cupy.cuda.get_current_stream()), opt)[0]

    def traffic_step(self, _cuda):
        batch = _cuda.Batch(self.params, self.grads, self.states)
        return lambda: batch.traffic()

    def elementwise_step(self, cupy):
        inputs, outputs, body = ELEMENTWISE[self.rule]
        kernel = cupy.ElementwiseKernel(inputs, outputs, body, f"fusedopt_bench_{self.rule}")
        f = cupy.float32
        if self.rule == "adam":
            coeffs = (f(0.9), f(0.1), f(0.999), f(0.001), f(1e-2), f(1.0 / (1 - 0.999) ** 0.5), f(1e-8))
        elif self.rule == "sgd_momentum":
            coeffs = (f(1e-3), f(0.9), f(1.0))
        else:
            coeffs = (f(1e-2), f(1e-10))
        tensors = list(zip(self.params, self.grads, *self.states))

        def step():
            for p, g, *states in tensors:
                kernel(g, *coeffs, p, *states)

        return step

    def torch_views(self, torch, *, as_grad: bool = False):
        """The case's params and grads as torch tensors over the same memory (DLPack); with
        as_grad, each grad set as its param's .grad, as torch's optimizers take them."""
        params = [torch.from_dlpack(p) for p in self.params]
        grads = [torch.from_dlpack(g) for g in self.grads]
        if as_grad:
            for p, g in zip(params, grads):
                p.grad = g
        return params, grads

    def torch_step(self, torch, fused: bool):
        params, _ = self.torch_views(torch, as_grad=True)
        kw = dict(fused=True) if fused else dict(foreach=True)
        if self.rule == "adam":
            opt = torch.optim.Adam(params, lr=1e-3, **kw)
        elif self.rule == "sgd_momentum":
            opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, **kw)
        else:
            opt = torch.optim.Adagrad(params, lr=1e-2, **kw)
        opt.step()  # fails here, not in the timing loop, where torch lacks this variant
        return opt.step


    def torch_graph_step(self, torch):
        """torch's fused capturable Adam, captured once by torch.cuda.graph and replayed:
        the peer of graph_step."""
        params, _ = self.torch_views(torch, as_grad=True)
        opt = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as torch asks
            opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        return lambda: (graph.replay(), opt)[0]  # the optimizer lives as long as the replays


def warm_up(cupy, fn, seconds: float) -> None:
    """Runs fn until `seconds` have passed: an idle GPU starts at low clocks (an H200's SMs
    idle at a few hundred MHz) and takes a while to raise them."""
    stream = cupy.cuda.get_current_stream()

    def eight():
        for _ in range(8):
            fn()
        stream.synchronize()

    rewarm(eight, seconds)


def measure_copy(cupy, n, warmup, reps, *, when: str, warm_seconds: float = 0.0) -> Result:
    """The memory roof of the machine: a device-to-device copy of n float32."""
    src = cupy.ones(n, cupy.float32)
    dst = cupy.empty_like(src)
    stream = cupy.cuda.get_current_stream()

    def copy():
        cupy.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, 3, stream.ptr)

    warm_up(cupy, copy, warm_seconds)
    return Result("copy", f"{n} float32", f"cudaMemcpyAsync device to device, {when}",
                  time_steps(cupy, copy, warmup=warmup, reps=reps), 2 * src.nbytes)


def sweep_chunk_sizes(cupy, _cuda, layouts, *, warmup, reps) -> list[Result]:
    """Adam's prepared step at each chunk size (_cuda.set_chunk_elements), per layout: the
    data to tune the default chunk size (csrc/cuda/plan.h: kChunkElements) by."""
    out = []
    for layout, sizes in layouts.items():
        case = Case(cupy, "adam", sizes, seed=len(out))
        step = case.fusedopt_step(None, _cuda)
        nbytes = step_bytes("adam", case.n_elements)
        for chunk in SWEEP_CHUNKS:
            old = _cuda.set_chunk_elements(chunk)
            try:
                out.append(Result("adam", layout, f"chunk {chunk}",
                                  time_steps(cupy, step, warmup=warmup, reps=reps), nbytes))
            finally:
                _cuda.set_chunk_elements(old)
            print(f"  adam          {layout:20s} chunk {chunk:<28d} {out[-1].median_ms:9.3f} ms",
                  file=sys.stderr, flush=True)
        del case, step
        cupy.get_default_memory_pool().free_all_blocks()
    return out


def measure_case(cupy, fusedopt, _cuda, torch, rule, layout, sizes, *, warmup, reps, seed):
    case = Case(cupy, rule, sizes, seed=seed)
    nbytes = step_bytes(rule, case.n_elements)
    out: list[Result] = []

    def run(impl, make):
        try:
            samples = time_steps(cupy, make(), warmup=warmup, reps=reps)
            out.append(Result(rule, layout, impl, samples, nbytes))
        except Exception as exc:  # a peer this machine lacks: a row that says so
            out.append(Result(rule, layout, impl, [], 0, f"{type(exc).__name__}: {exc}"[:120]))
        print(f"  {rule:13s} {layout:20s} {impl:34s} {out[-1].median_ms:9.3f} ms",
              file=sys.stderr, flush=True)

    run(PREPARED, lambda: case.fusedopt_step(fusedopt, _cuda))
    run("fusedopt functional API", lambda: case.functional_step(fusedopt))
    run(OPTIM, lambda: case.optimizer_step(fusedopt))
    if rule == "adam" and torch is not None:
        run(OPTIM_TORCH, lambda: case.optimizer_step_torch(fusedopt, torch))
    if rule == "adam":
        run(GRAPH + "fusedopt capturable Adam", lambda: case.graph_step(fusedopt, cupy))
    run("traffic roof (same loads/stores)", lambda: case.traffic_step(_cuda))
    if torch is not None:
        run(TORCH_FUSED, lambda: case.torch_step(torch, fused=True))
        if not out[-1].samples_ms:  # torch has no fused variant of this rule on CUDA
            run("torch foreach", lambda: case.torch_step(torch, fused=False))
        if rule == "adam":
            run(GRAPH + "torch fused capturable Adam", lambda: case.torch_graph_step(torch))
    run("CuPy ElementwiseKernel", lambda: case.elementwise_step(cupy))
    return out


def _write(path: Path, text: str) -> None:
    """Replaces the file whole: a run killed while writing leaves the last whole version."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def measure(*, quick: bool, reps: int | None = None, out: str | None = None,
            sizes: tuple[int, int] | None = None) -> int:
    """Runs the benchmark and prints the report; with `out`, also writes gpu_report.md and
    gpu_bench.json there (after every case, so a run cut short leaves what it measured).
    `reps` timed steps per measurement (default 5 quick, 20 full); `sizes` (the one
    tensor's elements, the 1,000-tensor list's total) replaces the quick or full ones.
    2 if no CUDA kernel can run here. The targets are scored on the full run's sizes only."""
    import fusedopt
    import fusedopt.cuda

    reason = fusedopt.cuda.cupy_arrays_reason()
    if reason:
        print(f"fusedopt GPU benchmark: CUDA kernels unavailable: {reason}", file=sys.stderr)
        return 2
    import cupy
    import numpy as np

    from fusedopt import _cuda
    try:
        import torch

        torch_version = torch.__version__
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch, torch_version = None, "not installed"

    big, small_total = sizes or ((2**24, 2**22) if quick else (2**28, 2**26))
    reps, warmup = (reps or 5, 2) if quick else (reps or 20, 3)
    layouts = {one_tensor_label(big): [big], tensor_list_label(small_total): mixed_sizes(1000, small_total)}
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    info = fusedopt.info()["cuda"]
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": name,
        "driver": cupy.cuda.runtime.driverGetVersion(),
        "fusedopt": f"{fusedopt.__version__}, CUDA {info.get('cuda_runtime')} (static), "
                    f"architectures {info.get('architectures')}",
        "cupy": cupy.__version__,
        "numpy": np.__version__,
        "torch": torch_version,
        "python": platform.python_version(),
        "timing": f"median of {reps} steps after {warmup} warm-up, CUDA events per step",
    }
    results: list[Result] = []
    sweep: list[Result] = []

    def report(done: bool) -> str:
        """The report so far, written to `out` after every case: a run cut off by a
        timeout still leaves the cases it finished."""
        copy_gbps = copy_roof(results)
        meta["copy bandwidth"] = f"{copy_gbps:.0f} GB/s (read + write)"
        meta["elapsed"] = f"{time.perf_counter() - t0:.0f} s" + ("" if done else ", not finished")
        text = format_report(results, copy_gbps, meta, sweep, default_chunk=_cuda.CHUNK_ELEMENTS)
        if out is not None:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            _write(folder / "gpu_report.md", text)
            _write(folder / "gpu_bench.json", json.dumps(
                {"meta": meta, "copy_gbps": copy_gbps,
                 "results": [dict(asdict(r), median_ms=r.median_ms, gbps=r.gbps) for r in results],
                 "chunk_sweep": [dict(asdict(r), median_ms=r.median_ms, gbps=r.gbps) for r in sweep]},
                indent=1, default=str))
        return text

    t0 = time.perf_counter()
    results.append(measure_copy(cupy, big, warmup, reps, when="before the cases",
                                warm_seconds=0.2 if quick else 1.0))
    for rule in RULE_TRAFFIC:
        for layout, sizes in layouts.items():
            results += measure_case(cupy, fusedopt, _cuda, torch, rule, layout, sizes,
                                    warmup=warmup, reps=reps, seed=len(results))
            # Each case's arrays are gone with measure_case's frame: hand the memory back.
            cupy.get_default_memory_pool().free_all_blocks()
            if torch is not None:
                torch.cuda.empty_cache()
            report(done=False)
    results.append(measure_copy(cupy, big, warmup, reps, when="after the cases"))
    cupy.get_default_memory_pool().free_all_blocks()
    report(done=False)

    for layout, sizes in layouts.items():
        sweep += sweep_chunk_sizes(cupy, _cuda, {layout: sizes}, warmup=warmup, reps=reps)
        report(done=False)
    print(report(done=True))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/gpu", help="folder for gpu_report.md and gpu_bench.json")
    ap.add_argument("--reps", type=int, default=None, help="timed steps per measurement (default 5 with "
                    "--quick, else 20)")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    ap.add_argument("--selftest", action="store_true", help="check the report logic; no GPU needed")
    args = ap.parse_args(argv)
    return selftest() if args.selftest else measure(quick=args.quick, reps=args.reps, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
